"""Creating users and keys, shared by the admin API and the CLI so both follow the same rules."""

from __future__ import annotations

import time

from fastproxy.accounts import keys
from fastproxy.accounts.admin_schemas import KeyCreated
from fastproxy.core.schemas import KeyCache, Limits
from fastproxy.store import ApiKey, Store, User, new_id


async def create_user(
    store: Store, name: str, email: str | None = None, limits: Limits | None = None, upstream_key: str | None = None
) -> User:
    now = int(time.time())
    user = User(id=new_id("user_"), name=name, email=email, created_at=now, limits=limits, upstream_key=upstream_key)
    await store.create_user(user)
    return user


async def create_key(
    store: Store,
    name: str,
    user_id: str | None = None,
    allowed_models: list[str] | None = None,
    expires_at: int | None = None,
    limits: Limits | None = None,
    cache: KeyCache | None = None,
    upstream_key: str | None = None,
) -> KeyCreated:
    """Generate a key and store its hash; the returned object is the only place the key ever appears."""
    secret = keys.generate_key()
    record = ApiKey(
        id=new_id("key_"),
        name=name,
        user_id=user_id,
        key_prefix=keys.display_prefix(secret),
        key_hint=keys.hint(secret),
        created_at=int(time.time()),
        expires_at=expires_at,
        allowed_models=allowed_models,
        limits=limits,
        cache=cache,
        upstream_key=upstream_key,
    )
    await store.create_key(record, keys.hash_key(secret))
    fields = {name: getattr(record, name) for name in record.__struct_fields__}
    return KeyCreated(**fields, key=secret)
