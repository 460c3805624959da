"""Injected into the proxy's processes by bench/gcpauses.py (PYTHONPATH): records every garbage
collection (wall-clock end, generation, duration) and dumps them to $BENCH_GC_DIR/<pid>.json once a
second from a thread of its own (restarted in forked children)."""

import gc
import json
import os
import threading
import time

_OUT = os.environ.get("BENCH_GC_DIR")
_pauses: list[tuple[float, int, float]] = []
_start = [0.0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    now = time.perf_counter()
    if phase == "start":
        _start[0] = now
    elif len(_pauses) < 1_000_000:
        _pauses.append((time.time(), info["generation"], now - _start[0]))


def _dump_forever() -> None:
    path = os.path.join(_OUT or ".", f"{os.getpid()}.json")
    while True:
        time.sleep(1.0)
        with open(path + ".tmp", "w") as f:
            json.dump(_pauses, f)
        os.replace(path + ".tmp", path)


def _start_dumper() -> None:
    _pauses.clear()
    threading.Thread(target=_dump_forever, name="bench-gc-probe", daemon=True).start()


if _OUT:
    gc.callbacks.append(_on_gc)
    _start_dumper()
    os.register_at_fork(after_in_child=_start_dumper)
