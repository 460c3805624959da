"""Per-route cache settings end to end: routes from FASTPROXY_ROUTES and from the admin API, each with its
own `cache` table (on/off, scope, TTL, the deterministic rule widened or narrowed), and a key's own
settings over the route's. Real Granian proxy, PostgreSQL, Redis, a mock upstream, the openai SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from cryptography.fernet import Fernet

from tests.integration.cache.test_cache_e2e import ADMIN, ADMIN_KEY, new_key, new_user, sdk, upstream_requests
from tests.integration.servers import Server, start_mock, start_proxy

EMBED = "text-embedding-3-small"


@pytest.fixture
def upstream() -> Iterator[Server]:
    server = start_mock()
    yield server
    server.stop()


@pytest.fixture
def proxy(upstream: Server, postgres_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Server]:
    target = [{"provider": "mock", "model": EMBED}]
    routes = {
        "emb-global": {"targets": target, "cache": {"scope": "global", "ttl": 1}},
        "emb-off": {"targets": target, "cache": {"enabled": False}},
        "chat-always": {"targets": [{"provider": "mock"}], "cache": {"generations": "always"}},
        "chat-never": {"targets": [{"provider": "mock"}], "cache": {"generations": "never"}},
    }
    server = start_proxy(
        upstream.url + "/v1",
        FASTPROXY_AUTH="keys",
        FASTPROXY_DATABASE_URL=postgres_dsn,
        FASTPROXY_REDIS_URL=redis_url,
        FASTPROXY_REDIS_PREFIX=redis_prefix,
        FASTPROXY_ADMIN_KEY=ADMIN_KEY,
        FASTPROXY_SECRET_KEYS=Fernet.generate_key().decode(),
        FASTPROXY_CACHE="true",
        FASTPROXY_CACHE_LOCAL_TTL="0",
        FASTPROXY_PROVIDERS=json.dumps({"mock": {"base_url": upstream.url + "/v1"}}),
        FASTPROXY_ROUTES=json.dumps(routes),
        FASTPROXY_USAGE_JOURNAL_DIR=str(tmp_path / "journal"),
    )
    yield server
    server.stop()


async def embed(client: openai.AsyncOpenAI, model: str, text: str) -> str:
    raw = await client.embeddings.with_raw_response.create(model=model, input=text)
    return raw.headers["x-fastproxy-cache"]


async def chat(client: openai.AsyncOpenAI, model: str, temperature: float) -> str:
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "route rule"}], temperature=temperature
    )
    return raw.headers["x-fastproxy-cache"]


async def test_routes_from_the_config_set_scope_ttl_off_and_the_rule(
    proxy: Server, upstream: Server, http: httpx.AsyncClient
) -> None:
    alice, bob = await new_user(http, proxy), await new_user(http, proxy)
    ka, kb = await new_key(http, proxy, alice), await new_key(http, proxy, bob)
    async with sdk(proxy, ka["key"]) as a, sdk(proxy, kb["key"]) as b:
        # scope "global" on the route: another user's identical request is a hit (the default, user, never is).
        assert await embed(a, "emb-global", "shared") == "miss"
        base = await upstream_requests(http, upstream)
        assert await embed(b, "emb-global", "shared") == "hit"
        assert await upstream_requests(http, upstream) == base
        # ttl = 1 s on the route: the entry is gone after it.
        await asyncio.sleep(1.2)
        assert await embed(b, "emb-global", "shared") == "miss"
        # enabled = false: never read, never written.
        assert [await embed(a, "emb-off", "x") for _ in range(2)] == ["bypass", "bypass"]
        # generations = "always" widens the rule: temperature 0.7 is cached on that route only.
        assert [await chat(a, "chat-always", 0.7) for _ in range(2)] == ["miss", "hit"]
        # generations = "never" narrows it: temperature 0 is not cached there.
        assert [await chat(a, "chat-never", 0) for _ in range(2)] == ["bypass", "bypass"]


async def test_route_and_key_cache_settings_through_the_admin_api(
    proxy: Server, upstream: Server, http: httpx.AsyncClient
) -> None:
    user = await new_user(http, proxy)
    key = await new_key(http, proxy, user)
    route = {"name": "emb-admin", "targets": [{"provider": "mock", "model": EMBED}], "cache": {"enabled": False}}
    created = await http.post(proxy.url + "/admin/routes", json=route, headers=ADMIN)
    assert created.status_code == 201, created.text
    shown = (await http.get(proxy.url + "/admin/routes/emb-admin", headers=ADMIN)).json()
    assert shown["cache"] == {"enabled": False}
    bad = await http.post(
        proxy.url + "/admin/routes", json={**route, "name": "bad", "cache": {"scope": "tenant"}}, headers=ADMIN
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert "cache" in bad.json()["error"]["message"]
    async with sdk(proxy, key["key"]) as client:
        assert await embed(client, "emb-admin", "admin") == "bypass"
        # The route turned on again, with a 1 s TTL: cached from the next request on.
        patched = await http.patch(proxy.url + "/admin/routes/emb-admin", json={"cache": {"ttl": 1}}, headers=ADMIN)
        assert patched.status_code == 200, patched.text
        deadline = time.monotonic() + 5
        while await embed(client, "emb-admin", "admin") != "miss":
            assert time.monotonic() < deadline, "the route change did not arrive"
            await asyncio.sleep(0.05)
        assert await embed(client, "emb-admin", "admin") == "hit"
        # Purge by route (the model the client names): that route's entries only.
        assert await embed(client, "emb-global", "admin") == "miss"
        purged = await http.delete(proxy.url + "/admin/cache/routes/emb-admin", headers=ADMIN)
        assert purged.status_code == 200 and purged.json()["deleted"] == 1
        assert await embed(client, "emb-admin", "admin") == "miss"
        assert await embed(client, "emb-global", "admin") == "hit"
        # The key's own setting over the route's: generations "never" does not touch embeddings, but a key
        # turned off is never cached, whatever its route says.
        resp = await http.patch(
            proxy.url + f"/admin/keys/{key['id']}",
            json={"cache": {"enabled": False, "ttl": 30, "generations": "always"}},
            headers=ADMIN,
        )
        assert resp.status_code == 200 and resp.json()["cache"] == {
            "enabled": False,
            "ttl": 30,
            "generations": "always",
        }
        deadline = time.monotonic() + 5
        while await embed(client, "emb-admin", "admin") != "bypass":
            assert time.monotonic() < deadline, "the key change did not arrive"
            await asyncio.sleep(0.05)
