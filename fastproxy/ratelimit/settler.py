"""Coalesces token reconciliations into one Redis call per interval instead of one per request.

Each settle adds its difference (real usage minus estimate) to a pending total per bucket; a task
owned by the limiter applies all pending totals in one script call every `interval` seconds (sooner
when many buckets are pending), and once more on close. Other instances see a refund or an extra
charge at most `interval` later; the reservation made at admit time stays immediate and exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final

from fastproxy.ratelimit.buckets import Bucket
from fastproxy.ratelimit.core import BucketStore, StoreUnavailable

log = logging.getLogger("fastproxy.ratelimit")

# Keys per script call when flushing (bounded argument lists), and the pending size that forces a flush.
_CHUNK: Final = 256
_EAGER: Final = 1024


class _Pending:
    __slots__ = ("bucket", "delta")

    def __init__(self, bucket: Bucket, delta: int) -> None:
        self.bucket = bucket
        self.delta = delta


class Settler:
    def __init__(self, store: BucketStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, buckets: Sequence[Bucket], delta: int) -> None:
        """Queue `delta` tokens for each bucket (negative: a refund). Never blocks, never raises."""
        for bucket in buckets:
            entry = self._pending.get(bucket.key)
            if entry is None:
                self._pending[bucket.key] = _Pending(bucket, delta)
            else:
                entry.bucket = bucket  # the latest limits win
                entry.delta += delta
        if self._task is None and not self._closed:
            # Started on first use, from inside the running loop; owned here and ended by close().
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fastproxy-ratelimit-settler")
        if len(self._pending) >= _EAGER:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                # A bug must not end the loop: pending differences would then pile up unflushed.
                log.exception("rate-limit reconciliation failed")

    async def flush(self) -> None:
        """Apply everything pending now. A failed call's differences are dropped and counted in `lost`
        (each reservation then stands for its request's real usage: an error bounded by the estimate)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        items = [p for p in batch.values() if p.delta]
        for i in range(0, len(items), _CHUNK):
            chunk = items[i : i + _CHUNK]
            try:
                await self._store.force([p.bucket for p in chunk], [p.delta for p in chunk])
            except StoreUnavailable as exc:
                log.debug("rate-limit reconciliation lost for %d buckets: %s", len(chunk), exc)

    async def close(self) -> None:
        """Stop the task after its current flush, then apply what is still pending."""
        self._closed = True
        if self._task is not None:
            self._wake.set()
            await self._task
            self._task = None
        await self.flush()
