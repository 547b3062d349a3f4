"""Backend kinds by name, and what each kind honours, as data.

Imports are lazy so a worker loads only its own provider, and the broker (which needs only
`static_features`) loads none: importing a provider module pulls in httpx, anyio and the
llama-server supervisor. tests/test_registry.py checks each backend class agrees with FEATURES.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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

_SAMPLING = {"max_tokens", "temperature", "top_p", "stop"}
_OPENAI = {"seed", "presence_penalty", "frequency_penalty", "response_format"}
_TOOLS = {"tools", "tool_choice"}

# Canonical parameters and content features (protocol.job PARAMS + "vision") each kind honours
# before a worker registers; a registered worker's own list (it may add some, e.g. llama.cpp
# with tools enabled or a vision projector) replaces this.
FEATURES: dict[str, frozenset[str]] = {
    "mock": frozenset(_SAMPLING | _OPENAI | _TOOLS | {"top_k", "seed", "repeat_penalty", "vision"}),
    "llamacpp": frozenset(_SAMPLING | _OPENAI | {"top_k", "repeat_penalty"}),
    "openai": frozenset(_SAMPLING | _OPENAI | _TOOLS | {"vision"}),
    "anthropic": frozenset(_SAMPLING | _TOOLS | {"top_k", "response_format", "vision"}),
    "openrouter": frozenset(_SAMPLING | _OPENAI | _TOOLS | {"top_k", "repeat_penalty", "vision"}),
    "ollama": frozenset(
        _SAMPLING
        | {"top_k", "seed", "repeat_penalty", "presence_penalty", "frequency_penalty"}
        | {"response_format", "tools", "vision"}
    ),
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


def backend_class(kind: str) -> type[Backend]:
    module, _, name = _known(kind).partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), name)
    return cls
