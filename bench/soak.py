"""The soak: saturation measured briefly, then the mixed load at 80 % of it, each worker watched.

Each worker's RSS (VmRSS) and open descriptors come from /proc; its asyncio task count from the
instance's /metrics (`fastproxy_event_loop_tasks{pid=...}`, sampled by each worker once a second),
which also names the worker processes. Samples every `interval` seconds; RSS growth is judged from the
sample 10 % into the soak (caches, pools and the allocator have warmed by then) to the last, as the
suite's memory scenario does (the figure at its very start is printed too); descriptors and tasks
idle (3 s after the saturation probe, and 3 s after the soak's last request).
"""

from __future__ import annotations

import asyncio
import os
import re
import time

import aiohttp
import httpx

from bench.chaosload import Load, closed_loop
from tests.integration.fleet import Fleet

_TASKS = re.compile(r'^fastproxy_event_loop_tasks\{pid="(\d+)"\} ([0-9.e+]+)$', re.MULTILINE)
Sample = dict[int, tuple[float, int, int, int]]  # pid -> (t, rss kB, fds, tasks)
# Before an idle sample: requests in flight have ended and each worker has sampled its tasks since (1 s).
IDLE_WAIT = 3.0


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def sample(fleet: Fleet, t: float) -> Sample:
    out: Sample = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for server in fleet.instances:
            text = (await http.get(server.url + "/metrics")).text
            for pid_text, tasks in _TASKS.findall(text):
                pid = int(pid_text)
                try:
                    out[pid] = (t, _rss_kb(pid), len(os.listdir(f"/proc/{pid}/fd")), int(float(tasks)))
                except FileNotFoundError:
                    continue  # a worker that died since its last flush
    return out


async def soak(fleet: Fleet, keys: list[str], seconds: float, quick: bool) -> bool:
    """Print the soak's figures; False when RSS grew 5 % or more, or idle descriptors or tasks climbed."""
    connector = aiohttp.TCPConnector(limit=4000)
    async with aiohttp.ClientSession(connector=connector) as session:
        sat = await closed_loop(session, fleet.url, keys, concurrency=128, seconds=5.0 if quick else 15.0)
        rate = 0.8 * sat
        print(f"\n# soak: saturation {sat:.0f} req/s (closed loop, 128 clients, the mix, client on this host)")
        print(f"soak at {rate:.0f} req/s for {seconds:.0f} s; load average {os.getloadavg()[0]:.2f}")
        await asyncio.sleep(IDLE_WAIT)
        idle_start = await sample(fleet, 0.0)
        load = Load(fleet.url, keys, rate, keep=False)
        runner = asyncio.create_task(load.run(session))
        interval = 10.0 if quick else 30.0
        samples: list[Sample] = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            samples.append(await sample(fleet, elapsed))
            await asyncio.sleep(min(interval, max(0.0, seconds - (time.monotonic() - started))))
        samples.append(await sample(fleet, time.monotonic() - started))
        load.stop()
        await runner
        await asyncio.sleep(IDLE_WAIT)
        idle_end = await sample(fleet, time.monotonic() - started)
    print(f"soak outcomes: {', '.join(f'{k} {n}' for k, n in load.counts.most_common())}")
    print(f"load average at the soak's end: {os.getloadavg()[0]:.2f}")
    return report_soak(samples, seconds, idle_start, idle_end)


def report_soak(samples: list[Sample], seconds: float, idle_start: Sample, idle_end: Sample) -> bool:
    """RSS: from 10 % into the soak to its end, under load. Descriptors and tasks: idle before against idle
    after (under load they follow the requests in flight at the sampling instant, which come and go)."""
    warm = next((s for s in samples if s and next(iter(s.values()))[0] >= 0.1 * seconds), samples[0])
    first, last = samples[0], samples[-1]
    ok = True
    print(
        "\n| worker pid | RSS MB start / 10 % / end | growth from 10 % | fds idle before / after | tasks idle before / after | under load (start / end): fds, tasks |"
    )
    print("|---|---|---|---|---|---|")
    for pid in sorted(last):
        if not all(pid in s for s in (first, warm, idle_start, idle_end)):
            print(f"| {pid} | (started during the soak) | | | | |")
            ok = False
            continue
        (_, r0, f0, t0), (_, r1, _, _), (_, r2, f2, t2) = first[pid], warm[pid], last[pid]
        (_, _, fa, ta), (_, _, fb, tb) = idle_start[pid], idle_end[pid]
        growth = (r2 - r1) / r1 * 100
        print(
            f"| {pid} | {r0 / 1024:.1f} / {r1 / 1024:.1f} / {r2 / 1024:.1f} | {growth:+.1f} % | {fa} / {fb} |"
            f" {ta} / {tb} | {f0} / {f2}, {t0} / {t2} |"
        )
        # Flat: pooled connections (upstream, Redis, PostgreSQL) may differ by a few between two idle moments.
        if growth >= 5.0 or fb > fa + max(8, fa // 10) or tb > ta + 2:
            ok = False
    over_time = " ".join(
        f"{int(next(iter(s.values()))[0])}s:" + "/".join(f"{v[1] // 1024}" for _, v in sorted(s.items()))
        for s in samples
        if s
    )
    print(f"RSS MB per worker over time: {over_time}")
    print("soak: " + ("PASS" if ok else "FAIL"))
    return ok
