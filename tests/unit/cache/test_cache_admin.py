"""The purge endpoints' paths and errors (the purges themselves run end to end in tests/integration/cache)."""

from __future__ import annotations

import pytest

from fastproxy.cache import admin
from fastproxy.cache.entry import derive
from fastproxy.cache.memory import MemoryStore
from fastproxy.cache.service import CacheConfig, ResponseCache
from fastproxy.core.errors import MethodNotAllowed, RouteNotFound
from tests.unit.cache.test_cache_units import entry


async def test_purge_by_scope_route_or_everything() -> None:
    cache = ResponseCache(CacheConfig(), memory=MemoryStore(1 << 20))
    for scope in ("user:u1", "key:k1", "global"):
        for model in ("m1", "m2"):
            assert cache.memory is not None
            cache.memory.put(derive(scope, "embeddings", "u", model, b"{}"), entry(b"x"), ttl=60, now=cache.clock())
    assert await admin.handle(cache, "DELETE", "/admin/cache/users/u1") == (
        200,
        {"object": "cache.purge", "deleted": 2, "backend": "memory"},
    )
    assert (await admin.handle(cache, "DELETE", "/admin/cache/models/m2"))[1]["deleted"] == 2
    assert (await admin.handle(cache, "DELETE", "/admin/cache/global"))[1]["deleted"] == 1
    assert (await admin.handle(cache, "DELETE", "/admin/cache/"))[1]["deleted"] == 1


async def test_purge_paths_and_methods() -> None:
    assert admin._target("/admin/cache/keys/k_1") == ("key:k_1", None)
    assert admin._target("/admin/cache/models/gpt-4o-mini") == (None, "gpt-4o-mini")
    with pytest.raises(RouteNotFound):
        admin._target("/admin/cache/teams/t1")
    with pytest.raises(MethodNotAllowed):
        await admin.handle(None, "GET", "/admin/cache")
    with pytest.raises(admin.CacheOff):
        await admin.handle(None, "DELETE", "/admin/cache")
