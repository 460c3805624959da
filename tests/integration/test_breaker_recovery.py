"""The default provider's breaker after an outage (regressions found by bench/chaos.py): the failures of
requests in flight when it opened do not stretch its cooldown, no request reaches the upstream during
the cooldown, and the first request after it probes and closes it."""

from __future__ import annotations

import asyncio

import httpx

from tests.integration.servers import Server, start_proxy

MESSAGES = [{"role": "user", "content": "hi"}]


async def _models(http: httpx.AsyncClient, mock: Server) -> dict[str, int]:
    models: dict[str, int] = (await http.get(mock.url + "/_mock/stats")).json()["models"]
    return models


async def test_an_outage_met_by_many_requests_at_once_recovers_after_one_cooldown(
    mock_upstream: Server, http: httpx.AsyncClient
) -> None:
    proxy = start_proxy(
        mock_upstream.url + "/v1",
        FASTPROXY_BREAKER_FAILURES="3",
        FASTPROXY_BREAKER_COOLDOWN="1",
        FASTPROXY_BREAKER_MAX_COOLDOWN="60",
    )
    url = proxy.url + "/v1/chat/completions"
    slow_failure = "mock-model~status=503,first_token_ms=300"  # 20 requests fail together, 0.3 s in
    healthy = "mock-model~ratelimit_remaining=500"  # a healthy model string of its own, to count it
    try:
        answers = await asyncio.gather(
            *(http.post(url, json={"model": slow_failure, "messages": MESSAGES}) for _ in range(20))
        )
        assert [a.status_code for a in answers] == [503] * 20
        before = (await _models(http, mock_upstream)).get(healthy, 0)
        resting = await http.post(url, json={"model": healthy, "messages": MESSAGES})
        assert resting.status_code == 503 and "resting" in resting.json()["error"]["message"]
        assert (await _models(http, mock_upstream)).get(healthy, 0) == before  # the cooldown kept it off
        # One cooldown (1 s), not one doubled by each of the 17 failures that came after the opening
        # (which reached the 60 s cap before the fix).
        await asyncio.sleep(1.3)
        recovered = await http.post(url, json={"model": healthy, "messages": MESSAGES})
        assert recovered.status_code == 200, recovered.text
    finally:
        proxy.stop()
