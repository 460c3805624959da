"""Chaos and soak: two full-featured proxies under steady mixed load while their dependencies fail.

    python -m bench.chaos                 # the chaos run (~6 min), then nothing else
    python -m bench.chaos --soak          # + a 10-minute soak at 80 % of saturation
    python -m bench.chaos --quick         # short faults (~1.5 min); --quick --soak: a 1-minute soak
    python -m bench.chaos --no-chaos --soak

Everything runs on throwaway services started here and stopped by PID: a redis-server on a free port,
a PostgreSQL cluster of our own (initdb in a temporary directory), the mock upstream behind a TCP
fault injector (bench/faultproxy.py), two `fastproxy serve` instances (Granian, 1 worker each unless
`--workers`) with every feature of bench/configs.py's `full` (keys, Redis limits, usage rows in
PostgreSQL, metrics, access log), behind HAProxy (tests/integration/fleet.py: round robin, /readyz
checks every 200 ms). The machine's shared Redis and PostgreSQL are never touched.

Faults, one after another, each followed by a quiet period, under the open-loop load of
bench/chaosload.py: Redis SIGKILLed (back empty after 30 s), PostgreSQL stopped (immediate) for 60 s,
the upstream answering 503, hanging, resetting connections, instance 0 SIGTERMed and restarted,
instance 1 SIGKILLed (every process of it) and restarted. The report: requests by outcome and status,
500s, hangs, failures inside each fault and the recovery time after its end (from the fault's end to
the send time of the last failed request before the next fault), and usage rows against the answers
fastproxy sent, matched one by one through each request's `x-request-id`.

Exit status 1 when a defect shows: a 500, a hang, a truncated stream that looks complete, an answered
request without a usage row outside the SIGKILL (or beyond one flush interval's worth within it), a
recovery slower than `--recovery-limit` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import asyncpg
import httpx

from bench.chaosload import Load
from bench.chaosreport import Fault, report_chaos
from bench.configs import proxy_configs
from bench.faultproxy import FaultProxy
from bench.soak import soak
from tests.integration.fleet import ADMIN, HAPROXY, Fleet
from tests.integration.pg_instance import PrivatePostgres
from tests.integration.servers import Server
from tests.own_redis import OwnRedis

FLUSH_INTERVAL = 1.0  # the default FASTPROXY_USAGE_FLUSH_INTERVAL: what a SIGKILL may cost


@dataclass
class Rig:
    redis: OwnRedis
    pg: PrivatePostgres
    fault: FaultProxy
    fleet: Fleet
    keys: list[str]
    key_ids: list[str]


def fleet_env(pg: PrivatePostgres, redis: OwnRedis, workers: int) -> dict[str, str]:
    env = proxy_configs()["full"].resolved(database_url=pg.dsn, redis_url=redis.url, redis_prefix="chaos:")
    env.update(
        {
            "FASTPROXY_WORKERS": str(workers),
            "FASTPROXY_LOG_LEVEL": "info",  # the access log is written at INFO
            "FASTPROXY_USAGE_FLUSH_INTERVAL": str(FLUSH_INTERVAL),
            "FASTPROXY_AUTH_CACHE_TTL": "5",  # the default: a 60 s PostgreSQL outage outlives every entry
            # An upstream that hangs is given up after 5 s (504), well inside the client's 30 s.
            "FASTPROXY_READ_TIMEOUT": "5",
            "FASTPROXY_REQUEST_TIMEOUT": "20",
        }
    )
    return env


def _keep_logs(fleet: Fleet, directory: str) -> None:
    """Copy each instance's log (Granian, warnings, access lines) before the fleet stops and removes it."""
    os.makedirs(directory, exist_ok=True)
    for i, server in enumerate(fleet.instances):
        with contextlib.suppress(OSError):
            shutil.copy(server.log_path, os.path.join(directory, f"instance-{i}.log"))


async def open_rig(stack: contextlib.AsyncExitStack, workers: int, logs: str = "") -> Rig:
    redis = OwnRedis()
    redis.start()
    stack.callback(redis.close)
    pg_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastproxy-chaos-pg-"))
    pg = await asyncio.to_thread(PrivatePostgres, pg_dir)
    await asyncio.to_thread(pg.start)
    stack.callback(pg.stop)
    mock = Server(["mock-upstream", "--chunks", "10", "--delay-ms", "20"])
    stack.callback(mock.stop)
    fault = FaultProxy("127.0.0.1", mock.port)
    await fault.start()
    stack.push_async_callback(fault.close)
    journals = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastproxy-chaos-journal-"))
    fleet = await asyncio.to_thread(
        Fleet,
        f"http://127.0.0.1:{fault.port}/v1",
        fleet_env(pg, redis, workers),
        2,
        instance_env=lambda i: {"FASTPROXY_USAGE_JOURNAL_DIR": os.path.join(journals, str(i))},
    )
    stack.callback(fleet.stop)
    if logs:
        stack.callback(_keep_logs, fleet, logs)
    keys, key_ids = [], []
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(3):
            body = {"name": f"chaos-{i}", "limits": {"rpm": 10_000_000, "tpm": 10_000_000_000}}
            created = (await http.post(fleet.url + "/admin/keys", json=body, headers=ADMIN)).json()
            keys.append(created["key"])
            key_ids.append(created["id"])
    return Rig(redis, pg, fault, fleet, keys, key_ids)


