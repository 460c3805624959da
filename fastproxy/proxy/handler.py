"""Request orchestration. The hot path reads top to bottom in `proxy`:

    headers (one pass) -> auth (cached) -> body, with a size limit -> narrow view -> model allowed?
    -> limiter admits (one call) -> upstream, original bytes -> response streamed back, SSE watched
    for usage -> limiter settles -> record handed to the observers (log, metrics, usage writer)

Handlers talk only to adapters held by State; no network library is imported here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from time import perf_counter, time
from typing import Any

import msgspec

from fastproxy.core.errors import BodyTooLarge, InvalidRequest, PermissionDenied, ProxyError, UpstreamError
from fastproxy.core.records import RequestRecord
from fastproxy.core.responses import send_error
from fastproxy.core.schemas import (
    ANONYMOUS,
    Principal,
    RequestView,
    TokenUsage,
    json_encoder,
    request_decoder,
    usage_from_json,
)
from fastproxy.core.types import Message, RawHeaders, Receive, Scope, Send
from fastproxy.proxy.sse import SSEWatcher
from fastproxy.server.state import State
from fastproxy.upstream import HeaderList, UpstreamResponse

log = logging.getLogger("fastproxy.proxy")

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The client's credentials are for fastproxy, never for the provider.
_DROP_REQUEST = _HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"x-api-key",
    b"api-key",
    b"cookie",
    b"content-length",
    b"expect",
    b"x-request-id",
}
# Usage is read from these bodies, so they must arrive uncompressed.
_DROP_REQUEST_ACCOUNTED = _DROP_REQUEST | {b"accept-encoding"}
_DROP_RESPONSE = _HOP_BY_HOP | {b"content-length", b"date", b"server", b"set-cookie", b"x-request-id"}
_IDENTITY = ("accept-encoding", "identity")
_STREAM_HEADERS: RawHeaders = [(b"x-accel-buffering", b"no")]
_MAX_REQUEST_ID = 128
_DRAIN_LIMIT = 64 * 1024 * 1024
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
_NOTHING_USED = TokenUsage()


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    # Read a narrow view of the body and the usage of the response.
    accounted: bool
    # A stream here may be asked for usage on the client's behalf (chat and completions).
    injects_usage: bool = False


class ClientDisconnected(Exception):
    """The client went away; nothing more can be sent."""


class _Outcome:
    """Per-request facts gathered on the way, turned into a RequestRecord at the end."""

    __slots__ = (
        "disconnected",
        "error",
        "events",
        "injected",
        "model",
        "prompt_estimate",
        "sent",
        "started",
        "status",
        "stream",
        "ttfb",
        "upstream_status",
        "usage",
    )

    def __init__(self) -> None:
        self.status = 0
        self.upstream_status: int | None = None
        self.model: str | None = None
        self.stream = False
        # The proxy added stream_options.include_usage, so the stream must be given back without it.
        self.injected = False
        self.usage: TokenUsage | None = None
        self.ttfb: float | None = None
        self.error: str | None = None
        self.disconnected = False
        self.events = 0
        self.started = 0.0
        # When the request went upstream (perf_counter), for Server-Timing and the metrics.
        self.sent: float | None = None
        self.prompt_estimate = 0


async def proxy(state: State, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
    started = perf_counter()
    drop = _DROP_REQUEST_ACCOUNTED if endpoint.accounted else _DROP_REQUEST
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
    id_from_client = True
    if not request_id or len(request_id) > _MAX_REQUEST_ID or not request_id.isascii():
        request_id = os.urandom(12).hex().encode()
        id_from_client = False
    client = scope.get("client")
    out = _Outcome()
    out.started = started
    principal = ANONYMOUS
    # In flight from here to the end of the exchange, however it ends (a cancelled task included).
    # Counted inline, not by a wrapping coroutine: that would add a frame to every suspension.
    metrics = state.metrics
    if metrics is not None:
        metrics.serving += 1
    try:
        principal = await state.auth.authenticate(authorization)
        declared = _parse_length(content_length) if content_length is not None else -1
        body = await _read_body(receive, state.settings.max_body_bytes, declared)
        estimate = 0
        if endpoint.accounted:
            view = _decode_view(body)
            body = _prepare_body(body, view, endpoint, principal, out)
            estimate = _estimate_tokens(len(body), view, state.settings.default_max_tokens)
            out.prompt_estimate = _estimate_prompt(len(body))
            forward.append(_IDENTITY)
        admission = await state.limiter.admit(principal, estimate, client[0] if client else None)
        forward.extend(state.upstream_headers)
        forward.append(("x-request-id", request_id.decode()))
        url = state.base_url + scope["path"][3:]
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        exchange = _exchange(state, scope["method"], url, forward, body, send, request_id, admission.headers, out)
        try:
            await _cancel_on_disconnect(receive, exchange, out)
        finally:
            await state.limiter.settle(admission, _used(out))
    except ProxyError as err:
        out.status, out.error = err.status, err.code or err.type
        now = perf_counter()
        err.headers.append(_server_timing(started, out.sent, now) if out.sent else _proxy_timing(started, now))
        await send_error(send, err, request_id)
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
    )
    for observe in state.observers:
        observe(record)


def _used(out: _Outcome) -> TokenUsage | None:
    """What to settle the token limits with: the reported usage; nothing when upstream refused the
    request or never answered; otherwise unknown (None: the reservation stands, e.g. a cut stream)."""
    if out.usage is None and not out.disconnected and (out.upstream_status is None or out.upstream_status >= 400):
        return _NOTHING_USED
    return out.usage


def _parse_length(value: bytes) -> int:
    if not value.isdigit():
        raise InvalidRequest("Invalid Content-Length header.", param="content-length")
    return int(value)


async def _read_body(receive: Receive, limit: int, content_length: int) -> bytes:
    """The whole body, refused as soon as it is known to exceed `limit` (never buffered past it)."""
    if content_length > limit:
        await _discard_rest(receive, content_length)
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            if message.get("more_body"):
                await _discard_rest(receive, size)
            raise _too_large(limit)
        more = message.get("more_body", False)
        if not parts and not more:
            return chunk  # the common case: one message, no copy
        parts.append(chunk)
        if not more:
            return b"".join(parts)


async def _discard_rest(receive: Receive, seen: int) -> None:
    """Read and drop what the client is still sending, up to a bound, so it can read our 413.

    Answering while the client still writes makes most HTTP/1.1 clients fail with a reset instead.
    Past _DRAIN_LIMIT the connection is simply dropped: a client can't make us read forever.
    """
    while seen <= _DRAIN_LIMIT:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"Request body too large: the limit is {limit} bytes.")


def _prepare_body(body: bytes, view: RequestView, endpoint: Endpoint, principal: Principal, out: _Outcome) -> bytes:
    """Check the fields the proxy acts on; return the bytes to send upstream."""
    if not view.model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if principal.allowed_models is not None and view.model not in principal.allowed_models:
        raise PermissionDenied(f"This API key may not use the model '{view.model}'.", param="model")
    out.model = view.model
    out.stream = bool(view.stream)
    if out.stream and endpoint.injects_usage and not (view.stream_options and view.stream_options.include_usage):
        out.injected = True
        return _with_include_usage(body, view)
    return body


def _estimate_tokens(body_size: int, view: RequestView, default_max_tokens: int) -> int:
    """A cheap upper-leaning guess, reserved against token limits until the real usage is known."""
    completion = view.max_completion_tokens or view.max_tokens or view.max_output_tokens or default_max_tokens
    return _estimate_prompt(body_size) + completion * (view.n or 1)


def _estimate_prompt(body_size: int) -> int:
    # About four bytes of JSON per token: rough, but never needs the messages decoded.
    return body_size // 4


def _decode_view(body: bytes) -> RequestView:
    try:
        return request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason, _, where = text.partition(" - at `$.")
        param = where.rstrip("`") or None
        if param is None:
            raise InvalidRequest(f"Invalid request body: {reason}.") from exc
        raise InvalidRequest(f"Invalid type for '{param}': {reason}.", param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The API expects a JSON payload, "
            "but what was sent was not valid JSON."
        ) from exc


def _with_include_usage(body: bytes, view: RequestView) -> bytes:
    if view.stream_options is None:
        # Splice the option in after the opening brace: the messages are never decoded or re-encoded.
        i = body.index(b"{") + 1
        return body[:i] + _INCLUDE_USAGE + body[i:]
    # Rare: the client sent stream_options without include_usage; re-encode this one body.
    doc = msgspec.json.decode(body)
    doc["stream_options"]["include_usage"] = True
    return json_encoder.encode(doc)


async def _until_disconnect(receive: Receive) -> None:
    message: Message = await receive()
    while message["type"] != "http.disconnect":
        message = await receive()


async def _cancel_on_disconnect(receive: Receive, work: Coroutine[Any, Any, None], out: _Outcome) -> None:
    """Run `work` (a coroutine) in this task; if the client disconnects, cancel it and say so in `out`.

    Granian reports a disconnect only through receive() (a send to a closed client is dropped
    silently), so without this an abandoned stream would keep the upstream generating.
    """
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(_until_disconnect(receive))

    def on_disconnect(w: asyncio.Future[None]) -> None:
        if not w.cancelled() and w.exception() is None:
            task.cancel()

    watcher.add_done_callback(on_disconnect)
    try:
        await work
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled():
            raise
        task.uncancel()
        out.status, out.disconnected = 499, True
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()


async def _exchange(
    state: State,
    method: str,
    url: str,
    headers: HeaderList,
    body: bytes,
    send: Send,
    request_id: bytes,
    extra_headers: RawHeaders,
    out: _Outcome,
) -> None:
    out.sent = sent = perf_counter()
    resp = await state.upstream.send(method, url, headers, body, stream=out.stream)
    out.upstream_status = out.status = resp.status
    response_headers: RawHeaders = [(k, v) for k, v in resp.headers if k.lower() not in _DROP_RESPONSE]
    response_headers.append((b"x-request-id", request_id))
    response_headers.append(_server_timing(out.started, sent, perf_counter()))
    response_headers.extend(extra_headers)
    content_type = next((v for k, v in resp.headers if k.lower() == b"content-type"), b"")
    if content_type.startswith(b"text/event-stream"):
        response_headers.extend(_STREAM_HEADERS)
        watcher = SSEWatcher(strip=out.injected) if out.model is not None else None
        await _stream(resp, send, response_headers, watcher, out)
    elif out.model is not None:
        try:
            data = await resp.read()
        except BaseException:
            await resp.abort()
            raise
        await resp.release()
        out.ttfb = perf_counter()
        if resp.status < 300:
            out.usage = usage_from_json(data)[0]
        response_headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": data})
    else:
        await _stream(resp, send, response_headers, None, out)


def _server_timing(started: float, sent: float, answered: float) -> tuple[bytes, bytes]:
    """The proxy's own time before the upstream call, and the upstream's time to its response headers."""
    value = f"proxy;dur={(sent - started) * 1000:.2f}, upstream;dur={(answered - sent) * 1000:.2f}"
    return (b"server-timing", value.encode())


def _proxy_timing(started: float, now: float) -> tuple[bytes, bytes]:
    """For an answer the proxy gave by itself (the upstream was never called): its own time."""
    return (b"server-timing", f"proxy;dur={(now - started) * 1000:.2f}".encode())


async def _stream(
    resp: UpstreamResponse, send: Send, headers: RawHeaders, watcher: SSEWatcher | None, out: _Outcome
) -> None:
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    try:
        async for chunk in resp.chunks():
            if out.ttfb is None:
                out.ttfb = perf_counter()
            if watcher is not None:
                chunk = watcher.feed(chunk)
                if not chunk:
                    continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if watcher is not None and (tail := watcher.finish()):
            await send({"type": "http.response.body", "body": tail, "more_body": True})
    except UpstreamError as err:
        # Headers are gone already: all that is left is to end the stream and say why in the log.
        await resp.abort()
        out.error = err.code
        log.warning("upstream stream failed: %s", err.message)
    except BaseException:
        await resp.abort()
        raise
    else:
        await resp.release()
    finally:
        if watcher is not None:
            out.usage, out.events = watcher.usage, watcher.events
    await send({"type": "http.response.body", "body": b""})
