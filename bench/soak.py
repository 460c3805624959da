"""The soak: saturation measured briefly, then the mixed load at 80 % of it, each worker watched.

Each worker's RSS (VmRSS) and open descriptors come from /proc; its asyncio task count from the
instance's /metrics (`fastproxy_event_loop_tasks{pid=...}`, sampled by each worker once a second),
which also names the worker processes. Samples every `interval` seconds; growth is judged from the
sample 10 % into the soak (caches, pools and the allocator have warmed by then) to the last, as the
suite's memory scenario does, and the figures at its very start are printed too.
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
    """Print the soak's figures; False when RSS grew 5 % or more, or descriptors or tasks climbed."""
    connector = aiohttp.TCPConnector(limit=4000)
    async with aiohttp.ClientSession(connector=connector) as session:
        sat = await closed_loop(session, fleet.url, keys, concurrency=128, seconds=5.0 if quick else 15.0)
        rate = 0.8 * sat
        print(f"\n# soak: saturation {sat:.0f} req/s (closed loop, 128 clients, the mix, client on this host)")
        print(f"soak at {rate:.0f} req/s for {seconds:.0f} s; load average {os.getloadavg()[0]:.2f}")
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
    print(f"soak outcomes: {', '.join(f'{k} {n}' for k, n in load.counts.most_common())}")
    print(f"load average at the soak's end: {os.getloadavg()[0]:.2f}")
    return report_soak(samples, seconds)


def report_soak(samples: list[Sample], seconds: float) -> bool:
    warm = next((s for s in samples if s and next(iter(s.values()))[0] >= 0.1 * seconds), samples[0])
    first, last = samples[0], samples[-1]
    ok = True
    print(
        "\n| worker pid | RSS MB start / 10 % / end | growth from 10 % | fds start / 10 % / end | tasks start / 10 % / end |"
    )
    print("|---|---|---|---|---|")
    for pid in sorted(last):
        if pid not in first or pid not in warm:
            print(f"| {pid} | (started during the soak) | | | |")
            ok = False
            continue
        (_, r0, f0, t0), (_, r1, f1, t1), (_, r2, f2, t2) = first[pid], warm[pid], last[pid]
        growth = (r2 - r1) / r1 * 100
        print(
            f"| {pid} | {r0 / 1024:.1f} / {r1 / 1024:.1f} / {r2 / 1024:.1f} | {growth:+.1f} % |"
            f" {f0} / {f1} / {f2} | {t0} / {t1} / {t2} |"
        )
        # Flat: descriptors and tasks follow the requests in flight at the sampling instant, so a single
        # sample moves; a leak shows as the last third's mean above the first third's (after 10 %).
        series = [s[pid] for s in samples if pid in s and s[pid][0] >= warm[pid][0]]
        third = max(1, len(series) // 3)
        for column, name in ((2, "descriptors"), (3, "tasks")):
            early = sum(v[column] for v in series[:third]) / third
            late = sum(v[column] for v in series[-third:]) / third
            if late > early * 1.1 + 8:
                print(f"  worker {pid}: {name} climbed from a mean of {early:.0f} to {late:.0f}")
                ok = False
        if growth >= 5.0:
            ok = False
    over_time = " ".join(
        f"{int(next(iter(s.values()))[0])}s:" + "/".join(f"{v[1] // 1024}" for _, v in sorted(s.items()))
        for s in samples
        if s
    )
    print(f"RSS MB per worker over time: {over_time}")
    print("soak: " + ("PASS" if ok else "FAIL"))
    return ok
