"""The usage API on both store backends: own records and totals per key, operators' views, bad parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fastproxy.server.state import State
from fastproxy.usage.row import UsageRow
from tests.unit.appclient import ADMIN_KEY, app_client

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
DAY = 86_400
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def row(rid: str, key: str, user: str | None, model: str, ts: float, prompt: int, completion: int) -> UsageRow:
    return UsageRow(
        request_id=rid,
        ts=ts,
        key_id=key,
        user_id=user,
        model=model,
        upstream_model=model,
        provider="mock",
        endpoint="chat.completions",
        streamed=False,
        status=200,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_usd=(prompt + 2 * completion) / 1e6,
        latency_ms=5.0,
        ttfb_ms=None,
        client_ip="127.0.0.1",
        error=None,
        estimated=False,
    )


@pytest.fixture
async def setup(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, State, dict[str, Any]]]:
    async with app_client(database_url=database_url, auth="keys") as (client, state):
        user = (await client.post("/admin/users", json={"name": "u"}, headers=ADMIN)).json()
        a = (await client.post("/admin/keys", json={"name": "a", "user_id": user["id"]}, headers=ADMIN)).json()
        b = (await client.post("/admin/keys", json={"name": "b"}, headers=ADMIN)).json()
        assert state.store is not None
        await state.store.write_usage(
            [
                row("a1", a["id"], user["id"], "gpt-4o", T0 + 10, 100, 10),
                row("a2", a["id"], user["id"], "mock-model", T0 + 20, 200, 20),
                row("a3", a["id"], user["id"], "gpt-4o", T0 + DAY + 5, 300, 30),
                row("a4", a["id"], user["id"], "gpt-4o", T0 + 2 * DAY + 5, 400, 40),
                row("b1", b["id"], None, "gpt-4o", T0 + 15, 1000, 100),
            ]
        )
        yield client, state, {"user": user, "a": a, "b": b}


def error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


async def test_own_records_paginated_and_filtered(setup: tuple[httpx.AsyncClient, State, dict[str, Any]]) -> None:
    client, _, ids = setup
    auth = {"Authorization": f"Bearer {ids['a']['key']}"}
    first = (await client.get("/v1/usage", params={"limit": 3}, headers=auth)).json()
    assert [r["request_id"] for r in first["data"]] == ["a1", "a2", "a3"] and first["has_more"] is True
    rest = (await client.get("/v1/usage", params={"after": first["last_id"]}, headers=auth)).json()
    assert [r["request_id"] for r in rest["data"]] == ["a4"] and rest["has_more"] is False
    record = first["data"][0]
    assert record["object"] == "usage.record" and record["created"] == pytest.approx(T0 + 10)
    assert (record["prompt_tokens"], record["completion_tokens"], record["cost_usd"]) == (
        100,
        10,
        pytest.approx(1.2e-4),
    )
    window: dict[str, str | int] = {"start": T0 + 15, "end": T0 + DAY + 6, "model": "gpt-4o"}
    got = (await client.get("/v1/usage", params=window, headers=auth)).json()
    assert [r["request_id"] for r in got["data"]] == ["a3"]
    other = (await client.get("/v1/usage", headers={"Authorization": f"Bearer {ids['b']['key']}"})).json()
    assert [r["request_id"] for r in other["data"]] == ["b1"]


async def test_own_summary_by_model_and_day(setup: tuple[httpx.AsyncClient, State, dict[str, Any]]) -> None:
    client, _, ids = setup
    auth = {"Authorization": f"Bearer {ids['a']['key']}"}
    s = (await client.get("/v1/usage/summary", headers=auth)).json()
    assert s["object"] == "usage.summary"
    assert s["total"]["requests"] == 4 and s["total"]["total_tokens"] == 1100
    by_model = {m["model"]: (m["requests"], m["prompt_tokens"]) for m in s["by_model"]}
    assert by_model == {"gpt-4o": (3, 800), "mock-model": (1, 200)}
    assert [(d["date"], d["requests"]) for d in s["by_day"]] == [
        ("2026-01-01", 2),
        ("2026-01-02", 1),
        ("2026-01-03", 1),
    ]
    assert s["total"]["cost_usd"] == pytest.approx(sum(d["cost_usd"] for d in s["by_day"]))
    narrowed = (await client.get("/v1/usage/summary", params={"start": T0 + DAY}, headers=auth)).json()
    assert narrowed["total"]["requests"] == 2


async def test_admin_views(setup: tuple[httpx.AsyncClient, State, dict[str, Any]]) -> None:
    client, _, ids = setup
    everything = (await client.get("/admin/usage", headers=ADMIN)).json()
    assert len(everything["data"]) == 5
    by_key = (await client.get("/admin/usage", params={"key_id": ids["b"]["id"]}, headers=ADMIN)).json()
    assert [r["request_id"] for r in by_key["data"]] == ["b1"]
    user_id = ids["user"]["id"]
    mine = (await client.get(f"/admin/users/{user_id}/usage", params={"limit": 2}, headers=ADMIN)).json()
    assert [r["request_id"] for r in mine["data"]] == ["a1", "a2"] and mine["has_more"]
    summary = (await client.get("/admin/usage/summary", params={"user_id": user_id}, headers=ADMIN)).json()
    assert summary["total"]["requests"] == 4
    error(await client.get("/admin/users/user_nope/usage", headers=ADMIN), 404)
    error(await client.get("/admin/usage/other", headers=ADMIN), 404)
    error(await client.get("/admin/usage"), 401)
    error(await client.post(f"/admin/users/{user_id}/usage", headers=ADMIN), 405)


async def test_bad_parameters_and_missing_key(setup: tuple[httpx.AsyncClient, State, dict[str, Any]]) -> None:
    client, _, ids = setup
    auth = {"Authorization": f"Bearer {ids['a']['key']}"}
    for params, param in [
        ({"limit": "0"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"after": "x1"}, "after"),
        ({"start": "yesterday"}, "start"),
        ({"end": "-5"}, "end"),
    ]:
        assert error(await client.get("/v1/usage", params=params, headers=auth), 400)["param"] == param
    assert error(await client.get("/v1/usage"), 401)["code"] == "invalid_api_key"
    assert error(await client.get("/v1/usage", headers={"Authorization": "Bearer sk-fp-nope"}), 401)
    error(await client.post("/v1/usage", headers=auth), 405)
