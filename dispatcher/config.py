"""The TOML configuration: broker settings, providers and routes. Unknown keys are errors."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from catalog.capabilities import CatalogError
from catalog.registry import check_overrides
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
    catalog_ttl: float = 3600.0  # seconds a provider's live model facts stay fresh
    catalog_discovery: bool = True  # fetch live model facts from the providers at start
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
    strategies: dict[str, str] = field(default_factory=dict)  # route -> strategy, if set


ROUTE_KEYS = ("candidates", "strategy")
# Kept here (not imported from dispatcher.routing, which imports this module).
ROUTE_STRATEGIES = ("first_available", "first_healthy", "best_effort")


def _route(name: str, raw: Any) -> tuple[list[str], str | None]:
    """A route is a list of "provider:model" or a table {candidates, strategy}."""
    strategy = None
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(ROUTE_KEYS))
        if unknown:
            raise ConfigError(
                f"[routes.{name}] unknown key(s) {unknown}; known: {list(ROUTE_KEYS)}"
            )
        strategy = raw.get("strategy")
        if strategy is not None and strategy not in ROUTE_STRATEGIES:
            raise ConfigError(
                f"[routes.{name}] strategy {strategy!r} unknown; known: {list(ROUTE_STRATEGIES)}"
            )
        raw = raw.get("candidates")
    if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
        raise ConfigError(f'[routes.{name}] needs candidates = ["provider:model", ...]')
    return list(raw), strategy


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
    unknown = set(data) - {"broker", "providers", "routes"}
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
        try:
            values["catalog"] = check_overrides(name, values.get("catalog", {}))
        except CatalogError as exc:
            raise ConfigError(str(exc)) from None
        providers[name] = ProviderSpec(name=name, **values)
    routes: dict[str, list[str]] = {}
    strategies: dict[str, str] = {}
    for name, raw in (data.get("routes") or {}).items():
        candidates, strategy = _route(name, raw)
        for candidate in candidates:
            provider, sep, model = candidate.partition(":")
            if not sep or not model:
                raise ConfigError(f"[routes.{name}] {candidate!r} is not 'provider:model'")
            if provider not in providers:
                raise ConfigError(f"[routes.{name}] names unknown provider {provider!r}")
        routes[name] = candidates
        if strategy is not None:
            strategies[name] = strategy
    if not providers:
        defaults = default_config()
        providers, routes = defaults.providers, routes or defaults.routes
    return Config(
        broker=broker, providers=providers, routes=routes, path=path, strategies=strategies
    )


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
