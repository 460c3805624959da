"""Model routes: which (provider, key) pairs a request for a model tries, in what order.

A route's targets are grouped by priority (lowest first). Within a group traffic is shared by weight
(weighted power of two choices: `_choose`). A failure tells the plan what kind it was:

    key     (429, 401/403)            another key of the same target, else the next target
    target  (5xx, 529, timeouts, cuts) the next target of the group, then the next group; once every
                                       target was tried, round again (the caller backs off first)
    context (context_length_exceeded) the route's context_fallback, once

A model no route names goes to `provider/model` when its prefix is a provider, else to the `default`
provider (FASTPROXY_UPSTREAM_URL) with the model unchanged.
"""

from __future__ import annotations

import enum
import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping

from fastproxy.core.errors import PermissionDenied
from fastproxy.core.providers import DEFAULT_PROVIDER, Provider, Route
from fastproxy.core.settings import Settings
from fastproxy.upstream.board import Board, LocalBoard, wall_to_monotonic
from fastproxy.upstream.breaker import BreakerPolicy, RetryBudget
from fastproxy.upstream.providers import LiveKey, LiveProvider

log = logging.getLogger("fastproxy.upstream")


class Failure(enum.Enum):
    KEY = "key"
    TARGET = "target"
    CONTEXT = "context"


class LiveTarget:
    __slots__ = ("ewma_ms", "inflight", "model", "priority", "provider", "weight")

    def __init__(self, provider: LiveProvider, model: str, priority: int, weight: float) -> None:
        self.provider = provider
        # Empty: the model the client asked for goes upstream unchanged.
        self.model = model
        self.priority = priority
        self.weight = weight
        self.inflight = 0
        self.ewma_ms = 0.0


class LiveRoute:
    __slots__ = ("cache", "config", "context_fallback", "cum_weights", "direct", "groups", "max_attempts", "name")

    def __init__(
        self,
        name: str,
        targets: list[LiveTarget],
        max_attempts: int,
        context_fallback: str | None = None,
        direct: bool = False,
        config: Route | None = None,
    ) -> None:
        self.name = name
        # What it was built from (a rebuild keeps a route whose config did not change).
        self.config = config
        # The route's response-cache settings (fastproxy/cache), read on every cacheable request.
        self.cache = config.cache if config is not None else None
        # `provider/model`: the model sent upstream is what follows the provider's name.
        self.direct = direct
        self.max_attempts = max_attempts
        self.context_fallback = context_fallback
        priorities = sorted({t.priority for t in targets})
        self.groups = [[t for t in targets if t.priority == p] for p in priorities]
        # Cumulative weights per group, for the usual draw (every target of the group healthy).
        self.cum_weights = [list(itertools.accumulate(t.weight for t in group)) for group in self.groups]


def _healthy(target: LiveTarget, now: float) -> bool:
    return target.provider.available(now)


def _choose(candidates: list[LiveTarget], now: float, cum_weights: list[float] | None = None) -> LiveTarget:
    """Weighted power of two choices: two draws by weight; the first wins unless it is clearly worse.

    "Clearly": four times the other's load per unit of weight plus eight requests, or more than twice its
    latency (EWMA) plus 100 ms. Only a clearly worse draw is passed over, so targets that keep up share traffic
    exactly by weight (a plain least-loaded pick skews the split toward whichever target's load
    happens to dip), while an overloaded or slow target sheds its share to the others.
    """
    if len(candidates) == 1:
        return candidates[0]
    if cum_weights is None:
        cum_weights = list(itertools.accumulate(t.weight for t in candidates))
    a, b = random.choices(candidates, cum_weights=cum_weights, k=2)  # noqa: S311 - load balancing
    if a is b:
        return a
    la, lb = a.inflight / a.weight, b.inflight / b.weight
    if la >= 4 * lb + 8:
        return b
    if a.ewma_ms and b.ewma_ms and a.ewma_ms > 2 * b.ewma_ms + 100:
        return b
    return a


