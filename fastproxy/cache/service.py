"""ResponseCache: what the request path calls. One lookup before the upstream call, one tee of the
upstream's response into the store (and to the followers of an identical request in flight).

    lookup = await cache.lookup(...)        # hit | follow | miss (leads, tees) | bypass (reason)
    hit or follow:  await lookup.serve(...) # False: released by a failed leader, go upstream
    miss:           the committed attempt (proxy/failover.py) calls start / chunk / end as the answer goes out
    always:         lookup.release() when the request ends (a leader that did not finish fails its flight)

Never raises for a backend's sake: a backend that is down or slow makes the lookup a bypass.
Settings are global (CacheConfig), per route (`cache` on a route) and per key (`cache` on a key, admin
API); policy.resolve combines them for each request.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from fastproxy.cache.coalesce import Flight, Flights
from fastproxy.cache.entry import FORMAT, CacheKey, Entry, KeyMaker, size_of
from fastproxy.cache.memory import MemoryStore
from fastproxy.cache.policy import (
    Directives,
    Generations,
    Overrides,
    Rule,
    Scope,
    cacheable,
    directives,
    resolve,
    scope_of,
)
from fastproxy.cache.redis_store import UNAVAILABLE, RedisStore
from fastproxy.cache.replay import Framer, send_following, send_stored
from fastproxy.core.schemas import Principal, TokenUsage
from fastproxy.core.types import RawHeaders, Send

HIT = (b"x-fastproxy-cache", b"hit")
MISS = (b"x-fastproxy-cache", b"miss")
BYPASS = (b"x-fastproxy-cache", b"bypass")
_FINAL_EVENTS = (b"[DONE]", b'"response.completed"')


@dataclass(frozen=True, slots=True)
class CacheConfig:
    ttl: float = 3600.0
    max_entry_bytes: int = 4 * 1024 * 1024
    scope: Scope = "user"
    generations: Generations = "deterministic"
    coalesce: bool = True
    # With Redis: how long a worker keeps an entry it read from or wrote to Redis in its own memory
    # (the near tier: a repeated hit costs no round trip); 0: always ask Redis.
    local_ttl: float = 5.0
    # False: only routes and keys whose settings say `enabled: true` are cached.
    default_on: bool = True


class Lookup:
    """One request's dealings with the cache. `header` is its x-fastproxy-cache value."""

    __slots__ = (
        "_cache",
        "_chunks",
        "_headers",
        "_size",
        "_status",
        "_stream",
        "age",
        "entry",
        "flight",
        "header",
        "key",
        "leads",
        "ttl",
        "usage",
        "writes",
    )

    def __init__(
        self, cache: ResponseCache | None, header: tuple[bytes, bytes], key: CacheKey | None = None, ttl: float = 0.0
    ) -> None:
        self._cache = cache
        self.header = header
        self.key = key
        # How long the answer is kept (the request's Rule).
        self.ttl = ttl
        self.entry: Entry | None = None
        # Set for a follower (the flight to read) and for a leader (the flight to feed).
        self.flight: Flight | None = None
        self.leads = False
        # The answer is written to the store when it completes.
        self.writes = False
        self.age = 0
        self.usage: TokenUsage | None = None
        self._status = 0
        self._stream = False
        self._chunks: list[bytes] = []
        self._headers: RawHeaders = []
        self._size = 0

    @property
    def answers(self) -> bool:
        """Served by the cache (a hit) or by an identical request in flight (a follower)."""
        return self.entry is not None or (self.flight is not None and not self.leads)

    @property
    def tees(self) -> bool:
        return self.writes or self.leads

    # -- hit and follow ---------------------------------------------------------------------------
    async def serve(self, send: Send, headers: RawHeaders, framer: Framer | None) -> bool:
        """Send the answer; False (nothing sent) when a followed leader failed: then go upstream."""
        entry = self.entry
        if entry is not None:
            headers = [*entry.headers, *headers, HIT, (b"age", str(self.age).encode())]
            await send_stored(send, entry.status, headers, entry.chunks, entry.stream, framer)
            self.usage = TokenUsage(*entry.usage) if entry.usage else None
            return True
        flight = self.flight
        assert flight is not None
        if not await flight.started():
            self.header = MISS
            return False
        headers = [*flight.headers, *headers, HIT, (b"age", b"0")]
        if self._stream_of(flight.headers):
            await send_following(send, flight, headers, framer)
        else:
            if not await flight.finished():
                self.header = MISS
                return False
            await send_stored(send, flight.status, headers, flight.chunks, False, None)
        self.usage = TokenUsage(*flight.usage) if flight.usage else None
        return True

    @staticmethod
    def _stream_of(headers: RawHeaders) -> bool:
        return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)

    # -- the tee, called by the exchange as the upstream answers ---------------------------------------
    def start(self, status: int, headers: RawHeaders, stream: bool) -> None:
        self._status, self._stream = status, stream
        if self.flight is not None and self.leads:
            self.flight.start(status, headers)
            self._chunks = self.flight.chunks  # one list: the followers read what the store will keep
        self._headers = headers

    def chunk(self, data: bytes) -> None:
        self._size += len(data)
        if self.flight is not None and self.leads:
            self.flight.add(data)
        else:
            self._chunks.append(data)

    def end(self, usage: TokenUsage | None) -> None:
        """The upstream's answer ended normally (a stream: no error, not cut)."""
        cache = self._cache
        assert cache is not None and self.key is not None
        ok = self._status == 200 and bool(self._chunks)
        if ok and self._stream:
            ok = any(final in self._chunks[-1] for final in _FINAL_EVENTS)
        packed = (usage.prompt, usage.completion, usage.total, usage.cached, usage.reasoning) if usage else None
        if ok and self.writes:
            if self._size > cache.config.max_entry_bytes:
                cache.count_bypass("too_large")
            else:
                # The list itself: nothing is appended after end() (a flight's followers only read it).
                chunks = self._chunks
                entry = Entry(FORMAT, cache.clock(), 200, self._stream, self._headers, chunks, packed)
                cache.put(self.key, entry, size_of(self._headers, chunks, self._size), self.ttl)
        if self.flight is not None and self.leads:
            self.flight.end(ok, packed)
            cache.flights.leave(self.key.digest, self.flight)

    def release(self) -> None:
        """The request is over: a leader that did not end normally releases its followers to go upstream."""
        if self.leads and self.flight is not None and self._cache is not None and self.key is not None:
            self.flight.end(False)
            self._cache.flights.leave(self.key.digest, self.flight)


