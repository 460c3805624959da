"""Self-service accounts on SQLite: credentials, refresh-token families and sign-in nonces.

Mixed into SqliteStore (it provides `_errors()`, `_transaction()`, `_one()` and `get_user()`).
"""

from __future__ import annotations

from typing import Any

import aiosqlite

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


def _user(row: Any) -> User:
    return User(
        id=row[0],
        name=row[1],
        email=row[2],
        created_at=int(row[3]),
        disabled=bool(row[4]),
        limits=decode_limits(row[5]),
        upstream_key=row[6],
    )


class SqliteAccounts:
    _db: aiosqlite.Connection
    _errors: Any  # () -> AbstractAsyncContextManager[None]
    _transaction: Any  # (begin) -> AbstractAsyncContextManager[aiosqlite.Connection]
    _one: Any  # (sql, *args) -> Awaitable[sqlite3.Row | None]

    async def create_account(self, user: User, password_hash: str | None, wallet_address: str | None) -> bool:
        try:
            async with self._errors():
                await self._db.execute(
                    "INSERT INTO users (id, name, email, created_at, disabled, limits, password_hash, wallet_address)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        user.id,
                        user.name,
                        user.email,
                        user.created_at,
                        int(user.disabled),
                        encode_limits(user.limits),
                        password_hash,
                        wallet_address,
                    ),
                )
        except StoreConflict:
            return False
        return True

    async def find_login(self, email: str) -> Login | None:
        row = await self._one(f"SELECT {_COLS}, u.password_hash FROM users u WHERE lower(u.email) = lower(?)", email)
        return Login(_user(row), row[7]) if row else None

    async def find_wallet_user(self, wallet_address: str) -> User | None:
        row = await self._one(f"SELECT {_COLS} FROM users u WHERE u.wallet_address = ?", wallet_address)
        return _user(row) if row else None

    async def get_account(self, user_id: str) -> Account | None:
        row = await self._one(
            f"SELECT {_COLS}, u.wallet_address, u.allowed_models FROM users u WHERE u.id = ?", user_id
        )
        if row is None:
            return None
        return Account(user=_user(row), wallet_address=row[7], allowed_models=decode_models(row[8]))

    async def _update_user(self, sql: str, *args: Any) -> bool:
        async with self._errors():
            cur = await self._db.execute(sql, args)
            return bool(cur.rowcount)

    async def set_password(self, user_id: str, password_hash: str) -> bool:
        return await self._update_user("UPDATE users SET password_hash = ? WHERE id = ?", password_hash, user_id)

    async def set_user_models(self, user_id: str, models: list[str] | None) -> bool:
        return await self._update_user(
            "UPDATE users SET allowed_models = ? WHERE id = ?", encode_models(models), user_id
        )

    async def add_refresh_token(self, token_hash: str, family_id: str, user_id: str, now: int, expires_at: int) -> None:
        async with self._errors():
            await self._db.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token_hash, family_id, user_id, now, expires_at),
            )

    async def use_refresh_token(self, token_hash: str, now: int) -> RefreshUse | None:
        # IMMEDIATE: the check and the update are one step for every process sharing the file.
        async with self._transaction("BEGIN IMMEDIATE") as db:
            async with db.execute(
                "SELECT user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = ?",
                (token_hash,),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            user_id, family_id, expires_at, used_at, revoked_at = row
            if used_at is not None or revoked_at is not None:
                await db.execute(
                    "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE family_id = ?",
                    (now, family_id),
                )
                return RefreshUse(False, user_id, family_id)
            if expires_at <= now:
                return None
            await db.execute("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?", (now, token_hash))
            return RefreshUse(True, user_id, family_id)

    async def revoke_refresh_family(self, token_hash: str, now: int) -> bool:
        async with self._errors():
            cur = await self._db.execute(
                "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?)"
                " WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = ?)",
                (now, token_hash),
            )
            return bool(cur.rowcount)

    async def put_nonce(self, nonce: str, now: int, expires_at: int) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM auth_nonces WHERE expires_at <= ?", (now,))
            await db.execute("INSERT INTO auth_nonces (nonce, expires_at) VALUES (?, ?)", (nonce, expires_at))

    async def take_nonce(self, nonce: str, now: int) -> bool:
        async with (
            self._errors(),
            self._db.execute("DELETE FROM auth_nonces WHERE nonce = ? RETURNING expires_at", (nonce,)) as cur,
        ):
            row = await cur.fetchone()
        return row is not None and row[0] > now
