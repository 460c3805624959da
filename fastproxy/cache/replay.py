"""Sending a stored answer, or one still arriving from an identical request's upstream, to a client.

A plain body goes out as stored. A stream goes out as the same SSE events, never turned into JSON;
an optional framer (the request path's SSE watcher) may reshape it, for a store of raw upstream bytes.
"""

from __future__ import annotations

from typing import Protocol

from fastproxy.cache.coalesce import Flight
from fastproxy.core.types import RawHeaders, Send

# As on the normal path (fastproxy.proxy.headers.STREAM_HEADERS): nginx in front must not buffer streams.
_NO_BUFFERING = (b"x-accel-buffering", b"no")


class Framer(Protocol):
    """What the request path's SSE watcher offers: feed upstream bytes, get the client's bytes."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


async def send_stored(
    send: Send, status: int, headers: RawHeaders, chunks: list[bytes], stream: bool, framer: Framer | None
) -> None:
    if not stream:
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    headers.append(_NO_BUFFERING)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    # The whole stored stream in one write: the events are the same, the client's reads may group them.
    data = b"".join(chunks)
    if framer is not None:
        data = framer.feed(data) + framer.finish()
    await send({"type": "http.response.body", "body": data})


async def send_following(send: Send, flight: Flight, headers: RawHeaders, framer: Framer | None) -> None:
    """Forward a leader's stream as it arrives (the flight has started with 200)."""
    headers.append(_NO_BUFFERING)
    await send({"type": "http.response.start", "status": flight.status, "headers": headers})
    i = 0
    while True:
        chunks = flight.chunks
        while i < len(chunks):
            chunk = chunks[i]
            i += 1
            if framer is not None:
                chunk = framer.feed(chunk)
                if not chunk:
                    continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if flight.done:
            break
        await flight.changed()
    if framer is not None and (tail := framer.finish()):
        await send({"type": "http.response.body", "body": tail, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
