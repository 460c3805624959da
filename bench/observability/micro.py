"""The request-path cost of observation, measured in-process (deterministic, unlike a loaded machine).

    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) python bench/observability/micro.py

Times each piece that runs per request when metrics and the access log are on: the in-flight
bookkeeping, the metrics observer, handing the record to the access log, and formatting its line
(done in batches every 50 ms; the writer thread then only writes), and the metrics flush's share per
record (every 50 ms per worker). Run with PROMETHEUS_MULTIPROC_DIR set to a fresh directory to measure the multiprocess mode.
"""

from __future__ import annotations

import os
import time
import timeit

import msgspec

from fastproxy.core.records import RequestRecord
from fastproxy.core.schemas import TokenUsage
from fastproxy.observability.logs import AccessLog
from fastproxy.observability.metrics import Metrics

RECORD = RequestRecord(
    request_id="0123456789abcdef01234567",
    method="POST",
    path="/v1/chat/completions",
    endpoint="chat.completions",
    model="mock-model",
    stream=False,
    status=200,
    upstream_status=200,
    usage=TokenUsage(prompt=9, completion=10, total=19),
    latency_ms=1.234,
    ttfb_ms=1.1,
    proxy_ms=0.21,
    key_hint="abcd",
    client_ip="127.0.0.1",
    ts=time.time(),
    pid=os.getpid(),
)


def per_call_us(fn: object, number: int = 200_000) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))  # type: ignore[arg-type]
    return best / number * 1e6


def _flush_per_record_us(metrics: Metrics, n: int = 600) -> float:
    """What a flush costs per record it derives from: 50 ms of a busy worker's records, varied latencies."""
    records = [
        msgspec.structs.replace(RECORD, latency_ms=1 + i % 997 / 10, proxy_ms=0.1 + i % 7 / 10) for i in range(n)
    ]
    best = float("inf")
    for _ in range(5):
        for r in records:
            metrics.observe(r)
        t0 = time.perf_counter()
        metrics.flush()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "single-process"
    metrics = Metrics()
    access = AccessLog()  # not started: write() only queues
    records = [RECORD] * 1000

    def in_flight() -> None:
        metrics.serving += 1
        metrics.serving -= 1

    rows = {
        "in-flight started + finished": per_call_us(in_flight),
        "metrics observe(record)": per_call_us(lambda: metrics.observe(RECORD)),
        "access log write(record)": per_call_us(lambda: access.write(RECORD)),
        "access line formatting (batched, every 50 ms)": per_call_us(lambda: access.format(records), 200) / 1000,
        "metrics flush, per record (batched, every 50 ms)": _flush_per_record_us(metrics),
    }
    print(f"prometheus-client {mode} mode; best of 5 x 200000 calls")
    print("| per request | µs |")
    print("|---|---:|")
    for name, us in rows.items():
        print(f"| {name} | {us:.2f} |")
    print(f"| **total** | **{sum(rows.values()):.2f}** |")
    flush = min(timeit.repeat(metrics.flush, number=1000, repeat=5)) / 1000 * 1e6
    print(f"metrics flush with nothing pending (every 50 ms per worker): {flush:.1f} µs")


if __name__ == "__main__":
    main()
