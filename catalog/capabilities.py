"""What a provider kind or one of its models can do and cost, and the shipped defaults.

The defaults live in `catalog/data/catalog.toml` (documented and dated there). Layers, each
overriding the one before: the kind's defaults, the shipped model entry, live discovery, and
the provider's `catalog` table in the config file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from importlib import resources
from typing import Any

TOKEN_COUNTING = ("tokenize", "count_tokens", "tiktoken", "estimate")

# Boolean capabilities a job can require (find_providers, capability-aware routing).
FLAGS = ("streaming", "system_prompt", "vision", "tools", "json_object", "json_schema")


class CatalogError(ValueError):
    """Bad catalog data: a shipped file, a config override or a live answer."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    streaming: bool = True
    system_prompt: bool = True
    vision: bool = False
    tools: bool = False
    json_object: bool = False
    json_schema: bool = False
    token_counting: str = "estimate"
    context_window: int | None = None  # prompt + output tokens one request may hold
    max_output_tokens: int | None = None
    # US dollars per million tokens; None when unknown
    input_price: float | None = None
    output_price: float | None = None
    cached_input_price: float | None = None
    cache_write_price: float | None = None

    def merged(self, overrides: Mapping[str, Any], where: str) -> Capabilities:
        return replace(self, **check_fields(overrides, where))

    def to_wire(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def has(self, capability: str) -> bool:
        if capability not in FLAGS:
            raise CatalogError(f"unknown capability {capability!r}; known: {list(FLAGS)}")
        return bool(getattr(self, capability))


FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **{name: (bool,) for name in FLAGS},
    "token_counting": (str,),
    "context_window": (int,),
    "max_output_tokens": (int,),
    "input_price": (int, float),
    "output_price": (int, float),
    "cached_input_price": (int, float),
    "cache_write_price": (int, float),
}


def check_fields(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Typed capability fields from `values`; an unknown key or a bad value is an error."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        types = FIELD_TYPES.get(key)
        if types is None:
            raise CatalogError(f"{where}: unknown key {key!r}; known: {sorted(FIELD_TYPES)}")
        if value is None:
            out[key] = None
            continue
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise CatalogError(f"{where}.{key}: expected {types[0].__name__}, got {value!r}")
        if key == "token_counting" and value not in TOKEN_COUNTING:
            raise CatalogError(f"{where}.{key}: {value!r} is not one of {list(TOKEN_COUNTING)}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if types == (int,) and value < 1:
                raise CatalogError(f"{where}.{key}: must be >= 1, got {value}")
            if key.endswith("_price"):
                if value < 0:
                    raise CatalogError(f"{where}.{key}: a price cannot be negative ({value})")
                value = float(value)
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Shipped:
    written: str
    kinds: dict[str, Capabilities]
    models: dict[str, dict[str, dict[str, Any]]]  # kind -> model -> field overrides

    def lookup(self, kind: str, model: str) -> Capabilities:
        """The kind's defaults refined by the shipped entry for `model` (exact or prefix)."""
        base = self.kinds.get(kind, Capabilities())
        entry = self.entry(kind, model)
        return base if entry is None else base.merged(entry, f"models.{kind}.{model}")

    def entry(self, kind: str, model: str) -> dict[str, Any] | None:
        table = self.models.get(kind, {})
        if model in table:
            return table[model]
        prefixes = [name for name in table if model.startswith(name)]
        return table[max(prefixes, key=len)] if prefixes else None


def parse_shipped(data: Mapping[str, Any]) -> Shipped:
    unknown = set(data) - {"written", "kinds", "models"}
    if unknown:
        raise CatalogError(f"catalog data: unknown section(s) {sorted(unknown)}")
    written = data.get("written")
    if not isinstance(written, str):
        raise CatalogError("catalog data: `written` (the date it was written) is required")
    kinds = {
        kind: Capabilities().merged(values, f"kinds.{kind}")
        for kind, values in (data.get("kinds") or {}).items()
    }
    models: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, table in (data.get("models") or {}).items():
        models[kind] = {
            name: check_fields(values, f"models.{kind}.{name}") for name, values in table.items()
        }
    return Shipped(written, kinds, models)


@cache
def shipped() -> Shipped:
    text = resources.files("catalog").joinpath("data/catalog.toml").read_text()
    return parse_shipped(tomllib.loads(text))
