"""What the usage API asks of the store, and what it answers: filters in, records and totals out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec


class UsageQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters; None means any. `start` inclusive, `end` exclusive, Unix seconds. `after` is a record id."""

    key_id: str | None = None
    user_id: str | None = None
    model: str | None = None
    start: float | None = None
    end: float | None = None
    after: int | None = None
    limit: int = 100


class UsageRecord(msgspec.Struct, kw_only=True):
    id: str
    object: str = "usage.record"
    request_id: str
    # Unix seconds (with a fraction) when the request started.
    created: float
    key_id: str | None
    user_id: str | None
    model: str | None
    provider: str | None
    endpoint: str
    stream: bool
    status: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    latency_ms: float | None
    ttfb_ms: float | None
    error: str | None
    # Tokens estimated (stream abandoned or failed before upstream reported usage).
    estimated: bool
    # The x-request-id the client sent, if any (request_id is then the proxy's own, unique one).
    client_request_id: str | None
    # Answered by the response cache: cost_usd is 0, cost_saved_usd what it would have cost.
    cache_hit: bool = False
    cost_saved_usd: float = 0.0


class UsageTotals(msgspec.Struct, kw_only=True):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0


class ModelTotals(UsageTotals, kw_only=True):
    model: str | None


class DayTotals(UsageTotals, kw_only=True):
    # UTC calendar day, YYYY-MM-DD.
    date: str


class UsageSummary(msgspec.Struct, kw_only=True):
    object: str = "usage.summary"
    total: UsageTotals
    by_model: list[ModelTotals]
    by_day: list[DayTotals]


# Column list shared by both SQL dialects (ts is converted to Unix seconds by each).
RECORD_COLS = (
    "id, request_id, {ts}, key_id, user_id, model, provider, endpoint, streamed, status, prompt_tokens,"
    " completion_tokens, total_tokens, cached_tokens, reasoning_tokens, cost_usd, latency_ms, ttfb_ms, error,"
    " estimated, client_request_id, cache_hit, cost_saved_usd"
)
TOTAL_COLS = "count(*), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), sum(cost_usd)"


def record_from_row(row: Sequence[Any]) -> UsageRecord:
    return UsageRecord(
        id=str(row[0]),
        request_id=row[1],
        created=float(row[2]),
        key_id=row[3],
        user_id=row[4],
        model=row[5],
        provider=row[6],
        endpoint=row[7],
        stream=bool(row[8]),
        status=row[9],
        prompt_tokens=row[10],
        completion_tokens=row[11],
        total_tokens=row[12],
        cached_tokens=row[13],
        reasoning_tokens=row[14],
        cost_usd=float(row[15]),
        latency_ms=row[16],
        ttfb_ms=row[17],
        error=row[18],
        estimated=bool(row[19]),
        client_request_id=row[20],
        cache_hit=bool(row[21]),
        cost_saved_usd=float(row[22]),
    )


def totals(r: Sequence[Any]) -> dict[str, Any]:
    """count, sums of a TOTAL_COLS row (NULL sums of an empty group are 0)."""
    return {
        "requests": int(r[0] or 0),
        "prompt_tokens": int(r[1] or 0),
        "completion_tokens": int(r[2] or 0),
        "total_tokens": int(r[3] or 0),
        "cost_usd": float(r[4] or 0.0),
    }


def summary(by_model: list[ModelTotals], by_day: list[DayTotals]) -> UsageSummary:
    total = UsageTotals()
    for m in by_model:
        total.requests += m.requests
        total.prompt_tokens += m.prompt_tokens
        total.completion_tokens += m.completion_tokens
        total.total_tokens += m.total_tokens
        total.cost_usd += m.cost_usd
    return UsageSummary(total=total, by_model=by_model, by_day=by_day)


def where_clause(q: UsageQuery, with_cursor: bool, value_sql: Callable[[str, int], str]) -> tuple[str, list[Any]]:
    """A WHERE clause of only the filters given (so the planner sees plain predicates), and its values.

    `value_sql(column, n)` is the dialect's SQL for the n-th value (1-based) compared with `column`.
    """
    parts: list[str] = []
    args: list[Any] = []
    for column, value, op in (
        ("key_id", q.key_id, "="),
        ("user_id", q.user_id, "="),
        ("model", q.model, "="),
        ("ts", q.start, ">="),
        ("ts", q.end, "<"),
        ("id", q.after if with_cursor else None, ">"),
    ):
        if value is not None:
            args.append(value)
            parts.append(f"{column} {op} {value_sql(column, len(args))}")
    return (" WHERE " + " AND ".join(parts)) if parts else "", args
