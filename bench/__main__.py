"""fastproxy's benchmark suite: one command, every figure beside its baseline from the same run.

    python -m bench                       # every scenario, full durations (see --help for the time)
    python -m bench --quick               # smoke run: 1 x 2 s per configuration, low concurrency
    python -m bench --scenarios nonstream,latency --runs 3 --duration 10

Topology on a 2-core box: the proxy (one Granian worker: fastproxy, or the reference pass-through)
runs on CPU 0 (`taskset -c 0`); the load generator (wrk, or the Python clients) and the upstream
(nginx or `fastproxy mock-upstream`) share CPU 1, as does this harness (it mostly sleeps).
Scenarios:
  nonstream  wrk -t1 -c64, 283 B chat POST -> nginx canned chat.completion; req/s, p50/p99 and proxy
             CPU µs per request for direct, reference, bare, bare + each feature alone, full
  stream     the same with "stream": true -> mock-upstream, 50 chunks (one per SSE event); CPU µs/stream
  slow       N concurrent streams of 100 chunks at 20 ms (Python client, bench/slowstreams.py):
             completed, errors, p50/p99 duration against the ideal, proxy CPU µs per SSE event;
             then 2,000 concurrent streams on one worker
  latency    open loop at half of full's saturation rate (bench/openloop.py): p50/p99 added over direct
  memory     worker RSS at rest, during/after 1,000 concurrent streams, over a soak
Raw results: bench/out/<timestamp>.json. The markdown goes to stdout and to --results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.configs import BASELINES, KEY_LIMITS, named_configs, proxy_configs
from bench.harness import (
    HERE,
    LOAD_CPU,
    NGINX,
    PROXY_CPU,
    REPO,
    WRK,
    backing,
    backing_services_on,
    raise_nofile,
    scratch_dir,
)
from bench.stats import median
from bench.targets import GRANIAN_FLAGS

ALL = ("nonstream", "stream", "slow", "latency", "memory")
FULL: dict[str, Any] = dict(
    runs=3,
    duration=10.0,
    stream_duration=10.0,
    warmup=3.0,
    conns=64,
    quiet_wait=5.0,
    slow_runs=2,
    slow_streams=500,
    many_streams=2000,
    slow_warmup_streams=100,
    slow_timeout=60.0,
    latency_runs=3,
    latency_duration=10.0,
    memory_streams=1000,
    soak_seconds=600.0,
    soak_sample_s=5.0,
)
# Smoke run for a busy box: short, low concurrency. Its numbers prove the plumbing, nothing more.
QUICK: dict[str, Any] = dict(
    runs=1,
    duration=2.0,
    stream_duration=2.0,
    warmup=1.0,
    conns=16,
    quiet_wait=0.0,
    slow_runs=1,
    slow_streams=100,
    many_streams=200,
    slow_warmup_streams=20,
    slow_timeout=30.0,
    latency_runs=1,
    latency_duration=2.0,
    memory_streams=100,
    soak_seconds=6.0,
    soak_sample_s=1.0,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = list(proxy_configs())
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smoke run (defaults in QUICK); explicit flags still win")
    ap.add_argument("--scenarios", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--configs", default=",".join([*BASELINES, *names]), help="nonstream targets")
    ap.add_argument("--stream-configs", default="direct,reference,bare,full")
    ap.add_argument("--slow-configs", default="direct,bare,full")
    ap.add_argument("--many-configs", default="direct,bare", help="targets of the --many-streams run")
    ap.add_argument("--latency-configs", default="direct,bare,full")
    ap.add_argument("--memory-configs", default="full")
    ap.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="req/s of the open-loop run; 0 = half of full's saturation req/s (nonstream)",
    )
    for k, v in FULL.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"default {v}, --quick {QUICK[k]}")
    ap.add_argument("--slow-chunks", type=int, default=100)
    ap.add_argument("--slow-delay-ms", type=float, default=20.0)
    ap.add_argument(
        "--slow-ramp-ms",
        type=float,
        default=None,
        help="the Python stream client (memory, and slow without a C compiler or nginx's echo module): spread "
        "the stream starts over this long (default: one chunk delay; 0 = all at once)",
    )
    ap.add_argument(
        "--slow-spread-ms",
        type=float,
        default=None,
        help="wrk slow streams: the first stream of each connection starts after a random pause of up to this "
        "long (default: one stream's ideal length, so streams run out of step; 0: all within one chunk delay)",
    )
    ap.add_argument(
        "--many-delay-ms",
        type=float,
        default=None,
        help="ms between chunks in the --many-streams run (default: --slow-delay-ms). At 20 ms, 2,000 streams "
        "are 100k SSE events/s: more than one core of proxy work, so they stretch; 100 ms is 20k/s",
    )
    ap.add_argument("--mock-workers", type=int, default=1, help="mock-upstream workers for slow/memory (CPU 1)")
    ap.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown output ('' for none)")
    ap.add_argument("--append", action="store_true", help="append to --results instead of replacing it")
    ap.add_argument("--note", default="", help="a line printed above the figures (e.g. why this run)")
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.many_delay_ms is None:
        args.many_delay_ms = args.slow_delay_ms
    if args.slow_ramp_ms is None:
        args.slow_ramp_ms = args.slow_delay_ms
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.scenarios) - set(ALL)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; choose from {','.join(ALL)}")
    valid = {*BASELINES, *names}
    extra: list[str] = []
    for opt in ("configs", "stream_configs", "slow_configs", "many_configs", "latency_configs", "memory_configs"):
        vals = [c for c in getattr(args, opt).split(",") if c]
        # NAME@VAR=value: a known configuration with settings of its own (bench.configs.named_configs).
        # The reference may carry settings too (its environment); direct has none.
        bad = {v for v in vals if v not in valid and v.split("@", 1)[0] not in valid - {"direct"}}
        if bad:
            ap.error(
                f"--{opt.replace('_', '-')}: unknown {sorted(bad)}; choose from {','.join(sorted(valid))} "
                "(a fastproxy configuration or the reference may add @VAR=value)"
            )
        extra += [v for v in vals if v not in valid and v.split("@", 1)[0] != "reference"]
        setattr(args, opt, vals)
    args.extra_configs = extra
    return args


def estimate_s(a: argparse.Namespace) -> float:
    """Rough wall time: per target run ~3 s of start/stop plus warm-up, quiet wait and measurement."""
    per = 3 + a.warmup + a.quiet_wait
    t = 0.0
    if "nonstream" in a.scenarios:
        t += a.runs * len(a.configs) * (per + a.duration)
    if "stream" in a.scenarios:
        t += a.runs * len(a.stream_configs) * (per + a.stream_duration)
    ideal = a.slow_chunks * a.slow_delay_ms / 1000
    if "slow" in a.scenarios:
        t += a.slow_runs * len(a.slow_configs) * (per + ideal * 1.3)
        if a.many_streams:
            t += a.slow_runs * len(a.many_configs) * (per + ideal * 3 * a.many_delay_ms / a.slow_delay_ms)
    if "latency" in a.scenarios:
        t += a.latency_runs * len(a.latency_configs) * (per + a.latency_duration)
    if "memory" in a.scenarios:
        t += len(a.memory_configs) * (10 + ideal * 1.5 + a.soak_seconds)
    return t


def _v(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "n/a"


def _cmd(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else "n/a"


def header(a: argparse.Namespace, load_before: tuple[float, float, float], pinning: str) -> list[str]:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    sha = _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = (
        " (+ uncommitted changes)"
        if _cmd(["git", "-C", str(REPO), "status", "--porcelain", "--", "fastproxy"]) != "n/a"
        else ""
    )
    redis_v = _cmd(["redis-cli", "-u", a.redis_url, "INFO", "server"]).strip()
    for ln in subprocess.run(["redis-cli", "-u", a.redis_url, "INFO", "server"], capture_output=True, text=True,
                             check=False).stdout.splitlines():  # fmt: skip
        if ln.startswith("redis_version:"):
            redis_v = "Redis " + ln.split(":", 1)[1].strip()
    return [
        f"- command: `python -m bench {shlex.join(sys.argv[1:])}`",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: nproc={os.cpu_count()}, CPU {model}, Linux {platform.release()}; "
        f"load average before {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} (1/5/15 min)",
        f"- versions: Python {platform.python_version()}, granian {_v('granian')}, uvloop {_v('uvloop')}, "
        f"aiohttp {_v('aiohttp')}, msgspec {_v('msgspec')}, redis-py {_v('redis')}, asyncpg {_v('asyncpg')}; "
        f"fastproxy {_v('fastproxy')} at git {sha}{dirty}; {_cmd([NGINX, '-v'])}; {_cmd([WRK, '-v'])}; {redis_v}; "
        f"{_cmd(['psql', '--version'])}",
        f"- topology: proxy on CPU {PROXY_CPU} (`taskset -c {PROXY_CPU} fastproxy serve`, FASTPROXY_WORKERS=1, "
        f"which starts Granian as `granian {' '.join(GRANIAN_FLAGS)}`; the reference runs under exactly these "
        f"flags); load generator, upstream and harness on CPU {LOAD_CPU}; "
        f'{pinning} (their CPU counts as "other")',
        f"- flags: runs {a.runs} (interleaved rounds, the order rotated by one each round, median shown) x {a.duration:g} s nonstream / "
        f"{a.stream_duration:g} s stream; warm-up {a.warmup:g} s of the same load before every measured run; "
        f"concurrency {a.conns} connections (wrk -t1 -c{a.conns}); up to {a.quiet_wait:g} s wait for a quiet box "
        f"before each run; slow streams {a.slow_streams} and {a.many_streams} x {a.slow_chunks} chunks at "
        f"{a.slow_delay_ms:g} ms ({a.slow_runs} runs, warm-up {a.slow_warmup_streams} fast streams); latency "
        f"{a.latency_runs} x {a.latency_duration:g} s open loop; memory {a.memory_streams} streams + "
        f"soak {a.soak_seconds:g} s (wrk -c{a.conns}, chat and stream alternating)",
        '- "other CPU": busy CPU time of the whole box during the measured window not used by the proxy, '
        "the upstream or the load generator: other users' work, PostgreSQL, Redis, and loopback softirq work "
        "charged to no process.",
    ]


def _terminate(signum: int, frame: object) -> None:
    # Every process we start has its own session (so stopping it reaches its workers), so a SIGTERM
    # to the harness would reach none of them: unwind through the finally blocks that stop them.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("the suite needs 2 CPUs: the proxy on CPU 0, load and upstream on CPU 1")
    # The harness polls /proc and samples RSS: keep that off the proxy's core. Children inherit it,
    # and taskset re-pins the proxy.
    os.sched_setaffinity(0, {LOAD_CPU})
    nofile = raise_nofile()
    load_before = os.getloadavg()
    est = estimate_s(a)
    pinned_services = contextlib.ExitStack()
    pinning = pinned_services.enter_context(backing_services_on(LOAD_CPU))
    try:
        hdr = header(a, load_before, pinning)
    except BaseException:
        pinned_services.close()  # put Redis and PostgreSQL back: the run never started
        raise
    print("\n".join(hdr), flush=True)
    print(f"scenarios: {','.join(a.scenarios)}; estimated {est / 60:.1f} min; RLIMIT_NOFILE {nofile}", flush=True)
    out: dict[str, Any] = {"args": vars(a), "header": hdr}
    md_out: list[str] = []
    if a.quick:
        md_out.append(
            "> **Smoke run (`--quick`)**: 1 x 2 s per configuration at low concurrency, to prove the "
            "plumbing; not a measurement."
        )
    if a.note:
        md_out.append(f"> {a.note}")
    t_start = time.monotonic()

    def log(line: str) -> None:
        print(line, flush=True)

    configs = named_configs(",".join(a.extra_configs))[0] if a.extra_configs else proxy_configs()
    with pinned_services, scratch_dir() as tmp, backing(a.redis_url, KEY_LIMITS) as bk:
        ctx = scenarios.Ctx(a, Path(tmp), bk, configs, log)
        if "nonstream" in a.scenarios:
            log("\n## nonstream")
            r = scenarios.nonstream(ctx, a.configs)
            out["nonstream"] = r
            md_out += [
                f"\n### Non-streaming chat, wrk -t1 -c{a.conns}, {a.runs} x {a.duration:g} s (median)\n",
                f"Upstream: {r['upstream']}. Proxy CPU = utime+stime of the proxy's process tree / "
                "completed requests.\n",
                *report.closed_table(r["runs"], "req"),
                "",
                *report.ratios(r["runs"], "request", True),
            ]
        if "stream" in a.scenarios:
            log("\n## stream")
            r = scenarios.stream(ctx, a.stream_configs)
            out["stream"] = r
            md_out += [
                f"\n### Streaming chat, 50 chunks, wrk -t1 -c{a.conns}, {a.runs} x {a.stream_duration:g} s\n",
                f"Upstream: {r['upstream']}. The body asks for include_usage itself, so every target "
                "moves the same bytes (53 SSE events).\n",
                *report.closed_table(r["runs"], "stream"),
                "",
                *report.ratios(r["runs"], "stream", False),
            ]
        if "slow" in a.scenarios:
            log("\n## slow")
            plan = [(n, a.slow_streams, a.slow_delay_ms) for n in a.slow_configs]
            plan += [(n, a.many_streams, a.many_delay_ms) for n in a.many_configs] if a.many_streams else []
            r = scenarios.slow(ctx, plan)
            out["slow"] = r
            md_out += [
                f"\n### Slow streams: {a.slow_chunks} chunks at {a.slow_delay_ms:g} ms "
                f"(ideal {r['ideal_s']:.1f} s), {r['starts']}, {a.slow_runs} run(s)\n",
                f"Upstream: {r['upstream']}. Target: p99 within 5 % of the ideal, no errors. When the direct "
                'row is already well over the ideal, CPU 1 (upstream + load client) is the limit, and "p99 '
                "over direct\" is the proxy's share. fastproxy's upstream pool (FASTPROXY_POOL_SIZE, default "
                "1024 per worker) bounds its concurrent upstream streams: beyond it, streams wait for a "
                "connection.\n",
                *report.slow_table(r["runs"]),
            ]
        if "latency" in a.scenarios:
            log("\n## latency")
            rate = a.latency_rate
            if not rate:
                ns = out.get("nonstream", {}).get("runs", {}).get("full")
                sat = median([x["rps"] for x in ns]) if isinstance(ns, list) and ns else 0.0
                if not sat:
                    log("  measuring full's saturation rate first (nonstream did not measure it)")
                    try:
                        sat = scenarios.saturation_rate(ctx, "full")
                    except RuntimeError as exc:
                        log(f"  {exc}; pass --latency-rate")
                rate = sat / 2
            r = scenarios.latency(ctx, a.latency_configs, rate) if rate else {"rate": 0, "runs": {}}
            out["latency"] = r
            md_out += [
                f"\n### Added latency, open loop at {rate:.0f} req/s "
                f"({'--latency-rate' if a.latency_rate else 'half of full' + chr(39) + 's saturation'}), "
                f"{a.latency_runs} x {a.latency_duration:g} s\n",
                f"Upstream: {r.get('upstream', '-')}. Load: bench/openloop.py on CPU 1. Latency from each "
                'request\'s scheduled send time (no coordinated omission); "from send" is from the moment '
                "the client really sent it (a thread sleeps to each send time; the lag is what the kernel's wake-up "
                "and CPU 1 add). Targets: p50 added < 1 ms, p99 added < 5 ms. If the client's send lag p99 "
                "nears the latencies, CPU 1 (the client, the upstream, Redis, PostgreSQL) is the limit, not the "
                "proxy.\n",
                *report.latency_table(r["runs"]),
            ]
        if "memory" in a.scenarios:
            log("\n## memory")
            r = scenarios.memory(ctx, a.memory_configs)
            out["memory"] = r
            md_out += [
                f"\n### Memory: worker RSS, {a.memory_streams} concurrent slow streams, soak {a.soak_seconds:g} s\n",
                f"Upstream: {r['upstream']}. Growth = soak end / RSS 10 % into the soak (min 5 s). "
                "Targets: < 150 MB after 1,000 streams; growth ≤ 5 %.\n",
                *report.memory_table(r["configs"], a.memory_streams),
            ]
    load_after = os.getloadavg()
    md_out.append(
        f"\nLoad average after: {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}; "
        f"wall time {(time.monotonic() - t_start) / 60:.1f} min."
    )
    text = "\n".join(["## Run", "", *hdr, "", *md_out, ""])
    print("\n" + text)
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    raw = out_dir / (dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + ".json")
    raw.write_text(json.dumps(out, indent=1, default=str))
    print(f"raw results: {raw}")
    if a.results:
        dest = Path(a.results)
        if a.append and dest.exists():
            dest.write_text(dest.read_text() + "\n" + text)
        else:
            dest.write_text(
                "# fastproxy benchmark results\n\nWritten by `python -m bench` (bench/__main__.py); "
                "see its --help for what each scenario measures.\n\n" + text
            )
        print(f"markdown: {dest}")


if __name__ == "__main__":
    main()
