"""Every configuration the suite measures, in one place: plain dicts of environment variables.

`BARE` is fastproxy with nothing on. Each entry of `FEATURES` is one feature's variables; the suite
measures bare + each feature alone ("the cost of each feature on its own"), and `full` = bare + every
feature. A new feature is one more entry here: it appears both on its own and inside `full`.

Values may name the run's backing services: {database_url}, {redis_url}, {redis_prefix}, {upstream_url},
{redis_cluster_url} (a Redis Cluster the harness starts when a configuration names it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

# High enough never to refuse (a run does well under 10^8 requests a minute), so every request pays
# the whole admit + settle path without a single 429.
HUGE_LIMITS = '{"rpm": 100000000, "tpm": 100000000000}'
KEY_LIMITS = {"rpm": 100_000_000, "tpm": 100_000_000_000}

KeyKind = Literal["none", "plain", "limited"]

# Settings every proxy run shares (port and upstream are filled in by the harness).
COMMON: dict[str, str] = {
    "FASTPROXY_WORKERS": "1",
    "FASTPROXY_HOST": "127.0.0.1",
    "FASTPROXY_LOG_LEVEL": "warning",
    "FASTPROXY_LOG_FORMAT": "json",
}

BARE: dict[str, str] = {
    "FASTPROXY_AUTH": "none",
    "FASTPROXY_DATABASE_URL": "",
    "FASTPROXY_REDIS_URL": "",
    "FASTPROXY_ACCESS_LOG": "false",
    "FASTPROXY_METRICS": "false",
    # A database (the auth feature brings one) turns usage accounting on unless told otherwise.
    "FASTPROXY_USAGE_ENABLED": "false",
}


@dataclass(frozen=True)
class Feature:
    env: dict[str, str]
    # Which key the load sends: a key without limits, or one carrying its own limits (full only
    # uses "limited" when the feature set includes Redis limits, so key buckets are exercised too).
    key: KeyKind = "none"
    in_full: bool = True


FEATURES: dict[str, Feature] = {
    "auth": Feature({"FASTPROXY_AUTH": "keys", "FASTPROXY_DATABASE_URL": "{database_url}"}, key="plain"),
    # The in-process limiter (per worker): measured alone, not part of full (full shares limits in Redis).
    "local-limits": Feature({"FASTPROXY_GLOBAL_LIMITS": HUGE_LIMITS}, in_full=False),
    "redis-limits": Feature(
        {
            "FASTPROXY_GLOBAL_LIMITS": HUGE_LIMITS,
            "FASTPROXY_REDIS_URL": "{redis_url}",
            "FASTPROXY_REDIS_PREFIX": "{redis_prefix}",
        }
    ),
    # The access log is written at INFO: at COMMON's "warning" it would be switched on and never written.
    "access-log": Feature({"FASTPROXY_ACCESS_LOG": "true", "FASTPROXY_LOG_LEVEL": "info"}),
    # Prometheus metrics in multiprocess mode (as `fastproxy serve` sets them up).
    "metrics": Feature({"FASTPROXY_METRICS": "true"}),
    # Both together, as issue 6's budget is stated (metrics and logging add < 5 %); full has them anyway.
    "metrics+log": Feature(
        {"FASTPROXY_METRICS": "true", "FASTPROXY_ACCESS_LOG": "true", "FASTPROXY_LOG_LEVEL": "info"}
    ),
    # One usage row per request, batched into PostgreSQL with COPY (off the request path).
    "usage": Feature(
        {
            "FASTPROXY_USAGE_ENABLED": "true",
            "FASTPROXY_DATABASE_URL": "{database_url}",
            "FASTPROXY_USAGE_JOURNAL_DIR": "bench/out/journal",
        }
    ),
    # The response cache answering every request but the first (the suite's chat body repeats; its
    # temperature 0.7 is made cacheable by `always`): a hit, against bare. Not part of full.
    "cache": Feature({"FASTPROXY_CACHE": "true", "FASTPROXY_CACHE_GENERATIONS": "always"}, in_full=False),
    # The same hits from Redis (the cache's own URL, so nothing else of full comes with it).
    "cache-redis": Feature(
        {
            "FASTPROXY_CACHE": "true",
            "FASTPROXY_CACHE_GENERATIONS": "always",
            "FASTPROXY_CACHE_REDIS_URL": "{redis_url}",
            "FASTPROXY_REDIS_PREFIX": "{redis_prefix}",
        },
        in_full=False,
    ),
}

# Every request a cache miss that is stored: entries expire at once (1 µs), and coalescing is off so
# that the 64 identical requests in flight do not follow one another. Added to full (full+cache-miss).
CACHE_MISS = {
    "FASTPROXY_CACHE": "true",
    "FASTPROXY_CACHE_GENERATIONS": "always",
    "FASTPROXY_CACHE_TTL": "0.000001",
    "FASTPROXY_CACHE_COALESCE": "false",
}


@dataclass(frozen=True)
class ProxyConfig:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    key: KeyKind = "none"

    def resolved(self, **backing: str) -> dict[str, str]:
        """COMMON + env with {name} placeholders replaced (not str.format: JSON values hold braces)."""
        out = {}
        for k, v in {**COMMON, **self.env}.items():
            for name, value in backing.items():
                v = v.replace("{" + name + "}", value)
            out[k] = v
        return out


def _full() -> ProxyConfig:
    env = dict(BARE)
    for f in FEATURES.values():
        if f.in_full:
            env.update(f.env)
    # Auth on with limits on: the key carries its own rpm/tpm, so key buckets are taken as well.
    auth = FEATURES["auth"].in_full
    return ProxyConfig("full", env, "limited" if auth else "none")


def proxy_configs() -> dict[str, ProxyConfig]:
    """bare, bare+<feature> for every feature, full: the fastproxy configurations, by name."""
    out = {"bare": ProxyConfig("bare", dict(BARE))}
    for name, f in FEATURES.items():
        out[f"+{name}"] = ProxyConfig(f"+{name}", {**BARE, **f.env}, f.key)
    out["full"] = _full()
    full = out["full"]
    # Providers and routes (issue 17): full with the load's model routed over two providers (the same
    # upstream) at equal priority, so every request goes through the weighted choice; and full whose
    # route's first target refuses connections (port 9), so every request fails over to the second.
    # Breakers and the retry budget are set out of the way there: each request pays the failover.
    two = json.dumps({"p1": {"base_url": "{upstream_url}"}, "p2": {"base_url": "{upstream_url}"}})
    route = json.dumps(
        {"gpt-4o-mini": {"targets": [{"provider": "p1", "priority": 0}, {"provider": "p2", "priority": 0}]}}
    )
    out["full-route"] = ProxyConfig(
        "full-route", {**full.env, "FASTPROXY_PROVIDERS": two, "FASTPROXY_ROUTES": route}, full.key
    )
    dead = json.dumps({"dead": {"base_url": "http://127.0.0.1:9/v1"}, "p2": {"base_url": "{upstream_url}"}})
    failover = json.dumps({"gpt-4o-mini": {"targets": [{"provider": "dead"}, {"provider": "p2"}]}})
    out["full-failover"] = ProxyConfig(
        "full-failover",
        {
            **full.env,
            "FASTPROXY_PROVIDERS": dead,
            "FASTPROXY_ROUTES": failover,
            "FASTPROXY_BREAKER_FAILURES": "1000000000",
            "FASTPROXY_BREAKER_MIN_REQUESTS": "1000000000",
            "FASTPROXY_RETRY_BUDGET": "10",
        },
        full.key,
    )
    # A miss against full: with Redis (full has it, so the cache uses it), and with the in-process LRU.
    out["full+cache-miss"] = ProxyConfig("full+cache-miss", {**full.env, **CACHE_MISS}, full.key)
    memory = {**full.env, **CACHE_MISS, "FASTPROXY_CACHE_BACKEND": "memory"}
    out["full+cache-miss-memory"] = ProxyConfig("full+cache-miss-memory", memory, full.key)
    # full with its Redis a Redis Cluster (3 masters; the harness starts it): a request's buckets span
    # slots, so it makes one script call per slot instead of sharing one batched call.
    out["full-cluster"] = ProxyConfig(
        "full-cluster", {**full.env, "FASTPROXY_REDIS_URL": "{redis_cluster_url}"}, full.key
    )
    # OpenAI chat on an `anthropic` provider (issue 18): the load's model routed to a provider of type
    # anthropic on the same upstream (nginx's canned /v1/messages, or the mock's Anthropic stream), so every
    # request and stream event is translated; beside full and bare, whose bytes pass through untouched.
    anthropic = {
        "FASTPROXY_PROVIDERS": json.dumps(
            {"anth": {"type": "anthropic", "base_url": "{upstream_url}", "api_key": "sk-ant-bench-0000"}}
        ),
        "FASTPROXY_ROUTES": json.dumps({"gpt-4o-mini": {"targets": [{"provider": "anth", "model": "claude-bench"}]}}),
    }
    out["full-anthropic"] = ProxyConfig("full-anthropic", {**full.env, **anthropic}, full.key)
    out["bare-anthropic"] = ProxyConfig("bare-anthropic", {**BARE, **anthropic})
    # The same route to an OpenAI-compatible provider (the model rewritten the same way): what routing alone
    # costs, so that *-anthropic minus *-routed is the translation.
    routed = {
        "FASTPROXY_PROVIDERS": json.dumps({"oai": {"base_url": "{upstream_url}"}}),
        "FASTPROXY_ROUTES": json.dumps({"gpt-4o-mini": {"targets": [{"provider": "oai", "model": "claude-bench"}]}}),
    }
    out["full-routed"] = ProxyConfig("full-routed", {**full.env, **routed}, full.key)
    out["bare-routed"] = ProxyConfig("bare-routed", {**BARE, **routed})
    # The upstream client on its own: bare with aiohttp instead of the default pyreqwest.
    out["bare-aiohttp"] = ProxyConfig("bare-aiohttp", {**BARE, "FASTPROXY_UPSTREAM_CLIENT": "aiohttp"})
    return out


# Targets that are not fastproxy: "direct" (load straight at the upstream) and "reference" (the
# minimal aiohttp pass-through, bench/reference.py, under the same Granian flags as fastproxy).
BASELINES = ("direct", "reference")


def named_configs(arg: str) -> tuple[dict[str, ProxyConfig], list[str]]:
    """Every configuration, and the names a comma-separated command-line argument asks for (all known).

    A name may carry settings of its own after `@`: `+metrics+log@FASTPROXY_METRICS_FLUSH_INTERVAL=0.1`
    is +metrics+log with that variable set too (one `@VAR=value` per setting).
    """
    configs = proxy_configs()
    names = arg.split(",")
    for name in names:
        base, *settings = name.split("@")
        if settings and base in configs:
            extra = dict(setting.split("=", 1) for setting in settings if "=" in setting)
            if len(extra) == len(settings):
                known = configs[base]
                configs[name] = ProxyConfig(name, {**known.env, **extra}, known.key)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {', '.join(configs)} (each may add @VAR=value)")
    return configs, names
