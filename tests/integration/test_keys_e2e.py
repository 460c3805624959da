"""API keys end to end: real Granian proxies sharing PostgreSQL and Redis, the openai SDK as client."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from fastproxy.store import open_store
from tests.integration.servers import Server, start_proxy
from tests.services import free_port

ADMIN_KEY = "admin-e2e-secret-0042"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def two_proxies(mock_upstream: Server, postgres_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[list[Server]]:
    env = {
        "FASTPROXY_AUTH": "keys",
        "FASTPROXY_DATABASE_URL": postgres_dsn,
        "FASTPROXY_REDIS_URL": redis_url,
        "FASTPROXY_REDIS_PREFIX": redis_prefix,
        "FASTPROXY_ADMIN_KEY": ADMIN_KEY,
        # Long enough that only the pub/sub invalidation can explain a revocation seen within a second.
        "FASTPROXY_AUTH_CACHE_TTL": "60",
        "FASTPROXY_LAST_USED_FLUSH_INTERVAL": "0.2",
        "FASTPROXY_LOG_LEVEL": "debug",
    }
    servers = [start_proxy(mock_upstream.url + "/v1", **env) for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def client(server: Server, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


async def test_revoke_on_one_instance_401_on_the_other_within_a_second(
    two_proxies: list[Server], http: httpx.AsyncClient
) -> None:
    a, b = two_proxies
    user = (await http.post(a.url + "/admin/users", json={"name": "e2e"}, headers=ADMIN)).json()
    created = (await http.post(a.url + "/admin/keys", json={"name": "k", "user_id": user["id"]}, headers=ADMIN)).json()
    async with client(b, created["key"]) as sdk:
        resp = await sdk.chat.completions.create(model="mock-model", messages=MESSAGES)
        assert resp.choices[0].message.content
        revoked = await http.delete(a.url + f"/admin/keys/{created['id']}", headers=ADMIN)
        assert revoked.status_code == 200
        start = time.monotonic()
        message = ""
        while not message:
            try:
                await sdk.chat.completions.create(model="mock-model", messages=MESSAGES)
            except openai.AuthenticationError as exc:
                message = str(exc)
            else:
                assert time.monotonic() - start < 1.0, "instance B still accepts a key revoked on A"
                await asyncio.sleep(0.02)
        assert "revoked" in message
    # last_used_at is written in batches by the instance that served the requests.
    deadline = time.monotonic() + 5
    while (await http.get(a.url + f"/admin/keys/{created['id']}", headers=ADMIN)).json()["last_used_at"] is None:
        assert time.monotonic() < deadline, "last_used_at never written"
        await asyncio.sleep(0.1)


async def test_user_disable_reaches_the_other_instance(two_proxies: list[Server], http: httpx.AsyncClient) -> None:
    a, b = two_proxies
    user = (await http.post(a.url + "/admin/users", json={"name": "e2e"}, headers=ADMIN)).json()
    created = (await http.post(a.url + "/admin/keys", json={"name": "k", "user_id": user["id"]}, headers=ADMIN)).json()
    async with client(b, created["key"]) as sdk:
        await sdk.models.list()
        await http.delete(a.url + f"/admin/users/{user['id']}", headers=ADMIN)
        start = time.monotonic()
        while True:
            try:
                await sdk.models.list()
            except openai.AuthenticationError:
                break
            assert time.monotonic() - start < 1.0
            await asyncio.sleep(0.02)


async def test_failures_via_sdk_and_no_secret_in_logs_or_bodies(
    two_proxies: list[Server], http: httpx.AsyncClient, mock_upstream: Server
) -> None:
    a, b = two_proxies
    bodies: list[str] = []
    created = (
        await http.post(a.url + "/admin/keys", json={"name": "k", "allowed_models": ["mock-model"]}, headers=ADMIN)
    ).json()
    key = created["key"]
    async with client(b, key) as sdk:
        await sdk.chat.completions.create(model="mock-model", messages=MESSAGES)
        sent = (await http.get(mock_upstream.url + "/_mock/stats")).json()["requests"]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await sdk.chat.completions.create(model="other-model", messages=MESSAGES)
        assert denied.value.code == "model_not_allowed"
        # Refused before anything went upstream.
        assert (await http.get(mock_upstream.url + "/_mock/stats")).json()["requests"] == sent
        bodies.append(denied.value.response.text)
    for bad in [key[:-1], key + "Z", key[:-4] + "AAAA", "garbage"]:
        async with client(b, bad) as sdk:
            with pytest.raises(openai.AuthenticationError) as info:
                await sdk.chat.completions.create(model="mock-model", messages=MESSAGES)
            assert info.value.code == "invalid_api_key"
            bodies.append(info.value.response.text)
    no_key = await http.post(b.url + "/v1/chat/completions", json={"model": "mock-model", "messages": MESSAGES})
    assert no_key.status_code == 401 and "didn't provide an API key" in no_key.text
    await http.delete(a.url + f"/admin/keys/{created['id']}", headers=ADMIN)
    await asyncio.sleep(0.3)
    resp = await http.post(
        b.url + "/v1/chat/completions",
        json={"model": "mock-model", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status_code == 401 and "revoked" in resp.text
    bodies.append(resp.text)
    listing = await http.get(a.url + "/admin/keys", headers=ADMIN)
    bodies.append(listing.text)
    for server in (a, b):
        server.stop_proc_only()
    logs = a.log() + b.log()
    assert "admin: key" in logs and '"status":401' in logs  # the logs did capture the traffic
    digest = hashlib.sha256(key.encode()).hexdigest()
    for text in [logs, *bodies]:
        assert key not in text and key[:-1] not in text and digest not in text and ADMIN_KEY not in text


def _migrate(url: str) -> subprocess.Popen[str]:
    env = {"FASTPROXY_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_migrate_from_two_processes_at_once(database_url: str) -> None:
    procs = [_migrate(database_url) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Each migration is applied exactly once, by whichever process got its lock first.
    applied = [v for o in outputs if o.startswith("applied: ") for v in o.strip().removeprefix("applied: ").split(", ")]
    assert sorted(applied) == ["0001_init", "0002_usage", "0003_accounts"], outputs
    again = _migrate(database_url).communicate(timeout=60)[0]
    assert again.strip() == "database is up to date"
    if database_url.startswith("postgresql"):
        conn = await asyncpg.connect(database_url)
        rows = await conn.fetch("SELECT version FROM schema_migrations")
        await conn.close()
    else:
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
            rows = db.execute("SELECT version FROM schema_migrations").fetchall()
    assert sorted(tuple(r) for r in rows) == [("0001_init",), ("0002_usage",), ("0003_accounts",)]


def test_cli_keys_against_the_same_database(tmp_path: Path) -> None:
    env = {"FASTPROXY_DATABASE_URL": f"sqlite:///{tmp_path / 'fp.db'}", "PATH": "/usr/bin:/bin"}

    def run(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "fastproxy", *argv], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    user_id = run("users", "create", "--name", "ops", "--rpm", "60").strip()
    out = run("keys", "create", "--name", "ci", "--user", user_id, "--models", "a,b", "--tpm", "100")
    key = re.search(r"key: (sk-fp-\w+)", out).group(1)  # type: ignore[union-attr]
    key_id = re.search(r"id:  (key_\w+)", out).group(1)  # type: ignore[union-attr]
    listing = run("keys", "list")
    assert key_id in listing and "active" in listing and key not in listing and key[-4:] in listing
    run("keys", "revoke", key_id)
    assert "revoked" in run("keys", "list", "--user", user_id)
    failed = subprocess.run(
        [sys.executable, "-m", "fastproxy", "keys", "revoke", "key_nope"], env=env, capture_output=True, text=True
    )
    assert failed.returncode == 1 and "no API key" in failed.stderr


async def test_demo_prints_a_working_key(tmp_path: Path) -> None:
    env = {"FASTPROXY_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}"}
    demo = Server(["demo", "--upstream-port", str(free_port())], env)
    try:
        match = None
        deadline = time.monotonic() + 15
        while match is None and time.monotonic() < deadline:
            match = re.search(r'api_key="(sk-fp-\w+)"', demo.log())
            await asyncio.sleep(0.1)
        assert match is not None, demo.log()
        async with client(demo, match.group(1)) as sdk:
            resp = await sdk.chat.completions.create(model="mock-model", messages=MESSAGES)
            assert resp.choices[0].message.content
        async with client(demo, "sk-fp-demo") as sdk:
            with pytest.raises(openai.AuthenticationError):
                await sdk.models.list()
    finally:
        demo.stop()


async def test_readyz_pings_database_and_redis(two_proxies: list[Server], http: httpx.AsyncClient) -> None:
    doc = (await http.get(two_proxies[0].url + "/readyz")).json()
    assert doc["checks"]["database"]["ok"] is True and doc["checks"]["redis"]["ok"] is True


async def test_last_used_flushed_at_shutdown(mock_upstream: Server, tmp_path: Path, http: httpx.AsyncClient) -> None:
    url = f"sqlite:///{tmp_path / 'fp.db'}"
    proxy = start_proxy(
        mock_upstream.url + "/v1",
        FASTPROXY_AUTH="keys",
        FASTPROXY_DATABASE_URL=url,
        FASTPROXY_ADMIN_KEY=ADMIN_KEY,
        FASTPROXY_LAST_USED_FLUSH_INTERVAL="3600",
    )
    try:
        created = (await http.post(proxy.url + "/admin/keys", json={"name": "k"}, headers=ADMIN)).json()
        async with client(proxy, created["key"]) as sdk:
            await sdk.models.list()
        got = (await http.get(proxy.url + f"/admin/keys/{created['id']}", headers=ADMIN)).json()
        assert got["last_used_at"] is None  # not written per request
    finally:
        proxy.stop()
    store = await open_store(url)
    try:
        key = await store.get_key(created["id"])
    finally:
        await store.close()
    assert key is not None and key.last_used_at is not None
