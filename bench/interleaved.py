"""What a feature adds to the proxy's CPU time per request, measured with every proxy up at once.

    python -m bench.interleaved                                    # bare, +metrics+log, and bare again
    python -m bench.interleaved --configs bare,+metrics --cycles 30 --slice 3
    python -m bench.interleaved --rounds 8 --cycles 8              # 8 sets of fresh processes, pooled
    python -m bench.interleaved --pool bench/out/interleaved-A.json bench/out/interleaved-B.json
    python -m bench.interleaved --configs full,full@BENCH_LOAD=messages   # chat vs /v1/messages translated
    python -m bench.interleaved --configs full,full-anthropic --stream   # streams of 50 content events

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

A proxy process keeps an offset of a few percent for its whole life (memory layout, hash seed, where
its pages landed): the control's ratio is 0.96-1.03 from one start to the next, which resampling the
cycles of one start cannot see. `--rounds R` therefore starts every proxy afresh R times (the start
order rotating too) and pools the rounds; the interval then resamples whole rounds, then cycles
within each, so it covers both the per-start offset and the load's noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

from bench.configs import KEY_LIMITS, ProxyConfig, named_configs
from bench.harness import (
    HERE,
    LOAD_CPU,
    Backing,
    CpuWindow,
    backing,
    backing_services_on,
    redis_cluster,
    scratch_dir,
    start_mock,
    start_nginx,
    stop,
    wrk,
)
from bench.stats import median
from bench.targets import Target, chat_load, messages_load, start_target

CONTROL = "control"
# Content events per stream with --stream (the mock's words); the stream adds its own opening and closing events.
STREAM_CHUNKS = 50


# One round (one start of every proxy): CPU seconds and completed requests, each indexed [proxy][cycle].
Round = tuple[list[list[float]], list[list[int]]]


def _bootstrap(rounds: list[Round], i: int, draws: int = 2000) -> tuple[float, float]:
    """95 % interval of the pooled CPU-per-request ratio (proxy i over proxy 0).

    Resamples whole rounds (fresh processes: their offsets), then whole cycles within each drawn round
    (the load's noise); with one round only the cycles are resampled.
    """
    rng = random.Random(7)
    ratios = []
    for _ in range(draws):
        a_cpu = a_req = b_cpu = b_req = 0.0
        picked = [rng.choice(rounds) for _ in rounds] if len(rounds) > 1 else rounds
        for cpu, reqs in picked:
            n = len(cpu[0])
            for k in (rng.randrange(n) for _ in range(n)):
                a_cpu += cpu[0][k]
                a_req += reqs[0][k]
                b_cpu += cpu[i][k]
                b_req += reqs[i][k]
        ratios.append((b_cpu / b_req) / (a_cpu / a_req))
    ratios.sort()
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def _pooled(rounds: list[Round], i: int) -> float:
    return sum(sum(cpu[i]) for cpu, _ in rounds) / sum(sum(reqs[i]) for _, reqs in rounds)


def _round(
    a: argparse.Namespace,
    labels: list[str],
    names: list[str],
    configs: dict[str, ProxyConfig],
    upstream: str,
    bk: Backing,
    work: Path,
    number: int,
) -> Round:
    """Start every proxy afresh (the start order rotated by `number`), run the cycles, stop them."""
    order = list(range(len(labels)))
    order = order[number % len(order) :] + order[: number % len(order)]
    targets: dict[int, Target] = {}
    cpu = [[0.0] * a.cycles for _ in labels]
    reqs = [[0] * a.cycles for _ in labels]
    try:
        for i in order:
            targets[i] = start_target(names[0] if labels[i] == CONTROL else labels[i], configs, upstream, bk, work)
        loads = {}
        for i in order:
            # `NAME@BENCH_LOAD=messages`: this proxy is loaded on /v1/messages (the Anthropic ingress, translated).
            translated = configs[names[0] if labels[i] == CONTROL else labels[i]].env.get("BENCH_LOAD") == "messages"
            loads[i] = (messages_load if translated else chat_load)(targets[i], work, a.stream)
            wrk(*loads[i], a.warmup, a.conns)
        for cycle in range(a.cycles):
            shift = cycle % len(order)
            util = [0.0] * len(labels)
            for i in order[shift:] + order[:shift]:
                t = targets[i]
                win = CpuWindow({"proxy": t.pid})
                win.start()
                r = wrk(*loads[i], a.slice, a.conns)
                used = win.stop()
                if r["errors"] or r["requests"] == 0:
                    raise SystemExit(f"{labels[i]}: {r['errors']} errors in cycle {cycle + 1}; logs in {work}")
                cpu[i][cycle], reqs[i][cycle] = used["proxy"], r["requests"]
                util[i] = used["proxy"] / used["wall"]
            per = "  ".join(
                f"{labels[i]} {cpu[i][cycle] / reqs[i][cycle] * 1e6:.0f} ({util[i] * 100:.0f}% core)"
                for i in range(len(labels))
            )
            print(f"round {number + 1}/{a.rounds} cycle {cycle + 1}/{a.cycles}: µs CPU/request  {per}", flush=True)
    finally:
        for t in targets.values():
            t.close()
    return cpu, reqs


def _rows(labels: list[str], rounds: list[Round]) -> list[str]:
    """The markdown table: pooled CPU per request of each proxy, and its ratio to the first one."""
    per = "round" if len(rounds) > 1 else "cycle"
    lines = [
        f"| configuration | µs CPU / request (pooled) | over {labels[0]} (pooled) | 95 % interval "
        f"| per-{per} ratio: median (min…max) | requests |",
        "|---|---:|---:|---|---|---:|",
    ]
    base = _pooled(rounds, 0)
    for i, label in enumerate(labels):
        pooled = _pooled(rounds, i)
        total = sum(sum(reqs[i]) for _, reqs in rounds)
        if i == 0:
            lines.append(f"| {label} | {pooled * 1e6:.1f} | | | | {total:,} |")
            continue
        lo, hi = _bootstrap(rounds, i)
        if len(rounds) > 1:
            ratios = [_pooled([r], i) / _pooled([r], 0) for r in rounds]
        else:
            cpu, reqs = rounds[0]
            ratios = [(cpu[i][k] / reqs[i][k]) / (cpu[0][k] / reqs[0][k]) for k in range(len(cpu[0]))]
        lines.append(
            f"| {label} | {pooled * 1e6:.1f} | {(pooled / base - 1) * 100:+.1f} % "
            f"| {(lo - 1) * 100:+.1f} … {(hi - 1) * 100:+.1f} % "
            f"| {(median(ratios) - 1) * 100:+.1f} % ({(min(ratios) - 1) * 100:+.1f} … {(max(ratios) - 1) * 100:+.1f} %) "
            f"| {total:,} |"
        )
    return lines


def _pool(files: list[Path]) -> None:
    """Print the table of the rounds of several saved runs, for the proxies every one of them ran."""
    runs = [json.loads(f.read_text()) for f in files]
    labels = [label for label in runs[0]["labels"] if all(label in run["labels"] for run in runs)]
    if len(labels) < 2 or any(run["labels"][0] != labels[0] for run in runs):
        raise SystemExit("the runs must share their baseline (first configuration) and at least one other proxy")
    rounds: list[Round] = []
    for run in runs:
        index = [run["labels"].index(label) for label in labels]
        for r in run["rounds"]:
            rounds.append(([r["cpu_s"][i] for i in index], [r["requests"][i] for i in index]))
    print(f"Pooled: {len(rounds)} rounds from {len(files)} runs ({', '.join(f.name for f in files)}).\n")
    print("\n".join(_rows(labels, rounds)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="bare,+metrics+log", help="the first one is the baseline")
    p.add_argument("--rounds", type=int, default=1, help="times every proxy is started afresh")
    p.add_argument("--cycles", type=int, default=30, help="cycles per round")
    p.add_argument("--slice", type=float, default=3.0, help="seconds of load per proxy per cycle")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load per proxy before a round's first cycle")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--no-control", action="store_true", help="do not start the baseline a second time")
    p.add_argument(
        "--stream",
        action="store_true",
        help="streamed chat (include_usage) from `fastproxy mock-upstream --chunks 50` instead of nginx's canned "
        "answer: CPU per stream; the mock answers both OpenAI's and Anthropic's stream",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--results", type=Path, help="append the markdown table to this file")
    p.add_argument(
        "--pool", type=Path, nargs="+", metavar="JSON", help="only pool saved runs (bench/out/interleaved-*.json)"
    )
    a = p.parse_args()
    if a.pool:
        _pool(a.pool)
        return
    configs, names = named_configs(a.configs)
    labels = names + ([] if a.no_control else [CONTROL])
    started = time.monotonic()
    rounds: list[Round] = []
    needs_cluster = any("{redis_cluster_url}" in configs[n].env.get("FASTPROXY_REDIS_URL", "") for n in names)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(scratch_dir())
        bk = stack.enter_context(backing(a.redis_url, KEY_LIMITS))
        if needs_cluster:
            bk.redis_cluster_url = stack.enter_context(redis_cluster(Path(tmp)))
        placed = stack.enter_context(backing_services_on(LOAD_CPU))
        work = Path(tmp)
        nginx, nginx_port = start_mock(work, chunks=STREAM_CHUNKS, delay_ms=0) if a.stream else start_nginx(work)
        try:
            for number in range(a.rounds):
                rounds.append(_round(a, labels, names, configs, f"http://127.0.0.1:{nginx_port}", bk, work, number))
        finally:
            stop(nginx)

    lines = [
        f"Interleaved CPU per {'stream (50 content events, mock-upstream)' if a.stream else 'request'}: "
        f"{len(labels)} proxies up at once on CPU 0, wrk -t1 -c{a.conns} "
        f"loading one at a time for {a.slice:g} s, {a.cycles} cycles per round, order rotated each cycle; "
        f"{a.rounds} round{'s' if a.rounds > 1 else ''} (every proxy started afresh each round); "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.monotonic() - started) / 60:.1f} min. "
        f"{placed}.",
        "",
    ]
    lines += _rows(labels, rounds)
    if not a.no_control:
        lines.append(f"\n`{CONTROL}` is a second {names[0]} proxy: its row is the method's own error.")
    text = "\n".join(lines)
    print("\n" + text)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    result: dict[str, Any] = {
        "labels": labels,
        "rounds": [{"cpu_s": cpu, "requests": reqs} for cpu, reqs in rounds],
        "args": vars(a) | {"results": None},
    }
    (out / f"interleaved-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result))
    if a.results:
        with a.results.open("a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
