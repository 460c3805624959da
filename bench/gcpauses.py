"""Garbage-collector passes in a loaded proxy: how many, how long, and the longest stop of the loop.

    python -m bench.gcpauses                                        # bare and full
    python -m bench.gcpauses --configs bare,bare@FASTPROXY_GC_YOUNG_THRESHOLD=0 --seconds 20

Every proxy process gets bench/gcprobe/sitecustomize.py on its PYTHONPATH, which records each
collection (generation, duration) through `gc.callbacks`; this starts each configuration (fastproxy
serve, 1 Granian worker, CPU 0), loads it with wrk (64 connections, CPU 1) for `--seconds` after a
warm-up, and counts the collections that ended inside the loaded window. A collection is a stop of
the event loop: the longest one bounds what any request in flight then waited. Counts and pause
lengths are properties of the heap and the allocation pattern, so they move far less between runs
than CPU time does on a shared VM. The callbacks cost a few µs per collection (charged to both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.configs import KEY_LIMITS, named_configs
from bench.harness import (
    HERE,
    LOAD_CPU,
    CpuWindow,
    backing,
    backing_services_on,
    scratch_dir,
    start_nginx,
    stop,
    wrk,
)
from bench.targets import chat_load, start_target


def _pauses(probe_dir: Path, since: float, until: float) -> list[tuple[int, float]]:
    """(generation, seconds) of every collection any proxy process finished in [since, until]."""
    out = []
    for f in probe_dir.glob("*.json"):
        for end, generation, seconds in json.loads(f.read_text()):
            if since <= end <= until:
                out.append((generation, seconds))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="bare,full")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    a = p.parse_args()
    configs, names = named_configs(a.configs)
    rows: list[tuple[str, int, float, list[tuple[int, float]]]] = []
    with scratch_dir() as tmp, backing(a.redis_url, KEY_LIMITS) as bk, backing_services_on(LOAD_CPU) as placed:
        work = Path(tmp)
        nginx, nginx_port = start_nginx(work)
        saved = os.environ.get("PYTHONPATH"), os.environ.get("BENCH_GC_DIR")
        try:
            for name in names:
                probe_dir = work / f"gc-{len(rows)}"
                probe_dir.mkdir()
                # start_target passes the harness's environment on to the proxy.
                os.environ["PYTHONPATH"] = str(HERE / "gcprobe")
                os.environ["BENCH_GC_DIR"] = str(probe_dir)
                t = start_target(name, configs, f"http://127.0.0.1:{nginx_port}", bk, work)
                try:
                    assert t.pid is not None
                    url, lua = chat_load(t, work)
                    wrk(url, lua, 3, a.conns)
                    win = CpuWindow({"proxy": t.pid})
                    since = time.time()
                    win.start()
                    r = wrk(url, lua, a.seconds, a.conns)
                    used = win.stop()
                    until = time.time()
                    time.sleep(1.5)  # the probes' next dump
                    if r["errors"]:
                        raise SystemExit(f"{name}: {r['errors']} errors under load")
                    rows.append((name, r["requests"], used["proxy"], _pauses(probe_dir, since, until)))
                    print(f"{name}: {r['requests']:,} requests, {len(rows[-1][3])} collections", flush=True)
                finally:
                    t.close()
        finally:
            for var, value in zip(("PYTHONPATH", "BENCH_GC_DIR"), saved, strict=True):
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
            stop(nginx)

    print(
        f"\nGarbage collections in {a.seconds:g} s of load (wrk -c{a.conns}, non-streamed chat), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {placed}.\n"
    )
    print(
        "| configuration | requests | young (gen 0) | gen 1 | full (gen 2) | longest pause | "
        "GC µs / request | proxy µs CPU / request | GC share |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, requests, cpu, pauses in rows:
        cells = []
        for generation in (0, 1, 2):
            mine = [s for g, s in pauses if g == generation]
            cells.append(f"{len(mine)} ({sum(mine) * 1000:.1f} ms)")
        longest = max((s for _, s in pauses), default=0.0) * 1000
        total = sum(s for _, s in pauses)
        print(
            f"| {name} | {requests:,} | {' | '.join(cells)} | {longest:.1f} ms | {total / requests * 1e6:.2f} "
            f"| {cpu / requests * 1e6:.1f} | {total / cpu * 100:.1f} % |"
        )


if __name__ == "__main__":
    main()
