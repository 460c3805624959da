"""Builds the usage pipeline for lifespan: price table, writer, journal, spend tracker and gate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from fastproxy.core.limits import Limiter
from fastproxy.core.settings import Settings
from fastproxy.core.tasks import stop_task
from fastproxy.observability.metrics import Metrics
from fastproxy.server.state import Observer
from fastproxy.store import Store, StoreError
from fastproxy.usage.budget import SpendTracker, UsageGate
from fastproxy.usage.journal import Journal
from fastproxy.usage.pricing import load_prices
from fastproxy.usage.row import UsageRow, row_maker
from fastproxy.usage.writer import UsageWriter

log = logging.getLogger("fastproxy.usage")


@dataclass(frozen=True, slots=True)
class Usage:
    writer: UsageWriter
    spend: SpendTracker

    @property
    def observer(self) -> Observer:
        return self.writer.observe

    def gate(self, inner: Limiter) -> Limiter:
        return UsageGate(inner, self.spend, self.writer)


async def open_usage(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    store: Store | None,
    redis: aioredis.Redis | aioredis.RedisCluster | None,
    metrics: Metrics | None = None,
) -> Usage | None:
    """Start the writer and spend sync (stopped by `stack`, the writer flushing first); None when disabled."""
    if not settings.usage_enabled or store is None:
        return None
    prices = load_prices(settings.price_table)
    spend = SpendTracker(redis, settings.redis_prefix, settings.budget_sync_interval)
    try:
        await spend.rebuild(store.spend_totals)
    except StoreError as exc:
        log.warning("could not read spend totals from the database; budgets start from Redis only: %s", exc)
    spend.start()
    stack.push_async_callback(spend.stop)
    writer = UsageWriter(
        store,
        Journal(settings.usage_journal_dir),
        row_maker(prices, settings.provider_name),
        batch_size=settings.usage_batch_size,
        interval=settings.usage_flush_interval,
        buffer_size=settings.usage_buffer_size,
        flush_timeout=settings.usage_flush_timeout,
        replay_interval=settings.usage_replay_interval,
        on_overflow=settings.usage_on_overflow,
        listeners=(spend.charge,) if metrics is None else (spend.charge, _cost_to(metrics)),
        metrics=metrics,
    )
    await writer.start()
    # Pushed after the spend sync, so popped before it: the last rows are charged, then pushed to Redis.
    stack.push_async_callback(writer.stop)
    if metrics is not None:
        stack.push_async_callback(stop_task, asyncio.create_task(_sample_gauges(writer, metrics)))
    return Usage(writer, spend)


def _cost_to(metrics: Metrics) -> Callable[[UsageRow], None]:
    def record(row: UsageRow) -> None:
        if row.cost_usd > 0:
            metrics.record_cost(row.model, row.cost_usd)
        if row.cost_saved_usd > 0:
            metrics.cache_saved(row.cost_saved_usd)

    return record


async def _sample_gauges(writer: UsageWriter, metrics: Metrics, interval: float = 1.0) -> None:
    """Buffer depth and journal backlog are levels, not events: read them once a second."""
    while True:
        metrics.usage_buffered(writer.buffered)
        metrics.usage_journaled(writer.journal_rows)
        await asyncio.sleep(interval)
