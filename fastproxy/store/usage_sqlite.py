"""Usage rows on SQLite: one transaction of `executemany` with INSERT OR IGNORE (idempotent on request_id).

Mixed into SqliteStore (it provides `_transaction()` and `_all()`, which map sqlite errors to StoreError).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from fastproxy.usage.row import COLUMNS, UsageRow

_INSERT = f"INSERT OR IGNORE INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_astuple = msgspec.structs.astuple


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
