"""The self-service API under /api: end users manage their own session, keys and usage.

    POST /api/auth/register   {email, password, name?}  (only with FASTPROXY_SIGNUP=true)
    POST /api/auth/login      {email, password}        -> access + refresh token
    POST /api/auth/refresh    {refresh_token}          -> a new pair; the old refresh token is spent
    POST /api/auth/logout     {refresh_token}          -> its whole family revoked
    GET  /api/auth/me         GET /api/user/profile    (Bearer access token)
    GET  /api/auth/nonce      POST /api/auth/connect {message, signature}   (Sign-In with Ethereum)
    GET|POST /api/api-keys    GET|DELETE /api/api-keys/{id}
    GET  /api/usage           GET /api/usage/summary    (the caller's own; same filters as /v1/usage)

Without JWT secrets (or a database) every /api path is 404, as if the API did not exist. Another
user's key ids are 404 too, so ids cannot be probed. No password, token or signature is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import parse_qs

import msgspec

from fastproxy.accounts import provisioning
from fastproxy.accounts.admin_schemas import Email, Model, Name, UnixTime
from fastproxy.core.errors import (
    InvalidRequest,
    MethodNotAllowed,
    PermissionDenied,
    ProxyError,
    RouteNotFound,
    ServiceUnavailable,
)
from fastproxy.core.responses import send_error, send_json
from fastproxy.core.schemas import Limits, json_encoder
from fastproxy.core.types import Receive, Scope, Send
from fastproxy.selfservice import tokens
from fastproxy.selfservice.errors import Conflict, Forbidden, NotFound, SignInFailed
from fastproxy.selfservice.service import SelfService
from fastproxy.server.state import State
from fastproxy.store import Account, ApiKey, StoreError, StoreInvalidValue, User, invalid_value, new_id
from fastproxy.usage import api as usage_api
from fastproxy.usage.query import UsageQuery

log = logging.getLogger("fastproxy.selfservice")

MAX_BODY = 16 * 1024
DEFAULT_PAGE = 20
MAX_PAGE = 100
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class Register(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    name: Name | None = None


class Login(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class Refresh(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Token


class Connect(msgspec.Struct, forbid_unknown_fields=True):
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    signature: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    allowed_models: list[Model] | None = None
    expires_at: UnixTime | None = None
    limits: Limits | None = None


class Profile(msgspec.Struct, kw_only=True):
    id: str
    object: str = "user"
    name: str
    email: str | None
    wallet_address: str | None
    created_at: int
    limits: Limits | None
    allowed_models: list[str] | None


class TokenPair(msgspec.Struct, kw_only=True):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 (the scheme name, not a secret)
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in (Register, Login, Refresh, Connect, KeyRequest)
}


class Call:
    """One /api request, resolved."""

    __slots__ = ("body", "client_ip", "ident", "query", "scope", "service", "state")

    def __init__(self, state: State, service: SelfService, scope: Scope, ident: str, body: bytes) -> None:
        self.state = state
        self.service = service
        self.scope = scope
        self.ident = ident
        self.body = body
        self.query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        client = scope.get("client")
        self.client_ip: str = client[0] if client else "unknown"

    def decode(self, kind: type[Any]) -> Any:
        if not self.body.strip():
            raise InvalidRequest("A JSON body is required.")
        try:
            return _DECODERS[kind].decode(self.body)
        except msgspec.ValidationError as exc:
            # msgspec names the field and the rule, never the value: a password can't end up in the message.
            field = re.search(r"at `\$\.(\w+)`", str(exc))
            raise InvalidRequest(f"Invalid request body: {exc}.", param=field.group(1) if field else None) from None
        except msgspec.DecodeError:
            raise InvalidRequest("The request body is not valid JSON.") from None

    async def account(self) -> Account:
        """The caller's account, from the Bearer access token; 401 otherwise."""
        token = None
        for name, value in self.scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = rest.strip().decode("latin-1")
                break
        if not token:
            raise SignInFailed("This endpoint needs 'Authorization: Bearer ACCESS_TOKEN'.", code="missing_token")
        user_id = self.service.keyring.verify(token)
        account = await self.service.store.get_account(user_id)
        if account is None or account.user.disabled:
            raise SignInFailed("This account is disabled or no longer exists.", code="account_disabled")
        return account


