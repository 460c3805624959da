"""Request coalescing within one worker: identical cacheable requests in flight together share the
first one's (the leader's) upstream answer.

The leader's exchange feeds its Flight as the response arrives (status and headers, then each raw
chunk); followers read it as it grows, so a stream is fanned out as it arrives. A follower whose
client leaves is cancelled with its own task and simply stops reading. If the leader fails before
a follower has sent anything (upstream error, non-200 status, the leader's client leaving), the
follower is released to go upstream itself: an error is never fanned out. A failure after a follower
has started its own response (a stream cut mid-way) can only end that follower's stream too.
"""

from __future__ import annotations

import asyncio

from fastproxy.core.types import RawHeaders


class Flight:
    __slots__ = ("_waiters", "chunks", "done", "headers", "ok", "status", "usage")

    def __init__(self) -> None:
        self.status = 0
        self.headers: RawHeaders = []
        self.chunks: list[bytes] = []
        self.done = False
        # True once the leader's answer completed (200, whole, final event seen).
        self.ok = False
        self.usage: tuple[int, int, int, int, int] | None = None
        self._waiters: list[asyncio.Future[None]] = []

    # -- the leader's side ---------------------------------------------------------------------
    def start(self, status: int, headers: RawHeaders) -> None:
        self.status, self.headers = status, headers
        self._wake()

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._wake()

    def end(self, ok: bool, usage: tuple[int, int, int, int, int] | None = None) -> None:
        if self.done:
            return
        self.done, self.ok, self.usage = True, ok, usage
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # -- the followers' side -------------------------------------------------------------------
    async def changed(self) -> None:
        """Wait until the leader adds something (cancellable: a follower's client may leave)."""
        if self.done:
            return
        w = asyncio.get_running_loop().create_future()
        self._waiters.append(w)
        await w

    async def started(self) -> bool:
        """Wait for the leader's status: True when it is 200 (follow it), False to go upstream alone."""
        while not self.done and self.status == 0:
            await self.changed()
        return self.status == 200 and not (self.done and not self.ok)

    async def finished(self) -> bool:
        while not self.done:
            await self.changed()
        return self.ok


class Flights:
    """The in-flight table of one worker: digest -> Flight."""

    def __init__(self) -> None:
        self._flights: dict[bytes, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, digest: bytes) -> tuple[Flight, bool]:
        """The flight for `digest` and whether the caller leads it (it did not exist)."""
        flight = self._flights.get(digest)
        if flight is not None:
            return flight, False
        flight = self._flights[digest] = Flight()
        return flight, True

    def leave(self, digest: bytes, flight: Flight) -> None:
        if self._flights.get(digest) is flight:
            del self._flights[digest]
