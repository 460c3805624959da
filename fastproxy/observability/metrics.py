"""Every Prometheus metric the proxy exports, and the observer that derives them from request records.

Built once per worker in lifespan (importing this module creates nothing). Two modes, chosen by the
environment prometheus-client itself reads when it is first imported:

- multiprocess: `PROMETHEUS_MULTIPROC_DIR` is set (the `fastproxy serve` master sets it to a fresh
  directory before Granian starts the workers, see fastproxy.observability.multiproc). Each worker writes its values
  to its own mmap files there; `render()` merges the files of every worker, so any worker's /metrics
  answers for the whole instance. Gauges use `livesum`: a worker's gauge files are removed when it
  stops, or at the next render once it has died (its counters stay: totals never go down).
- single process (unit tests, an app served without the CLI): each Metrics owns a private registry.

Label rules (series must stay bounded whatever clients send):
- `endpoint`: the fixed route names (chat.completions, completions, embeddings, responses, messages,
  messages.count_tokens, models, passthrough); unknown paths are answered by the router and never reach
  the observer.
- `model`: the first `max_models` distinct models this worker saw the upstream accept (2xx); every
  other model, including typos and models the upstream refused, is `other`; no model is `none`.
  Across W workers an instance exports at most W * max_models model values (usually the same ones).
- `status`: the class of the status sent to the client: 2xx, 3xx, 4xx, 5xx.
- `kind` / `reason` / `outcome`: small fixed vocabularies listed at each method.
Key ids and user ids are never labels.

Cost: the request path only adds 1 to and takes 1 from `serving` and appends the record to a list
(`observe` is that list's append); `flush()` moves the sums into prometheus-client, every `metrics_flush_interval`
seconds (0.05 by default; lifespan's periodic task), before each render on the rendering worker, and at shutdown.
Another worker's latest 50 ms may therefore be missing from a scrape; nothing is counted twice, and only a
worker killed outright (SIGKILL, OOM) loses what it had not flushed.
"""

from __future__ import annotations

import asyncio
import collections
import glob
import logging
import os
from collections.abc import Callable, Iterable
from itertools import groupby
from operator import attrgetter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from fastproxy.core.records import RequestRecord
from fastproxy.core.schemas import TokenUsage
from fastproxy.observability.aggregate import Batch, attempt_outcome

# An LLM gateway's requests last from milliseconds (cached embeddings) to many minutes (reasoning streams).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
# What the proxy itself adds is measured in microseconds to milliseconds.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

log = logging.getLogger("fastproxy.metrics")
_REQUEST_KEY = attrgetter("endpoint", "model", "status", "upstream_status")
_ENDPOINT = attrgetter("endpoint")
_LABEL_KEY = attrgetter("model", "status", "upstream_status")
_PROMPT = attrgetter("prompt")
_COMPLETION = attrgetter("completion")
# A record's (model, status, upstream_status): what decides its model label.
_LabelKey = tuple[str | None, int, int | None]
OTHER_MODEL = "other"
NO_MODEL = "none"
_STATUS_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
# Error codes (fastproxy.core.errors) that mean the upstream failed, and the kind they are counted as.
_UPSTREAM_ERROR_KIND = {"upstream_unreachable": "connect", "upstream_timeout": "timeout", "upstream_error": "protocol"}


