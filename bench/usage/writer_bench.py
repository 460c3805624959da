"""How many usage rows per second the writer sustains into PostgreSQL.

Pushes N request records through a real UsageWriter (observe() as the request path calls it, pricing
included) into a fresh database on the given server, and times from the first observe() to the last
row committed (stop() drains the buffer). Also times the sink alone (write_usage of ready-made batches).

    .venv/bin/python bench/usage/writer_bench.py [--rows 100000] [--batch 500] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid

import asyncpg

from fastproxy.core.records import RequestRecord
from fastproxy.core.schemas import TokenUsage
from fastproxy.store import open_store
from fastproxy.usage.journal import Journal
from fastproxy.usage.pricing import load_prices
from fastproxy.usage.row import row_maker
from fastproxy.usage.writer import UsageWriter


def records(n: int, tag: str) -> list[RequestRecord]:
    usage = TokenUsage(prompt=120, completion=40, total=160)
    return [
        RequestRecord(
            request_id=f"{tag}-{i}",
            method="POST",
            path="/v1/chat/completions",
            endpoint="chat.completions",
            model="gpt-4o-mini",
            stream=i % 2 == 0,
            status=200,
            upstream_status=200,
            usage=usage,
            latency_ms=12.5,
            ttfb_ms=3.2,
            key_id=f"key_{i % 100}",
            user_id=f"user_{i % 10}",
            client_ip="10.0.0.1",
        )
        for i in range(n)
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"fpbench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = args.dsn.rsplit("/", 1)[0] + "/" + name
    try:
        store = await open_store(dsn)
        await store.migrate()
        make = row_maker(load_prices(), "openai")
        with tempfile.TemporaryDirectory() as tmp:
            # Through the writer: the request path's observe() and the batching task, as in the proxy.
            writer = UsageWriter(store, Journal(tmp), make, batch_size=args.batch, interval=1.0, buffer_size=10**7)
            await writer.start()
            batch = records(args.rows, "w")
            start = time.perf_counter()
            observe_cpu = time.process_time()
            for i, rec in enumerate(batch):
                writer.observe(rec)
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # let the writer run, as a busy event loop would
            observe_cpu = time.process_time() - observe_cpu
            await writer.stop()
            elapsed = time.perf_counter() - start
            assert writer.stats.rows_written == args.rows and writer.stats.rows_journaled == 0
            # The sink alone, rows made in advance.
            rows = [make(r) for r in records(args.rows, "s")]
            start = time.perf_counter()
            for i in range(0, len(rows), args.batch):
                await store.write_usage(rows[i : i + args.batch])
            sink_elapsed = time.perf_counter() - start
            # Replaying everything again adds nothing (idempotent) and costs:
            start = time.perf_counter()
            for i in range(0, len(rows), args.batch):
                assert await store.write_usage(rows[i : i + args.batch]) == 0
            replay_elapsed = time.perf_counter() - start
        await store.close()
        conn = await asyncpg.connect(dsn)
        count = await conn.fetchval("SELECT count(*) FROM usage")
        await conn.close()
        assert count == 2 * args.rows
        print(f"machine: {os.cpu_count()} CPUs; rows={args.rows} batch={args.batch}")
        print(f"writer (observe -> committed): {args.rows / elapsed:,.0f} rows/s ({elapsed:.2f} s)")
        print(f"  observe() on the request path: {observe_cpu / args.rows * 1e6:.2f} us CPU per record")
        print(f"sink only (COPY + INSERT..SELECT ON CONFLICT): {args.rows / sink_elapsed:,.0f} rows/s")
        print(f"replay of rows already stored (all skipped): {args.rows / replay_elapsed:,.0f} rows/s")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
