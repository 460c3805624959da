"""Live providers: where a request for a model goes (URL), with which credentials (a weighted key pool),
and what each key has shown lately (breaker, cooldown, in-flight count, latencies, the rate limit it
reported). Built once at startup from fastproxy.core.providers; nothing here does I/O.

Header sets per key are built here once, so an attempt only concatenates two prebuilt tuples.
"""

from __future__ import annotations

import random
import re
from urllib.parse import quote

from fastproxy.core.providers import Provider, ProviderKey
from fastproxy.core.settings import mask
from fastproxy.upstream.breaker import Breaker, BreakerPolicy

# Weight factor of a key whose last reported rate limit is nearly spent, until its reset.
STEERED_WEIGHT = 0.05
# "Nearly spent": at most this share of the limit left (and at least this many requests, tokens).
STEER_SHARE = 0.02
_EWMA = 0.2
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def go_duration(text: str) -> float | None:
    """Seconds in OpenAI's reset headers (`1s`, `6m0s`, `12ms`, `1m30.5s`), or None."""
    total, pos = 0.0, 0
    for m in _GO_DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return total if pos and pos == len(text) else None


class LiveKey:
    """One upstream API key of one provider, and what the proxy has seen of it."""

    __slots__ = (
        "breaker",
        "cooldown_until",
        "ewma_ms",
        "headers",
        "hint",
        "id",
        "inflight",
        "last_error",
        "provider",
        "ratelimit",
        "steered_until",
        "ttft_ms",
        "weight",
    )

    def __init__(self, provider: LiveProvider, key_id: str, secret: str, weight: float, policy: BreakerPolicy) -> None:
        self.provider = provider
        self.id = key_id
        # The last 4 characters, for logs and the admin API: never more of the key.
        self.hint = mask(secret) if secret else ""
        self.weight = weight
        self.headers = provider.base_headers + provider.auth_headers(secret)
        self.breaker = Breaker(policy)
        # 429 (Retry-After) or 401/403: not chosen before this time.monotonic().
        self.cooldown_until = 0.0
        self.inflight = 0
        self.ewma_ms = 0.0
        self.ttft_ms = 0.0
        self.last_error: str | None = None
        # The last x-ratelimit-remaining-{requests,tokens} seen, and until when the key is steered around.
        self.ratelimit: dict[str, int] = {}
        self.steered_until = 0.0

    def available(self, now: float) -> bool:
        """Not resting, and its breaker closed or due for a probe."""
        if now < self.cooldown_until:
            return False
        breaker = self.breaker
        return breaker.state == "closed" or breaker.probe_due(now)

    def ready_at(self) -> float:
        """When this key may be tried again (the later of its cooldown and its breaker's)."""
        breaker = self.breaker
        return max(self.cooldown_until, breaker.until if breaker.state != "closed" else 0.0)

    def effective_weight(self, now: float) -> float:
        return self.weight * STEERED_WEIGHT if now < self.steered_until else self.weight

    def observe_latency(self, ms: float) -> None:
        self.ewma_ms = ms if not self.ewma_ms else self.ewma_ms + _EWMA * (ms - self.ewma_ms)

    def observe_ttft(self, ms: float) -> None:
        self.ttft_ms = ms if not self.ttft_ms else self.ttft_ms + _EWMA * (ms - self.ttft_ms)

    def observe_ratelimit(self, headers: list[tuple[bytes, bytes]], now: float) -> None:
        """Steer around a key whose reported remaining requests or tokens are nearly spent, until reset."""
        seen: dict[bytes, bytes] = {k.lower(): v for k, v in headers if k[:12].lower() == b"x-ratelimit-"}
        for kind in ("requests", "tokens"):
            remaining = seen.get(b"x-ratelimit-remaining-" + kind.encode())
            if remaining is None or not remaining.isdigit():
                continue
            left = int(remaining)
            self.ratelimit["remaining_" + kind] = left
            limit_raw = seen.get(b"x-ratelimit-limit-" + kind.encode(), b"")
            limit = int(limit_raw) if limit_raw.isdigit() else 0
            if limit:
                self.ratelimit["limit_" + kind] = limit
            if left <= max(1, STEER_SHARE * limit):
                reset = go_duration(seen.get(b"x-ratelimit-reset-" + kind.encode(), b"").decode("latin-1"))
                self.steered_until = max(self.steered_until, now + (reset if reset is not None else 1.0))


