"""The garbage collector, tuned for a server whose heap is built once at startup.

CPython's cyclic collector runs a young-generation pass every 700 net container allocations and a
full pass when enough objects have been promoted. A loaded worker keeps several hundred young
containers alive at any moment (the coroutines, futures and frames of its in-flight requests), so
at Python's default it collected the young generation every ~70 requests, promoting live requests'
objects that were about to die anyway, and every ~4 s walked its whole heap (modules, clients,
pools: tens of thousands of objects) in a full pass that stopped the event loop for 30-60 ms
(bench/RESULTS.md, "Garbage collection" and its "History"). That was ~4 % of the CPU per request
and the worst of the latency tail (full's p99 added at half saturation: 56 ms, 26 ms without).

So, once startup is done: collect once, move every surviving object to the permanent generation
(`gc.freeze`: never scanned again, still freed by reference counting), and raise the young
threshold above the in-flight working set. Cyclic garbage is still collected; at most
`young_threshold` containers of it wait for the next pass.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def settled_heap(young_threshold: int) -> Iterator[None]:
    """Freeze the startup heap and raise the young threshold (0: leave the collector as it is);
    undone on exit, so a process that opens and closes several apps (tests) is left as it was."""
    if young_threshold <= 0:
        yield
        return
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