class Plan:
    """The attempts of one client request, chosen one at a time as failures say what went wrong."""

    __slots__ = (
        "_pinned",
        "_route",
        "_router",
        "_tried_keys",
        "_tried_targets",
        "context_used",
        "model",
        "repeat",
        "target",
    )

    def __init__(self, router: Router, route: LiveRoute, model: str, pinned: str | None) -> None:
        self._router = router
        # The model asked for: the client's, or the context fallback once it is taken.
        self.model = model
        self._route = route
        self._pinned = pinned
        self._tried_targets: set[LiveTarget] = set()
        self._tried_keys: set[LiveKey] = set()
        self.target: LiveTarget | None = None
        # The next attempt goes to a target tried before (the caller backs off first).
        self.repeat = False
        self.context_used = False

    @property
    def route(self) -> LiveRoute:
        return self._route

    def upstream_model(self, target: LiveTarget) -> str:
        """The model name sent upstream to this target."""
        if target.model:
            return target.model
        if self._route.direct:
            return self.model.partition("/")[2]
        return self.model

    def first(self, now: float) -> tuple[LiveTarget, LiveKey]:
        """The first attempt. Raises PinnedKeyUnavailable when the caller is pinned to a key that no target
        of the route holds (serving it with another account's key would bill the wrong account)."""
        groups = self._route.groups
        # One target, the usual case: nothing to choose.
        single = len(groups) == 1 and len(groups[0]) == 1 and self._pinned is None
        target = groups[0][0] if single else self._pick_target(now)
        return self._with_key(target, now)

    def next(self, failure: Failure, now: float) -> tuple[LiveTarget, LiveKey] | None:
        """The next attempt after a failure of this kind, or None when the plan has nothing left."""
        target = self.target
        assert target is not None
        if failure is Failure.CONTEXT:
            fallback = self._route.context_fallback
            if fallback is None or self.context_used:
                return None
            self.context_used = True
            self.model = fallback
            self._route = self._router.resolve(fallback)
            self._tried_targets.clear()
            self._tried_keys.clear()
            try:
                return self._with_key(self._pick_target(now), now)
            except PinnedKeyUnavailable:
                return None  # the context error itself goes back to the client
        if failure is Failure.KEY:
            others = [k for k in target.provider.keys if k not in self._tried_keys and k.available(now)]
            if others and self._pinned is None:
                self.repeat = False
                key = target.provider.pick_key(now, exclude=self._tried_keys)
                self._tried_keys.add(key)
                return target, key
        self._tried_targets.add(target)
        return self._with_key(self._pick_target(now), now)

    def _pick_target(self, now: float) -> LiveTarget:
        route = self._route
        groups = route.groups
        tried = self._tried_targets
        pinned = self._pinned
        if pinned is not None:
            # Only targets whose provider holds the pinned key (the caller's own upstream account).
            groups = [[t for t in g if pinned in t.provider.key_ids] for g in groups]
            groups = [g for g in groups if g]
            if not groups:
                raise PinnedKeyUnavailable(
                    f"Your API key is pinned to the upstream key '{pinned}', which no provider of model "
                    f"'{self.model}' holds.",
                    param="model",
                )
        for i, group in enumerate(groups):
            if pinned is None:
                healthy = [t for t in group if t not in tried and t.provider.available(now)]
            else:
                healthy = [t for t in group if t not in tried and t.provider.pick_key(now, pinned).available(now)]
            if healthy:
                self.repeat = False
                if len(healthy) == len(group) and pinned is None:
                    return _choose(healthy, now, route.cum_weights[i])
                return _choose(healthy, now)
        # Every target tried or resting: the healthiest of all, again (with a backoff by the caller);
        # when all rest, the one whose cooldown ends first rather than no attempt.
        everyone = [t for group in groups for t in group]
        healthy = [t for t in everyone if _healthy(t, now)]
        self.repeat = bool(self._tried_targets)
        if healthy:
            return _choose(healthy, now)
        return min(everyone, key=lambda t: min(k.ready_at() for k in t.provider.keys))

    def _with_key(self, target: LiveTarget, now: float) -> tuple[LiveTarget, LiveKey]:
        self.target = target
        key = target.provider.pick_key(now, self._pinned, self._tried_keys or None)
        self._tried_keys.add(key)
        return target, key


class PinnedKeyUnavailable(PermissionDenied):
    code = "upstream_key_unavailable"


