"""The one object a worker's request handling needs, built in lifespan and never mutated after."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fastproxy.accounts.auth import Authenticator
from fastproxy.accounts.invalidation import Invalidator
from fastproxy.accounts.stored_providers import ProviderSync
from fastproxy.cache.service import ResponseCache
from fastproxy.core.deadline import BodyDeadline
from fastproxy.core.drain import Drain
from fastproxy.core.limits import Limiter
from fastproxy.core.records import RequestRecord
from fastproxy.core.settings import Settings
from fastproxy.observability.metrics import Metrics
from fastproxy.observability.readiness import ReadinessCheck
from fastproxy.selfservice.service import SelfService
from fastproxy.selfservice.web import Web
from fastproxy.store import Store
from fastproxy.upstream import Upstream
from fastproxy.upstream.catalog import Catalog
from fastproxy.upstream.router import Router

# Called with every finished request's record; must not block (access log, metrics, usage writer).
Observer = Callable[[RequestRecord], None]


@dataclass(frozen=True, slots=True)
class State:
    settings: Settings
    upstream: Upstream
    auth: Authenticator
    limiter: Limiter
    observers: tuple[Observer, ...]
    # Model routes over the providers, and each provider key's live state (breakers, cooldowns). One object
    # for the worker's life: admin changes swap its tables in place (Router.rebuild, via provider_sync).
    router: Router
    # The default provider's base URL without a trailing slash, for the paths that are passed through
    # (no model): the client's path after `/v1` is appended to it.
    base_url: str
    # Headers the proxy adds to every upstream request (the provider's credentials).
    upstream_headers: tuple[tuple[str, str], ...]
    # None when metrics are switched off (FASTPROXY_METRICS=false).
    metrics: Metrics | None
    # Dependency name -> check, run by /readyz; adapters add theirs in lifespan.
    readiness: Mapping[str, ReadinessCheck]
    # This worker's process id (request records carry it to the access log).
    pid: int
    # The key/user store; None when no database is configured (then only FASTPROXY_AUTH=none works).
    store: Store | None = None
    # /v1/models from the providers and routes; None when none is configured (passed through as always).
    catalog: Catalog | None = None
    # Tells every instance's auth cache that a key or user changed (admin API).
    invalidator: Invalidator | None = None
    # The response cache (fastproxy/cache); None when it is off.
    cache: ResponseCache | None = None
    # The self-service API (/api); None without JWT secrets or a database (then /api is 404).
    selfservice: SelfService | None = None
    # Security headers of /api and /admin, and CORS for the configured origins.
    web: Web | None = None
    # The same Web when CORS origins are configured, else None: the proxied path checks only this.
    cors: Web | None = None
    # Requests in flight and open streams, for the graceful drain at shutdown (core/drain.py).
    drain: Drain = field(default_factory=lambda: Drain(30.0))
    # How long a request body may take to arrive (core/deadline.py); its sweeping task is lifespan's.
    body_deadline: BodyDeadline = field(default_factory=lambda: BodyDeadline(60.0))
    # Providers and routes stored through the admin API, kept in step on every worker; None without a database.
    provider_sync: ProviderSync | None = None
    # Dependencies of `readiness` the worker serves through (a failure policy covers them): /readyz reports
    # them failing as `degraded` and stays 200 (lifespan's `degradable`).
    degradable: frozenset[str] = frozenset()
