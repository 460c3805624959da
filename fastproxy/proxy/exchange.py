"""One exchange with the upstream: send the request, give the response back (streamed or whole) while
the SSE watcher reads the usage, and cancel it all when the client leaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from time import perf_counter
from typing import Any

from fastproxy.core.drain import STREAM_CUT, Drain
from fastproxy.core.errors import UpstreamError
from fastproxy.core.schemas import TokenUsage, usage_from_json
from fastproxy.core.types import Message, RawHeaders, Receive, Send
from fastproxy.proxy.headers import DROP_RESPONSE, STREAM_HEADERS, server_timing
from fastproxy.proxy.sse import SSEWatcher
from fastproxy.server.state import State
from fastproxy.upstream import HeaderList, UpstreamResponse

log = logging.getLogger("fastproxy.proxy")


class Outcome:
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


async def exchange(
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
    out.sent = sent = perf_counter()
    resp = await state.upstream.send(method, url, headers, body, stream=out.stream)
    out.upstream_status = out.status = resp.status
    response_headers: RawHeaders = [(k, v) for k, v in resp.headers if k.lower() not in DROP_RESPONSE]
    response_headers.append((b"x-request-id", request_id))
    response_headers.append(server_timing(out.started, sent, perf_counter()))
    response_headers.extend(extra_headers)
    content_type = next((v for k, v in resp.headers if k.lower() == b"content-type"), b"")
    if content_type.startswith(b"text/event-stream"):
        response_headers.extend(STREAM_HEADERS)
        watcher = SSEWatcher(strip=out.injected) if out.model is not None else None
        await _stream(resp, send, response_headers, watcher, out, state.drain)
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
        await _stream(resp, send, response_headers, None, out, state.drain)


async def _stream(
    resp: UpstreamResponse, send: Send, headers: RawHeaders, watcher: SSEWatcher | None, out: Outcome, drain: Drain
) -> None:
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    task = asyncio.current_task()
    assert task is not None
    drain.streams.add(task)
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
    except asyncio.CancelledError:
        await resp.abort()
        if not drain.cutting:
            raise
        # The shutdown deadline (core/drain.py): say so in the stream rather than cut it silently.
        task.uncancel()
        out.error = "server_shutting_down"
        await send({"type": "http.response.body", "body": STREAM_CUT, "more_body": True})
    except BaseException:
        await resp.abort()
        raise
    else:
        await resp.release()
    finally:
        drain.streams.discard(task)
        if watcher is not None:
            out.usage, out.events = watcher.usage, watcher.events
    await send({"type": "http.response.body", "body": b""})
