"""How finished requests' records are folded into metric values: a batch of durations into a histogram
at once, and a failed attempt's error into one of a few bounded outcome labels."""

from __future__ import annotations

import math
from bisect import bisect_right
from itertools import repeat
from operator import truediv

from prometheus_client import Histogram


def attempt_outcome(error: str) -> str:
    """A failed attempt's error as one of a few label values."""
    if error.startswith("status_"):
        code = error[7:]
        if code in ("429", "401", "403"):
            return "status_401" if code == "403" else "status_" + code
        return "status_5xx" if code.startswith("5") else "other"
    if error in _ATTEMPT_OUTCOMES:
        return _ATTEMPT_OUTCOMES[error]
    return "other"


_ATTEMPT_OUTCOMES = {
    "upstream_timeout": "timeout",
    "first_token_timeout": "first_token_timeout",
    "upstream_unreachable": "unreachable",
    "stream_cut": "stream_cut",
    "upstream_stream_cut": "stream_cut",
    "upstream_stream_idle": "timeout",
    "stream_error": "stream_error",
}


class Batch:
    """Adds a batch of observations, in milliseconds, to one histogram child (in seconds) at once."""

    __slots__ = ("bounds", "child")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        # prometheus-client's own bounds (ending in +Inf); a value v belongs to the first bound >= v.
        # Its private per-bucket values are touched here, not first at flush, so that a client version
        # without them fails at startup (Metrics() builds one batch) instead of in the flush task.
        self.bounds: list[float] = [_in_ms(bound) for bound in child._upper_bounds]
        if len(child._buckets) != len(self.bounds) or not hasattr(child._sum, "inc"):
            raise RuntimeError("unsupported prometheus-client: Histogram internals changed")

    def add_all(self, ms: list[float]) -> None:
        if not ms:
            return
        ms.sort()
        # Histogram has no public bulk observe: add to the per-bucket values `observe` would add to.
        buckets = self.child._buckets
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(ms, bound, below)  # values <= bound
            if upto > below:
                buckets[i].inc(upto - below)
                below = upto
            if below == len(ms):
                break
        self.child._sum.inc(sum(map(truediv, ms, repeat(1000.0))))


def _in_ms(seconds: float) -> float:
    """The largest x such that x / 1000 <= seconds: x <= it exactly when observe(x / 1000) falls in the bucket."""
    if math.isinf(seconds):
        return seconds
    x = seconds * 1000
    while x / 1000 > seconds:
        x = math.nextafter(x, -math.inf)
    while math.nextafter(x, math.inf) / 1000 <= seconds:
        x = math.nextafter(x, math.inf)
    return x
