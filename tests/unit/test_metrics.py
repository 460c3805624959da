"""The metrics observer: what each kind of request record adds, and the bounds on label values."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from fastproxy.core.records import RequestRecord
from fastproxy.core.schemas import TokenUsage
from fastproxy.observability.metrics import Metrics, prune_dead_workers
from fastproxy.observability.multiproc import multiprocess_dir


def _record(**fields: object) -> RequestRecord:
    base: dict[str, object] = {
        "request_id": "r",
        "method": "POST",
        "path": "/v1/chat/completions",
        "endpoint": "chat.completions",
        "model": "gpt-a",
        "stream": False,
        "status": 200,
        "upstream_status": 200,
        "usage": TokenUsage(prompt=7, completion=5, total=12),
        "latency_ms": 120.0,
        "ttfb_ms": 100.0,
        "proxy_ms": 0.5,
    }
    base.update(fields)
    return RequestRecord(**base)  # type: ignore[arg-type]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(max_models=2, multiprocess_dir=None)


def _value(m: Metrics, name: str, **labels: str) -> float:
    m.flush()
    value = m.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _series(m: Metrics, family: str) -> list[dict[str, str]]:
    m.flush()
    return [
        dict(s.labels) for f in m.registry.collect() if f.name == family for s in f.samples if s.name.endswith("_total")
    ]


def test_success_counts_request_tokens_and_timings(metrics: Metrics) -> None:
    metrics.observe(_record())
    metrics.observe(_record(stream=True, usage=TokenUsage(prompt=3, completion=4, total=7)))
    assert _value(metrics, "fastproxy_requests_total", endpoint="chat.completions", model="gpt-a", status="2xx") == 2
    assert _value(metrics, "fastproxy_tokens_total", model="gpt-a", kind="prompt") == 10
    assert _value(metrics, "fastproxy_tokens_total", model="gpt-a", kind="completion") == 9
    assert _value(metrics, "fastproxy_request_duration_seconds_count", endpoint="chat.completions") == 2
    assert _value(metrics, "fastproxy_request_duration_seconds_sum", endpoint="chat.completions") == pytest.approx(0.24)
    # Upstream time excludes what the proxy spent before calling it.
    assert _value(metrics, "fastproxy_upstream_duration_seconds_sum", endpoint="chat.completions") == pytest.approx(
        0.239
    )
    # TTFB is a stream measure: only the streamed request is in it.
    assert _value(metrics, "fastproxy_upstream_ttfb_seconds_count", endpoint="chat.completions") == 1
    assert _value(metrics, "fastproxy_upstream_ttfb_seconds_sum", endpoint="chat.completions") == pytest.approx(0.0995)
    assert _value(metrics, "fastproxy_proxy_overhead_seconds_count") == 2


def test_models_beyond_the_bound_and_refused_models_are_other(metrics: Metrics) -> None:
    # A model the upstream refused never takes a slot, however early it comes.
    metrics.observe(_record(model="typo-1", status=404, upstream_status=404, usage=None))
    for model in ("gpt-a", "gpt-b", "gpt-c", "gpt-d", "gpt-a"):
        metrics.observe(_record(model=model))
    models = {s["model"] for s in _series(metrics, "fastproxy_requests")}
    assert models == {"gpt-a", "gpt-b", "other"}
    assert _value(metrics, "fastproxy_requests_total", endpoint="chat.completions", model="other", status="2xx") == 2
    assert _value(metrics, "fastproxy_requests_total", endpoint="chat.completions", model="other", status="4xx") == 1
    assert _value(metrics, "fastproxy_tokens_total", model="other", kind="prompt") == 14


def test_one_flush_of_several_endpoints_and_models(metrics: Metrics) -> None:
    """The grouped paths of a flush: timings per endpoint, tokens per model label, in one batch."""
    metrics.observe(_record(latency_ms=100.0, usage=TokenUsage(prompt=1, completion=2, total=3)))
    metrics.observe(_record(endpoint="embeddings", model="emb", latency_ms=30.0, usage=TokenUsage(prompt=4)))
    metrics.observe(_record(stream=True, model="gpt-b", ttfb_ms=10.5, usage=TokenUsage(prompt=5, completion=6)))
    metrics.observe(_record(status=502, upstream_status=None, usage=None, proxy_ms=None, error="upstream_error"))
    assert _value(metrics, "fastproxy_request_duration_seconds_count", endpoint="chat.completions") == 3
    assert _value(metrics, "fastproxy_request_duration_seconds_count", endpoint="embeddings") == 1
    assert _value(metrics, "fastproxy_request_duration_seconds_sum", endpoint="embeddings") == pytest.approx(0.03)
    # Only requests that reached the upstream have an upstream time; only the stream has a TTFB.
    assert _value(metrics, "fastproxy_upstream_duration_seconds_count", endpoint="chat.completions") == 2
    assert _value(metrics, "fastproxy_upstream_ttfb_seconds_sum", endpoint="chat.completions") == pytest.approx(0.01)
    assert _value(metrics, "fastproxy_proxy_overhead_seconds_count") == 3
    assert _value(metrics, "fastproxy_tokens_total", model="gpt-a", kind="prompt") == 1
    assert _value(metrics, "fastproxy_tokens_total", model="emb", kind="prompt") == 4
    assert _value(metrics, "fastproxy_tokens_total", model="emb", kind="completion") == 0
    assert _value(metrics, "fastproxy_tokens_total", model="other", kind="completion") == 6
    assert _value(metrics, "fastproxy_upstream_errors_total", kind="protocol") == 1


def test_request_without_model_is_none(metrics: Metrics) -> None:
    metrics.observe(_record(endpoint="models", model=None, usage=None, method="GET", path="/v1/models"))
    assert _value(metrics, "fastproxy_requests_total", endpoint="models", model="none", status="2xx") == 1


def test_proxy_side_429_is_a_rejection_upstream_429_is_not(metrics: Metrics) -> None:
    metrics.observe(_record(status=429, upstream_status=None, error="rate_limit_exceeded", usage=None, proxy_ms=None))
    metrics.observe(_record(status=429, upstream_status=None, error="insufficient_quota", usage=None, proxy_ms=None))
    metrics.observe(_record(status=429, upstream_status=429, usage=None))
    assert _value(metrics, "fastproxy_rate_limit_rejections_total", kind="rate") == 1
    assert _value(metrics, "fastproxy_rate_limit_rejections_total", kind="budget") == 1
    assert _value(metrics, "fastproxy_upstream_errors_total", kind="rate_limited") == 1
    # A request that never went upstream has no upstream timing.
    assert _value(metrics, "fastproxy_upstream_duration_seconds_count", endpoint="chat.completions") == 1


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"status": 502, "upstream_status": None, "error": "upstream_unreachable"}, "connect"),
        ({"status": 504, "upstream_status": None, "error": "upstream_timeout"}, "timeout"),
        ({"status": 503, "upstream_status": 503}, "status"),
        # Headers were sent, then the stream broke: still an upstream failure.
        ({"status": 200, "upstream_status": 200, "error": "upstream_timeout", "stream": True}, "timeout"),
    ],
)
def test_upstream_errors_by_kind(metrics: Metrics, fields: dict[str, object], kind: str) -> None:
    metrics.observe(_record(usage=None, **fields))
    assert _series(metrics, "fastproxy_upstream_errors") == [{"kind": kind}]
    assert _value(metrics, "fastproxy_upstream_errors_total", kind=kind) == 1


def test_auth_failure_by_reason(metrics: Metrics) -> None:
    metrics.observe(_record(status=401, upstream_status=None, error="invalid_api_key", usage=None, model=None))
    assert _value(metrics, "fastproxy_auth_failures_total", reason="invalid_api_key") == 1
    assert _series(metrics, "fastproxy_upstream_errors") == []
    assert _value(metrics, "fastproxy_requests_total", endpoint="chat.completions", model="none", status="4xx") == 1


def test_client_errors_are_not_upstream_errors(metrics: Metrics) -> None:
    metrics.observe(_record(status=400, upstream_status=None, error="invalid_request_error", usage=None))
    metrics.observe(_record(status=400, upstream_status=400, usage=None))
    assert _series(metrics, "fastproxy_upstream_errors") == []
    assert _series(metrics, "fastproxy_rate_limit_rejections") == []


def test_methods_for_other_components(metrics: Metrics) -> None:
    metrics.observe(_record())
    metrics.record_cost("gpt-a", 0.25)
    metrics.record_cost("never-seen", 0.5)
    metrics.limiter_fallback("allowed")
    metrics.usage_buffered(17)
    metrics.usage_batch_written(100, 0.02)
    metrics.usage_batch_failed(1.5)
    metrics.usage_journaled(40)
    metrics.usage_dropped(3)
    assert _value(metrics, "fastproxy_cost_usd_total", model="gpt-a") == 0.25
    assert _value(metrics, "fastproxy_cost_usd_total", model="other") == 0.5
    assert _value(metrics, "fastproxy_limiter_fallbacks_total", outcome="allowed") == 1
    assert _value(metrics, "fastproxy_usage_buffer_rows") == 17
    assert _value(metrics, "fastproxy_usage_rows_written_total") == 100
    assert _value(metrics, "fastproxy_usage_batch_duration_seconds_count") == 2
    assert _value(metrics, "fastproxy_usage_batches_failed_total") == 1
    assert _value(metrics, "fastproxy_usage_journal_rows") == 40
    assert _value(metrics, "fastproxy_usage_rows_dropped_total") == 3


def test_render_formats(metrics: Metrics) -> None:
    metrics.observe(_record())
    metrics.flush()
    text, content_type = metrics.render(None)
    assert content_type.startswith("text/plain")
    assert b'fastproxy_requests_total{endpoint="chat.completions",model="gpt-a",status="2xx"} 1.0' in text
    om, om_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert om_type.startswith("application/openmetrics-text")
    assert om.endswith(b"# EOF\n")


def test_exported_names_cover_every_rendered_sample(metrics: Metrics) -> None:
    metrics.observe(_record(stream=True))
    metrics.observe(_record(status=502, upstream_status=None, error="upstream_unreachable", usage=None))
    metrics.flush()
    text, _ = metrics.render(None)
    rendered = {line.split("{")[0].split(" ")[0] for line in text.decode().splitlines() if not line.startswith("#")}
    assert rendered <= metrics.exported_names()
    assert "fastproxy_usage_rows_dropped_total" in metrics.exported_names()
    assert "fastproxy_rate_limit_rejections_total" in metrics.exported_names()


def test_two_instances_in_one_process_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.observe(_record())
    assert _value(b, "fastproxy_requests_total", endpoint="chat.completions", model="gpt-a", status="2xx") == 0


def test_dead_workers_leave_the_live_gauges(tmp_path: Path) -> None:
    dead = tmp_path / "gauge_livesum_4194999.db"  # above the default pid_max: never a live process
    mine = tmp_path / f"gauge_livesum_{os.getpid()}.db"
    counters = tmp_path / "counter_4194999.db"
    for f in (dead, mine, counters):
        f.write_bytes(b"")
    prune_dead_workers(str(tmp_path))
    # A dead worker's counters stay (totals never go down); its gauges no longer add to the sum.
    assert not dead.exists() and mine.exists() and counters.exists()


def test_multiprocess_dir_is_fresh_per_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    (tmp_path / "counter_1.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("kept")
    with multiprocess_dir(str(tmp_path)) as path:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == path == str(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert tmp_path.exists()
    with multiprocess_dir() as temporary:
        assert os.path.isdir(temporary)
    assert not os.path.exists(temporary)


@pytest.mark.parametrize("value", [0.0, 0.005, 0.0051, 1, 599.9, 600, 1800, 5000])
def test_batched_histogram_matches_observe(value: float) -> None:
    batched, direct = Metrics(), Metrics()
    for _ in range(3):
        batched.observe(_record(latency_ms=value * 1000, proxy_ms=None))
        direct.request_duration.labels("chat.completions").observe(value)
    batched.flush()
    name = "fastproxy_request_duration_seconds"
    a = [s for f in batched.registry.collect() if f.name == name for s in f.samples if not s.name.endswith("_created")]
    b = [s for f in direct.registry.collect() if f.name == name for s in f.samples if not s.name.endswith("_created")]
    assert a == b and any(s.value == 3 for s in a if s.name.endswith("_count"))


def test_in_flight_is_flushed_as_a_level(metrics: Metrics) -> None:
    metrics.serving += 2
    metrics.serving -= 1
    assert _value(metrics, "fastproxy_requests_in_flight") == 1
    metrics.serving -= 1
    assert _value(metrics, "fastproxy_requests_in_flight") == 0


def test_nothing_reaches_prometheus_until_flushed(metrics: Metrics) -> None:
    metrics.observe(_record())
    assert (
        metrics.registry.get_sample_value(
            "fastproxy_requests_total", {"endpoint": "chat.completions", "model": "gpt-a", "status": "2xx"}
        )
        is None
    )
    metrics.flush()
    metrics.flush()  # a second flush adds nothing
    assert _value(metrics, "fastproxy_requests_total", endpoint="chat.completions", model="gpt-a", status="2xx") == 1


def test_tokens_of_a_batch_mixing_cache_hits_and_models(metrics: Metrics) -> None:
    """Found by the fuzzer: a cache hit (no upstream status) beside an upstream answer of the same model, in
    a batch with another model, made the flush sort None against an int and lose the whole batch."""
    metrics.observe(_record())
    metrics.observe(_record(upstream_status=None, usage=TokenUsage(prompt=2, completion=1, total=3)))
    metrics.observe(_record(model="gpt-b"))
    metrics.observe(_record(model=None, usage=TokenUsage(prompt=1, completion=1, total=2)))
    assert _value(metrics, "fastproxy_tokens_total", model="gpt-a", kind="prompt") == 9
    assert _value(metrics, "fastproxy_tokens_total", model="gpt-b", kind="completion") == 5


async def test_task_gauge_counts_the_loops_live_tasks(metrics: Metrics) -> None:
    metrics.sample_tasks()
    before = _value(metrics, "fastproxy_event_loop_tasks")
    assert before >= 1  # this test's own task
    release = asyncio.Event()
    extra = [asyncio.create_task(release.wait()) for _ in range(5)]
    metrics.sample_tasks()
    assert _value(metrics, "fastproxy_event_loop_tasks") == before + 5
    release.set()
    await asyncio.gather(*extra)
    metrics.sample_tasks()
    assert _value(metrics, "fastproxy_event_loop_tasks") == before
