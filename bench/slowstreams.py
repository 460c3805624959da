"""Load client: N concurrent SSE streams, started together or spread over --ramp-ms, each read raw to the end.

    python -m bench.slowstreams --url URL --streams 500 [--key K] [--header x-mock-delay-ms:20]

One aiohttp session, one TCPConnector with limit=0 (no pool cap: every stream its own connection),
uvloop. Per stream: HTTP status, duration from sending the request to the last byte, bytes, SSE
events (blank-line separated) and network reads. A stream counts as completed when it is a 200
ending with `data: [DONE]`. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import uvloop

from bench.harness import STREAM_BODY
from bench.stats import median, percentile

DONE = b"data: [DONE]\n\n"


async def one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], delay: float
) -> dict[str, Any]:
    await asyncio.sleep(delay)
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            buf = bytearray()
            reads = 0
            while chunk := await resp.content.readany():
                buf += chunk
                reads += 1
            ok = resp.status == 200 and buf.endswith(DONE)
            err = None if ok else f"HTTP {resp.status}, {len(buf)} B, tail {bytes(buf[-40:])!r}"
            return {
                "ok": ok,
                "error": err,
                "duration": time.perf_counter() - t0,
                "events": buf.count(b"\n\n"),
                "reads": reads,
                "bytes": len(buf),
            }
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return {"ok": False, "error": repr(exc)[:200], "duration": time.perf_counter() - t0, "events": 0, "reads": 0}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.key}"}
    for h in args.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        t0 = time.perf_counter()
        body = args.body.encode()
        # Starts spread evenly over --ramp-ms: with all N started in the same instant, every stream's
        # chunks fall due in the same instant too, and the bursts (not the proxy) set the tail.
        ramp = args.ramp_ms / 1000 / max(1, args.streams)
        results = await asyncio.gather(*(one(session, args.url, body, headers, i * ramp) for i in range(args.streams)))
        wall = time.perf_counter() - t0
    good = [r for r in results if r["ok"]]
    durations = [r["duration"] for r in good]
    errors = [r["error"] for r in results if not r["ok"]]
    return {
        "streams": args.streams,
        "completed": len(good),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "wall_s": wall,
        "ramp_ms": args.ramp_ms,
        "p50_s": percentile(durations, 50),
        "p90_s": percentile(durations, 90),
        "p99_s": percentile(durations, 99),
        "max_s": max(durations) if durations else float("nan"),
        "events_per_stream": median([r["events"] for r in good]),
        "reads_per_stream": median([r["reads"] for r in good]),
        "events_total": sum(r["events"] for r in good),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--key", default="sk-bench-unused")
    ap.add_argument("--body", default=STREAM_BODY)
    ap.add_argument("--header", action="append", default=[], help="extra request header, name:value")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--ramp-ms", type=float, default=0.0, help="spread the stream starts over this long")
    args = ap.parse_args()
    print(json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
