"""What every exchange with an upstream shares: the per-request Outcome, the response headers the client
gets, cancelling on disconnect; and the pass-through exchange for paths the proxy does not account
(no model, no fallback: bytes both ways). Model requests go through proxy/failover.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from time import perf_counter
from typing import TYPE_CHECKING, Any

from fastproxy.cache.service import Lookup
from fastproxy.core.drain import STREAM_CUT, Drain
from fastproxy.core.errors import UpstreamError
from fastproxy.core.records import FailedAttempt
from fastproxy.core.schemas import TokenUsage
from fastproxy.core.types import Message, RawHeaders, Receive, Send
from fastproxy.proxy.headers import DROP_RESPONSE, server_timing
from fastproxy.server.state import State
from fastproxy.upstream import HeaderList

if TYPE_CHECKING:
    from fastproxy.proxy.messages import Ingress, Leg

log = logging.getLogger("fastproxy.proxy")


class Outcome:
    """Per-request facts gathered on the way, turned into a RequestRecord at the end."""

    __slots__ = (
        "attempts",
        "cache_hit",
        "disconnected",
        "error",
        "events",
        "failures",
        "ingress",
        "injected",
        "leg",
        "model",
        "partial",
        "prompt_estimate",
        "provider",
        "sent",
        "started",
        "status",
        "stream",
        "tee",
        "ttfb",
        "upstream_model",
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
        # When the request first went upstream (perf_counter), for Server-Timing and the metrics.
        self.sent: float | None = None
        self.prompt_estimate = 0
        # The provider and model of the last attempt, the attempts made and the ones that failed.
        self.provider: str | None = None
        self.upstream_model: str | None = None
        self.attempts = 0
        self.failures: list[FailedAttempt] | None = None
        # The stream broke after its commit point: the client got an error event.
        self.partial = False
        # Answered by the response cache (or by an identical request in flight), not by an upstream.
        self.cache_hit = False
        # The response cache's tee (fastproxy/cache): sees the committed answer as the client gets it.
        self.tee: Lookup | None = None
        # Anthropic ingress (proxy/messages.py): the request's legs, and the one of the current attempt.
        self.ingress: Ingress | None = None
        self.leg: Leg | None = None


def response_headers(
    upstream: RawHeaders, request_id: bytes, started: float, sent: float | None, extra: RawHeaders
) -> RawHeaders:
    """The upstream's response headers the client may see, then the proxy's own: x-request-id,
    Server-Timing and `extra`, in that order (the response cache's tee slices the upstream's off the head)."""
    headers: RawHeaders = [(k, v) for k, v in upstream if k.lower() not in DROP_RESPONSE]
    headers.append((b"x-request-id", request_id))
    headers.append(server_timing(started, sent if sent is not None else started, perf_counter()))
    headers.extend(extra)
    return headers


async def _until_disconnect(receive: Receive) -> None:
    message: Message = await receive()
    while message["type"] != "http.disconnect":
        message = await receive()


async def cancel_on_disconnect(receive: Receive, work: Coroutine[Any, Any, None], out: Outcome) -> None:
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


async def passthrough(
    state: State,
    method: str,
    url: str,
    headers: HeaderList,
    body: bytes,
    send: Send,
    request_id: bytes,
    extra_headers: RawHeaders,
    out: Outcome,
) -> None:
    """One attempt at the default provider, the response streamed back as it comes (any content type)."""
    out.sent = perf_counter()
    resp = await state.upstream.send(method, url, headers, body, stream=out.stream)
    out.upstream_status = out.status = resp.status
    out_headers = response_headers(resp.headers, request_id, out.started, out.sent, extra_headers)
    await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
    drain = state.drain
    task = open_stream(drain)
    try:
        async for chunk in resp.chunks():
            if out.ttfb is None:
                out.ttfb = perf_counter()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as err:
        # Headers are gone already: all that is left is to end the body and say why in the log.
        await resp.abort()
        out.error = err.code
        log.warning("upstream pass-through failed: %s", err.message)
    except asyncio.CancelledError:
        await resp.abort()
        if not cut_at_deadline(drain, task, out):
            raise
        if any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in resp.headers):
            await send({"type": "http.response.body", "body": STREAM_CUT, "more_body": True})
    except BaseException:
        await resp.abort()
        raise
    else:
        await resp.release()
    finally:
        drain.streams.discard(task)
    await send({"type": "http.response.body", "body": b""})


def open_stream(drain: Drain) -> asyncio.Task[Any]:
    """Register this request's task as an open stream: at the shutdown deadline it is cut (core/drain.py)."""
    task = asyncio.current_task()
    assert task is not None
    drain.streams.add(task)
    return task


def cut_at_deadline(drain: Drain, task: asyncio.Task[Any], out: Outcome) -> bool:
    """A cancellation that is the shutdown deadline's (not the client leaving): the stream must end with
    STREAM_CUT rather than silently. Undoes the cancellation so the event can still be sent."""
    if not drain.cutting:
        return False
    task.uncancel()
    out.error = "server_shutting_down"
    return True
