"""The TOML configuration: broker settings, providers and routes. Unknown keys are errors."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gateway.settings import GatewaySettings, SettingsError, parse_http
from protocol.transport import SocketOptions
from workers.registry import KINDS
from workers.spec import ProviderSpec

DEFAULT_CLIENT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_WORKER_ENDPOINT = "tcp://127.0.0.1:5556"


class ConfigError(ValueError):
    pass


@dataclass(slots=True)
class BrokerConfig:
    client_endpoint: str = DEFAULT_CLIENT_ENDPOINT
    worker_endpoint: str = DEFAULT_WORKER_ENDPOINT
    # address spawned workers connect to (default: the bound worker endpoint)
    worker_connect: str | None = None
    max_queued: int = 100_000  # jobs waiting in the broker, all clients together
    max_queued_per_client: int = 60_000
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3  # intervals of silence before a peer is declared dead
    default_timeout: float = 3600.0  # deadline of a job that gives none
    circuit_failures: int = 5  # consecutive failures that open a circuit
    circuit_cooldown: float = 5.0  # first open period; doubles on each failed probe
    circuit_max_cooldown: float = 120.0
    retry_base_delay: float = 0.25
    retry_max_delay: float = 10.0
    restart_backoff: float = 0.5
    restart_backoff_max: float = 30.0
    flap_restarts: int = 5  # restarts within flap_window that stop the supervisor trying
    flap_window: float = 60.0
    finished_cache: int = 20_000  # finished jobs remembered for idempotent resubmission
    stats_interval: float = 15.0  # seconds between broker_stats log lines
    # CURVE (optional): Z85 keys; secrets are better given through the environment
    curve_public_key: str | None = None
    curve_secret_key_env: str | None = None  # name of the env var holding the secret key
    curve_allowed_clients: list[str] | None = None  # client public keys; None admits any

    def socket_options(self) -> SocketOptions:
        secret = os.environ.get(self.curve_secret_key_env) if self.curve_secret_key_env else None
        if self.curve_public_key and not secret:
            raise ConfigError("curve_public_key is set but the secret key env var is empty")
        return SocketOptions(server_public_key=self.curve_public_key, server_secret_key=secret)


@dataclass(slots=True)
class Config:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    providers: dict[str, ProviderSpec] = field(default_factory=dict)
    routes: dict[str, list[str]] = field(default_factory=dict)
    path: str | None = None
    http: GatewaySettings | None = None  # the [http] table: the HTTP gateway, if wanted


def default_config() -> Config:
    """What runs with no file: one local mock provider and a default route to it."""
    mock = ProviderSpec(name="mock", kind="mock", models=["echo"], capacity=16)
    return Config(providers={"mock": mock}, routes={"default": ["mock:echo"]})


def _typed(cls: Any, data: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {sorted(known)}")
        out[key] = value
    return out


def parse_config(data: dict[str, Any], path: str | None = None) -> Config:
    unknown = set(data) - {"broker", "providers", "routes", "http"}
    if unknown:
        raise ConfigError(f"unknown top-level section(s) {sorted(unknown)}")
    broker = BrokerConfig(**_typed(BrokerConfig, data.get("broker", {}), "[broker]"))
    providers: dict[str, ProviderSpec] = {}
    for name, raw in (data.get("providers") or {}).items():
        if not isinstance(raw, dict):
            raise ConfigError(f"[providers.{name}] must be a table")
        values = _typed(ProviderSpec, raw, f"[providers.{name}]")
        values.pop("name", None)
        kind = values.setdefault("kind", name)
        if kind not in KINDS:
            raise ConfigError(f"[providers.{name}] kind {kind!r} unknown; known: {sorted(KINDS)}")
        if int(values.get("capacity", 1)) < 1:
            raise ConfigError(f"[providers.{name}] capacity must be >= 1")
        providers[name] = ProviderSpec(name=name, **values)
    routes: dict[str, list[str]] = {}
    for name, raw in (data.get("routes") or {}).items():
        candidates = raw.get("candidates") if isinstance(raw, dict) else raw
        if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
            raise ConfigError(f'[routes.{name}] needs candidates = ["provider:model", ...]')
        for candidate in candidates:
            provider = candidate.partition(":")[0]
            if provider not in providers:
                raise ConfigError(f"[routes.{name}] names unknown provider {provider!r}")
        routes[name] = list(candidates)
    if not providers:
        defaults = default_config()
        providers, routes = defaults.providers, routes or defaults.routes
    return Config(
        broker=broker, providers=providers, routes=routes, path=path, http=_http(data)
    )


def _http(data: dict[str, Any]) -> GatewaySettings | None:
    if "http" not in data:
        return None
    try:
        return parse_http(data["http"])
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read `path`, else $LLMRELAY_CONFIG, else run with defaults."""
    chosen = path or os.environ.get("LLMRELAY_CONFIG")
    if not chosen:
        return default_config()
    file = Path(chosen)
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file}: {exc}") from None
    return parse_config(data, str(file))
