"""What may be cached, what the client asked for (Cache-Control), whose entry it is (the scope), and how a
route's and a key's settings combine with the global ones. Pure.

Rules (issue 19): embeddings are always cacheable when the cache is on for the request; chat
completions, completions and Responses only when the request is deterministic (`temperature` = 0 or a
`seed` present), unless `generations` widens ("always") or narrows ("never") that.

Settings, each field on its own (`Rule`): the key's (admin API) over the route's (config or admin API)
over the global ones (FASTPROXY_CACHE_*), except
- `enabled`: false on the key or on the route keeps the request out of the cache; otherwise true on
  either puts it in, even when the global default (FASTPROXY_CACHE_DEFAULT) is off;
- `ttl`: the shortest of the key's and the route's, when either sets one (an operator who shortens
  either means it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from fastproxy.core.schemas import Principal

Scope = Literal["key", "user", "global"]
Generations = Literal["deterministic", "always", "never"]
EMBEDDINGS = "embeddings"
GENERATIONS = frozenset({"chat.completions", "completions", "responses"})


@dataclass(frozen=True, slots=True)
class Directives:
    """The client's Cache-Control, as far as the cache obeys it."""

    # no-store: neither read nor write.
    store: bool = True
    # no-cache: do not read; the answer refreshes the entry.
    read: bool = True
    # max-age=N: an entry older than N seconds is not served (it is refreshed).
    max_age: float | None = None


DEFAULT = Directives()


@dataclass(frozen=True, slots=True)
class Rule:
    """The cache settings one request is served under."""

    enabled: bool = True
    scope: Scope = "user"
    generations: Generations = "deterministic"
    ttl: float = 3600.0


class Overrides(Protocol):
    """A key's (core.schemas.KeyCache) or a route's (core.providers.RouteCache) settings; None: not set."""

    @property
    def enabled(self) -> bool | None: ...
    @property
    def scope(self) -> Scope | None: ...
    @property
    def generations(self) -> Generations | None: ...
    @property
    def ttl(self) -> float | None: ...


def resolve(default: Rule, route: Overrides | None, key: Overrides | None) -> Rule:
    """The request's settings (see the module docstring); `default` itself when nothing overrides it."""
    if route is None and key is None:
        return default
    if (key is not None and key.enabled is False) or (route is not None and route.enabled is False):
        return OFF
    enabled = (
        default.enabled or (key is not None and key.enabled is True) or (route is not None and route.enabled is True)
    )
    scope, generations = default.scope, default.generations
    ttls = []
    for level in (route, key):  # the key last: it wins
        if level is not None:
            scope = level.scope or scope
            generations = level.generations or generations
            if level.ttl is not None:
                ttls.append(level.ttl)
    return Rule(enabled, scope, generations, min(ttls) if ttls else default.ttl)


OFF = Rule(enabled=False)


def directives(value: bytes | None) -> Directives:
    """Parse a Cache-Control header value; unknown or malformed directives are ignored."""
    if not value:
        return DEFAULT
    store = read = True
    max_age: float | None = None
    for part in value.split(b","):
        name, _, arg = part.strip().lower().partition(b"=")
        if name == b"no-store":
            store = read = False
        elif name == b"no-cache":
            read = False
        elif name == b"max-age":
            digits = arg.strip().strip(b'"')
            if digits.isdigit():
                max_age = float(int(digits))
    return Directives(store, read, max_age)


def cacheable(endpoint: str, temperature: float | None, seed: int | None, generations: Generations) -> bool:
    if endpoint == EMBEDDINGS:
        return True
    if endpoint not in GENERATIONS or generations == "never":
        return False
    return generations == "always" or temperature == 0 or seed is not None


def scope_of(principal: Principal, scope: Scope) -> str:
    """The tenant an entry belongs to. `user` falls back to the key when the key has no user; an anonymous
    caller (auth off) has one scope. `global` shares across every tenant and is only ever set explicitly."""
    if scope == "global":
        return "global"
    if scope == "user" and principal.user_id is not None:
        return "user:" + principal.user_id
    if principal.key_id is not None:
        return "key:" + principal.key_id
    return "anonymous"
