"""The five scenarios. Each returns raw per-run dicts; bench/report.py turns them into tables.

Every scenario measures its baseline (the direct path, and where it applies the reference
pass-through) in the same run, with the same upstream and load. Where a scenario has several runs,
they are interleaved rounds (round 1: every target once, round 2: ..., each round starting one target
further on in the closed-loop scenarios) so a burst of other work on the shared box hits every target
alike rather than one target's consecutive runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.configs import ProxyConfig
from bench.harness import (
    CHAT_BODY,
    NGINX,
    STREAM_BODY,
    Backing,
    CpuWindow,
    post,
    rss_mb,
    run_json,
    sse_nginx_available,
    sse_upstream_available,
    start_mock,
    start_nginx,
    start_sse_nginx,
    start_sse_upstream,
    stop,
    wait_quiet,
    worker_pid,
    write_lua,
    wrk,
)
from bench.stats import median
from bench.targets import Target, start_target

CHAT = "/v1/chat/completions"
Run = dict[str, Any]


@dataclass
class Ctx:
    args: argparse.Namespace
    workdir: Path
    backing: Backing
    configs: dict[str, ProxyConfig]
    log: Callable[[str], None]

    def start(self, name: str, upstream: str) -> Target:
        return start_target(name, self.configs, upstream, self.backing, self.workdir)

    def lua(self, key: str, *bodies: str) -> Path:
        path = self.workdir / f"load-{abs(hash((key, bodies)))}.lua"
        return path if path.exists() else write_lua(path, key, bodies)


def _ms(us: float) -> str:
    return f"{us / 1e3:.2f}"


# ----------------------------------------------------------------------------- closed loop (wrk)
def closed_loop(
    ctx: Ctx, names: list[str], upstream: str, upstream_pid: int, body: str, duration: float, sanity_check: bytes
) -> dict[str, list[Run] | str]:
    """wrk -t1 -c<conns> against each target: sanity request, warm-up, quiet wait, one measured run."""
    a = ctx.args
    res: dict[str, list[Run] | str] = {n: [] for n in names}
    for rnd in range(a.runs):
        ctx.log(f"  round {rnd + 1}/{a.runs}")
        # Each round starts one target further on: a target measured early in every round (a cooler,
        # quieter box) would otherwise look cheaper than one measured late, round after round.
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            runs = res[name]
            if isinstance(runs, str):
                continue  # failed once: do not keep retrying a broken configuration
            t = None
            try:
                t = ctx.start(name, upstream)
                url = t.base + CHAT
                reply = post(url, body, t.key)
                if sanity_check not in reply:
                    raise RuntimeError(f"unexpected reply {reply[:200]!r}")
                lua = ctx.lua(t.key, body)
                wrk(url, lua, a.warmup, a.conns)
                waited = wait_quiet(a.quiet_wait)
                win = CpuWindow({"proxy": t.pid, "upstream": upstream_pid})
                win.start()
                r = wrk(url, lua, duration, a.conns)
                cpu = win.stop()
                n = max(1, r["requests"])
                r.update(
                    proxy_cpu_us=cpu["proxy"] / n * 1e6 if t.proc else None,
                    proxy_util=cpu["proxy"] / cpu["wall"],
                    upstream_cpu_us=cpu["upstream"] / n * 1e6,
                    loadgen_cpu_us=cpu["loadgen"] / n * 1e6,
                    other_cpu_s=cpu["other"],
                    softirq_s=cpu["softirq"],
                    loadavg=os.getloadavg()[0],
                    quiet_wait_s=waited,
                    redis_fallback=t.redis_fallbacks(),
                    proxy_errors_logged=t.errors_logged(),
                    proxy_log_bytes=t.log_bytes(),
                )
                runs.append(r)
                px = "-" if r["proxy_cpu_us"] is None else f"{r['proxy_cpu_us']:.0f}"
                ctx.log(
                    f"    {name:<14} {r['rps']:>7.0f} req/s  p50 {_ms(r['p50_us'])} ms  p99 {_ms(r['p99_us'])} ms  "
                    f"proxy {px} µs/req ({r['proxy_util'] * 100:.0f}% core)  errors {r['errors']}  "
                    f"other {r['other_cpu_s']:.1f}s  load {r['loadavg']:.1f}"
                    + f"  proxy log {r['proxy_log_bytes'] / 1e6:.1f} MB"
                    + ("  REDIS FELL BACK" if r["redis_fallback"] else "")
                )
            except Exception as exc:
                ctx.log(f"    {name}: FAILED {exc!r}")
                res[name] = repr(exc)[:300]
            finally:
                if t is not None:
                    t.close()
    return res


def chat_upstream(ctx: Ctx) -> tuple[subprocess.Popen[bytes], int, str]:
    """nginx with the canned chat.completion, or the mock if nginx is not installed (and say so)."""
    if os.path.exists(NGINX):
        proc, port = start_nginx(ctx.workdir)
        return proc, port, "nginx 1 worker, canned 687 B chat.completion"
    ctx.log(f"  {NGINX} not found: the upstream is fastproxy mock-upstream (slower, uses more of CPU 1)")
    proc, port = start_mock(ctx.workdir, chunks=10, delay_ms=0)
    return proc, port, "fastproxy mock-upstream (nginx not installed), ~600 B chat.completion"


def nonstream(ctx: Ctx, names: list[str]) -> dict[str, Any]:
    proc, port, what = chat_upstream(ctx)
    try:
        res = closed_loop(
            ctx, names, f"http://127.0.0.1:{port}", proc.pid, CHAT_BODY, ctx.args.duration, b'"chat.completion"'
        )
    finally:
        stop(proc)
    return {"upstream": what, "runs": res}


def stream(ctx: Ctx, names: list[str]) -> dict[str, Any]:
    proc, port = start_mock(ctx.workdir, chunks=50, delay_ms=0, workers=1)
    try:
        res = closed_loop(
            ctx, names, f"http://127.0.0.1:{port}", proc.pid, STREAM_BODY, ctx.args.stream_duration, b"[DONE]"
        )
    finally:
        stop(proc)
    return {"upstream": "fastproxy mock-upstream --chunks 50 (1 worker, one chunk per SSE event)", "runs": res}


# ----------------------------------------------------------------------------- slow streams
def _streams(
    ctx: Ctx, t: Target, n: int, headers: list[str], sample: Callable[[], None] | None = None, ramp_ms: float = 0
) -> Run:
    argv = ["-m", "bench.slowstreams", "--url", t.base + CHAT, "--streams", str(n), "--key", t.key]
    argv += ["--ramp-ms", str(ramp_ms)]
    for h in headers:
        argv += ["--header", h]
    return run_json(argv, timeout=ctx.args.slow_timeout + 60, sample=sample)


def _streams_wrk(ctx: Ctx, t: Target, n: int, delay_ms: float, sanity: bytes, win: CpuWindow) -> Run:
    """`n` connections of wrk, each streaming one request after another for a few stream lengths.

    wrk (C, on the load CPU) reads 25,000 SSE events a second at a small fraction of what the Python
    client needs. (With nginx's echo module as the upstream the direct path drifts past the ideal under
    load: its sleeps are relative, so a busy worker's lateness adds up over the chunks.)
    Its latency is each stream's time from send to last byte. The first stream of each connection
    starts after a random pause of up to --slow-spread-ms (default: one stream's ideal length), so the
    N streams run out of step as independent clients' do; each later one after a pause of up to one
    chunk delay. With --slow-spread-ms 0 the N start within one chunk delay, and every wave of
    restarts is a burst of N requests whose set-up the last of them waits for.
    Events = bytes read x (events / bytes) of the sanity stream: streams still open at the end count
    with what they had read, as the CPU they used is counted too.
    """
    ideal_s = ctx.args.slow_chunks * delay_ms / 1000
    seconds = max(10.0, 4 * ideal_s)
    spread_ms = ideal_s * 1000 if ctx.args.slow_spread_ms is None else ctx.args.slow_spread_ms
    lua = ctx.workdir / f"slow-{n}-{delay_ms:g}.lua"
    write_lua(
        lua,
        t.key,
        [STREAM_BODY],
        {"x-mock-delay-ms": f"{delay_ms:g}"},
        delay_ms=max(1.0, delay_ms),
        first=(n, max(1.0, delay_ms, spread_ms)),
    )
    win.start()
    r = wrk(t.base + CHAT, lua, seconds, n, timeout_s=ctx.args.slow_timeout)
    events_per_byte = sanity.count(b"\n\n") / len(sanity)
    r.update(
        streams=n,
        completed=r["requests"] - r["err_status"],
        p50_s=r["p50_us"] / 1e6,
        p99_s=r["p99_us"] / 1e6,
        events_per_stream=sanity.count(b"\n\n"),
        bytes_per_stream=r["bytes"] / max(1, r["requests"]),
        events_total=round(r["bytes"] * events_per_byte),
        seconds=seconds,
    )
    return r


def slow(ctx: Ctx, plan: list[tuple[str, int, float]]) -> dict[str, Any]:
    """Concurrent slow streams: `plan` lists (target, concurrent streams, ms between chunks)."""
    a = ctx.args
    load = (
        "Load: wrk -t1 with one connection per concurrent stream, each streaming back to back (when each starts: "
        "see the heading) for max(10 s, 4 x the ideal); completed = 2xx streams in that time"
    )
    use_wrk = sse_upstream_available() or sse_nginx_available()
    if sse_upstream_available():
        proc, port = start_sse_upstream(ctx.workdir, a.slow_chunks, a.slow_delay_ms)
        what = (
            f"bench/sse_upstream.c (C, epoll, 1 thread), {a.slow_chunks} chunk events, chunk k due at start + k x "
            "the delay (its own write), then the finish, usage and [DONE] events with the last chunk: its floor "
            f"is the ideal itself, and lateness does not add up over a stream. {load}"
        )
    elif sse_nginx_available():
        ctx.log("  no C compiler: the upstream is nginx's echo module (its lateness adds up over a stream)")
        # The delay of each run comes from its x-mock-delay-ms header: nginx maps the values it will see.
        delays = [a.slow_delay_ms, 0.0, 1.0, *(d for _, _, d in plan)]
        proc, port = start_sse_nginx(ctx.workdir, a.slow_chunks, delays)
        what = (
            f"nginx 1 worker (echo module), {a.slow_chunks} chunk events each written after a sleep, then the "
            f"finish, usage and [DONE] events at once: its floor is the ideal itself. {load}"
        )
    else:
        ctx.log("  no C compiler, no nginx echo module: the upstream is fastproxy mock-upstream (more of CPU 1)")
        proc, port = start_mock(ctx.workdir, chunks=a.slow_chunks, delay_ms=a.slow_delay_ms, workers=a.mock_workers)
        what = (
            f"fastproxy mock-upstream --chunks {a.slow_chunks} --delay-ms {a.slow_delay_ms} --workers "
            f"{a.mock_workers}; it sleeps before every SSE event (finish, usage and [DONE] included), so its "
            f"floor is {a.slow_chunks + 3} x the delay"
        )
    upstream = f"http://127.0.0.1:{port}"
    res: dict[str, list[Run] | str] = {}
    try:
        for rnd in range(a.slow_runs):
            ctx.log(f"  round {rnd + 1}/{a.slow_runs}")
            for name, n, delay_ms in plan:
                label = f"{name} x{n}" + ("" if delay_ms == a.slow_delay_ms else f" @{delay_ms:g}ms")
                # The mock's delay is per request (x-mock-delay-ms); the ramp scales with it.
                ramp_ms = a.slow_ramp_ms * delay_ms / a.slow_delay_ms if a.slow_delay_ms else 0.0
                runs = res.setdefault(label, [])
                if isinstance(runs, str):
                    continue
                t = None
                try:
                    t = ctx.start(name, upstream)
                    sanity = post(t.base + CHAT, STREAM_BODY, t.key, {"x-mock-delay-ms": "0"})
                    if b"[DONE]" not in sanity:
                        raise RuntimeError("sanity stream did not end with [DONE]")
                    # Warm-up: fast streams through the same path (imports, caches, pool connections).
                    _streams(ctx, t, min(n, a.slow_warmup_streams), ["x-mock-delay-ms:1"])
                    waited = wait_quiet(a.quiet_wait)
                    win = CpuWindow({"proxy": t.pid, "upstream": proc.pid})
                    if use_wrk:
                        r = _streams_wrk(ctx, t, n, delay_ms, sanity, win)
                    else:
                        win.start()
                        r = _streams(ctx, t, n, [f"x-mock-delay-ms:{delay_ms:g}"], ramp_ms=ramp_ms)
                    cpu = win.stop()
                    events = max(1, r["events_total"])
                    r.update(
                        target=name,
                        ideal_s=a.slow_chunks * delay_ms / 1000,
                        delay_ms=delay_ms,
                        proxy_cpu_s=cpu["proxy"],
                        proxy_cpu_us_per_chunk=cpu["proxy"] / events * 1e6 if t.proc else None,
                        upstream_cpu_s=cpu["upstream"],
                        loadgen_cpu_s=cpu["loadgen"],
                        other_cpu_s=cpu["other"],
                        loadavg=os.getloadavg()[0],
                        quiet_wait_s=waited,
                        proxy_rss_mb=rss_mb(worker_pid(t.pid)) if t.pid else None,
                        redis_fallback=t.redis_fallbacks(),
                    )
                    runs.append(r)
                    ctx.log(
                        f"    {label:<14} completed {r['completed']}/{n}  errors {r['errors']}  "
                        f"p50 {r['p50_s']:.3f}s  p99 {r['p99_s']:.3f}s  events/stream {r['events_per_stream']:.0f}  "
                        f"proxy {r['proxy_cpu_s']:.2f}s CPU  other {r['other_cpu_s']:.1f}s"
                    )
                except Exception as exc:
                    ctx.log(f"    {label}: FAILED {exc!r}")
                    res[label] = repr(exc)[:300]
                finally:
                    if t is not None:
                        t.close()
    finally:
        stop(proc)
    spread = a.slow_chunks * a.slow_delay_ms if a.slow_spread_ms is None else a.slow_spread_ms
    return {
        "upstream": what,
        "ideal_s": a.slow_chunks * a.slow_delay_ms / 1000,
        "starts": (
            f"first starts spread over {max(spread, a.slow_delay_ms):g} ms, restarts after up to {a.slow_delay_ms:g} ms"
            if use_wrk
            else f"starts spread over {a.slow_ramp_ms:g} ms"
        ),
        "runs": res,
    }


# ----------------------------------------------------------------------------- open-loop latency
def latency(ctx: Ctx, names: list[str], rate: float) -> dict[str, Any]:
    a = ctx.args
    proc, port, what = chat_upstream(ctx)
    upstream = f"http://127.0.0.1:{port}"
    res: dict[str, list[Run] | str] = {n: [] for n in names}

    def openloop(t: Target, seconds: float) -> Run:
        argv = ["-m", "bench.openloop", "--url", t.base + CHAT, "--rate", f"{rate:.0f}"]
        argv += ["--duration", str(seconds), "--key", t.key]
        return run_json(argv, timeout=seconds + 90)

    try:
        for rnd in range(a.latency_runs):
            ctx.log(f"  round {rnd + 1}/{a.latency_runs}")
            for name in names:
                runs = res[name]
                if isinstance(runs, str):
                    continue
                t = None
                try:
                    t = ctx.start(name, upstream)
                    post(t.base + CHAT, CHAT_BODY, t.key)
                    openloop(t, a.warmup)
                    waited = wait_quiet(a.quiet_wait)
                    win = CpuWindow({"proxy": t.pid, "upstream": proc.pid})
                    win.start()
                    r = openloop(t, a.latency_duration)
                    cpu = win.stop()
                    r.update(
                        proxy_util=cpu["proxy"] / cpu["wall"],
                        loadgen_util=cpu["loadgen"] / cpu["wall"],
                        other_cpu_s=cpu["other"],
                        loadavg=os.getloadavg()[0],
                        quiet_wait_s=waited,
                    )
                    runs.append(r)
                    ctx.log(
                        f"    {name:<14} {r['completed']}/{r['scheduled']} ok  errors {r['errors']}  "
                        f"p50 {_ms(r['p50_us'])} ms  p99 {_ms(r['p99_us'])} ms  "
                        f"client lag p99 {_ms(r['lag_p99_us'])} ms"
                        f"  proxy {r['proxy_util'] * 100:.0f}% core  other {r['other_cpu_s']:.1f}s"
                    )
                except Exception as exc:
                    ctx.log(f"    {name}: FAILED {exc!r}")
                    res[name] = repr(exc)[:300]
                finally:
                    if t is not None:
                        t.close()
    finally:
        stop(proc)
    return {"upstream": what, "rate": rate, "runs": res}


def saturation_rate(ctx: Ctx, name: str) -> float:
    """Closed-loop req/s of `name` (one short wrk run), for when nonstream did not run first."""
    runs = nonstream(ctx, [name])["runs"][name]
    if isinstance(runs, str) or not runs:
        raise RuntimeError(f"cannot measure the saturation rate of {name}: {runs}")
    return median([r["rps"] for r in runs])


# ----------------------------------------------------------------------------- memory
def memory(ctx: Ctx, names: list[str]) -> dict[str, Any]:
    """Worker RSS at rest, during and after N concurrent slow streams, and over a soak of mixed
    stream / non-stream load (wrk -c<conns>, alternating bodies)."""
    a = ctx.args
    # Fast by default (the soak), slow streams on request through x-mock-* headers.
    proc, port = start_mock(ctx.workdir, chunks=20, delay_ms=0, workers=a.mock_workers)
    upstream = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    try:
        for name in names:
            t = None
            try:
                t = ctx.start(name, upstream)
                assert t.pid is not None
                time.sleep(2)  # let startup settle (imports, pool, first GC)
                wpid = worker_pid(t.pid)
                m: dict[str, Any] = {"rest_mb": rss_mb(wpid)}
                post(t.base + CHAT, CHAT_BODY, t.key)
                peak = [0.0]

                def sample_peak(peak: list[float] = peak, wpid: int = wpid) -> None:
                    peak[0] = max(peak[0], rss_mb(wpid))

                headers = [f"x-mock-chunks:{a.slow_chunks}", f"x-mock-delay-ms:{a.slow_delay_ms}"]
                r = _streams(ctx, t, a.memory_streams, headers, sample=sample_peak, ramp_ms=a.slow_ramp_ms)
                time.sleep(2)
                m.update(
                    streams=a.memory_streams,
                    streams_completed=r["completed"],
                    streams_errors=r["errors"],
                    streams_peak_mb=peak[0],
                    after_streams_mb=rss_mb(wpid),
                )
                samples: list[tuple[float, float]] = []
                t0 = time.monotonic()

                def sample_soak(samples: list[tuple[float, float]] = samples, wpid: int = wpid, t0: float = t0) -> None:
                    samples.append((time.monotonic() - t0, rss_mb(wpid)))

                lua = ctx.lua(t.key, CHAT_BODY, STREAM_BODY)
                w = wrk(t.base + CHAT, lua, a.soak_seconds, a.conns, sample=sample_soak, every=a.soak_sample_s)
                time.sleep(2)
                # Growth is counted from 10 % into the soak (at least 5 s): the first seconds fill
                # caches and pools, which is warm-up, not a leak.
                mark = max(5.0, a.soak_seconds * 0.1)
                warm = next((mb for ts, mb in samples if ts >= mark), samples[0][1] if samples else float("nan"))
                end = samples[-1][1] if samples else float("nan")
                m.update(
                    soak_s=a.soak_seconds,
                    soak_requests=w["requests"],
                    soak_errors=w["errors"],
                    soak_rps=w["rps"],
                    soak_warm_mb=warm,
                    soak_end_mb=end,
                    soak_max_mb=max((mb for _, mb in samples), default=float("nan")),
                    soak_growth_pct=(end / warm - 1) * 100 if warm == warm and warm > 0 else float("nan"),
                    after_soak_idle_mb=rss_mb(wpid),
                    samples=samples,
                    loadavg=os.getloadavg()[0],
                )
                out[name] = m
                ctx.log(
                    f"    {name:<14} rest {m['rest_mb']:.1f} MB, {a.memory_streams} streams: peak "
                    f"{m['streams_peak_mb']:.1f} after {m['after_streams_mb']:.1f} MB ({r['completed']} ok, "
                    f"{r['errors']} errors); soak {a.soak_seconds:.0f}s {w['requests']} req: {warm:.1f} -> "
                    f"{end:.1f} MB ({m['soak_growth_pct']:+.1f} %)"
                )
            except Exception as exc:
                ctx.log(f"    {name}: FAILED {exc!r}")
                out[name] = repr(exc)[:300]
            finally:
                if t is not None:
                    t.close()
    finally:
        stop(proc)
    return {"upstream": "fastproxy mock-upstream --chunks 20 (soak); x-mock-* headers for the slow streams",
            "configs": out}  # fmt: skip
