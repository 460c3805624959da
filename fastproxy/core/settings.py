"""One frozen, validated settings Struct, read from an optional TOML file and FASTPROXY_* variables.

Precedence: environment over file over defaults. Every field has a default so the embedded demo
runs with no configuration at all.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from fastproxy.core.schemas import Limits

ENV_PREFIX = "FASTPROXY_"
# Structured settings: a TOML table in the file, a JSON object in the environment.
JSON_FIELDS = frozenset({"global_limits", "ip_limits"})
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
SECRET_FIELDS = frozenset({"upstream_api_key", "admin_key", "redis_url", "database_url"})

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message names it in one line."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    # 0 means one worker per CPU.
    workers: Annotated[int, msgspec.Meta(ge=0, le=512)] = 0
    upstream_url: str = "http://127.0.0.1:8001/v1"
    upstream_api_key: str = ""
    # redis://host:port/db for one server; redis+cluster://host:port,host:port (rediss+cluster:// for
    # TLS) for a Redis Cluster, or any node's redis:// URL with redis_cluster = true.
    redis_url: str = ""
    redis_cluster: bool = False
    database_url: str = "sqlite:///./fastproxy.db"
    admin_key: str = ""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024 * 1024
    connect_timeout: Seconds = 5.0
    # Longest silence allowed between two reads from upstream (reasoning models think quietly).
    read_timeout: Seconds = 600.0
    # Whole-request ceiling, streams included.
    request_timeout: Seconds = 1800.0
    # Completion tokens assumed for a request that sets no max_tokens, when reserving against limits.
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 1024
    # auto: pyreqwest for non-streamed requests, aiohttp for streams (each is cheaper there; bench/RESULTS.md).
    upstream_client: Literal["auto", "reqwest", "aiohttp"] = "auto"
    # Upstream connections per worker and client (two clients under auto): 2,000 concurrent streams on
    # one worker each hold one; beyond it a request waits up to connect_timeout for a free one.
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 4096
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    access_log: bool = True
    # Access lines are formatted and handed to the writer thread in batches, this often.
    access_log_interval: Seconds = 0.05
    # keys: every /v1 request needs a fastproxy API key; none: anonymous (benchmarks' bare mode).
    auth: Literal["keys", "none"] = "keys"
    # How long a key stays cached in each worker; bounds staleness when Redis pub/sub is not configured.
    auth_cache_ttl: Seconds = 5.0
    auth_cache_size: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    # Unknown keys remembered (LRU), so a flood of random keys neither grows memory nor hits the database.
    auth_negative_cache_size: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    # Key store down: "stale" keeps serving keys already cached (new keys get 503); "closed": 503 for all.
    auth_on_store_error: Literal["stale", "closed"] = "stale"
    last_used_flush_interval: Seconds = 5.0
    # Prefix of every Redis key and pub/sub channel this deployment uses (isolates deployments, or
    # test runs, sharing one Redis).
    redis_prefix: str = "fastproxy:"
    # Apply pending schema migrations when a worker starts (safe with many instances; see store/).
    auto_migrate: bool = True
    database_pool_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    # Rate limits over all clients together, and per client IP (TOML table or JSON object,
    # e.g. {"rpm": 600, "tpm": 100000}); keys and users carry their own limits.
    global_limits: Limits | None = None
    ip_limits: Limits | None = None
    # How long a Redis call may take before the rate-limit failure policy applies. It also measures the
    # worker's own event-loop delay: at 5 ms and 20 ms a saturated worker failed over spuriously.
    redis_timeout: Seconds = 0.05
    # After a Redis failure, how long to serve by the failure policy before trying Redis again.
    redis_retry_interval: Seconds = 1.0
    # Redis unreachable or slow: fail_open uses per-instance in-process limits; fail_closed answers 503.
    ratelimit_failure: Literal["fail_open", "fail_closed"] = "fail_open"
    # Token reconciliations (real usage minus the reserved estimate) are sent to Redis together, this
    # often, instead of one round trip per request; 0 sends each at once.
    ratelimit_settle_interval: Annotated[float, msgspec.Meta(ge=0)] = 0.05
    # Rate-limit script calls each worker may have out at once; requests arriving meanwhile share the
    # next call. More calls out: shorter waits at moderate load, smaller batches under saturation.
    ratelimit_pipeline: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    # SIGTERM: /readyz answers 503 at once and the instance keeps serving this long (so the load
    # balancer notices), then stops accepting and lets requests in flight finish for up to
    # shutdown_grace seconds; streams still open then end with an error event.
    drain_seconds: Annotated[float, msgspec.Meta(ge=0, le=600)] = 0.0
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0, le=1800)] = 30.0
    # Prometheus metrics on /metrics; off removes every metric update from the request path.
    metrics: bool = True
    # How often each worker moves its counts into the shared metrics files (how fresh /metrics is).
    # Often, so the records waiting for it are still in the CPU's caches when it reads them: at 1 s a
    # busy worker holds ~10k records (megabytes) and the same work cost 3-4 % more CPU per request
    # (bench/RESULTS.md, "Interleaved rounds"); a flush with nothing pending costs under a microsecond.
    metrics_flush_interval: Seconds = 0.05
    # Serve /metrics on this port instead (from the `fastproxy serve` master process); 0: on the API port.
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    # Multiprocess metrics files; empty: a fresh temporary directory per start. Wiped at every start.
    metrics_dir: str = ""
    # Distinct model label values per worker; later models are counted as `other`.
    metrics_max_models: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 50
    # Usage accounting (fastproxy/usage/): one row per request, batched off the request path; needs a database.
    usage_enabled: bool = True
    usage_batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500
    usage_flush_interval: Seconds = 1.0
    # Rows held in memory per worker at most; see usage_on_overflow.
    usage_buffer_size: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    # A batch not written within this time goes to the journal (the database is treated as down).
    usage_flush_timeout: Seconds = 5.0
    # How often journaled rows are retried against the database.
    usage_replay_interval: Seconds = 5.0
    # One journal file per worker process here; files of processes that are gone are replayed by the others.
    usage_journal_dir: str = "./fastproxy-journal"
    # Buffer full and journal unusable: "drop" rows (logged, counted) or "reject" new requests with 503.
    usage_on_overflow: Literal["drop", "reject"] = "drop"
    # A TOML or JSON price table ([models."name"] input/output/cached_input USD per 1M tokens) over the shipped one.
    price_table: str = ""
    # Recorded as the provider of every usage row.
    provider_name: str = "openai"
    # How often each worker pushes its spend to Redis and reads back every budgeted key's and user's total.
    budget_sync_interval: Seconds = 0.5
    # Once a worker has started, its heap is frozen out of the garbage collector's full passes and the
    # young generation is collected every this many net container allocations (Python's default: 700,
    # below a loaded worker's in-flight objects); 0 leaves the collector as Python sets it (fastproxy/heap.py).
    gc_young_threshold: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    # Granian's and pyreqwest's runtime threads in SCHED_BATCH, so a socket becoming ready does not
    # preempt the event loop only to wait for its GIL (fastproxy/threads.py). Linux only.
    runtime_threads_batch: bool = True

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.upstream_url):
            raise SettingsError(
                f"invalid setting upstream_url ({ENV_PREFIX}UPSTREAM_URL): "
                f"expected an http:// or https:// URL, got {self.upstream_url!r}"
            )
        if self.database_url and not self.database_url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise SettingsError(
                f"invalid setting database_url ({ENV_PREFIX}DATABASE_URL): expected sqlite:///path or postgresql://..."
            )
        if self.auth == "keys" and not self.database_url:
            raise SettingsError(
                f"invalid setting auth ({ENV_PREFIX}AUTH): 'keys' needs a database ({ENV_PREFIX}DATABASE_URL); "
                "use auth = 'none' to run without one"
            )
        if self.redis_url and not self.redis_url.startswith(REDIS_SCHEMES):
            raise SettingsError(
                f"invalid setting redis_url ({ENV_PREFIX}REDIS_URL): expected redis://host:port/db or redis+cluster://host:port,host:port"
            )

    def masked(self) -> dict[str, Any]:
        """The effective settings, fit for a log line: secrets show only their last 4 characters."""
        out: dict[str, Any] = msgspec.structs.asdict(self)
        for name in SECRET_FIELDS:
            value = out[name]
            if value and "://" in value:
                out[name] = _mask_url(value)
            elif value:
                out[name] = mask(value)
        return out


def mask(secret: str) -> str:
    """Show only the last 4 characters of a secret."""
    return "..." + secret[-4:] if len(secret) > 8 else "****"


def _mask_url(url: str) -> str:
    """Hide the password of scheme://user:password@host; a URL without one is not secret."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1****@", url)


def load_settings(config_path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from a TOML file and the environment; raise SettingsError naming the bad field."""
    env = os.environ if environ is None else environ
    path = config_path or env.get(ENV_PREFIX + "CONFIG") or None
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                raw.update(tomllib.load(f))
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    fields = set(Settings.__struct_fields__)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            name = key[len(ENV_PREFIX) :].lower()
            if name in JSON_FIELDS:
                try:
                    raw[name] = msgspec.json.decode(value)
                except msgspec.DecodeError as exc:
                    raise SettingsError(f"invalid setting {name} ({key}): expected a JSON object: {exc}") from exc
            elif name in fields:
                raw[name] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc


def _describe(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if text.startswith("invalid setting"):
        return text
    m = re.search(r"at `\$\.(\w+)`", text)
    if m:
        name = m.group(1)
        reason = text.split(" - at ")[0]
        return f"invalid setting {name} ({ENV_PREFIX}{name.upper()}): {reason}"
    m = re.search(r"unknown field `(\w+)`", text)
    if m:
        return f"unknown setting {m.group(1)} in config file"
    return f"invalid settings: {text}"
