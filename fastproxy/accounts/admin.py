"""The admin API under /admin: users and API keys. JSON in and out through msgspec.

    POST   /admin/users          GET /admin/users          GET|PATCH|DELETE /admin/users/{id}
    POST   /admin/keys           GET /admin/keys[?user_id] GET|PATCH|DELETE /admin/keys/{id}
    GET    /admin/usage          GET /admin/usage/summary  GET /admin/users/{id}/usage   (fastproxy.usage.api)
    DELETE /admin/cache[/users/{id}|/keys/{id}|/global|/models/{model}]          (fastproxy.cache.admin)
    GET|POST /admin/providers|routes   GET|PATCH|DELETE /admin/providers|routes/{name}
                                                                       (fastproxy.accounts.admin_providers)

Authenticated by `Authorization: Bearer $FASTPROXY_ADMIN_KEY` (constant-time compare). With no
admin key configured every /admin path is 404, as if the API did not exist. Lists are ordered by
id (creation order) and paginated with `limit` (1-100, default 20) and `after` (the last id seen).
Keys are shown once, in the POST /admin/keys response; hashes never.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

import msgspec

from fastproxy.accounts import admin_providers, provisioning
from fastproxy.accounts.admin_schemas import KeyCreate, KeyPatch, UserCreate, UserPatch, changes
from fastproxy.accounts.admin_schemas import key_create as key_create_decoder
from fastproxy.accounts.admin_schemas import key_patch as key_patch_decoder
from fastproxy.accounts.admin_schemas import user_create as user_create_decoder
from fastproxy.accounts.admin_schemas import user_patch as user_patch_decoder
from fastproxy.accounts.auth import principal_of
from fastproxy.accounts.invalidation import Invalidator
from fastproxy.cache import admin as cache_admin
from fastproxy.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    MethodNotAllowed,
    ProxyError,
    RouteNotFound,
    ServiceUnavailable,
)
from fastproxy.core.limits import Limiter
from fastproxy.core.responses import send_error, send_json
from fastproxy.core.schemas import Limits, json_encoder
from fastproxy.core.types import Receive, Scope, Send
from fastproxy.server.state import State
from fastproxy.store import Store, StoreConflict, StoreError, StoreInvalidValue, invalid_value
from fastproxy.upstream.router import Router
from fastproxy.usage import api as usage_api

log = logging.getLogger("fastproxy.admin")

MAX_BODY = 64 * 1024
DEFAULT_PAGE = 20
MAX_PAGE = 100


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(ProxyError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class _Call:
    """One admin request, resolved: what the operation functions below need."""

    __slots__ = ("body", "ident", "invalidator", "limiter", "query", "router", "store")

    def __init__(
        self,
        store: Store,
        invalidator: Invalidator,
        limiter: Limiter,
        ident: str,
        query: dict[str, list[str]],
        body: bytes,
        router: Router,
    ):
        self.router = router
        self.store = store
        self.invalidator = invalidator
        self.limiter = limiter
        self.ident = ident
        self.query = query
        self.body = body


Operation = Callable[[_Call], Awaitable[tuple[int, Any]]]


async def dispatch(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    admin_key = state.settings.admin_key
    path = scope["path"]
    if not admin_key:
        await send_error(send, RouteNotFound(f"Invalid URL ({scope['method']} {path})"))
        return
    try:
        _authorize(scope["headers"], admin_key.encode())
        if path == cache_admin.PREFIX or path.startswith(cache_admin.PREFIX + "/"):  # needs no database
            status, result = await cache_admin.handle(state.cache, scope["method"], path)
            await send_json(send, status, json_encoder.encode(result))
            return
        if path.split("/", 3)[2:3] and path.split("/", 3)[2] in admin_providers.RESOURCES:
            if state.store is None:
                raise ServiceUnavailable("The admin API needs a database (FASTPROXY_DATABASE_URL).")
            with state.body_deadline:
                body = await _read_body(receive) if scope["method"] in ("POST", "PATCH") else b""
            status, result = await admin_providers.handle(state, state.store, scope["method"], path, body)
            await send_json(send, status, json_encoder.encode(result))
            return
        operation, ident = _route(scope["method"], path)
        if state.store is None or state.invalidator is None:
            raise ServiceUnavailable("The admin API needs a database (FASTPROXY_DATABASE_URL).")
        with state.body_deadline:
            body = await _read_body(receive) if scope["method"] in ("POST", "PATCH") else b""
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        call = _Call(state.store, state.invalidator, state.limiter, ident, query, body, state.router)
        status, result = await operation(call)
    except StoreConflict:
        await send_error(send, Conflict("Another user already has this email (compared ignoring case).", param="email"))
        return
    except StoreInvalidValue:
        await send_error(send, invalid_value())
        return
    except StoreError as exc:
        log.error("admin %s %s: %s", scope["method"], path, exc)
        await send_error(send, ServiceUnavailable("The database is unavailable; please retry."))
        return
    except ProxyError as err:
        await send_error(send, err)
        return
    await send_json(send, status, json_encoder.encode(result))


def _authorize(headers: Sequence[tuple[bytes, bytes]], admin_key: bytes) -> None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), admin_key):
                return
            raise AuthenticationFailed("Invalid admin key.")
    raise AuthenticationFailed("The admin API needs 'Authorization: Bearer ADMIN_KEY'.")


_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def _route(method: str, path: str) -> tuple[Operation, str]:
    parts = path.rstrip("/").split("/")[2:]
    if len(parts) == 3 and parts[0] == "keys" and parts[2] == "limits" and _ID.match(parts[1]):
        if method != "GET":
            raise MethodNotAllowed(f"Method {method} not allowed for {path}.", headers=[(b"allow", b"GET")])
        return key_limits, parts[1]
    if len(parts) == 3 and parts[0] == "users" and parts[2] == "usage" and _ID.match(parts[1]):
        if method != "GET":
            raise MethodNotAllowed(f"Method {method} not allowed for {path}.", headers=[(b"allow", b"GET")])
        return user_usage, parts[1]
    if len(parts) in (1, 2) and parts[0] in _TABLE and (len(parts) == 1 or _ID.match(parts[1])):
        table = _TABLE[parts[0]][len(parts) - 1]
        operation = table.get(method)
        if operation is None:
            allow = ", ".join(sorted(table)).encode()
            raise MethodNotAllowed(f"Method {method} not allowed for {path}.", headers=[(b"allow", allow)])
        return operation, parts[1] if len(parts) == 2 else ""
    raise RouteNotFound(f"Invalid URL ({method} {path})")


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client disconnected.")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise InvalidRequest(f"Request body too large: the admin API accepts {MAX_BODY} bytes.")
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    if not body.strip():
        raise InvalidRequest("A JSON body is required.")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$")
        path = where.rstrip("`").lstrip(".")
        field = re.search(r"field `([^`]+)`", reason)
        if field:
            path = f"{path}.{field.group(1)}" if path else field.group(1)
        raise InvalidRequest(f"Invalid '{path or 'body'}': {reason}.", param=path or None) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest("The request body is not valid JSON.") from exc


def _check_limits(limits: object, param: str = "limits") -> None:
    if isinstance(limits, Limits):
        for name in limits.__struct_fields__:
            value = getattr(limits, name)
            if value is not None and value < 0:
                raise InvalidRequest(
                    f"Invalid '{param}.{name}': must be 0 or more (null means unlimited).", param=f"{param}.{name}"
                )


def _check_upstream_key(router: Router, value: object) -> None:
    """A pin must name a key some provider holds (checked here, once: a typo would fail every request)."""
    if isinstance(value, str) and not any(k.id == value for p in router.providers.values() for k in p.keys):
        raise InvalidRequest(
            f"Invalid 'upstream_key': no provider has a key with id '{value}' (see GET /admin/providers).",
            param="upstream_key",
        )


def _page(query: dict[str, list[str]]) -> tuple[int, str | None]:
    raw = query.get("limit", [str(DEFAULT_PAGE)])[-1]
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequest(f"Invalid 'limit': expected an integer from 1 to {MAX_PAGE}.", param="limit")
    after = query.get("after", [None])[-1] or None
    return int(raw), after


def _list(items: Sequence[Any], limit: int) -> dict[str, Any]:
    """OpenAI's list shape; one extra row was fetched to know whether there is a next page."""
    page = list(items[:limit])
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(items) > limit,
    }


