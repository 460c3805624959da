"""How long a request body may take to arrive (FASTPROXY_BODY_READ_TIMEOUT): a client that trickles its body
(slowloris) or never ends it gets a 408 and its connection closed, instead of holding a worker's request forever.

Granian bounds the request head (http1_header_read_timeout) but not the body. A timer per request
(asyncio.timeout) would cost about 5 µs on every request; here a request only notes its deadline in a dict while
it reads (well under a microsecond), and one task per worker sweeps the dict every second, cancelling the
readers past theirs. The cancellation always lands inside the `with` block (a registered task is suspended in
it), where __exit__ turns it into RequestTimeout.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from types import TracebackType
from typing import Any

from fastproxy.core.errors import RequestTimeout

SWEEP_INTERVAL = 1.0


class BodyDeadline:
    """`with deadline:` around reading one request's body; shared by every request of the worker."""

    __slots__ = ("_expired", "_reading", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    def __enter__(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._reading[task] = monotonic() + self.timeout

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:  # fmt: skip
        task = asyncio.current_task()
        if task is None:
            return
        self._reading.pop(task, None)
        if self._expired and task in self._expired:
            self._expired.discard(task)
            if kind is asyncio.CancelledError:
                task.uncancel()
                raise RequestTimeout(
                    f"The request body did not arrive within {self.timeout:g} seconds.",
                    headers=[(b"connection", b"close")],
                ) from None

    @property
    def reading(self) -> int:
        """Requests reading their body now."""
        return len(self._reading)

    def sweep(self, now: float | None = None) -> int:
        """Cancel every reader past its deadline; returns how many."""
        now = monotonic() if now is None else now
        late = [task for task, deadline in self._reading.items() if deadline <= now]
        for task in late:
            del self._reading[task]
            self._expired.add(task)
            task.cancel()
        return len(late)

    async def watch(self) -> None:
        """The sweeping task, owned by lifespan."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep()
