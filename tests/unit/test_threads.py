"""RuntimeThreads moves the threads it is told about to SCHED_BATCH, and gives them their policy back."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy.server.threads import RuntimeThreads, supported

pytestmark = pytest.mark.skipif(not supported(), reason="SCHED_BATCH and /proc are Linux's")
NAME = "fp-test-rt"


@pytest.fixture
def named_thread() -> Iterator[int]:
    """A thread of this process whose kernel name is NAME, as a runtime's would be; its id."""
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def run() -> None:
        tid.append(threading.get_native_id())
        Path(f"/proc/self/task/{tid[0]}/comm").write_text(NAME)
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    yield tid[0]
    done.set()
    thread.join(5)


def test_batch_then_restore(named_thread: int) -> None:
    threads = RuntimeThreads(frozenset({NAME}))
    assert threads.batch() == {NAME}
    assert os.sched_getscheduler(named_thread) == os.SCHED_BATCH
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER  # the caller's own: untouched
    threads.restore()
    assert os.sched_getscheduler(named_thread) == os.SCHED_OTHER


def test_watch_gives_up_on_a_runtime_that_never_starts(named_thread: int) -> None:
    threads = RuntimeThreads(frozenset({NAME, "never-starts"}))
    asyncio.run(threads.watch(interval=0.01, patience=0.05))
    assert os.sched_getscheduler(named_thread) == os.SCHED_BATCH  # the one that runs was still moved
    threads.restore()
    assert os.sched_getscheduler(named_thread) == os.SCHED_OTHER
