"""Read the usage table of a proxy's database straight from PostgreSQL or SQLite (tests only)."""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg

_COLS = (
    "request_id, status, streamed, prompt_tokens, completion_tokens, total_tokens, cost_usd, estimated, error,"
    " key_id, user_id, model, provider"
)


async def usage_rows(database_url: str) -> dict[str, dict[str, Any]]:
    """request_id -> row; raises if a request_id appears twice (the table forbids it, this checks it)."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(f"SELECT {_COLS} FROM usage")]  # noqa: S608
    else:
        conn = await asyncpg.connect(database_url)
        try:
            rows = [dict(r) for r in await conn.fetch(f"SELECT {_COLS} FROM usage")]  # noqa: S608
        finally:
            await conn.close()
    out = {r["request_id"]: r for r in rows}
    assert len(out) == len(rows), "a request_id appears twice"
    for r in out.values():
        r["streamed"], r["estimated"] = bool(r["streamed"]), bool(r["estimated"])
    return out
