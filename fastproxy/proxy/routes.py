"""The route table: (path, method) -> handler, looked up with two dict gets on the hot path.

Paths not in the table: `/v1/models/{model}` goes to the model handler; any other `/v1/*`
request is passed through to the upstream as it is; everything else is 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from fastproxy.accounts import admin
from fastproxy.contract import openapi
from fastproxy.core.types import Receive, Scope, Send
from fastproxy.observability import probes
from fastproxy.proxy.handler import Endpoint, proxy
from fastproxy.selfservice import api as selfservice_api
from fastproxy.server.state import State
from fastproxy.usage import api as usage_api

Handler = Callable[[State, Scope, Receive, Send], Awaitable[None]]

CHAT = Endpoint("chat.completions", accounted=True, injects_usage=True)
COMPLETIONS = Endpoint("completions", accounted=True, injects_usage=True)
EMBEDDINGS = Endpoint("embeddings", accounted=True)
RESPONSES = Endpoint("responses", accounted=True)
# Anthropic's Messages API for Anthropic SDK clients (proxy/messages.py).
MESSAGES = Endpoint("messages", accounted=True, messages=True)
COUNT_TOKENS = Endpoint("messages.count_tokens", accounted=True, messages=True)
MODELS = Endpoint("models", accounted=False)
PASSTHROUGH = Endpoint("passthrough", accounted=False)


def _to(endpoint: Endpoint) -> Handler:
    return partial(proxy, endpoint=endpoint)


async def _passthrough(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    # A browser's CORS preflight is answered here, never sent upstream.
    if scope["method"] == "OPTIONS":
        await selfservice_api.preflight(state, scope, receive, send)
        return
    await proxy(state, scope, receive, send, endpoint=PASSTHROUGH)


# OPTIONS on every /v1 route: CORS preflights, answered without authentication (fastproxy.selfservice.web).
PREFLIGHT: Handler = selfservice_api.preflight
ROUTES: dict[str, dict[str, Handler]] = {
    "/v1/chat/completions": {"POST": _to(CHAT), "GET": _to(PASSTHROUGH), "OPTIONS": PREFLIGHT},
    "/v1/completions": {"POST": _to(COMPLETIONS), "OPTIONS": PREFLIGHT},
    "/v1/embeddings": {"POST": _to(EMBEDDINGS), "OPTIONS": PREFLIGHT},
    "/v1/responses": {"POST": _to(RESPONSES), "OPTIONS": PREFLIGHT},
    "/v1/messages": {"POST": _to(MESSAGES), "OPTIONS": PREFLIGHT},
    "/v1/messages/count_tokens": {"POST": _to(COUNT_TOKENS), "OPTIONS": PREFLIGHT},
    "/v1/models": {"GET": _to(MODELS), "OPTIONS": PREFLIGHT},
    # Exact routes, so the passthrough below never sends them upstream.
    "/v1/usage": {"GET": usage_api.own_usage, "OPTIONS": PREFLIGHT},
    "/v1/usage/summary": {"GET": usage_api.own_summary, "OPTIONS": PREFLIGHT},
    "/health": {"GET": probes.health, "HEAD": probes.health},
    "/readyz": {"GET": probes.readyz},
    "/metrics": {"GET": probes.metrics},
    "/": {"GET": probes.root},
    # The OpenAPI document of everything above and below (fastproxy/contract), built on first request.
    "/openapi.json": {"GET": openapi},
}
MODEL_ITEM_PREFIX = "/v1/models/"
MODEL_ITEM: dict[str, Handler] = {"GET": _to(MODELS), "DELETE": _to(MODELS), "OPTIONS": PREFLIGHT}
PASSTHROUGH_PREFIX = "/v1/"
PASSTHROUGH_HANDLER: Handler = _passthrough
ADMIN_PREFIX = "/admin/"
ADMIN_HANDLER: Handler = partial(selfservice_api.secured_admin, admin.dispatch)
SELFSERVICE_PREFIX = "/api/"


def resolve(path: str) -> dict[str, Handler] | Handler | None:
    """The handlers by method for `path`, or the one handler taking every method, or None (404)."""
    methods = ROUTES.get(path)
    if methods is not None:
        return methods
    if path.startswith(MODEL_ITEM_PREFIX) and len(path) > len(MODEL_ITEM_PREFIX):
        return MODEL_ITEM
    if path.startswith(PASSTHROUGH_PREFIX):
        return PASSTHROUGH_HANDLER
    # After every /v1 lookup, so the admin API costs the hot path nothing.
    if path.startswith(ADMIN_PREFIX) or path == "/admin":
        return ADMIN_HANDLER
    if path.startswith(SELFSERVICE_PREFIX):
        return selfservice_api.dispatch
    return None
