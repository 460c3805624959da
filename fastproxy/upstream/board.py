"""Where breaker state is shared. `LocalBoard` keeps it per worker (no Redis); `RedisBoard` shares it
with every instance: an opened breaker is published on `<prefix>breakers` with its end, so another
instance stops sending to a dead key within a second; a half-open breaker's probe is one Redis
`SET NX PX` permit across all instances; a success closes it everywhere. An instance that starts later
learns of an open breaker from its own failures (nothing is stored but the probe permit).

Messages carry the provider name, the key's id and a time: never a key or its hash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fastproxy.core.tasks import stop_task

log = logging.getLogger("fastproxy.upstream")

CHANNEL = "breakers"
_RETRY_MAX_S = 5.0
# How long a probe permit is held at most (a probe that never reports back frees it after this).
PROBE_PERMIT_MS = 10_000


class Board(Protocol):
    async def acquire_probe(self, provider: str, key_id: str) -> bool:
        """May this worker send the one probe of a half-open breaker? Never raises."""
        ...

    def opened(self, provider: str, key_id: str, until_wall: float) -> None:
        """A breaker opened here until `until_wall` (Unix seconds): tell the others. Non-blocking."""
        ...

    def closed(self, provider: str, key_id: str) -> None:
        """A probe succeeded here: close the breaker everywhere. Non-blocking."""
        ...


class LocalBoard:
    """Per worker: every half-open breaker's probe is granted; nothing to tell."""

    async def acquire_probe(self, provider: str, key_id: str) -> bool:
        return True

    def opened(self, provider: str, key_id: str, until_wall: float) -> None:
        return None

    def closed(self, provider: str, key_id: str) -> None:
        return None


# Applied to a worker's own breakers when a message arrives: (provider, key id, open until (Unix s) or None).
Apply = Callable[[str, str, float | None], None]


class RedisBoard:
    """Publishes and listens; its two tasks are started and stopped by lifespan."""

    def __init__(self, redis: aioredis.Redis | aioredis.RedisCluster, prefix: str, apply: Apply) -> None:
        self._redis = redis
        self._prefix = prefix
        self._channel = prefix + CHANNEL
        self._apply = apply
        self._outbox: asyncio.Queue[tuple[str, str, float | None]] = asyncio.Queue(maxsize=10_000)
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = asyncio.Event()

    def _permit(self, provider: str, key_id: str) -> str:
        # One hash tag per (provider, key): every key of one breaker lives in one Redis Cluster slot.
        return f"{self._prefix}{{breaker:{provider}:{key_id}}}:probe"

    async def acquire_probe(self, provider: str, key_id: str) -> bool:
        try:
            return bool(await self._redis.set(self._permit(provider, key_id), b"1", nx=True, px=PROBE_PERMIT_MS))
        except (RedisError, OSError) as exc:
            log.warning("breaker probe permit unavailable (%s): probing from this worker", exc)
            return True

    def opened(self, provider: str, key_id: str, until_wall: float) -> None:
        self._post(provider, key_id, until_wall)

    def closed(self, provider: str, key_id: str) -> None:
        self._post(provider, key_id, None)

    def _post(self, provider: str, key_id: str, until: float | None) -> None:
        try:
            self._outbox.put_nowait((provider, key_id, until))
        except asyncio.QueueFull:
            log.warning("breaker announcements are backing up; dropping one (others catch up by cooldown)")

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publish(), name="breaker-publisher"),
            asyncio.create_task(self._listen(), name="breaker-subscriber"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []

    async def _publish(self) -> None:
        while True:
            provider, key_id, until = await self._outbox.get()
            message = f"{provider}\t{key_id}\t{'' if until is None else repr(until)}"
            permit = self._permit(provider, key_id)
            try:
                if until is None:
                    await self._redis.delete(permit)
                else:
                    # Nobody probes before the cooldown ends: the permit is held until then (a failed probe's
                    # permit is not freed early, or another instance would probe again at once).
                    await self._redis.set(permit, b"1", px=max(1, int((until - time.time()) * 1000)))
                await self._redis.publish(self._channel, message)
            except (RedisError, OSError) as exc:
                log.warning("could not publish a breaker change (%s)", exc)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    delay = 0.1
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._on_message(message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("breaker channel lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    def _on_message(self, data: bytes) -> None:
        parts = data.decode("utf-8", "replace").split("\t")
        if len(parts) != 3:
            return
        provider, key_id, until = parts
        try:
            self._apply(provider, key_id, float(until) if until else None)
        except ValueError:
            return


def wall_to_monotonic(until_wall: float) -> float:
    return time.monotonic() + (until_wall - time.time())
