"""Graceful drain, the worker's side: what SIGTERM starts and how the requests in flight end.

The `fastproxy serve` master (server/cli.py) catches the first SIGTERM, writes the drain marker (a
file named by _FASTPROXY_DRAIN_FILE holding the Unix time of the hard deadline: now + drain_seconds
+ shutdown_grace), keeps the workers serving for drain_seconds, and only then hands the signal to
Granian, which stops accepting and runs every worker's lifespan shutdown. So, per worker:

1. from the moment the marker exists, /readyz answers 503 (the load balancer takes it out);
2. after drain_seconds Granian stops accepting and lets the connections in flight finish;
3. at the deadline, `watch()` cancels the streams still open; each sends an SSE error event
   (`STREAM_CUT`) and ends, never a silent cut; then lifespan shutdown runs (`settle()` waits for any
   request still in flight, up to the deadline) and the usage writer flushes what it holds.

Without the marker (a worker stopped on its own) the deadline is shutdown_grace from the shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Final

MARKER_ENV: Final = "_FASTPROXY_DRAIN_FILE"
STREAM_CUT: Final = (
    b'data: {"error": {"message": "The server is shutting down: this stream was cut at its shutdown deadline. '
    b'Please retry.", "type": "server_error", "param": null, "code": "server_shutting_down"}}\n\n'
)
# After cutting the streams: how long they get to send their error event and end.
_CUT_WAIT: Final = 1.0
_POLL: Final = 0.02
_WATCH: Final = 0.1


class Drain:
    """Per worker: requests in flight, the streams open, and whether a drain has begun."""

    __slots__ = ("cutting", "grace", "inflight", "marker", "streams")

    def __init__(self, grace: float, marker: str | None = None) -> None:
        self.grace = grace
        self.marker = marker if marker is not None else os.environ.get(MARKER_ENV) or None
        self.inflight = 0
        self.streams: set[asyncio.Task[object]] = set()
        # Set at the deadline: a stream cancelled now ends with STREAM_CUT instead of re-raising.
        self.cutting = False

    def draining(self) -> bool:
        return self.marker is not None and os.path.exists(self.marker)

    def deadline(self) -> float:
        """Unix time by which every request must have ended."""
        if self.marker is not None:
            with contextlib.suppress(OSError, ValueError), open(self.marker) as f:
                return float(f.read().strip())
        return time.time() + self.grace

    async def watch(self) -> None:
        """Runs for the worker's life (owned by lifespan): once the marker appears, wait for its
        deadline, then cut the streams still open. Granian drains its connections before it runs the
        lifespan shutdown, so the cut cannot wait for that."""
        if self.marker is None:
            return
        while not self.draining():  # noqa: ASYNC110 (a file written by another process: no Event)
            await asyncio.sleep(_WATCH)
        await asyncio.sleep(max(0.0, self.deadline() - time.time()))
        self.cut()

    def cut(self) -> int:
        """Cancel the open streams; each ends with STREAM_CUT. Returns how many there were."""
        self.cutting = True
        cut = 0
        for task in list(self.streams):
            if not task.done():
                task.cancel()
                cut += 1
        return cut

    async def settle(self) -> int:
        """Wait for the requests in flight, up to the deadline; then cut the open streams. Returns how
        many streams were cut."""
        deadline = self.deadline()
        # Polled, not an Event: the count moves on every request, and this runs once, at shutdown.
        while self.inflight and time.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
        if not self.inflight:
            return 0
        cut = self.cut()
        end = time.monotonic() + _CUT_WAIT
        while self.inflight and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
        return cut


def begin(marker: str, drain_seconds: float, grace: float) -> None:
    """The master's part: write the marker with the hard deadline (atomically: workers read it)."""
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
        f.write(repr(time.time() + drain_seconds + grace))
    os.replace(tmp, marker)
