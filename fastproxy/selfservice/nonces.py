"""Single-use Sign-In with Ethereum nonces: in Redis when configured (shared, expiring on their own),
else in the database. Taking a nonce deletes it in one atomic step, so a replayed message finds none."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fastproxy.core.errors import ServiceUnavailable
from fastproxy.store import Store

TTL_S = 300


def new_nonce() -> str:
    # EIP-4361: at least 8 alphanumeric characters.
    return secrets.token_hex(16)


class Nonces(Protocol):
    async def issue(self) -> str:
        """A fresh nonce valid for TTL_S seconds. Raises ServiceUnavailable (or StoreError) when it can't be stored."""
        ...

    async def take(self, nonce: str) -> bool:
        """True once for a nonce issued here and not expired; False for anything else, and ever after."""
        ...


class RedisNonces:
    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, prefix: str, ttl: int = TTL_S) -> None:
        self._client = client
        self._prefix = prefix + "siwe-nonce:"
        self._ttl = ttl

    async def issue(self) -> str:
        nonce = new_nonce()
        try:
            await self._client.set(self._prefix + nonce, b"1", ex=self._ttl, nx=True)
        except RedisError as exc:
            raise ServiceUnavailable("Cannot issue a sign-in nonce now; please retry.") from exc
        return nonce

    async def take(self, nonce: str) -> bool:
        try:
            return bool(await self._client.delete(self._prefix + nonce))
        except RedisError as exc:
            raise ServiceUnavailable("Cannot check the sign-in nonce now; please retry.") from exc


class StoreNonces:
    def __init__(self, store: Store, ttl: int = TTL_S, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock

    async def issue(self) -> str:
        nonce = new_nonce()
        now = int(self._clock())
        await self._store.put_nonce(nonce, now, now + self._ttl)
        return nonce

    async def take(self, nonce: str) -> bool:
        return await self._store.take_nonce(nonce, int(self._clock()))
