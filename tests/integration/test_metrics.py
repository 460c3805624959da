"""/metrics under Granian with 2 workers: exact totals over both, bounded labels, formats, the metrics port."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.servers import Server, start_proxy
from tests.services import free_port

CHAT = "/v1/chat/completions"
ENDPOINTS = {"chat.completions", "completions", "embeddings", "responses", "models", "passthrough"}


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def _total(text: str, name: str, **labels: str) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    return sum(v for n, lab, v in _samples(text) if n == name and labels.items() <= lab.items())


def _access_pids(server: Server) -> Counter[int]:
    return Counter(json.loads(line)["pid"] for line in server.log().splitlines() if line.startswith('{"request_id"'))


async def _one(client: httpx.AsyncClient, url: str, kind: str, seen: dict[str, Any]) -> None:
    """Send one request of `kind`, adding to `seen` what the client observed."""
    if kind == "chat":
        resp = await client.post(
            url + CHAT, json={"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
        )
        usage = resp.json()["usage"]
    elif kind == "stream":
        body = {"model": "mock-model", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
        usage = {}
        async with client.stream("POST", url + CHAT, json=body) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: {") and '"usage":{' in line:
                    usage = json.loads(line[6:])["usage"]
    elif kind == "embed":
        resp = await client.post(url + "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hello"})
        usage = resp.json()["usage"]
    else:  # an upstream 429, passed through: not one of the proxy's own rejections
        resp = await client.post(
            url + CHAT, json={"model": "mock-model", "messages": []}, headers={"x-mock-status": "429"}
        )
        usage = {}
    seen["status"][(kind, resp.status_code)] += 1
    seen["prompt"] += usage.get("prompt_tokens", 0)
    seen["completion"] += usage.get("completion_tokens", 0)


@pytest.fixture(scope="module")
def two_workers(mock_upstream: Server) -> Iterator[Server]:
    server = start_proxy(mock_upstream.url + "/v1", FASTPROXY_WORKERS="2")
    yield server
    server.stop()


async def test_exact_totals_summed_over_two_workers(http: httpx.AsyncClient, two_workers: Server) -> None:
    seen: dict[str, Any] = {"status": Counter(), "prompt": 0, "completion": 0}
    kinds = ["chat", "stream", "embed", "chat", "stream", "upstream429"]
    # Separate clients, so separate connections that the kernel spreads over both workers' accepts.
    clients = [httpx.AsyncClient(timeout=30) for _ in range(8)]
    try:
        for _round in range(20):
            await asyncio.gather(
                *(
                    _one(c, two_workers.url, kinds[(i + j) % len(kinds)], seen)
                    for i, c in enumerate(clients)
                    for j in range(3)
                )
            )
            if len(_access_pids(two_workers)) >= 2 and _round >= 1:
                break
    finally:
        for c in clients:
            await c.aclose()
    sent = sum(seen["status"].values())
    # Both workers served some of them (their pids are in the access lines), or the test proves nothing.
    await _until(lambda: sum(_access_pids(two_workers).values()) == sent)
    pids = _access_pids(two_workers)
    assert len(pids) == 2, pids

    chat_ok = seen["status"][("chat", 200)] + seen["status"][("stream", 200)]
    upstream_429 = seen["status"][("upstream429", 429)]
    assert chat_ok > 0 and upstream_429 > 0
    assert seen["prompt"] > 0 and seen["completion"] > 0
    expected = {
        ("fastproxy_requests_total", ()): sent,
        ("fastproxy_requests_total", (("endpoint", "chat.completions"), ("status", "2xx"))): chat_ok,
        ("fastproxy_requests_total", (("endpoint", "embeddings"), ("status", "2xx"))): seen["status"][("embed", 200)],
        ("fastproxy_requests_total", (("endpoint", "chat.completions"), ("status", "4xx"))): upstream_429,
        ("fastproxy_tokens_total", (("kind", "prompt"),)): seen["prompt"],
        ("fastproxy_tokens_total", (("kind", "completion"),)): seen["completion"],
        ("fastproxy_upstream_errors_total", (("kind", "rate_limited"),)): upstream_429,
        ("fastproxy_rate_limit_rejections_total", ()): 0,
        ("fastproxy_request_duration_seconds_count", ()): sent,
        ("fastproxy_upstream_ttfb_seconds_count", ()): seen["status"][("stream", 200)],
        ("fastproxy_requests_in_flight", ()): 0,
    }

    async def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (await http.get(two_workers.url + "/metrics")).text
        return {(name, labels): _total(text, name, **dict(labels)) for name, labels in expected}

    # A worker hands its record to the observers just after the response's last byte, and a scrape
    # is no snapshot (another worker may be mid-flush while its files are read, as with any Prometheus
    # exporter): every total must reach what was sent, and stay there.
    await _until_async(scraped, expected)
    assert await scraped() == expected
    # Every worker answers for the whole instance.
    again = (await http.get(two_workers.url + "/metrics")).text
    assert _total(again, "fastproxy_requests_total") == sent


async def test_openmetrics_when_asked(http: httpx.AsyncClient, two_workers: Server) -> None:
    resp = await http.get(
        two_workers.url + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.endswith("# EOF\n")
    plain = await http.get(two_workers.url + "/metrics")
    assert plain.headers["content-type"].startswith("text/plain")


async def test_server_timing_on_proxied_responses(http: httpx.AsyncClient, two_workers: Server) -> None:
    resp = await http.post(two_workers.url + CHAT, json={"model": "mock-model", "messages": []})
    match = re.fullmatch(r"proxy;dur=(\d+\.\d\d), upstream;dur=(\d+\.\d\d)", resp.headers["server-timing"])
    assert match, resp.headers["server-timing"]
    assert float(match[2]) > 0
    async with http.stream("POST", two_workers.url + CHAT, json={"model": "m", "messages": [], "stream": True}) as s:
        assert s.headers["server-timing"].startswith("proxy;dur=")
    # An answer the proxy gave by itself carries its own time only.
    refused = await http.post(two_workers.url + CHAT, content=b"{not json")
    assert refused.status_code == 400
    assert re.fullmatch(r"proxy;dur=\d+\.\d\d", refused.headers["server-timing"])


async def test_readyz_reports_each_dependency(http: httpx.AsyncClient, two_workers: Server) -> None:
    resp = await http.get(two_workers.url + "/readyz")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["status"] == "ready" and doc["checks"]["upstream"]["ok"] is True


@pytest.fixture(scope="module")
def bounded(mock_upstream: Server) -> Iterator[Server]:
    server = start_proxy(mock_upstream.url + "/v1", FASTPROXY_WORKERS="2", FASTPROXY_METRICS_MAX_MODELS="3")
    yield server
    server.stop()


async def test_label_sets_stay_bounded(http: httpx.AsyncClient, bounded: Server) -> None:
    async def flood(client: httpx.AsyncClient, i: int) -> None:
        await client.post(bounded.url + CHAT, json={"model": f"typo-{i}", "messages": []})
        await client.post(bounded.url + f"/v1/unknown-{i}", json={})
        await client.get(bounded.url + f"/nowhere-{i}")

    clients = [httpx.AsyncClient(timeout=30) for _ in range(4)]
    try:
        await asyncio.gather(*(flood(clients[i % 4], i) for i in range(120)))
    finally:
        for c in clients:
            await c.aclose()
    await _until_async(lambda: _scraped_total(http, bounded.url, endpoint="chat.completions"), 120)
    text = (await http.get(bounded.url + "/metrics")).text
    requests = [lab for n, lab, _ in _samples(text) if n == "fastproxy_requests_total"]
    models = {lab["model"] for lab in requests}
    # At most max_models per worker, plus `other` and `none`, whatever was sent.
    assert "other" in models and len(models - {"other", "none"}) <= 2 * 3, models
    assert {lab["endpoint"] for lab in requests} <= ENDPOINTS
    assert {lab["status"] for lab in requests} <= {"2xx", "3xx", "4xx", "5xx"}
    assert "unknown-" not in text and "nowhere-" not in text
    assert len(_samples(text)) < 400


async def test_metrics_on_their_own_port(http: httpx.AsyncClient, mock_upstream: Server) -> None:
    port = free_port()
    server = start_proxy(mock_upstream.url + "/v1", FASTPROXY_WORKERS="2", FASTPROXY_METRICS_PORT=str(port))
    try:
        await http.post(server.url + CHAT, json={"model": "mock-model", "messages": []})
        assert (await http.get(server.url + "/metrics")).status_code == 404
        # The master serves this port: it sees a worker's requests after that worker's next flush.
        metrics_url = f"http://127.0.0.1:{port}"
        await _until_async(lambda: _scraped_total(http, metrics_url, endpoint="chat.completions", status="2xx"), 1)
    finally:
        server.stop()


async def test_text_access_log(http: httpx.AsyncClient, mock_upstream: Server) -> None:
    server = start_proxy(mock_upstream.url + "/v1", FASTPROXY_LOG_FORMAT="text")
    try:
        await http.post(
            server.url + CHAT, json={"model": "mock-model", "messages": []}, headers={"x-request-id": "txt-1"}
        )
        await _until(lambda: "id=txt-1" in server.log())
        line = next(line for line in server.log().splitlines() if "id=txt-1" in line)
        assert "access 200 POST /v1/chat/completions model=mock-model" in line and "tokens=" in line
    finally:
        server.stop()


async def _until(condition: Any, tries: int = 200) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met")


async def _scraped_total(http: httpx.AsyncClient, base_url: str, **labels: str) -> float:
    return _total((await http.get(base_url + "/metrics")).text, "fastproxy_requests_total", **labels)


async def _until_async(value: Any, expected: object, tries: int = 100) -> None:
    got = None
    for _ in range(tries):
        got = await value()
        if got == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expected}, last saw {got}")


async def test_in_flight_gauge_rises_and_falls(http: httpx.AsyncClient, two_workers: Server) -> None:
    async def in_flight() -> float:
        return _total((await http.get(two_workers.url + "/metrics")).text, "fastproxy_requests_in_flight")

    slow = asyncio.ensure_future(
        http.post(
            two_workers.url + CHAT, json={"model": "mock-model", "messages": []}, headers={"x-mock-sleep-ms": "2500"}
        )
    )
    try:
        await _until_async(in_flight, 1)
    finally:
        resp = await slow
    assert resp.status_code == 200
    await _until_async(in_flight, 0)


async def test_rate_limit_rejections_summed_over_two_workers(
    http: httpx.AsyncClient, mock_upstream: Server, redis_url: str, redis_prefix: str
) -> None:
    """A global rpm shared through Redis: the proxy's own 429s, counted once each over both workers."""
    limit = 12
    server = start_proxy(
        mock_upstream.url + "/v1",
        FASTPROXY_WORKERS="2",
        FASTPROXY_REDIS_URL=redis_url,
        FASTPROXY_REDIS_PREFIX=redis_prefix,
        FASTPROXY_GLOBAL_LIMITS=json.dumps({"rpm": limit}),
    )
    clients = [httpx.AsyncClient(timeout=30) for _ in range(6)]
    statuses: Counter[int] = Counter()
    try:

        async def one(client: httpx.AsyncClient) -> None:
            body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
            statuses[(await client.post(server.url + CHAT, json=body)).status_code] += 1

        await asyncio.gather(*(one(c) for c in clients for _ in range(6)))
        await _until(lambda: sum(_access_pids(server).values()) == 36)
        assert len(_access_pids(server)) == 2, _access_pids(server)
        assert statuses == {200: limit, 429: 36 - limit}
        await _until_async(lambda: _scraped_total(http, server.url), 36)
        text = (await http.get(server.url + "/metrics")).text
        assert _total(text, "fastproxy_rate_limit_rejections_total", kind="rate") == 36 - limit
        assert _total(text, "fastproxy_requests_total", status="4xx") == 36 - limit
        assert _total(text, "fastproxy_upstream_errors_total") == 0
    finally:
        for c in clients:
            await c.aclose()
        server.stop()
