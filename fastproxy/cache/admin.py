"""Purges of the response cache, under the admin API (dispatched from fastproxy.accounts.admin):

    DELETE /admin/cache                    everything
    DELETE /admin/cache/users/{id}         the entries of a user's scope
    DELETE /admin/cache/keys/{id}          the entries of a key's scope
    DELETE /admin/cache/global             the entries of the shared (`global`) scope
    DELETE /admin/cache/routes/{name}      the entries of a route (the model the client names: a route's
    DELETE /admin/cache/models/{model}     name, `provider/model`, or a model of the default provider)

With Redis a purge reaches every instance; the in-process cache is per worker, so there a purge
empties only the worker that answers it (the answer says which backend it used).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from redis.exceptions import RedisError

from fastproxy.cache.service import ResponseCache
from fastproxy.core.errors import MethodNotAllowed, ProxyError, RouteNotFound, ServiceUnavailable

log = logging.getLogger("fastproxy.admin")
PREFIX = "/admin/cache"
_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")


class CacheOff(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "cache_disabled"


def _target(path: str) -> tuple[str | None, str | None]:
    """(scope, model) of a purge path; RouteNotFound for any other path."""
    parts = path.removeprefix(PREFIX).strip("/").split("/")
    if parts == [""]:
        return None, None
    if parts == ["global"]:
        return "global", None
    if len(parts) == 2 and _ID.match(parts[1]):
        kind, ident = parts
        if kind == "users":
            return "user:" + ident, None
        if kind == "keys":
            return "key:" + ident, None
        if kind in ("models", "routes"):
            return None, ident
    raise RouteNotFound(f"Invalid URL (DELETE {path})")


async def handle(cache: ResponseCache | None, method: str, path: str) -> tuple[int, Any]:
    scope, model = _target(path)
    if method != "DELETE":
        raise MethodNotAllowed(f"Method {method} not allowed for {path}.", headers=[(b"allow", b"DELETE")])
    if cache is None:
        raise CacheOff("The response cache is off (FASTPROXY_CACHE).")
    try:
        deleted = await cache.purge(scope, model)
    except (RedisError, OSError) as exc:
        log.error("admin DELETE %s: %s", path, type(exc).__name__)
        raise ServiceUnavailable("The cache's Redis is unavailable; please retry.") from exc
    log.info("admin: cache purge %s removed %d entries", path, deleted)
    backend = "redis" if cache.redis is not None else "memory"
    return 200, {"object": "cache.purge", "deleted": deleted, "backend": backend}
