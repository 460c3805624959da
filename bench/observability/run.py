"""Proxy CPU time per request with metrics and the access log on vs off, alternating, in one run.

    python bench/observability/run.py [--duration 10] [--warmup 2] [--runs 3] [--connections 32]

The proxy (one Granian worker) is pinned to CPU 0; wrk and the mock provider share CPU 1. For each
run: start the proxy, warm up, then run wrk for --duration seconds and read the CPU time (utime +
stime, from /proc) of the proxy's whole process tree (Granian master, worker, and the worker's
threads, the log listener among them); divide by the requests wrk completed. "on" is the default
configuration (metrics in multiprocess mode + one JSON access line per request, written to a file);
"off" sets FASTPROXY_METRICS=false and FASTPROXY_ACCESS_LOG=false. Runs alternate off/on so drift
in the machine's load hits both alike; the figure is the median of each.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
CONFIGS = {
    "off": {"FASTPROXY_METRICS": "false", "FASTPROXY_ACCESS_LOG": "false"},
    "on": {"FASTPROXY_METRICS": "true", "FASTPROXY_ACCESS_LOG": "true"},
    # For a breakdown when "on" costs too much: --configs off,metrics,log
    "metrics": {"FASTPROXY_METRICS": "true", "FASTPROXY_ACCESS_LOG": "false"},
    "log": {"FASTPROXY_METRICS": "false", "FASTPROXY_ACCESS_LOG": "true"},
}


LABELS = {
    "off": "no metrics, no access log",
    "on": "metrics + JSON access log",
    "metrics": "metrics only",
    "log": "JSON access log only",
}


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


def wrk(url: str, seconds: int, connections: int) -> tuple[int, int]:
    """(completed requests, non-2xx responses)."""
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(HERE / "post.lua"), url]
    report = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    done = re.search(r"(\d+) requests in", report)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    if done is None:
        raise SystemExit(report)
    return int(done.group(1)), int(bad.group(1)) if bad else 0


def measure(name: str, upstream: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    port = free_port()
    log = tmp / f"proxy-{name}.log"
    env = {
        "FASTPROXY_UPSTREAM_URL": upstream,
        "FASTPROXY_WORKERS": "1",
        "FASTPROXY_PORT": str(port),
        "FASTPROXY_DATABASE_URL": "",
        "FASTPROXY_AUTH": "none",
        "FASTPROXY_LOG_LEVEL": "info",
        **CONFIGS[name],
    }
    proc = start(["serve"], 0, env, log)
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wrk(url, args.warmup, args.connections)
        pids = tree(proc.pid)
        before = cpu_seconds(pids)
        done, bad = wrk(url, args.duration, args.connections)
        used = cpu_seconds(pids) - before
        scraped = ""
        if CONFIGS[name]["FASTPROXY_METRICS"] == "true":
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                scraped = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    finally:
        stop(proc)
    lines = sum(1 for ln in log.read_text(errors="replace").splitlines() if ln.startswith('{"request_id"'))
    if name == "on":
        # The measurement is only meaningful if every request was really counted and logged.
        counted = re.search(r'fastproxy_requests_total\{endpoint="chat.completions".*status="2xx"\} (\S+)', scraped)
        if counted is None or lines < done:
            raise SystemExit(f"on run did not observe every request: {lines} lines, metrics {counted}")
    if bad:
        raise SystemExit(f"{bad} non-2xx responses in run {name}")
    return {"requests": done, "rps": done / args.duration, "us_per_req": used / done * 1e6, "log_lines": lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--configs", default="off,on", help="comma-separated, alternated: off,on,metrics,log")
    args = parser.parse_args()
    names = args.configs.split(",")
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    print(f"machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()}; load {os.getloadavg()[0]:.2f}")
    print(f"python {platform.python_version()}; proxy: 1 Granian worker on CPU 0 (taskset -c 0)")
    print(f"wrk -t1 -c{args.connections} and the mock provider on CPU 1; POST chat, non-streamed")
    print(f"warm-up {args.warmup}s, measured {args.duration}s per run, {args.runs} runs each, alternating off/on")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="fastproxy-bench-") as tmp_name:
        tmp = Path(tmp_name)
        mock_port = free_port()
        mock = start(["mock-upstream", "--port", str(mock_port)], 1, {}, tmp / "mock.log")
        try:
            wait_for_port(mock_port)
            for _ in range(args.runs):
                for name in names:
                    r = measure(name, f"http://127.0.0.1:{mock_port}/v1", args, tmp)
                    results[name].append(r)
                    print(
                        f"  {name:>3}: {r['requests']:.0f} requests, {r['rps']:.0f} req/s, "
                        f"{r['us_per_req']:.1f} µs CPU/request"
                    )
        finally:
            stop(mock)
    print(f"load average after: {os.getloadavg()[0]:.2f} (other work on this machine skews absolute numbers)")
    off = statistics.median(r["us_per_req"] for r in results[names[0]])
    print()
    print(f"| configuration | runs (µs CPU/request) | median µs/request | vs {names[0]} |")
    print("|---|---|---:|---:|")
    for name in names:
        median = statistics.median(r["us_per_req"] for r in results[name])
        runs = ", ".join(f"{r['us_per_req']:.1f}" for r in results[name])
        print(f"| {name}: {LABELS[name]} | {runs} | {median:.1f} | {(median / off - 1) * 100:+.1f}% |")


if __name__ == "__main__":
    main()
