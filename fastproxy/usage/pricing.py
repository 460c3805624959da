"""The price table: USD per million tokens for each model, from the shipped file or an override.

Loaded once in lifespan; `cost()` is a dict lookup and a few multiplications.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import msgspec

from fastproxy.core.schemas import TokenUsage


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: float = 0.0
    output: float = 0.0
    # Defaults to `input` when a table leaves it out.
    cached_input: float | None = None


class _Table(msgspec.Struct, forbid_unknown_fields=True):
    models: dict[str, Price] = {}


class PriceTableError(ValueError):
    """The price table file is missing or malformed; the message names the file."""


class PriceTable:
    """Model name -> Price. Unknown models cost 0 (their rows still carry the tokens)."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)

    def __contains__(self, model: str) -> bool:
        return model in self._prices

    def cost(self, model: str | None, usage: TokenUsage) -> float:
        price = self._prices.get(model) if model else None
        if price is None:
            return 0.0
        cached = min(usage.cached, usage.prompt)
        cached_price = price.input if price.cached_input is None else price.cached_input
        return ((usage.prompt - cached) * price.input + cached * cached_price + usage.completion * price.output) / 1e6


def _parse(data: bytes, name: str) -> dict[str, Price]:
    try:
        raw = json.loads(data) if name.endswith(".json") else tomllib.loads(data.decode())
        return msgspec.convert(raw, _Table).models
    except (ValueError, msgspec.ValidationError) as exc:
        raise PriceTableError(f"invalid price table {name}: {exc}") from exc


def load_prices(override: str = "") -> PriceTable:
    """The shipped table, with every model of the `override` file (TOML or JSON) replacing or adding to it."""
    shipped = resources.files("fastproxy.usage").joinpath("prices.toml").read_bytes()
    prices = _parse(shipped, "prices.toml")
    if override:
        try:
            data = Path(override).read_bytes()
        except OSError as exc:
            raise PriceTableError(f"cannot read price table {override}: {exc.strerror}") from exc
        prices.update(_parse(data, override))
    return PriceTable(prices)
