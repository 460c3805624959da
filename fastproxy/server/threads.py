"""The worker's native runtime threads do not preempt its event loop (Linux's SCHED_BATCH).

A worker runs three busy threads: the event loop's (Python), Granian's tokio runtime (client sockets)
and pyreqwest's (upstream sockets). When a runtime thread's socket becomes ready while the loop is
running, the scheduler lets the runtime thread preempt it at once; the runtime thread then needs the
GIL, which the loop holds, and blocks again: two context switches and colder caches for nothing. At
moderate load, with the worker alone on a core, that happened 5-6 times per request. In SCHED_BATCH a
waking thread does not preempt the running one: the runtime threads run when the loop waits in epoll
(without the GIL) or its time slice ends. Measured on one core (bench/RESULTS.md): CPU per request at
saturation -16 % (bare) and -20 % (full); at half of full's saturation, full's median latency
2.2-2.9 -> 1.2-2.1 ms with the same proxy process, its policies alternated.

SCHED_BATCH is an ordinary time-sharing policy (no privilege needed, same share of the CPU); threads
a runtime thread starts later inherit it. Elsewhere than Linux this does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("fastproxy")

# Thread names (/proc/<pid>/task/<tid>/comm) of Granian's and pyreqwest's tokio runtimes.
RUNTIME_THREADS = frozenset({"tokio-rt-worker", "pyreqwest"})
_TASKS = Path("/proc/self/task")


class RuntimeThreads:
    """Moves the runtime threads to SCHED_BATCH as they appear, and back with `restore`.

    Granian starts its runtime only after the lifespan's startup, so `watch` (a task the lifespan
    owns) looks again for a short while until it has seen every runtime it expects.
    """

    def __init__(self, names: frozenset[str] = RUNTIME_THREADS) -> None:
        self._names = names
        self._moved: dict[int, int] = {}
        self._seen: set[str] = set()

    def batch(self) -> set[str]:
        """Move the runtime threads not moved yet; the names seen so far."""
        for tid, name in _threads():
            if name not in self._names or tid in self._moved:
                continue
            self._seen.add(name)
            try:
                before = os.sched_getscheduler(tid)
                if before == os.SCHED_OTHER:
                    os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
                    self._moved[tid] = before
            except OSError as exc:  # the thread ended, or a sandbox refuses
                log.debug("cannot change thread %d's scheduling policy: %s", tid, exc)
        return self._seen

    async def watch(self, interval: float = 0.05, patience: float = 10.0) -> None:
        """`batch` now and every `interval` until every expected runtime was seen, at most `patience` s."""
        if not supported():
            return
        deadline = asyncio.get_running_loop().time() + patience
        while self.batch() != self._names:
            if asyncio.get_running_loop().time() > deadline:
                missing = ", ".join(sorted(self._names - self._seen))
                log.info("runtime threads left as they are, not found: %s", missing)
                return
            await asyncio.sleep(interval)

    def restore(self) -> None:
        """Give the moved threads their policy back (a process that opens and closes several apps,
        such as the tests, is left as it was)."""
        for tid, policy in self._moved.items():
            with contextlib.suppress(OSError):
                os.sched_setscheduler(tid, policy, os.sched_param(0))
        self._moved.clear()


def supported() -> bool:
    """Linux: SCHED_BATCH exists and threads are listed in /proc (reading procfs does not block)."""
    return hasattr(os, "SCHED_BATCH") and _TASKS.exists()


def _threads() -> list[tuple[int, str]]:
    """(thread id, name) of this process's threads."""
    found = []
    for task in _TASKS.iterdir():
        try:
            found.append((int(task.name), (task / "comm").read_text().strip()))
        except OSError:
            continue  # the thread ended meanwhile
    return found
