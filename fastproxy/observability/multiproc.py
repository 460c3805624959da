"""Prometheus multiprocess set-up, done by the `fastproxy serve` master before Granian starts workers.

prometheus-client picks its value storage when it is first imported, from PROMETHEUS_MULTIPROC_DIR;
workers inherit the master's environment, so setting it here makes every worker write its metrics to
files that any worker (or the master's metrics port) merges. The directory must not hold files of a
previous run, or counters would resume from old values: it is wiped at every start.
This module imports prometheus-client only inside functions, after the variable is set.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("fastproxy")


@contextlib.contextmanager
def multiprocess_dir(configured: str = "") -> Iterator[str]:
    """Set PROMETHEUS_MULTIPROC_DIR for this process and its children for the duration of the block.

    `configured` (or an inherited PROMETHEUS_MULTIPROC_DIR) is created if missing and emptied of
    metric files, never removed; otherwise a temporary directory is made and removed afterwards.
    """
    path = configured or os.environ.get(ENV, "")
    owned = not path
    if owned:
        path = tempfile.mkdtemp(prefix="fastproxy-metrics-")
    else:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    previous = os.environ.get(ENV)
    os.environ[ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
        if owned:
            shutil.rmtree(path, ignore_errors=True)


def serve_metrics_port(host: str, port: int, path: str) -> Callable[[], None]:
    """Serve the merged metrics of every worker on host:port from this (master) process; returns a stopper."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from fastproxy.observability.metrics import prune_dead_workers

    class _Pruning:
        def __init__(self) -> None:
            self._inner = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

        def collect(self) -> Iterable[Any]:
            prune_dead_workers(path)
            metrics: Iterable[Any] = self._inner.collect()  # type: ignore[no-untyped-call]
            return metrics

    registry = CollectorRegistry()
    registry.register(_Pruning())
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
