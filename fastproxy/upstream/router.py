"""Model routes: which (provider, key) pairs a request for a model tries, in what order.

A route's targets are grouped by priority (lowest first). Within a group traffic is shared by weight:
two candidates are drawn by weight and the one with fewer requests in flight wins (the first drawn on a
tie, so an idle route splits exactly by weight; a target more than twice as slow as the other loses).
A failure tells the plan what kind it was:

    key     (429, 401/403)            another key of the same target, else the next target
    target  (5xx, 529, timeouts, cuts) the next target of the group, then the next group; once every
                                       target was tried, round again (the caller backs off first)
    context (context_length_exceeded) the route's context_fallback, once

A model no route names goes to `provider/model` when its prefix is a provider, else to the `default`
provider (FASTPROXY_UPSTREAM_URL) with the model unchanged.
"""

from __future__ import annotations

import enum
import logging
import random
import time

from fastproxy.core.providers import DEFAULT_PROVIDER, Provider
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
    __slots__ = ("context_fallback", "direct", "groups", "max_attempts", "name")

    def __init__(
        self,
        name: str,
        targets: list[LiveTarget],
        max_attempts: int,
        context_fallback: str | None = None,
        direct: bool = False,
    ) -> None:
        self.name = name
        # `provider/model`: the model sent upstream is what follows the provider's name.
        self.direct = direct
        self.max_attempts = max_attempts
        self.context_fallback = context_fallback
        priorities = sorted({t.priority for t in targets})
        self.groups = [[t for t in targets if t.priority == p] for p in priorities]


def _healthy(target: LiveTarget, now: float) -> bool:
    return target.provider.available(now)


def _choose(candidates: list[LiveTarget], now: float) -> LiveTarget:
    if len(candidates) == 1:
        return candidates[0]
    a, b = random.choices(candidates, [t.weight for t in candidates], k=2)  # noqa: S311 - load balancing
    if a is b:
        return a
    if a.inflight != b.inflight:
        return a if a.inflight < b.inflight else b
    ka, kb = a.ewma_ms, b.ewma_ms
    if ka and kb and ka > 2 * kb:
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
        groups = self._route.groups
        # One target, the usual case: nothing to choose.
        target = groups[0][0] if len(groups) == 1 and len(groups[0]) == 1 else self._pick_target(now)
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
            return self._with_key(self._pick_target(now), now)
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
        groups = self._route.groups
        for group in groups:
            fresh = [t for t in group if t not in self._tried_targets]
            healthy = [t for t in fresh if _healthy(t, now)]
            if healthy:
                self.repeat = False
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


class Router:
    """Built once per worker from the settings; the live state of providers and keys lives on it."""

    def __init__(self, settings: Settings) -> None:
        policy = BreakerPolicy(
            failures=settings.breaker_failures,
            failure_ratio=settings.breaker_failure_ratio,
            min_requests=settings.breaker_min_requests,
            window=settings.breaker_window,
            cooldown=settings.breaker_cooldown,
            max_cooldown=settings.breaker_max_cooldown,
        )
        default = Provider(base_url=settings.upstream_url, api_key=settings.upstream_api_key)
        configured = {DEFAULT_PROVIDER: default, **settings.providers}
        self.providers = {name: LiveProvider(name, p, policy) for name, p in configured.items()}
        self.budget = RetryBudget(settings.retry_budget, settings.retry_budget_min)
        self._max_attempts = settings.max_attempts
        self.routes: dict[str, LiveRoute] = {}
        for name, route in settings.routes.items():
            targets = [
                LiveTarget(
                    self.providers[t.provider],
                    t.model if t.model != name else "",
                    t.priority if t.priority is not None else i,
                    t.weight,
                )
                for i, t in enumerate(route.targets)
            ]
            self.routes[name] = LiveRoute(name, targets, route.max_attempts, route.context_fallback)
        # Per worker until lifespan sets a RedisBoard.
        self.board: Board = LocalBoard()
        self.default = self.providers[DEFAULT_PROVIDER]
        self._default_route = LiveRoute(DEFAULT_PROVIDER, [LiveTarget(self.default, "", 0, 1.0)], settings.max_attempts)
        # `provider/model` routes, one per provider: the target's model is taken from the request.
        self._direct = {
            name: LiveRoute(name, [LiveTarget(p, "", 0, 1.0)], settings.max_attempts, direct=True)
            for name, p in self.providers.items()
        }

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
        key.breaker.start_probe()
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
                key.breaker.open(time.monotonic(), until)
