"""CPU per limiter script call: redis-py's script object against fastproxy's ScriptChannel.

    python -m bench.ratelimit.wire [--calls 5000] [--rounds 3] [--redis-url redis://127.0.0.1:6379/0]

One process on uvloop sends the limiter's own script (a two-bucket take) to Redis, one call at a
time, `--calls` times per client per round, the clients alternating round by round. CPU is this
process's utime + stime (getrusage, so the kernel's socket work counts), divided by the calls; Redis's
own CPU is not counted. Both clients parse replies with hiredis. The proxy batches concurrent
admits into one call, so this is the cost per batch, paid by every request at low load.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from fastproxy.ratelimit.redis_limiter import connect, load_script
from fastproxy.ratelimit.wire import ScriptChannel, bulk, pack_evalsha


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    for _ in range(200):  # warm-up: connections open, caches filled
        await call()
    c0, t0 = _cpu(), time.perf_counter()
    for _ in range(n):
        await call()
    return (_cpu() - c0) / n * 1e6, (time.perf_counter() - t0) / n * 1e6


async def main(url: str, calls: int, rounds: int) -> None:
    client = connect(url, 2.0)
    source = load_script()
    script = client.register_script(source)
    prefix = f"fpbench:wire:{uuid.uuid4().hex[:8]}:"
    keys = [prefix + "{fp:global}:rl1:rpm", prefix + "{fp:global}:rl1:tpm"]
    # One operation (ratelimit.lua's batch format): take 1 request and 100 tokens, never refused.
    args: list[str | int] = [1, "take", 2, 10**9, 60, 1, 10**12, 60, 100]
    # The limiter packs a bucket's constant arguments once; here every argument is packed once.
    packed = pack_evalsha(script.sha, [bulk(k) for k in keys], [bulk(a) for a in args])
    params = client.connection_pool.connection_kwargs
    channel = ScriptChannel(params, 2.0)
    clients: dict[str, Callable[[], Awaitable[Any]]] = {
        "redis-py script object": lambda: script(keys=keys, args=args),
        "ScriptChannel": lambda: channel.evalsha(packed, source),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    try:
        for _ in range(rounds):
            for name, call in clients.items():
                results[name].append(await _measure(call, calls))
    finally:
        await client.delete(*keys)
        channel.close()
        await client.aclose()
    print(f"{calls} sequential calls x {rounds} rounds, median (min-max)\n")
    print("| client | CPU µs/call | wall µs/call |")
    print("|---|---:|---:|")
    for name, runs in results.items():
        cpu = sorted(r[0] for r in runs)
        wall = sorted(r[1] for r in runs)
        print(f"| {name} | {statistics.median(cpu):.1f} ({cpu[0]:.1f}-{cpu[-1]:.1f}) | {statistics.median(wall):.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    uvloop.run(main(a.redis_url, a.calls, a.rounds))
