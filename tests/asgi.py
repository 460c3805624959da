"""Drive an ASGI app in-process: lifespan, requests with fake receive/send, disconnects on cue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastproxy.core.types import ASGIApp, Message


@dataclass
class Result:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


async def request(
    app: ASGIApp,
    method: str,
    path: str,
    body: bytes | list[bytes] = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
    disconnect_after_chunks: int | None = None,
    disconnect_after_s: float | None = None,
) -> Result:
    """Send a request; the client leaves once it has disconnect_after_chunks body chunks, or after
    disconnect_after_s seconds."""
    parts = body if isinstance(body, list) else [body]
    messages: list[Message] = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)
    ]
    gone = asyncio.Event()
    result = Result()

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = dict(message["headers"])
        elif message.get("body"):
            result.chunks.append(message["body"])
            if disconnect_after_chunks is not None and len(result.chunks) >= disconnect_after_chunks:
                gone.set()

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers or [],
        "client": ("127.0.0.1", 50000),
    }
    timer = None
    if disconnect_after_s is not None:
        timer = asyncio.get_running_loop().call_later(disconnect_after_s, gone.set)
    try:
        await app(scope, receive, send)
    finally:
        gone.set()
        if timer is not None:
            timer.cancel()
    return result
