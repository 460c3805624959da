"""Streams pass through byte for byte, usage is captured for each, and a client leaving cancels upstream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.integration.servers import Server

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "Tell me a story"}], "stream": True}
COMPLETION = {"model": "mock-model", "prompt": "Once upon a time", "stream": True}
RESPONSES = {"model": "mock-model", "input": "Tell me a story", "stream": True}
CASES = {
    "chat": ("/v1/chat/completions", CHAT),
    "chat+usage": ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}}),
    "chat+usage-false": ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": False}}),
    "completions": ("/v1/completions", COMPLETION),
    "completions+usage": ("/v1/completions", {**COMPLETION, "stream_options": {"include_usage": True}}),
    "responses": ("/v1/responses", RESPONSES),
}


async def _raw(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[bytes, httpx.Headers]:
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        assert resp.status_code == 200
        data = b"".join([chunk async for chunk in resp.aiter_raw()])
        return data, resp.headers


def _access_records(server: Server) -> dict[str, dict[str, Any]]:
    records = {}
    text = server.log()
    # The log is read while the proxy writes it: a last line without its newline is not complete yet.
    complete = text[: text.rfind("\n") + 1]
    for line in complete.splitlines():
        if line.startswith('{"request_id"'):
            doc = json.loads(line)
            records[doc["request_id"]] = doc
    return records


async def _record(server: Server, request_id: str) -> dict[str, Any]:
    for _ in range(100):
        found = _access_records(server).get(request_id)
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no access record for {request_id}")


@pytest.mark.parametrize("case", list(CASES))
async def test_stream_bytes_identical_to_upstream(
    http: httpx.AsyncClient, proxy: Server, mock_upstream: Server, case: str
) -> None:
    path, body = CASES[case]
    headers = {"x-mock-chunks": "25"}
    direct, _ = await _raw(http, mock_upstream.url + path, body, headers)
    through, proxy_headers = await _raw(http, proxy.url + path, body, {**headers, "x-request-id": f"bytes-{case}"})
    assert through == direct
    assert proxy_headers["x-accel-buffering"] == "no"
    assert proxy_headers["x-request-id"] == f"bytes-{case}"
    # Usage is known for every stream, whether or not the client asked for it.
    record = await _record(proxy, f"bytes-{case}")
    assert record["stream"] is True
    assert record["usage"]["completion"] == 25
    assert record["usage"]["prompt"] > 0
    assert record["usage"]["total"] == record["usage"]["prompt"] + 25


async def test_usage_asked_on_clients_behalf(http: httpx.AsyncClient, proxy: Server, mock_upstream: Server) -> None:
    await _raw(http, proxy.url + "/v1/chat/completions", CHAT, {})
    last = (await http.get(mock_upstream.url + "/_mock/last")).json()
    import base64

    sent = json.loads(base64.b64decode(last["body"]))
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == CHAT["messages"]


async def test_client_disconnect_cancels_upstream(
    http: httpx.AsyncClient, proxy: Server, mock_upstream: Server
) -> None:
    before = (await http.get(mock_upstream.url + "/_mock/stats")).json()
    headers = {"x-mock-chunks": "200", "x-mock-delay-ms": "50", "x-request-id": "disconnect-1"}
    async with http.stream("POST", proxy.url + "/v1/chat/completions", json=CHAT, headers=headers) as resp:
        received = 0
        async for chunk in resp.aiter_raw():
            received += len(chunk)
            if received > 500:
                break
    # Closing the response closed our connection; the proxy must close its upstream one in turn.
    for _ in range(100):
        stats = (await http.get(mock_upstream.url + "/_mock/stats")).json()
        if stats["streams_disconnected"] > before["streams_disconnected"]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"upstream never saw the disconnect: {stats}")
    record = await _record(proxy, "disconnect-1")
    assert record["disconnected"] is True and record["status"] == 499
