#!/usr/bin/env python
"""Upstream-HTTP-client benchmark for fastproxy.

  /work/main/.venv/bin/python bench/clients/run.py            # full run (~22 min on a busy box, mostly quiet-waits)
  ... run.py --clients direct,aiohttp --runs 1 --duration 5   # quick look

Topology (2 cores):
  CPU 0 : Granian (1 worker, uvloop, ASGI) running passthrough.py with BENCH_CLIENT=<client>
  CPU 1 : nginx (1 worker, canned OpenAI responses, nginx.conf) + wrk (-t1)

--runs interleaved rounds; in each round every target is started, warmed up (wrk for
--warmup s), measured once (wrk -d<duration>) and stopped.
Per run: req/s, p50/p99 (wrk --latency, from post.lua's done()), and CPU µs per request
of the Granian process tree (utime+stime over all processes descending from the Granian
master, from /proc/<pid>/stat, threads included) and of nginx; plus "other" = CPU busy
time of both cores not attributable to granian/nginx/wrk (noise from the rest of the box).
Tables show the median of the runs; raw results go to results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_PREFIX = "/tmp/fpbench-nginx"
UP_PORT = 18090
PROXY_PORT = 18100
CLK = os.sysconf("SC_CLK_TCK")
CHAT_PATH = "/v1/chat/completions"
STREAM_PATH = "/v1/chat/stream"

GRANIAN_FLAGS = [
    "--interface",
    "asgi",
    "--loop",
    "uvloop",
    "--workers",
    "1",
    "--runtime-threads",
    "1",
    "--no-ws",
    "--http",
    "1",
    "--backlog",
    "2048",
    "--log-level",
    "warning",
    "--no-access-log",
    "--host",
    "127.0.0.1",
    "--port",
    str(PROXY_PORT),
]


# ----------------------------------------------------------------------------- /proc helpers
def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime ticks) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(b")") + 2 :].split()
        # rest[0]=state(3) rest[1]=ppid(4) ... utime(14)=rest[11] stime(15)=rest[12]
        out[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    return out


def tree_ticks(root: int, table: dict[int, tuple[int, int]] | None = None) -> int:
    table = table or proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        p = stack.pop()
        if p in table:
            total += table[p][1]
        stack.extend(kids.get(p, ()))
    return total


def cpu_busy_ticks() -> tuple[int, int]:
    """(user+nice+system, irq+softirq) ticks summed over all CPUs. Loopback TCP work done in
    softirq context is not charged to any process, so it is reported separately."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2], v[5] + v[6]


def wait_port(port: int, timeout: float = 20.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


# ----------------------------------------------------------------------------- wrk
def wrk(url: str, duration: float, conns: int) -> dict:
    cmd = [
        "taskset",
        "-c",
        "1",
        WRK,
        "-t1",
        f"-c{conns}",
        f"-d{duration}s",
        "--latency",
        "-s",
        os.path.join(HERE, "post.lua"),
        url,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"BENCH_JSON (\{.*\})", r.stdout)
    if not m:
        raise RuntimeError(f"wrk output unparsable:\n{r.stdout}\n{r.stderr}")
    d = json.loads(m.group(1))
    d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
    d["errors"] = sum(d[k] for k in d if k.startswith("err_"))
    return d


def measure(url: str, duration: float, conns: int, proxy_pid: int | None, nginx_pid: int) -> dict:
    t0 = proc_table()
    busy0 = cpu_busy_ticks()
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = wrk(url, duration, conns)
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = cpu_busy_ticks()
    t1 = proc_table()
    n = res["requests"]
    ng = (tree_ticks(nginx_pid, t1) - tree_ticks(nginx_pid, t0)) / CLK
    px = (tree_ticks(proxy_pid, t1) - tree_ticks(proxy_pid, t0)) / CLK if proxy_pid else 0.0
    wrk_s = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
    busy = (busy1[0] - busy0[0]) / CLK
    softirq = (busy1[1] - busy0[1]) / CLK
    res.update(
        proxy_cpu_us=px / n * 1e6 if proxy_pid else None,
        proxy_cpu_util=px / (res["duration_us"] / 1e6),
        nginx_cpu_us=ng / n * 1e6,
        wrk_cpu_us=wrk_s / n * 1e6,
        other_cpu_s=busy - px - ng - wrk_s,  # user+sys time of processes outside the test
        softirq_s=softirq,
    )
    return res


# ----------------------------------------------------------------------------- targets
def start_nginx() -> subprocess.Popen:
    os.makedirs(NGINX_PREFIX, exist_ok=True)
    conf = os.path.join(HERE, "nginx.conf")
    with open(conf, "w") as f:
        subprocess.run([PY, os.path.join(HERE, "make_nginx_conf.py"), str(UP_PORT)], stdout=f, check=True)
    p = subprocess.Popen(["taskset", "-c", "1", NGINX, "-c", conf, "-p", NGINX_PREFIX + "/"])
    wait_port(UP_PORT)
    return p


def start_granian(client: str, upstream: str) -> subprocess.Popen:
    env = dict(os.environ, BENCH_CLIENT=client, BENCH_UPSTREAM=upstream, BENCH_POOL="256")
    p = subprocess.Popen(
        ["taskset", "-c", "0", PY, "-m", "granian", *GRANIAN_FLAGS, "passthrough:app"],
        cwd=HERE,
        env=env,
    )
    wait_port(PROXY_PORT)
    return p


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGINT)
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    time.sleep(0.5)


