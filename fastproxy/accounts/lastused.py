"""Batched `last_used_at` writes: the request path only sets a dict entry; this task writes them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastproxy.core.tasks import stop_task
from fastproxy.store import Store, StoreError

log = logging.getLogger("fastproxy.lastused")


class LastUsedWriter:
    """Every `interval` seconds, one store round trip for all keys used since the last flush.

    A failed flush is logged and its batch merged back into the next (last_used_at is a hint, not
    billing data, so nothing more durable is warranted). `stop()` flushes once more.
    """

    def __init__(self, take: Callable[[], dict[str, int]], store: Store, interval: float) -> None:
        self._take = take
        self._store = store
        self._interval = interval
        self._carry: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="last-used-writer")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self.flush()

    async def flush(self) -> None:
        batch = self._carry
        batch.update(self._take())
        self._carry = {}
        if not batch:
            return
        try:
            await self._store.touch_keys(batch)
        except StoreError as exc:
            log.warning("could not record last_used_at for %d keys: %s", len(batch), exc)
            for key_id, ts in batch.items():
                self._carry[key_id] = max(ts, self._carry.get(key_id, 0))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()
