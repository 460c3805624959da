"""max_budget_usd end to end: a key is cut off with 429 insufficient_quota at the right request."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.servers import Server, start_proxy
from tests.integration.usage_db import usage_rows

ADMIN_KEY = "admin-budget-secret-0042"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "What does it cost?"}]


def proxy_env(postgres_dsn: str, tmp: str, **extra: str) -> dict[str, str]:
    return {
        "FASTPROXY_AUTH": "keys",
        "FASTPROXY_DATABASE_URL": postgres_dsn,
        "FASTPROXY_ADMIN_KEY": ADMIN_KEY,
        "FASTPROXY_USAGE_JOURNAL_DIR": tmp,
        **extra,
    }


async def chat(server: Server, key: str) -> openai.types.chat.ChatCompletion:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as sdk:
        return await sdk.chat.completions.create(model="mock-model", messages=MESSAGES)


async def test_key_budget_cuts_off_at_the_right_request_and_survives_a_restart(
    mock_upstream: Server,
    postgres_dsn: str,
    redis_url: str,
    redis_prefix: str,
    http: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    env = proxy_env(postgres_dsn, str(tmp_path), FASTPROXY_REDIS_URL=redis_url, FASTPROXY_REDIS_PREFIX=redis_prefix)
    proxy = start_proxy(mock_upstream.url + "/v1", **env)
    try:
        probe = (await http.post(proxy.url + "/admin/keys", json={"name": "probe"}, headers=ADMIN)).json()
        usage = (await chat(proxy, probe["key"])).usage
        assert usage is not None
        one = (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6  # mock-model prices
        budget = 2.5 * one
        created = (
            await http.post(
                proxy.url + "/admin/keys", json={"name": "capped", "limits": {"max_budget_usd": budget}}, headers=ADMIN
            )
        ).json()
        key = created["key"]
        for _ in range(3):  # spent before each: 0, 1x, 2x the cost of one request, all under 2.5x
            await chat(proxy, key)
        sent = (await http.get(mock_upstream.url + "/_mock/stats")).json()["requests"]
        with pytest.raises(openai.RateLimitError) as info:
            await chat(proxy, key)
        assert info.value.code == "insufficient_quota" and info.value.status_code == 429
        assert "insufficient_quota" in info.value.response.text
        # Refused before anything went upstream; the probe key (no budget) still works.
        assert (await http.get(mock_upstream.url + "/_mock/stats")).json()["requests"] == sent
        await chat(proxy, probe["key"])
    finally:
        proxy.stop_proc_only()

    # A fresh instance without Redis rebuilds spend from the usage table: still cut off.
    proxy = start_proxy(mock_upstream.url + "/v1", **proxy_env(postgres_dsn, str(tmp_path)))
    try:
        with pytest.raises(openai.RateLimitError) as info:
            await chat(proxy, key)
        assert info.value.code == "insufficient_quota"
        raised = await http.patch(
            proxy.url + f"/admin/keys/{created['id']}", json={"limits": {"max_budget_usd": 10 * one}}, headers=ADMIN
        )
        assert raised.status_code == 200
        await chat(proxy, key)
    finally:
        proxy.stop_proc_only()
    rows = await usage_rows(postgres_dsn)
    capped = sorted((r["status"], r["error"]) for r in rows.values() if r["key_id"] == created["id"])
    assert capped == [(200, None)] * 4 + [(429, "insufficient_quota")] * 2
    spent = sum(r["cost_usd"] for r in rows.values() if r["key_id"] == created["id"])
    assert spent == pytest.approx(4 * one)