def wait_quiet(max_wait: float, limit: float = 0.15) -> float:
    """The box is shared: wait (up to max_wait s) until processes outside this benchmark use
    < `limit` cores for two consecutive 0.5 s windows. Returns the seconds waited."""
    t_start = time.time()
    ok = 0
    while time.time() - t_start < max_wait:
        b0, _ = cpu_busy_ticks()
        time.sleep(0.5)
        b1, _ = cpu_busy_ticks()
        ok = ok + 1 if (b1 - b0) / CLK / 0.5 < limit else 0
        if ok >= 2:
            break
    return time.time() - t_start


def bench_once(name: str, path: str, args, nginx_pid: int) -> dict:
    """start target, sanity check, warm up, wait for a quiet box, one measured wrk run, stop."""
    if name == "direct":
        proc, url = None, f"http://127.0.0.1:{UP_PORT}{path}"
    else:
        proc = start_granian(name, f"http://127.0.0.1:{UP_PORT}{path}")
        url = f"http://127.0.0.1:{PROXY_PORT}{path}"
    try:
        # sanity: requests must come back 2xx with no socket errors
        wrk_check = wrk(url, 1, 1)
        if wrk_check["errors"] or not wrk_check["requests"]:
            raise RuntimeError(f"{name}: errors during sanity check: {wrk_check}")
        wrk(url, args.warmup, args.conns)  # warm-up
        waited = wait_quiet(args.quiet_wait)
        r = measure(url, args.duration, args.conns, proc.pid if proc else None, nginx_pid)
        r["quiet_wait_s"] = waited
        cpu = f"{r['proxy_cpu_us']:.0f}" if r["proxy_cpu_us"] is not None else "-"
        print(
            f"  {name:<17} {r['rps']:>8.0f} req/s  p50 {r['p50_us'] / 1e3:6.2f} ms  "
            f"p99 {r['p99_us'] / 1e3:6.2f} ms  proxy {cpu:>5} µs/req ({r['proxy_cpu_util'] * 100:.0f}% of a core)  "
            f"nginx {r['nginx_cpu_us']:.0f} µs/req  errors {r['errors']}  other {r['other_cpu_s']:.2f} s  "
            f"softirq {r['softirq_s']:.2f} s  (waited {waited:.1f}s for quiet)",
            flush=True,
        )
        return r
    finally:
        if proc:
            stop(proc)


def bench_all(names: list[str], path: str, args, nginx_pid: int) -> dict:
    """Interleaved rounds (round 1: every target once, round 2: ...), so that noise from other
    work on the box hits every target alike rather than one target's 3 consecutive runs."""
    res: dict = {n: [] for n in names}
    for rnd in range(args.runs):
        print(f" round {rnd + 1}/{args.runs}", flush=True)
        for name in names:
            if isinstance(res[name], str):
                continue
            try:
                res[name].append(bench_once(name, path, args, nginx_pid))
            except Exception as exc:
                print(f"  {name}: FAILED {exc!r}", flush=True)
                res[name] = repr(exc)[:160]
    return res