class Router:
    """Built once per worker from the settings; the live state of providers and keys lives on it.
    `rebuild` swaps its providers and routes in place (admin API changes)."""

    # Set by rebuild, which __init__ calls.
    default: LiveProvider
    _default_route: LiveRoute
    _direct: dict[str, LiveRoute]

    def __init__(self, settings: Settings) -> None:
        policy = BreakerPolicy(
            failures=settings.breaker_failures,
            failure_ratio=settings.breaker_failure_ratio,
            min_requests=settings.breaker_min_requests,
            window=settings.breaker_window,
            cooldown=settings.breaker_cooldown,
            max_cooldown=settings.breaker_max_cooldown,
        )
        self._policy = policy
        self._max_attempts = settings.max_attempts
        self._default_config = Provider(base_url=settings.upstream_url, api_key=settings.upstream_api_key)
        self.budget = RetryBudget(settings.retry_budget, settings.retry_budget_min)
        # Per worker until lifespan sets a RedisBoard.
        self.board: Board = LocalBoard()
        self.providers: dict[str, LiveProvider] = {}
        self.routes: dict[str, LiveRoute] = {}
        # Called after every rebuild (the /v1/models catalog re-renders); plain functions, no await.
        self.listeners: list[Callable[[], None]] = []
        self.rebuild(settings.providers, settings.routes)

    def rebuild(self, providers: Mapping[str, Provider], routes: Mapping[str, Route]) -> None:
        """Serve these providers and routes (checked, secrets read) from now on, beside `default`.

        A provider whose config did not change keeps its live state (breakers, cooldowns, latencies), and a
        route whose config and providers did not change keeps its targets. Plain assignments with no await
        in between: no request on this worker's event loop sees half of the change, and a request already
        planned keeps the objects it holds.
        """
        configured = {DEFAULT_PROVIDER: self._default_config, **providers}
        old = self.providers
        live = {
            name: old[name] if name in old and old[name].config == p else LiveProvider(name, p, self._policy)
            for name, p in configured.items()
        }
        built: dict[str, LiveRoute] = {}
        for name, route in routes.items():
            previous = self.routes.get(name)
            if (
                previous is not None
                and previous.config == route
                and all(live.get(t.provider.name) is t.provider for g in previous.groups for t in g)
            ):
                built[name] = previous
                continue
            targets = [
                LiveTarget(
                    live[t.provider],
                    t.model if t.model != name else "",
                    t.priority if t.priority is not None else i,
                    t.weight,
                )
                for i, t in enumerate(route.targets)
            ]
            built[name] = LiveRoute(name, targets, route.max_attempts, route.context_fallback, config=route)
        default = live[DEFAULT_PROVIDER]
        default_route = (
            self._default_route
            if getattr(self, "default", None) is default
            else LiveRoute(DEFAULT_PROVIDER, [LiveTarget(default, "", 0, 1.0)], self._max_attempts)
        )
        # `provider/model` routes, one per provider: the target's model is taken from the request.
        old_direct: dict[str, LiveRoute] = getattr(self, "_direct", {})
        direct = {
            name: old_direct[name]
            if name in old_direct and old_direct[name].groups[0][0].provider is p
            else LiveRoute(name, [LiveTarget(p, "", 0, 1.0)], self._max_attempts, direct=True)
            for name, p in live.items()
        }
        self.providers = live
        self.routes = built
        self.default = default
        self._default_route = default_route
        self._direct = direct
        for listener in self.listeners:
            listener()

    @property
    def configured(self) -> bool:
        """Providers or routes besides `default` exist (then /v1/models is fastproxy's own list)."""
        return bool(self.routes) or len(self.providers) > 1

    def resolve(self, model: str) -> LiveRoute:
        route = self.routes.get(model)
        if route is not None:
            return route
        if "/" in model:
            provider, _, rest = model.partition("/")
            direct = self._direct.get(provider)
            if direct is not None and rest:
                return direct
        return self._default_route

    def plan(self, route: LiveRoute, model: str, pinned: str | None = None) -> Plan:
        return Plan(self, route, model, pinned)

    def open_breakers(self) -> dict[str, int]:
        """Each provider's keys whose breaker is open or half-open (a metric)."""
        return {name: sum(k.breaker.state != "closed" for k in p.keys) for name, p in self.providers.items()}

    def providers_down(self) -> list[str]:
        """Providers none of whose keys may be tried now (breakers open, or resting after 429 / 401)."""
        now = time.monotonic()
        return [name for name, p in self.providers.items() if not p.available(now)]

    def key(self, provider: str, key_id: str) -> LiveKey | None:
        live = self.providers.get(provider)
        if live is None:
            return None
        return next((k for k in live.keys if k.id == key_id), None)

    async def probe(self, key: LiveKey) -> bool:
        """Take the one probe of a half-open breaker, if no other worker or instance holds it."""
        if not await self.board.acquire_probe(key.provider.name, key.id):
            key.breaker.until = time.monotonic() + 1.0  # look again in a second
            return False
        key.breaker.start_probe(time.monotonic())
        return True

    def opened(self, key: LiveKey) -> None:
        until = key.breaker.until
        log.warning(
            "circuit breaker opened for provider %s key %s for %.1fs (%s)",
            key.provider.name,
            key.hint,
            until - time.monotonic(),
            key.last_error,
        )
        self.board.opened(key.provider.name, key.id, time.time() + (until - time.monotonic()))

    def closed(self, key: LiveKey) -> None:
        log.info("circuit breaker closed for provider %s key %s", key.provider.name, key.hint)
        self.board.closed(key.provider.name, key.id)

    def apply(self, provider: str, key_id: str, until_wall: float | None) -> None:
        """Another worker or instance opened (until_wall) or closed (None) this key's breaker."""
        key = self.key(provider, key_id)
        if key is None:
            return
        if until_wall is None:
            key.breaker.close()
        else:
            until = wall_to_monotonic(until_wall)
            if key.breaker.state == "closed" or until > key.breaker.until:
                key.breaker.adopt(until)
