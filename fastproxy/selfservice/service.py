"""The self-service bundle: built once per worker in lifespan, held by State, read by the /api handlers."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import redis.asyncio as aioredis

from fastproxy.core.errors import RateLimited
from fastproxy.core.limits import Limiter
from fastproxy.core.schemas import Limits, Principal
from fastproxy.core.settings import Settings
from fastproxy.ratelimit import build_limiter
from fastproxy.selfservice.nonces import Nonces, RedisNonces, StoreNonces
from fastproxy.selfservice.passwords import Passwords
from fastproxy.selfservice.tokens import Keyring
from fastproxy.store import Store

if TYPE_CHECKING:
    from fastproxy.selfservice.wallet import WalletVerifier

log = logging.getLogger("fastproxy.selfservice")


@dataclass(frozen=True, slots=True)
class SelfService:
    store: Store
    keyring: Keyring
    passwords: Passwords
    nonces: Nonces
    # None when no siwe_origin is configured (wallet sign-in off).
    wallet: WalletVerifier | None
    # Sign-in attempts only: its own buckets, never the proxy's global or per-IP limits.
    attempts: Limiter
    ip_limits: Limits
    account_limits: Limits
    signup: bool
    refresh_ttl: int

    async def count_attempt(self, client_ip: str, account: str) -> None:
        """Take one attempt from the client IP's bucket and the account's; RateLimited (429) when either is empty.

        The account is hashed: an email never becomes part of a Redis key or a log line.
        """
        subject = hashlib.sha256(account.strip().lower().encode()).hexdigest()[:24]
        principal = Principal(
            key_id="ip:" + client_ip,
            key_hint="",
            key_limits=self.ip_limits,
            user_id="account:" + subject,
            user_limits=self.account_limits,
        )
        try:
            await self.attempts.admit(principal, 0, None)
        except RateLimited as exc:
            raise RateLimited(
                "Too many sign-in attempts; please wait before trying again.",
                headers=[h for h in exc.headers if h[0] == b"retry-after"],
            ) from None


async def open_selfservice(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    store: Store | None,
    redis: aioredis.Redis | aioredis.RedisCluster | None,
) -> SelfService | None:
    """None (every /api path is 404) without JWT secrets or without a database."""
    if not settings.jwt_secrets or store is None:
        return None
    secrets_ = [s.strip() for s in settings.jwt_secrets.split(",") if s.strip()]
    # Own prefix, no global or IP limits: sign-in attempts never spend the proxy's request budgets.
    attempts = build_limiter(
        msgspec.structs.replace(
            settings, redis_prefix=settings.redis_prefix + "signin:", global_limits=None, ip_limits=None
        )
    )
    stack.push_async_callback(attempts.close)
    nonces: Nonces = (
        RedisNonces(redis, settings.redis_prefix, settings.siwe_nonce_ttl)
        if redis is not None
        else StoreNonces(store, settings.siwe_nonce_ttl)
    )
    wallet = None
    if settings.siwe_origin:
        # Imported only when wallet sign-in is on: eth-account brings ~280 modules (pydantic among them)
        # and ~20 MB into every worker, which a proxy without it should not carry.
        from fastproxy.selfservice.wallet import WalletVerifier

        chains = [int(c) for c in settings.siwe_chain_ids.split(",") if c.strip()]
        wallet = WalletVerifier(settings.siwe_origin, chains)
    log.info(
        "self-service API on /api: sign-up %s, wallet sign-in %s, %d JWT secret(s)",
        "open" if settings.signup else "closed",
        "on" if wallet else "off",
        len(secrets_),
    )
    return SelfService(
        store=store,
        keyring=Keyring(secrets_, settings.jwt_access_ttl),
        passwords=Passwords(),
        nonces=nonces,
        wallet=wallet,
        attempts=attempts,
        ip_limits=Limits(rpm=settings.auth_attempts_per_ip),
        account_limits=Limits(rpm=settings.auth_attempts_per_account),
        signup=settings.signup,
        refresh_ttl=settings.refresh_ttl,
    )
