"""The TOML configuration: broker settings, providers and routes.

Every key is checked before anything starts (protocol/schema.py): its type, its range, and
whether it exists at all (a typo gets a did-you-mean). A new setting is one new dataclass field
(broker, provider) or one new entry in a key table (ROUTE_KEYS, a backend's `option_keys`);
a new section is one entry in SECTIONS plus its parse step.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from catalog.capabilities import CatalogError
from catalog.registry import check_overrides
from gateway.settings import HTTP_KEYS, GatewaySettings, parse_http
from protocol.constants import CONFIG_ENV, DEFAULT_CLIENT_ENDPOINT, DEFAULT_WORKER_ENDPOINT
from protocol.schema import (
    ConfigError,
    Key,
    Str,
    StrList,
    Table,
    check_table,
    keys_of,
    limits,
    masked,
    suggest,
)
from protocol.transport import SocketOptions
from workers.registry import KINDS, option_schema
from workers.spec import ProviderSpec

__all__ = ["ConfigError", "load_config", "parse_config"]


@dataclass(slots=True)
class BrokerConfig:
    """[broker]: every field is a key; its annotation is the type and `limits` the range."""

    client_endpoint: str = DEFAULT_CLIENT_ENDPOINT
    worker_endpoint: str = DEFAULT_WORKER_ENDPOINT
    # address spawned workers connect to (default: the bound worker endpoint)
    worker_connect: str | None = None
    # jobs waiting in the broker, all clients together / per client
    max_queued: int = field(default=100_000, metadata=limits(min=1))
    max_queued_per_client: int = field(default=60_000, metadata=limits(min=1))
    heartbeat_interval: float = field(default=1.0, metadata=limits(above=0, max=3600))
    # intervals of silence before a peer is declared dead
    heartbeat_liveness: int = field(default=3, metadata=limits(min=1, max=1000))
    # deadline of a job that gives none
    default_timeout: float = field(default=3600.0, metadata=limits(above=0))
    # consecutive failures that open a circuit
    circuit_failures: int = field(default=5, metadata=limits(min=1))
    # attempts a job may lose with a dying worker, counted apart from its max_attempts
    max_worker_lost: int = field(default=10, metadata=limits(min=1, max=1000))
    # first open period; doubles on each failed probe
    circuit_cooldown: float = field(default=5.0, metadata=limits(min=0))
    circuit_max_cooldown: float = field(default=120.0, metadata=limits(min=0))
    retry_base_delay: float = field(default=0.25, metadata=limits(min=0))
    retry_max_delay: float = field(default=10.0, metadata=limits(min=0))
    restart_backoff: float = field(default=0.5, metadata=limits(min=0))
    restart_backoff_max: float = field(default=30.0, metadata=limits(min=0))
    # restarts within flap_window that stop the supervisor trying
    flap_restarts: int = field(default=5, metadata=limits(min=1))
    flap_window: float = field(default=60.0, metadata=limits(above=0))
    # finished jobs remembered for idempotent resubmission
    finished_cache: int = field(default=20_000, metadata=limits(min=0))
    # seconds between broker_stats log lines
    stats_interval: float = field(default=15.0, metadata=limits(above=0))
    # seconds a provider's live model facts (catalog discovery) stay fresh
    catalog_ttl: float = field(default=3600.0, metadata=limits(above=0))
    catalog_discovery: bool = True  # fetch live model facts from the providers at start
    # CURVE (optional): Z85 keys; secrets are better given through the environment
    curve_public_key: str | None = None
    curve_secret_key_env: str | None = None  # name of the env var holding the secret key
    curve_allowed_clients: list[str] | None = None  # client public keys; None admits any

    def socket_options(self) -> SocketOptions:
        secret = os.environ.get(self.curve_secret_key_env) if self.curve_secret_key_env else None
        if self.curve_public_key and not secret:
            raise ConfigError(
                "broker.curve_secret_key_env",
                f"curve_public_key is set but ${self.curve_secret_key_env or '(unset)'} is empty",
            )
        return SocketOptions(server_public_key=self.curve_public_key, server_secret_key=secret)


@dataclass(slots=True)
class Config:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    providers: dict[str, ProviderSpec] = field(default_factory=dict)
    routes: dict[str, list[str]] = field(default_factory=dict)
    path: str | None = None
    http: GatewaySettings | None = None  # the [http] table: the HTTP gateway, if wanted
    strategies: dict[str, str] = field(default_factory=dict)  # route -> strategy, when set


def default_config() -> Config:
    """What runs with no file: one local mock provider and a default route to it."""
    mock = ProviderSpec(name="mock", kind="mock", models=["echo"], capacity=16)
    return Config(providers={"mock": mock}, routes={"default": ["mock:echo"]})


BROKER_KEYS = keys_of(BrokerConfig)
PROVIDER_KEYS = keys_of(ProviderSpec, skip=("name",))
# dispatcher.routing.STRATEGIES (routing imports this module, so the names are repeated
# here; tests/test_catalog.py checks they agree)
ROUTE_STRATEGIES = ("first_available", "first_healthy", "best_effort")
ROUTE_KEYS: dict[str, Key] = {"candidates": StrList(), "strategy": Str(choices=ROUTE_STRATEGIES)}


def _broker(data: Any) -> BrokerConfig:
    values = check_table("broker", data, BROKER_KEYS)
    if values.get("curve_allowed_clients") is not None and not values.get("curve_public_key"):
        raise ConfigError("broker.curve_allowed_clients", "needs broker.curve_public_key too")
    return BrokerConfig(**values)


def _provider(name: str, data: Any) -> ProviderSpec:
    where = f"providers.{name}"
    values = check_table(where, data, PROVIDER_KEYS)
    kind = values.setdefault("kind", name)  # a provider named after its kind needs no `kind`
    if kind not in KINDS:
        known = f"known: {', '.join(sorted(KINDS))}"
        if "kind" not in data:
            raise ConfigError(f"{where}.kind", f"missing ({name!r} is not a kind; {known})")
        raise ConfigError(f"{where}.kind", f"{kind!r} unknown" + (suggest(kind, KINDS) or known))
    check_table(f"{where}.options", values.get("options", {}), option_schema(kind))
    try:
        values["catalog"] = check_overrides(name, values.get("catalog", {}))
    except CatalogError as exc:
        raise ConfigError("", str(exc)) from None  # the message names the key
    return ProviderSpec(name=name, **values)


def _strategy(where: str, data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    strategy = check_table(where, data, ROUTE_KEYS).get("strategy")
    return str(strategy) if strategy is not None else None


def _candidates(where: str, data: Any, providers: dict[str, ProviderSpec]) -> list[str]:
    if isinstance(data, dict):
        data = check_table(where, data, ROUTE_KEYS).get("candidates")
        where += ".candidates"
    problem = StrList().problem(data)
    if problem is not None or not data:
        raise ConfigError(where, problem or 'needs at least one "provider:model"')
    for candidate in data:
        provider, sep, model = candidate.partition(":")
        if not sep or not provider or not model:
            raise ConfigError(where, f'candidate {candidate!r} is not "provider:model"')
        if provider not in providers:
            raise ConfigError(
                where,
                f"candidate {candidate!r} names unknown provider {provider!r}"
                + suggest(provider, providers),
            )
    return list(data)


SECTIONS = ("broker", "providers", "routes", "http")


def parse_config(data: dict[str, Any], path: str | None = None) -> Config:
    """The checked configuration; the first bad key raises ConfigError naming it (and the file)."""
    try:
        check_table("", data, dict.fromkeys(SECTIONS, Table()))
        broker = _broker(data.get("broker", {}))
        providers = {name: _provider(name, raw) for name, raw in data.get("providers", {}).items()}
        if not providers:
            providers = default_config().providers
        routes = {
            name: _candidates(f"routes.{name}", raw, providers)
            for name, raw in data.get("routes", {}).items()
        }
        strategies = {
            name: strategy
            for name, raw in data.get("routes", {}).items()
            if (strategy := _strategy(f"routes.{name}", raw)) is not None
        }
        if not data.get("providers") and not routes:
            routes = default_config().routes
        http = parse_http(data["http"]) if "http" in data else None
    except ConfigError as exc:
        raise exc.in_file(path) from None
    return Config(
        broker=broker,
        providers=providers,
        routes=routes,
        path=path,
        strategies=strategies,
        http=http,
    )


def resolved(config: Config) -> dict[str, Any]:
    """The configuration as it will run (defaults filled in, secrets masked), for printing."""
    return {
        "broker": masked(asdict(config.broker), BROKER_KEYS),
        "providers": {
            name: masked(
                {
                    **{k: v for k, v in asdict(spec).items() if k not in ("name", "options")},
                    "options": masked(spec.options, option_schema(spec.kind)),
                }
            )
            for name, spec in config.providers.items()
        },
        "routes": {
            name: {
                "candidates": list(c),
                "strategy": config.strategies.get(name, ROUTE_STRATEGIES[1]),
            }
            for name, c in config.routes.items()
        },
        **({"http": masked(asdict(config.http), HTTP_KEYS)} if config.http else {}),
    }


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read `path`, else $LLMRELAY_CONFIG, else run with defaults."""
    chosen = path or os.environ.get(CONFIG_ENV)
    if not chosen:
        return default_config()
    file = Path(chosen)
    try:
        data = tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError("", f"cannot read: {exc.strerror or exc}", str(file)) from None
    except UnicodeDecodeError:
        raise ConfigError("", "is not UTF-8 text", str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", str(file)) from None
    return parse_config(data, str(file))
