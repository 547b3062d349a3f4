"""Backend kinds by name, and what each kind honours, as data.

Imports are lazy so a worker loads only its own provider, and the broker (which needs only
`static_features`) loads none: importing a provider module pulls in aiohttp and the
llama-server supervisor. tests/test_registry.py checks each backend class agrees with FEATURES.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from catalog.schemas import SCHEMAS, schema_features
from protocol.schema import Key
from workers import options

if TYPE_CHECKING:
    from workers.backend import Backend

KINDS: dict[str, str] = {
    "mock": "workers.providers.mock:MockBackend",
    "llamacpp": "workers.providers.llamacpp:LlamaCppBackend",
    "openai": "workers.providers.openai:OpenAIBackend",
    "anthropic": "workers.providers.anthropic:AnthropicBackend",
    "openrouter": "workers.providers.openrouter:OpenRouterBackend",
    "ollama": "workers.providers.ollama:OllamaBackend",
}

# Canonical parameters and content features (protocol.job PARAMS + "vision") each kind honours
# before a worker registers: its parameter schema (catalog.schemas) plus vision, except for
# llama.cpp, whose vision (a projector) and tools (enable_tools) a registered worker reports.
FEATURES: dict[str, frozenset[str]] = {
    kind: schema_features(SCHEMAS[kind], vision=kind != "llamacpp") for kind in KINDS
}


def _known(kind: str) -> str:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; known: {sorted(KINDS)}") from None


def static_features(kind: str) -> frozenset[str]:
    """What a backend of `kind` honours, without importing its module."""
    _known(kind)
    return FEATURES[kind]


def option_schema(kind: str) -> dict[str, Key]:
    """The `[providers.X.options]` keys a backend of `kind` reads, without importing it."""
    _known(kind)
    merged: dict[str, Key] = {}
    for table in options.CHAINS[kind]:
        merged.update(table)
    return merged


def backend_class(kind: str) -> type[Backend]:
    module, _, name = _known(kind).partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), name)
    return cls
