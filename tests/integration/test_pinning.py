"""Pinning a fastproxy key or user to a provider key, end to end: the mock counts which upstream key each
request carried (seed use case: each client team billed on its own upstream account)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.servers import Server, start_mock, start_proxy

pytestmark = pytest.mark.timeout(120)

ADMIN_KEY = "admin-pinning-secret-0042"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
POOL, TEAM_A, TEAM_B, OTHER_B = "sk-pool-key-1111", "sk-team-a-key-2222", "sk-team-b-key-3333", "sk-b-key-4444"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, Server]]:
    mock_a, mock_b = start_mock(), start_mock()
    providers = {
        "acct": {
            "base_url": mock_a.url + "/v1",
            "api_keys": [
                {"key": POOL, "id": "pool", "weight": 100},
                {"key": TEAM_A, "id": "team-a", "weight": 1},
                {"key": TEAM_B, "id": "team-b", "weight": 1},
            ],
        },
        # Comes first in the route, but holds only a key of its own: pinned callers never reach it.
        "shared": {"base_url": mock_b.url + "/v1", "api_key": OTHER_B},
    }
    routes = {"team-model": {"targets": [{"provider": "shared"}, {"provider": "acct"}]}}
    db: Path = tmp_path_factory.mktemp("pinning") / "keys.db"
    server = start_proxy(
        mock_a.url + "/v1",
        FASTPROXY_AUTH="keys",
        FASTPROXY_DATABASE_URL=f"sqlite:///{db}",
        FASTPROXY_ADMIN_KEY=ADMIN_KEY,
        FASTPROXY_PROVIDERS=json.dumps(providers),
        FASTPROXY_ROUTES=json.dumps(routes),
    )
    yield server, mock_a, mock_b
    server.stop()
    mock_a.stop()
    mock_b.stop()


async def _auth_counts(http: httpx.AsyncClient, mock: Server) -> dict[str, int]:
    counts: dict[str, int] = (await http.get(mock.url + "/_mock/stats")).json()["auth"]
    return counts


async def test_keys_and_users_pinned_to_provider_keys(proxy: tuple[Server, Server, Server]) -> None:
    server, mock_a, mock_b = proxy
    async with httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=10) as admin:
        bad = await admin.post("/admin/keys", json={"name": "typo", "upstream_key": "team-c"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "upstream_key"
        user = (await admin.post("/admin/users", json={"name": "team b", "upstream_key": "team-b"})).json()
        assert user["upstream_key"] == "team-b"
        key_a = (await admin.post("/admin/keys", json={"name": "a", "upstream_key": "team-a"})).json()
        key_b = (await admin.post("/admin/keys", json={"name": "b", "user_id": user["id"]})).json()
        free = (await admin.post("/admin/keys", json={"name": "free"})).json()
        assert key_a["upstream_key"] == "team-a" and key_b["upstream_key"] is None  # inherited at request time

        async def send(key: str, n: int) -> None:
            async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as sdk:
                for _ in range(n):
                    await sdk.chat.completions.create(model="team-model", messages=MESSAGES)

        await http_reset(admin, mock_a, mock_b)
        await send(key_a["key"], 20)
        assert await _auth_counts(admin, mock_a) == {"Bearer " + TEAM_A: 20}
        assert await _auth_counts(admin, mock_b) == {}

        await http_reset(admin, mock_a, mock_b)
        await send(key_b["key"], 20)  # the user's pin
        assert await _auth_counts(admin, mock_a) == {"Bearer " + TEAM_B: 20}

        await http_reset(admin, mock_a, mock_b)
        await send(free["key"], 10)  # unpinned: the route's first target, with its own key
        assert await _auth_counts(admin, mock_b) == {"Bearer " + OTHER_B: 10}

        # A pin changed through the admin API applies to the next request (the auth cache is invalidated).
        assert (await admin.patch(f"/admin/keys/{key_a['id']}", json={"upstream_key": "team-b"})).status_code == 200
        await http_reset(admin, mock_a, mock_b)
        await send(key_a["key"], 5)
        assert await _auth_counts(admin, mock_a) == {"Bearer " + TEAM_B: 5}

        # A model none of whose providers holds the pinned key: refused, never served on another account.
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key_a["key"], max_retries=0) as sdk:
            with pytest.raises(openai.PermissionDeniedError) as err:
                await sdk.chat.completions.create(model="shared/mock-model", messages=MESSAGES)
        assert err.value.code == "upstream_key_unavailable"
        assert "team-b" in err.value.message
        listed = (await admin.get("/admin/providers/acct")).text
        for secret in (POOL, TEAM_A, TEAM_B):
            assert secret not in listed


async def http_reset(http: httpx.AsyncClient, *mocks: Server) -> None:
    for mock in mocks:
        assert (await http.post(mock.url + "/_mock/reset")).status_code == 200
