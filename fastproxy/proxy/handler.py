"""Request orchestration. The hot path reads top to bottom in `proxy`:

    headers (one pass) -> auth (cached) -> body, with a size limit -> narrow view -> model allowed?
    -> limiter admits (one call) -> route: the model's targets, tried until one answers (failover.py),
    original bytes (only `model` rewritten for a target that names another) -> response streamed back
    after its commit point, SSE watched for usage -> limiter settles -> record handed to the observers
    (log, metrics, usage writer)

Handlers talk only to adapters held by State; no network library is imported here.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine
from dataclasses import dataclass
from time import perf_counter, time
from typing import Any

from fastproxy.cache.service import Lookup
from fastproxy.core.errors import InvalidRequest, PermissionDenied, ProxyError
from fastproxy.core.records import RequestRecord
from fastproxy.core.responses import send_error
from fastproxy.core.schemas import ANONYMOUS, Principal, RequestView, TokenUsage
from fastproxy.core.types import RawHeaders, Receive, Scope, Send
from fastproxy.proxy import messages
from fastproxy.proxy.body import (
    ClientDisconnected,
    decode_view,
    estimate_prompt,
    estimate_tokens,
    parse_length,
    read_body,
    with_include_usage,
)
from fastproxy.proxy.exchange import Outcome, cancel_on_disconnect, passthrough
from fastproxy.proxy.failover import run_plan
from fastproxy.proxy.headers import (
    DROP_REQUEST,
    DROP_REQUEST_ACCOUNTED,
    IDENTITY,
    MAX_REQUEST_ID,
    proxy_timing,
    server_timing,
)
from fastproxy.proxy.models import serve_models
from fastproxy.server.state import State
from fastproxy.upstream import HeaderList
from fastproxy.upstream.router import LiveRoute, Plan

_NOTHING_USED = TokenUsage()


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    # Read a narrow view of the body and the usage of the response.
    accounted: bool
    # A stream here may be asked for usage on the client's behalf (chat and completions).
    injects_usage: bool = False
    # Anthropic ingress (/v1/messages...): x-api-key, legs per provider type, Anthropic errors (proxy/messages.py).
    messages: bool = False


async def proxy(state: State, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
    started = perf_counter()
    drop = DROP_REQUEST_ACCOUNTED if endpoint.accounted else DROP_REQUEST
    forward: HeaderList = []
    request_id = b""
    authorization: bytes | None = None
    content_length: bytes | None = None
    for name, value in scope["headers"]:
        if name not in drop:
            forward.append((name.decode("latin-1"), value.decode("latin-1")))
        elif name == b"authorization":
            authorization = value
        elif name == b"x-request-id":
            request_id = value
        elif name == b"content-length":
            content_length = value
    if endpoint.messages and authorization is None:
        authorization = messages.credential(scope["headers"])
    id_from_client = True
    if not request_id or len(request_id) > MAX_REQUEST_ID or not request_id.isascii():
        request_id = os.urandom(12).hex().encode()
        id_from_client = False
    client = scope.get("client")
    out = Outcome()
    out.started = started
    principal = ANONYMOUS
    # In flight from here to the end of the exchange, however it ends (a cancelled task included).
    # Counted inline, not by a wrapping coroutine: that would add a frame to every suspension.
    metrics = state.metrics
    if metrics is not None:
        metrics.serving += 1
    try:
        principal = await state.auth.authenticate(authorization)
        declared = parse_length(content_length) if content_length is not None else -1
        with state.body_deadline:  # a body trickled in or never ending: 408 after body_read_timeout
            body = await read_body(receive, state.settings.max_body_bytes, declared)
        estimate = 0
        lookup: Lookup | None = None
        route: LiveRoute | None = None
        if endpoint.accounted:
            view = decode_view(body)
            body = _prepare_body(body, view, endpoint, principal, out)
            estimate = estimate_tokens(len(body), view, state.settings.default_max_tokens)
            out.prompt_estimate = estimate_prompt(len(body))
            forward.append(IDENTITY)
            if endpoint.messages:  # each target's leg is ready, any translation checked, before anything is taken
                route = messages.prepare(body, view, state.router.resolve(out.model or ""), scope["path"][3:],
                                         forward, out)  # fmt: skip
                if endpoint.name == messages.COUNT_ENDPOINT:
                    estimate = 0  # counting takes a request from the limits, no tokens
            elif state.cache is not None:  # cache hook 1: look the request up before anything is taken or sent
                route = state.router.resolve(view.model or "")
                lookup = await state.cache.lookup(
                    scope["headers"],
                    endpoint.name,
                    principal,
                    view.temperature,
                    view.seed,
                    # The resolved route, and whether the stream is given back without its usage chunk
                    # (what is stored is what the client was sent).
                    route.name + ("|1" if out.injected else "|0"),
                    view.model or "",
                    body,
                    route.cache,
                )
                if lookup.entry is not None and not state.settings.cache_hit_tokens:
                    estimate = 0  # a hit takes one request from the limits, no tokens
        admission = await state.limiter.admit(principal, estimate, client[0] if client else None)
        forward.append(("x-request-id", request_id.decode()))
        tail = scope["path"][3:]
        query = scope["query_string"].decode("latin-1") if scope["query_string"] else ""
        work: Coroutine[Any, Any, None] | None = None
        if lookup is not None and lookup.entry is not None:
            pass  # cache hook 2: a stored hit, sent below at once (nothing to wait for: no plan, no watcher)
        elif endpoint.messages and route is None:  # count_tokens no Anthropic provider can answer
            work = messages.count_locally(body, send, request_id, admission.headers, out)
        elif out.model is not None:
            # A model request: its route's targets, one at a time, until one answers (proxy/failover.py).
            plan = state.router.plan(route or state.router.resolve(out.model), out.model, principal.upstream_key)
            if lookup is not None and lookup.answers:  # cache hook 2: an identical request in flight
                work = _cached(state, lookup, plan, scope["method"], tail, query, forward, body, send, request_id,
                               admission.headers, out)  # fmt: skip
            else:
                extra = admission.headers
                if lookup is not None:  # cache hook 3: the answer is teed into the cache (proxy/failover.py)
                    extra = [*extra, lookup.header]
                    out.tee = lookup if lookup.tees else None
                work = run_plan(state, plan, scope["method"], tail, query, forward, body, send, request_id,
                                extra, out)  # fmt: skip
        elif endpoint.name == "models" and state.catalog is not None and state.router.configured:
            work = serve_models(state.catalog, scope["method"], tail, send, request_id, admission.headers, out)
        else:
            forward.extend(state.upstream_headers)
            url = state.base_url + tail + ("?" + query if query else "")
            work = passthrough(state, scope["method"], url, forward, body, send, request_id, admission.headers, out)
        try:
            if work is not None:
                await cancel_on_disconnect(receive, work, out)
            elif lookup is not None:
                await _hit(lookup, send, request_id, admission.headers, out)
        finally:
            if lookup is not None:
                lookup.release()
            free = out.cache_hit and not state.settings.cache_hit_tokens
            await state.limiter.settle(admission, _NOTHING_USED if free else _used(out))
    except ProxyError as err:
        out.status, out.error = err.status, err.code or err.type
        now = perf_counter()
        err.headers.append(server_timing(started, out.sent, now) if out.sent else proxy_timing(started, now))
        await (messages.send_error if endpoint.messages else send_error)(send, err, request_id)
    except ClientDisconnected:
        out.status, out.disconnected = 499, True
    finally:
        if metrics is not None:
            metrics.serving -= 1
    record = RequestRecord(
        request_id=request_id.decode(),
        method=scope["method"],
        path=scope["path"],
        endpoint=endpoint.name,
        model=out.model,
        stream=out.stream,
        status=out.status,
        upstream_status=out.upstream_status,
        usage=out.usage,
        latency_ms=round((perf_counter() - started) * 1000, 3),
        ttfb_ms=round((out.ttfb - started) * 1000, 3) if out.ttfb else None,
        proxy_ms=round((out.sent - started) * 1000, 3) if out.sent else None,
        error=out.error,
        key_id=principal.key_id,
        user_id=principal.user_id,
        key_hint=principal.key_hint,
        client_ip=client[0] if client else None,
        disconnected=out.disconnected,
        events=out.events,
        prompt_estimate=out.prompt_estimate,
        request_id_from_client=id_from_client,
        ts=time(),
        pid=state.pid,
        provider=out.provider,
        upstream_model=out.upstream_model,
        attempts=out.attempts,
        failures=out.failures,
        partial=out.partial,
        cache_hit=out.cache_hit,
    )
    for observe in state.observers:
        observe(record)


async def _hit(lookup: Lookup, send: Send, request_id: bytes, limits: RawHeaders, out: Outcome) -> None:
    now = perf_counter()
    headers: RawHeaders = [(b"x-request-id", request_id), proxy_timing(out.started, now), *limits]
    await lookup.serve(send, headers, None)
    out.status, out.cache_hit, out.usage, out.ttfb = 200, True, lookup.usage, now


async def _cached(
    state: State,
    lookup: Lookup,
    plan: Plan,
    method: str,
    tail: str,
    query: str,
    forward: HeaderList,
    body: bytes,
    send: Send,
    request_id: bytes,
    limits: RawHeaders,
    out: Outcome,
) -> None:
    """A follower of an identical request in flight (fastproxy/cache), answered here; when the followed
    request failed before answering, this one goes to its route as usual."""
    now = perf_counter()
    headers: RawHeaders = [(b"x-request-id", request_id), proxy_timing(out.started, now), *limits]
    if await lookup.serve(send, headers, None):
        out.status, out.cache_hit, out.usage, out.ttfb = 200, True, lookup.usage, now
        return
    await run_plan(state, plan, method, tail, query, forward, body, send, request_id, [*limits, lookup.header], out)


def _used(out: Outcome) -> TokenUsage | None:
    """What to settle the token limits with: the reported usage; nothing when upstream refused the
    request or never answered; otherwise unknown (None: the reservation stands, e.g. a cut stream)."""
    if out.usage is None and not out.disconnected and (out.upstream_status is None or out.upstream_status >= 400):
        return _NOTHING_USED
    return out.usage


def _prepare_body(body: bytes, view: RequestView, endpoint: Endpoint, principal: Principal, out: Outcome) -> bytes:
    """Check the fields the proxy acts on; return the bytes to send upstream."""
    if not view.model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if principal.allowed_models is not None and view.model not in principal.allowed_models:
        raise PermissionDenied(f"This API key may not use the model '{view.model}'.", param="model")
    out.model = view.model
    out.stream = bool(view.stream)
    if out.stream and endpoint.injects_usage and not (view.stream_options and view.stream_options.include_usage):
        out.injected = True
        return with_include_usage(body, view)
    return body
