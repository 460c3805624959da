"""The admin API's providers and model routes (issue 17, item 7):

    GET|POST /admin/providers      GET|PATCH|DELETE /admin/providers/{name}
    GET|POST /admin/routes         GET|PATCH|DELETE /admin/routes/{name}

Bodies are the config's shape (fastproxy.core.providers) plus `name` on POST, validated by the same Structs
and checks as the config file, so errors name the same fields. Entries from the config file or the
environment are listed with `"source": "config"` and can't be changed here (409). Upstream keys are stored
encrypted (fastproxy.accounts.stored_providers) and shown only as their last 4 characters; a provider is
shown with each key's live state as this worker sees it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import msgspec

from fastproxy.accounts.stored_providers import (
    PROVIDER,
    ROUTE,
    SECRET_KEYS_SETTING,
    has_keys,
    load_stored,
    merge,
    seal,
)
from fastproxy.core.errors import InvalidRequest, MethodNotAllowed, ProxyError, RouteNotFound, ServiceUnavailable
from fastproxy.core.providers import DEFAULT_PROVIDER, ConfigError, Provider, Route
from fastproxy.core.settings import mask
from fastproxy.server.state import State
from fastproxy.store import Store
from fastproxy.upstream.providers import LiveKey

log = logging.getLogger("fastproxy.admin")

RESOURCES = {"providers": PROVIDER, "routes": ROUTE}
CONFIG = "config"
DATABASE = "database"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(ProxyError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


def _field_of(message: str) -> str | None:
    """The field a ConfigError names ("provider 'x': api_keys[0].key is empty" -> "api_keys[0].key")."""
    m = re.match(r"^(?:provider|route) '[^']*':? (?:invalid )?([A-Za-z_][\w.\[\]]*)", message)
    return m.group(1) if m and m.group(1) not in ("a", "the") else None


def _invalid(exc: ConfigError) -> InvalidRequest:
    message = str(exc)
    return InvalidRequest(message[:1].upper() + message[1:] + ".", param=_field_of(message))


def _parse(kind: str, name: str, table: dict[str, Any]) -> Provider | Route:
    label = f"{kind} {name!r}"
    try:
        if kind == PROVIDER:
            return msgspec.convert(table, Provider, strict=False)
        return msgspec.convert(table, Route, strict=False)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$")
        where = where.rstrip("`").lstrip(".")
        field = re.search(r"field `([^`]+)`", reason)
        if field:
            where = f"{where}.{field.group(1)}" if where else field.group(1)
        raise _invalid(ConfigError(f"{label}: {where}: {reason}" if where else f"{label}: {reason}")) from exc


def _body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequest("A JSON body is required.")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


async def handle(state: State, store: Store, method: str, path: str, raw: bytes) -> tuple[int, Any]:
    parts = path.rstrip("/").split("/", 3)[2:]
    kind = RESOURCES[parts[0]]
    # The ASGI path is already percent-decoded: a route named `openai/gpt-4o` arrives whole in parts[1].
    name = parts[1] if len(parts) == 2 else None
    allowed = ("GET", "POST") if name is None else ("DELETE", "GET", "PATCH")
    if method not in allowed:
        allow = ", ".join(sorted(allowed)).encode()
        raise MethodNotAllowed(f"Method {method} not allowed for {path}.", headers=[(b"allow", allow)])
    if name == "":
        raise RouteNotFound(f"Invalid URL ({method} {path})")
    entries = _Entries(state, store)
    await entries.load()
    if name is None and method == "GET":
        names = entries.names(kind)
        return 200, {"object": "list", "data": [entries.show(kind, n) for n in names]}
    if name is None:
        body = _body(raw)
        name = body.pop("name", None)
        if not isinstance(name, str) or not name:
            raise InvalidRequest("Invalid 'name': a non-empty string is required.", param="name")
        if entries.source(kind, name) is not None:
            raise Conflict(f"The {kind} {name!r} already exists; use PATCH /admin/{parts[0]}/{{name}}.", param="name")
        await entries.put(kind, name, body)
        log.info("admin: %s %r created", kind, name)
        return 201, entries.show(kind, name)
    source = entries.source(kind, name)
    if source is None:
        raise NotFound(f"No {kind} named {name!r}.")
    if method == "GET":
        return 200, entries.show(kind, name)
    if source == CONFIG:
        raise Conflict(
            f"The {kind} {name!r} comes from the config file or the environment and is read-only here; "
            "change it there and restart."
        )
    if method == "PATCH":
        body = _body(raw)
        if "name" in body and body.pop("name") != name:
            raise InvalidRequest("Invalid 'name': a name can't be changed; create a new entry.", param="name")
        current = msgspec.to_builtins(entries.stored(kind)[name])
        assert isinstance(current, dict)
        if kind == PROVIDER and ("api_key" in body or "api_keys" in body):
            # New keys replace every old one: a key given as `api_key` and one in `api_keys` would both stay.
            current.pop("api_key", None)
            current.pop("api_keys", None)
        await entries.put(kind, name, {**current, **body})
        log.info("admin: %s %r updated", kind, name)
        return 200, entries.show(kind, name)
    await entries.delete(kind, name)
    log.info("admin: %s %r deleted", kind, name)
    return 200, {"object": kind, "name": name, "deleted": True}


class _Entries:
    """Config and stored providers and routes, as one admin request sees them."""

    def __init__(self, state: State, store: Store) -> None:
        sync = state.provider_sync
        if sync is None:  # lifespan sets it whenever there is a store
            raise ServiceUnavailable("Providers and routes are not managed on this worker.")
        self._state = state
        self._store = store
        self._sync = sync
        self._providers: dict[str, Provider] = {}
        self._routes: dict[str, Route] = {}

    async def load(self) -> None:
        try:
            self._providers, self._routes = await load_stored(self._store, self._sync.box)
        except ConfigError as exc:
            raise ServiceUnavailable(f"The stored providers can't be read: {exc}.") from exc

    def _config(self, kind: str) -> dict[str, Any]:
        settings = self._state.settings
        if kind == PROVIDER:
            return {DEFAULT_PROVIDER: None, **settings.providers}
        return dict(settings.routes)

    def stored(self, kind: str) -> dict[str, Any]:
        return self._providers if kind == PROVIDER else self._routes

    def names(self, kind: str) -> list[str]:
        config = self._config(kind)
        return list(config) + sorted(n for n in self.stored(kind) if n not in config)

    def source(self, kind: str, name: str) -> str | None:
        if name in self._config(kind):
            return CONFIG
        return DATABASE if name in self.stored(kind) else None

    async def put(self, kind: str, name: str, table: dict[str, Any]) -> None:
        entry = _parse(kind, name, table)
        providers, routes = dict(self._providers), dict(self._routes)
        if isinstance(entry, Provider):
            providers[name] = entry
        else:
            routes[name] = entry
        try:
            merge(self._state.settings, providers, routes, os.environ)
        except ConfigError as exc:
            raise _invalid(exc) from exc
        if isinstance(entry, Provider):
            if has_keys(entry) and not self._sync.box.enabled:
                raise ServiceUnavailable(
                    f"Storing upstream keys needs {SECRET_KEYS_SETTING} (comma-separated Fernet keys) "
                    "to encrypt them; set it on every instance."
                )
            body = seal(entry, self._sync.box)
        else:
            body = msgspec.json.encode(entry).decode()
        await self._store.put_entry(kind, name, body, int(time.time()))
        self._providers, self._routes = providers, routes
        await self._sync.changed()

    async def delete(self, kind: str, name: str) -> None:
        providers, routes = dict(self._providers), dict(self._routes)
        (providers if kind == PROVIDER else routes).pop(name)
        try:
            merge(self._state.settings, providers, routes, os.environ)
        except ConfigError as exc:
            raise Conflict(f"The {kind} {name!r} can't be deleted: {exc}.") from exc
        await self._store.delete_entry(kind, name)
        self._providers, self._routes = providers, routes
        await self._sync.changed()

    def show(self, kind: str, name: str) -> dict[str, Any]:
        source = self.source(kind, name)
        if kind == ROUTE:
            route = self._config(kind).get(name) or self._routes[name]
            return {"object": "route", "name": name, "source": source, **msgspec.to_builtins(route)}
        live = self._state.router.providers.get(name)
        config = live.config if live is not None else self._providers[name]
        out: dict[str, Any] = {
            "object": "provider",
            "name": name,
            "source": source,
            "type": config.type,
            "base_url": config.base_url,
            "api_version": config.api_version,
            "anthropic_version": config.anthropic_version,
            "anthropic_beta": config.anthropic_beta,
            "default_max_tokens": config.default_max_tokens,
            # Header values may be credentials too (OpenAI-Organization, custom auth).
            "headers": {k: mask(v) for k, v in config.headers.items()},
            "first_token_timeout": config.first_token_timeout,
            "stream_idle_timeout": config.stream_idle_timeout,
        }
        if live is not None:
            now = time.monotonic()
            out["keys"] = [_key_state(k, now) for k in live.keys]
        else:
            # Not yet live on this worker (an invalid combination, or a reload still to come).
            out["keys"] = [
                {"id": k.id, "key_hint": mask(k.key) if not k.key.startswith("env:") else k.key, "weight": k.weight}
                for k in config.all_keys()
            ]
        return out


def _key_state(key: LiveKey, now: float) -> dict[str, Any]:
    breaker = key.breaker
    return {
        "id": key.id,
        "key_hint": key.hint,
        "weight": key.weight,
        "breaker": breaker.state,
        "inflight": key.inflight,
        "ewma_ms": round(key.ewma_ms, 3),
        "ttft_ms": round(key.ttft_ms, 3),
        "last_error": key.last_error,
        "cooldown_remaining": round(max(0.0, key.ready_at() - now), 3),
        "ratelimit": dict(key.ratelimit) or None,
    }
