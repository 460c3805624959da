"""Other /v1/* requests go upstream as they are; credentials are swapped, hop-by-hop headers dropped."""

from __future__ import annotations

import base64

import httpx

from tests.integration.servers import Server


async def test_binary_response_streams_through(http: httpx.AsyncClient, proxy: Server) -> None:
    resp = await http.post(proxy.url + "/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "audio/mpeg"
    assert resp.content == b"".join(bytes([i]) * 1024 for i in range(4))


async def test_method_query_and_body_forwarded(http: httpx.AsyncClient, proxy: Server) -> None:
    resp = await http.request(
        "PUT", proxy.url + "/v1/files/file-123?purpose=batch&limit=2", content=b"\x00raw-bytes\xff"
    )
    assert resp.status_code == 200
    echo = resp.json()
    assert echo["method"] == "PUT"
    assert echo["path"] == "/v1/files/file-123"
    assert echo["query"] == "purpose=batch&limit=2"
    assert base64.b64decode(echo["body"]) == b"\x00raw-bytes\xff"


async def test_credentials_replaced_and_hop_headers_dropped(
    http: httpx.AsyncClient, proxy: Server, mock_upstream: Server
) -> None:
    await http.get(
        proxy.url + "/v1/files",
        headers={
            "authorization": "Bearer sk-fp-client-key",
            "x-api-key": "sk-fp-client-key",
            "cookie": "session=1",
            "proxy-authorization": "Basic abc",
            "x-custom": "kept",
            "x-request-id": "pass-1",
        },
    )
    seen = (await http.get(mock_upstream.url + "/_mock/last")).json()["headers"]
    assert seen["authorization"] == "Bearer sk-upstream-secret-1234"
    assert "x-api-key" not in seen and "cookie" not in seen and "proxy-authorization" not in seen
    assert seen["x-custom"] == "kept"
    assert seen["x-request-id"] == "pass-1"
    assert seen["host"] == f"127.0.0.1:{mock_upstream.port}"


async def test_request_id_generated_when_absent(http: httpx.AsyncClient, proxy: Server) -> None:
    a = await http.get(proxy.url + "/v1/models")
    b = await http.get(proxy.url + "/v1/models")
    assert a.headers["x-request-id"] and a.headers["x-request-id"] != b.headers["x-request-id"]
