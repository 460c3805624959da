"""Two proxies sharing Redis and PostgreSQL: a provider and a route created through A's admin API serve
requests through B within a second; the stored key is encrypted, rotation works from the CLI, and no
log line or admin response ever shows the upstream key or its SHA-256."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import asyncpg
import httpx
import openai
import pytest
from cryptography.fernet import Fernet, InvalidToken

from tests.integration.servers import Server, start_mock, start_proxy

ADMIN_KEY = "admin-key-for-e2e-providers-0001"
UPSTREAM_KEY = "sk-upstream-e2e-secret-0000qrst"


@pytest.fixture
def mock_b() -> Iterator[Server]:
    server = start_mock()
    yield server
    server.stop()


async def test_provider_created_on_a_serves_on_b(
    mock_upstream: Server, mock_b: Server, redis_url: str, redis_prefix: str, postgres_dsn: str
) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    env = {
        "FASTPROXY_REDIS_URL": redis_url,
        "FASTPROXY_REDIS_PREFIX": redis_prefix,
        "FASTPROXY_DATABASE_URL": postgres_dsn,
        "FASTPROXY_ADMIN_KEY": ADMIN_KEY,
        "FASTPROXY_SECRET_KEYS": old_key,
        "FASTPROXY_LOG_LEVEL": "debug",
    }
    proxy_a = start_proxy(mock_upstream.url + "/v1", **env)
    proxy_b = start_proxy(mock_upstream.url + "/v1", **env)
    responses: list[str] = []
    try:
        async with (
            httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin,
            openai.AsyncOpenAI(base_url=proxy_b.url + "/v1", api_key="sk-fp-anon", max_retries=0) as sdk,
        ):
            # Before: B sends the unknown model to the default provider, unchanged.
            before = await sdk.chat.completions.create(model="team-model", messages=[{"role": "user", "content": "hi"}])
            assert before.model == "team-model"

            provider = {"name": "team", "base_url": mock_b.url + "/v1", "api_key": UPSTREAM_KEY}
            route = {"name": "team-model", "targets": [{"provider": "team", "model": "served-by-b"}]}
            for path, body in (("/admin/providers", provider), ("/admin/routes", route)):
                resp = await admin.post(proxy_a.url + path, json=body)
                responses.append(resp.text)
                assert resp.status_code == 201, resp.text
            changed = time.monotonic()
            while True:
                answer = await sdk.chat.completions.create(
                    model="team-model", messages=[{"role": "user", "content": "hi"}]
                )
                if answer.model == "served-by-b":
                    print(f"B served the new route {1000 * (time.monotonic() - changed):.1f} ms after A's answer")
                    break
                assert time.monotonic() - changed < 1.0, "B did not pick up the route within 1 s"
                await asyncio.sleep(0.02)
            stats = (await admin.get(mock_b.url + "/_mock/stats")).json()
            # The decrypted key went upstream: with the one chat request, and listing b's models for /v1/models.
            assert set(stats["auth"]) == {"Bearer " + UPSTREAM_KEY}
            assert stats["models"] == {"served-by-b": 1}
            # /v1/models follows the admin API: the new route, and the new provider's own models.
            ids = {m.id async for m in sdk.models.list()}
            assert "team-model" in ids
            for _ in range(50):
                if "team/mock-model" in ids:
                    break
                await asyncio.sleep(0.02)
                ids = {m.id async for m in sdk.models.list()}
            assert "team/mock-model" in ids

            for url in (proxy_a.url, proxy_b.url):
                resp = await admin.get(url + "/admin/providers/team")
                responses.append(resp.text)
                assert resp.json()["keys"][0]["key_hint"] == "...qrst"
            responses.append((await admin.get(proxy_a.url + "/admin/providers")).text)

            # A deletion reaches B too.
            resp = await admin.delete(proxy_a.url + "/admin/routes/team-model")
            assert resp.status_code == 200
            await asyncio.sleep(1.0)
            after = await sdk.chat.completions.create(model="team-model", messages=[{"role": "user", "content": "x"}])
            assert after.model == "team-model"
            assert "team-model" not in {m.id async for m in sdk.models.list()}

        # The database column holds a Fernet token, not the key.
        conn = await asyncpg.connect(postgres_dsn)
        try:
            body = await conn.fetchval("SELECT body FROM config_entries WHERE kind = 'provider' AND name = 'team'")
            assert isinstance(body, str)
            assert UPSTREAM_KEY not in body and hashlib.sha256(UPSTREAM_KEY.encode()).hexdigest() not in body
            token = body.split('"api_key":"')[1].split('"')[0]
            assert Fernet(old_key.encode()).decrypt(token.encode()).decode() == UPSTREAM_KEY

            # Rotation: the new key first, the old one still decrypting.
            cli_env = {**os.environ, **env, "FASTPROXY_SECRET_KEYS": f"{new_key},{old_key}"}
            done = subprocess.run(
                [sys.executable, "-m", "fastproxy", "secrets", "rotate"],
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert "1 stored providers" in done.stdout
            assert UPSTREAM_KEY not in done.stdout + done.stderr
            rotated = await conn.fetchval("SELECT body FROM config_entries WHERE kind = 'provider' AND name = 'team'")
            token = rotated.split('"api_key":"')[1].split('"')[0]
            assert Fernet(new_key.encode()).decrypt(token.encode()).decode() == UPSTREAM_KEY
            with pytest.raises(InvalidToken):
                Fernet(old_key.encode()).decrypt(token.encode())
        finally:
            await conn.close()
    finally:
        proxy_a.stop_proc_only()
        proxy_b.stop_proc_only()
        logs = proxy_a.log() + proxy_b.log()
        proxy_a.stop()
        proxy_b.stop()
    digest = hashlib.sha256(UPSTREAM_KEY.encode()).hexdigest()
    assert "admin: provider 'team' created" in logs  # the logs were captured
    for text in [logs, *responses]:
        assert UPSTREAM_KEY not in text and digest not in text
