"""The cost of one job from its usage and the catalog's prices.

Usage is normalized by the workers: `prompt_tokens` is every prompt token, of which
`cached_tokens` were read from the provider's prompt cache and `cache_creation_tokens` were
written to it. That covers both billing styles: OpenAI counts cached tokens inside
prompt_tokens (prompt_tokens_details.cached_tokens) and bills them at the cached price;
Anthropic reports cache reads and writes apart from input_tokens and bills writes at their
own price. A cost the provider reports itself (OpenRouter's usage.cost) wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from catalog.capabilities import Capabilities

REPORTED = "reported"
PRICED = "priced"
UNKNOWN = "unknown"
COST_SOURCES = (REPORTED, PRICED, UNKNOWN)
PER = 1_000_000  # prices are per million tokens


@dataclass(frozen=True, slots=True)
class Cost:
    usd: float | None
    source: str  # reported | priced | unknown


def _tokens(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def job_cost(caps: Capabilities, usage: Mapping[str, Any]) -> Cost:
    reported = usage.get("cost")
    if isinstance(reported, int | float) and not isinstance(reported, bool):
        return Cost(float(reported), REPORTED)
    if caps.input_price is None or caps.output_price is None:
        return Cost(None, UNKNOWN)
    prompt = _tokens(usage, "prompt_tokens")
    cached = _tokens(usage, "cached_tokens")
    written = _tokens(usage, "cache_creation_tokens")
    uncached = max(0, prompt - cached - written)
    cached_price = caps.input_price if caps.cached_input_price is None else caps.cached_input_price
    write_price = caps.input_price if caps.cache_write_price is None else caps.cache_write_price
    usd = (
        uncached * caps.input_price
        + cached * cached_price
        + written * write_price
        + _tokens(usage, "completion_tokens") * caps.output_price
    ) / PER
    return Cost(usd, PRICED)


def estimate_cost(caps: Capabilities, prompt_tokens: int, max_tokens: int | None) -> Cost:
    """An upper estimate before running: every prompt token uncached, max_tokens generated."""
    if caps.input_price is None or caps.output_price is None:
        return Cost(None, UNKNOWN)
    out = max_tokens if max_tokens is not None else 0
    return Cost((prompt_tokens * caps.input_price + out * caps.output_price) / PER, PRICED)
