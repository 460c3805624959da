"""Providers and model routes as configured: the TOML tables, FASTPROXY_PROVIDERS / FASTPROXY_ROUTES, or
the admin API. Pure data and validation; fastproxy.upstream turns them into live providers and a router.

    [providers.openai]
    type = "openai"
    base_url = "https://api.openai.com/v1"
    api_keys = [{ key = "env:OPENAI_KEY_A", weight = 3 }, { key = "env:OPENAI_KEY_B" }]

    [routes."gpt-4o"]
    targets = [{ provider = "openai", model = "gpt-4o" }, { provider = "azure", model = "gpt-4o" }]
    context_fallback = "gpt-4.1"

Every error names the provider or route and the field, in one line (ConfigError).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Weight = Annotated[float, msgspec.Meta(gt=0)]
# A provider's name is also the prefix of `provider/model`, a metric label and part of Redis keys.
PROVIDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_PROVIDER = "default"
ANTHROPIC_BASE_URL = "https://api.anthropic.com"
FROM_ENV = "env:"


class ConfigError(ValueError):
    """A provider or route is invalid; the message names it and the field."""


class ProviderKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    key: str
    weight: Weight = 1.0
    # Names a key so fastproxy keys and users can be pinned to it (defaults to its position: "0", "1"...).
    id: str = ""


class Provider(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # openai: any OpenAI-compatible API; azure: Azure OpenAI's paths and api-key header; anthropic: the Messages
    # API, with chat completions translated to it and back (fastproxy/translate).
    type: Literal["openai", "azure", "anthropic"] = "openai"
    # Required, except for anthropic (ANTHROPIC_BASE_URL when empty).
    base_url: str = ""
    api_key: str = ""
    api_keys: list[ProviderKey] = msgspec.field(default_factory=list)
    # Azure OpenAI: the `api-version` query parameter.
    api_version: str = "2024-10-21"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # Anthropic: the `anthropic-version` header, and `anthropic-beta` when set (comma-separated features).
    anthropic_version: str = "2023-06-01"
    anthropic_beta: str = ""
    # Anthropic requires max_tokens: a chat request that sets none gets this (None: the default_max_tokens setting).
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # Seconds to the first content delta of a stream, or to a non-streamed response; None: only read_timeout.
    first_token_timeout: Seconds | None = None
    # Longest silence inside a stream once its first content delta went to the client; None: read_timeout.
    stream_idle_timeout: Seconds | None = None

    def all_keys(self) -> list[ProviderKey]:
        """Every key, `api_key` first; ids default to the position."""
        listed = ([ProviderKey(key=self.api_key)] if self.api_key else []) + list(self.api_keys)
        return [k if k.id else ProviderKey(key=k.key, weight=k.weight, id=str(i)) for i, k in enumerate(listed)]


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    provider: str
    # The model sent upstream; empty: the model the client asked for.
    model: str = ""
    # Lower is tried first; equal priorities share traffic by weight. None: the target's position.
    priority: int | None = None
    weight: Weight = 1.0


class RouteCache(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """A route's response-cache settings (fastproxy/cache); a field left out follows the global setting.
    The same fields as a key's (core.schemas.KeyCache); how they combine: fastproxy/cache/policy.py."""

    # false: this route is never cached; true: cached even when FASTPROXY_CACHE_DEFAULT=off.
    enabled: bool | None = None
    # Seconds an entry of this route lives (the shortest of the key's, the route's: the global one otherwise).
    ttl: Seconds | None = None
    scope: Literal["key", "user", "global"] | None = None
    # Chat, completions, Responses: cached when deterministic (temperature 0 or a seed), always, or never.
    generations: Literal["deterministic", "always", "never"] | None = None


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    targets: list[Target]
    # What to try when a target answers 400 context_length_exceeded: a route, `provider/model`, or a model
    # of the default provider (resolved as a client's model is).
    context_fallback: str | None = None
    # Upstream attempts per client request, over every key and target together.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    # The response cache for this route's requests (none: the global settings).
    cache: RouteCache | None = None


def resolve_secret(value: str, environ: Mapping[str, str], where: str) -> str:
    """`env:NAME` reads the secret from the environment; anything else is the secret itself."""
    if not value.startswith(FROM_ENV):
        return value
    name = value[len(FROM_ENV) :]
    secret = environ.get(name)
    if not secret:
        raise ConfigError(f"{where}: the environment variable {name} is not set")
    return secret


def resolve_provider(name: str, provider: Provider, environ: Mapping[str, str]) -> Provider:
    """The provider with every `env:` key read, checked; raises ConfigError naming the field."""
    where = f"provider {name!r}"
    if not PROVIDER_NAME.match(name):
        raise ConfigError(f"{where}: invalid name (letters, digits, '_', '.', '-'; at most 64)")
    if not provider.base_url:
        if provider.type != "anthropic":
            raise ConfigError(f"{where}: base_url is required")
        provider = msgspec.structs.replace(provider, base_url=ANTHROPIC_BASE_URL)
    if not re.match(r"^https?://[^/\s]+", provider.base_url):
        raise ConfigError(f"{where}: invalid base_url {provider.base_url!r}: expected an http:// or https:// URL")
    keys = [
        ProviderKey(key=resolve_secret(k.key, environ, f"{where} api_keys[{i}].key"), weight=k.weight, id=k.id)
        for i, k in enumerate(provider.api_keys)
    ]
    api_key = resolve_secret(provider.api_key, environ, f"{where} api_key")
    ids = [k.id for k in provider.all_keys() if k.id]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"{where}: api_keys: duplicate key id")
    for i, k in enumerate(keys):
        if not k.key:
            raise ConfigError(f"{where}: api_keys[{i}].key is empty")
    return msgspec.structs.replace(provider, api_key=api_key, api_keys=keys)


def check_config(providers: Mapping[str, Provider], routes: Mapping[str, Route]) -> None:
    """Raise ConfigError naming the provider or route, and the field, of the first one that can't work."""
    if DEFAULT_PROVIDER in providers:
        raise ConfigError(
            f"provider {DEFAULT_PROVIDER!r}: the name is taken by FASTPROXY_UPSTREAM_URL's provider; choose another"
        )
    for name, route in routes.items():
        where = f"route {name!r}"
        if not name:
            raise ConfigError("route '': a route needs a model name")
        if not route.targets:
            raise ConfigError(f"{where}: targets is empty")
        for i, target in enumerate(route.targets):
            if target.provider not in providers and target.provider != DEFAULT_PROVIDER:
                raise ConfigError(f"{where}: targets[{i}].provider: unknown provider {target.provider!r}")
        if route.context_fallback == name:
            raise ConfigError(f"{where}: context_fallback: a route can't fall back to itself")
