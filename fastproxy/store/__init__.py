"""Persistence of users and API keys (and, later, usage) behind one interface, two backends.

`open_store(url)` picks the backend from the URL: `postgresql://` (asyncpg pool, production) or
`sqlite:///path` (one aiosqlite connection in WAL mode, the embedded default). Both apply the
versioned SQL files under `migrations/<dialect>/` in order, each in its own transaction, recorded in
`schema_migrations`, serialised across processes (an advisory lock on PostgreSQL, BEGIN IMMEDIATE
on SQLite) so that several instances starting at once are safe.

Timestamps cross this interface as Unix seconds (int); `limits` as `Limits`; `allowed_models` as a
list of names or None (every model). Nothing here ever sees a full API key, only its SHA-256 hash.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from fastproxy.core.errors import InvalidRequest
from fastproxy.core.schemas import KeyCache, Limits

if TYPE_CHECKING:
    from fastproxy.usage.query import UsageQuery, UsageRecord, UsageSummary
    from fastproxy.usage.row import UsageRow

# Called with the text of every statement sent to the database (tests count queries with it).
QueryHook = Callable[[str], None]

USER_FIELDS = frozenset({"name", "email", "limits", "disabled", "upstream_key"})
KEY_FIELDS = frozenset({"name", "limits", "allowed_models", "expires_at", "cache", "upstream_key"})


class StoreError(Exception):
    """The database failed or is unreachable; the message never holds a secret."""


class StoreConflict(StoreError):
    """A value that must be unique is taken (a user's email, ignoring case, or wallet address)."""


class StoreInvalidValue(StoreError):
    """The database refused a value the client sent (a NUL character in a string, an integer beyond 64 bits):
    the client's error (400), not the database's (503)."""


def invalid_value() -> InvalidRequest:
    """What a client is told when the database refused one of its values."""
    return InvalidRequest("Invalid request: a value is not storable (a NUL character, or an integer beyond 64 bits).")


class User(msgspec.Struct, kw_only=True):
    id: str
    object: str = "user"
    name: str
    email: str | None = None
    created_at: int
    disabled: bool = False
    limits: Limits | None = None
    # The id of the provider key this user's requests are served with (migration 0007); None: the pool.
    upstream_key: str | None = None


class ApiKey(msgspec.Struct, kw_only=True):
    """An API key as operators see it: never the key, never its hash."""

    id: str
    object: str = "api_key"
    name: str
    user_id: str | None = None
    # Display form, e.g. "sk-fp-AbCd"; key_hint is the last 4 characters.
    key_prefix: str
    key_hint: str
    created_at: int
    last_used_at: int | None = None
    expires_at: int | None = None
    revoked_at: int | None = None
    allowed_models: list[str] | None = None
    limits: Limits | None = None
    # Response-cache settings of this key (migration 0005; JSON, so new fields need no migration);
    # None: the route's and the global ones.
    cache: KeyCache | None = None
    # The id of the provider key this key's requests are served with, over its user's (migration 0007).
    upstream_key: str | None = None


class KeyGrant(msgspec.Struct, frozen=True):
    """What authentication needs to know about one key hash."""

    key: ApiKey
    key_hash: str
    user: User | None


class Account(msgspec.Struct, kw_only=True):
    """A user as the self-service API sees it (fastproxy.selfservice); never the password hash."""

    user: User
    wallet_address: str | None = None
    # Models the user's self-service keys may be limited to; None: every model.
    allowed_models: list[str] | None = None


class Login(msgspec.Struct, frozen=True):
    """What a password sign-in needs: the user and its argon2 hash (None: no password set)."""

    user: User
    password_hash: str | None


class RefreshUse(msgspec.Struct, frozen=True):
    """The outcome of presenting a refresh token.

    `fresh`: it was live and is now used (rotate it). Not fresh, with a family: it had been used or
    revoked before, so it was presented twice (stolen-token detection) and its whole family is now revoked.
    """

    fresh: bool
    user_id: str
    family_id: str


class Store(Protocol):
    """Every method raises StoreError when the database fails; ids that do not exist give None."""

    dialect: str

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the versions applied by this call (empty when up to date)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    async def create_user(self, user: User) -> None: ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def list_users(self, limit: int, after: str | None) -> list[User]:
        """Users ordered by id (ids sort by creation time), the first `limit` with id > `after`."""
        ...

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> User | None:
        """Set the given USER_FIELDS; an empty mapping just reads the user."""
        ...

    async def disable_user(self, user_id: str, now: int) -> tuple[User, list[ApiKey]] | None:
        """Disable the user and revoke its live keys in one transaction; returns the keys it revoked."""
        ...

    async def create_key(self, key: ApiKey, key_hash: str) -> None: ...

    async def get_key(self, key_id: str) -> ApiKey | None: ...

    async def list_keys(self, limit: int, after: str | None, user_id: str | None = None) -> list[ApiKey]: ...

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> ApiKey | None:
        """Set the given KEY_FIELDS; an empty mapping just reads the key."""
        ...

    async def revoke_key(self, key_id: str, now: int) -> ApiKey | None:
        """Mark the key revoked (idempotent: the first revocation time is kept)."""
        ...

    async def find_key(self, key_hash: str) -> KeyGrant | None:
        """The key with this SHA-256 hex hash and its user, in one query."""
        ...

    async def touch_keys(self, used: Mapping[str, int]) -> None:
        """Set last_used_at for many keys in one round trip (key id -> Unix seconds)."""
        ...

    # -- self-service accounts (fastproxy.selfservice) -----------------------------------------------
    async def create_account(self, user: User, password_hash: str | None, wallet_address: str | None) -> bool:
        """Insert a user with its credentials; False (nothing written) when the email or wallet is taken."""
        ...

    async def find_login(self, email: str) -> Login | None:
        """The user whose email matches case-insensitively."""
        ...

    async def find_wallet_user(self, wallet_address: str) -> User | None: ...

    async def get_account(self, user_id: str) -> Account | None: ...

    async def set_password(self, user_id: str, password_hash: str) -> bool:
        """False when there is no such user."""
        ...

    async def set_user_models(self, user_id: str, models: list[str] | None) -> bool:
        """Limit the user's self-service keys to `models` (None: every model); False when there is no such user."""
        ...

    async def add_refresh_token(
        self, token_hash: str, family_id: str, user_id: str, now: int, expires_at: int
    ) -> None: ...

    async def use_refresh_token(self, token_hash: str, now: int) -> RefreshUse | None:
        """Mark a live token used, atomically (of two concurrent uses one wins). A token used or revoked
        before revokes its family. None: unknown or expired."""
        ...

    async def revoke_refresh_family(self, token_hash: str, now: int) -> bool:
        """Revoke the family of this token (logout); False when the token is unknown."""
        ...

    async def put_nonce(self, nonce: str, now: int, expires_at: int) -> None:
        """Store a sign-in nonce (and drop expired ones)."""
        ...

    async def take_nonce(self, nonce: str, now: int) -> bool:
        """Delete the nonce; True only if it existed and had not expired (single use)."""
        ...

    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        """Insert usage rows in one transaction, skipping request_ids already stored; return how many were new."""
        ...

    async def spend_totals(self) -> tuple[dict[str, float], dict[str, float]]:
        """Total cost_usd per key id and per user id, over every usage row."""
        ...

    async def list_usage(self, q: UsageQuery) -> list[UsageRecord]:
        """Usage records matching the filters, ordered by id, the first `q.limit` with id > `q.after`."""
        ...

    async def usage_summary(self, q: UsageQuery) -> UsageSummary:
        """Totals of the records matching the filters (the cursor is ignored), by model and by UTC day."""
        ...

    async def list_entries(self, kind: str) -> list[tuple[str, str]]:
        """(name, JSON body) of every stored provider or route (`kind`), by name (migration 0006)."""
        ...

    async def put_entry(self, kind: str, name: str, body: str, now: int) -> None:
        """Create or replace the provider or route `name`."""
        ...

    async def delete_entry(self, kind: str, name: str) -> bool:
        """False when there was none."""
        ...


def new_id(prefix: str) -> str:
    """A random id that sorts by creation time (nanoseconds first), so `after` cursors follow creation order.

    Pagination only needs a stable total order, which any id gives; the clock prefix makes it creation order.
    """
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(6)}"