def faults(
    rig: Rig, quick: bool
) -> list[tuple[str, float, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]]:
    """(name, seconds, start, end): the end runs `seconds` after the start returned."""

    async def set_mode(mode: str) -> None:
        rig.fault.mode = mode  # type: ignore[assignment]

    async def nothing() -> None:
        return None

    def blocking(fn: Callable[[], object]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await asyncio.to_thread(fn)

        return run

    upstream = 3.0 if quick else 15.0
    return [
        ("redis killed", 3.0 if quick else 30.0, blocking(rig.redis.kill), blocking(rig.redis.start)),
        ("postgres stopped", 5.0 if quick else 60.0, blocking(rig.pg.stop), blocking(rig.pg.start)),
        ("upstream 503", upstream, lambda: set_mode("5xx"), lambda: set_mode("pass")),
        ("upstream hangs", 6.0 if quick else 15.0, lambda: set_mode("hang"), lambda: set_mode("pass")),
        ("upstream resets", upstream, lambda: set_mode("reset"), lambda: set_mode("pass")),
        # The restart itself is the fault: it ends when the balancer has the instance back.
        ("instance SIGTERM", 0.0, blocking(lambda: rig.fleet.restart(0)), nothing),
        ("instance SIGKILL", 2.0, blocking(lambda: rig.fleet.kill(1)), blocking(lambda: rig.fleet.start_again(1))),
    ]


async def chaos(rig: Rig, rate: float, quick: bool, recovery_limit: float, only: str = "") -> bool:
    settle = 2.0 if quick else 10.0
    load = Load(rig.fleet.url, rig.keys, rate)
    windows: list[Fault] = []
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector) as session:
        runner = asyncio.create_task(load.run(session))
        await asyncio.sleep(settle)
        for name, seconds, start, end in faults(rig, quick):
            if only and not any(word in name for word in only.split(",")):
                continue
            load_avg = os.getloadavg()[0]
            began = load.now()
            await start()
            await asyncio.sleep(seconds)
            await end()
            windows.append(Fault(name, began, load.now(), load_avg))
            # Until it has recovered (so a slow recovery is not charged to the next fault), then a quiet spell.
            await load.recovered(windows[-1].ended)
            print(f"  {load.now():6.1f}s  {name}: {windows[-1].ended - began:.1f}s", flush=True)
            await asyncio.sleep(settle)
        load.stop()
        await runner
    rows = await settled_rows(rig.pg.dsn)
    return report_chaos(load, windows, rows, rig.key_ids, rate / 2 * FLUSH_INTERVAL, recovery_limit)


async def settled_rows(dsn: str) -> list[tuple[str, str]]:
    """(client_request_id, key_id) of every usage row, once the count has not moved for 7 s (a journal
    replay runs every 5 s) or after 90 s."""
    last, still_since, deadline = -1, time.monotonic(), time.monotonic() + 90
    while True:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT client_request_id, key_id FROM usage")
        finally:
            await conn.close()
        if len(rows) != last:
            last, still_since = len(rows), time.monotonic()
        elif time.monotonic() - still_since > 7 or time.monotonic() > deadline:
            return [(r["client_request_id"], r["key_id"]) for r in rows]
        await asyncio.sleep(1)


async def main(args: argparse.Namespace) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows in a log file
    if HAPROXY is None:
        print("bench.chaos needs haproxy (Debian: apt-get install haproxy)", file=sys.stderr)
        return 2
    print(f"# fastproxy chaos ({'quick' if args.quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"host: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"two instances x {args.workers} worker(s), `full` features, HAProxy round robin; load {args.rate} req/s")
    ok = True
    async with contextlib.AsyncExitStack() as stack:
        rig = await open_rig(stack, args.workers, args.logs)
        if not args.no_chaos:
            ok = await chaos(rig, args.rate, args.quick, args.recovery_limit, args.faults) and ok
        if args.soak:
            seconds = args.soak_seconds or (60.0 if args.quick else 600.0)
            ok = await soak(rig.fleet, rig.keys, seconds, args.quick) and ok
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short faults (and a 1-minute soak)")
    p.add_argument("--soak", action="store_true", help="also soak at 80 %% of saturation")
    p.add_argument("--no-chaos", action="store_true", help="skip the faults (with --soak: the soak alone)")
    p.add_argument("--soak-seconds", type=float, default=0.0, help="soak length (default 600, quick 60)")
    p.add_argument("--rate", type=float, default=100.0, help="chaos load, requests per second")
    p.add_argument("--workers", type=int, default=1, help="Granian workers per instance")
    p.add_argument("--faults", default="", help="only the faults whose names contain one of these words (a,b)")
    p.add_argument("--logs", default="", help="keep each instance's log in this directory")
    p.add_argument(
        "--recovery-limit",
        type=float,
        default=7.0,
        help="seconds a recovery may take (default: the breaker cooldown, 5 s, + 2)",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
