"""What a worker needs to know about the provider it serves (built from the config file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.schema import limits


@dataclass(slots=True)
class ProviderSpec:
    name: str  # the provider's name in the config, e.g. "openai" or "gpu-box-1"
    kind: str  # which backend implementation: mock, openai, anthropic, openrouter, ollama, llamacpp
    models: list[str] = field(default_factory=list)
    # jobs one worker runs at once (and its HTTP connection pool size)
    capacity: int = field(default=8, metadata=limits(min=1, max=4096))
    # backend-specific settings; may hold an api_key, so never in a repr or a log line
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    spawn: bool = True  # the broker starts and supervises this worker locally
    replicas: int = field(default=1, metadata=limits(min=1, max=256))  # local worker processes
    # requests / tokens per minute the broker lets through
    rpm: float | None = field(default=None, metadata=limits(above=0))
    tpm: float | None = field(default=None, metadata=limits(above=0))
    # model -> capability/pricing fields overriding the shipped catalog ("*": every model);
    # the keys are catalog/capabilities.py's
    catalog: dict[str, dict[str, Any]] = field(default_factory=dict)
