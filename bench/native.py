"""Where a feature's extra CPU goes, down to native symbols: perf samples per request, side by side.

    python -m bench.native                                   # bare vs +metrics+log, 3 rounds
    python -m bench.native --configs bare,full --rounds 2 --top 40

bench.interleaved says *how much* a feature adds; py-spy sees Python frames only, and callgrind's
instruction counts are not time. This samples CPU 0, where each proxy runs (fastproxy serve, 1
Granian worker), with `perf record -e cpu-clock` (a software clock: it needs no hardware counters,
which VMs often lack) while wrk loads one proxy, keeps the samples of that proxy's threads, charges
them to shared object and symbol and divides by the requests wrk completed: µs of CPU per request
per symbol, so two configurations can be subtracted line by line. Python functions show up as the interpreter's C functions that ran them
(`_PyEval_EvalFrameDefault`, allocation, GC, dict and unicode work): enough to tell "more bytecode"
from "more allocation" from "more collection" from "more kernel". Rounds start the proxies afresh,
their order rotating, as in bench.interleaved. The sampling adds its own interrupts (same for each).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench.configs import KEY_LIMITS, named_configs
from bench.harness import (
    LOAD_CPU,
    PROXY_CPU,
    backing,
    backing_services_on,
    descendants,
    pinned,
    proc_table,
    scratch_dir,
    start_nginx,
    stop,
    wrk,
)
from bench.targets import chat_load, start_target

PERF = shutil.which("perf") or "perf"
# "  783    20270:python    libpython3.11.so.1.0    [.] _PyEval_EvalFrameDefault"
_LINE = re.compile(r"^\s*(\d+)\s+(\d+):\S*\s+(\S+)\s+\[([.k])\]\s+(.+?)\s*$")


def _symbols(data: Path, pids: set[int]) -> dict[str, int]:
    """samples per "dso symbol" of the threads `pids` from a perf.data file.

    Filtered here from a report sorted by pid, not with `perf report --pid`: that filter dropped the
    hottest symbol of a run now and then (seen in short runs here; not understood).
    """
    out = subprocess.run(
        [PERF, "report", "-i", str(data), "--stdio", "-q", "--sort", "pid,dso,sym", "-F", "sample,pid,dso,sym"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        m = _LINE.match(line)
        if m and int(m.group(2)) in pids:
            samples, _, dso, _, sym = m.groups()
            counts[f"{dso} {sym}"] = counts.get(f"{dso} {sym}", 0) + int(samples)
    return counts


def _record(pid: int, url: str, lua: Path, seconds: float, conns: int, freq: int, out: Path) -> tuple[int, set[int]]:
    """perf-sample the proxy's CPU while wrk loads the proxy; the requests wrk completed, and the thread
    ids of the proxy's process tree (the samples to keep)."""
    # perf's `pid` sort key is the thread id: every thread of every process of the proxy's tree.
    pids = {int(task.name) for p in descendants(pid, proc_table()) for task in Path(f"/proc/{p}/task").iterdir()}
    perf = subprocess.Popen(
        pinned(
            LOAD_CPU, [PERF, "record", "-q", "-e", "cpu-clock", "-F", str(freq), "-C", str(PROXY_CPU), "-o", str(out)]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)  # perf is recording before the load starts
        r = wrk(url, lua, seconds, conns)
    finally:
        perf.send_signal(2)
        perf.wait(60)
    if r["errors"] or not r["requests"]:
        raise SystemExit(f"{r['errors']} errors under load")
    return int(r["requests"]), pids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="bare,+metrics+log", help="the first one is the baseline")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of sampled load per proxy per round")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--freq", type=int, default=2999, help="samples per second of CPU 0")
    p.add_argument("--top", type=int, default=30, help="rows: the symbols whose difference is largest")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    a = p.parse_args()
    if shutil.which(PERF) is None:
        raise SystemExit("perf not found (Debian: apt-get install linux-perf)")
    configs, names = named_configs(a.configs)
    samples = {n: collections.Counter[str]() for n in names}
    requests = dict.fromkeys(names, 0)
    with scratch_dir() as tmp, backing(a.redis_url, KEY_LIMITS) as bk, backing_services_on(LOAD_CPU):
        work = Path(tmp)
        nginx, nginx_port = start_nginx(work)
        try:
            for number in range(a.rounds):
                order = names[number % len(names) :] + names[: number % len(names)]
                targets = {n: start_target(n, configs, f"http://127.0.0.1:{nginx_port}", bk, work) for n in order}
                try:
                    for n in order:
                        t = targets[n]
                        assert t.pid is not None
                        url, lua = chat_load(t, work)
                        wrk(url, lua, 3, a.conns)  # warm-up
                        data = work / f"perf-{number}-{t.pid}.data"
                        got, pids = _record(t.pid, url, lua, a.seconds, a.conns, a.freq, data)
                        counts = _symbols(data, pids)
                        requests[n] += got
                        samples[n].update(counts)
                        total = sum(counts.values()) / a.freq / got * 1e6
                        print(f"round {number + 1}: {n} {got:,} requests, {total:.1f} µs sampled / request", flush=True)
                finally:
                    for t in targets.values():
                        t.close()
        finally:
            stop(nginx)

    def per_request(n: str, key: str) -> float:
        freq: int = a.freq
        return samples[n][key] / freq / requests[n] * 1e6

    base = names[0]
    print(f"\nµs of CPU per request by symbol ({a.rounds} rounds x {a.seconds:g} s, perf cpu-clock at {a.freq} Hz)\n")
    # Without libpython's symbols (a stripped build) the samples land on raw addresses and every
    # Python row would be wrong: the table says how many did.
    print("| configuration | sampled µs / request | libpython samples without a symbol |\n|---|---:|---:|")
    for n in names:
        python = {k: v for k, v in samples[n].items() if k.startswith("libpython")}
        raw = sum(v for k, v in python.items() if k.split(" ", 1)[1].startswith("0x"))
        share = raw / max(1, sum(python.values())) * 100
        print(f"| {n} | {sum(samples[n].values()) / a.freq / requests[n] * 1e6:.1f} | {share:.1f} % |")
    for n in names[1:]:
        keys = set(samples[base]) | set(samples[n])
        diff = sorted(keys, key=lambda k: -abs(per_request(n, k) - per_request(base, k)))[: a.top]
        by_dso: dict[str, float] = collections.defaultdict(float)
        for k in keys:
            by_dso[k.split(" ", 1)[0]] += per_request(n, k) - per_request(base, k)
        print(f"\n{n} minus {base}, by shared object (µs / request):\n")
        print("| shared object | difference |\n|---|---:|")
        for dso, d in sorted(by_dso.items(), key=lambda kv: -abs(kv[1]))[:12]:
            print(f"| {dso} | {d:+.2f} |")
        print(f"\n{n} minus {base}, the {a.top} largest differences by symbol (µs / request):\n")
        print(f"| shared object and symbol | {base} | {n} | difference |\n|---|---:|---:|---:|")
        for k in diff:
            b, v = per_request(base, k), per_request(n, k)
            print(f"| {k} | {b:.2f} | {v:.2f} | {v - b:+.2f} |")


if __name__ == "__main__":
    main()
