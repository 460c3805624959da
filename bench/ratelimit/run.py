"""Proxy CPU time per request with no limits, in-process limits and Redis limits, in one run.

    python bench/ratelimit/run.py [--duration 3] [--warmup 1] [--connections 32] [--rounds 1]

The proxy (one Granian worker) is pinned to CPU 0; wrk and the mock provider share CPU 1. For each
configuration: start the proxy, warm up, then run wrk for --duration seconds and read the CPU time
(utime + stime, from /proc) of the proxy's whole process tree; divide by the requests wrk completed.
Limits are set high enough never to refuse, so every request pays the full admit + settle path:
global rpm and tpm (two buckets: one request bucket, one token bucket, reserved then reconciled).
Redis is measured twice: reconciliations coalesced (the default) and one round trip per settle.
Redis CPU is not counted (the shared local Redis also serves others); Redis is at FASTPROXY_REDIS_URL
or redis://127.0.0.1:6379/0, keys under a unique prefix deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
LIMITS = '{"rpm": 1000000000, "tpm": 1000000000000}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port}")


def start(argv: list[str], cpu: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, "-m", "fastproxy", *argv],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def tree(root: int) -> list[int]:
    """root and all its descendants (Granian's main process and its worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICK


def wrk(url: str, seconds: int, connections: int) -> tuple[int, int, str]:
    """(completed requests, non-2xx responses, wrk's report)."""
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(HERE / "post.lua"), url]
    report = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    done = re.search(r"(\d+) requests in", report)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    errors = re.search(r"Socket errors: (.*)", report)
    if done is None:
        raise SystemExit(report)
    return int(done.group(1)), int(bad.group(1)) if bad else 0, errors.group(1) if errors else ""


@dataclass
class Result:
    name: str
    requests: int
    seconds: int
    non_2xx: int
    socket_errors: str
    cpu_s: float
    fallback_log: list[str]

    @property
    def us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")


def measure(name: str, upstream: str, env: dict[str, str], args: argparse.Namespace, tmp: Path) -> Result:
    port = free_port()
    log = tmp / f"proxy-{name}.log"
    proxy_env = {
        "FASTPROXY_UPSTREAM_URL": upstream,
        "FASTPROXY_WORKERS": "1",
        "FASTPROXY_PORT": str(port),
        "FASTPROXY_DATABASE_URL": "",
        "FASTPROXY_AUTH": "none",
        "FASTPROXY_ACCESS_LOG": "false",
        "FASTPROXY_LOG_LEVEL": "warning",
        **env,
    }
    proc = start(["serve"], 0, proxy_env, log)
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wrk(url, args.warmup, args.connections)
        pids = tree(proc.pid)
        before = cpu_seconds(pids)
        done, bad, errors = wrk(url, args.duration, args.connections)
        used = cpu_seconds(pids) - before
    finally:
        stop(proc)
    text = log.read_text(errors="replace")
    fallback = [ln for ln in text.splitlines() if "Redis unavailable" in ln or "Redis is back" in ln]
    return Result(name, done, args.duration, bad, errors, used, fallback)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    redis_url = os.environ.get("FASTPROXY_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    redis_env = {
        "FASTPROXY_GLOBAL_LIMITS": LIMITS,
        "FASTPROXY_REDIS_URL": redis_url,
        "FASTPROXY_REDIS_PREFIX": prefix,
        # The default timeout unless BENCH_REDIS_TIMEOUT says otherwise; a fallback to in-process
        # limits would measure the wrong path, so it is reported.
        "FASTPROXY_REDIS_TIMEOUT": os.environ.get("BENCH_REDIS_TIMEOUT", "0.05"),
    }
    configs: list[tuple[str, dict[str, str]]] = [
        ("no limits", {}),
        ("in-process limits", {"FASTPROXY_GLOBAL_LIMITS": LIMITS}),
        ("redis limits", redis_env),
        ("redis limits, settle per request", {**redis_env, "FASTPROXY_RATELIMIT_SETTLE_INTERVAL": "0"}),
    ]
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    print(f"machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()}; load {os.getloadavg()[0]:.2f}")
    print(f"python {platform.python_version()}; proxy: 1 Granian worker on CPU 0; wrk -t1 -c{args.connections}")
    print(f"and the mock provider on CPU 1; warm-up {args.warmup}s, measured {args.duration}s per configuration")
    with tempfile.TemporaryDirectory(prefix="fastproxy-bench-") as tmp_name:
        tmp = Path(tmp_name)
        mock_port = free_port()
        mock = start(["mock-upstream", "--port", str(mock_port)], 1, {}, tmp / "mock.log")
        try:
            wait_for_port(mock_port)
            upstream = f"http://127.0.0.1:{mock_port}/v1"
            # Rounds interleave the configurations, so a burst of other load on the machine hits all of them.
            results = [measure(n, upstream, env, args, tmp) for _ in range(args.rounds) for n, env in configs]
        finally:
            stop(mock)
            keys = subprocess.run(
                ["redis-cli", "-u", redis_url, "--scan", "--pattern", prefix + "*"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if keys:
                subprocess.run(["redis-cli", "-u", redis_url, "del", *keys], capture_output=True, check=False)
    print(f"load average after: {os.getloadavg()[0]:.2f} (other work on this machine skews absolute numbers)")
    print()
    print("| round | configuration | requests | req/s | non-2xx | proxy CPU µs/request |")
    print("|---:|---|---:|---:|---:|---:|")
    for i, r in enumerate(results):
        note = " (fell back to in-process!)" if r.fallback_log else ""
        print(
            f"| {i // len(configs) + 1} | {r.name}{note} | {r.requests} | {r.requests / r.seconds:.0f} "
            f"| {r.non_2xx} | {r.us_per_request:.0f} |"
        )
    print()
    print("| configuration | median proxy CPU µs/request | added vs no limits |")
    print("|---|---:|---:|")
    base = statistics.median(r.us_per_request for r in results if r.name == configs[0][0])
    for name, _ in configs:
        us = statistics.median(r.us_per_request for r in results if r.name == name)
        print(f"| {name} | {us:.0f} | {us - base:+.0f} µs ({(us / base - 1) * 100:+.0f}%) |")
    for r in results:
        for line in r.fallback_log:
            print(f"{r.name}: proxy log: {line}")
        if r.socket_errors:
            print(f"{r.name}: wrk socket errors: {r.socket_errors}")


if __name__ == "__main__":
    main()