class Metrics:
    """The metric definitions of one worker, and the methods the rest of the proxy calls to drive them.

    Every method is cheap and never raises on valid input; none does I/O beyond prometheus-client's
    own mmap writes in multiprocess mode.
    """

    def __init__(self, max_models: int = 50, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is None:
            multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        if multiprocess_dir is not None and not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                "PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported in this process"
            )
        self.multiprocess_dir = multiprocess_dir
        self.max_models = max_models
        # In multiprocess mode the values live in files; the metric objects need no registry of their own.
        own = CollectorRegistry(auto_describe=True)
        reg = None if multiprocess_dir else own
        self._declared: list[MetricWrapperBase] = []

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            metric = Counter(name, doc, tuple(labels), registry=reg)
            self._declared.append(metric)
            return metric

        def histogram(name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...]) -> Histogram:
            metric = Histogram(name, doc, tuple(labels), registry=reg, buckets=buckets)
            self._declared.append(metric)
            return metric

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            metric = Gauge(name, doc, tuple(labels), registry=reg, multiprocess_mode="livesum")
            self._declared.append(metric)
            return metric

        # Requests, from the records the hot path hands to observers.
        self.requests = counter(
            "fastproxy_requests",
            "Proxied requests by endpoint, model and status class.",
            ("endpoint", "model", "status"),
        )
        self.request_duration = histogram(
            "fastproxy_request_duration_seconds",
            "Whole request time as the proxy saw it, streams included.",
            ("endpoint",),
            DURATION_BUCKETS,
        )
        self.upstream_duration = histogram(
            "fastproxy_upstream_duration_seconds",
            "Time from sending the request upstream to the end of its response.",
            ("endpoint",),
            DURATION_BUCKETS,
        )
        self.upstream_ttfb = histogram(
            "fastproxy_upstream_ttfb_seconds",
            "Streams: time from sending the request upstream to its first body byte.",
            ("endpoint",),
            DURATION_BUCKETS,
        )
        self.proxy_overhead = histogram(
            "fastproxy_proxy_overhead_seconds",
            "The proxy's own time before the upstream call (auth, body, limits).",
            (),
            OVERHEAD_BUCKETS,
        )
        self.in_flight = gauge("fastproxy_requests_in_flight", "Proxied requests being served now.")
        self.tokens = counter("fastproxy_tokens", "Tokens reported by the upstream.", ("model", "kind"))
        self.cost = counter("fastproxy_cost_usd", "Spend in US dollars by model.", ("model",))
        self.rate_limit_rejections = counter(
            "fastproxy_rate_limit_rejections", "Requests refused by the proxy's own limits.", ("kind",)
        )
        self.limiter_fallbacks = counter(
            "fastproxy_limiter_fallbacks",
            "Requests decided by the failure policy because the limiter store was unavailable.",
            ("outcome",),
        )
        self.upstream_errors = counter("fastproxy_upstream_errors", "Upstream failures by kind.", ("kind",))
        self.auth_failures = counter("fastproxy_auth_failures", "Requests refused by authentication.", ("reason",))
        # The usage writer (driven by fastproxy.usage once it lands).
        self.usage_buffer_depth = gauge("fastproxy_usage_buffer_rows", "Usage rows waiting in the writer's buffer.")
        self.usage_rows_written = counter("fastproxy_usage_rows_written", "Usage rows written to the database.")
        self.usage_batch_duration = histogram(
            "fastproxy_usage_batch_duration_seconds", "Time to write one batch of usage rows.", (), BATCH_BUCKETS
        )
        self.usage_batches_failed = counter("fastproxy_usage_batches_failed", "Usage batches that failed to write.")
        self.usage_journal_rows = gauge(
            "fastproxy_usage_journal_rows", "Usage rows journaled to local disk, waiting for the database."
        )
        self.usage_rows_dropped = counter(
            "fastproxy_usage_rows_dropped", "Usage rows dropped because the buffer and journal were full."
        )
        # The response cache (fastproxy/cache), moved here from its own counters once a second.
        self.cache_requests = counter(
            "fastproxy_cache_requests",
            "Cacheable-endpoint requests by cache outcome (hit, miss, bypass) and reason.",
            ("outcome", "reason"),
        )
        self.cache_memory_bytes = gauge("fastproxy_cache_memory_bytes", "Bytes held by the in-process cache.")
        self.cache_bytes_written = counter("fastproxy_cache_bytes_written", "Bytes written to the Redis cache.")
        self.cache_evictions = counter("fastproxy_cache_evictions", "Entries evicted from the in-process cache.")
        self.cache_cost_saved = counter("fastproxy_cache_cost_saved_usd", "Spend avoided by cache hits, in USD.")

        # Providers and routes (labels: provider names come from the configuration, so they are bounded).
        self.upstream_attempts = counter(
            "fastproxy_upstream_attempts",
            "Upstream attempts by provider and outcome (ok, or why it failed: status_5xx, status_429, status_401,"
            " timeout, first_token_timeout, unreachable, stream_cut, stream_error, other).",
            ("provider", "outcome"),
        )
        self.fallbacks = counter(
            "fastproxy_fallbacks", "Requests answered by another target or key than the first tried.", ("provider",)
        )
        self.retries = counter("fastproxy_retries", "Upstream attempts after a request's first.")
        self.breakers_open = gauge(
            "fastproxy_breakers_open", "Provider keys whose circuit breaker is open or half-open.", ("provider",)
        )
        self.provider_ttft = histogram(
            "fastproxy_provider_ttft_seconds",
            "Time from the request going upstream to its first content (streams) or response, by provider.",
            ("provider",),
            DURATION_BUCKETS,
        )
        self._ttft: dict[str, Batch] = {}
        # A leak of tasks (a fire-and-forget task per request, a watcher never cancelled) shows as a count
        # that keeps climbing under a steady load; one series per worker (`pid`), gone when it stops.
        self.event_loop_tasks = Gauge(
            "fastproxy_event_loop_tasks",
            "asyncio tasks alive in this worker's event loop, sampled once a second.",
            registry=reg,
            multiprocess_mode="liveall",
        )
        self._declared.append(self.event_loop_tasks)
        # Set by lifespan: each provider's number of open breakers, read at every flush.
        self.breaker_counts: Callable[[], dict[str, int]] | None = None

        if multiprocess_dir:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        else:
            self.registry = own
        # Finished requests since the last flush; flush() derives every request metric from them.
        self._records: list[RequestRecord] = []
        # The observer (State.observers calls it with every finished request's record): the list's own
        # append, a C call with no Python frame; flush() derives the metrics of the whole batch.
        self.observe: Callable[[RequestRecord], None] = self._records.append
        self._costs: list[tuple[str | None, float]] = []
        self._models: set[str] = set()
        self._timings: dict[str, tuple[Batch, Batch, Batch]] = {}
        self._overhead = Batch(self.proxy_overhead)
        # Proxied requests being served now: the handler adds 1 when one starts and takes 1 when it
        # ends, however it ends. A plain attribute rather than two methods: it runs twice per request.
        self.serving = 0

    def flush(self) -> None:
        """Move what is pending into prometheus-client. Call on the event loop's thread only."""
        records = self._records.copy()  # the list itself stays: `observe` is its append
        self._records.clear()
        if records:
            self._derive(records)
        if self._costs:
            costs, self._costs = self._costs, []
            spent: dict[str, float] = {}
            for model, usd in costs:
                label = model if model in self._models else (NO_MODEL if model is None else OTHER_MODEL)
                spent[label] = spent.get(label, 0.0) + usd
            for label, usd in spent.items():
                self.cost.labels(label).inc(usd)
        self.in_flight.set(self.serving)
        if self.breaker_counts is not None:
            for provider, count in self.breaker_counts().items():
                self.breakers_open.labels(provider).set(count)

    def sample_tasks(self) -> None:
        """Set the task gauge; lifespan calls it once a second from its periodic task (on the loop).

        `all_tasks()` walks every live task, so it runs off the request path and not at the 50 ms flush."""
        self.event_loop_tasks.set(len(asyncio.all_tasks()))

    def _count_attempts(self, records: list[RequestRecord]) -> None:
        attempts: collections.Counter[tuple[str, str]] = collections.Counter()
        fallbacks: collections.Counter[str] = collections.Counter()
        ttfts: dict[str, list[float]] = {}
        retries = 0
        for r in records:
            provider = r.provider
            if provider is None:
                continue
            failures = r.failures
            if failures:
                for failed in failures:
                    attempts[failed.provider, attempt_outcome(failed.error)] += 1
                if r.status < 400:
                    fallbacks[provider] += 1
                retries += r.attempts - 1
            if r.attempts > len(failures or ()):
                # The last attempt answered (its failures, if any, are counted above).
                attempts[provider, "ok" if not r.partial else attempt_outcome(r.error or "other")] += 1
            if r.ttfb_ms is not None and r.proxy_ms is not None:
                # Milliseconds, batched per provider like the other histograms (one observe each costs µs).
                ttfts.setdefault(provider, []).append(max(0.0, r.ttfb_ms - r.proxy_ms))
        for labels, n in attempts.items():
            self.upstream_attempts.labels(*labels).inc(n)
        for provider, n in fallbacks.items():
            self.fallbacks.labels(provider).inc(n)
        if retries:
            self.retries.inc(retries)
        for provider, ms in ttfts.items():
            batch = self._ttft.get(provider)
            if batch is None:
                batch = self._ttft[provider] = Batch(self.provider_ttft.labels(provider))
            batch.add_all(ms)

    def _derive(self, records: list[RequestRecord]) -> None:
        # Model labels in first-seen order, so the bounded slots go to the models seen first.
        labels: dict[_LabelKey, str] = {}
        requests: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for (endpoint, model, status, upstream_status), n in collections.Counter(map(_REQUEST_KEY, records)).items():
            label = labels.get((model, status, upstream_status))
            if label is None:
                label = labels[model, status, upstream_status] = self._model_label(model, status, upstream_status)
            requests[endpoint, label, _STATUS_CLASS[status // 100] if 0 <= status < 600 else "5xx"] += n
        endpoints: set[str] = set()
        for request_labels, n in requests.items():
            self.requests.labels(*request_labels).inc(n)
            endpoints.add(request_labels[0])
        self._count_tokens(records, labels)
        self._count_attempts(records)
        for r in [r for r in records if r.error is not None or r.status >= 400]:
            self._count_failure(r)
        # Usually one endpoint carries the whole batch: no sort then.
        if len(endpoints) == 1:
            groups: Iterable[tuple[str, Iterable[RequestRecord]]] = ((endpoints.pop(), records),)
        else:
            records.sort(key=_ENDPOINT)
            groups = groupby(records, _ENDPOINT)
        overheads: list[float] = []
        for endpoint, batch in groups:
            # Milliseconds, as the records hold them: Batch buckets them against bounds in milliseconds.
            latencies: list[float] = []
            upstreams: list[float] = []
            ttfbs: list[float] = []
            for r in batch:
                latencies.append(r.latency_ms)
                sent = r.proxy_ms
                if sent is not None:
                    overheads.append(sent)
                    if r.upstream_status is not None:
                        upstreams.append(r.latency_ms - sent)
                        if r.stream and r.ttfb_ms is not None:
                            ttfbs.append(r.ttfb_ms - sent)
            total, upstream, ttfb = self._timings_of(endpoint)
            total.add_all(latencies)
            upstream.add_all(upstreams)
            ttfb.add_all(ttfbs)
        self._overhead.add_all(overheads)

    def _count_tokens(self, records: list[RequestRecord], labels: dict[_LabelKey, str]) -> None:
        if len(set(labels.values())) == 1:
            # Every record has the same model label (the usual batch): sum without grouping.
            groups: Iterable[tuple[str, list[TokenUsage]]] = (
                (next(iter(labels.values())), [r.usage for r in records if r.usage is not None]),
            )
        else:
            # Grouped by label, not sorted by (model, status, upstream_status): those mix None and values (a
            # cache hit has no upstream status, a passthrough no model), which do not compare.
            by_label: dict[str, list[TokenUsage]] = {}
            for r in records:
                if r.usage is not None:
                    by_label.setdefault(labels[_LABEL_KEY(r)], []).append(r.usage)
            groups = by_label.items()
        for label, usages in groups:
            prompt, completion = sum(map(_PROMPT, usages)), sum(map(_COMPLETION, usages))
            if prompt:
                self.tokens.labels(label, "prompt").inc(prompt)
            if completion:
                self.tokens.labels(label, "completion").inc(completion)

    def _timings_of(self, endpoint: str) -> tuple[Batch, Batch, Batch]:
        timings = self._timings.get(endpoint)
        if timings is None:
            timings = self._timings[endpoint] = (
                Batch(self.request_duration.labels(endpoint)),
                Batch(self.upstream_duration.labels(endpoint)),
                Batch(self.upstream_ttfb.labels(endpoint)),
            )
        return timings

    def _model_label(self, model: str | None, status: int, upstream_status: int | None) -> str:
        if model is None:
            return NO_MODEL
        if model in self._models:
            return model
        # Only a model the upstream accepted may take one of the bounded slots: typos never do.
        if status < 300 and upstream_status is not None and len(self._models) < self.max_models:
            self._models.add(model)
            return model
        return OTHER_MODEL

    def _count_failure(self, r: RequestRecord) -> None:
        error = r.error
        if r.upstream_status is None:
            # The proxy answered by itself: the error code says why.
            if error in _UPSTREAM_ERROR_KIND:
                self.upstream_errors.labels(_UPSTREAM_ERROR_KIND[error]).inc()
            elif r.status == 401:
                self.auth_failures.labels(error or "unknown").inc()
            elif r.status == 429:
                self.rate_limited("budget" if error == "insufficient_quota" else "rate")
            return
        # The upstream answered; a 429 from it is passed through, not one of our rejections.
        if r.upstream_status >= 500:
            self.upstream_errors.labels("status").inc()
        elif r.upstream_status == 429:
            self.upstream_errors.labels("rate_limited").inc()
        if error in _UPSTREAM_ERROR_KIND:
            # Failed mid-stream, after the headers had been sent.
            self.upstream_errors.labels(_UPSTREAM_ERROR_KIND[error]).inc()

    # --- called by other components ---------------------------------------------------------------

    def rate_limited(self, kind: str) -> None:
        """A request refused by the proxy's limits. `kind`: rate (rpm/tpm/rpd/tpd) or budget (quota).

        flush() already counts every proxy-side 429 record; call it directly only for
        rejections that never produce a record.
        """
        self.rate_limit_rejections.labels(kind).inc()

    def limiter_fallback(self, outcome: str) -> None:
        """The limiter store was unreachable and the failure policy decided: `outcome` allowed or rejected."""
        self.limiter_fallbacks.labels(outcome).inc()

    def record_cost(self, model: str | None, usd: float) -> None:
        """Spend of one request, under the same bounded model label as its request count."""
        # Labelled at flush, after the request's own record has had its chance at a model slot.
        self._costs.append((model, usd))

    def usage_buffered(self, rows: int) -> None:
        """The writer's buffer now holds `rows` rows (set, not added)."""
        self.usage_buffer_depth.set(rows)

    def usage_batch_written(self, rows: int, seconds: float) -> None:
        self.usage_rows_written.inc(rows)
        self.usage_batch_duration.observe(seconds)

    def usage_batch_failed(self, seconds: float) -> None:
        self.usage_batches_failed.inc()
        self.usage_batch_duration.observe(seconds)

    def usage_journaled(self, rows: int) -> None:
        """This worker's journal now holds `rows` rows waiting for the database (set, not added)."""
        self.usage_journal_rows.set(rows)

    def usage_dropped(self, rows: int) -> None:
        self.usage_rows_dropped.inc(rows)

    def cache_observe(
        self, counts: collections.Counter[tuple[str, str]], held: int, written: int, evictions: int
    ) -> None:
        """The cache's counts since the last call (reasons are a fixed vocabulary, fastproxy/cache/service.py);
        `held`: the in-process cache's bytes now; `written`: bytes written to Redis since the last call."""
        for (outcome, reason), n in counts.items():
            self.cache_requests.labels(outcome, reason or "none").inc(n)
        if evictions:
            self.cache_evictions.inc(evictions)
        if written:
            self.cache_bytes_written.inc(written)
        self.cache_memory_bytes.set(held)

    def cache_saved(self, usd: float) -> None:
        self.cache_cost_saved.inc(usd)

    # --- exposition -------------------------------------------------------------------------------

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (OpenMetrics when `accept` asks for it) and its content type.

        Call flush() first (on the loop) to include this worker's latest requests. Multiprocess
        mode reads every worker's files: call it off the event loop.
        """
        if self.multiprocess_dir:
            prune_dead_workers(self.multiprocess_dir)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def close(self) -> None:
        """This worker stops: what is pending is flushed; its live gauges leave the sums (its counters stay)."""
        self.flush()
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]

    def exported_names(self) -> frozenset[str]:
        """Every sample name this instance can export, whether or not it has a sample yet."""
        names: set[str] = set()
        for metric in self._declared:
            for family in metric.describe():
                if family.type == "counter":
                    names.update((family.name + "_total", family.name + "_created"))
                elif family.type == "histogram":
                    base = family.name
                    names.update((base + "_bucket", base + "_sum", base + "_count", base + "_created"))
                else:
                    names.add(family.name)
        return frozenset(names)


def prune_dead_workers(path: str) -> None:
    """Remove the live-gauge files of workers that died without shutting down (Granian respawns them)."""
    pids = {
        int(name.rsplit("_", 1)[1][:-3])
        for name in glob.glob(os.path.join(path, "gauge_live*_*.db"))
        if name.rsplit("_", 1)[1][:-3].isdigit()
    }
    for pid in pids:
        if not _alive(pid):
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
