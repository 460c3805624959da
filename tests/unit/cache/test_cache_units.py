"""The cache's pure parts and its in-process store: key, policy, LRU bound, coalescing, codec."""

from __future__ import annotations

import asyncio
import os
import tracemalloc

from fastproxy.cache.coalesce import Flights
from fastproxy.cache.entry import FORMAT, Entry, KeyMaker, decode, derive, encode
from fastproxy.cache.memory import MemoryStore
from fastproxy.cache.policy import Rule, cacheable, directives, resolve, scope_of
from fastproxy.cache.service import BYPASS, MISS, CacheConfig, Lookup, ResponseCache
from fastproxy.core.providers import RouteCache
from fastproxy.core.schemas import KeyCache, Principal

JSON = [(b"content-type", b"application/json")]


def entry(body: bytes, created: float = 0.0) -> Entry:
    return Entry(FORMAT, created, 200, False, JSON, [body], (3, 0, 3, 0, 0))


def test_the_key_covers_scope_endpoint_upstream_model_and_body() -> None:
    base = derive("user:a", "embeddings", "http://up/v1", "m", b"{}")
    assert base == derive("user:a", "embeddings", "http://up/v1", "m", b"{}")
    others = [
        derive("user:b", "embeddings", "http://up/v1", "m", b"{}"),
        derive("user:a", "chat.completions", "http://up/v1", "m", b"{}"),
        derive("user:a", "embeddings", "http://other/v1", "m", b"{}"),
        derive("user:a", "embeddings", "http://up/v1", "m2", b"{}"),
        derive("user:a", "embeddings", "http://up/v1", "m", b"{ }"),
        # Length prefixes: moving bytes between parts changes the key.
        derive("user:a", "embeddings", "http://up/v1m", "", b"{}"),
    ]
    assert len({k.digest for k in others} | {base.digest}) == len(others) + 1
    assert (base.scope, base.model) == ("user:a", "m") and len(base.digest) == 32


def test_scope_comes_from_the_principal() -> None:
    alice_1 = Principal(key_id="k1", user_id="alice")
    alice_2 = Principal(key_id="k2", user_id="alice")
    lone = Principal(key_id="k3")
    assert scope_of(alice_1, "user") == scope_of(alice_2, "user") == "user:alice"
    assert scope_of(alice_1, "key") != scope_of(alice_2, "key")
    assert scope_of(lone, "user") == "key:k3"
    assert scope_of(alice_1, "global") == scope_of(lone, "global") == "global"


def test_what_is_cacheable() -> None:
    assert cacheable("embeddings", None, None, "deterministic")
    assert cacheable("chat.completions", 0, None, "deterministic")
    assert cacheable("responses", 0.7, 42, "deterministic")
    assert not cacheable("chat.completions", 0.7, None, "deterministic")
    assert not cacheable("chat.completions", None, None, "deterministic")
    assert cacheable("completions", 1.0, None, "always")
    assert not cacheable("chat.completions", 0, 1, "never")
    assert not cacheable("models", 0, None, "always")


def test_cache_control() -> None:
    assert (directives(None).read, directives(None).store) == (True, True)
    d = directives(b"no-store")
    assert (d.read, d.store) == (False, False)
    d = directives(b"No-Cache, max-age=30")
    assert (d.read, d.store, d.max_age) == (False, True, 30)
    assert directives(b"max-age=abc, private").max_age is None


def test_lru_order_expiry_and_purge() -> None:
    store = MemoryStore(1024 * 1024)
    a, b, c = (derive(s, "embeddings", "u", "m", b"x") for s in ("user:a", "user:b", "user:c"))
    store.put(a, entry(b"A"), ttl=10, now=0)
    store.put(b, entry(b"B"), ttl=1, now=0)
    assert store.get(a, now=5) is not None
    assert store.get(b, now=5) is None  # expired, and removed
    store.put(c, entry(b"C"), ttl=10, now=5)
    assert store.purge(scope="user:c") == 1 and store.get(c, now=5) is None
    assert store.purge() == 1 and len(store) == 0 and store.bytes == 0
    small = MemoryStore(4096)
    assert not small.put(a, entry(b"x" * 5000), ttl=10, now=0)  # larger than the whole bound


def test_the_in_process_cache_stays_within_its_byte_bound_under_100000_entries() -> None:
    bound = 4 * 1024 * 1024
    store = MemoryStore(bound)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            key = derive("user:u", "embeddings", "http://up/v1", "m", os.urandom(16))
            store.put(key, entry(b"v" * (50 + i % 500), created=i), ttl=3600, now=0)
            assert store.bytes <= bound
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.evictions > 90_000
    # What Python really allocated for the entries kept is within the bound too.
    assert held <= bound, (held, bound)