def migrations(dialect: str) -> list[tuple[str, str]]:
    """(version, SQL text) of every migration file for `dialect`, in order."""
    folder = resources.files("fastproxy.store").joinpath("migrations", dialect)
    files = sorted((f.name, f) for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for name, f in files]


def encode_limits(limits: Limits | None) -> str | None:
    return None if limits is None else msgspec.json.encode(limits).decode()


def decode_limits(text: str | None) -> Limits | None:
    return None if text is None else msgspec.json.decode(text, type=Limits)


def encode_cache(cache: KeyCache | None) -> str | None:
    return None if cache is None else msgspec.json.encode(cache).decode()


def decode_cache(text: str | None) -> KeyCache | None:
    return None if text is None else msgspec.json.decode(text, type=KeyCache)


def encode_models(models: list[str] | None) -> str | None:
    return None if models is None else msgspec.json.encode(models).decode()


def decode_models(text: str | None) -> list[str] | None:
    return None if text is None else msgspec.json.decode(text, type=list[str])


async def open_store(url: str, on_query: QueryHook | None = None, pool_size: int = 10) -> Store:
    """Connect to the database named by `url`; raises StoreError if it cannot."""
    if url.startswith(("postgresql://", "postgres://")):
        from fastproxy.store.postgres import PostgresStore

        return await PostgresStore.open(url, on_query=on_query, pool_size=pool_size)
    if url.startswith("sqlite://"):
        from fastproxy.store.sqlite import SqliteStore

        return await SqliteStore.open(url, on_query=on_query)
    raise StoreError("unsupported database URL: expected sqlite:///path or postgresql://...")
