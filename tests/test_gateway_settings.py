"""The `[http]` table and the API-key variable: every bad value is a one-line error naming it."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from dispatcher.config import ConfigError, parse_config
from gateway.settings import GatewaySettings, parse_http
from protocol.errors import ErrorCategory
from protocol.http_errors import ROWS, field_of


def test_defaults_and_values() -> None:
    assert parse_http({}) == GatewaySettings()
    settings = parse_http({"port": 9000, "request_timeout": 30, "api_keys_env": "KEYS"})
    assert (settings.port, settings.request_timeout, settings.api_keys_env) == (9000, 30.0, "KEYS")
    assert isinstance(settings.request_timeout, float)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"prot": 1}, "http.prot: unknown key; did you mean 'port'"),
        ({"port": "80"}, "http.port"),
        ({"port": True}, "http.port"),
        ({"port": 70000}, "http.port"),
        ({"spawn": 1}, "http.spawn"),
        ({"stream_backlog_bytes": 10}, "http.stream_backlog_bytes"),
        ({"request_timeout": 0}, "http.request_timeout"),
        ({"idle_connection_timeout": 0}, "http.idle_connection_timeout"),
        ({"idle_connection_timeout": 1.5}, "http.idle_connection_timeout"),
    ],
)
def test_bad_values_name_the_key(table: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_http(table)


def test_config_file_carries_the_http_table() -> None:
    config = parse_config({"http": {"port": 8181}})
    assert config.http is not None and config.http.port == 8181
    assert parse_config({}).http is None
    with pytest.raises(ConfigError, match=r"http\.port"):
        parse_config({"http": {"port": "x"}})


def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = GatewaySettings(api_keys_env="GW_KEYS")
    monkeypatch.setenv("GW_KEYS", "alice:sk-a, bob:sk-b\ncarol:sk-c")
    assert settings.api_keys() == {"sk-a": "alice", "sk-b": "bob", "sk-c": "carol"}
    assert GatewaySettings().api_keys() == {}  # no variable named: no auth
    monkeypatch.setenv("GW_KEYS", "")
    with pytest.raises(ConfigError, match="holds no keys"):
        settings.api_keys()
    monkeypatch.setenv("GW_KEYS", "alice:sk-a,sk-secret-without-name")
    with pytest.raises(ConfigError, match="entry 1") as info:
        settings.api_keys()
    assert "sk-secret" not in str(info.value)  # a key never appears in an error either


def test_validation_messages_map_to_request_fields() -> None:
    assert field_of("params.temperature: must be <= 2.0") == "temperature"
    assert field_of("messages[0].content: missing") == "messages[0].content"
    assert field_of("no field here") is None


def test_every_category_has_an_http_row() -> None:
    assert set(ROWS) == set(ErrorCategory)


def test_idle_connection_timeout_closes_idle_keep_alive_connections(
    broker_factory: Any, gateway_factory: Any
) -> None:
    from tests.gateway_support import mock_provider

    broker = broker_factory({"mock": mock_provider()})
    gateway = gateway_factory(broker, idle_connection_timeout=1)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as conn:
        request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
        for _ in range(2):  # kept alive between requests
            conn.sendall(request)
            head = conn.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head[:80]
        # Closed by the gateway once idle (our own 10 s socket timeout would raise instead).
        assert conn.recv(65536) == b""
