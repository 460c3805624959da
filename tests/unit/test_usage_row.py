"""From a request record to a priced usage row: costs, estimates for abandoned streams, price overrides."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from fastproxy.core.schemas import TokenUsage
from fastproxy.usage.pricing import PriceTableError, load_prices
from fastproxy.usage.row import UsageRow, row_maker
from tests.unit.test_usage_writer import record

make = row_maker(load_prices(), "openai", clock=lambda: 1000.0)


def test_cost_counts_cached_prompt_tokens_at_the_cached_price() -> None:
    usage = TokenUsage(prompt=1_000_000, completion=500_000, total=1_500_000, cached=400_000)
    row = make(record(1, model="gpt-4o", usage=usage))
    # 600k input at $2.50, 400k cached at $1.25, 500k output at $10.
    assert row.cost_usd == pytest.approx(1.5 + 0.5 + 5.0)
    assert (row.cached_tokens, row.provider, row.estimated) == (400_000, "openai", False)
    assert row.ts == pytest.approx(1000.0 - 0.0125)


def test_unknown_model_costs_nothing_but_keeps_its_tokens() -> None:
    row = make(record(1, model="no-such-model"))
    assert (row.cost_usd, row.total_tokens) == (0.0, 15)


def test_abandoned_stream_is_estimated_from_prompt_and_events() -> None:
    rec = record(1, stream=True, usage=None, disconnected=True, status=499, events=7, prompt_estimate=40)
    row = make(rec)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens, row.estimated) == (40, 7, 47, True)
    assert row.cost_usd == pytest.approx((40 * 1.0 + 7 * 2.0) / 1e6)


def test_stream_failed_midway_is_estimated_but_a_refused_request_is_zero() -> None:
    midway = make(record(1, stream=True, usage=None, error="upstream_error", events=3, prompt_estimate=10))
    assert (midway.completion_tokens, midway.estimated) == (3, True)
    refused = make(record(2, usage=None, status=429, upstream_status=None, error="rate_limit_exceeded"))
    assert (refused.total_tokens, refused.cost_usd, refused.estimated, refused.error) == (
        0,
        0.0,
        False,
        "rate_limit_exceeded",
    )
    upstream_error = make(record(3, usage=None, status=500, upstream_status=500))
    assert (upstream_error.total_tokens, upstream_error.status) == (0, 500)


def test_price_override_file(tmp_path: Path) -> None:
    toml = tmp_path / "prices.toml"
    toml.write_text('[models."mock-model"]\ninput = 10.0\noutput = 20.0\n[models."mine"]\ninput = 1.0\n')
    prices = load_prices(str(toml))
    assert prices.cost("mock-model", TokenUsage(prompt=1_000_000, cached=1_000_000)) == pytest.approx(10.0)
    assert "mine" in prices and "gpt-4o" in prices
    js = tmp_path / "p.json"
    js.write_text('{"models": {"mine": {"input": 3, "output": 4, "cached_input": 1}}}')
    assert load_prices(str(js)).cost("mine", TokenUsage(prompt=2, completion=1, cached=1)) == pytest.approx(8e-6)
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."x"]\ninptu = 1\n')
    with pytest.raises(PriceTableError, match=r"bad\.toml"):
        load_prices(str(bad))
    with pytest.raises(PriceTableError, match="cannot read"):
        load_prices(str(tmp_path / "missing.toml"))


def test_a_client_request_id_is_kept_beside_a_unique_one_of_the_proxy() -> None:
    a = make(record(1, request_id="client-id", request_id_from_client=True))
    b = make(record(2, request_id="client-id", request_id_from_client=True))
    assert a.client_request_id == b.client_request_id == "client-id"
    assert a.request_id != b.request_id and "client-id" not in (a.request_id, b.request_id)
    own = make(record(3, request_id="abc123"))
    assert (own.request_id, own.client_request_id) == ("abc123", None)


def test_journal_lines_without_the_newest_columns_still_decode() -> None:
    row = make(record(1))
    fields = msgspec.json.decode(msgspec.json.encode(row))
    # Journaled before client_request_id, then attempts and partial (0004), then cache_hit and
    # cost_saved_usd (0005) existed: the newest columns are missing, and take their defaults.
    defaults = {"client_request_id": None, "attempts": 1, "partial": False, "cache_hit": False, "cost_saved_usd": 0.0}
    names = list(defaults)
    for missing in range(1, len(names) + 1):
        older = msgspec.json.decode(msgspec.json.encode(fields[:-missing]), type=UsageRow)
        kept = {k: getattr(row, k) for k in names[: len(names) - missing]}
        assert older == msgspec.structs.replace(row, **{**defaults, **kept})


def test_a_cache_hit_costs_nothing_and_records_what_it_saved() -> None:
    miss = make(record(1))
    hit = make(record(2, cache_hit=True))
    assert miss.cost_usd > 0 and (miss.cache_hit, miss.cost_saved_usd) == (False, 0.0)
    assert (hit.cache_hit, hit.cost_usd, hit.cost_saved_usd) == (True, 0.0, miss.cost_usd)
    assert (hit.prompt_tokens, hit.completion_tokens) == (miss.prompt_tokens, miss.completion_tokens)
