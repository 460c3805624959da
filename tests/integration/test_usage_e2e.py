"""Usage accounting end to end: real Granian proxies writing to real PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.servers import Server, start_proxy
from tests.integration.usage_db import usage_list

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Count the tokens, please"}]
CHAT = {"model": "mock-model", "messages": MESSAGES}


def cost(prompt: int, completion: int) -> float:
    # mock-model in the shipped price table: $1 input, $2 output per million tokens.
    return (prompt * 1.0 + completion * 2.0) / 1e6


async def abandon_stream(http: httpx.AsyncClient, url: str, request_id: str) -> None:
    headers = {"x-mock-chunks": "200", "x-mock-delay-ms": "20", "x-request-id": request_id}
    async with http.stream("POST", url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers) as r:
        received = 0
        async for chunk in r.aiter_raw():
            received += len(chunk)
            if received > 800:
                break


async def test_every_request_leaves_exactly_one_priced_row(
    mock_upstream: Server, database_url: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    proxy = start_proxy(
        mock_upstream.url + "/v1",
        FASTPROXY_DATABASE_URL=database_url,
        FASTPROXY_USAGE_FLUSH_INTERVAL="60",  # only the shutdown flush can write these rows
        FASTPROXY_USAGE_JOURNAL_DIR=str(tmp_path / "journal"),
        FASTPROXY_PROVIDER_NAME="mock",
    )
    expected: dict[str, tuple[int, int]] = {}
    try:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as sdk:
            for i in range(5):
                resp = await sdk.chat.completions.create(**CHAT, extra_headers={"x-request-id": f"plain-{i}"})  # type: ignore[call-overload]
                assert resp.usage is not None
                expected[f"plain-{i}"] = (resp.usage.prompt_tokens, resp.usage.completion_tokens)
            for i in range(4):
                stream = await sdk.chat.completions.create(  # type: ignore[call-overload]
                    **CHAT, stream=True, extra_headers={"x-request-id": f"stream-{i}", "x-mock-chunks": "7"}
                )
                async for _ in stream:
                    pass
            for i in range(3):
                with pytest.raises(openai.InternalServerError):
                    await sdk.chat.completions.create(  # type: ignore[call-overload]
                        **CHAT, extra_headers={"x-request-id": f"fail-{i}", "x-mock-status": "500"}
                    )
            # A client reusing one x-request-id still pays for every request.
            for _ in range(3):
                await sdk.chat.completions.create(**CHAT, extra_headers={"x-request-id": "reused"})  # type: ignore[call-overload]
        for i in range(2):
            await abandon_stream(http, proxy.url, f"gone-{i}")
        await asyncio.sleep(0.5)  # the proxy notices the disconnects
    finally:
        proxy.stop_proc_only()
    everything = await usage_list(database_url)
    reused = [r for r in everything if r["client_request_id"] == "reused"]
    assert len(reused) == 3 and len({r["request_id"] for r in reused}) == 3
    assert all(r["cost_usd"] > 0 for r in reused)
    rows = {r["client_request_id"]: r for r in everything if r["client_request_id"] != "reused"}
    assert len(rows) == len(everything) - 3
    assert sorted(rows) == sorted(
        [*expected, *(f"stream-{i}" for i in range(4)), *(f"fail-{i}" for i in range(3)), "gone-0", "gone-1"]
    ), proxy.log()
    prompt = expected["plain-0"][0]
    for rid, (p, c) in expected.items():
        row = rows[rid]
        assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (p, c, p + c)
        assert row["cost_usd"] == pytest.approx(cost(p, c)) and row["cost_usd"] > 0
        assert (row["status"], row["streamed"], row["estimated"], row["provider"]) == (200, False, False, "mock")
    for i in range(4):
        row = rows[f"stream-{i}"]
        # The usage the proxy asked for on the client's behalf: 7 content chunks.
        assert (row["prompt_tokens"], row["completion_tokens"], row["streamed"], row["estimated"]) == (
            prompt,
            7,
            True,
            False,
        )
        assert row["cost_usd"] == pytest.approx(cost(prompt, 7))
    for i in range(3):
        row = rows[f"fail-{i}"]
        assert (row["status"], row["total_tokens"], row["cost_usd"]) == (500, 0, 0.0)
    for i in range(2):
        row = rows[f"gone-{i}"]
        assert row["status"] == 499 and row["estimated"] and row["streamed"]
        assert row["prompt_tokens"] > 0 and 1 <= row["completion_tokens"] < 200
        assert row["cost_usd"] == pytest.approx(cost(row["prompt_tokens"], row["completion_tokens"]))
    assert not list((tmp_path / "journal").glob("usage-*.jsonl"))
