"""A Granian worker puts its runtime threads (Granian's and pyreqwest's tokio) in SCHED_BATCH."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from fastproxy.server.threads import RUNTIME_THREADS
from tests.integration.servers import start_mock, start_proxy

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parents[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = [c for c, p in parents.items() if p == pid]
        found += children
        todo += children
    return found


def _policies(pid: int) -> dict[str, set[int]]:
    """Thread name -> the scheduling policies of the threads of that name; the process's main thread
    (the event loop's) under "main", whatever its name."""
    out: dict[str, set[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = "main" if int(task.name) == pid else (task / "comm").read_text().strip()
        out.setdefault(name, set()).add(os.sched_getscheduler(int(task.name)))
    return out


def _worker_policies(**env: str) -> dict[str, set[int]]:
    """The worker's policies once both runtimes run and (the worker looks every 50 ms) a moment after."""
    mock = start_mock()
    try:
        proxy = start_proxy(mock.url + "/v1", **env)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                workers = [p for p in _descendants(proxy.proc.pid) if set(_policies(p)) >= RUNTIME_THREADS]
                if workers:
                    break
                time.sleep(0.05)
            assert len(workers) == 1, proxy.log()
            time.sleep(0.5)
            return _policies(workers[0])
        finally:
            proxy.stop()
    finally:
        mock.stop()


def test_runtime_threads_are_batch_and_the_loop_thread_is_not() -> None:
    policies = _worker_policies()
    assert set(policies) >= RUNTIME_THREADS
    for name in RUNTIME_THREADS:
        assert policies[name] == {os.SCHED_BATCH}, policies
    assert policies["main"] == {os.SCHED_OTHER}, policies


def test_the_setting_leaves_every_thread_as_it_was() -> None:
    policies = _worker_policies(FASTPROXY_RUNTIME_THREADS_BATCH="false")
    assert set().union(*policies.values()) == {os.SCHED_OTHER}, policies
