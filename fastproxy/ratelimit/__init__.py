"""Rate limits: token buckets for requests and tokens, per key, user, client IP and globally.

buckets  which buckets apply to a request (pure)
replies  x-ratelimit-* headers and 429 errors (pure)
core     admit / settle / levels over any bucket store
local    in-process store: the embedded default and the fail-open fallback
redis_limiter  the shared store: one Lua script; concurrent admits share a call, settles are coalesced
cluster  the shared store on a Redis Cluster: one script call per hash slot, give-back on refusal
wire     the store's own pipelined Redis connection (the request path's only Redis I/O)
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis, RedisCluster

from fastproxy.core.limits import Limiter
from fastproxy.core.settings import Settings
from fastproxy.observability.metrics import Metrics
from fastproxy.ratelimit.buckets import Planner
from fastproxy.ratelimit.local import LocalLimiter
from fastproxy.ratelimit.redis_limiter import POOL_SIZE, RedisLimiter, connect
from fastproxy.server.redis import is_cluster, open_client

log = logging.getLogger("fastproxy.ratelimit")


def build_limiter(settings: Settings, metrics: Metrics | None = None) -> Limiter:
    """The limiter the settings ask for: Redis when FASTPROXY_REDIS_URL is set, in-process otherwise.

    Opens no connection (redis-py connects on first use), so nothing here can fail at startup.
    """
    planner = Planner(settings.redis_prefix, settings.global_limits, settings.ip_limits)
    if settings.redis_url:
        log.info("rate limits: in Redis, shared by every instance (when Redis fails: %s)", settings.ratelimit_failure)
        if is_cluster(settings.redis_url, settings.redis_cluster):
            client: Redis | RedisCluster = open_client(
                settings.redis_url,
                cluster=True,
                timeout=settings.redis_timeout,
                max_connections=POOL_SIZE,
                retries=False,
            )
        else:
            client = connect(settings.redis_url, settings.redis_timeout)
        return RedisLimiter(
            planner,
            client,
            fail_open=settings.ratelimit_failure == "fail_open",
            retry_interval=settings.redis_retry_interval,
            settle_interval=settings.ratelimit_settle_interval,
            pipeline=settings.ratelimit_pipeline,
            on_fallback=metrics.limiter_fallback if metrics is not None else None,
        )
    log.info("rate limits: in process, per instance (no redis_url)")
    return LocalLimiter(planner)


__all__ = ["LocalLimiter", "RedisLimiter", "build_limiter"]
