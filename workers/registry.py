"""Backend kinds by name. Imports are lazy so a worker loads only its own provider."""

from __future__ import annotations

import importlib

from workers.backend import Backend

KINDS: dict[str, str] = {
    "mock": "workers.providers.mock:MockBackend",
    "llamacpp": "workers.providers.llamacpp:LlamaCppBackend",
    "openai": "workers.providers.openai:OpenAIBackend",
    "anthropic": "workers.providers.anthropic:AnthropicBackend",
    "openrouter": "workers.providers.openrouter:OpenRouterBackend",
    "ollama": "workers.providers.ollama:OllamaBackend",
}


def backend_class(kind: str) -> type[Backend]:
    try:
        target = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; known: {sorted(KINDS)}") from None
    module, _, name = target.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), name)
    return cls
