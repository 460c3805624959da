"""Every admin endpoint, its validation errors and pagination, on both store backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fastproxy.accounts.auth import principal_of
from tests.unit.appclient import ADMIN_KEY, app_client

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(database_url=database_url) as (client, _):
        client.headers.update(ADMIN)
        yield client


def error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


async def test_users_endpoints(admin: httpx.AsyncClient) -> None:
    resp = await admin.post("/admin/users", json={"name": "alice", "email": "a@example.com", "limits": {"rpm": 60}})
    assert resp.status_code == 201
    user = resp.json()
    assert user["object"] == "user" and user["limits"] == {"rpm": 60} and user["disabled"] is False
    assert (await admin.get(f"/admin/users/{user['id']}")).json() == user

    resp = await admin.patch(f"/admin/users/{user['id']}", json={"name": "Alice", "limits": None})
    assert resp.status_code == 200 and resp.json()["name"] == "Alice" and resp.json()["limits"] is None
    assert resp.json()["email"] == "a@example.com"  # absent fields are left alone

    key = (await admin.post("/admin/keys", json={"name": "k", "user_id": user["id"]})).json()
    resp = await admin.delete(f"/admin/users/{user['id']}")
    assert resp.status_code == 200 and resp.json()["disabled"] is True
    assert (await admin.get(f"/admin/keys/{key['id']}")).json()["revoked_at"] is not None

    listed = (await admin.get("/admin/users")).json()
    assert listed["object"] == "list" and [u["id"] for u in listed["data"]] == [user["id"]]


async def test_keys_endpoints(admin: httpx.AsyncClient) -> None:
    user = (await admin.post("/admin/users", json={"name": "bob"})).json()
    body = {"name": "ci", "user_id": user["id"], "allowed_models": ["gpt-4o"], "expires_at": 4_000_000_000}
    resp = await admin.post("/admin/keys", json={**body, "limits": {"tpm": 1000, "max_budget_usd": 2.5}})
    assert resp.status_code == 201
    created = resp.json()
    secret = created.pop("key")
    assert secret.startswith("sk-fp-") and created["key_prefix"] == secret[:10] and created["key_hint"] == secret[-4:]
    assert created["limits"] == {"tpm": 1000, "max_budget_usd": 2.5}

    got = (await admin.get(f"/admin/keys/{created['id']}")).json()
    assert got == created and "key" not in got and "key_hash" not in got

    resp = await admin.patch(f"/admin/keys/{created['id']}", json={"name": "ci2", "allowed_models": None})
    assert resp.json()["name"] == "ci2" and resp.json()["allowed_models"] is None
    assert resp.json()["expires_at"] == 4_000_000_000

    listed = (await admin.get("/admin/keys", params={"user_id": user["id"]})).json()
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    assert secret not in str(listed) and all("key" not in k for k in listed["data"])

    resp = await admin.delete(f"/admin/keys/{created['id']}")
    assert resp.status_code == 200 and resp.json()["revoked_at"] is not None

    unowned = await admin.post("/admin/keys", json={"name": "service"})
    assert unowned.status_code == 201 and unowned.json()["user_id"] is None


async def test_pagination(admin: httpx.AsyncClient) -> None:
    ids = [(await admin.post("/admin/users", json={"name": f"u{i}"})).json()["id"] for i in range(5)]
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = (await admin.get("/admin/users", params=params)).json()
        pages += 1
        seen.extend(u["id"] for u in page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids and pages == 3
    for bad in ("0", "101", "x"):
        assert error(await admin.get("/admin/keys", params={"limit": bad}), 400)["param"] == "limit"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/users", {}, "name"),
        ("/admin/users", {"name": ""}, "name"),
        ("/admin/users", {"name": 5}, "name"),
        ("/admin/users", {"name": "x", "email": "not-an-email"}, "email"),
        ("/admin/users", {"name": "x", "limits": {"rpm": "many"}}, "limits.rpm"),
        ("/admin/users", {"name": "x", "limits": {"rpm": -1}}, "limits.rpm"),
        ("/admin/users", {"name": "x", "limits": {"rpmm": 1}}, "limits.rpmm"),
        ("/admin/users", {"name": "x", "colour": "blue"}, "colour"),
        ("/admin/keys", {"name": "x", "allowed_models": "gpt-4o"}, "allowed_models"),
        ("/admin/keys", {"name": "x", "expires_at": "tomorrow"}, "expires_at"),
        ("/admin/keys", {"name": "x", "user_id": "user_missing"}, "user_id"),
    ],
)
async def test_validation_names_the_field(admin: httpx.AsyncClient, path: str, body: Any, param: str) -> None:
    resp = await admin.post(path, json=body)
    status = 404 if param == "user_id" else 400
    assert error(resp, status)["param"] == param


async def test_bad_json_unknown_ids_and_methods(admin: httpx.AsyncClient) -> None:
    bad = await admin.post("/admin/users", content=b"{nope", headers={"content-type": "application/json"})
    assert "not valid JSON" in error(bad, 400)["message"]
    assert "required" in error(await admin.post("/admin/users"), 400)["message"]
    for path in ("/admin/users/user_nope", "/admin/keys/key_nope"):
        assert error(await admin.get(path), 404)["code"] == "not_found"
        assert error(await admin.patch(path, json={"name": "x"}), 404)["code"] == "not_found"
        assert error(await admin.delete(path), 404)["code"] == "not_found"
    assert error(await admin.get("/admin/widgets"), 404)["code"] == "unknown_url"
    resp = await admin.put("/admin/users", json={})
    assert error(resp, 405)["code"] == "method_not_allowed" and resp.headers["allow"] == "GET, POST"


async def test_admin_key_is_required(database_url: str) -> None:
    async with app_client(database_url=database_url) as (client, _):
        assert "needs" in error(await client.get("/admin/users"), 401)["message"]
        resp = await client.get("/admin/users", headers={"Authorization": "Bearer wrong"})
        assert error(resp, 401)["code"] == "invalid_api_key"
        assert ADMIN_KEY not in resp.text


async def test_no_admin_key_means_404(database_url: str) -> None:
    async with app_client(database_url=database_url, admin_key="") as (client, _):
        for path in ("/admin", "/admin/users", "/admin/keys/key_x"):
            resp = await client.get(path, headers=ADMIN)
            assert error(resp, 404)["code"] == "unknown_url"


async def test_key_limits_show_each_bucket_without_taking(database_url: str) -> None:
    async with app_client(database_url=database_url) as (client, state):
        client.headers.update(ADMIN)
        user = (await client.post("/admin/users", json={"name": "u", "limits": {"rpd": 100}})).json()
        key = (
            await client.post(
                "/admin/keys", json={"name": "k", "user_id": user["id"], "limits": {"rpm": 5, "tpm": 1000}}
            )
        ).json()
        url = f"/admin/keys/{key['id']}/limits"
        before = {b["name"]: b for b in (await client.get(url)).json()["data"]}
        assert {(b["kind"], b["capacity"], b["remaining"]) for b in before.values()} == {
            ("requests", 5, 5),
            ("tokens", 1000, 1000),
            ("requests", 100, 100),
        }
        # Reading took nothing; a request through the limiter takes one request and its tokens.
        assert state.store is not None
        key_row = await state.store.get_key(key["id"])
        assert key_row is not None
        await state.limiter.admit(principal_of(key_row, await state.store.get_user(user["id"])), 300, None)
        after = {(b["kind"], b["capacity"]): b["remaining"] for b in (await client.get(url)).json()["data"]}
        assert after[("requests", 5)] == pytest.approx(4, abs=0.01)
        assert after[("tokens", 1000)] == pytest.approx(700, abs=1)
        assert after[("requests", 100)] == pytest.approx(99, abs=0.01)
        assert (await client.post(url)).status_code == 405
        assert (await client.get("/admin/keys/nope/limits")).status_code == 404
