"""The usage writer: one task per worker drains a bounded buffer into the database in batches.

Contract of `observe(record)` (the request-path side): price the record, append the row to an
in-process deque; never I/O, never blocks, never raises. When the buffer is full the row is dropped and
counted (policy `drop`); with policy `reject` the gate (`accepting`) turns new requests away with 503
before the buffer fills, and only rows beyond its capacity are dropped.

The task flushes when a batch of `batch_size` rows is waiting or every `interval` seconds. A batch the
sink refuses or does not finish within `flush_timeout` goes to the journal (fsynced); from then on rows
go straight to the journal until a replay succeeds (every `replay_interval`), which empties it. Rows
the journal cannot take either go back to the buffer (bounded). `stop()` flushes everything left,
journaling what the database will not take; nothing is lost on a graceful shutdown.
Writes are idempotent on request_id, so a batch replayed after a timeout that did commit adds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from fastproxy.core.records import RequestRecord
from fastproxy.store import StoreError
from fastproxy.usage.journal import Journal
from fastproxy.usage.row import RowMaker, UsageRow

log = logging.getLogger("fastproxy.usage")

OverflowPolicy = Literal["drop", "reject"]
# Called with every row accepted into the buffer (budget spend is charged here).
RowListener = Callable[[UsageRow], None]


class UsageSink(Protocol):
    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        """Insert the rows in one transaction, skipping request_ids already present; return how many were new.

        Raises StoreError when the database fails (then none of the rows were written).
        """
        ...


@dataclass(slots=True)
class WriterStats:
    """Counters for metrics (read them; only the writer changes them)."""

    rows_written: int = 0
    batches_written: int = 0
    batches_failed: int = 0
    rows_journaled: int = 0
    rows_replayed: int = 0
    rows_dropped: int = 0
    last_batch_seconds: float = 0.0


class WriterMetrics(Protocol):
    """What the writer reports as it goes (fastproxy.observability.metrics.Metrics implements it)."""

    def usage_batch_written(self, rows: int, seconds: float) -> None: ...

    def usage_batch_failed(self, seconds: float) -> None: ...

    def usage_dropped(self, rows: int) -> None: ...


class UsageWriter:
    def __init__(
        self,
        sink: UsageSink,
        journal: Journal,
        make_row: RowMaker,
        *,
        batch_size: int = 500,
        interval: float = 1.0,
        buffer_size: int = 100_000,
        flush_timeout: float = 5.0,
        replay_interval: float = 5.0,
        on_overflow: OverflowPolicy = "drop",
        listeners: Sequence[RowListener] = (),
        metrics: WriterMetrics | None = None,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        # Rows in this process's journal, waiting for the database.
        self.journal_rows = 0
        self._journal = journal
        self._make_row = make_row
        self._batch_size = batch_size
        self._interval = interval
        self._capacity = buffer_size
        # With `reject`, requests are turned away above this mark so the ones in flight still fit.
        self._high_water = max(1, buffer_size - max(1, buffer_size // 10)) if on_overflow == "reject" else buffer_size
        self._flush_timeout = flush_timeout
        self._replay_interval = replay_interval
        self._listeners = tuple(listeners)
        self._buffer: deque[UsageRow] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._db_ok = True
        self._journal_dirty = False
        self._next_replay = 0.0
        self._task: asyncio.Task[None] | None = None
        self.stats = WriterStats()

    # -- request path -------------------------------------------------------------------------
    def observe(self, record: RequestRecord) -> None:
        row = self._make_row(record)
        for listener in self._listeners:
            listener(row)
        if len(self._buffer) >= self._capacity:
            self._drop(1)
            return
        self._buffer.append(row)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    @property
    def accepting(self) -> bool:
        """False when the buffer is nearly full and the policy is `reject`: new requests should get 503."""
        return len(self._buffer) < self._high_water

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def journal_bytes(self) -> int:
        return self._journal.size

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Replay journals left by processes that are gone, then start the task."""
        await self._replay()
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def stop(self) -> None:
        """Flush every buffered row to the database, or to the journal when it will not take them."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        # One more try at the database even if it failed before: the journal may be what is broken.
        self._db_ok = True
        await self._flush(final=True)
        if self._buffer:
            # Neither the database nor the journal took them, and the process is going away.
            self._drop(len(self._buffer))
            self._buffer.clear()
        await asyncio.to_thread(self._journal.close)
        if self._journal.size:
            log.warning("usage journal %s keeps %d bytes for the next start", self._journal.path, self._journal.size)

    async def _run(self) -> None:
        while not self._closing:
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._flush(final=False)
                if time.monotonic() >= self._next_replay:
                    await self._replay()
            except Exception:
                # The writer must outlive any bug in one flush; the rows stay buffered or journaled.
                log.exception("usage writer iteration failed")

    # -- flushing -----------------------------------------------------------------------------
    def _take(self, n: int) -> list[UsageRow]:
        buf = self._buffer
        return [buf.popleft() for _ in range(min(n, len(buf)))]

    async def _flush(self, final: bool) -> None:
        while self._buffer:
            if not self._db_ok:
                await self._to_journal(self._take(len(self._buffer)))
                return
            batch = self._take(self._batch_size)
            if not await self._write(batch):
                self._db_ok = False
                self._next_replay = time.monotonic() + self._replay_interval
                await self._to_journal(batch + self._take(len(self._buffer)))
                return
            if not final and len(self._buffer) < self._batch_size:
                return  # a partial batch waits for the next interval

    async def _write(self, rows: Sequence[UsageRow]) -> bool:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._flush_timeout):
                await self._sink.write_usage(rows)
        except (StoreError, TimeoutError) as exc:
            self._failed(started)
            log.warning("usage batch of %d rows not written: %s", len(rows), exc or "timed out")
            return False
        except Exception:
            # Not a database failure we know, but the rows must not be lost with it: they get journaled.
            self._failed(started)
            log.exception("usage batch of %d rows not written", len(rows))
            return False
        self.stats.last_batch_seconds = time.perf_counter() - started
        self.stats.batches_written += 1
        self.stats.rows_written += len(rows)
        if self._metrics is not None:
            self._metrics.usage_batch_written(len(rows), self.stats.last_batch_seconds)
        return True

    def _failed(self, started: float) -> None:
        self.stats.batches_failed += 1
        if self._metrics is not None:
            self._metrics.usage_batch_failed(time.perf_counter() - started)

    async def _to_journal(self, rows: list[UsageRow]) -> None:
        if not rows:
            return
        try:
            await asyncio.to_thread(self._journal.append, rows)
        except OSError as exc:
            log.error("usage journal %s unusable: %s", self._journal.path, exc)
            # Back to the front of the buffer, as far as it has room; the rest is lost and counted.
            room = max(0, self._capacity - len(self._buffer))
            keep = rows[:room]
            self._buffer.extendleft(reversed(keep))
            self._drop(len(rows) - len(keep))
            return
        self._journal_dirty = True
        self.journal_rows += len(rows)
        self.stats.rows_journaled += len(rows)

    def _drop(self, n: int) -> None:
        if n <= 0:
            return
        if self.stats.rows_dropped == 0 or (self.stats.rows_dropped // 1000) != ((self.stats.rows_dropped + n) // 1000):
            log.error("usage rows dropped: buffer full and journal unusable (%d so far)", self.stats.rows_dropped + n)
        self.stats.rows_dropped += n
        if self._metrics is not None:
            self._metrics.usage_dropped(n)

    # -- replay -------------------------------------------------------------------------------
    async def _replay(self) -> None:
        """Write this process's journal and any orphaned ones to the database; clear what was written."""
        self._next_replay = time.monotonic() + self._replay_interval
        if self._journal_dirty:
            rows = await asyncio.to_thread(self._journal.rows)
            if not await self._write_all(rows):
                return
            await asyncio.to_thread(self._journal.clear)
            self._journal_dirty = False
            self.journal_rows = 0
            self.stats.rows_replayed += len(rows)
            log.info("usage journal replayed: %d rows", len(rows))
        self._db_ok = True
        orphans = await asyncio.to_thread(lambda: list(self._journal.orphans()))
        for i, orphan in enumerate(orphans):
            rows = await asyncio.to_thread(orphan.rows)
            if not await self._write_all(rows):
                for rest in orphans[i:]:
                    rest.release()
                return
            await asyncio.to_thread(orphan.remove)
            self.stats.rows_replayed += len(rows)
            log.info("usage journal %s replayed: %d rows", orphan.path.name, len(rows))

    async def _write_all(self, rows: list[UsageRow]) -> bool:
        for i in range(0, len(rows), self._batch_size):
            if not await self._write(rows[i : i + self._batch_size]):
                self._db_ok = False
                return False
        return True
