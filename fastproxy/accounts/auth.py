"""Authentication seam: the Authorization header in, a Principal out.

`OpenAccess` (FASTPROXY_AUTH=none) makes every request anonymous; `KeyAuthenticator`
(FASTPROXY_AUTH=keys, the default) resolves fastproxy API keys from the store through a cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal, Protocol

from fastproxy.accounts import keys
from fastproxy.core.errors import AuthenticationFailed, ServiceUnavailable
from fastproxy.core.schemas import ANONYMOUS, Principal
from fastproxy.store import ApiKey, KeyGrant, Store, StoreError, User

log = logging.getLogger("fastproxy.auth")

_STALE_RETRY_S = 1.0


class Authenticator(Protocol):
    async def authenticate(self, authorization: bytes | None) -> Principal:
        """Resolve the caller. Raises AuthenticationFailed (401) with a message saying what was wrong.

        Must cost no I/O in the steady state (cached).
        """
        ...

    async def close(self) -> None: ...


class OpenAccess:
    async def authenticate(self, authorization: bytes | None) -> Principal:
        return ANONYMOUS

    async def close(self) -> None:
        return None


class KeyAuthenticator:
    """API keys from the store, resolved through an in-process cache keyed by the key's SHA-256.

    Steady state costs no I/O: a known key is looked up in the store once per `ttl` seconds (and
    concurrent misses for one key share a single query). Unknown keys are cached too, in a separate
    LRU bounded at `negative_size`, so a flood of random keys cannot grow memory or hammer the
    database. Expiry is checked against the clock on every request, so a cached key still expires
    on time. `evict_key`/`evict_user`/`clear` are how invalidations (pub/sub) reach the cache.

    When the store fails, a key never seen gets 503 (the proxy cannot tell who is calling). A key
    seen before keeps working from its stale entry with `on_store_error="stale"` (the default), or
    gets 503 too with "closed".
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = 5.0,
        size: int = 100_000,
        negative_size: int = 10_000,
        on_store_error: Literal["stale", "closed"] = "stale",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._size = size
        self._negative_size = negative_size
        self._serve_stale = on_store_error == "stale"
        self._clock = clock
        self._wall = wall
        self._known: OrderedDict[str, _Entry] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[KeyGrant | None]] = {}
        self._used: dict[str, int] = {}

    async def authenticate(self, authorization: bytes | None) -> Principal:
        key = _bearer(authorization)
        digest = keys.hash_key(key)
        now = self._clock()
        entry = self._known.get(digest)
        if entry is None or entry.fresh_until <= now:
            if self._unknown.get(digest, 0.0) > now:
                raise _unknown(key)
            entry = await self._refresh(digest, entry, now)
            if entry is None:
                raise _unknown(key)
        self._check(entry, key, digest)
        self._used[entry.grant.key.id] = int(self._wall())
        return entry.principal

    def _check(self, entry: _Entry, key: str, digest: str) -> None:
        grant = entry.grant
        # The lookup was by hash already; compare again in constant time so a cache bug can't admit a key.
        if not keys.same_hash(grant.key_hash, digest):
            raise _unknown(key)
        end = f"(ending in '{keys.hint(key)}')"
        if grant.key.revoked_at is not None:
            raise AuthenticationFailed(f"This API key {end} has been revoked.")
        if grant.key.expires_at is not None and grant.key.expires_at <= self._wall():
            when = datetime.fromtimestamp(grant.key.expires_at, UTC).isoformat()
            raise AuthenticationFailed(f"This API key {end} expired at {when}.")
        if grant.user is not None and grant.user.disabled:
            raise AuthenticationFailed(f"The user of this API key {end} is disabled.")

    async def _refresh(self, digest: str, stale: _Entry | None, now: float) -> _Entry | None:
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[digest] = pending
            try:
                pending.set_result(await self._store.find_key(digest))
            except BaseException as exc:
                # Waiters must never hang on a lookup whose owner failed or was cancelled.
                failure = exc if isinstance(exc, StoreError) else StoreError("key lookup interrupted")
                pending.set_exception(failure)
                pending.exception()  # marked retrieved, so an unawaited future logs nothing
                if not isinstance(exc, StoreError):
                    raise
            finally:
                del self._inflight[digest]
        try:
            grant = await asyncio.shield(pending)
        except StoreError as exc:
            if stale is not None and self._serve_stale:
                # Retry this key at most once per _STALE_RETRY_S, not on every request of the outage.
                stale.fresh_until = now + min(self._ttl, _STALE_RETRY_S)
                log.warning(
                    "key store unavailable (%s); serving key %s from a stale cache entry", exc, stale.grant.key.id
                )
                return stale
            raise ServiceUnavailable("Authentication is temporarily unavailable; please retry.") from exc
        if grant is None:
            self._known.pop(digest, None)
            self._unknown[digest] = now + self._ttl
            self._unknown.move_to_end(digest)
            while len(self._unknown) > self._negative_size:
                self._unknown.popitem(last=False)
            return None
        entry = _Entry(grant, principal_of(grant.key, grant.user), now + self._ttl)
        self._known[digest] = entry
        self._known.move_to_end(digest)
        while len(self._known) > self._size:
            self._known.popitem(last=False)
        return entry

    def evict_key(self, key_id: str) -> None:
        for digest in [d for d, e in self._known.items() if e.grant.key.id == key_id]:
            del self._known[digest]

    def evict_user(self, user_id: str) -> None:
        for digest in [d for d, e in self._known.items() if e.grant.key.user_id == user_id]:
            del self._known[digest]

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()

    def take_used(self) -> dict[str, int]:
        """The keys used since the last call (key id -> Unix seconds), for a batched last_used_at write."""
        used, self._used = self._used, {}
        return used

    def cached(self) -> int:
        return len(self._known) + len(self._unknown)

    async def close(self) -> None:
        return None


class _Entry:
    __slots__ = ("fresh_until", "grant", "principal")

    def __init__(self, grant: KeyGrant, principal: Principal, fresh_until: float) -> None:
        self.grant = grant
        self.principal = principal
        self.fresh_until = fresh_until


def principal_of(key: ApiKey, user: User | None) -> Principal:
    """The caller a key stands for, with the limits of the key and of its user."""
    return Principal(
        key_id=key.id,
        user_id=key.user_id,
        key_hint=key.key_hint,
        key_limits=key.limits,
        user_limits=user.limits if user else None,
        allowed_models=frozenset(key.allowed_models) if key.allowed_models is not None else None,
        cache=key.cache,
        upstream_key=key.upstream_key or (user.upstream_key if user else None),
    )


_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def _bearer(authorization: bytes | None) -> str:
    if not authorization or not authorization.strip():
        raise AuthenticationFailed(_MISSING)
    scheme, _, value = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not value.strip():
        raise AuthenticationFailed("Malformed Authorization header: expected 'Bearer YOUR_KEY'.")
    key = value.strip().decode("latin-1")
    if not keys.well_formed(key):
        raise AuthenticationFailed(
            f"Malformed API key {_shown(key)}: fastproxy keys start with '{keys.KEY_PREFIX}' "
            "followed by 43 letters and digits."
        )
    return key


def _shown(key: str) -> str:
    return f"ending in '{keys.hint(key)}'" if len(key) > 12 else "(too short to show)"


def _unknown(key: str) -> AuthenticationFailed:
    return AuthenticationFailed(f"Incorrect API key provided: {keys.KEY_PREFIX}...{keys.hint(key)}.")
