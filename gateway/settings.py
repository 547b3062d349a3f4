"""The gateway's settings: the `[http]` table of the config file, checked field by field.

Kept free of web imports so `dispatcher/config.py` can validate the table without pulling in
the HTTP stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any


class SettingsError(ValueError):
    """A bad `[http]` value; the text names the key."""


@dataclass(slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # The broker's client endpoint; None: the config's [broker] client_endpoint.
    broker_endpoint: str | None = None
    # Name of the env var holding "client:key,client:key" pairs. None: no auth (local use).
    api_keys_env: str | None = None
    # Where uploaded files and batch state live (sqlite + blobs); survives a restart.
    store_dir: str = ".cache/llmrelay/gateway"
    max_request_bytes: int = 32 << 20  # a chat / messages body
    max_upload_bytes: int = 200 << 20  # a batch input file (OpenAI's per-file limit)
    # Undelivered text one stream may hold for a slow reader before its job is cancelled.
    stream_backlog_bytes: int = 4 << 20
    request_timeout: float = 600.0  # the job deadline of one HTTP request, seconds
    keepalive_interval: float = 15.0  # SSE comment while a stream waits for its first token
    status_cache: float = 1.0  # seconds a broker status reply serves /metrics and /readyz
    spawn: bool = True  # the broker starts and supervises the gateway when [http] is present

    def api_keys(self) -> dict[str, str]:
        """key -> client name, read from the environment (never from the file)."""
        if self.api_keys_env is None:
            return {}
        raw = os.environ.get(self.api_keys_env, "")
        keys: dict[str, str] = {}
        for index, item in enumerate(p.strip() for p in raw.replace("\n", ",").split(",")):
            if not item:
                continue
            name, sep, key = item.partition(":")
            if not sep or not name.strip() or not key.strip():
                raise SettingsError(
                    f"${self.api_keys_env} entry {index}: expected client:key "
                    "(the key is not shown)"
                )
            keys[key.strip()] = name.strip()
        if not keys:
            raise SettingsError(f"[http] api_keys_env: ${self.api_keys_env} holds no keys")
        return keys


_TYPES: dict[str, tuple[type, ...]] = {
    "host": (str,),
    "port": (int,),
    "broker_endpoint": (str,),
    "api_keys_env": (str,),
    "store_dir": (str,),
    "max_request_bytes": (int,),
    "max_upload_bytes": (int,),
    "stream_backlog_bytes": (int,),
    "request_timeout": (int, float),
    "keepalive_interval": (int, float),
    "status_cache": (int, float),
    "spawn": (bool,),
}
_BOUNDS: dict[str, tuple[float, float]] = {
    "port": (0, 65535),
    "max_request_bytes": (1024, 1 << 30),
    "max_upload_bytes": (1024, 1 << 34),
    "stream_backlog_bytes": (1024, 1 << 30),
    "request_timeout": (0.001, 86400),
    "keepalive_interval": (0.05, 3600),
    "status_cache": (0.0, 60),
}


def parse_http(table: Any) -> GatewaySettings:
    """The `[http]` table -> settings; an unknown key or a wrong type is an error naming it."""
    if not isinstance(table, dict):
        raise SettingsError("[http] must be a table")
    known = {f.name for f in fields(GatewaySettings)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in known:
            raise SettingsError(f"[http]: unknown key {key!r}; known: {sorted(known)}")
        types = _TYPES[key]
        if (isinstance(raw, bool) and bool not in types) or not isinstance(raw, types):
            names = " or ".join(t.__name__ for t in types)
            raise SettingsError(f"[http] {key}: expected {names}, got {type(raw).__name__}")
        value: Any = raw
        if key in _BOUNDS:
            lo, hi = _BOUNDS[key]
            if not lo <= float(value) <= hi:
                raise SettingsError(f"[http] {key}: {value} is outside {lo}..{hi}")
        values[key] = float(value) if float in types else value
    return GatewaySettings(**values)
