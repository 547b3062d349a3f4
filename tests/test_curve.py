"""CURVE on the broker's TCP endpoints: only holders of allowed keys get answers."""

from __future__ import annotations

import os
from typing import Any

import pytest
import zmq

from dispatcher.auth import start_authenticator
from protocol.client import Client
from protocol.constants import CLIENT_PUBLIC_ENV, CLIENT_SECRET_ENV, SERVER_KEY_ENV
from protocol.errors import ProviderError
from protocol.transport import SocketOptions

pytestmark = pytest.mark.timeout(60)


def keypair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def test_curve_admits_allowed_clients_only(broker_factory: Any, monkeypatch: Any) -> None:
    server_public, server_secret = keypair()
    client_public, client_secret = keypair()
    monkeypatch.setenv("TEST_BROKER_SECRET", server_secret)
    broker = broker_factory(
        {"mock": {"kind": "mock", "capacity": 2}},
        curve_public_key=server_public,
        curve_secret_key_env="TEST_BROKER_SECRET",
        curve_allowed_clients=[client_public],
    )
    good = SocketOptions(
        server_public_key=server_public,
        client_public_key=client_public,
        client_secret_key=client_secret,
    )
    with Client(broker.client_endpoint, socket_options=good) as client:
        for _ in range(100):  # the spawned worker (with the broker's own key) registers
            if client.status(timeout=10)["workers"]:
                break
        assert client.complete(model="mock:echo", prompt="secret handshake").text == (
            "secret handshake "
        )
    stranger_public, stranger_secret = keypair()
    strangers = [
        SocketOptions(
            server_public_key=server_public,
            client_public_key=stranger_public,
            client_secret_key=stranger_secret,
        ),
        SocketOptions(),  # plain text
    ]
    for options in strangers:
        with (
            Client(broker.client_endpoint, socket_options=options) as client,
            pytest.raises(ProviderError, match="broker_unreachable: no broker answered"),
        ):
            client.status(timeout=1.5)
    assert server_secret not in broker.log_path.read_text()


def test_worker_keys_travel_to_the_supervisor_not_through_os_environ(monkeypatch: Any) -> None:
    for name in (CLIENT_PUBLIC_ENV, CLIENT_SECRET_ENV, SERVER_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    server_public, server_secret = keypair()
    opts = SocketOptions(server_public_key=server_public, server_secret_key=server_secret)
    ctx: zmq.Context[Any] = zmq.Context()
    auth, worker_env = start_authenticator(ctx, opts, allowed=[keypair()[0]])
    try:
        assert auth is not None
        assert worker_env[SERVER_KEY_ENV] == server_public
        assert len(worker_env[CLIENT_PUBLIC_ENV]) == 40 and len(worker_env[CLIENT_SECRET_ENV]) == 40
        assert server_secret not in worker_env.values()
        assert not {CLIENT_PUBLIC_ENV, CLIENT_SECRET_ENV, SERVER_KEY_ENV} & set(os.environ)
    finally:
        assert auth is not None
        auth.stop()
        ctx.term()
