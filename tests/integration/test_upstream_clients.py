"""Both upstream clients keep the proxy's promises: chunk-by-chunk streams, exact bytes, cancellation.

`reqwest` is the default and runs under every other end-to-end test; `aiohttp` is checked here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.servers import Server, start_proxy
from tests.services import free_port

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


@pytest.fixture(scope="module", params=["reqwest", "aiohttp"])
def client_proxy(request: pytest.FixtureRequest, mock_upstream: Server) -> Iterator[Server]:
    server = start_proxy(mock_upstream.url + "/v1", FASTPROXY_UPSTREAM_CLIENT=request.param)
    yield server
    server.stop()


async def _stats(http: httpx.AsyncClient, mock: Server) -> dict[str, int]:
    stats: dict[str, int] = (await http.get(mock.url + "/_mock/stats")).json()
    return stats


async def test_first_chunk_arrives_before_upstream_finishes(
    http: httpx.AsyncClient, client_proxy: Server, mock_upstream: Server
) -> None:
    """Ordering, not timing: the first event is in the client's hands while upstream is still sending."""
    headers = {"x-mock-chunks": "30", "x-mock-delay-ms": "100"}
    completed = (await _stats(http, mock_upstream))["streams_completed"]
    async with http.stream("POST", client_proxy.url + "/v1/chat/completions", json=CHAT, headers=headers) as resp:
        chunks = resp.aiter_raw()
        first = await anext(chunks)
        assert first.startswith(b"data: ")
        assert (await _stats(http, mock_upstream))["streams_completed"] == completed
        rest = b"".join([chunk async for chunk in chunks])
    assert rest.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("usage", [False, True])
async def test_bytes_identical(
    http: httpx.AsyncClient, client_proxy: Server, mock_upstream: Server, usage: bool
) -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}} if usage else CHAT
    direct = (await http.post(mock_upstream.url + "/v1/chat/completions", json=body)).content
    through = (await http.post(client_proxy.url + "/v1/chat/completions", json=body)).content
    assert through == direct


async def test_disconnect_reaches_upstream(
    http: httpx.AsyncClient, client_proxy: Server, mock_upstream: Server
) -> None:
    before = (await _stats(http, mock_upstream))["streams_disconnected"]
    headers = {"x-mock-chunks": "200", "x-mock-delay-ms": "50"}
    async with http.stream("POST", client_proxy.url + "/v1/chat/completions", json=CHAT, headers=headers) as resp:
        await anext(resp.aiter_raw())
    for _ in range(100):
        if (await _stats(http, mock_upstream))["streams_disconnected"] > before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the upstream never saw the client leave")


@pytest.mark.parametrize("client", ["reqwest", "aiohttp"])
async def test_unreachable_and_timeout(http: httpx.AsyncClient, mock_upstream: Server, client: str) -> None:
    dead = start_proxy(f"http://127.0.0.1:{free_port()}/v1", FASTPROXY_UPSTREAM_CLIENT=client)
    slow = start_proxy(mock_upstream.url + "/v1", FASTPROXY_UPSTREAM_CLIENT=client, FASTPROXY_READ_TIMEOUT="0.5")
    try:
        resp = await http.post(dead.url + "/v1/chat/completions", json=CHAT)
        assert (resp.status_code, resp.json()["error"]["code"]) == (502, "upstream_unreachable")
        resp = await http.post(
            slow.url + "/v1/embeddings", json={"model": "m", "input": "x"}, headers={"x-mock-sleep-ms": "3000"}
        )
        assert (resp.status_code, resp.json()["error"]["code"]) == (504, "upstream_timeout")
    finally:
        dead.stop()
        slow.stop()