async def _user_or_404(call: _Call, user_id: str) -> Any:
    user = await call.store.get_user(user_id)
    if user is None:
        raise NotFound(f"No user with id '{user_id}'.", param="user_id")
    return user


async def create_user(call: _Call) -> tuple[int, Any]:
    body: UserCreate = _decode(user_create_decoder, call.body)
    _check_limits(body.limits)
    _check_upstream_key(call.router, body.upstream_key)
    user = await provisioning.create_user(call.store, body.name, body.email, body.limits, body.upstream_key)
    log.info("admin: user %s created", user.id)
    return 201, user


async def list_users(call: _Call) -> tuple[int, Any]:
    limit, after = _page(call.query)
    return 200, _list(await call.store.list_users(limit + 1, after), limit)


async def get_user(call: _Call) -> tuple[int, Any]:
    return 200, await _user_or_404(call, call.ident)


async def patch_user(call: _Call) -> tuple[int, Any]:
    body: UserPatch = _decode(user_patch_decoder, call.body)
    _check_limits(body.limits)
    _check_upstream_key(call.router, body.upstream_key)
    user = await call.store.update_user(call.ident, changes(body))
    if user is None:
        raise NotFound(f"No user with id '{call.ident}'.")
    await call.invalidator.user_changed(user.id)
    log.info("admin: user %s updated", user.id)
    return 200, user


