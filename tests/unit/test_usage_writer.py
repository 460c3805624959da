"""The usage writer, journal and sinks against a real PostgreSQL and a real SQLite file."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from fastproxy.core.records import RequestRecord
from fastproxy.core.schemas import TokenUsage
from fastproxy.store import Store, StoreError, open_store
from fastproxy.usage.journal import Journal
from fastproxy.usage.pricing import load_prices
from fastproxy.usage.row import UsageRow, row_maker
from fastproxy.usage.writer import UsageWriter

make_row = row_maker(load_prices(), "mock", clock=lambda: 1_700_000_000.0)


def record(i: int, **kw: object) -> RequestRecord:
    fields: dict[str, object] = {
        "request_id": f"req-{i:06d}",
        "method": "POST",
        "path": "/v1/chat/completions",
        "endpoint": "chat.completions",
        "model": "mock-model",
        "stream": False,
        "status": 200,
        "upstream_status": 200,
        "usage": TokenUsage(prompt=10, completion=5, total=15),
        "latency_ms": 12.5,
        "ttfb_ms": 3.0,
        "key_id": "key_1",
        "user_id": "user_1",
    }
    fields.update(kw)
    return RequestRecord(**fields)  # type: ignore[arg-type]


class Switch:
    """A real store behind a switch: when `down`, writes fail the way a lost database fails them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.calls = 0

    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        self.calls += 1
        if self.down:
            raise StoreError("PostgreSQL error: ConnectionRefusedError")
        return await self.store.write_usage(rows)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await open_store(database_url)
    await s.migrate()
    yield s
    await s.close()


async def count(store: Store) -> int:
    keys, _ = await store.spend_totals()
    # The spend of key_1 over rows of 10 prompt + 5 completion tokens of mock-model ($1/$2 per 1M).
    return round(keys.get("key_1", 0.0) / 20e-6)


def writer(sink: Switch | Store, journal_dir: Path, **kw: object) -> UsageWriter:
    opts: dict[str, object] = {"batch_size": 50, "interval": 0.05, "flush_timeout": 2.0, "replay_interval": 0.05}
    opts.update(kw)
    return UsageWriter(sink, Journal(journal_dir), make_row, **opts)  # type: ignore[arg-type]


async def test_sink_is_idempotent_on_request_id(store: Store) -> None:
    rows = [make_row(record(i)) for i in range(120)]
    assert await store.write_usage(rows) == 120
    assert await store.write_usage([*rows[100:], make_row(record(500))]) == 1
    assert await count(store) == 121


async def test_rows_are_priced_and_flushed_on_stop(store: Store, tmp_path: Path) -> None:
    w = writer(store, tmp_path / "j", interval=60.0, batch_size=1000)
    await w.start()
    for i in range(30):
        w.observe(record(i))
    assert w.buffered == 30
    await w.stop()  # the interval never passed: only stop() can have written them
    assert await count(store) == 30
    assert w.stats.rows_written == 30 and not (tmp_path / "j").exists()


async def test_flush_at_batch_size(store: Store, tmp_path: Path) -> None:
    w = writer(store, tmp_path, interval=60.0, batch_size=20)
    await w.start()
    for i in range(45):
        w.observe(record(i))
    for _ in range(200):
        if w.stats.rows_written >= 40:
            break
        await asyncio.sleep(0.01)
    assert w.stats.rows_written == 40 and w.buffered == 5
    await w.stop()
    assert await count(store) == 45


async def test_database_down_rows_journaled_then_replayed_exactly_once(store: Store, tmp_path: Path) -> None:
    tmp_path = tmp_path / "j"
    sink = Switch(store)
    w = writer(sink, tmp_path)
    await w.start()
    for i in range(10):
        w.observe(record(i))
    await asyncio.sleep(0.2)
    sink.down = True
    for i in range(10, 100):
        w.observe(record(i))
        if i % 10 == 0:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert w.stats.rows_journaled > 0 and w.journal_bytes > 0
    assert await count(store) == 10
    sink.down = False
    for _ in range(200):
        if w.journal_bytes == 0 and w.buffered == 0:
            break
        await asyncio.sleep(0.02)
    await w.stop()
    assert await count(store) == 100
    assert not list(tmp_path.glob("usage-*.jsonl"))


