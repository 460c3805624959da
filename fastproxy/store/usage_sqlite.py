"""Usage rows on SQLite: one transaction of `executemany` with INSERT OR IGNORE (idempotent on request_id).

Mixed into SqliteStore (it provides `_transaction()` and `_all()`, which map sqlite errors to StoreError).
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

_INSERT = f"INSERT OR IGNORE INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_astuple = msgspec.structs.astuple
_RECORD = RECORD_COLS.format(ts="ts")
_DAY = "date(ts, 'unixepoch')"

_BY_MODEL = f"SELECT model, {TOTAL_COLS} FROM usage{{where}} GROUP BY model ORDER BY model"
_BY_DAY = f"SELECT {_DAY} AS day, {TOTAL_COLS} FROM usage{{where}} GROUP BY day ORDER BY day"


def _where(q: UsageQuery, with_cursor: bool) -> tuple[str, list[Any]]:
    return where_clause(q, with_cursor, lambda column, n: "?")


class SqliteUsage:
    _transaction: Any  # provided by SqliteStore
    _all: Any

    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        if not rows:
            return 0
        tx: AbstractAsyncContextManager[Any] = self._transaction("BEGIN IMMEDIATE")
        async with tx as db:
            before = db.total_changes
            await db.executemany(_INSERT, [_astuple(r) for r in rows])
            return int(db.total_changes - before)

    async def spend_totals(self) -> tuple[dict[str, float], dict[str, float]]:
        keys = await self._all("SELECT key_id, sum(cost_usd) FROM usage WHERE key_id IS NOT NULL GROUP BY key_id")
        users = await self._all("SELECT user_id, sum(cost_usd) FROM usage WHERE user_id IS NOT NULL GROUP BY user_id")
        return {r[0]: float(r[1]) for r in keys}, {r[0]: float(r[1]) for r in users}

    async def list_usage(self, q: UsageQuery) -> list[UsageRecord]:
        where, args = _where(q, with_cursor=True)
        rows = await self._all(f"SELECT {_RECORD} FROM usage{where} ORDER BY id LIMIT ?", *args, q.limit)
        return [record_from_row(r) for r in rows]

    async def usage_summary(self, q: UsageQuery) -> UsageSummary:
        where, args = _where(q, with_cursor=False)
        models = await self._all(_BY_MODEL.format(where=where), *args)
        days = await self._all(_BY_DAY.format(where=where), *args)
        return summary(
            [ModelTotals(model=r[0], **totals(r[1:])) for r in models],
            [DayTotals(date=r[0], **totals(r[1:])) for r in days],
        )