def med(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def table(results: dict[str, list[dict]]) -> str:
    lines = [
        "| target | req/s | p50 ms | p99 ms | proxy CPU µs/req | proxy core util | nginx CPU µs/req | errors | other-CPU s/run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        if isinstance(runs, str):
            lines.append(f"| {name} | failed: {runs} | | | | | | | |")
            continue
        cpu = med(runs, "proxy_cpu_us")
        cpu_s = "-" if cpu is None else f"{cpu:.0f}"
        util_s = "-" if cpu is None else f"{med(runs, 'proxy_cpu_util') * 100:.0f}%"
        lines.append(
            f"| {name} | {med(runs, 'rps'):.0f} | {med(runs, 'p50_us') / 1e3:.2f} | {med(runs, 'p99_us') / 1e3:.2f} | "
            f"{cpu_s} | {util_s} | "
            f"{med(runs, 'nginx_cpu_us'):.0f} | {sum(r['errors'] for r in runs)} | {med(runs, 'other_cpu_s'):.2f} |"
        )
    return "\n".join(lines)


def header(args) -> str:
    def v(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "n/a"

    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    return "\n".join(
        [
            f"date: {dt.datetime.now().isoformat(timespec='seconds')}",
            f"machine: nproc={os.cpu_count()} cpu='{model}' kernel={platform.release()} loadavg={os.getloadavg()}",
            f"python {platform.python_version()} | granian {v('granian')} | uvloop {v('uvloop')} | aiohttp {v('aiohttp')} | "
            f"httpx {v('httpx')} (httpcore {v('httpcore')}) | pyreqwest {v('pyreqwest')} | pyqwest {v('pyqwest')}",
            f"{nginx_v} | {wrk_v}",
            f"granian (CPU 0): taskset -c 0 python -m granian {' '.join(GRANIAN_FLAGS)} passthrough:app",
            f"nginx+wrk (CPU 1): taskset -c 1 wrk -t1 -c{args.conns} -d{args.duration}s --latency -s post.lua URL",
            f"warm-up {args.warmup}s before every run, {args.runs} interleaved rounds (median shown), concurrency {args.conns}, "
            f"wait <= {args.quiet_wait}s for a quiet box before each run, "
            f"client pool 256, request body 283 B, response: chat.completion 687 B / SSE 50 events 9182 B",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="direct,aiohttp,httpx,pyreqwest,pyqwest,pyreqwest_buf64k")
    ap.add_argument(
        "--stream-clients", default="direct,aiohttp,pyqwest,pyreqwest", help="targets for the SSE table ('' to skip)"
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--stream-duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="max seconds to wait for other load on the box to settle before each run",
    )
    args = ap.parse_args()

    hdr = header(args)
    print(hdr, flush=True)
    nginx = start_nginx()
    all_results: dict = {"header": hdr, "args": vars(args)}
    try:
        # nginx master forks the worker; the tree root is the master pid
        print(f"\n## non-streaming: POST {CHAT_PATH} -> 687 B chat.completion", flush=True)
        res = bench_all([c for c in args.clients.split(",") if c], CHAT_PATH, args, nginx.pid)
        all_results["chat"] = res
        sres: dict = {}
        if args.stream_clients:
            print(f"\n## streaming: POST {STREAM_PATH} -> SSE, 50 events, 9182 B", flush=True)
            sargs = argparse.Namespace(**{**vars(args), "duration": args.stream_duration})
            sres = bench_all([c for c in args.stream_clients.split(",") if c], STREAM_PATH, sargs, nginx.pid)
        all_results["stream"] = sres
    finally:
        stop(nginx)

    print("\n" + hdr)
    print(f"\n### non-streaming (POST {CHAT_PATH}, 687 B JSON), median of {args.runs} x {args.duration}s\n")
    print(table(res))
    if sres:
        print(
            f"\n### streaming (POST {STREAM_PATH}, SSE 50 events / 9182 B), median of {args.runs} x {args.stream_duration}s\n"
        )
        print(table(sres))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(HERE, "results", dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    with open(out, "w") as f:
        json.dump(all_results, f, indent=1)
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
