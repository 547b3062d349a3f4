from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import BrokerProcess

# Fake provider servers (openai_fake, ...), the real llama-server fixtures and the HTTP
# gateway process (gateway_factory), for all tests.
pytest_plugins = ["tests.fakes.fixtures", "tests.llamacpp_fixtures", "tests.gateway_support"]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Start brokers with given providers; all of them (and their workers) die at teardown."""
    started: list[BrokerProcess] = []

    def make(
        providers: dict[str, dict[str, Any]],
        routes: dict[str, list[str]] | None = None,
        start: bool = True,
        **broker: Any,
    ) -> BrokerProcess:
        folder = tmp_path / f"broker{len(started)}"
        folder.mkdir()
        process = BrokerProcess(folder, providers, routes, **broker)
        started.append(process)
        if start:
            process.start()
        return process

    yield make
    for process in started:
        process.stop()


@pytest.fixture
def batch_broker(broker_factory: Callable[..., BrokerProcess], tmp_path: Path) -> BrokerProcess:
    """Mock workers that log each call (tmp_path/calls.log), a failing provider, a default
    route: what the batch tests run against (tests/batch_support.py)."""
    from tests.batch_support import mock_broker

    return mock_broker(broker_factory, tmp_path)
