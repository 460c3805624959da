"""The usage row, and how a finished request's record becomes one (priced, estimated when it must be)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import msgspec

from fastproxy.core.providers import DEFAULT_PROVIDER
from fastproxy.core.records import RequestRecord
from fastproxy.core.schemas import TokenUsage
from fastproxy.usage.pricing import PriceTable

# Order of the columns in the `usage` table that a row fills (`id` is the table's own).
COLUMNS = (
    "request_id",
    "ts",
    "key_id",
    "user_id",
    "model",
    "upstream_model",
    "provider",
    "endpoint",
    "streamed",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms",
    "ttfb_ms",
    "client_ip",
    "error",
    "estimated",
    "client_request_id",
    "attempts",
    "partial",
    "cache_hit",
    "cost_saved_usd",
)


class UsageRow(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """One row of `usage`, fields in COLUMNS order (array_like: a journal line is a compact JSON array).

    `ts` is Unix seconds (float) when the request started. `request_id` is unique per proxied request.
    """

    request_id: str
    ts: float
    key_id: str | None
    user_id: str | None
    model: str | None
    upstream_model: str | None
    provider: str | None
    endpoint: str
    streamed: bool
    status: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    latency_ms: float | None
    ttfb_ms: float | None
    client_ip: str | None
    error: str | None
    estimated: bool
    # The x-request-id the client sent, when it sent one; `request_id` is then the proxy's own, because
    # it is the idempotency key of the row and a client may reuse ids (by mistake, or to dodge billing).
    # Last and defaulted, so journal lines written before it existed still decode.
    client_request_id: str | None = None
    # Upstream attempts (fallbacks included); whether the stream broke off after it had started.
    attempts: int = 1
    partial: bool = False
    # Answered by the response cache: the tokens are the original answer's, cost_usd is 0 and
    # cost_saved_usd what the upstream would have charged. Defaulted, for older journal lines.
    cache_hit: bool = False
    cost_saved_usd: float = 0.0


RowMaker = Callable[[RequestRecord], UsageRow]


def estimate_usage(record: RequestRecord) -> TokenUsage | None:
    """Usage for a stream that ended without its usage event: the prompt estimate plus one token per event.

    Applies when the client abandoned the stream or upstream failed mid-stream after sending events;
    otherwise None (a request that never reached upstream, or failed before any output, used nothing).
    """
    if record.usage is not None or not record.stream:
        return None
    if not (record.disconnected or (record.error is not None and record.events > 0)):
        return None
    if record.upstream_status is None:
        return None
    prompt = record.prompt_estimate
    completion = record.events
    return TokenUsage(prompt=prompt, completion=completion, total=prompt + completion)


def row_maker(prices: PriceTable, provider: str, clock: Callable[[], float] = time.time) -> RowMaker:
    """A function that turns a record into a priced row; `clock` is read when the record arrives (its end)."""

    def make(record: RequestRecord) -> UsageRow:
        if record.request_id_from_client:
            request_id, client_request_id = os.urandom(12).hex(), record.request_id
        else:
            request_id, client_request_id = record.request_id, None
        usage = record.usage
        estimated = False
        if usage is None:
            usage = estimate_usage(record)
            estimated = usage is not None
        if usage is None:
            usage = _ZERO
        cost = prices.cost(record.model, usage)
        return UsageRow(
            request_id=request_id,
            ts=clock() - record.latency_ms / 1000,
            key_id=record.key_id,
            user_id=record.user_id,
            model=record.model,
            # The model sent upstream by the target that answered (the route may have rewritten it).
            upstream_model=record.upstream_model or record.model,
            # The `default` provider (FASTPROXY_UPSTREAM_URL) is recorded under FASTPROXY_PROVIDER_NAME.
            provider=record.provider if record.provider not in (None, DEFAULT_PROVIDER) else provider,
            endpoint=record.endpoint,
            streamed=record.stream,
            status=record.status,
            prompt_tokens=usage.prompt,
            completion_tokens=usage.completion,
            total_tokens=usage.total,
            cached_tokens=usage.cached,
            reasoning_tokens=usage.reasoning,
            cost_usd=0.0 if record.cache_hit else cost,
            latency_ms=record.latency_ms,
            ttfb_ms=record.ttfb_ms,
            client_ip=record.client_ip,
            error=record.error,
            estimated=estimated,
            client_request_id=client_request_id,
            attempts=record.attempts,
            partial=record.partial,
            cache_hit=record.cache_hit,
            cost_saved_usd=cost if record.cache_hit else 0.0,
        )

    return make


_ZERO = TokenUsage()
