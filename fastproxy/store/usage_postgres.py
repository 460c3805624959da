"""Usage rows on PostgreSQL: COPY into a per-connection staging table, then one idempotent INSERT ... SELECT.

Mixed into PostgresStore (it provides `_conn()`, which maps asyncpg errors to StoreError).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from fastproxy.usage.query import (
    RECORD_COLS,
    TOTAL_COLS,
    DayTotals,
    ModelTotals,
    UsageQuery,
    UsageRecord,
    UsageSummary,
    record_from_row,
    summary,
    totals,
    where_clause,
)
from fastproxy.usage.row import COLUMNS, UsageRow

_COLS = ", ".join(COLUMNS)
# Same columns as `usage`, ts as Unix seconds (converted in the INSERT); emptied at every commit.
_STAGING = """CREATE TEMP TABLE IF NOT EXISTS usage_staging (
    request_id text, ts double precision, key_id text, user_id text, model text, upstream_model text,
    provider text, endpoint text, streamed boolean, status integer, prompt_tokens integer,
    completion_tokens integer, total_tokens integer, cached_tokens integer, reasoning_tokens integer,
    cost_usd double precision, latency_ms double precision, ttfb_ms double precision, client_ip text,
    error text, estimated boolean, client_request_id text, attempts integer, partial boolean, cache_hit boolean,
    cost_saved_usd double precision
) ON COMMIT DELETE ROWS"""
_SELECT = _COLS.replace("ts,", "to_timestamp(ts),", 1)
# ORDER BY: two instances inserting overlapping ids (replays) take the row locks in one order, never deadlock.
_MOVE = (
    f"INSERT INTO usage ({_COLS}) SELECT {_SELECT} FROM usage_staging ORDER BY request_id"
    " ON CONFLICT (request_id) DO NOTHING"
)
_astuple = msgspec.structs.astuple
_RECORD = RECORD_COLS.format(ts="extract(epoch FROM ts)::float8")
_DAY = "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

_BY_MODEL = f"SELECT model, {TOTAL_COLS} FROM usage{{where}} GROUP BY model ORDER BY model"
_BY_DAY = f"SELECT {_DAY} AS day, {TOTAL_COLS} FROM usage{{where}} GROUP BY day ORDER BY day"


def _where(q: UsageQuery, with_cursor: bool) -> tuple[str, list[Any]]:
    # Timestamps are stored as timestamptz; the API speaks Unix seconds.
    return where_clause(q, with_cursor, lambda column, n: f"to_timestamp(${n})" if column == "ts" else f"${n}")


class PostgresUsage:
    _conn: Any  # provided by PostgresStore: () -> AbstractAsyncContextManager[asyncpg.Connection]

    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        if not rows:
            return 0
        conn_cm: AbstractAsyncContextManager[Any] = self._conn()
        async with conn_cm as conn, conn.transaction():
            # A temp table lives per connection: created once on each pooled connection, a no-op after.
            await conn.execute(_STAGING)
            await conn.copy_records_to_table("usage_staging", records=[_astuple(r) for r in rows], columns=COLUMNS)
            status: str = await conn.execute(_MOVE)
        return int(status.rsplit(" ", 1)[-1])

    async def spend_totals(self) -> tuple[dict[str, float], dict[str, float]]:
        """Total cost_usd per key id and per user id, over every usage row."""
        conn_cm: AbstractAsyncContextManager[Any] = self._conn()
        async with conn_cm as conn:
            keys = await conn.fetch("SELECT key_id, sum(cost_usd) FROM usage WHERE key_id IS NOT NULL GROUP BY key_id")
            users = await conn.fetch(
                "SELECT user_id, sum(cost_usd) FROM usage WHERE user_id IS NOT NULL GROUP BY user_id"
            )
        return {r[0]: float(r[1]) for r in keys}, {r[0]: float(r[1]) for r in users}

    async def list_usage(self, q: UsageQuery) -> list[UsageRecord]:
        where, args = _where(q, with_cursor=True)
        conn_cm: AbstractAsyncContextManager[Any] = self._conn()
        async with conn_cm as conn:
            rows = await conn.fetch(
                f"SELECT {_RECORD} FROM usage{where} ORDER BY id LIMIT ${len(args) + 1}", *args, q.limit
            )
        return [record_from_row(r) for r in rows]

    async def usage_summary(self, q: UsageQuery) -> UsageSummary:
        where, args = _where(q, with_cursor=False)
        conn_cm: AbstractAsyncContextManager[Any] = self._conn()
        async with conn_cm as conn:
            models = await conn.fetch(_BY_MODEL.format(where=where), *args)
            days = await conn.fetch(_BY_DAY.format(where=where), *args)
        return summary(
            [ModelTotals(model=r[0], **totals(r[1:])) for r in models],
            [DayTotals(date=r[0], **totals(r[1:])) for r in days],
        )
