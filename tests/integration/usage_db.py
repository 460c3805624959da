"""Read the usage table of a proxy's database straight from PostgreSQL or SQLite (tests only)."""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg

_COLS = (
    "request_id, status, streamed, prompt_tokens, completion_tokens, total_tokens, cost_usd, estimated, error,"
    " key_id, user_id, model, provider, client_request_id"
)


async def usage_rows(database_url: str) -> dict[str, dict[str, Any]]:
    """The x-request-id the client sent (else the proxy's request id) -> row; each must appear once."""
    rows = await usage_list(database_url)
    out = {r["client_request_id"] or r["request_id"]: r for r in rows}
    assert len(out) == len(rows), "a request id appears twice"
    return out


async def usage_list(database_url: str) -> list[dict[str, Any]]:
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
    for r in rows:
        r["streamed"], r["estimated"] = bool(r["streamed"]), bool(r["estimated"])
    return rows