Operation = Callable[[Call], Awaitable[tuple[int, Any]]]


async def dispatch(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    service = state.selfservice
    method, path = scope["method"], scope["path"]
    if state.web is not None:
        send = state.web.secure_send(send)
    if service is None:
        await send_error(send, RouteNotFound(f"Invalid URL ({method} {path})"))
        return
    if method == "OPTIONS" and state.web is not None:
        await state.web.preflight(scope, send)
        return
    try:
        operation, ident = _route(method, path)
        with state.body_deadline:
            body = await _read_body(receive) if method == "POST" else b""
        status, result = await operation(Call(state, service, scope, ident, body))
    except StoreInvalidValue:
        await send_error(send, invalid_value())
        return
    except StoreError as exc:
        log.error("self-service %s %s: %s", method, path, exc)
        await send_error(send, ServiceUnavailable("The database is unavailable; please retry."))
        return
    except ProxyError as err:
        log.debug("self-service %s %s: %d %s", method, path, err.status, err.code)
        await send_error(send, err)
        return
    log.debug("self-service %s %s: %d", method, path, status)
    await send_json(send, status, json_encoder.encode(result))


async def preflight(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """OPTIONS on a /v1 route: a CORS preflight, answered without authentication."""
    if state.web is not None:
        await state.web.preflight(scope, send)
    else:
        await send_json(send, 204, b"", [(b"allow", b"GET, POST, DELETE, OPTIONS")])


async def secured_admin(
    handler: Callable[[State, Scope, Receive, Send], Awaitable[None]],
    state: State,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """The admin API with the security headers (and CORS for listed origins)."""
    if state.web is not None:
        if scope["method"] == "OPTIONS":
            await state.web.preflight(scope, send)
            return
        send = state.web.secure_send(send)
    await handler(state, scope, receive, send)


def _route(method: str, path: str) -> tuple[Operation, str]:
    ident = ""
    table = _ROUTES.get(path.rstrip("/"))
    if table is None and path.startswith("/api/api-keys/"):
        ident = path[len("/api/api-keys/") :].rstrip("/")
        if _ID.match(ident):
            table = _KEY_ITEM
    if table is None:
        raise RouteNotFound(f"Invalid URL ({method} {path})")
    operation = table.get(method)
    if operation is None:
        allow = ", ".join(sorted(table)).encode()
        raise MethodNotAllowed(f"Method {method} not allowed for {path}.", headers=[(b"allow", allow)])
    return operation, ident


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client disconnected.")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise InvalidRequest(
                f"Request body too large: this API accepts {MAX_BODY} bytes.", code="request_too_large"
            )
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _profile(account: Account) -> Profile:
    user = account.user
    return Profile(
        id=user.id,
        name=user.name,
        email=user.email,
        wallet_address=account.wallet_address,
        created_at=user.created_at,
        limits=user.limits,
        allowed_models=account.allowed_models,
    )


async def _issue(service: SelfService, user_id: str, family_id: str | None = None) -> TokenPair:
    refresh = tokens.new_refresh_token()
    now = int(time.time())
    await service.store.add_refresh_token(
        tokens.hash_refresh_token(refresh), family_id or new_id("fam_"), user_id, now, now + service.refresh_ttl
    )
    return TokenPair(
        access_token=service.keyring.issue(user_id),
        expires_in=service.keyring.ttl,
        refresh_token=refresh,
        refresh_expires_in=service.refresh_ttl,
    )


# -- password accounts ---------------------------------------------------------------------------------------
async def register(call: Call) -> tuple[int, Any]:
    service = call.service
    if not service.signup:
        raise Forbidden("Sign-up is closed on this server; ask an operator for an invitation.", code="signup_disabled")
    body: Register = call.decode(Register)
    await service.count_attempt(call.client_ip, body.email)
    problem = service.passwords.problem(body.password)
    if problem is not None:
        raise InvalidRequest(problem, param="password", code="weak_password")
    password_hash = await asyncio.to_thread(service.passwords.hash, body.password)
    user = User(id=new_id("user_"), name=body.name or body.email, email=body.email, created_at=int(time.time()))
    if not await service.store.create_account(user, password_hash, None):
        raise Conflict("An account with this email already exists.", param="email", code="email_taken")
    log.info("self-service: user %s registered", user.id)
    return 201, _profile(Account(user=user))


async def login(call: Call) -> tuple[int, Any]:
    service = call.service
    body: Login = call.decode(Login)
    await service.count_attempt(call.client_ip, body.email)
    found = await service.store.find_login(body.email)
    # An unknown email costs the same hash check and gets the same answer as a wrong password.
    ok = await asyncio.to_thread(service.passwords.verify, found.password_hash if found else None, body.password)
    if not ok or found is None:
        raise SignInFailed("Incorrect email or password.")
    if found.user.disabled:
        raise SignInFailed("This account is disabled.", code="account_disabled")
    log.info("self-service: user %s signed in with a password", found.user.id)
    return 200, await _issue(service, found.user.id)


async def refresh(call: Call) -> tuple[int, Any]:
    service = call.service
    body: Refresh = call.decode(Refresh)
    used = await service.store.use_refresh_token(tokens.hash_refresh_token(body.refresh_token), int(time.time()))
    if used is None:
        raise SignInFailed("The refresh token is invalid or expired; sign in again.", code="invalid_refresh_token")
    if not used.fresh:
        log.warning("self-service: a spent refresh token of user %s was presented again; family revoked", used.user_id)
        raise SignInFailed(
            "This refresh token was already used or revoked; every session it belongs to is now signed out.",
            code="refresh_token_reused",
        )
    account = await service.store.get_account(used.user_id)
    if account is None or account.user.disabled:
        raise SignInFailed("This account is disabled.", code="account_disabled")
    return 200, await _issue(service, used.user_id, used.family_id)


async def logout(call: Call) -> tuple[int, Any]:
    body: Refresh = call.decode(Refresh)
    revoked = await call.service.store.revoke_refresh_family(
        tokens.hash_refresh_token(body.refresh_token), int(time.time())
    )
    return 200, {"object": "logout", "revoked": revoked}


async def me(call: Call) -> tuple[int, Any]:
    return 200, _profile(await call.account())


# -- Sign-In with Ethereum -------------------------------------------------------------------------------
async def nonce(call: Call) -> tuple[int, Any]:
    service = call.service
    if service.wallet is None:
        raise RouteNotFound("Wallet sign-in is not configured on this server (FASTPROXY_SIWE_ORIGIN).")
    await service.count_attempt(call.client_ip, "nonce:" + call.client_ip)
    value = await service.nonces.issue()
    return 200, {
        "object": "siwe.nonce",
        "nonce": value,
        "domain": service.wallet.domain,
        "uri": service.wallet.origin,
        "chain_ids": sorted(service.wallet.chain_ids),
    }


async def connect(call: Call) -> tuple[int, Any]:
    service = call.service
    if service.wallet is None:
        raise RouteNotFound("Wallet sign-in is not configured on this server (FASTPROXY_SIWE_ORIGIN).")
    body: Connect = call.decode(Connect)
    # The account is the address the message names (verified just below); per IP either way.
    lines = body.message.split("\n", 2)
    await service.count_attempt(call.client_ip, "wallet:" + (lines[1][:64] if len(lines) > 1 else ""))
    message = service.wallet.verify(body.message, body.signature)
    # Last: a nonce is spent only by a message that is otherwise valid and really signed by its address.
    if not await service.nonces.take(message.nonce):
        raise SignInFailed(
            "The sign-in nonce is unknown, expired or already used; request a new one.", code="siwe_nonce_invalid"
        )
    user = await service.store.find_wallet_user(message.address)
    if user is None:
        candidate = User(id=new_id("user_"), name=message.address, created_at=int(time.time()))
        if await service.store.create_account(candidate, None, message.address):
            user = candidate
            log.info("self-service: user %s created by wallet sign-in", user.id)
        else:  # created by a concurrent sign-in of the same wallet
            user = await service.store.find_wallet_user(message.address)
    if user is None or user.disabled:
        raise SignInFailed("This account is disabled.", code="account_disabled")
    log.info("self-service: user %s signed in with a wallet", user.id)
    return 200, await _issue(service, user.id)


# -- the caller's own keys and usage -----------------------------------------------------------------
def _own(key: ApiKey | None, account: Account, ident: str) -> ApiKey:
    if key is None or key.user_id != account.user.id:
        raise NotFound(f"No API key with id '{ident}'.")
    return key


def _capped(requested: Limits | None, ceiling: Limits | None) -> Limits | None:
    """The key's limits: each unset field inherits the user's; none may exceed it (400 naming the field)."""
    if ceiling is None:
        return requested
    values: dict[str, Any] = {}
    for name in Limits.__struct_fields__:
        cap = getattr(ceiling, name)
        want = getattr(requested, name) if requested is not None else None
        if want is not None and want < 0:
            raise InvalidRequest(f"Invalid 'limits.{name}': must be 0 or more.", param=f"limits.{name}")
        if cap is not None and want is not None and want > cap:
            raise InvalidRequest(
                f"Invalid 'limits.{name}': {want} is above your account's limit of {cap}.", param=f"limits.{name}"
            )
        values[name] = want if want is not None else cap
    return Limits(**values)


async def list_keys(call: Call) -> tuple[int, Any]:
    account = await call.account()
    raw = call.query.get("limit", [str(DEFAULT_PAGE)])[-1]
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequest(f"Invalid 'limit': expected an integer from 1 to {MAX_PAGE}.", param="limit")
    limit, after = int(raw), call.query.get("after", [None])[-1] or None
    found = await call.service.store.list_keys(limit + 1, after, account.user.id)
    page = found[:limit]
    return 200, {
        "object": "list",
        "data": page,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(found) > limit,
    }


async def create_key(call: Call) -> tuple[int, Any]:
    account = await call.account()
    body: KeyRequest = call.decode(KeyRequest)
    models = body.allowed_models
    if account.allowed_models is not None:
        if models is None:
            models = list(account.allowed_models)
        elif not set(models) <= set(account.allowed_models):
            outside = sorted(set(models) - set(account.allowed_models))
            raise PermissionDenied(f"Your account may not use: {', '.join(outside)}.", param="allowed_models")
    limits = _capped(body.limits, account.user.limits)
    created = await provisioning.create_key(
        call.service.store, body.name, account.user.id, models, body.expires_at, limits
    )
    log.info("self-service: user %s created key %s (ending in %s)", account.user.id, created.id, created.key_hint)
    return 201, created


async def get_key(call: Call) -> tuple[int, Any]:
    account = await call.account()
    return 200, _own(await call.service.store.get_key(call.ident), account, call.ident)


async def delete_key(call: Call) -> tuple[int, Any]:
    account = await call.account()
    _own(await call.service.store.get_key(call.ident), account, call.ident)
    key = await call.service.store.revoke_key(call.ident, int(time.time()))
    if key is None:
        raise NotFound(f"No API key with id '{call.ident}'.")
    if call.state.invalidator is not None:
        await call.state.invalidator.key_changed(key.id)
    log.info("self-service: user %s revoked key %s", account.user.id, key.id)
    return 200, key


async def _usage_query(call: Call, account: Account) -> UsageQuery:
    q = usage_api.parse_query(call.query, admin=True)
    if q.key_id is not None:
        _own(await call.service.store.get_key(q.key_id), account, q.key_id)
    fields = {name: getattr(q, name) for name in q.__struct_fields__}
    return UsageQuery(**{**fields, "user_id": account.user.id})


async def usage(call: Call) -> tuple[int, Any]:
    account = await call.account()
    return 200, await usage_api.records(call.service.store, await _usage_query(call, account))


async def usage_summary(call: Call) -> tuple[int, Any]:
    account = await call.account()
    return 200, await call.service.store.usage_summary(await _usage_query(call, account))


_ROUTES: dict[str, dict[str, Operation]] = {
    "/api/auth/register": {"POST": register},
    "/api/auth/login": {"POST": login},
    "/api/auth/refresh": {"POST": refresh},
    "/api/auth/logout": {"POST": logout},
    "/api/auth/me": {"GET": me},
    "/api/auth/nonce": {"GET": nonce},
    "/api/auth/connect": {"POST": connect},
    "/api/user/profile": {"GET": me},
    "/api/api-keys": {"GET": list_keys, "POST": create_key},
    "/api/usage": {"GET": usage},
    "/api/usage/summary": {"GET": usage_summary},
}
_KEY_ITEM: dict[str, Operation] = {"GET": get_key, "DELETE": delete_key}
