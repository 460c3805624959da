"""Providers and routes stored through the admin API: their upstream keys encrypted at rest, and every
worker's router kept in step with the database.

A stored provider is its config's JSON with each upstream key replaced by a Fernet token (MultiFernet over
FASTPROXY_SECRET_KEYS: the first key encrypts, every key decrypts, so keys can be rotated with
`fastproxy secrets rotate`). The keys are decrypted only in memory, to build the live providers.

Config-file and environment entries win over stored ones of the same name (the admin API refuses to
create those). After a change the admin API reloads its own worker and publishes on
`<prefix>providers-changed`; every worker's `ProviderSync` reloads on that message (and when its
subscription is (re)established, since messages may have been missed). Without Redis, each worker reloads
every `providers_reload_interval` seconds. A reload that finds nothing changed does nothing; one that
finds an invalid combination logs it and keeps serving what it has.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping

import msgspec
import redis.asyncio as aioredis
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from redis.exceptions import RedisError

from fastproxy.core.providers import ConfigError, Provider, ProviderKey, Route, check_config, resolve_provider
from fastproxy.core.settings import Settings, fernet_keys
from fastproxy.core.tasks import stop_task
from fastproxy.store import Store, StoreError
from fastproxy.upstream.router import Router

log = logging.getLogger("fastproxy.providers")

PROVIDER = "provider"
ROUTE = "route"
CHANNEL = "providers-changed"
SECRET_KEYS_SETTING = "FASTPROXY_SECRET_KEYS"  # noqa: S105 - the setting's name, not a secret
_RETRY_MAX_S = 5.0


class SecretBox:
    """Encrypts and decrypts stored upstream keys; `None` keys (FASTPROXY_SECRET_KEYS unset): unusable."""

    def __init__(self, secret_keys: str) -> None:
        keys = fernet_keys(secret_keys) if secret_keys else []
        self._fernet = MultiFernet([Fernet(k) for k in keys]) if keys else None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def _box(self) -> MultiFernet:
        if self._fernet is None:
            raise ConfigError(f"stored upstream keys need {SECRET_KEYS_SETTING} (comma-separated Fernet keys)")
        return self._fernet

    def encrypt(self, secret: str) -> str:
        return self._box().encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._box().decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(f"a stored upstream key can't be decrypted with {SECRET_KEYS_SETTING}") from None

    def rotate(self, token: str) -> str:
        """The token re-encrypted with the first secret key."""
        try:
            return self._box().rotate(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(f"a stored upstream key can't be decrypted with {SECRET_KEYS_SETTING}") from None


def _map_keys(provider: Provider, convert: Callable[[str], str]) -> Provider:
    return msgspec.structs.replace(
        provider,
        api_key=convert(provider.api_key) if provider.api_key else "",
        api_keys=[ProviderKey(key=convert(k.key), weight=k.weight, id=k.id) for k in provider.api_keys],
    )


def seal(provider: Provider, box: SecretBox) -> str:
    """The provider's JSON for the database, its keys encrypted."""
    return msgspec.json.encode(_map_keys(provider, box.encrypt)).decode()


def unseal(body: str, box: SecretBox) -> Provider:
    """The stored provider with its keys decrypted (still `env:NAME` where it was given so)."""
    return _map_keys(msgspec.json.decode(body, type=Provider), box.decrypt)


def has_keys(provider: Provider) -> bool:
    return bool(provider.api_key or provider.api_keys)


async def load_stored(store: Store, box: SecretBox) -> tuple[dict[str, Provider], dict[str, Route]]:
    """Every stored provider (keys decrypted) and route, as they were given (not yet checked)."""
    providers = {name: unseal(body, box) for name, body in await store.list_entries(PROVIDER)}
    routes = {name: msgspec.json.decode(body, type=Route) for name, body in await store.list_entries(ROUTE)}
    return providers, routes


def merge(
    settings: Settings,
    providers: Mapping[str, Provider],
    routes: Mapping[str, Route],
    environ: Mapping[str, str] | None = None,
) -> tuple[dict[str, Provider], dict[str, Route]]:
    """The config's providers and routes plus the stored ones (config wins a name), secrets read, checked;
    raises ConfigError naming the provider or route and the field."""
    env = os.environ if environ is None else environ
    merged_providers = dict(settings.providers)
    for name, provider in providers.items():
        if name not in merged_providers:
            merged_providers[name] = resolve_provider(name, provider, env)
    merged_routes = dict(settings.routes)
    for name, route in routes.items():
        merged_routes.setdefault(name, route)
    check_config(merged_providers, merged_routes)
    return merged_providers, merged_routes


async def rotate_all(store: Store, box: SecretBox, now: int) -> int:
    """Re-encrypt every stored provider's keys with the first secret key; returns how many providers."""
    count = 0
    for name, body in await store.list_entries(PROVIDER):
        provider = msgspec.json.decode(body, type=Provider)
        await store.put_entry(PROVIDER, name, msgspec.json.encode(_map_keys(provider, box.rotate)).decode(), now)
        count += 1
    return count


class ProviderSync:
    """Keeps one worker's router equal to config + database; owned by lifespan (`start` / `stop`)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        box: SecretBox,
        router: Router,
        redis: aioredis.Redis | aioredis.RedisCluster | None,
    ) -> None:
        self._settings = settings
        self._store = store
        self.box = box
        self._router = router
        self._redis = redis
        self._channel = settings.redis_prefix + CHANNEL
        self._task: asyncio.Task[None] | None = None
        self._loaded: tuple[dict[str, Provider], dict[str, Route]] = (dict(settings.providers), dict(settings.routes))
        self._lock = asyncio.Lock()
        self.subscribed = asyncio.Event()

    async def reload(self) -> None:
        """Rebuild the router from config + database if anything changed; errors are logged, never raised."""
        async with self._lock:
            try:
                stored = await load_stored(self._store, self.box)
                merged = merge(self._settings, *stored)
            except StoreError as exc:
                log.warning("could not reload providers and routes (%s); serving the previous ones", exc)
                return
            except (ConfigError, msgspec.DecodeError) as exc:
                log.error("stored providers and routes are invalid (%s); serving the previous ones", exc)
                return
            if merged == self._loaded:
                return
            self._router.rebuild(*merged)
            self._loaded = merged
            log.info("providers and routes reloaded: %d providers, %d routes", len(merged[0]), len(merged[1]))

    async def changed(self) -> None:
        """After an admin change: this worker at once, every other one through Redis."""
        await self.reload()
        if self._redis is None:
            return
        try:
            await self._redis.publish(self._channel, "changed")
        except (RedisError, OSError) as exc:
            log.warning("could not announce a provider change (%s); other workers catch up later", exc)

    def start(self) -> None:
        coro = self._listen() if self._redis is not None else self._poll()
        self._task = asyncio.create_task(coro, name="provider-sync")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._settings.providers_reload_interval)
            await self.reload()

    async def _listen(self) -> None:
        assert self._redis is not None
        delay = 0.1
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    delay = 0.1
                    # Changes made while not subscribed were missed.
                    await self.reload()
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            await self.reload()
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("provider change channel lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
