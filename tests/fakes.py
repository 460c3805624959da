"""A fake of the upstream seam, for unit tests that drive the ASGI app in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastproxy.core.errors import UpstreamUnreachable
from fastproxy.core.settings import Settings
from fastproxy.core.types import RawHeaders
from fastproxy.upstream import HeaderList, UpstreamResponse


class FakeResponse:
    def __init__(self, status: int, headers: RawHeaders, chunks: list[bytes], gap: float = 0.0) -> None:
        self.status = status
        self.headers = headers
        self._chunks = chunks
        self._gap = gap
        self.released = False
        self.aborted = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            if self._gap:
                await asyncio.sleep(self._gap)
            yield chunk

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    async def release(self) -> None:
        self.released = True

    async def abort(self) -> None:
        self.aborted = True


class FakeUpstream:
    """Answers every request with the next queued response and remembers what it was sent."""

    def __init__(self) -> None:
        self.responses: list[FakeResponse] = []
        self.sent: list[tuple[str, str, HeaderList, bytes]] = []
        self.closed = False
        self.unreachable = False

    def factory(self, settings: Settings) -> FakeUpstream:
        return self

    def queue(self, response: FakeResponse) -> FakeResponse:
        self.responses.append(response)
        return response

    async def send(
        self, method: str, url: str, headers: HeaderList, body: bytes, *, stream: bool = False
    ) -> UpstreamResponse:
        self.sent.append((method, url, headers, body))
        if self.unreachable:
            raise UpstreamUnreachable("The upstream provider could not be reached.")
        return self.responses.pop(0)

    async def close(self) -> None:
        self.closed = True
