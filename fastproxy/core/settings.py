"""One frozen, validated settings Struct, read from an optional TOML file and FASTPROXY_* variables.

Precedence: environment over file over defaults. Every field has a default so the embedded demo
runs with no configuration at all.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from fastproxy.core.providers import ConfigError, Provider, Route, check_config, resolve_provider
from fastproxy.core.schemas import Limits

ENV_PREFIX = "FASTPROXY_"
# Structured settings: a TOML table in the file, a JSON object in the environment.
JSON_FIELDS = frozenset({"global_limits", "ip_limits", "providers", "routes"})
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
SECRET_FIELDS = frozenset(
    {"upstream_api_key", "admin_key", "redis_url", "database_url", "cache_redis_url", "jwt_secrets", "secret_keys"}
)

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
    # The response cache (fastproxy/cache): off unless asked for. The settings below are the defaults;
    # a route's `cache` table and a key's `cache` (admin API) override them (fastproxy/cache/policy.py).
    cache: bool = False
    # on: every route and key is cached unless it says `enabled = false`; off: only those that say `true`.
    cache_default: Literal["on", "off"] = "on"
    # auto: Redis when cache_redis_url or redis_url is set, else the in-process LRU (per worker).
    cache_backend: Literal["auto", "memory", "redis"] = "auto"
    # Redis for the cache only; empty: redis_url.
    cache_redis_url: str = ""
    # Whose entries a request may read: the key's user (else the key), the key, or everyone ("global").
    cache_scope: Literal["user", "key", "global"] = "user"
    cache_ttl: Seconds = 3600.0
    # Larger answers are not stored (counted as a bypass, reason too_large).
    cache_max_entry_bytes: Annotated[int, msgspec.Meta(ge=1)] = 4 * 1024 * 1024
    # The in-process LRU's bound per worker, in bytes (entries, their bookkeeping included).
    cache_memory_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 256 * 1024 * 1024
    # Chat, completions, Responses: cached when deterministic (temperature 0 or a seed), always, or never.
    cache_generations: Literal["deterministic", "always", "never"] = "deterministic"
    # Identical cacheable requests in flight in one worker share the first one's upstream answer.
    cache_coalesce: bool = True
    # A hit takes one request from the rate limits; tokens too only when this is true.
    cache_hit_tokens: bool = False
    # With Redis, each worker also keeps the entries it reads or writes in its own LRU (cache_memory_bytes)
    # for this long, so a repeated hit costs no round trip; a purge reaches other instances' copies
    # only when this expires. 0: every lookup asks Redis.
    cache_local_ttl: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    # A cache lookup in Redis slower than this is skipped (the request goes upstream); Redis is then
    # retried after redis_retry_interval.
    cache_redis_timeout: Seconds = 0.05
    # Providers and model routes (fastproxy/core/providers.py; README "Providers and routes"). The upstream
    # above is the provider named `default`, serving every model no route names.
    providers: dict[str, Provider] = msgspec.field(default_factory=dict)
    routes: dict[str, Route] = msgspec.field(default_factory=dict)
    # Upstream attempts per client request for a model no route names (a route sets its own, default 3).
    # One by default: the single upstream of FASTPROXY_UPSTREAM_URL behaves as it always did.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    # Retries (attempts after a request's first) per worker, as a share of its requests over the last
    # 10 s: stops a retry storm when every target is failing. A request always gets its first attempt.
    retry_budget: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.2
    # Retries always allowed per 10 s window, so a quiet worker can still fail over.
    retry_budget_min: Annotated[int, msgspec.Meta(ge=0)] = 10
    # Circuit breaker per (provider, key): opens after this many failures in a row, or when at least
    # breaker_min_requests in breaker_window seconds failed at breaker_failure_ratio or more.
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    breaker_failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    breaker_min_requests: Annotated[int, msgspec.Meta(ge=1)] = 20
    breaker_window: Seconds = 10.0
    # First cooldown of an open breaker; each reopening doubles it, up to breaker_max_cooldown.
    breaker_cooldown: Seconds = 5.0
    breaker_max_cooldown: Seconds = 120.0
    # How long a key that upstream refused with 401/403 rests before it is tried again.
    bad_key_cooldown: Seconds = 300.0
    # -- End-user accounts under /api (fastproxy/selfservice/) --
    # HS256 secrets for the access tokens, comma-separated, each at least 32 characters: the first signs,
    # all verify (rotation: put the new one first, drop the old one after jwt_access_ttl). Empty: /api is 404.
    jwt_secrets: str = ""
    jwt_access_ttl: Annotated[int, msgspec.Meta(ge=30, le=86_400)] = 900
    refresh_ttl: Annotated[int, msgspec.Meta(ge=300)] = 30 * 86_400
    # Anyone may create an account with POST /api/auth/register; false: operators create users (invitations).
    signup: bool = False
    # Origins a browser console may call /api and /v1 from, comma-separated (e.g. https://console.example.com).
    cors_origins: str = ""
    # Strict-Transport-Security on /api and /admin responses (only behind HTTPS).
    hsts: bool = False
    # Sign-In with Ethereum: the console's origin; a message's domain and URI must match it. Empty: no wallet sign-in.
    siwe_origin: str = ""
    # Chain ids a SIWE message may name, comma-separated.
    siwe_chain_ids: str = "1"
    # How long a sign-in nonce from GET /api/auth/nonce stays valid (it is single-use either way).
    siwe_nonce_ttl: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 300
    # Sign-in and sign-up attempts per minute, per client IP and per account (email or wallet).
    auth_attempts_per_ip: Annotated[int, msgspec.Meta(ge=1)] = 30
    auth_attempts_per_account: Annotated[int, msgspec.Meta(ge=1)] = 10
    # Comma-separated Fernet keys encrypting upstream keys stored through the admin API: the first
    # encrypts, every one decrypts (`fastproxy secrets rotate` re-encrypts with the first). Empty: the admin
    # API refuses to store a provider with keys.
    secret_keys: str = ""
    # Without Redis, how often each worker reloads the providers and routes stored through the admin API
    # (with Redis a change is announced on pub/sub and reaches every worker at once).
    providers_reload_interval: Seconds = 2.0

    # -- What a client may send (README, "Limits on what a client may send"); Granian enforces the first four --
    # HTTP/1.1 only ("1"), or HTTP/2 as well ("auto"). In auto mode Granian waits for a new connection's first
    # bytes with no timeout at all, so a client that connects and sends nothing keeps its connection forever.
    http: Literal["1", "auto"] = "1"
    # Seconds a client has to send a request's line and headers (slowloris); also how long an idle keep-alive
    # connection stays open. Behind a load balancer keep it above the balancer's own idle timeout.
    http1_header_read_timeout: Annotated[float, msgspec.Meta(ge=0.001, le=60)] = 30.0
    # Bytes a connection may buffer while reading a request's head: a larger head (or more than 100 headers,
    # Granian's fixed limit) is answered 431 and the connection closed.
    http1_buffer_size: Annotated[int, msgspec.Meta(ge=8192, le=16 * 1024 * 1024)] = 417_792
    http1_keep_alive: bool = True
    # Seconds a request's whole body may take to arrive once its headers have: a body trickled in or never
    # ending gets 408 and the connection is closed (max_body_bytes bounds its size).
    body_read_timeout: Seconds = 60.0

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
        for name in ("redis_url", "cache_redis_url"):
            url = getattr(self, name)
            if url and not url.startswith(REDIS_SCHEMES):
                raise SettingsError(
                    f"invalid setting {name} ({ENV_PREFIX}{name.upper()}): expected redis://host:port/db"
                    " or redis+cluster://host:port,host:port"
                )
        if self.secret_keys:
            try:
                fernet_keys(self.secret_keys)
            except ValueError:
                raise SettingsError(
                    f"invalid setting secret_keys ({ENV_PREFIX}SECRET_KEYS): expected comma-separated Fernet keys "
                    "(32 url-safe base64-encoded bytes each)"
                ) from None
        if self.cache_backend == "redis" and not (self.cache_redis_url or self.redis_url):
            raise SettingsError(
                f"invalid setting cache_backend ({ENV_PREFIX}CACHE_BACKEND): 'redis' needs "
                f"{ENV_PREFIX}CACHE_REDIS_URL or {ENV_PREFIX}REDIS_URL"
            )
        if any(len(secret.strip()) < 32 for secret in self.jwt_secrets.split(",") if self.jwt_secrets):
            raise SettingsError(
                f"invalid setting jwt_secrets ({ENV_PREFIX}JWT_SECRETS): each comma-separated secret needs"
                " at least 32 characters"
            )
        if self.siwe_origin and not re.match(r"^https?://[^/\s]+$", self.siwe_origin):
            raise SettingsError(
                f"invalid setting siwe_origin ({ENV_PREFIX}SIWE_ORIGIN): expected scheme://host[:port], no path"
            )
        if not re.match(r"^\s*\d+\s*(,\s*\d+\s*)*$", self.siwe_chain_ids):
            raise SettingsError(
                f"invalid setting siwe_chain_ids ({ENV_PREFIX}SIWE_CHAIN_IDS): expected comma-separated integers"
            )

    def masked(self) -> dict[str, Any]:
        """The effective settings, fit for a log line: secrets show only their last 4 characters."""
        out: dict[str, Any] = msgspec.structs.asdict(self)
        out["providers"] = {
            name: {
                "type": p.type,
                "base_url": p.base_url,
                "keys": [k.id + ":" + mask(k.key) for k in p.all_keys()],
            }
            for name, p in self.providers.items()
        }
        out["routes"] = {
            name: [t.provider + "/" + (t.model or name) for t in r.targets] for name, r in self.routes.items()
        }
        for name in SECRET_FIELDS:
            value = out[name]
            if value and "://" in value:
                out[name] = _mask_url(value)
            elif value:
                out[name] = mask(value)
        return out


def fernet_keys(text: str) -> list[bytes]:
    """The Fernet keys of FASTPROXY_SECRET_KEYS, checked (32 url-safe base64 bytes each); ValueError if not."""
    keys = [k.strip().encode() for k in text.split(",") if k.strip()]
    for key in keys:
        try:
            raw = base64.urlsafe_b64decode(key)
        except (ValueError, binascii.Error):
            raise ValueError("not base64") from None
        if len(raw) != 32:
            raise ValueError("not 32 bytes")
    return keys


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
    providers, routes = raw.pop("providers", {}), raw.pop("routes", {})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc
    return with_providers(settings, providers, routes, env)


def with_providers(settings: Settings, providers: Any, routes: Any, environ: Mapping[str, str]) -> Settings:
    """`settings` with these providers and routes (TOML tables or decoded JSON), checked and with every
    `env:` secret read; raises SettingsError naming the provider or route and the field."""
    parsed_providers: dict[str, Provider] = {}
    if not isinstance(providers, dict) or not isinstance(routes, dict):
        raise SettingsError("invalid setting providers / routes: expected tables (JSON objects) keyed by name")
    try:
        for name, table in providers.items():
            try:
                provider = msgspec.convert(table, Provider, strict=False)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"provider {name!r}: {_field_error(exc)}") from exc
            parsed_providers[name] = resolve_provider(name, provider, environ)
        parsed_routes: dict[str, Route] = {}
        for name, table in routes.items():
            try:
                parsed_routes[name] = msgspec.convert(table, Route, strict=False)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"route {name!r}: {_field_error(exc)}") from exc
        check_config(parsed_providers, parsed_routes)
    except ConfigError as exc:
        raise SettingsError(f"invalid config: {exc}") from exc
    return msgspec.structs.replace(settings, providers=parsed_providers, routes=parsed_routes)


def _field_error(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.targets[0].provider`" as "targets[0].provider: ..."."""
    reason, _, where = str(exc).partition(" - at `$")
    where = where.rstrip("`").lstrip(".")
    return f"{where}: {reason}" if where else reason


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
