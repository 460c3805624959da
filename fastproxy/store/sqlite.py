"""SQLite store, the embedded default: one aiosqlite connection (one writer) in WAL mode.

Several processes (Granian workers, `fastproxy migrate`) may open the same file; WAL lets readers
run beside the one writer and `busy_timeout` makes a second writer wait instead of failing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from fastproxy.store import (
    KEY_FIELDS,
    USER_FIELDS,
    ApiKey,
    KeyGrant,
    QueryHook,
    StoreConflict,
    StoreError,
    StoreInvalidValue,
    User,
    decode_cache,
    decode_limits,
    decode_models,
    encode_cache,
    encode_limits,
    encode_models,
    migrations,
)
from fastproxy.store.accounts_sqlite import SqliteAccounts
from fastproxy.store.usage_sqlite import SqliteUsage

_BUSY_TIMEOUT_S = 30.0
_USER_COLS = "u.id, u.name, u.email, u.created_at, u.disabled, u.limits, u.upstream_key"
_KEY_COLS = (
    "k.id, k.user_id, k.name, k.key_prefix, k.key_hint, k.created_at, k.last_used_at, k.expires_at,"
    " k.revoked_at, k.allowed_models, k.limits, k.cache, k.upstream_key"
)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _user(row: sqlite3.Row | tuple[Any, ...], at: int = 0) -> User:
    return User(
        id=row[at],
        name=row[at + 1],
        email=row[at + 2],
        created_at=int(row[at + 3]),
        disabled=bool(row[at + 4]),
        limits=decode_limits(row[at + 5]),
        upstream_key=row[at + 6],
    )


def _key(row: sqlite3.Row | tuple[Any, ...]) -> ApiKey:
    return ApiKey(
        id=row[0],
        user_id=row[1],
        name=row[2],
        key_prefix=row[3],
        key_hint=row[4],
        created_at=int(row[5]),
        last_used_at=_int(row[6]),
        expires_at=_int(row[7]),
        revoked_at=_int(row[8]),
        allowed_models=decode_models(row[9]),
        limits=decode_limits(row[10]),
        cache=decode_cache(row[11]),
        upstream_key=row[12],
    )


def _column_value(name: str, value: Any) -> Any:
    if name == "limits":
        return encode_limits(value)
    if name == "cache":
        return encode_cache(value)
    if name == "allowed_models":
        return encode_models(value)
    if name == "disabled":
        return int(value)
    return value


def _set_clause(changes: Mapping[str, Any], allowed: frozenset[str]) -> tuple[str, list[Any]]:
    parts, args = [], []
    for name, value in changes.items():
        if name not in allowed:
            raise ValueError(f"not an updatable column: {name}")
        parts.append(f"{name} = ?")
        args.append(_column_value(name, value))
    return ", ".join(parts), args


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit the surrounding transaction)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip() and not all(s.strip().startswith("--") for s in current.strip().splitlines()):
        out.append(current.strip())
    return out


class SqliteStore(SqliteUsage, SqliteAccounts):
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._db = conn
        # One connection is shared by every coroutine: a transaction must not interleave with others.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, on_query: QueryHook | None = None) -> SqliteStore:
        path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
        try:
            # isolation_level=None: no implicit transactions; writes that belong together say BEGIN.
            conn = await aiosqlite.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {path}: {exc}") from exc
        try:
            await _enable_wal(conn)
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            if on_query is not None:
                await conn.set_trace_callback(on_query)
        except sqlite3.Error as exc:
            await conn.close()
            raise StoreError(f"cannot open SQLite database {path}: {exc}") from exc
        return cls(conn)

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            async with self._lock:
                yield
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise StoreError(f"SQLite error: {exc}") from exc
            raise StoreConflict(f"SQLite: a unique value is taken ({exc})") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc
        except OverflowError as exc:  # an integer beyond SQLite's 64 bits
            raise StoreInvalidValue(f"SQLite refused a value: {exc}") from exc
        except ValueError as exc:  # aiosqlite: the connection is closed
            raise StoreError(f"SQLite connection unusable: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self, begin: str = "BEGIN") -> AsyncIterator[aiosqlite.Connection]:
        async with self._errors():
            await self._db.execute(begin)
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        async with self._errors(), self._db.execute(sql, args) as cur:
            row: sqlite3.Row | None = await cur.fetchone()
            return row

    async def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        async with self._errors(), self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        await self._one("SELECT 1")

    async def migrate(self) -> list[str]:
        applied: list[str] = []
        for version, sql in migrations(self.dialect):
            # IMMEDIATE takes the write lock up front: a second process waits, then sees the version.
            async with self._transaction("BEGIN IMMEDIATE") as db:
                await db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY,"
                    " applied_at REAL NOT NULL DEFAULT (strftime('%s', 'now')))"
                )
                async with db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)) as cur:
                    if await cur.fetchone():
                        continue
                for statement in _statements(sql):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
                applied.append(version)
        return applied

    async def create_user(self, user: User) -> None:
        async with self._errors():
            await self._db.execute(
                "INSERT INTO users (id, name, email, created_at, disabled, limits, upstream_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    user.id,
                    user.name,
                    user.email,
                    user.created_at,
                    int(user.disabled),
                    encode_limits(user.limits),
                    user.upstream_key,
                ),
            )

    async def get_user(self, user_id: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users u WHERE u.id = ?", user_id)
        return _user(row) if row else None

    async def list_users(self, limit: int, after: str | None) -> list[User]:
        rows = await self._all(
            f"SELECT {_USER_COLS} FROM users u WHERE (? IS NULL OR u.id > ?) ORDER BY u.id LIMIT ?", after, after, limit
        )
        return [_user(r) for r in rows]

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> User | None:
        if changes:
            clause, args = _set_clause(changes, USER_FIELDS)
            async with self._errors():
                await self._db.execute(f"UPDATE users SET {clause} WHERE id = ?", (*args, user_id))
        return await self.get_user(user_id)

    async def disable_user(self, user_id: str, now: int) -> tuple[User, list[ApiKey]] | None:
        async with self._transaction("BEGIN IMMEDIATE") as db:
            await db.execute("UPDATE users SET disabled = 1 WHERE id = ?", (user_id,))
            async with db.execute(f"SELECT {_USER_COLS} FROM users u WHERE u.id = ?", (user_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            async with db.execute(
                f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.user_id = ? AND k.revoked_at IS NULL", (user_id,)
            ) as cur:
                live = [r[0] for r in await cur.fetchall()]
            await db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (now, user_id)
            )
            keys = []
            for key_id in live:
                async with db.execute(f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.id = ?", (key_id,)) as cur:
                    keys.append(_key(await cur.fetchone()))  # type: ignore[arg-type]
        return _user(row), keys

    async def create_key(self, key: ApiKey, key_hash: str) -> None:
        async with self._errors():
            await self._db.execute(
                "INSERT INTO api_keys (id, user_id, name, key_prefix, key_hint, key_hash, created_at, expires_at,"
                " allowed_models, limits, cache, upstream_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.user_id,
                    key.name,
                    key.key_prefix,
                    key.key_hint,
                    key_hash,
                    key.created_at,
                    key.expires_at,
                    encode_models(key.allowed_models),
                    encode_limits(key.limits),
                    encode_cache(key.cache),
                    key.upstream_key,
                ),
            )

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._one(f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.id = ?", key_id)
        return _key(row) if row else None

    async def list_keys(self, limit: int, after: str | None, user_id: str | None = None) -> list[ApiKey]:
        rows = await self._all(
            f"SELECT {_KEY_COLS} FROM api_keys k WHERE (? IS NULL OR k.id > ?) AND (? IS NULL OR k.user_id = ?)"
            " ORDER BY k.id LIMIT ?",
            after,
            after,
            user_id,
            user_id,
            limit,
        )
        return [_key(r) for r in rows]

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> ApiKey | None:
        if changes:
            clause, args = _set_clause(changes, KEY_FIELDS)
            async with self._errors():
                await self._db.execute(f"UPDATE api_keys SET {clause} WHERE id = ?", (*args, key_id))
        return await self.get_key(key_id)

    async def revoke_key(self, key_id: str, now: int) -> ApiKey | None:
        async with self._errors():
            await self._db.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (now, key_id)
            )
        return await self.get_key(key_id)

    async def find_key(self, key_hash: str) -> KeyGrant | None:
        row = await self._one(
            f"SELECT {_KEY_COLS}, k.key_hash, {_USER_COLS} FROM api_keys k LEFT JOIN users u ON u.id = k.user_id"
            " WHERE k.key_hash = ?",
            key_hash,
        )
        if row is None:
            return None
        user = _user(row, 14) if row[14] is not None else None
        return KeyGrant(key=_key(row), key_hash=row[13], user=user)

    async def touch_keys(self, used: Mapping[str, int]) -> None:
        if not used:
            return
        async with self._errors():
            await self._db.executemany(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                [(ts, key_id, ts) for key_id, ts in used.items()],
            )

    async def list_entries(self, kind: str) -> list[tuple[str, str]]:
        rows = await self._all("SELECT name, body FROM config_entries WHERE kind = ? ORDER BY name", kind)
        return [(r[0], r[1]) for r in rows]

    async def put_entry(self, kind: str, name: str, body: str, now: int) -> None:
        async with self._errors():
            await self._db.execute(
                "INSERT INTO config_entries (kind, name, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                (kind, name, body, now, now),
            )

    async def delete_entry(self, kind: str, name: str) -> bool:
        async with self._errors():
            cur = await self._db.execute("DELETE FROM config_entries WHERE kind = ? AND name = ?", (kind, name))
            return cur.rowcount > 0


async def _enable_wal(conn: aiosqlite.Connection) -> None:
    """Switch to WAL, waiting for another process doing the same on a new file.

    Changing the journal mode needs an exclusive lock and does not go through the busy handler:
    SQLite answers "database is locked" at once (seen with two `fastproxy migrate` started together).
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.02)
