"""Every bad input gets its status and an OpenAI-shaped error body; never a 500 or a hang."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.integration.servers import Server, start_proxy
from tests.services import free_port

CHAT = "/v1/chat/completions"
GOOD = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


def _assert_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


async def test_invalid_json(http: httpx.AsyncClient, proxy: Server) -> None:
    resp = await http.post(proxy.url + CHAT, content=b'{"model": "mock-model", "messages": [')
    _assert_error(resp, 400)
    assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("field", "value"),
    [("stream", "yes"), ("model", 42), ("max_tokens", "ten"), ("n", 1.5), ("stream_options", [])],
)
async def test_wrong_type_names_the_field(http: httpx.AsyncClient, proxy: Server, field: str, value: object) -> None:
    resp = await http.post(proxy.url + CHAT, json={**GOOD, field: value})
    _assert_error(resp, 400, param=field)


async def test_missing_model(http: httpx.AsyncClient, proxy: Server) -> None:
    resp = await http.post(proxy.url + "/v1/embeddings", json={"input": "x"})
    _assert_error(resp, 400, param="model")


async def test_body_not_an_object(http: httpx.AsyncClient, proxy: Server) -> None:
    _assert_error(await http.post(proxy.url + CHAT, json=[1, 2]), 400)


async def test_body_too_large_by_content_length(http: httpx.AsyncClient, small_proxy: Server) -> None:
    resp = await http.post(small_proxy.url + CHAT, content=b"x" * 5000)
    _assert_error(resp, 413, code="request_too_large")


async def test_body_too_large_streamed_without_length(http: httpx.AsyncClient, small_proxy: Server) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1000

    resp = await http.post(small_proxy.url + CHAT, content=body())
    _assert_error(resp, 413, code="request_too_large")


async def test_unknown_route(http: httpx.AsyncClient, proxy: Server) -> None:
    _assert_error(await http.get(proxy.url + "/v2/chat"), 404, code="unknown_url")


async def test_wrong_method(http: httpx.AsyncClient, proxy: Server) -> None:
    resp = await http.get(proxy.url + "/v1/embeddings")
    _assert_error(resp, 405)
    assert resp.headers["allow"] == "OPTIONS, POST"  # OPTIONS: CORS preflights (fastproxy.selfservice.web)


async def test_upstream_error_passes_through_unchanged(
    http: httpx.AsyncClient, proxy: Server, mock_upstream: Server
) -> None:
    headers = {"x-mock-status": "503"}
    direct = await http.post(mock_upstream.url + CHAT, json=GOOD, headers=headers)
    through = await http.post(proxy.url + CHAT, json=GOOD, headers=headers)
    assert through.status_code == direct.status_code == 503
    assert through.content == direct.content


async def test_upstream_unreachable(http: httpx.AsyncClient, dead_upstream_proxy: Server) -> None:
    _assert_error(await http.post(dead_upstream_proxy.url + CHAT, json=GOOD), 502, code="upstream_unreachable")
    stream = await http.post(dead_upstream_proxy.url + CHAT, json={**GOOD, "stream": True})
    _assert_error(stream, 502, code="upstream_unreachable")


async def test_readyz_names_the_failed_dependency(
    http: httpx.AsyncClient, dead_upstream_proxy: Server, proxy: Server
) -> None:
    assert (await http.get(proxy.url + "/readyz")).status_code == 200
    resp = await http.get(dead_upstream_proxy.url + "/readyz")
    # Named, but the instance stays ready: the upstream is every instance's (fastproxy.server.lifespan.degradable).
    assert resp.status_code == 200
    assert resp.json()["checks"]["upstream"]["ok"] is False and resp.json()["degraded"] == ["upstream"]
    assert "upstream" in resp.json()["message"]


async def test_upstream_timeout(http: httpx.AsyncClient, impatient_proxy: Server) -> None:
    resp = await http.post(impatient_proxy.url + CHAT, json=GOOD, headers={"x-mock-sleep-ms": "3000"})
    _assert_error(resp, 504, code="upstream_timeout")


async def test_health_and_root(http: httpx.AsyncClient, proxy: Server) -> None:
    assert (await http.get(proxy.url + "/health")).json() == {"status": "ok"}
    assert (await http.get(proxy.url + "/")).json()["name"] == "fastproxy"


@pytest.fixture(scope="module")
def small_proxy(mock_upstream: Server) -> Iterator[Server]:
    server = start_proxy(mock_upstream.url + "/v1", FASTPROXY_MAX_BODY_BYTES="2048")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dead_upstream_proxy() -> Iterator[Server]:
    server = start_proxy(f"http://127.0.0.1:{free_port()}/v1", FASTPROXY_CONNECT_TIMEOUT="1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def impatient_proxy(mock_upstream: Server) -> Iterator[Server]:
    server = start_proxy(mock_upstream.url + "/v1", FASTPROXY_READ_TIMEOUT="0.5")
    yield server
    server.stop()