async def delete_user(call: _Call) -> tuple[int, Any]:
    result = await call.store.disable_user(call.ident, int(time.time()))
    if result is None:
        raise NotFound(f"No user with id '{call.ident}'.")
    user, revoked = result
    await call.invalidator.user_changed(user.id)
    log.info("admin: user %s disabled, %d keys revoked", user.id, len(revoked))
    return 200, user


async def create_key(call: _Call) -> tuple[int, Any]:
    body: KeyCreate = _decode(key_create_decoder, call.body)
    _check_limits(body.limits)
    _check_upstream_key(call.router, body.upstream_key)
    if body.user_id is not None:
        user = await _user_or_404(call, body.user_id)
        if user.disabled:
            raise InvalidRequest(f"User '{body.user_id}' is disabled.", param="user_id")
    created = await provisioning.create_key(
        call.store,
        body.name,
        body.user_id,
        body.allowed_models,
        body.expires_at,
        body.limits,
        body.cache,
        body.upstream_key,
    )
    log.info("admin: key %s created (ending in %s)", created.id, created.key_hint)
    return 201, created


async def list_keys(call: _Call) -> tuple[int, Any]:
    limit, after = _page(call.query)
    user_id = call.query.get("user_id", [None])[-1] or None
    return 200, _list(await call.store.list_keys(limit + 1, after, user_id), limit)


async def get_key(call: _Call) -> tuple[int, Any]:
    key = await call.store.get_key(call.ident)
    if key is None:
        raise NotFound(f"No API key with id '{call.ident}'.")
    return 200, key


async def patch_key(call: _Call) -> tuple[int, Any]:
    body: KeyPatch = _decode(key_patch_decoder, call.body)
    _check_limits(body.limits)
    _check_upstream_key(call.router, body.upstream_key)
    key = await call.store.update_key(call.ident, changes(body))
    if key is None:
        raise NotFound(f"No API key with id '{call.ident}'.")
    await call.invalidator.key_changed(key.id)
    log.info("admin: key %s updated", key.id)
    return 200, key


async def delete_key(call: _Call) -> tuple[int, Any]:
    key = await call.store.revoke_key(call.ident, int(time.time()))
    if key is None:
        raise NotFound(f"No API key with id '{call.ident}'.")
    await call.invalidator.key_changed(key.id)
    log.info("admin: key %s revoked", key.id)
    return 200, key


async def key_limits(call: _Call) -> tuple[int, Any]:
    """Each rate-limit bucket that applies to the key (its own, its user's, global), read without taking."""
    key = await call.store.get_key(call.ident)
    if key is None:
        raise NotFound(f"No API key with id '{call.ident}'.")
    user = await call.store.get_user(key.user_id) if key.user_id else None
    levels = await call.limiter.levels(principal_of(key, user))
    return 200, {"object": "list", "key_id": key.id, "data": levels}


async def user_usage(call: _Call) -> tuple[int, Any]:
    await _user_or_404(call, call.ident)
    return await usage_api.admin_user_usage(call)


async def usage_item(call: _Call) -> tuple[int, Any]:
    if call.ident != "summary":
        raise RouteNotFound(f"Invalid URL (GET /admin/usage/{call.ident})")
    return await usage_api.admin_summary(call)


# resource -> (collection methods, item methods)
_TABLE: dict[str, tuple[dict[str, Operation], dict[str, Operation]]] = {
    "users": (
        {"POST": create_user, "GET": list_users},
        {"GET": get_user, "PATCH": patch_user, "DELETE": delete_user},
    ),
    "keys": (
        {"POST": create_key, "GET": list_keys},
        {"GET": get_key, "PATCH": patch_key, "DELETE": delete_key},
    ),
    "usage": ({"GET": usage_api.admin_usage}, {"GET": usage_item}),
}
