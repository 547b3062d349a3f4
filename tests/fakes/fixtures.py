"""Pytest fixtures for the fake providers. Import them into a test module, or add
`pytest_plugins = ["tests.fakes.fixtures"]` to the root conftest.py to share them everywhere.

Each fixture yields a started `FakeServer` (see tests/fakes/server.py): `fake.url`,
`fake.script(Reply(...))`, `fake.default`, `fake.requests`, `fake.connections`.
The server is stopped when the test ends, pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.anthropic_fake import anthropic_server
from tests.fakes.drive import FAKE_KEY
from tests.fakes.ollama_fake import ollama_server
from tests.fakes.openai_fake import openai_server
from tests.fakes.openrouter_fake import openrouter_server
from tests.fakes.server import FakeServer


@pytest.fixture
def openai_fake() -> Iterator[FakeServer]:
    with openai_server(FAKE_KEY) as fake:
        yield fake


@pytest.fixture
def anthropic_fake() -> Iterator[FakeServer]:
    with anthropic_server(FAKE_KEY) as fake:
        yield fake


@pytest.fixture
def openrouter_fake() -> Iterator[FakeServer]:
    with openrouter_server(FAKE_KEY) as fake:
        yield fake


@pytest.fixture
def ollama_fake() -> Iterator[FakeServer]:
    with ollama_server() as fake:
        yield fake
