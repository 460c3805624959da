"""What may be cached, what the client asked for (Cache-Control), and whose entry it is (the scope). Pure.

Rules (issue 19): embeddings are always cacheable when the cache is on; chat completions, completions
and Responses only when the request is deterministic (`temperature` = 0 or a `seed` present), unless
`cache_generations` widens ("always") or narrows ("never") that. Settings are global and per key
today; per route once routes exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
