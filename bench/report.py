"""Markdown tables (medians over runs) and the ratios the issue's targets are stated in."""

from __future__ import annotations

import math
from typing import Any

from bench.stats import median

Runs = list[dict[str, Any]] | str


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in runs if r.get(key) is not None])


def _f(v: float, fmt: str = ".0f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def closed_table(res: dict[str, Runs], unit: str) -> list[str]:
    lines = [
        f"| target | {unit}/s | p50 ms | p99 ms | proxy CPU µs/{unit} | proxy core | upstream CPU µs/{unit} "
        f"| errors | other CPU s | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in res.items():
        if isinstance(runs, str):
            lines.append(f"| {name} | failed: {runs} |||||||||")
            continue
        if not runs:
            continue
        fallback = " (Redis fell back!)" if any(r.get("redis_fallback") for r in runs) else ""
        cpu = _med(runs, "proxy_cpu_us")
        util = "-" if math.isnan(cpu) else f"{_med(runs, 'proxy_util') * 100:.0f}%"
        lines.append(
            f"| {name}{fallback} | {_f(_med(runs, 'rps'))} | {_f(_med(runs, 'p50_us') / 1e3, '.2f')} "
            f"| {_f(_med(runs, 'p99_us') / 1e3, '.2f')} | {_f(cpu)} "
            f"| {util} "
            f"| {_f(_med(runs, 'upstream_cpu_us'))} | {sum(r['errors'] for r in runs)} "
            f"| {_f(_med(runs, 'other_cpu_s'), '.1f')} | {_f(_med(runs, 'loadavg'), '.1f')} |"
        )
    low = [
        n
        for n, runs in res.items()
        if isinstance(runs, list) and runs and n != "direct" and _med(runs, "proxy_util") < 0.85
    ]
    if low:
        lines += [
            "",
            f"Proxy below 85 % of its core under saturating load ({', '.join(low)}): CPU 0 was shared with "
            "other work, or CPU 1 (load + upstream) was the limit. CPU per request is still the proxy's own; "
            "req/s and latency are not.",
        ]
    return lines


def cpu_of(res: dict[str, Runs], name: str) -> float:
    runs = res.get(name)
    return _med(runs, "proxy_cpu_us") if isinstance(runs, list) and runs else math.nan


def ratios(res: dict[str, Runs], unit: str, targets: bool) -> list[str]:
    bare, full, ref = cpu_of(res, "bare"), cpu_of(res, "full"), cpu_of(res, "reference")
    out = []
    if not math.isnan(bare) and not math.isnan(full):
        r = full / bare
        out.append(
            f"- full / bare CPU per {unit}: **{r:.2f}x**"
            + (f" (target ≤ 1.6x: {_verdict(r <= 1.6)})" if targets else "")
        )
    if not math.isnan(bare) and not math.isnan(ref):
        r = bare / ref
        out.append(
            f"- bare / reference CPU per {unit}: **{r:.2f}x**"
            + (f" (target ≤ 1.15x: {_verdict(r <= 1.15)})" if targets else "")
        )
    feats = [n for n in res if n.startswith("+")]
    if feats and not math.isnan(bare):
        out += ["", f"Cost of each feature on its own (CPU µs per {unit}, same run). \"Paired\": the median, "
                "min and max over rounds of (configuration / bare in the same round); rounds interleave, so a "
                "burst of other work on the box moves both sides of a pair.", "",
                "| configuration | µs | added over bare | paired: median (min - max) |", "|---|---:|---:|---:|"]  # fmt: skip
        for n in [*feats, "full"]:
            us = cpu_of(res, n)
            if not math.isnan(us):
                out.append(
                    f"| {n} | {us:.0f} | {us - bare:+.0f} µs ({(us / bare - 1) * 100:+.0f} %) | {paired(res, n)} |"
                )
    return out


def paired(res: dict[str, Runs], name: str) -> str:
    """Per round, name's CPU per request over bare's; their median and range, as percentages."""
    runs, base = res.get(name), res.get("bare")
    if not isinstance(runs, list) or not isinstance(base, list) or len(runs) != len(base) or not runs:
        return "-"
    ratios = sorted(r["proxy_cpu_us"] / b["proxy_cpu_us"] - 1 for r, b in zip(runs, base, strict=True))
    return f"{median(ratios) * 100:+.1f} % ({ratios[0] * 100:+.1f} - {ratios[-1] * 100:+.1f}), {len(ratios)} rounds"


def slow_table(res: dict[str, Runs]) -> list[str]:
    lines = [
        "| target x streams | completed | errors | p50 s | p99 s | p99 over ideal | p99 over direct "
        "| SSE events/stream | proxy CPU µs/event | proxy RSS MB | other CPU s | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, runs in res.items():
        if isinstance(runs, str):
            lines.append(f"| {label} | failed: {runs} |||||||||||")
            continue
        if not runs:
            continue
        what = label.split(" ", 1)[1]  # "x500" or "x2000 @100ms"
        n = what.split(" ")[0][1:]
        ideal = _med(runs, "ideal_s")
        direct = res.get(f"direct {what}")
        dp99 = _med(direct, "p99_s") if isinstance(direct, list) and direct else math.nan
        p99 = _med(runs, "p99_s")
        over_direct = "-" if label.startswith("direct") or math.isnan(dp99) else f"{(p99 / dp99 - 1) * 100:+.1f} %"
        # wrk runs stream back to back for a while: completed is the streams finished in that time.
        done = f"{_f(_med(runs, 'completed'))}/{n}" if "seconds" not in runs[0] else f"{_f(_med(runs, 'completed'))}"
        lines.append(
            f"| {label} | {done} | {sum(r['errors'] for r in runs)} "
            f"| {_f(_med(runs, 'p50_s'), '.3f')} | {_f(p99, '.3f')} | {(p99 / ideal - 1) * 100:+.1f} % | {over_direct} "
            f"| {_f(_med(runs, 'events_per_stream'))} | {_f(_med(runs, 'proxy_cpu_us_per_chunk'), '.1f')} "
            f"| {_f(_med(runs, 'proxy_rss_mb'), '.0f')} | {_f(_med(runs, 'other_cpu_s'), '.1f')} "
            f"| {_f(_med(runs, 'loadavg'), '.1f')} |"
        )
    return lines


def latency_table(res: dict[str, Runs]) -> list[str]:
    lines = [
        "| target | completed/scheduled | errors | p50 ms | p99 ms | p50 added | p99 added | from send: p50 / p99 ms "
        "| client send lag p99 ms | proxy core | other CPU s | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    direct = res.get("direct")
    d50 = _med(direct, "p50_us") if isinstance(direct, list) and direct else math.nan
    d99 = _med(direct, "p99_us") if isinstance(direct, list) and direct else math.nan
    for name, runs in res.items():
        if isinstance(runs, str):
            lines.append(f"| {name} | failed: {runs} |||||||||||")
            continue
        if not runs:
            continue
        p50, p99 = _med(runs, "p50_us"), _med(runs, "p99_us")
        util = "-" if name == "direct" else f"{_med(runs, 'proxy_util') * 100:.0f}%"
        add50 = add99 = "-"
        if name != "direct" and not math.isnan(d50):
            add50 = f"{(p50 - d50) / 1e3:+.2f} ms ({_verdict(p50 - d50 < 1000)})"
            add99 = f"{(p99 - d99) / 1e3:+.2f} ms ({_verdict(p99 - d99 < 5000)})"
        lines.append(
            f"| {name} | {sum(r['completed'] for r in runs)}/{sum(r['scheduled'] for r in runs)} "
            f"| {sum(r['errors'] for r in runs)} | {p50 / 1e3:.2f} | {p99 / 1e3:.2f} | {add50} | {add99} "
            f"| {_med(runs, 'svc_p50_us') / 1e3:.2f} / {_med(runs, 'svc_p99_us') / 1e3:.2f} "
            f"| {_med(runs, 'lag_p99_us') / 1e3:.2f} | {util} "
            f"| {_f(_med(runs, 'other_cpu_s'), '.1f')} | {_f(_med(runs, 'loadavg'), '.1f')} |"
        )
    return lines


def memory_table(res: dict[str, Any], streams: int) -> list[str]:
    lines = [
        f"| configuration | at rest MB | peak during {streams} streams | after {streams} streams (ok/errors) "
        "| soak: warm MB | soak: end MB | soak: max MB | growth | idle after soak MB | soak requests (errors) "
        "| load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in res.items():
        if isinstance(m, str):
            lines.append(f"| {name} | failed: {m} ||||||||||")
            continue
        lines.append(
            f"| {name} | {m['rest_mb']:.1f} | {m['streams_peak_mb']:.1f} | {m['after_streams_mb']:.1f} "
            f"({m['streams_completed']}/{m['streams_errors']}) | {m['soak_warm_mb']:.1f} | {m['soak_end_mb']:.1f} "
            f"| {m['soak_max_mb']:.1f} | {m['soak_growth_pct']:+.1f} % | {m['after_soak_idle_mb']:.1f} "
            f"| {m['soak_requests']} ({m['soak_errors']}) | {m['loadavg']:.1f} |"
        )
    return lines
