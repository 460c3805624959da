"""fastproxy.selfservice's pure parts (tokens, SIWE parsing, password policy, CORS headers) and /api in-process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from fastproxy.core.types import Message
from fastproxy.selfservice.errors import SignInFailed
from fastproxy.selfservice.passwords import Passwords
from fastproxy.selfservice.tokens import Keyring, key_id
from fastproxy.selfservice.wallet import SiweMessage, WalletVerifier
from fastproxy.selfservice.web import Web
from fastproxy.store import open_store
from tests.unit.appclient import ADMIN_KEY, app_client

A = "a" * 40
B = "b" * 40
ORIGIN = "https://console.example.com"


def test_first_secret_signs_every_listed_one_verifies_others_refused() -> None:
    old = Keyring([A], ttl=60).issue("user_1")
    ring = Keyring([B, A], ttl=60)
    new = ring.issue("user_1")
    assert jwt.get_unverified_header(new)["kid"] == key_id(B) != key_id(A)
    assert ring.verify(new) == ring.verify(old) == "user_1"
    with pytest.raises(SignInFailed, match="no longer accepts"):
        Keyring([B], ttl=60).verify(old)
    with pytest.raises(SignInFailed, match="expired") as info:
        ring.verify(Keyring([B], ttl=60, clock=lambda: time.time() - 120).issue("user_1"))
    assert info.value.code == "token_expired"
    for bad in ("", "not.a.jwt", new[:-3] + "AAA"):
        with pytest.raises(SignInFailed):
            ring.verify(bad)
    # The algorithm is pinned: an unsigned token naming a listed kid is refused.
    unsigned = jwt.encode(
        {"sub": "user_1", "iat": 1, "exp": 2**40, "iss": "fastproxy"},
        # "" is pyjwt's "no key" for alg none; None only type-checks while cryptography is not installed.
        "",
        algorithm="none",
        headers={"kid": key_id(B)},
    )
    with pytest.raises(SignInFailed):
        ring.verify(unsigned)


def message(address: str, *, statement: str | None = "Sign in.", extra: str = "") -> str:
    middle = f"\n{statement}\n" if statement is not None else "\n"
    return (
        f"console.example.com wants you to sign in with your Ethereum account:\n{address}\n{middle}\n"
        f"URI: {ORIGIN}\nVersion: 1\nChain ID: 1\nNonce: abcdef123456\nIssued At: 2026-01-01T00:00:00Z{extra}"
    )


def test_siwe_messages_parse_with_and_without_statement_and_are_checked() -> None:
    wallet = Account.create()
    for statement in ("Sign in.", None):
        parsed = SiweMessage(message(wallet.address, statement=statement))
        assert parsed.address == wallet.address and parsed.nonce == "abcdef123456" and parsed.chain_id == 1
    text = message(wallet.address, extra="\nExpiration Time: 2026-01-01T00:10:00Z\nResources:\n- https://x.example/a")
    assert SiweMessage(text).expiration == SiweMessage(text).issued_at + 600
    signature = wallet.sign_message(encode_defunct(text=text)).signature.hex()
    at = SiweMessage(text).issued_at
    assert WalletVerifier(ORIGIN, [1], clock=lambda: at + 5).verify(text, signature).address == wallet.address
    with pytest.raises(SignInFailed, match="expired"):
        WalletVerifier(ORIGIN, [1], clock=lambda: at + 601).verify(text, signature)
    with pytest.raises(SignInFailed, match="future"):
        WalletVerifier(ORIGIN, [1], clock=lambda: at - 600).verify(text, signature)
    with pytest.raises(SignInFailed, match="Chain id 1"):
        WalletVerifier(ORIGIN, [137], clock=lambda: at + 5).verify(text, signature)
    with pytest.raises(SignInFailed, match="another site"):
        WalletVerifier("https://console.example.com:8443", [1], clock=lambda: at).verify(text, signature)
    elsewhere = text.replace(f"URI: {ORIGIN}", f"URI: {ORIGIN}.evil.example/x")
    with pytest.raises(SignInFailed, match="URI"):
        WalletVerifier(ORIGIN, [1], clock=lambda: at).verify(elsewhere, signature)
    for bad in ("", "hello", message(wallet.address.lower()), message(wallet.address) + "\nsurprise", message(A)):
        with pytest.raises(SignInFailed):
            SiweMessage(bad)


def test_password_policy_and_verification() -> None:
    passwords = Passwords()
    assert passwords.problem("short") is not None
    assert passwords.problem("Password1234") is not None  # common, compared ignoring case
    assert passwords.problem("an-uncommon-passphrase") is None
    stored = passwords.hash("an-uncommon-passphrase")
    assert stored.startswith("$argon2id$")
    assert passwords.verify(stored, "an-uncommon-passphrase")
    assert not passwords.verify(stored, "an-uncommon-passphrasE")
    assert not passwords.verify(None, "an-uncommon-passphrase")
    assert not passwords.verify("not-a-hash", "x")


async def test_cors_costs_nothing_unless_the_origin_is_listed() -> None:
    async def send(message: Message) -> None:
        return None

    web = Web([ORIGIN, " "], hsts=False)
    assert web.cors_send({"headers": []}, send) is send
    assert web.cors_send({"headers": [(b"origin", b"https://evil.example")]}, send) is send
    sent: list[Message] = []

    async def record(message: Message) -> None:
        sent.append(message)

    wrapped = web.cors_send({"headers": [(b"origin", ORIGIN.encode())]}, record)
    await wrapped({"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]})
    assert (b"access-control-allow-origin", ORIGIN.encode()) in sent[0]["headers"]
    assert (b"a", b"b") in sent[0]["headers"]


async def test_without_configuration_api_is_404_and_v1_preflight_has_no_cors(tmp_path: Path) -> None:
    async with app_client(database_url=f"sqlite:///{tmp_path / 'db'}") as (client, state):
        assert state.selfservice is None and state.cors is None
        answer = await client.post("/api/auth/login", json={"email": "a@b.c", "password": "x"})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_url"
        preflight = await client.options("/v1/chat/completions", headers={"Origin": ORIGIN})
        assert preflight.status_code == 204
        assert not [h for h in preflight.headers if h.startswith("access-control-")]


async def test_api_errors_are_openai_shaped(tmp_path: Path) -> None:
    async with app_client(database_url=f"sqlite:///{tmp_path / 'db'}", jwt_secrets=A, hsts=True) as (client, _):
        closed = await client.post("/api/auth/register", json={"email": "a@b.c", "password": "x" * 20})
        assert closed.status_code == 403 and closed.json()["error"]["code"] == "signup_disabled"
        assert closed.headers["strict-transport-security"].startswith("max-age=")
        assert "strict-transport-security" not in (await client.get("/health")).headers
        for body in (b"", b"{", b'{"email": 1}', b'{"email": "a@b.c", "password": "x", "extra": 1}'):
            answer = await client.post("/api/auth/login", content=body)
            assert answer.status_code == 400 and set(answer.json()["error"]) == {"message", "type", "param", "code"}
        assert (await client.get("/api/auth/login")).status_code == 405
        assert (await client.get("/api/nothing")).status_code == 404
        assert (await client.get("/api/api-keys")).status_code == 401
        bad = await client.get("/api/api-keys", headers={"Authorization": "Bearer x.y.z"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"
        assert (await client.get("/api/auth/nonce")).status_code == 404  # wallet sign-in not configured


async def test_cli_set_password_reads_stdin_and_applies_the_policy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db'}"
    created = subprocess.run(
        [sys.executable, "-m", "fastproxy", "users", "create", "--name", "dora", "--email", "dora@example.com"],
        env={"FASTPROXY_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    user_id = created.stdout.strip()
    argv = [sys.executable, "-m", "fastproxy", "users", "set-password", user_id]
    env = {"FASTPROXY_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    weak = subprocess.run(argv, env=env, input="short\n", capture_output=True, text=True)
    assert weak.returncode == 1 and "at least 12" in weak.stderr
    ok = subprocess.run(argv, env=env, input="a-fine-long-passphrase\n", capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    store = await open_store(url)
    try:
        login = await store.find_login("DORA@example.com")
    finally:
        await store.close()
    assert login is not None and login.user.id == user_id
    assert Passwords().verify(login.password_hash, "a-fine-long-passphrase")


async def test_admin_refuses_a_second_user_with_the_same_email_ignoring_case(tmp_path: Path) -> None:
    async with app_client(database_url=f"sqlite:///{tmp_path / 'db'}") as (client, _):
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        first = await client.post("/admin/users", json={"name": "a", "email": "Ann@example.com"}, headers=admin)
        assert first.status_code == 201
        assert first.headers["x-content-type-options"] == "nosniff" and first.headers["cache-control"] == "no-store"
        again = await client.post("/admin/users", json={"name": "b", "email": "ann@EXAMPLE.com"}, headers=admin)
        assert again.status_code == 409 and again.json()["error"]["param"] == "email"


def test_the_proxy_does_not_load_eth_account_unless_wallet_sign_in_is_on() -> None:
    code = "import sys, fastproxy.app, fastproxy.server.cli; print('eth_account' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
