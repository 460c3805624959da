"""Instructions per request, counted by valgrind's callgrind: the steady figure of what a feature costs.

    python -m bench.instructions                              # bare, +metrics, +access-log, +metrics+log
    python -m bench.instructions --configs bare,+redis-limits,full

CPU time per request on a shared 2-core VM moves by ±20-30 % from one run to the next, which drowns
a difference of a few percent. callgrind counts the instructions the proxy executes instead: the same
work gives the same count whatever else the machine is doing. For each configuration the proxy
(`fastproxy serve`, 1 Granian worker, every process and thread of it under callgrind) is started
twice and sent exactly N1, then N2 non-streamed chat requests (the suite's body, nginx's canned
answer, a fixed concurrency); instructions per request = (count(N2) - count(N1)) / (N2 - N1), which
cancels start-up and shut-down.

Time runs differently under callgrind: a request takes ~30 x longer (8 ms of wall time at concurrency
16 against ~250 µs of CPU natively), so timer-driven work (the access log's batches every 50 ms, the
metrics flush every second, the usage writer, the rate-limit settler) would fall ~30 x more often per
request than in a loaded proxy and be charged to the features that own it. Every periodic interval is
therefore stretched by `--dilation` (default 30; 1 counts the undilated, pessimistic figure).
What it does not count: time in the kernel (syscalls: socket I/O, the access log's writes).
Redis's timeout is raised to 5 s (callgrind slows the proxy, not Redis; 50 ms would fall back).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import time
from pathlib import Path

import aiohttp
import msgspec

from bench.configs import KEY_LIMITS, named_configs
from bench.harness import CHAT_BODY, PY, REPO, backing, free_port, scratch_dir, spawn, start_nginx, stop, wait_port
from bench.targets import UNUSED_KEY, clean_env
from fastproxy.core.settings import Settings

PY_ARGV = [PY, "-m", "fastproxy", "serve"]


def _valgrind(out_dir: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",  # Granian's worker is a child process
        f"--callgrind-out-file={out_dir}/callgrind.%p",
    ]


async def _send(url: str, key: str, n: int, concurrency: int) -> tuple[int, int]:
    ok = bad = 0
    todo = iter(range(n))
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal ok, bad
            for _ in todo:
                async with session.post(url, data=CHAT_BODY, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        ok += 1
                    else:
                        bad += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, bad


def _total(out_dir: Path) -> int:
    """The summed instruction count of every process of the run (master and worker)."""
    total = 0
    for f in out_dir.glob("callgrind.*"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


def count(env: dict[str, str], key: str, n: int, concurrency: int, work: Path, port: int) -> tuple[int, int, int]:
    """(instructions of the whole run, requests that got 200, others)."""
    out_dir = work / f"cg-{port}-{n}"
    out_dir.mkdir()
    env = {**env, "FASTPROXY_PORT": str(port)}
    proc = spawn([*_valgrind(out_dir), *PY_ARGV], env, work / f"proxy-{port}-{n}.log", cwd=REPO)
    try:
        wait_port(port, proc, timeout=300)
        t0 = time.monotonic()
        ok, bad = asyncio.run(_send(f"http://127.0.0.1:{port}/v1/chat/completions", key, n, concurrency))
        print(f"  N={n}: {(time.monotonic() - t0) / n * 1000:.1f} ms of wall time per request", flush=True)
    finally:
        stop(proc, grace=120)  # callgrind writes its counts on exit
    return _total(out_dir), ok, bad


# The settings that pace timer-driven work.
PERIODIC = (
    "access_log_interval",
    "metrics_flush_interval",
    "usage_flush_interval",
    "ratelimit_settle_interval",
    "budget_sync_interval",
    "last_used_flush_interval",
)


def _dilated(factor: float) -> dict[str, str]:
    defaults = {f.name: f.default for f in msgspec.structs.fields(Settings)}
    return {f"FASTPROXY_{name.upper()}": f"{defaults[name] * factor:g}" for name in PERIODIC}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="bare,+metrics,+access-log,+metrics+log")
    p.add_argument("--n1", type=int, default=300)
    p.add_argument("--n2", type=int, default=2300)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--dilation", type=float, default=30.0, help="factor applied to every periodic interval")
    p.add_argument("--keep", type=Path, help="copy the callgrind files here (for callgrind_annotate)")
    a = p.parse_args()
    configs, names = named_configs(a.configs)
    rows: list[tuple[str, float, str]] = []
    started = time.monotonic()
    with scratch_dir() as tmp, backing(a.redis_url, KEY_LIMITS) as bk:
        work = Path(tmp)
        nginx, nginx_port = start_nginx(work)
        try:
            for name in names:
                cfg = configs[name]
                env = {
                    **clean_env(),
                    **cfg.resolved(
                        database_url=bk.database_url,
                        redis_url=bk.redis_url,
                        redis_prefix=bk.redis_prefix,
                        upstream_url=f"http://127.0.0.1:{nginx_port}/v1",
                    ),
                    "FASTPROXY_UPSTREAM_URL": f"http://127.0.0.1:{nginx_port}/v1",
                    "FASTPROXY_REDIS_TIMEOUT": "5",
                    **_dilated(a.dilation),
                }
                key = bk.keys[cfg.key] if cfg.key != "none" else UNUSED_KEY
                counts = []
                for n in (a.n1, a.n2):
                    port = free_port()
                    total, ok, bad = count(env, key, n, a.concurrency, work, port)
                    if a.keep:
                        shutil.copytree(work / f"cg-{port}-{n}", a.keep / f"{name.strip('+')}-{n}-{port}")
                    if ok != n:
                        raise SystemExit(f"{name}: {bad} of {n} requests failed; see the proxy log in {work}")
                    counts.append(total)
                    print(f"{name} N={n}: {total:,} instructions", flush=True)
                per = (counts[1] - counts[0]) / (a.n2 - a.n1)
                rows.append((name, per, f"{counts[0]:,} / {counts[1]:,}"))
        finally:
            stop(nginx)
    base = dict((n, v) for n, v, _ in rows).get("bare")
    print()
    print(
        f"Instructions per request (callgrind), N1={a.n1} and N2={a.n2} non-streamed chat requests at "
        f"concurrency {a.concurrency}; {platform.python_implementation()} {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.monotonic() - started) / 60:.1f} min.\n"
    )
    print("| configuration | instructions / request | over bare | run totals (N1 / N2) |")
    print("|---|---:|---:|---|")
    for name, per, totals in rows:
        over = "" if base is None or name == "bare" else f"{(per / base - 1) * 100:+.1f} %"
        print(f"| {name} | {per:,.0f} | {over} | {totals} |")


if __name__ == "__main__":
    main()
