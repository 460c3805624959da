"""The usage API: a key's own records and totals under /v1, everyone's for operators under /admin.

    GET /v1/usage            the calling key's records   ?limit (1-1000, 100) &after (record id) &start &end &model
    GET /v1/usage/summary    the calling key's totals, by model and by UTC day   ?start &end &model
    GET /admin/usage         every record   ?key_id &user_id + the filters above
    GET /admin/usage/summary totals   ?key_id &user_id &start &end &model
    GET /admin/users/{id}/usage   one user's records (404 for an unknown user)

`start` (inclusive) and `end` (exclusive) are Unix seconds. Lists have OpenAI's list shape
(`data`, `first_id`, `last_id`, `has_more`); pass `last_id` as `after` for the next page.
Everything is computed in SQL (see the usage indexes in the store migrations).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

from fastproxy.core.errors import InvalidRequest, PermissionDenied, ProxyError, ServiceUnavailable
from fastproxy.core.responses import send_error, send_json
from fastproxy.core.schemas import json_encoder
from fastproxy.core.types import Receive, Scope, Send
from fastproxy.server.state import State
from fastproxy.store import Store, StoreError, StoreInvalidValue, invalid_value
from fastproxy.usage.query import UsageQuery, UsageRecord

log = logging.getLogger("fastproxy.usage")

DEFAULT_PAGE = 100
MAX_PAGE = 1000
_NUMBER = re.compile(r"^\d{1,12}(\.\d{1,9})?$")
Query = dict[str, list[str]]


def _one(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def parse_query(query: Query, *, admin: bool) -> UsageQuery:
    """Filters from a query string; InvalidRequest naming the parameter when one is malformed."""
    # Query strings are parsed keeping blank values: `?limit=` is a malformed limit, not an absent one.
    raw_limit = _one(query, "limit")
    if raw_limit is None:
        raw_limit = str(DEFAULT_PAGE)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise InvalidRequest(f"Invalid 'limit': expected an integer from 1 to {MAX_PAGE}.", param="limit")
    after = _one(query, "after")
    if after is not None and not (after.isdigit() and len(after) <= 18):
        raise InvalidRequest("Invalid 'after': expected the id of a usage record.", param="after")
    times: dict[str, float | None] = {}
    for name in ("start", "end"):
        value = _one(query, name)
        if value is not None and not _NUMBER.match(value):
            raise InvalidRequest(f"Invalid '{name}': expected Unix seconds.", param=name)
        times[name] = float(value) if value is not None else None
    model = _one(query, "model") or None
    if model is not None and len(model) > 200:
        raise InvalidRequest("Invalid 'model': too long.", param="model")
    return UsageQuery(
        key_id=(_one(query, "key_id") or None) if admin else None,
        user_id=(_one(query, "user_id") or None) if admin else None,
        model=model,
        start=times["start"],
        end=times["end"],
        after=int(after) if after is not None else None,
        limit=int(raw_limit),
    )


def page(records: Sequence[UsageRecord], limit: int) -> dict[str, Any]:
    """OpenAI's list shape; one extra record was fetched to know whether there is a next page."""
    data = list(records[:limit])
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
        "has_more": len(records) > limit,
    }


async def records(store: Store, q: UsageQuery) -> dict[str, Any]:
    found = await store.list_usage(UsageQuery(**{**_fields(q), "limit": q.limit + 1}))
    return page(found, q.limit)


def _fields(q: UsageQuery) -> dict[str, Any]:
    return {name: getattr(q, name) for name in q.__struct_fields__}


# -- /v1/usage: the calling key's own -----------------------------------------------------------
async def own_usage(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    await _own(state, scope, send, summary=False)


async def own_summary(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    await _own(state, scope, send, summary=True)


async def _own(state: State, scope: Scope, send: Send, summary: bool) -> None:
    authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    try:
        principal = await state.auth.authenticate(authorization)
        if principal.key_id is None:
            raise PermissionDenied("Usage is recorded per API key; this proxy runs without keys.", code="no_api_key")
        if state.store is None:
            raise ServiceUnavailable("Usage needs a database (FASTPROXY_DATABASE_URL).")
        q = parse_query(parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True), admin=False)
        q = UsageQuery(**{**_fields(q), "key_id": principal.key_id})
        result: Any = await state.store.usage_summary(q) if summary else await records(state.store, q)
    except StoreInvalidValue:
        await send_error(send, invalid_value())
        return
    except StoreError as exc:
        log.error("usage query failed: %s", exc)
        await send_error(send, ServiceUnavailable("The database is unavailable; please retry."))
        return
    except ProxyError as err:
        await send_error(send, err)
        return
    await send_json(send, 200, json_encoder.encode(result))


# -- /admin: operations registered by fastproxy.accounts.admin -------------------------------------------
class AdminCall(Protocol):
    store: Store
    ident: str
    query: Query


async def admin_usage(call: AdminCall) -> tuple[int, Any]:
    return 200, await records(call.store, parse_query(call.query, admin=True))


async def admin_summary(call: AdminCall) -> tuple[int, Any]:
    return 200, await call.store.usage_summary(parse_query(call.query, admin=True))


async def admin_user_usage(call: AdminCall) -> tuple[int, Any]:
    """`call.ident` is the user id; the caller has checked that the user exists."""
    q = parse_query(call.query, admin=True)
    return 200, await records(call.store, UsageQuery(**{**_fields(q), "user_id": call.ident}))
