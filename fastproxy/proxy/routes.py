"""The route table: (path, method) -> handler, looked up with two dict gets on the hot path.

Paths not in the table: `/v1/models/{model}` goes to the model handler; any other `/v1/*`
request is passed through to the upstream as it is; everything else is 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from fastproxy.accounts import admin
from fastproxy.core.types import Receive, Scope, Send
from fastproxy.observability import probes
from fastproxy.proxy.handler import Endpoint, proxy
from fastproxy.server.state import State
from fastproxy.usage import api as usage_api

Handler = Callable[[State, Scope, Receive, Send], Awaitable[None]]

CHAT = Endpoint("chat.completions", accounted=True, injects_usage=True)
COMPLETIONS = Endpoint("completions", accounted=True, injects_usage=True)
EMBEDDINGS = Endpoint("embeddings", accounted=True)
RESPONSES = Endpoint("responses", accounted=True)
MODELS = Endpoint("models", accounted=False)
PASSTHROUGH = Endpoint("passthrough", accounted=False)


def _to(endpoint: Endpoint) -> Handler:
    return partial(proxy, endpoint=endpoint)


ROUTES: dict[str, dict[str, Handler]] = {
    "/v1/chat/completions": {"POST": _to(CHAT), "GET": _to(PASSTHROUGH)},
    "/v1/completions": {"POST": _to(COMPLETIONS)},
    "/v1/embeddings": {"POST": _to(EMBEDDINGS)},
    "/v1/responses": {"POST": _to(RESPONSES)},
    "/v1/models": {"GET": _to(MODELS)},
    # Exact routes, so the passthrough below never sends them upstream.
    "/v1/usage": {"GET": usage_api.own_usage},
    "/v1/usage/summary": {"GET": usage_api.own_summary},
    "/health": {"GET": probes.health, "HEAD": probes.health},
    "/readyz": {"GET": probes.readyz},
    "/metrics": {"GET": probes.metrics},
    "/": {"GET": probes.root},
}
MODEL_ITEM_PREFIX = "/v1/models/"
MODEL_ITEM: dict[str, Handler] = {"GET": _to(MODELS), "DELETE": _to(MODELS)}
PASSTHROUGH_PREFIX = "/v1/"
PASSTHROUGH_HANDLER = _to(PASSTHROUGH)
ADMIN_PREFIX = "/admin/"


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
        return admin.dispatch
    return None
