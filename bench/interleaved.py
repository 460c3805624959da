"""What a feature adds to the proxy's CPU time per request, measured with every proxy up at once.

    python -m bench.interleaved                                    # bare, +metrics+log, and bare again
    python -m bench.interleaved --configs bare,+metrics --cycles 30 --slice 3

The suite's closed-loop rounds restart each proxy for each round and measure its configurations
minutes apart; on a shared 2-core VM the CPU per request then moves by 15-30 points between rounds,
which hides a budget of a few percent. Here every proxy (fastproxy serve, 1 Granian worker, all on
CPU 0) starts once and stays up; wrk (CPU 1, beside nginx's canned chat answer) loads one proxy at a
time for a short slice, the order rotating each cycle so that no proxy is always first or last. A
slice's figure is its proxy's CPU seconds (the process tree, from /proc) over the requests wrk
completed. Per configuration: the pooled CPU per request (all its slices' CPU over all its requests),
and its ratio to the first configuration, with a 95 % bootstrap interval over cycles and the median
and range of the per-cycle ratios. The first configuration is started twice (`control`): its ratio
to itself is the method's own error, shown beside the others.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

from bench.configs import KEY_LIMITS, named_configs
from bench.harness import (
    CHAT_BODY,
    HERE,
    LOAD_CPU,
    CpuWindow,
    backing,
    backing_services_on,
    post,
    scratch_dir,
    start_nginx,
    stop,
    write_lua,
    wrk,
)
from bench.stats import median
from bench.targets import Target, start_target

CHAT = "/v1/chat/completions"
CONTROL = "control"


def _bootstrap(cpu: list[list[float]], reqs: list[list[int]], i: int, rounds: int = 2000) -> tuple[float, float]:
    """95 % interval of pooled-CPU-per-request ratio (column i over column 0), resampling whole cycles."""
    rng = random.Random(7)
    n = len(cpu)
    ratios = []
    for _ in range(rounds):
        pick = [rng.randrange(n) for _ in range(n)]
        a = sum(cpu[k][0] for k in pick) / sum(reqs[k][0] for k in pick)
        b = sum(cpu[k][i] for k in pick) / sum(reqs[k][i] for k in pick)
        ratios.append(b / a)
    ratios.sort()
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="bare,+metrics+log", help="the first one is the baseline")
    p.add_argument("--cycles", type=int, default=30)
    p.add_argument("--slice", type=float, default=3.0, help="seconds of load per proxy per cycle")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load per proxy before the first cycle")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--no-control", action="store_true", help="do not start the baseline a second time")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--results", type=Path, help="append the markdown table to this file")
    a = p.parse_args()
    configs, names = named_configs(a.configs)
    labels = names + ([] if a.no_control else [CONTROL])
    started = time.monotonic()
    cpu: list[list[float]] = []
    reqs: list[list[int]] = []
    with scratch_dir() as tmp, backing(a.redis_url, KEY_LIMITS) as bk, backing_services_on(LOAD_CPU) as placed:
        work = Path(tmp)
        nginx, nginx_port = start_nginx(work)
        upstream = f"http://127.0.0.1:{nginx_port}"
        targets: list[Target] = []
        try:
            for label in labels:
                targets.append(start_target(names[0] if label == CONTROL else label, configs, upstream, bk, work))
            luas = []
            for t in targets:
                reply = post(t.base + CHAT, CHAT_BODY, t.key)
                if b'"chat.completion"' not in reply:
                    raise SystemExit(f"{t.name}: unexpected reply {reply[:200]!r}")
                luas.append(write_lua(work / f"load-{t.pid}.lua", t.key, [CHAT_BODY]))
                wrk(t.base + CHAT, luas[-1], a.warmup, a.conns)
            order = list(range(len(targets)))
            for cycle in range(a.cycles):
                shift = cycle % len(order)
                row_cpu = [0.0] * len(targets)
                row_reqs = [0] * len(targets)
                util = [0.0] * len(targets)
                for i in order[shift:] + order[:shift]:
                    t = targets[i]
                    win = CpuWindow({"proxy": t.pid})
                    win.start()
                    r = wrk(t.base + CHAT, luas[i], a.slice, a.conns)
                    used = win.stop()
                    if r["errors"] or r["requests"] == 0:
                        raise SystemExit(f"{labels[i]}: {r['errors']} errors in cycle {cycle + 1}; logs in {work}")
                    row_cpu[i], row_reqs[i] = used["proxy"], r["requests"]
                    util[i] = used["proxy"] / used["wall"]
                cpu.append(row_cpu)
                reqs.append(row_reqs)
                per = "  ".join(
                    f"{labels[i]} {row_cpu[i] / row_reqs[i] * 1e6:.0f} ({util[i] * 100:.0f}% core)" for i in order
                )
                print(f"cycle {cycle + 1}/{a.cycles}: µs CPU/request  {per}", flush=True)
        finally:
            for t in targets:
                t.close()
            stop(nginx)

    lines = [
        f"Interleaved CPU per request: {len(labels)} proxies up at once on CPU 0, wrk -t1 -c{a.conns} "
        f"loading one at a time for {a.slice:g} s, {a.cycles} cycles, order rotated each cycle; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.monotonic() - started) / 60:.1f} min. "
        f"{placed}.",
        "",
        f"| configuration | µs CPU / request (pooled) | over {names[0]} (pooled) | 95 % interval "
        "| per-cycle ratio: median (min…max) | requests |",
        "|---|---:|---:|---|---|---:|",
    ]
    result: dict[str, Any] = {"labels": labels, "cpu_s": cpu, "requests": reqs, "args": vars(a) | {"results": None}}
    base = sum(c[0] for c in cpu) / sum(r[0] for r in reqs)
    for i, label in enumerate(labels):
        pooled = sum(c[i] for c in cpu) / sum(r[i] for r in reqs)
        total = sum(r[i] for r in reqs)
        if i == 0:
            lines.append(f"| {label} | {pooled * 1e6:.1f} | | | | {total:,} |")
            continue
        lo, hi = _bootstrap(cpu, reqs, i)
        ratios = [(c[i] / r[i]) / (c[0] / r[0]) for c, r in zip(cpu, reqs, strict=True)]
        lines.append(
            f"| {label} | {pooled * 1e6:.1f} | {(pooled / base - 1) * 100:+.1f} % "
            f"| {(lo - 1) * 100:+.1f} … {(hi - 1) * 100:+.1f} % "
            f"| {(median(ratios) - 1) * 100:+.1f} % ({(min(ratios) - 1) * 100:+.1f} … {(max(ratios) - 1) * 100:+.1f} %) "
            f"| {total:,} |"
        )
    if not a.no_control:
        lines.append(f"\n`{CONTROL}` is a second {names[0]} proxy: its row is the method's own error.")
    text = "\n".join(lines)
    print("\n" + text)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / f"interleaved-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result))
    if a.results:
        with a.results.open("a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
