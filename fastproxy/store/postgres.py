"""PostgreSQL store on an asyncpg pool. asyncpg errors are mapped to StoreError here and never leak."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg

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
from fastproxy.store.accounts_postgres import PostgresAccounts
from fastproxy.store.usage_postgres import PostgresUsage

# One lock id for every fastproxy instance migrating the same database.
_MIGRATION_LOCK = zlib.crc32(b"fastproxy.schema_migrations")
_USER_COLS = "u.id, u.name, u.email, u.created_at, u.disabled, u.limits, u.upstream_key"
_KEY_COLS = (
    "k.id, k.user_id, k.name, k.key_prefix, k.key_hint, k.created_at, k.last_used_at, k.expires_at,"
    " k.revoked_at, k.allowed_models, k.limits, k.cache, k.upstream_key"
)
_JSON = {"limits", "allowed_models", "cache"}
_TIME = {"expires_at"}


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _dt(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _user(row: Mapping[str, Any], prefix: str = "") -> User:
    return User(
        id=row[prefix + "id"],
        name=row[prefix + "name"],
        email=row[prefix + "email"],
        created_at=int(row[prefix + "created_at"].timestamp()),
        disabled=row[prefix + "disabled"],
        limits=decode_limits(row[prefix + "limits"]),
        upstream_key=row[prefix + "upstream_key"],
    )


def _key(row: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        key_prefix=row["key_prefix"],
        key_hint=row["key_hint"],
        created_at=int(row["created_at"].timestamp()),
        last_used_at=_ts(row["last_used_at"]),
        expires_at=_ts(row["expires_at"]),
        revoked_at=_ts(row["revoked_at"]),
        allowed_models=decode_models(row["allowed_models"]),
        limits=decode_limits(row["limits"]),
        cache=decode_cache(row["cache"]),
        upstream_key=row["upstream_key"],
    )


def _column_value(name: str, value: Any) -> Any:
    if name == "limits":
        return encode_limits(value)
    if name == "cache":
        return encode_cache(value)
    if name == "allowed_models":
        return encode_models(value)
    if name in _TIME:
        return _dt(value)
    return value


def _set_clause(changes: Mapping[str, Any], allowed: frozenset[str]) -> tuple[str, list[Any]]:
    parts, args = [], []
    for name, value in changes.items():
        if name not in allowed:
            raise ValueError(f"not an updatable column: {name}")
        args.append(_column_value(name, value))
        cast = "::jsonb" if name in _JSON else ""
        parts.append(f"{name} = ${len(args) + 1}{cast}")
    return ", ".join(parts), args


class PostgresStore(PostgresUsage, PostgresAccounts):
    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, on_query: QueryHook | None = None, pool_size: int = 10) -> PostgresStore:
        async def init(conn: asyncpg.Connection) -> None:
            if on_query is not None:
                conn.add_query_logger(lambda record: on_query(record.query))

        async def reset(conn: asyncpg.Connection) -> None:
            # The default reset (unlock, CLOSE ALL, UNLISTEN, RESET ALL) costs a round trip per release;
            # this store keeps no session state (its advisory lock is transaction-scoped).
            return None

        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size, init=init, reset=reset)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {type(exc).__name__}") from exc
        return cls(pool)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(f"PostgreSQL: a unique value is taken ({exc.constraint_name})") from exc
        except asyncpg.DataError as exc:  # SQLSTATE class 22, and arguments asyncpg could not encode
            raise StoreInvalidValue(f"PostgreSQL refused a value: {type(exc).__name__}") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"PostgreSQL error: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1")

    async def migrate(self) -> list[str]:
        applied: list[str] = []
        async with self._conn() as conn:
            for version, sql in migrations(self.dialect):
                async with conn.transaction():
                    # Held until commit: a second instance waits here, then sees the version applied.
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations"
                        " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                    if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version):
                        continue
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                    applied.append(version)
        return applied

    async def create_user(self, user: User) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO users (id, name, email, created_at, disabled, limits, upstream_key)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
                user.id,
                user.name,
                user.email,
                _dt(user.created_at),
                user.disabled,
                encode_limits(user.limits),
                user.upstream_key,
            )

    async def get_user(self, user_id: str) -> User | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(f"SELECT {_USER_COLS} FROM users u WHERE u.id = $1", user_id)
        return _user(row) if row else None

    async def list_users(self, limit: int, after: str | None) -> list[User]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_USER_COLS} FROM users u WHERE ($1::text IS NULL OR u.id > $1) ORDER BY u.id LIMIT $2",
                after,
                limit,
            )
        return [_user(r) for r in rows]

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> User | None:
        if not changes:
            return await self.get_user(user_id)
        clause, args = _set_clause(changes, USER_FIELDS)
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"UPDATE users u SET {clause} WHERE u.id = $1 RETURNING {_USER_COLS}", user_id, *args
            )
        return _user(row) if row else None

    async def disable_user(self, user_id: str, now: int) -> tuple[User, list[ApiKey]] | None:
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE users u SET disabled = true WHERE u.id = $1 RETURNING {_USER_COLS}", user_id
            )
            if row is None:
                return None
            keys = await conn.fetch(
                f"UPDATE api_keys k SET revoked_at = $2 WHERE k.user_id = $1 AND k.revoked_at IS NULL"
                f" RETURNING {_KEY_COLS}",
                user_id,
                _dt(now),
            )
        return _user(row), [_key(k) for k in keys]

    async def create_key(self, key: ApiKey, key_hash: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO api_keys (id, user_id, name, key_prefix, key_hint, key_hash, created_at, expires_at,"
                " allowed_models, limits, cache, upstream_key)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11::jsonb, $12)",
                key.id,
                key.user_id,
                key.name,
                key.key_prefix,
                key.key_hint,
                key_hash,
                _dt(key.created_at),
                _dt(key.expires_at),
                encode_models(key.allowed_models),
                encode_limits(key.limits),
                encode_cache(key.cache),
                key.upstream_key,
            )

    async def get_key(self, key_id: str) -> ApiKey | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.id = $1", key_id)
        return _key(row) if row else None

    async def list_keys(self, limit: int, after: str | None, user_id: str | None = None) -> list[ApiKey]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_KEY_COLS} FROM api_keys k WHERE ($1::text IS NULL OR k.id > $1)"
                " AND ($2::text IS NULL OR k.user_id = $2) ORDER BY k.id LIMIT $3",
                after,
                user_id,
                limit,
            )
        return [_key(r) for r in rows]

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> ApiKey | None:
        if not changes:
            return await self.get_key(key_id)
        clause, args = _set_clause(changes, KEY_FIELDS)
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"UPDATE api_keys k SET {clause} WHERE k.id = $1 RETURNING {_KEY_COLS}", key_id, *args
            )
        return _key(row) if row else None

    async def revoke_key(self, key_id: str, now: int) -> ApiKey | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"UPDATE api_keys k SET revoked_at = COALESCE(k.revoked_at, $2) WHERE k.id = $1 RETURNING {_KEY_COLS}",
                key_id,
                _dt(now),
            )
        return _key(row) if row else None

    async def find_key(self, key_hash: str) -> KeyGrant | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_KEY_COLS}, k.key_hash, u.id AS u_id, u.name AS u_name, u.email AS u_email,"
                " u.created_at AS u_created_at, u.disabled AS u_disabled, u.limits AS u_limits,"
                " u.upstream_key AS u_upstream_key"
                " FROM api_keys k LEFT JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1",
                key_hash,
            )
        if row is None:
            return None
        user = _user(row, "u_") if row["u_id"] is not None else None
        return KeyGrant(key=_key(row), key_hash=row["key_hash"], user=user)

    async def touch_keys(self, used: Mapping[str, int]) -> None:
        if not used:
            return
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE api_keys k SET last_used_at = to_timestamp(v.ts) FROM unnest($1::text[], $2::bigint[])"
                " AS v(id, ts) WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < to_timestamp(v.ts))",
                list(used),
                list(used.values()),
            )

    async def list_entries(self, kind: str) -> list[tuple[str, str]]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT name, body FROM config_entries WHERE kind = $1 ORDER BY name", kind)
        return [(r["name"], r["body"]) for r in rows]

    async def put_entry(self, kind: str, name: str, body: str, now: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO config_entries (kind, name, body, created_at, updated_at)"
                " VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($4))"
                " ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                kind,
                name,
                body,
                now,
            )

    async def delete_entry(self, kind: str, name: str) -> bool:
        async with self._conn() as conn:
            status: str = await conn.execute("DELETE FROM config_entries WHERE kind = $1 AND name = $2", kind, name)
        return status != "DELETE 0"
