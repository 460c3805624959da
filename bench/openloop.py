"""Open-loop load client: requests sent on a fixed timetable, whatever the server's speed.

    python -m bench.openloop --url URL --rate 2000 --duration 10 [--key K]

Request i is due at t0 + i/rate. The client wakes, sends every request that is due, sleeps until
the next one; each request is its own task, so a slow answer never delays the next send (no
coordinated omission). Latency is measured from the *scheduled* time to the last byte, so a client
or server stall is charged to every request it delayed; "svc" latencies run from the real send time.
`lag` (real send time minus scheduled) shows whether the client kept up: its timers fire with
millisecond granularity, so lag is up to ~1 ms by design, and if its p99 nears the latencies the
client is the bottleneck, not the server. Times come from perf_counter (uvloop's loop.time() is
cached in whole milliseconds). aiohttp, one TCPConnector with limit=0 (new connections open when
all are busy), uvloop. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import uvloop

from bench.harness import CHAT_BODY
from bench.stats import percentile


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.key}"}
    body = args.body.encode()
    # uvloop's loop.time() is the loop's cached time in whole milliseconds: useless for sub-ms latencies.
    clock = time.perf_counter
    latencies: list[float] = []
    lags: list[float] = []
    service: list[float] = []
    errors: list[str] = []

    async def one(session: aiohttp.ClientSession, due: float) -> None:
        sent = clock()
        lags.append(sent - due)
        try:
            async with session.post(args.url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors.append(f"HTTP {resp.status}")
                    return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            errors.append(repr(exc)[:120])
            return
        done = clock()
        latencies.append(done - due)
        service.append(done - sent)

    total = int(args.rate * args.duration)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False
    ) as session:
        tasks: set[asyncio.Task[None]] = set()
        t0 = clock() + 0.05
        i = 0
        while i < total:
            now = clock()
            while i < total and t0 + i / args.rate <= now:
                task = asyncio.create_task(one(session, t0 + i / args.rate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, t0 + i / args.rate - clock()))
        sent_wall = clock() - t0
        if tasks:
            await asyncio.wait(tasks, timeout=35)
    return {
        "rate": args.rate,
        "scheduled": total,
        "completed": len(latencies),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "achieved_send_rate": total / sent_wall if sent_wall > 0 else float("nan"),
        "p50_us": percentile(latencies, 50) * 1e6,
        "p90_us": percentile(latencies, 90) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "max_us": max(latencies) * 1e6 if latencies else float("nan"),
        "svc_p50_us": percentile(service, 50) * 1e6,
        "svc_p99_us": percentile(service, 99) * 1e6,
        "lag_p50_us": percentile(lags, 50) * 1e6,
        "lag_p99_us": percentile(lags, 99) * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, required=True, help="requests per second")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--key", default="sk-bench-unused")
    ap.add_argument("--body", default=CHAT_BODY)
    args = ap.parse_args()
    print(json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
