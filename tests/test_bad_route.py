"""A route candidate that is not `provider:model` gets the client a clear error at once.

A config file with one is refused at load (tests/test_config.py); a Config built in code is
not checked that way, so the broker must answer such a job itself and keep serving.
"""

from __future__ import annotations

import threading

import pytest

from dispatcher.broker import Broker
from dispatcher.config import BrokerConfig, Config
from protocol.client import Client
from protocol.errors import ErrorCategory, ProviderError
from tests.harness import free_port
from workers.spec import ProviderSpec

pytestmark = pytest.mark.timeout(90)


def test_bad_route_candidate_answers_at_once_and_the_broker_keeps_serving() -> None:
    config = Config(
        broker=BrokerConfig(
            client_endpoint=f"tcp://127.0.0.1:{free_port()}",
            worker_endpoint=f"tcp://127.0.0.1:{free_port()}",
            heartbeat_interval=0.5,
        ),
        providers={"mock": ProviderSpec(name="mock", kind="mock", models=["echo"], capacity=2)},
        routes={"bad": ["mock"], "typo": ["mokc:echo"], "default": ["mock:echo"]},
    )
    broker = Broker(config)
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    try:
        with Client(config.broker.client_endpoint, heartbeat_interval=0.5) as client:
            for route, words in (("bad", "'mock'"), ("typo", "'mokc:echo'")):
                # invalid_request, not the deadline error 60 s later: answered at once.
                with pytest.raises(ProviderError) as caught:
                    client.complete(route=route, prompt="x", timeout=60)
                assert caught.value.category is ErrorCategory.INVALID_REQUEST
                assert f"route {route!r} has a bad candidate {words}" in caught.value.message
            assert client.complete(route="default", prompt="still serving").text == (
                "still serving "
            )
    finally:
        broker.stop_event.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
