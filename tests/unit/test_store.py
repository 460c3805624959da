"""The Store contract, against a real PostgreSQL and a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fastproxy.accounts import keys, provisioning
from fastproxy.core.schemas import Limits
from fastproxy.store import Store, open_store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await open_store(database_url)
    await s.migrate()
    yield s
    await s.close()


async def test_migrations_apply_once(database_url: str) -> None:
    s = await open_store(database_url)
    try:
        assert await s.migrate() == ["0001_init", "0002_usage", "0003_accounts"]
        assert await s.migrate() == []
        await s.ping()
    finally:
        await s.close()


async def test_user_crud(store: Store) -> None:
    user = await provisioning.create_user(store, "alice", "alice@example.com", Limits(rpm=10))
    assert await store.get_user(user.id) == user
    updated = await store.update_user(user.id, {"name": "Alice", "limits": None, "email": None})
    assert updated is not None and (updated.name, updated.limits, updated.email) == ("Alice", None, None)
    assert await store.update_user("user_nope", {"name": "x"}) is None
    assert await store.get_user("user_nope") is None


async def test_key_roundtrip_and_lookup_by_hash(store: Store) -> None:
    user = await provisioning.create_user(store, "bob", limits=Limits(tpm=1000))
    created = await provisioning.create_key(store, "ci", user.id, ["gpt-4o"], 4_000_000_000, Limits(rpm=5))
    stored = await store.get_key(created.id)
    assert stored is not None and stored.allowed_models == ["gpt-4o"] and stored.limits == Limits(rpm=5)
    assert stored.expires_at == 4_000_000_000
    grant = await store.find_key(keys.hash_key(created.key))
    assert grant is not None and grant.key.id == created.id and grant.user == user
    assert await store.find_key(keys.hash_key(keys.generate_key())) is None
    changed = await store.update_key(created.id, {"allowed_models": None, "expires_at": None, "name": "ci2"})
    assert changed is not None and (changed.allowed_models, changed.expires_at, changed.name) == (None, None, "ci2")


async def test_revoke_is_idempotent_and_keeps_first_time(store: Store) -> None:
    created = await provisioning.create_key(store, "k")
    first = await store.revoke_key(created.id, 1000)
    again = await store.revoke_key(created.id, 2000)
    assert first is not None and again is not None and first.revoked_at == again.revoked_at == 1000
    assert await store.revoke_key("key_nope", 1) is None


async def test_disable_user_revokes_its_live_keys_only(store: Store) -> None:
    user = await provisioning.create_user(store, "carol")
    other = await provisioning.create_user(store, "dave")
    a = await provisioning.create_key(store, "a", user.id)
    b = await provisioning.create_key(store, "b", user.id)
    c = await provisioning.create_key(store, "c", other.id)
    await store.revoke_key(b.id, 500)
    result = await store.disable_user(user.id, 900)
    assert result is not None
    disabled, revoked = result
    assert disabled.disabled and [k.id for k in revoked] == [a.id]
    assert (await store.get_key(b.id)).revoked_at == 500  # type: ignore[union-attr]
    assert (await store.get_key(c.id)).revoked_at is None  # type: ignore[union-attr]
    assert await store.disable_user("user_nope", 1) is None


async def test_pagination_in_creation_order(store: Store) -> None:
    user = await provisioning.create_user(store, "erin")
    created = [(await provisioning.create_key(store, f"k{i}", user.id)).id for i in range(7)]
    await provisioning.create_key(store, "someone else's")
    seen: list[str] = []
    after: str | None = None
    while page := await store.list_keys(3, after, user.id):
        seen.extend(k.id for k in page)
        after = page[-1].id
    assert seen == created


async def test_touch_keys_in_one_batch_never_goes_back(store: Store) -> None:
    a = await provisioning.create_key(store, "a")
    b = await provisioning.create_key(store, "b")
    await store.touch_keys({a.id: 2000, b.id: 3000})
    await store.touch_keys({a.id: 1000})
    assert (await store.get_key(a.id)).last_used_at == 2000  # type: ignore[union-attr]
    assert (await store.get_key(b.id)).last_used_at == 3000  # type: ignore[union-attr]