class LiveProvider:
    __slots__ = (
        "api_version",
        "base_headers",
        "base_url",
        "config",
        "default_max_tokens",
        "first_token_timeout",
        "key_ids",
        "keys",
        "name",
        "stream_idle_timeout",
        "translates",
        "type",
    )

    def __init__(self, name: str, config: Provider, policy: BreakerPolicy) -> None:
        self.name = name
        # What it was built from (a rebuild keeps a provider whose config did not change, with its state).
        self.config = config
        self.type = config.type
        # Chat completions sent here are translated to another wire format (Anthropic's Messages) and back;
        # decided once here, so an attempt at an OpenAI-compatible provider pays one attribute read.
        self.translates = config.type == "anthropic"
        self.base_url = config.base_url.rstrip("/")
        self.api_version = config.api_version
        self.default_max_tokens = config.default_max_tokens
        self.first_token_timeout = config.first_token_timeout
        self.stream_idle_timeout = config.stream_idle_timeout
        headers = [(k.lower(), v) for k, v in config.headers.items()]
        if self.translates:
            # Anthropic's base URL has no /v1 (its SDKs add it); accept one given anyway.
            self.base_url = self.base_url.removesuffix("/v1")
            headers.append(("anthropic-version", config.anthropic_version))
            if config.anthropic_beta:
                headers.append(("anthropic-beta", config.anthropic_beta))
        self.base_headers: tuple[tuple[str, str], ...] = tuple(headers)
        # A provider without keys (a local vLLM or Ollama) still has one, empty: it sends no credentials.
        keys = config.all_keys() or [ProviderKey(key="", id="0")]
        self.keys = [LiveKey(self, k.id, k.key, k.weight, policy) for k in keys]
        self.key_ids = frozenset(k.id for k in keys)

    def auth_headers(self, secret: str) -> tuple[tuple[str, str], ...]:
        if not secret:
            return ()
        if self.type == "azure":
            return (("api-key", secret),)
        if self.type == "anthropic":
            return (("x-api-key", secret),)
        return (("authorization", "Bearer " + secret),)

    def url(self, tail: str, model: str, query: str) -> str:
        """The upstream URL for the client's path after `/v1` (`tail`), the target model and query string."""
        if self.type == "azure":
            url = f"{self.base_url}/openai/deployments/{quote(model, safe='')}{tail}?api-version={self.api_version}"
            return url + "&" + query if query else url
        if self.type == "anthropic":
            # Chat completions become Messages; Anthropic's own paths (/messages, /messages/count_tokens,
            # /models) keep theirs.
            url = self.base_url + "/v1" + ("/messages" if tail == "/chat/completions" else tail)
            return url + "?" + query if query else url
        url = self.base_url + tail
        return url + "?" + query if query else url

    def pick_key(self, now: float, pinned: str | None = None, exclude: set[LiveKey] | None = None) -> LiveKey:
        """A key by weight among the available ones (the pinned one if named and present); when none is
        available, the one whose cooldown ends first rather than no attempt at all."""
        keys = self.keys
        if pinned is not None:
            for key in keys:
                if key.id == pinned:
                    return key
        if len(keys) == 1:
            return keys[0]
        candidates = [k for k in keys if k.available(now) and (exclude is None or k not in exclude)]
        if not candidates:
            rest = [k for k in keys if exclude is None or k not in exclude] or keys
            return min(rest, key=LiveKey.ready_at)
        if len(candidates) == 1:
            return candidates[0]
        weights = [k.effective_weight(now) for k in candidates]
        return random.choices(candidates, weights)[0]  # noqa: S311 - load balancing, not security

    def available(self, now: float) -> bool:
        keys = self.keys
        if len(keys) == 1:
            return keys[0].available(now)
        return any(k.available(now) for k in keys)
