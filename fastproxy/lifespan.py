"""Opens every resource a worker needs, in order, and closes them in reverse."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis

from fastproxy.auth import Authenticator, KeyAuthenticator, OpenAccess
from fastproxy.invalidation import Invalidator, Subscriber, channel_name
from fastproxy.lastused import LastUsedWriter
from fastproxy.limits import NoLimits
from fastproxy.logs import AccessLog, configure_logging
from fastproxy.settings import Settings
from fastproxy.state import Observer, ReadyCheck, State
from fastproxy.store import Store, open_store
from fastproxy.upstream import AiohttpUpstream, Upstream
from fastproxy.usage.setup import open_usage

log = logging.getLogger("fastproxy")

UpstreamFactory = Callable[[Settings], Upstream]


@contextlib.asynccontextmanager
async def open_state(settings: Settings, upstream_factory: UpstreamFactory = AiohttpUpstream) -> AsyncIterator[State]:
    listener = configure_logging(settings.log_level, settings.log_format)
    try:
        log.info("starting with settings %s", settings.masked())
        async with contextlib.AsyncExitStack() as stack:
            checks: list[ReadyCheck] = []
            store = await _open_store(settings, stack, checks)
            redis = await _open_redis(settings, stack, checks)
            auth: Authenticator = OpenAccess()
            cache: KeyAuthenticator | None = None
            if settings.auth == "keys":
                assert store is not None  # Settings refuses auth=keys without a database
                cache = KeyAuthenticator(
                    store,
                    ttl=settings.auth_cache_ttl,
                    size=settings.auth_cache_size,
                    negative_size=settings.auth_negative_cache_size,
                    on_store_error=settings.auth_on_store_error,
                )
                auth = cache
                writer = LastUsedWriter(cache.take_used, store, settings.last_used_flush_interval)
                writer.start()
                stack.push_async_callback(writer.stop)
                if redis is not None:
                    subscriber = Subscriber(cache, redis, channel_name(settings.redis_prefix))
                    subscriber.start()
                    stack.push_async_callback(subscriber.stop)
            usage = await open_usage(settings, stack, store, redis)
            upstream = upstream_factory(settings)
            stack.push_async_callback(upstream.close)
            headers = (("authorization", "Bearer " + settings.upstream_api_key),) if settings.upstream_api_key else ()
            observers: tuple[Observer, ...] = (AccessLog().write,) if settings.access_log else ()
            if usage is not None:
                observers += (usage.observer,)
            yield State(
                settings=settings,
                upstream=upstream,
                auth=auth,
                limiter=usage.gate(NoLimits()) if usage is not None else NoLimits(),
                observers=observers,
                base_url=settings.upstream_url.rstrip("/"),
                upstream_headers=headers,
                store=store,
                invalidator=Invalidator(cache, redis, channel_name(settings.redis_prefix)),
                ready_checks=tuple(checks),
            )
    finally:
        listener.stop()


async def _open_store(settings: Settings, stack: contextlib.AsyncExitStack, checks: list[ReadyCheck]) -> Store | None:
    if not settings.database_url:
        return None
    store = await open_store(settings.database_url, pool_size=settings.database_pool_size)
    stack.push_async_callback(store.close)
    if settings.auto_migrate:
        applied = await store.migrate()
        if applied:
            log.info("database migrations applied: %s", ", ".join(applied))
    checks.append(("database", store.ping))
    return store


async def _open_redis(
    settings: Settings, stack: contextlib.AsyncExitStack, checks: list[ReadyCheck]
) -> aioredis.Redis | None:
    if not settings.redis_url:
        return None
    client = aioredis.from_url(settings.redis_url)
    stack.push_async_callback(client.aclose)
    checks.append(("redis", client.ping))
    return client