def test_a_corrupt_entry_is_a_miss() -> None:
    good = encode(entry(b"body"))
    assert decode(good) == entry(b"body")
    assert decode(good[:-3]) is None
    assert decode(b"\x00garbage") is None
    other_version = encode(Entry(FORMAT + 1, 0.0, 200, False, JSON, [b"x"]))
    assert decode(other_version) is None


async def test_followers_read_the_leader_as_it_arrives_and_are_released_when_it_fails() -> None:
    flights = Flights()
    leader, leads = flights.join(b"d")
    follower, follows = flights.join(b"d")
    assert leads and not follows and follower is leader
    waiting = asyncio.ensure_future(follower.started())
    await asyncio.sleep(0)
    assert not waiting.done()
    leader.start(502, [])
    assert await waiting is False  # an upstream error is not fanned out: the follower goes upstream itself
    flights.leave(b"d", leader)
    ok, _ = flights.join(b"d")
    assert ok is not leader
    done = asyncio.ensure_future(ok.finished())
    ok.start(200, JSON)
    ok.add(b"part")
    await asyncio.sleep(0)
    assert not done.done()
    ok.end(True, (1, 1, 2, 0, 0))
    assert await done is True and ok.chunks == [b"part"]
    cut, _ = flights.join(b"e")
    later = asyncio.ensure_future(cut.finished())
    cut.end(False)  # the leader's client left before anything came
    assert await later is False


def test_route_and_key_settings_combine_field_by_field() -> None:
    default = Rule(enabled=True, scope="user", generations="deterministic", ttl=3600)
    assert resolve(default, None, None) is default
    route = RouteCache(scope="global", ttl=60, generations="always")
    assert resolve(default, route, None) == Rule(True, "global", "always", 60)
    # The key's fields over the route's; the shortest TTL of the two.
    assert resolve(default, route, KeyCache(scope="key", ttl=600)) == Rule(True, "key", "always", 60)
    assert resolve(default, route, KeyCache(ttl=5, generations="never")) == Rule(True, "global", "never", 5)
    # Off on either side is off, whatever the other says.
    assert not resolve(default, RouteCache(enabled=False), KeyCache(enabled=True)).enabled
    assert not resolve(default, route, KeyCache(enabled=False)).enabled
    # With the global default off, a route or a key that says true turns it on for its requests.
    off = Rule(enabled=False)
    assert resolve(off, None, None) is off and not off.enabled
    assert resolve(off, RouteCache(enabled=True), None).enabled
    assert resolve(off, None, KeyCache(enabled=True, scope="key")) == Rule(True, "key", "deterministic", 3600)
    assert not resolve(off, RouteCache(ttl=5), KeyCache(scope="key")).enabled


async def test_the_lookup_follows_the_route_and_the_key() -> None:
    cache = ResponseCache(CacheConfig(), memory=MemoryStore(1 << 20))
    alice = Principal(key_id="k1", user_id="alice")
    body = b'{"model":"m","temperature":0.7}'

    async def look(principal: Principal, route: RouteCache | None, endpoint: str = "chat.completions") -> Lookup:
        return await cache.lookup([], endpoint, principal, 0.7, None, "r|0", "m", body, route)

    assert (await look(alice, None)).header == BYPASS  # temperature 0.7: not deterministic
    widened = await look(alice, RouteCache(generations="always", scope="global", ttl=7))
    assert widened.header == MISS and widened.key is not None and widened.key.scope == "global"
    assert widened.ttl == 7
    own = Principal(key_id="k1", user_id="alice", cache=KeyCache(scope="key", generations="always"))
    keyed = await look(own, RouteCache(scope="global"))
    assert keyed.key is not None and keyed.key.scope == "key:k1"
    assert (await look(alice, RouteCache(enabled=False), "embeddings")).header == BYPASS
    assert cache.counts["bypass", "off"] == 1


def test_the_key_maker_agrees_with_derive() -> None:
    maker = KeyMaker()
    for scope, body in (("user:a", b"{}"), ("user:a", b"{ }"), ("user:b", b"{}"), ("user:a", b"{}")):
        assert maker.derive(scope, "embeddings", "r|0", "m", body) == derive(scope, "embeddings", "r|0", "m", body)
