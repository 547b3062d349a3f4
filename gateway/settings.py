"""The gateway's settings: the `[http]` table of the config file, checked key by key.

The table's rules come from the dataclass below through protocol/schema.py, like [broker]'s.
Kept free of web imports so `dispatcher/config.py` can check the table without loading the
HTTP stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from protocol.schema import ConfigError, check_table, keys_of, limits


@dataclass(slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=limits(min=0, max=65535))
    # The broker's client endpoint; None: the config's [broker] client_endpoint.
    broker_endpoint: str | None = None
    # Name of the env var holding "client:key,client:key" pairs. None: no auth (local use).
    api_keys_env: str | None = None
    # Where uploaded files and batch state live (sqlite + blobs); survives a restart.
    store_dir: str = ".cache/llmrelay/gateway"
    # a chat / messages body
    max_request_bytes: int = field(default=32 << 20, metadata=limits(min=1024))
    # a batch input file (OpenAI's per-file limit)
    max_upload_bytes: int = field(default=200 << 20, metadata=limits(min=1024))
    # Undelivered text one stream may hold for a slow reader before its job is cancelled.
    stream_backlog_bytes: int = field(default=4 << 20, metadata=limits(min=1024))
    # the job deadline of one HTTP request, seconds
    request_timeout: float = field(default=600.0, metadata=limits(above=0, max=86400))
    # an SSE comment (or Anthropic ping) while a stream waits for its next token
    keepalive_interval: float = field(default=15.0, metadata=limits(min=0.05, max=3600))
    # Seconds an idle keep-alive connection stays open (uvicorn's default is 5). Client pools
    # (httpx, the OpenAI and Anthropic SDKs) expire idle connections after 5 s themselves; a
    # server closing at the same moment races a client reusing one ("Server disconnected
    # without sending a response"). 75, as nginx keeps them, outlives every SDK's expiry; behind
    # a load balancer, set it above the balancer's own idle timeout.
    idle_connection_timeout: int = field(default=75, metadata=limits(min=1, max=86400))
    # seconds a broker status reply serves /metrics and /readyz
    status_cache: float = field(default=1.0, metadata=limits(min=0, max=60))
    spawn: bool = True  # the broker starts and supervises the gateway when [http] is present

    def api_keys(self) -> dict[str, str]:
        """key -> client name, read from the environment (never from the file)."""
        if self.api_keys_env is None:
            return {}
        where = "http.api_keys_env"
        raw = os.environ.get(self.api_keys_env, "")
        keys: dict[str, str] = {}
        for index, item in enumerate(p.strip() for p in raw.replace("\n", ",").split(",")):
            if not item:
                continue
            name, sep, key = item.partition(":")
            if not sep or not name.strip() or not key.strip():
                raise ConfigError(
                    where,
                    f"${self.api_keys_env} entry {index}: expected client:key "
                    "(the key is not shown)",
                )
            keys[key.strip()] = name.strip()
        if not keys:
            raise ConfigError(where, f"${self.api_keys_env} holds no keys")
        return keys


HTTP_KEYS = keys_of(GatewaySettings)
_FLOATS = frozenset(f.name for f in fields(GatewaySettings) if f.type in ("float", float))


def parse_http(table: Any) -> GatewaySettings:
    """The `[http]` table -> settings; the first bad key raises ConfigError naming it."""
    values: dict[str, Any] = check_table("http", table, HTTP_KEYS)
    for name in _FLOATS & set(values):
        values[name] = float(values[name])  # TOML `30` for a float setting
    return GatewaySettings(**values)
