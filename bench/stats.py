"""Small statistics helpers shared by the load clients and the report."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]  # drop nan
    return statistics.median(vals) if vals else float("nan")
