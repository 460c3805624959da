"""Self-service accounts on PostgreSQL: credentials, refresh-token families and sign-in nonces.

Mixed into PostgresStore (it provides `_conn()`, which maps asyncpg errors to StoreError).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastproxy.store import (
    Account,
    Login,
    RefreshUse,
    StoreConflict,
    User,
    decode_limits,
    decode_models,
    encode_limits,
    encode_models,
)

_COLS = "u.id, u.name, u.email, u.created_at, u.disabled, u.limits, u.upstream_key"


def _user(row: Mapping[str, Any]) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        created_at=int(row["created_at"].timestamp()),
        disabled=row["disabled"],
        limits=decode_limits(row["limits"]),
        upstream_key=row["upstream_key"],
    )


class PostgresAccounts:
    _conn: Any  # provided by PostgresStore: () -> AbstractAsyncContextManager[asyncpg.Connection]

    async def create_account(self, user: User, password_hash: str | None, wallet_address: str | None) -> bool:
        try:
            async with self._conn() as conn:
                await conn.execute(
                    "INSERT INTO users (id, name, email, created_at, disabled, limits, password_hash, wallet_address)"
                    " VALUES ($1, $2, $3, to_timestamp($4), $5, $6::jsonb, $7, $8)",
                    user.id,
                    user.name,
                    user.email,
                    user.created_at,
                    user.disabled,
                    encode_limits(user.limits),
                    password_hash,
                    wallet_address,
                )
        except StoreConflict:
            return False
        return True

    async def find_login(self, email: str) -> Login | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLS}, u.password_hash FROM users u WHERE lower(u.email) = lower($1)", email
            )
        return Login(_user(row), row["password_hash"]) if row else None

    async def find_wallet_user(self, wallet_address: str) -> User | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(f"SELECT {_COLS} FROM users u WHERE u.wallet_address = $1", wallet_address)
        return _user(row) if row else None

    async def get_account(self, user_id: str) -> Account | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLS}, u.wallet_address, u.allowed_models FROM users u WHERE u.id = $1", user_id
            )
        if row is None:
            return None
        return Account(
            user=_user(row), wallet_address=row["wallet_address"], allowed_models=decode_models(row["allowed_models"])
        )

    async def _update_user(self, sql: str, *args: Any) -> bool:
        async with self._conn() as conn:
            status: str = await conn.execute(sql, *args)
        return status != "UPDATE 0"

    async def set_password(self, user_id: str, password_hash: str) -> bool:
        return await self._update_user("UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash)

    async def set_user_models(self, user_id: str, models: list[str] | None) -> bool:
        return await self._update_user(
            "UPDATE users SET allowed_models = $2::jsonb WHERE id = $1", user_id, encode_models(models)
        )

    async def add_refresh_token(self, token_hash: str, family_id: str, user_id: str, now: int, expires_at: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                token_hash,
                family_id,
                user_id,
                now,
                expires_at,
            )

    async def use_refresh_token(self, token_hash: str, now: int) -> RefreshUse | None:
        async with self._conn() as conn, conn.transaction():
            # The row lock makes the check and the update one step: of two concurrent uses one wins.
            row = await conn.fetchrow(
                "SELECT user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens"
                " WHERE token_hash = $1 FOR UPDATE",
                token_hash,
            )
            if row is None:
                return None
            if row["used_at"] is not None or row["revoked_at"] is not None:
                await conn.execute(
                    "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE family_id = $1",
                    row["family_id"],
                    now,
                )
                return RefreshUse(False, row["user_id"], row["family_id"])
            if row["expires_at"] <= now:
                return None
            await conn.execute("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1", token_hash, now)
            return RefreshUse(True, row["user_id"], row["family_id"])

    async def revoke_refresh_family(self, token_hash: str, now: int) -> bool:
        async with self._conn() as conn:
            status: str = await conn.execute(
                "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, $2)"
                " WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
                token_hash,
                now,
            )
        return status != "UPDATE 0"

    async def put_nonce(self, nonce: str, now: int, expires_at: int) -> None:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("DELETE FROM auth_nonces WHERE expires_at <= $1", now)
            await conn.execute("INSERT INTO auth_nonces (nonce, expires_at) VALUES ($1, $2)", nonce, expires_at)

    async def take_nonce(self, nonce: str, now: int) -> bool:
        async with self._conn() as conn:
            expires_at = await conn.fetchval("DELETE FROM auth_nonces WHERE nonce = $1 RETURNING expires_at", nonce)
        return expires_at is not None and expires_at > now
