"""End-user accounts end to end (fastproxy.selfservice): a real Granian proxy on SQLite and on PostgreSQL,
httpx for /api, the openai SDK for the keys it hands out, eth-account for wallet signatures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import jwt
import openai
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from fastproxy.selfservice.tokens import Keyring, key_id
from fastproxy.store import open_store
from tests.integration.servers import Server, start_proxy

ORIGIN = "https://console.example.com"
NEW_SECRET = "jwt-secret-new-" + "n" * 32
OLD_SECRET = "jwt-secret-old-" + "o" * 32
RETIRED_SECRET = "jwt-secret-retired-" + "r" * 32
ADMIN_KEY = "admin-selfservice-secret-0099"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NONCE_TTL = 2
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def server(mock_upstream: Server, database_url: str, redis_url: str, redis_prefix: str) -> Iterator[Server]:
    env = {
        "FASTPROXY_AUTH": "keys",
        "FASTPROXY_DATABASE_URL": database_url,
        "FASTPROXY_REDIS_PREFIX": redis_prefix,
        "FASTPROXY_ADMIN_KEY": ADMIN_KEY,
        # Rotation in progress: the new secret signs, the previous one still verifies.
        "FASTPROXY_JWT_SECRETS": f"{NEW_SECRET},{OLD_SECRET}",
        "FASTPROXY_SIGNUP": "true",
        "FASTPROXY_CORS_ORIGINS": ORIGIN,
        "FASTPROXY_SIWE_ORIGIN": ORIGIN,
        "FASTPROXY_SIWE_CHAIN_IDS": "1,8453",
        "FASTPROXY_SIWE_NONCE_TTL": str(NONCE_TTL),
        "FASTPROXY_USAGE_FLUSH_INTERVAL": "0.1",
        "FASTPROXY_LOG_LEVEL": "debug",
    }
    # PostgreSQL runs with Redis (nonces and attempt limits there), SQLite without (both in the database/process).
    if database_url.startswith("postgres"):
        env["FASTPROXY_REDIS_URL"] = redis_url
    proxy = start_proxy(mock_upstream.url + "/v1", **env)
    yield proxy
    proxy.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_not_logged(server: Server, secrets: list[str]) -> None:
    server.stop_proc_only()
    log = server.log()
    assert '"level":"debug","logger":"fastproxy.selfservice"' in log  # the self-service API logged at debug
    for secret in secrets:
        assert secret and secret not in log, f"a secret ({secret[:6]}...) appears in the log"


async def register_and_login(http: httpx.AsyncClient, url: str, email: str, password: str) -> dict[str, str]:
    created = await http.post(url + "/api/auth/register", json={"email": email, "password": password})
    assert created.status_code == 201, created.text
    login = await http.post(url + "/api/auth/login", json={"email": email.upper(), "password": password})
    assert login.status_code == 200, login.text
    assert login.headers["cache-control"] == "no-store"
    tokens: dict[str, str] = login.json()
    return tokens


async def test_password_session_key_refresh_logout_and_rotation(server: Server, http: httpx.AsyncClient) -> None:
    url, password = server.url, "a-long-and-unusual-passphrase-7"
    weak = await http.post(url + "/api/auth/register", json={"email": "w@example.com", "password": "password1234"})
    assert weak.status_code == 400 and weak.json()["error"]["param"] == "password"
    tokens = await register_and_login(http, url, "alice@example.com", password)
    secrets = [password, tokens["access_token"], tokens["refresh_token"]]
    assert jwt.get_unverified_header(tokens["access_token"])["kid"] == key_id(NEW_SECRET)
    me = await http.get(url + "/api/auth/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200 and me.json()["email"] == "alice@example.com"

    # A key made through /api/api-keys works with the openai SDK, and its usage shows under /api/usage.
    made = await http.post(url + "/api/api-keys", json={"name": "laptop"}, headers=bearer(tokens["access_token"]))
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    secrets.append(key)
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(model="mock-model", messages=MESSAGES)
        assert reply.choices[0].message.content
    listed = (await http.get(url + "/api/api-keys", headers=bearer(tokens["access_token"]))).json()
    assert [k["id"] for k in listed["data"]] == [made.json()["id"]] and "key" not in listed["data"][0]
    deadline = time.monotonic() + 10
    while not (await http.get(url + "/api/usage", headers=bearer(tokens["access_token"]))).json()["data"]:
        assert time.monotonic() < deadline, "the request's usage never showed under /api/usage"
        await asyncio.sleep(0.1)
    summary = await http.get(url + "/api/usage/summary", headers=bearer(tokens["access_token"]))
    assert summary.status_code == 200 and summary.json()["total"]["requests"] == 1

    # Refresh rotates; the spent token presented again revokes the whole family (the new one too).
    rotated = await http.post(url + "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    secrets += [second["access_token"], second["refresh_token"]]
    assert second["refresh_token"] != tokens["refresh_token"]
    reused = await http.post(url + "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 401 and reused.json()["error"]["code"] == "refresh_token_reused"
    family_gone = await http.post(url + "/api/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert family_gone.status_code == 401

    # Logout revokes the family: the refresh token it was given and the one it rotated to are refused.
    third = (await http.post(url + "/api/auth/login", json={"email": "alice@example.com", "password": password})).json()
    fourth = (await http.post(url + "/api/auth/refresh", json={"refresh_token": third["refresh_token"]})).json()
    secrets += [third["access_token"], third["refresh_token"], fourth["access_token"], fourth["refresh_token"]]
    out = await http.post(url + "/api/auth/logout", json={"refresh_token": fourth["refresh_token"]})
    assert out.status_code == 200 and out.json()["revoked"] is True
    for old in (third["refresh_token"], fourth["refresh_token"]):
        refused = await http.post(url + "/api/auth/refresh", json={"refresh_token": old})
        assert refused.status_code == 401

    # Access tokens: expired refused; the previous secret accepted during rotation; a retired one refused.
    user_id = me.json()["id"]
    expired = Keyring([NEW_SECRET], ttl=60, clock=lambda: time.time() - 3600).issue(user_id)
    answer = await http.get(url + "/api/auth/me", headers=bearer(expired))
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "token_expired"
    previous = Keyring([OLD_SECRET], ttl=60).issue(user_id)
    assert (await http.get(url + "/api/auth/me", headers=bearer(previous))).status_code == 200
    retired = Keyring([RETIRED_SECRET], ttl=60).issue(user_id)
    answer = await http.get(url + "/api/auth/me", headers=bearer(retired))
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_token"
    forged = jwt.encode(
        {"sub": user_id, "iat": 1, "exp": 2**40, "iss": "fastproxy"},
        RETIRED_SECRET,
        headers={"kid": key_id(OLD_SECRET)},
    )
    assert (await http.get(url + "/api/auth/me", headers=bearer(forged))).status_code == 401
    assert_not_logged(server, secrets)


def siwe_message(address: str, nonce: str, *, domain: str = "console.example.com", chain_id: int = 1) -> str:
    issued = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{domain} wants you to sign in with your Ethereum account:\n{address}\n\n"
        "Sign in to the fastproxy console.\n\n"
        f"URI: https://{domain}/login\nVersion: 1\nChain ID: {chain_id}\nNonce: {nonce}\nIssued At: {issued}"
    )


async def test_wallet_sign_in(server: Server, http: httpx.AsyncClient) -> None:
    url = server.url
    wallet, other = Account.create(), Account.create()

    async def nonce() -> str:
        got = await http.get(url + "/api/auth/nonce")
        assert got.status_code == 200, got.text
        value: str = got.json()["nonce"]
        return value

    def sign(message: str, by: LocalAccount = wallet) -> str:
        signature: bytes = by.sign_message(encode_defunct(text=message)).signature
        return "0x" + signature.hex()

    message = siwe_message(wallet.address, await nonce())
    signature = sign(message)
    secrets = [signature]
    first = await http.post(url + "/api/auth/connect", json={"message": message, "signature": signature})
    assert first.status_code == 200, first.text
    secrets += [first.json()["access_token"], first.json()["refresh_token"]]
    me = (await http.get(url + "/api/auth/me", headers=bearer(first.json()["access_token"]))).json()
    assert me["wallet_address"] == wallet.address and me["email"] is None

    replay = await http.post(url + "/api/auth/connect", json={"message": message, "signature": signature})
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "siwe_nonce_invalid"

    foreign = siwe_message(wallet.address, await nonce(), domain="evil.example.net")
    answer = await http.post(url + "/api/auth/connect", json={"message": foreign, "signature": sign(foreign)})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "siwe_domain_mismatch"

    impostor = siwe_message(wallet.address, await nonce())
    answer = await http.post(url + "/api/auth/connect", json={"message": impostor, "signature": sign(impostor, other)})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_signature"

    wrong_chain = siwe_message(wallet.address, await nonce(), chain_id=5)
    answer = await http.post(url + "/api/auth/connect", json={"message": wrong_chain, "signature": sign(wrong_chain)})
    assert answer.status_code == 401

    stale = siwe_message(wallet.address, await nonce())
    await asyncio.sleep(NONCE_TTL + 0.5)
    answer = await http.post(url + "/api/auth/connect", json={"message": stale, "signature": sign(stale)})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "siwe_nonce_invalid"

    # The same wallet signing in again is the same user.
    again = siwe_message(wallet.address, await nonce(), chain_id=8453)
    second = await http.post(url + "/api/auth/connect", json={"message": again, "signature": sign(again)})
    assert second.status_code == 200, second.text
    me2 = (await http.get(url + "/api/auth/me", headers=bearer(second.json()["access_token"]))).json()
    assert me2["id"] == me["id"]
    assert_not_logged(server, [*secrets, second.json()["access_token"], second.json()["refresh_token"]])


async def test_users_see_only_their_own_keys_and_keys_stay_within_the_user(
    server: Server, http: httpx.AsyncClient, database_url: str
) -> None:
    url, password = server.url, "correct-battery-horse-staple-9"
    a = (await register_and_login(http, url, "a@example.com", password))["access_token"]
    b = (await register_and_login(http, url, "b@example.com", password))["access_token"]
    a_key = (await http.post(url + "/api/api-keys", json={"name": "a"}, headers=bearer(a))).json()
    b_key = (await http.post(url + "/api/api-keys", json={"name": "b"}, headers=bearer(b))).json()
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=a_key["key"], max_retries=0) as sdk:
        await sdk.chat.completions.create(model="mock-model", messages=MESSAGES)

    listed = (await http.get(url + "/api/api-keys", headers=bearer(b))).json()
    assert [k["id"] for k in listed["data"]] == [b_key["id"]]
    for method in ("GET", "DELETE"):
        answer = await http.request(method, url + f"/api/api-keys/{a_key['id']}", headers=bearer(b))
        assert answer.status_code == 404, (method, answer.text)
    assert (await http.get(url + f"/api/usage?key_id={a_key['id']}", headers=bearer(b))).status_code == 404
    assert (await http.get(url + f"/api/usage/summary?key_id={a_key['id']}", headers=bearer(b))).status_code == 404
    assert (await http.get(url + "/api/usage", headers=bearer(b))).json()["data"] == []
    assert (await http.get(url + f"/api/api-keys/{a_key['id']}", headers=bearer(a))).status_code == 200

    # The user's limits and models bound its keys: unset fields inherit them, nothing may exceed them.
    user_a = (await http.get(url + "/api/user/profile", headers=bearer(a))).json()["id"]
    patched = await http.patch(url + f"/admin/users/{user_a}", json={"limits": {"rpm": 5, "tpm": 1000}}, headers=ADMIN)
    assert patched.status_code == 200
    store = await open_store(database_url)
    try:
        assert await store.set_user_models(user_a, ["mock-model"])
    finally:
        await store.close()
    too_fast = await http.post(url + "/api/api-keys", json={"name": "x", "limits": {"rpm": 6}}, headers=bearer(a))
    assert too_fast.status_code == 400 and too_fast.json()["error"]["param"] == "limits.rpm"
    other_model = await http.post(
        url + "/api/api-keys", json={"name": "x", "allowed_models": ["gpt-4o"]}, headers=bearer(a)
    )
    assert other_model.status_code == 403
    bounded = await http.post(url + "/api/api-keys", json={"name": "y", "limits": {"rpm": 3}}, headers=bearer(a))
    assert bounded.status_code == 201
    assert bounded.json()["limits"] == {"rpm": 3, "tpm": 1000} and bounded.json()["allowed_models"] == ["mock-model"]
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=bounded.json()["key"], max_retries=0) as sdk:
        with pytest.raises(openai.PermissionDeniedError):
            await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    revoked = await http.delete(url + f"/api/api-keys/{a_key['id']}", headers=bearer(a))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None

    # An operator disabling the user ends its sessions at once, access tokens included.
    assert (await http.delete(url + f"/admin/users/{user_a}", headers=ADMIN)).status_code == 200
    gone = await http.get(url + "/api/auth/me", headers=bearer(a))
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "account_disabled"


async def test_cors_security_headers_and_sign_in_rate_limit(server: Server, http: httpx.AsyncClient) -> None:
    url = server.url
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    for path in ("/v1/chat/completions", "/api/auth/login", "/v1/files"):
        allowed = await http.options(url + path, headers={"Origin": ORIGIN, **ask})
        assert allowed.status_code == 204, (path, allowed.text)
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        foreign = await http.options(url + path, headers={"Origin": "https://evil.example.net", **ask})
        assert not [h for h in foreign.headers if h.startswith("access-control-")], (path, foreign.headers)
    # Real responses: CORS headers only for the listed origin; security headers on /api and /admin.
    models = await http.get(url + "/v1/models", headers={"Origin": ORIGIN, "Authorization": "Bearer sk-fp-nope"})
    assert models.headers["access-control-allow-origin"] == ORIGIN
    models = await http.get(url + "/v1/models", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in models.headers
    for path in ("/api/auth/me", "/admin/users"):
        answer = await http.get(url + path)
        assert answer.status_code == 401
        assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["referrer-policy"]

    password = "a-long-and-unusual-passphrase-8"
    await register_and_login(http, url, "carol@example.com", password)
    unknown = await http.post(url + "/api/auth/login", json={"email": "nobody@example.com", "password": password})
    statuses, wrong_message = [], None
    for _ in range(20):
        answer = await http.post(url + "/api/auth/login", json={"email": "carol@example.com", "password": "wrong-" * 3})
        statuses.append(answer.status_code)
        if answer.status_code == 401:
            wrong_message = answer.json()["error"]["message"]
        else:
            assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
    assert wrong_message == unknown.json()["error"]["message"], "unknown email and wrong password must read the same"
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    # The account is locked for now even with the right password (per-account bucket).
    assert (
        await http.post(url + "/api/auth/login", json={"email": "carol@example.com", "password": password})
    ).status_code == 429


async def test_rotating_secrets_across_restarts(
    mock_upstream: Server, database_url: str, redis_prefix: str, http: httpx.AsyncClient
) -> None:
    """Tokens the server itself issued: accepted while their secret is listed second, refused once it is dropped."""

    def start(secrets: str) -> Server:
        return start_proxy(
            mock_upstream.url + "/v1",
            FASTPROXY_AUTH="keys",
            FASTPROXY_DATABASE_URL=database_url,
            FASTPROXY_REDIS_PREFIX=redis_prefix,
            FASTPROXY_JWT_SECRETS=secrets,
            FASTPROXY_SIGNUP="true",
        )

    before = start(OLD_SECRET)
    try:
        old = await register_and_login(http, before.url, "rota@example.com", "rotate-me-please-0123")
    finally:
        before.stop()
    during = start(f"{NEW_SECRET},{OLD_SECRET}")
    try:
        assert (await http.get(during.url + "/api/auth/me", headers=bearer(old["access_token"]))).status_code == 200
        refreshed = await http.post(during.url + "/api/auth/refresh", json={"refresh_token": old["refresh_token"]})
        new = refreshed.json()
        assert jwt.get_unverified_header(new["access_token"])["kid"] == key_id(NEW_SECRET)
    finally:
        during.stop()
    after = start(NEW_SECRET)
    try:
        refused = await http.get(after.url + "/api/auth/me", headers=bearer(old["access_token"]))
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
        assert (await http.get(after.url + "/api/auth/me", headers=bearer(new["access_token"]))).status_code == 200
    finally:
        after.stop()
