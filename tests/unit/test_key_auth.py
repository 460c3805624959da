"""KeyAuthenticator against real stores: every failure case, caching, query counts, batched last_used_at."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Literal

import pytest

from fastproxy.accounts import keys, provisioning
from fastproxy.accounts.auth import KeyAuthenticator
from fastproxy.accounts.lastused import LastUsedWriter
from fastproxy.core.errors import AuthenticationFailed, ServiceUnavailable
from fastproxy.core.schemas import Limits
from fastproxy.store import Store, open_store


class Queries:
    """Counts every statement the store sends to the database (asyncpg query logger / sqlite trace)."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def __call__(self, sql: str) -> None:
        self.sql.append(sql)

    def lookups(self) -> int:
        return sum("key_hash" in s and s.lstrip().upper().startswith("SELECT") for s in self.sql)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def counted(database_url: str) -> AsyncIterator[tuple[Store, Queries]]:
    queries = Queries()
    store = await open_store(database_url, on_query=queries)
    await store.migrate()
    yield store, queries
    await store.close()


def bearer(key: str) -> bytes:
    return b"Bearer " + key.encode()


async def fails(auth: KeyAuthenticator, header: bytes | None) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await auth.authenticate(header)
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    return info.value.message


async def test_every_failure_has_its_own_message(counted: tuple[Store, Queries]) -> None:
    store, _ = counted
    auth = KeyAuthenticator(store)
    user = await provisioning.create_user(store, "u")
    revoked = await provisioning.create_key(store, "r", user.id)
    await store.revoke_key(revoked.id, int(time.time()))
    expired = await provisioning.create_key(store, "e", user.id, expires_at=int(time.time()) - 10)
    other = await provisioning.create_user(store, "gone")
    orphaned = await provisioning.create_key(store, "o", other.id)
    await store.update_user(other.id, {"disabled": True})
    unknown = keys.generate_key()

    assert "didn't provide an API key" in await fails(auth, None)
    assert "didn't provide an API key" in await fails(auth, b"  ")
    assert "Malformed Authorization header" in await fails(auth, b"Basic dXNlcjpwYXNz")
    assert "Malformed Authorization header" in await fails(auth, b"Bearer ")
    assert "Malformed API key" in await fails(auth, b"Bearer sk-not-ours-0123456789")
    assert await fails(auth, bearer(unknown)) == f"Incorrect API key provided: sk-fp-...{unknown[-4:]}."
    assert "has been revoked" in await fails(auth, bearer(revoked.key))
    assert "expired at" in await fails(auth, bearer(expired.key))
    assert "is disabled" in await fails(auth, bearer(orphaned.key))


async def test_principal_carries_ids_limits_and_models(counted: tuple[Store, Queries]) -> None:
    store, _ = counted
    user = await provisioning.create_user(store, "u", limits=Limits(tpd=5))
    created = await provisioning.create_key(store, "k", user.id, ["a", "b"], limits=Limits(rpm=3))
    principal = await KeyAuthenticator(store).authenticate(bearer(created.key))
    assert principal.key_id == created.id and principal.user_id == user.id
    assert principal.key_hint == created.key[-4:]
    assert principal.key_limits == Limits(rpm=3) and principal.user_limits == Limits(tpd=5)
    assert principal.allowed_models == frozenset({"a", "b"})


async def test_no_query_per_request_in_steady_state(counted: tuple[Store, Queries]) -> None:
    store, queries = counted
    created = await provisioning.create_key(store, "k")
    auth = KeyAuthenticator(store, ttl=60)
    queries.sql.clear()
    for _ in range(1000):
        await auth.authenticate(bearer(created.key))
    assert len(queries.sql) == 1 and queries.lookups() == 1


async def test_unknown_keys_are_cached_but_bounded(counted: tuple[Store, Queries]) -> None:
    store, queries = counted
    auth = KeyAuthenticator(store, ttl=60, negative_size=10)
    unknown = keys.generate_key()
    queries.sql.clear()
    for _ in range(50):
        await fails(auth, bearer(unknown))
    assert queries.lookups() == 1
    for _ in range(100):
        await fails(auth, bearer(keys.generate_key()))
    assert auth.cached() <= 10


async def test_cache_expires_after_ttl(counted: tuple[Store, Queries]) -> None:
    store, queries = counted
    clock = Clock()
    created = await provisioning.create_key(store, "k")
    auth = KeyAuthenticator(store, ttl=5, clock=clock)
    await auth.authenticate(bearer(created.key))
    await store.revoke_key(created.id, int(time.time()))  # behind the cache's back: no invalidation
    clock.now += 4.9
    await auth.authenticate(bearer(created.key))  # still cached
    clock.now += 0.2
    assert "revoked" in await fails(auth, bearer(created.key))
    assert queries.lookups() == 2


async def test_eviction_reaches_the_cache_at_once(counted: tuple[Store, Queries]) -> None:
    store, _ = counted
    user = await provisioning.create_user(store, "u")
    a = await provisioning.create_key(store, "a", user.id)
    b = await provisioning.create_key(store, "b", user.id)
    auth = KeyAuthenticator(store, ttl=3600)
    await auth.authenticate(bearer(a.key))
    await auth.authenticate(bearer(b.key))
    await store.revoke_key(a.id, int(time.time()))
    auth.evict_key(a.id)
    assert "revoked" in await fails(auth, bearer(a.key))
    await store.update_user(user.id, {"disabled": True})
    auth.evict_user(user.id)
    assert "disabled" in await fails(auth, bearer(b.key))


async def test_last_used_written_in_one_batch(counted: tuple[Store, Queries]) -> None:
    store, queries = counted
    a = await provisioning.create_key(store, "a")
    b = await provisioning.create_key(store, "b")
    auth = KeyAuthenticator(store, ttl=60)
    writer = LastUsedWriter(auth.take_used, store, interval=3600)
    for _ in range(20):
        await auth.authenticate(bearer(a.key))
        await auth.authenticate(bearer(b.key))
    queries.sql.clear()
    await writer.flush()
    assert sum("last_used_at" in s for s in queries.sql) <= 2  # one UPDATE (sqlite traces executemany per row)
    for key_id in (a.id, b.id):
        got = await store.get_key(key_id)
        assert got is not None and got.last_used_at is not None and abs(got.last_used_at - time.time()) < 5
    queries.sql.clear()
    await writer.flush()
    assert queries.sql == []


@pytest.mark.parametrize("policy", ["stale", "closed"])
async def test_store_outage_policy(database_url: str, policy: Literal["stale", "closed"]) -> None:
    queries = Queries()
    store = await open_store(database_url, on_query=queries)
    await store.migrate()
    clock = Clock()
    created = await provisioning.create_key(store, "k")
    auth = KeyAuthenticator(store, ttl=5, clock=clock, on_store_error=policy)
    await auth.authenticate(bearer(created.key))
    await store.close()
    clock.now += 10
    if policy == "stale":
        for _ in range(100):
            principal = await auth.authenticate(bearer(created.key))
            assert principal.key_id == created.id
    else:
        with pytest.raises(ServiceUnavailable):
            await auth.authenticate(bearer(created.key))
    with pytest.raises(ServiceUnavailable):
        await auth.authenticate(bearer(keys.generate_key()))


def test_auth_keys_needs_a_database() -> None:
    from fastproxy.core.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="auth"):
        load_settings(environ={"FASTPROXY_DATABASE_URL": ""})
    assert load_settings(environ={"FASTPROXY_DATABASE_URL": "", "FASTPROXY_AUTH": "none"}).auth == "none"
    assert load_settings(environ={}).auth == "keys"
