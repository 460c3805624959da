"""Which token buckets apply to a request (pure: no I/O, no clock).

A bucket is a subject (key, user, client IP, everyone) times a metric (requests or tokens; per
minute, per day, or a lifetime quota that never refills). Buckets refill continuously at
capacity / period. Every Redis key carries a hash tag per subject, `{fp:key:<id>}`, so all the
buckets of one subject share a Cluster slot; `rl1` in the name is the version of the state layout
that ratelimit.lua reads and writes (bump it when the layout changes, so old keys are never misread).
On a Redis Cluster the subjects of one request (key + user + global) live in different slots, so
the cluster store (cluster.py) takes them slot by slot with give-back; README.md says what stays exact.
"""

from __future__ import annotations

from typing import Final

import msgspec

from fastproxy.core.schemas import Limits, Principal

MINUTE: Final = 60
DAY: Final = 86_400
LIFETIME: Final = 0  # never refills
STATE_VERSION: Final = "rl1"
# How a key is named in messages: the prefix every fastproxy key has, then its last 4 characters.
KEY_DISPLAY: Final = "sk-fp-...{}"
# Principals whose bucket plans are remembered; past this the cache starts over (bounded memory).
_CACHE_SIZE: Final = 4096

# (Limits field, is a tokens bucket, period in seconds, metric suffix, human name)
_METRICS: Final = (
    ("rpm", False, MINUTE, "rpm", "requests per minute"),
    ("rpd", False, DAY, "rpd", "requests per day"),
    ("tpm", True, MINUTE, "tpm", "tokens per minute"),
    ("tpd", True, DAY, "tpd", "tokens per day"),
    ("max_tokens_total", True, LIFETIME, "total", "total tokens (lifetime quota)"),
)


class Bucket(msgspec.Struct, frozen=True, gc=False):
    """One token bucket. `period` seconds refill it from empty to `capacity`; 0 means never."""

    key: str
    name: str
    tokens: bool
    capacity: int
    period: int

    @property
    def lifetime(self) -> bool:
        return self.period == LIFETIME


class Plan:
    """The buckets of one request, request-count buckets first, then token buckets; built once, reused.

    `reported` holds, per kind that has refilling buckets, the kind's name and the (index into
    `buckets`, capacity as bytes) of each of them: what the x-ratelimit-* headers choose from.
    Lifetime quotas have no reset, so they are never reported there.
    """

    __slots__ = ("buckets", "reported", "requests", "tokens")

    def __init__(self, requests: tuple[Bucket, ...], tokens: tuple[Bucket, ...]) -> None:
        self.requests = requests
        self.tokens = tokens
        self.buckets = requests + tokens
        reported: list[tuple[bytes, tuple[tuple[int, bytes], ...]]] = []
        for kind, start, group in ((b"requests", 0, requests), (b"tokens", len(requests), tokens)):
            refilling = tuple((i, b"%d" % b.capacity) for i, b in enumerate(group, start) if not b.lifetime)
            if refilling:
                reported.append((kind, refilling))
        self.reported = tuple(reported)


EMPTY_PLAN: Final = Plan((), ())


def subject_buckets(prefix: str, subject: str, label: str, limits: Limits | None) -> tuple[Bucket, ...]:
    """The buckets `limits` define for one subject (`subject` goes in the hash tag, `label` in messages)."""
    if limits is None:
        return ()
    out: list[Bucket] = []
    for field, tokens, period, suffix, name in _METRICS:
        capacity = getattr(limits, field)
        if capacity is not None and capacity >= 0:
            key = f"{prefix}{{fp:{subject}}}:{STATE_VERSION}:{suffix}"
            out.append(Bucket(key, f"{name} for {label}", tokens, capacity, period))
    return tuple(out)


class Planner:
    """Builds the Plan of a request from its Principal, its client IP and the configured limits.

    Plans are cached per (Principal, client IP when IP limits are set). A Principal is a frozen
    value: when an admin changes limits, auth hands out a new one and the new limits apply to the
    next request.
    """

    def __init__(self, prefix: str, global_limits: Limits | None, ip_limits: Limits | None) -> None:
        self._prefix = prefix
        self._global = subject_buckets(prefix, "global", "all clients (global)", global_limits)
        self._ip_limits = ip_limits if ip_limits is not None and subject_buckets("", "", "", ip_limits) else None
        self._cache: dict[tuple[Principal, str | None], Plan] = {}
        self._idle = not self._global and self._ip_limits is None

    def plan(self, principal: Principal, client_ip: str | None) -> Plan:
        if self._idle and principal.key_limits is None and principal.user_limits is None:
            return EMPTY_PLAN  # nothing configured anywhere: no lookup, no round trip
        ip = client_ip if self._ip_limits is not None else None
        plan = self._cache.get((principal, ip))
        if plan is None:
            plan = self._build(principal, ip)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[(principal, ip)] = plan
        return plan

    def _build(self, principal: Principal, ip: str | None) -> Plan:
        every = self._principal_buckets(principal) + self._global
        if ip:
            every += subject_buckets(self._prefix, "ip:" + ip, "client IP " + ip, self._ip_limits)
        if not every:
            return EMPTY_PLAN
        return Plan(tuple(b for b in every if not b.tokens), tuple(b for b in every if b.tokens))

    def _principal_buckets(self, principal: Principal) -> tuple[Bucket, ...]:
        out: tuple[Bucket, ...] = ()
        if principal.key_id is not None:
            label = "key " + KEY_DISPLAY.format(principal.key_hint or "????")
            out += subject_buckets(self._prefix, "key:" + principal.key_id, label, principal.key_limits)
        if principal.user_id is not None:
            label = "user " + principal.user_id
            out += subject_buckets(self._prefix, "user:" + principal.user_id, label, principal.user_limits)
        return out
