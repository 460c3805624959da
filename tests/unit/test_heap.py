"""The startup heap is frozen out of the collector while a worker runs, and given back when it stops."""

from __future__ import annotations

import gc

from fastproxy.server.heap import settled_heap


def test_freezes_and_raises_the_young_threshold_then_restores() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with settled_heap(12_345):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (12_345, *before[1:])
        # Cyclic garbage made after startup is still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_zero_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    with settled_heap(0):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before
