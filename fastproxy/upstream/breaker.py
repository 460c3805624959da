"""Circuit breakers per (provider, key), and the fleet retry budget. Pure state machines with an
injectable clock: no I/O here. Sharing a breaker's state across instances is fastproxy.upstream.board's job.

    closed --(N failures in a row, or failure ratio over a window with a minimum count)--> open
    open --(cooldown over: one probe, the board grants it across instances)--> half-open
    half-open --success--> closed        half-open --failure--> open, cooldown doubled (capped)
"""

from __future__ import annotations

from typing import Literal

import msgspec

State = Literal["closed", "open", "half_open"]


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True):
    failures: int = 5
    failure_ratio: float = 0.5
    min_requests: int = 20
    window: float = 10.0
    cooldown: float = 5.0
    max_cooldown: float = 120.0


class Window:
    """Counts over the last `seconds`, in one-second buckets (a ring): O(1) to add, O(seconds) to sum."""

    __slots__ = ("_buckets", "_n")

    def __init__(self, seconds: float) -> None:
        self._n = max(1, int(seconds))
        # Per bucket: [second it counts, total, failures].
        self._buckets = [[-1, 0, 0] for _ in range(self._n)]

    def add(self, now: float, failed: bool) -> None:
        second = int(now)
        bucket = self._buckets[second % self._n]
        if bucket[0] != second:
            bucket[0], bucket[1], bucket[2] = second, 0, 0
        bucket[1] += 1
        if failed:
            bucket[2] += 1

    def totals(self, now: float) -> tuple[int, int]:
        oldest = int(now) - self._n
        total = failures = 0
        for second, count, failed in self._buckets:
            if second > oldest:
                total += count
                failures += failed
        return total, failures


class Breaker:
    __slots__ = ("_policy", "_window", "consecutive", "opens", "probing", "state", "until")

    def __init__(self, policy: BreakerPolicy) -> None:
        self._policy = policy
        self._window = Window(policy.window)
        self.state: State = "closed"
        self.consecutive = 0
        # Times opened since it was last closed: each reopening doubles the cooldown.
        self.opens = 0
        # Until when (time.monotonic) an open breaker keeps the key out.
        self.until = 0.0
        self.probing = False

    def probe_due(self, now: float) -> bool:
        """Open with its cooldown over, and no probe of this worker's under way (one that never reported
        back, its client gone, counts as over after a cooldown: see start_probe)."""
        return self.state != "closed" and now >= self.until

    def success(self, now: float) -> bool:
        """Record a success; True when it closed the breaker (a probe succeeded)."""
        self._window.add(now, False)
        self.consecutive = 0
        if self.state == "closed":
            return False
        self.close()
        return True

    def failure(self, now: float) -> bool:
        """Record a failure; True when it opened (or reopened) the breaker.

        Once open, only the probe's failure reopens it (doubling the cooldown). The other failures that
        arrive then are of requests sent before it opened: under a hung upstream, a worker's hundreds of
        requests in flight time out together, and each reopening took the cooldown from 5 s to its
        120 s cap within milliseconds, holding the key out for two minutes after the upstream was back
        (found by bench/chaos.py)."""
        self._window.add(now, True)
        self.consecutive += 1
        if self.state != "closed":
            if not self.probing:
                return False
            self.open(now)
            return True
        policy = self._policy
        if self.consecutive >= policy.failures:
            self.open(now)
            return True
        total, failed = self._window.totals(now)
        if total >= policy.min_requests and failed >= policy.failure_ratio * total:
            self.open(now)
            return True
        return False

    def open(self, now: float, until: float | None = None) -> None:
        policy = self._policy
        self.opens += 1
        cooldown = min(policy.max_cooldown, policy.cooldown * 2 ** (self.opens - 1))
        self.state = "open"
        self.until = until if until is not None else now + cooldown
        self.probing = False

    def adopt(self, until: float) -> None:
        """Open until `until` because another worker or instance opened it: its openings are not ours, so
        the count that doubles our own cooldown is left alone (counting them doubled it once per instance)."""
        self.state = "open"
        self.until = max(self.until, until)
        self.probing = False

    def start_probe(self, now: float) -> None:
        """This worker sends the probe. Until it reports back, or a cooldown has passed (a probe whose
        client left reports nothing), no other probe is due here."""
        self.state = "half_open"
        self.probing = True
        self.until = now + self._policy.cooldown

    def close(self) -> None:
        self.state = "closed"
        self.consecutive = 0
        self.opens = 0
        self.probing = False


class RetryBudget:
    """Retries allowed per worker: at most `ratio` of its requests over the window, plus `minimum`."""

    __slots__ = ("_minimum", "_ratio", "_window")

    def __init__(self, ratio: float, minimum: int, seconds: float = 10.0) -> None:
        self._ratio = ratio
        self._minimum = minimum
        # "failed" counts retries here: total = first attempts + retries.
        self._window = Window(seconds)

    def request(self, now: float) -> None:
        self._window.add(now, False)

    def try_retry(self, now: float) -> bool:
        total, retries = self._window.totals(now)
        if retries >= self._minimum + self._ratio * (total - retries):
            return False
        self._window.add(now, True)
        return True