class ResponseCache:
    def __init__(
        self,
        config: CacheConfig,
        memory: MemoryStore | None = None,
        redis: RedisStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.memory = memory
        self.redis = redis
        self.clock = clock
        self.flights = Flights()
        self._keys = KeyMaker()
        self.rule = Rule(config.default_on, config.scope, config.generations, config.ttl)
        self._not_cacheable = Lookup(None, BYPASS)
        self._no_store = Lookup(None, BYPASS)
        # Counts since the metrics last took them: plain ints for the three common outcomes (an int's
        # += is cheaper than a Counter's on the request path), (outcome, reason) for the others.
        self.hits = self.misses = self.not_cacheable = 0
        self.counts: Counter[tuple[str, str]] = Counter()

    async def lookup(
        self,
        headers: RawHeaders,
        endpoint: str,
        principal: Principal,
        temperature: float | None,
        seed: int | None,
        upstream: str,
        model: str,
        body: bytes,
        route: Overrides | None = None,
    ) -> Lookup:
        """Classify the request and, for a cacheable one, read the store and join the in-flight table.
        `route`: the resolved route's cache settings; the key's are the principal's."""
        config = self.config
        rule = resolve(self.rule, route, principal.cache)
        if not rule.enabled:
            self.counts["bypass", "off"] += 1
            return self._no_store
        if not cacheable(endpoint, temperature, seed, rule.generations):
            self.not_cacheable += 1
            return self._not_cacheable
        wants = _directives(headers)
        if not wants.store:
            self.counts["bypass", "no_store"] += 1
            return self._no_store
        key = self._keys.derive(scope_of(principal, rule.scope), endpoint, upstream, model, body)
        lookup = Lookup(self, MISS, key, rule.ttl)
        if wants.read:
            now = self.clock()
            entry = self.memory.get(key, now) if self.memory is not None else None
            if entry is None and self.redis is not None:
                found = await self.redis.get(key)
                if found is UNAVAILABLE:
                    self.counts["bypass", "unavailable"] += 1
                    lookup.header = BYPASS
                    return lookup
                entry = found if isinstance(found, Entry) else None
                if entry is not None and self.memory is not None:
                    self._near(key, entry, rule.ttl)
            if entry is not None:
                age = now - entry.created
                if wants.max_age is None or age <= wants.max_age:
                    self.hits += 1
                    lookup.entry, lookup.header, lookup.age = entry, HIT, int(max(age, 0))
                    return lookup
            if config.coalesce:
                lookup.flight, lookup.leads = self.flights.join(key.digest)
                if not lookup.leads:
                    self.counts["hit", "coalesced"] += 1
                    return lookup
        if wants.read:
            self.misses += 1
        else:
            self.counts["miss", "no_cache"] += 1
        lookup.writes = True
        return lookup

    def put(self, key: CacheKey, entry: Entry, size: int = 0, ttl: float | None = None) -> None:
        ttl = self.config.ttl if ttl is None else ttl
        if self.redis is not None:
            self.redis.put(key, entry, ttl)
            if self.memory is not None:
                self._near(key, entry, ttl, size)
        elif self.memory is not None and not self.memory.put(key, entry, ttl, self.clock(), size):
            self.counts["bypass", "too_large"] += 1

    def _near(self, key: CacheKey, entry: Entry, ttl: float, size: int = 0) -> None:
        """Keep a Redis entry in the worker's near tier for at most `local_ttl` (and never past `ttl`, its own)."""
        assert self.memory is not None
        now = self.clock()
        ttl = min(self.config.local_ttl, ttl - (now - entry.created))
        if ttl > 0:
            self.memory.put(key, entry, ttl, now, size)

    def count_bypass(self, reason: str) -> None:
        self.counts["bypass", reason] += 1

    def take_counts(self) -> Counter[tuple[str, str]]:
        counts, self.counts = self.counts, Counter()
        counts["hit", ""] += self.hits
        counts["miss", ""] += self.misses
        counts["bypass", "not_cacheable"] += self.not_cacheable
        self.hits = self.misses = self.not_cacheable = 0
        counts = +counts  # drop the zeros
        counts.update(("bypass", "write_dropped") for _ in range(self._take_dropped()))
        return counts

    def _take_dropped(self) -> int:
        if self.redis is None:
            return 0
        dropped, self.redis.dropped_writes = self.redis.dropped_writes, 0
        return dropped

    def held_bytes(self) -> int:
        """Bytes the in-process cache holds now (0 with Redis)."""
        return self.memory.bytes if self.memory is not None else 0

    def take_written(self) -> int:
        """Bytes written to Redis since the last call."""
        if self.redis is None:
            return 0
        written, self.redis.bytes_written = self.redis.bytes_written, 0
        return written

    def take_evictions(self) -> int:
        if self.memory is None:
            return 0
        evicted, self.memory.evictions = self.memory.evictions, 0
        return evicted

    async def purge(self, scope: str | None = None, model: str | None = None) -> int:
        """Remove entries of a scope and/or route (none: all); with Redis, return how many Redis held (this
        worker's near tier is emptied too; other workers' within local_ttl). Redis errors propagate."""
        local = self.memory.purge(scope, model) if self.memory is not None else 0
        if self.redis is None:
            return local
        return await self.redis.purge(scope, model)


def _directives(headers: RawHeaders) -> Directives:
    for name, value in headers:
        if name == b"cache-control":
            return directives(value)
    return directives(None)
