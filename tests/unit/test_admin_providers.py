"""/admin/providers and /admin/routes on both store backends: validation naming the field, config entries
read-only, keys encrypted at rest and never shown, and the worker's router rebuilt on every change."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from fastproxy.core.providers import Provider, Route, Target
from fastproxy.core.settings import Settings, SettingsError
from fastproxy.server.state import State
from tests.unit.appclient import ADMIN_KEY, app_client

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SECRET_KEY = Fernet.generate_key().decode()
UPSTREAM_KEY = "sk-upstream-admin-test-0000wxyz"
CONFIG_PROVIDER = Provider(base_url="http://127.0.0.1:9/v1", api_key="sk-config-provider-key-9876")


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, State]]:
    async with app_client(
        database_url=database_url,
        secret_keys=SECRET_KEY,
        providers={"cfg": CONFIG_PROVIDER},
        routes={"cfg-model": Route(targets=[Target(provider="cfg")])},
    ) as (client, state):
        client.headers.update(ADMIN)
        yield client, state


def error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def assert_no_secret(text: str, secret: str) -> None:
    assert secret not in text
    assert hashlib.sha256(secret.encode()).hexdigest() not in text


PROVIDER = {"name": "acme", "base_url": "http://127.0.0.1:9/v1", "api_keys": [{"key": UPSTREAM_KEY, "weight": 2}]}


async def test_provider_and_route_lifecycle(admin: tuple[httpx.AsyncClient, State]) -> None:
    client, state = admin
    resp = await client.post("/admin/providers", json=PROVIDER)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["source"] == "database" and created["name"] == "acme"
    [key] = created["keys"]
    assert key["key_hint"] == "...wxyz" and key["weight"] == 2 and key["breaker"] == "closed"
    assert set(key) >= {"inflight", "ewma_ms", "ttft_ms", "last_error", "cooldown_remaining", "ratelimit"}
    live = state.router.providers["acme"]
    assert live.keys[0].headers[-1] == ("authorization", "Bearer " + UPSTREAM_KEY)

    resp = await client.post("/admin/routes", json={"name": "gpt-x", "targets": [{"provider": "acme", "model": "m"}]})
    assert resp.status_code == 201, resp.text
    assert resp.json()["source"] == "database" and resp.json()["targets"][0]["provider"] == "acme"
    route = state.router.resolve("gpt-x")
    assert route.name == "gpt-x" and route.groups[0][0].provider is live
    # /v1/models lists the new route at once (no restart), and resolves it.
    caller = {"Authorization": "Bearer " + (await client.post("/admin/keys", json={"name": "c"})).json()["key"]}
    models = await client.get("/v1/models", headers=caller)
    assert models.status_code == 200, models.text
    assert "gpt-x" in [m["id"] for m in models.json()["data"]]
    assert (await client.get("/v1/models/gpt-x", headers=caller)).json()["owned_by"] == "fastproxy"

    # A route change keeps the provider's live state; a provider change rebuilds it.
    live.keys[0].inflight = 7
    resp = await client.patch("/admin/routes/gpt-x", json={"max_attempts": 2})
    assert resp.status_code == 200 and resp.json()["max_attempts"] == 2
    assert state.router.providers["acme"] is live and state.router.resolve("gpt-x").max_attempts == 2
    listed = (await client.get("/admin/providers")).json()
    assert [(p["name"], p["source"]) for p in listed["data"]] == [
        ("default", "config"),
        ("cfg", "config"),
        ("acme", "database"),
    ]
    assert listed["data"][2]["keys"][0]["inflight"] == 7
    resp = await client.patch("/admin/providers/acme", json={"first_token_timeout": 5})
    assert resp.status_code == 200 and resp.json()["keys"][0]["key_hint"] == "...wxyz"  # keys kept
    assert state.router.providers["acme"] is not live and state.router.providers["acme"].first_token_timeout == 5

    # Still referenced by a route: deleting the provider would break it.
    body = error(await client.delete("/admin/providers/acme"), 409)
    assert "gpt-x" in body["message"]
    assert (await client.delete("/admin/routes/gpt-x")).status_code == 200
    assert (await client.delete("/admin/providers/acme")).status_code == 200
    assert "acme" not in state.router.providers and state.router.resolve("gpt-x").name == "default"
    assert (await client.get("/v1/models/gpt-x", headers=caller)).status_code == 404
    error(await client.get("/admin/providers/acme"), 404)

    # The stored key is a Fernet token, never the key; no response carried it.
    await client.post("/admin/providers", json=PROVIDER)
    assert state.store is not None
    [(name, stored)] = await state.store.list_entries("provider")
    assert name == "acme"
    assert_no_secret(stored, UPSTREAM_KEY)
    assert UPSTREAM_KEY in Fernet(SECRET_KEY.encode()).decrypt(stored.split('"key":"')[1].split('"')[0]).decode()
    assert_no_secret((await client.get("/admin/providers")).text, UPSTREAM_KEY)


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/admin/providers", {"name": "bad", "base_url": "ftp://x"}, "base_url", "base_url"),
        ("/admin/providers", {"name": "bad", "base_url": "http://x", "colour": 1}, "colour", "unknown field"),
        ("/admin/providers", {"name": "b a d", "base_url": "http://x"}, "name", "invalid name"),
        ("/admin/providers", {"base_url": "http://x"}, "name", "name"),
        ("/admin/providers", {"name": "bad", "base_url": "http://x", "api_keys": [{"key": ""}]}, "api_keys[0].key", ""),
        ("/admin/routes", {"name": "r", "targets": []}, "targets", "empty"),
        ("/admin/routes", {"name": "r", "targets": [{"provider": "nope"}]}, "targets[0].provider", "unknown provider"),
        ("/admin/routes", {"name": "r", "targets": [{"provider": "cfg", "weight": -1}]}, "targets[0].weight", ""),
    ],
)
async def test_validation_names_the_field(
    admin: tuple[httpx.AsyncClient, State], path: str, body: dict[str, Any], param: str | None, words: str
) -> None:
    client, state = admin
    err = error(await client.post(path, json=body), 400)
    assert err["param"] == param and words in err["message"]
    assert "bad" not in state.router.providers and "r" not in state.router.routes


async def test_bad_bodies(admin: tuple[httpx.AsyncClient, State]) -> None:
    client, _ = admin
    error(await client.post("/admin/providers", content=b"{"), 400)
    error(await client.post("/admin/providers", json=[1]), 400)
    error(await client.put("/admin/providers/x", json={}), 405)
    error(await client.patch("/admin/routes/nope", json={}), 404)
    error(await client.get("/admin/providers", headers={"Authorization": "Bearer wrong"}), 401)


async def test_config_entries_are_read_only(admin: tuple[httpx.AsyncClient, State]) -> None:
    client, _ = admin
    shown = (await client.get("/admin/providers/cfg")).json()
    assert shown["source"] == "config" and shown["keys"][0]["key_hint"] == "...9876"
    assert_no_secret(str(shown), CONFIG_PROVIDER.api_key)
    for resp in (
        await client.patch("/admin/providers/cfg", json={"first_token_timeout": 1}),
        await client.delete("/admin/routes/cfg-model"),
        await client.delete("/admin/providers/default"),
    ):
        assert "read-only" in error(resp, 409)["message"]
    assert "already exists" in error(await client.post("/admin/routes", json={"name": "cfg-model"}), 409)["message"]


async def test_storing_keys_needs_secret_keys(tmp_path: Any) -> None:
    async with app_client(database_url=f"sqlite:///{tmp_path / 'db'}") as (client, state):
        client.headers.update(ADMIN)
        err = error(await client.post("/admin/providers", json=PROVIDER), 503)
        assert "FASTPROXY_SECRET_KEYS" in err["message"]
        keyless = {"name": "local", "base_url": "http://127.0.0.1:9/v1"}
        assert (await client.post("/admin/providers", json=keyless)).status_code == 201
        assert "local" in state.router.providers


async def test_without_redis_other_workers_reload_periodically(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    settings: dict[str, Any] = {"database_url": url, "secret_keys": SECRET_KEY, "providers_reload_interval": 0.1}
    async with app_client(**settings) as (client_a, _), app_client(**settings) as (_, state_b):
        client_a.headers.update(ADMIN)
        assert (await client_a.post("/admin/providers", json=PROVIDER)).status_code == 201
        assert "acme" not in state_b.router.providers  # no Redis: not announced
        for _ in range(50):
            if "acme" in state_b.router.providers:
                break
            await asyncio.sleep(0.02)
        assert state_b.router.providers["acme"].keys[0].hint == "...wxyz"
    # A worker starting later loads the stored providers in lifespan, before its first request.
    async with app_client(**{**settings, "providers_reload_interval": 3600}) as (_, state_c):
        assert state_c.router.providers["acme"].keys[0].hint == "...wxyz"


def test_secret_keys_setting_is_checked_and_masked() -> None:
    with pytest.raises(SettingsError, match=r"secret_keys \(FASTPROXY_SECRET_KEYS\)"):
        Settings(secret_keys="not-a-fernet-key")
    other = Fernet.generate_key().decode()
    masked = Settings(secret_keys=f"{SECRET_KEY},{other}").masked()["secret_keys"]
    assert SECRET_KEY not in masked and other not in masked
