"""Proxy CPU time per request with and without usage logging, measured in the same run.

The proxy (one Granian worker) is pinned to CPU 0; wrk and the mock provider share CPU 1. For each
mode: start the proxy, warm up for 2 s, then read utime+stime of the proxy's whole process tree from
/proc, run wrk for `--seconds`, read it again and divide by the requests wrk completed. With usage on,
the rows are then counted in PostgreSQL (every request must have one).

    .venv/bin/python bench/usage/proxy_cpu.py [--seconds 8] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg

HERE = Path(__file__).parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def tree_cpu(root: int) -> float:
    """utime + stime (seconds) of `root` and every descendant alive now."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(p for p, pp in parents.items() if pp == pid)
    return total


def start(argv: list[str], cpu: str, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["taskset", "-c", cpu, sys.executable, "-m", "fastproxy", *argv, "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_port(port)
    return proc


def wrk(url: str, seconds: int, connections: int) -> tuple[int, float, int]:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(HERE / "post.lua"), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return requests, rps, int(bad.group(1)) if bad else 0


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"fpbench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = args.dsn.rsplit("/", 1)[0] + "/" + name
    mock_port = free_port()
    mock = start(["mock-upstream", "--workers", "1"], "1", {}, mock_port)
    results: dict[str, tuple[int, float, int, float]] = {}
    try:
        for mode in ("off", "on"):
            port = free_port()
            env = {
                "FASTPROXY_UPSTREAM_URL": f"http://127.0.0.1:{mock_port}/v1",
                "FASTPROXY_WORKERS": "1",
                "FASTPROXY_AUTH": "none",
                "FASTPROXY_ACCESS_LOG": "false",
                "FASTPROXY_LOG_LEVEL": "warning",
                "FASTPROXY_DATABASE_URL": dsn,
                "FASTPROXY_USAGE_ENABLED": "true" if mode == "on" else "false",
                "FASTPROXY_USAGE_JOURNAL_DIR": f"/tmp/fpbench-journal-{name}",
            }
            proxy = start(["serve"], "0", env, port)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            try:
                wrk(url, 2, args.connections)  # warm-up
                before = tree_cpu(proxy.pid)
                requests, rps, bad = wrk(url, args.seconds, args.connections)
                cpu = tree_cpu(proxy.pid) - before
            finally:
                proxy.terminate()
                proxy.wait(30)
            results[mode] = (requests, rps, bad, cpu)
        conn = await asyncpg.connect(dsn)
        rows = await conn.fetchval("SELECT count(*) FROM usage")
        await conn.close()
    finally:
        mock.terminate()
        mock.wait(10)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(f"machine: {os.cpu_count()} CPUs; proxy on CPU 0, wrk + mock on CPU 1; wrk -t1 -c{args.connections}")
    print(f"warm-up 2 s, measured {args.seconds} s per mode, 1 Granian worker, auth=none, access log off")
    for mode, (requests, rps, bad, cpu) in results.items():
        print(
            f"usage {mode:>3}: {rps:9,.0f} req/s  {requests:7d} requests ({bad} non-2xx)  "
            f"proxy CPU {cpu:6.2f} s = {cpu / requests * 1e6:6.1f} us/request"
        )
    on = results["on"]
    print(f"usage rows in PostgreSQL: {rows} (requests with usage on, warm-up included: >= {on[0]})")
    off_us = results["off"][3] / results["off"][0] * 1e6
    on_us = on[3] / on[0] * 1e6
    print(f"usage logging costs {on_us - off_us:+.1f} us CPU per request ({(on_us / off_us - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    asyncio.run(main())