async def test_shutdown_while_database_down_keeps_journal_for_the_next_start(store: Store, tmp_path: Path) -> None:
    tmp_path = tmp_path / "j"
    sink = Switch(store)
    sink.down = True
    w = writer(sink, tmp_path, interval=60.0)
    await w.start()
    for i in range(25):
        w.observe(record(i))
    await w.stop()
    left = list(tmp_path.glob("usage-*.jsonl"))
    assert len(left) == 1 and await count(store) == 0
    # The next worker to start (another process, in production) replays the file and removes it.
    sink.down = False
    w2 = writer(sink, tmp_path)
    await w2.start()
    await w2.stop()
    assert await count(store) == 25 and not list(tmp_path.glob("usage-*.jsonl"))


async def test_replaying_the_same_journal_twice_adds_nothing(store: Store, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "a")
    journal.append([make_row(record(i)) for i in range(40)])
    journal.close()  # not empty: the file stays, as after a crash
    (path,) = (tmp_path / "a").glob("usage-*.jsonl")
    copy = tmp_path / "copy.jsonl"
    shutil.copy(path, copy)
    for _ in range(2):
        shutil.copy(copy, tmp_path / "a" / f"usage-1-{os.urandom(4).hex()}.jsonl")
        w = writer(store, tmp_path / "a")
        await w.start()
        await w.stop()
        assert await count(store) == 40
    assert not list((tmp_path / "a").glob("usage-*.jsonl"))


async def test_journal_of_a_live_writer_is_not_claimed(tmp_path: Path) -> None:
    live = Journal(tmp_path)
    live.append([make_row(record(1))])
    other = Journal(tmp_path)
    assert list(other.orphans()) == []
    live.close()
    orphans = list(other.orphans())
    assert [o.path for o in orphans] == [live.path]
    assert [r.request_id for r in orphans[0].rows()] == ["req-000001"]
    orphans[0].release()


async def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([make_row(record(i)) for i in range(3)])
    journal.close()
    with open(journal.path, "ab") as f:
        f.write(b'["req-torn", 17000')
    (orphan,) = Journal(tmp_path).orphans()
    assert [r.request_id for r in orphan.rows()] == ["req-000000", "req-000001", "req-000002"]
    orphan.release()


async def test_buffer_full_and_journal_unusable_drops_and_counts(store: Store, tmp_path: Path) -> None:
    sink = Switch(store)
    sink.down = True
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    w = writer(sink, blocker, buffer_size=20, interval=0.02)
    await w.start()
    for i in range(50):
        w.observe(record(i))
        await asyncio.sleep(0.005)
    # At rest (no batch in flight between buffer and journal) every row is either buffered or dropped.
    for _ in range(300):
        if w.stats.rows_dropped + w.buffered == 50:
            break
        await asyncio.sleep(0.01)
    assert w.buffered <= 20
    assert w.stats.rows_dropped >= 30 and w.stats.rows_dropped + w.buffered == 50
    assert w.stats.batches_failed > 0 and w.stats.rows_journaled == 0
    sink.down = False
    await w.stop()
    assert await count(store) == 50 - w.stats.rows_dropped


async def test_reject_policy_closes_the_gate_before_the_buffer_is_full(store: Store, tmp_path: Path) -> None:
    sink = Switch(store)
    sink.down = True
    w = writer(sink, tmp_path / "f" / "x", buffer_size=20, on_overflow="reject", interval=60.0)
    (tmp_path / "f").write_bytes(b"")  # the journal directory can never be created
    await w.start()
    for i in range(17):
        w.observe(record(i))
    assert w.accepting
    w.observe(record(17))
    assert not w.accepting and w.stats.rows_dropped == 0
    sink.down = False
    await w.stop()
    assert await count(store) == 18
