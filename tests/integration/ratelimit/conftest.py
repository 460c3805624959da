from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from fastproxy.core.schemas import Limits
from fastproxy.ratelimit.buckets import Planner
from fastproxy.ratelimit.redis_limiter import RedisLimiter, connect
from tests.own_redis import OwnRedis


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A redis-server of this test's own, on a free port: safe to stop, restart and SCRIPT FLUSH."""
    server = OwnRedis()
    server.start()
    yield server
    server.close()


class Limiters:
    """Builds RedisLimiters on the shared Redis, under this test's key prefix; closes them after."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._made: list[RedisLimiter] = []

    def __call__(
        self,
        global_limits: Limits | None = None,
        ip_limits: Limits | None = None,
        *,
        url: str | None = None,
        timeout: float = 2.0,
        fail_open: bool = True,
        retry_interval: float = 1.0,
        settle_interval: float = 0.0,
    ) -> RedisLimiter:
        client: Redis = connect(url or self.url, timeout)
        lim = RedisLimiter(
            Planner(self.prefix, global_limits, ip_limits),
            client,
            fail_open=fail_open,
            retry_interval=retry_interval,
            settle_interval=settle_interval,
        )
        self._made.append(lim)
        return lim

    async def close(self) -> None:
        for lim in self._made:
            await lim.close()


@pytest.fixture
async def limiters(redis_url: str, redis_prefix: str, redis_client: Redis) -> AsyncIterator[Limiters]:
    # redis_client is requested so its teardown deletes this test's keys.
    made = Limiters(redis_url, redis_prefix)
    yield made
    await made.close()
