"""In-process token buckets: the embedded default (no Redis configured) and the fail-open fallback.

The same semantics as ratelimit.lua, in Python; limits hold per process, not across instances.
The event loop runs each operation without awaiting in between, which makes it atomic here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Final

from fastproxy.core.limits import Admission
from fastproxy.core.schemas import BucketLevel, Principal, TokenUsage
from fastproxy.ratelimit import core
from fastproxy.ratelimit.buckets import EMPTY_PLAN, Bucket, Planner
from fastproxy.ratelimit.replies import Taken

Clock = Callable[[], float]
# Drop full buckets (the equivalent of Redis expiry) every this many operations.
_SWEEP_EVERY: Final = 4096


class MemoryStore:
    """Buckets in a dict: key -> [level, stamp in µs, full again at µs (inf: never)].

    `clock` returns seconds (injectable for tests).
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[str, list[float]] = {}
        self._ops = 0

    def _now(self) -> float:
        return math.floor(self._clock() * 1_000_000)

    def _read(self, bucket: Bucket, now: float) -> tuple[float, float]:
        cap = bucket.capacity
        state = self._state.get(bucket.key)
        if state is None:
            return cap, now
        level, stamp, _ = state
        if now > stamp:
            if bucket.period and cap > 0:
                level += (now - stamp) * cap / (bucket.period * 1_000_000)
            stamp = now
        return min(level, cap), stamp

    def _until_full(self, bucket: Bucket, level: float, stamp: float, now: float) -> int:
        if level >= bucket.capacity:
            return 0
        if not bucket.period or bucket.capacity <= 0:
            return -1
        us = (bucket.capacity - level) * bucket.period * 1_000_000 / bucket.capacity + (stamp - now)
        return math.ceil(us / 1000)

    def _write(self, bucket: Bucket, level: float, stamp: float, now: float) -> int:
        ms = self._until_full(bucket, level, stamp, now)
        if ms == 0:
            self._state.pop(bucket.key, None)
        else:
            self._state[bucket.key] = [level, stamp, now + ms * 1000 if ms > 0 else math.inf]
        return ms

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Taken:
        return self.take_now(buckets, costs)

    def take_now(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Taken:
        now = self._now()
        self._sweep(now)
        seen = [self._read(b, now) for b in buckets]
        worst, worst_ms = -1, 0
        for i, (bucket, cost, (level, stamp)) in enumerate(zip(buckets, costs, seen, strict=True)):
            if cost > 0 and level < cost:
                ms = -1
                if bucket.period and bucket.capacity > 0:
                    us = (cost - level) * bucket.period * 1_000_000 / bucket.capacity + (stamp - now)
                    ms = max(1, math.ceil(us / 1000))
                if worst < 0 or (worst_ms >= 0 and (ms < 0 or ms > worst_ms)):
                    worst, worst_ms = i, ms
        remaining: list[int] = []
        reset: list[int] = []
        if worst >= 0:
            for bucket, (level, stamp) in zip(buckets, seen, strict=True):
                remaining.append(math.floor(level))
                reset.append(self._until_full(bucket, level, stamp, now))
            return Taken(
                ok=False,
                remaining=tuple(remaining),
                reset_ms=tuple(reset),
                refused=worst,
                level=math.floor(seen[worst][0]),
                retry_ms=worst_ms,
            )
        for bucket, cost, (level, stamp) in zip(buckets, costs, seen, strict=True):
            if cost:
                level = min(bucket.capacity, level - cost)
                reset.append(self._write(bucket, level, stamp, now))
            else:
                reset.append(self._until_full(bucket, level, stamp, now))
            remaining.append(math.floor(level))
        return Taken(ok=True, remaining=tuple(remaining), reset_ms=tuple(reset))

    async def force(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> None:
        now = self._now()
        for bucket, cost in zip(buckets, costs, strict=True):
            if cost:
                level, stamp = self._read(bucket, now)
                self._write(bucket, min(bucket.capacity, level - cost), stamp, now)

    async def peek(self, buckets: Sequence[Bucket]) -> list[tuple[float, int]]:
        now = self._now()
        out: list[tuple[float, int]] = []
        for bucket in buckets:
            level, stamp = self._read(bucket, now)
            out.append((level, self._until_full(bucket, level, stamp, now)))
        return out

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops % _SWEEP_EVERY:
            return
        # A full bucket and a missing one are the same: dropping them bounds memory (like Redis expiry).
        full = [key for key, (_, _, full_at) in self._state.items() if full_at <= now]
        for key in full:
            del self._state[key]


class LocalLimiter:
    """The Limiter Protocol over a MemoryStore."""

    def __init__(self, planner: Planner, clock: Clock = time.monotonic) -> None:
        self.planner = planner
        self.store = MemoryStore(clock)

    async def admit(self, principal: Principal, estimate: int, client_ip: str | None) -> Admission:
        plan = self.planner.plan(principal, client_ip)
        if plan is EMPTY_PLAN:
            return Admission(principal, estimate, [])
        core.check_sizes(plan, estimate)
        taken = self.store.take_now(plan.buckets, core.costs_of(plan, estimate))
        return core.admitted(principal, estimate, plan, taken, self.store)

    async def settle(self, admission: Admission, usage: TokenUsage | None) -> None:
        todo = core.settlement(admission, usage)
        if todo is not None:
            tokens, delta = todo
            await self.store.force(tokens, [delta] * len(tokens))

    async def levels(self, principal: Principal, client_ip: str | None = None) -> list[BucketLevel]:
        """Each applicable bucket's current level, without taking anything."""
        return await core.levels_of(self.store, self.planner, principal, client_ip)

    async def close(self) -> None:
        return None
