"""Opens every resource a worker needs, in order, and closes them in reverse (one AsyncExitStack)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio import RedisCluster

from fastproxy.accounts.auth import Authenticator, KeyAuthenticator, OpenAccess
from fastproxy.accounts.invalidation import Invalidator, Subscriber, channel_name
from fastproxy.accounts.lastused import LastUsedWriter
from fastproxy.accounts.stored_providers import ProviderSync, SecretBox
from fastproxy.cache.memory import MemoryStore
from fastproxy.cache.redis_store import RedisStore
from fastproxy.cache.service import CacheConfig, ResponseCache
from fastproxy.core.deadline import BodyDeadline
from fastproxy.core.drain import Drain
from fastproxy.core.records import ACCESS_LOGGER
from fastproxy.core.settings import Settings
from fastproxy.core.tasks import every, stop_task
from fastproxy.observability.logs import AccessLog, configure_logging
from fastproxy.observability.metrics import Metrics
from fastproxy.observability.readiness import ReadinessCheck, upstream_check
from fastproxy.ratelimit import build_limiter
from fastproxy.selfservice.service import open_selfservice
from fastproxy.selfservice.web import Web
from fastproxy.server.heap import settled_heap
from fastproxy.server.redis import AnyRedis, open_client
from fastproxy.server.state import Observer, State
from fastproxy.server.threads import RuntimeThreads
from fastproxy.store import Store, open_store
from fastproxy.upstream import Upstream, build_upstream
from fastproxy.upstream.board import RedisBoard
from fastproxy.upstream.catalog import Catalog
from fastproxy.upstream.router import Router
from fastproxy.usage.setup import open_usage

log = logging.getLogger("fastproxy")
# Seconds between samples of the event loop's task count (a gauge for leak hunting: bench/chaos.py's soak).
TASK_SAMPLE_INTERVAL = 1.0

UpstreamFactory = Callable[[Settings], Upstream]


@contextlib.asynccontextmanager
async def open_state(settings: Settings, upstream_factory: UpstreamFactory = build_upstream) -> AsyncIterator[State]:
    listener = configure_logging(settings.log_level, settings.log_format)
    try:
        log.info("starting with settings %s", settings.masked())
        async with contextlib.AsyncExitStack() as stack:
            readiness: dict[str, ReadinessCheck] = {}
            metrics = _open_metrics(settings, stack)
            access = _open_access_log(settings, stack)
            _drain_records(settings, stack, access, metrics)
            store = await _open_store(settings, stack, readiness)
            redis = await _open_redis(settings, stack, readiness)
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
            usage = await open_usage(settings, stack, store, redis, metrics)
            response_cache = _open_cache(settings, stack, redis, metrics)
            selfservice = await open_selfservice(settings, stack, store, redis)
            web = Web(settings.cors_origins.split(","), settings.hsts)
            upstream = upstream_factory(settings)
            stack.push_async_callback(upstream.close)
            # Closed before the upstream: it sends the last pending token reconciliations.
            limiter = build_limiter(settings, metrics)
            stack.push_async_callback(limiter.close)
            router = Router(settings)
            if redis is not None:
                # Breakers opened and closed by any instance reach this worker through Redis.
                board = RedisBoard(redis, settings.redis_prefix, router.apply)
                board.start()
                stack.push_async_callback(board.stop)
                router.board = board
            provider_sync = None
            if store is not None:
                # Providers and routes stored through the admin API, loaded before the first request.
                provider_sync = ProviderSync(settings, store, SecretBox(settings.secret_keys), router, redis)
                await provider_sync.reload()
                provider_sync.start()
                stack.push_async_callback(provider_sync.stop)
            if metrics is not None:
                metrics.breaker_counts = router.open_breakers
            # Idle (nothing fetched) until providers or routes exist, from the config or the admin API.
            catalog = Catalog(router, upstream)
            _own_task(stack, catalog.run())
            headers = (("authorization", "Bearer " + settings.upstream_api_key),) if settings.upstream_api_key else ()
            base_url = settings.upstream_url.rstrip("/")
            readiness["upstream"] = upstream_check(upstream, base_url, headers)
            observers: tuple[Observer, ...] = ()
            if access is not None:
                observers += (access.write,)
            if metrics is not None:
                observers += (metrics.observe,)
            if usage is not None:
                observers += (usage.observer,)
            # Last: everything built so far lives as long as the worker.
            stack.enter_context(settled_heap(settings.gc_young_threshold))
            if settings.runtime_threads_batch:
                threads = RuntimeThreads()
                stack.callback(threads.restore)
                _own_task(stack, threads.watch())
            drain = Drain(settings.shutdown_grace)
            _own_task(stack, drain.watch())
            body_deadline = BodyDeadline(settings.body_read_timeout)
            _own_task(stack, body_deadline.watch())
            yield State(
                settings=settings,
                upstream=upstream,
                router=router,
                auth=auth,
                # Budgets are checked before any rate-limit bucket is taken.
                limiter=usage.gate(limiter) if usage is not None else limiter,
                observers=observers,
                base_url=base_url,
                upstream_headers=headers,
                metrics=metrics,
                readiness=readiness,
                degradable=degradable(settings),
                pid=os.getpid(),
                store=store,
                catalog=catalog,
                invalidator=Invalidator(cache, redis, channel_name(settings.redis_prefix)),
                cache=response_cache,
                selfservice=selfservice,
                web=web,
                cors=web if web.origins else None,
                drain=drain,
                body_deadline=body_deadline,
                provider_sync=provider_sync,
            )
    finally:
        listener.stop()


def degradable(settings: Settings) -> frozenset[str]:
    """The dependencies whose outage keeps the instance ready: each is shared by every instance and covered
    by a failure policy that keeps serving (the upstream: explicit 502/503/504 per request and fallbacks;
    Redis under `fail_open`: per-instance limits; the database under `stale` auth: cached keys, usage rows
    journaled). Marking every instance unready for them would leave the load balancer none at all and turn
    a degraded mode into a full outage (found by bench/chaos.py). Under `fail_closed` / `closed` the
    operator chose refusal, and a failing check makes the instance unready as before.
    """
    names = {"upstream"}
    if settings.ratelimit_failure == "fail_open":
        names.add("redis")
    if settings.auth_on_store_error == "stale":
        names.add("database")
    return frozenset(names)


def _own_task(stack: contextlib.AsyncExitStack, coro: Coroutine[Any, Any, None]) -> None:
    """Start a background task that the exit stack cancels and awaits at shutdown."""
    stack.push_async_callback(stop_task, asyncio.create_task(coro))


def _open_metrics(settings: Settings, stack: contextlib.AsyncExitStack) -> Metrics | None:
    if not settings.metrics:
        return None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and settings.workers != 1:
        log.warning("PROMETHEUS_MULTIPROC_DIR is not set: /metrics covers this worker only (use `fastproxy serve`)")
    metrics = Metrics(max_models=settings.metrics_max_models)
    stack.callback(metrics.close)  # the last flush, after every other component has reported
    return metrics


def _open_access_log(settings: Settings, stack: contextlib.AsyncExitStack) -> AccessLog | None:
    if not settings.access_log or not logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO):
        return None
    access = AccessLog(settings.log_format)
    access.start()
    stack.callback(access.close)  # writes every line handed over
    return access


def _drain_records(
    settings: Settings, stack: contextlib.AsyncExitStack, access: AccessLog | None, metrics: Metrics | None
) -> None:
    """Start the tasks that format the access lines and flush the metrics of the records queued meanwhile.

    Both read the same records: at the same interval (the default) one task does both, one right after
    the other (one wake-up instead of two; in CPU time the two arrangements measured the same).
    """
    steps: dict[float, list[Callable[[], None]]] = {}
    if access is not None:
        steps.setdefault(settings.access_log_interval, []).append(access.drain)
    if metrics is not None:
        steps.setdefault(settings.metrics_flush_interval, []).append(metrics.flush)
        steps.setdefault(TASK_SAMPLE_INTERVAL, []).append(metrics.sample_tasks)
    for interval, calls in steps.items():
        _own_task(stack, every(interval, calls))


def _open_cache(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    redis: aioredis.Redis | aioredis.RedisCluster | None,
    metrics: Metrics | None,
) -> ResponseCache | None:
    """The response cache: Redis (its own writer task) when configured, else the in-process LRU."""
    if not settings.cache:
        return None
    config = CacheConfig(
        ttl=settings.cache_ttl,
        max_entry_bytes=settings.cache_max_entry_bytes,
        scope=settings.cache_scope,
        generations=settings.cache_generations,
        coalesce=settings.cache_coalesce,
        local_ttl=settings.cache_local_ttl,
        default_on=settings.cache_default == "on",
    )
    url = settings.cache_redis_url or settings.redis_url
    if settings.cache_backend == "memory" or not url:
        cache = ResponseCache(config, memory=MemoryStore(settings.cache_memory_bytes))
    else:
        client = redis
        if settings.cache_redis_url or client is None:
            client = aioredis.from_url(url)
            stack.push_async_callback(client.aclose)
        store = RedisStore(
            client,
            settings.redis_prefix,
            timeout=settings.cache_redis_timeout,
            retry_interval=settings.redis_retry_interval,
        )
        store.start()
        stack.push_async_callback(store.stop)
        near = MemoryStore(settings.cache_memory_bytes) if settings.cache_local_ttl > 0 else None
        cache = ResponseCache(config, memory=near, redis=store)
    if metrics is not None:
        _own_task(stack, _cache_metrics(cache, metrics))
    return cache


async def _cache_metrics(cache: ResponseCache, metrics: Metrics, interval: float = 1.0) -> None:
    """Hits, misses and bypasses are counted as plain ints on the request path; moved here once a second."""

    def move() -> None:
        metrics.cache_observe(cache.take_counts(), cache.held_bytes(), cache.take_written(), cache.take_evictions())

    try:
        while True:
            await asyncio.sleep(interval)
            move()
    finally:
        move()


async def _open_store(
    settings: Settings, stack: contextlib.AsyncExitStack, readiness: dict[str, ReadinessCheck]
) -> Store | None:
    if not settings.database_url:
        return None
    store = await open_store(settings.database_url, pool_size=settings.database_pool_size)
    stack.push_async_callback(store.close)
    if settings.auto_migrate:
        applied = await store.migrate()
        if applied:
            log.info("database migrations applied: %s", ", ".join(applied))
    readiness["database"] = store.ping
    return store


async def _open_redis(
    settings: Settings, stack: contextlib.AsyncExitStack, readiness: dict[str, ReadinessCheck]
) -> AnyRedis | None:
    if not settings.redis_url:
        return None
    client = open_client(settings.redis_url, cluster=settings.redis_cluster)
    stack.push_async_callback(client.aclose)

    async def ping() -> None:
        if isinstance(client, RedisCluster):
            # One node, not all: a master failing over must not make every instance unready at once
            # (each call then meets the failure policy; the balancer would have no instance left).
            await client.ping(target_nodes=RedisCluster.RANDOM)
        else:
            await client.ping()

    readiness["redis"] = ping
    return client
