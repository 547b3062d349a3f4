"""What a worker needs to know about the provider it serves (built from the config file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ProviderSpec:
    name: str  # the provider's name in the config, e.g. "openai" or "gpu-box-1"
    kind: str  # which backend implementation: mock, openai, anthropic, openrouter, ollama, llamacpp
    models: list[str] = field(default_factory=list)
    capacity: int = 8  # jobs one worker runs at once (and its HTTP connection pool size)
    # backend-specific settings; may hold an api_key, so never in a repr or a log line
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    spawn: bool = True  # the broker starts and supervises this worker locally
    replicas: int = 1  # local worker processes to spawn
    rpm: float | None = None  # requests per minute the broker lets through
    tpm: float | None = None  # tokens per minute the broker lets through
    # model -> capability/pricing fields overriding the shipped catalog ("*": every model);
    # see catalog/capabilities.py for the keys
    catalog: dict[str, dict[str, Any]] = field(default_factory=dict)
