"""The `[providers.X.options]` keys each backend reads, as data (types from protocol.schema).

Kept apart from the backend classes so the broker can check a config's options without
importing any provider module (which pulls in aiohttp and the llama-server supervisor).
Each class sets `option_keys` from here; `workers.registry.option_schema(kind)` merges them
along the class chain, and tests/test_broker_shape.py checks both agree for every kind.
"""

from __future__ import annotations

from protocol.schema import Bool, Either, Float, Int, Key, List, Str, StrList, Table

# every backend (workers/backend.py)
BACKEND: dict[str, Key] = {
    "list_models": Bool(),  # ask the provider for its live model list at start
    "list_models_timeout": Float(above=0),
}
# every HTTP backend (workers/http.py)
HTTP: dict[str, Key] = {
    "base_url": Str(),
    "api_key": Str(secret=True),  # better given through api_key_env
    "api_key_env": Str(),
    "connect_timeout": Float(above=0),
    "read_timeout": Float(above=0),
    "write_timeout": Float(above=0),
    "total_timeout": Float(above=0),
    "drain_grace": Float(min=0),
    "keepalive_expiry": Float(min=0),  # idle pooled connections close (workers/http_pool.py)
    "trust_env": Bool(),
}
# OpenAI and its derivatives
OPENAI: dict[str, Key] = {
    "organization": Str(),
    "project": Str(),
    "include_usage": Bool(),
    "max_tokens_field": Str(choices=("max_completion_tokens", "max_tokens")),
    "extra_body": Table(),
}
# OpenRouter
OPENROUTER: dict[str, Key] = {
    "provider": Table(),  # OpenRouter's provider routing preferences
    "referer": Str(),
    "title": Str(),
}
# Anthropic
ANTHROPIC: dict[str, Key] = {
    "anthropic_version": Str(),
    "anthropic_beta": Str(),
    "max_tokens": Int(min=1),  # Anthropic requires one; used when a job gives none
}
# the mock backend
MOCK: dict[str, Key] = {
    "tokens": StrList(),
    "token_count": Int(min=0),
    "first_token_delay": Float(min=0),
    "token_delay": Float(min=0),
    "fail": List(),
    "call_log": Str(),  # a file that gets one JSON line per call (tests count runs per id)
}
# Ollama
OLLAMA: dict[str, Key] = {
    "keep_alive": Either(Str(), Float()),  # "5m", or seconds (negative: keep loaded)
    "num_ctx": Int(min=1),
}
# the llama-server supervisor (ServerConfig.from_options)
LLAMA_SERVER: dict[str, Key] = {
    "model_path": Str(),
    "model": Str(),  # an alias of model_path
    "binary": Str(),
    "ctx_size": Int(min=1),
    "n_gpu_layers": Either(Int(min=-1), Str()),  # a count, or "auto" / "all"
    "extra_args": StrList(),
    "load_timeout": Float(min=0),
    "health_interval": Float(min=0),
    "health_timeout": Float(min=0),
    "health_failures": Int(min=1),
    "restart_backoff": Float(min=0),
    "restart_backoff_max": Float(min=0),
    "max_restarts": Int(min=0),
    "restart_window": Float(min=0),
    "stop_timeout": Float(min=0),
}
# the llama.cpp backend
LLAMACPP: dict[str, Key] = {
    **LLAMA_SERVER,
    "ready_wait": Float(min=0),
    "enable_tools": Bool(),
}

# Each kind's chain, base first (the order its class's MRO merges them in).
CHAINS: dict[str, tuple[dict[str, Key], ...]] = {
    "mock": (BACKEND, MOCK),
    "openai": (BACKEND, HTTP, OPENAI),
    "openrouter": (BACKEND, HTTP, OPENAI, OPENROUTER),
    "llamacpp": (BACKEND, HTTP, OPENAI, LLAMACPP),
    "anthropic": (BACKEND, HTTP, ANTHROPIC),
    "ollama": (BACKEND, HTTP, OLLAMA),
}
