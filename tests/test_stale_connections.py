"""Stale keep-alive connections: a server that closes a pooled connection as a request arrives
(llama-server closes idle ones after 5 s, the race behind "Server disconnected") costs no job.

The fake makes the race certain: it reads the request head and closes the connection without
answering, as a server does when its idle timer fires while the request is on its way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocol.errors import ErrorCategory, ProviderError
from tests.fakes.drive import FAKE_KEY, collect, make_backend, make_job, started
from tests.fakes.server import FakeServer

KINDS = ["openai", "anthropic", "openrouter", "ollama"]


def backend(kind: str, fake: FakeServer, capacity: int = 1, **options: Any) -> Any:
    return make_backend(kind, fake.url, capacity=capacity, api_key=FAKE_KEY, **options)


@pytest.mark.parametrize("kind", KINDS)
def test_reused_connection_closed_by_the_server_is_sent_again(kind: str, request: Any) -> None:
    fake: FakeServer = request.getfixturevalue(f"{kind}_fake")

    async def run() -> list[str]:
        async with started(backend(kind, fake)) as b:
            texts = [(await collect(b, make_job()))[1]]
            fake.close_reused = 1  # the pooled connection dies as the next request arrives
            texts.append((await collect(b, make_job()))[1])
            return texts

    assert asyncio.run(run()) == ["Hello, world!", "Hello, world!"]
    assert fake.closed_unanswered == 1
    assert fake.connections == 2  # the second job went out again on a new connection
    assert len(fake.requests) == 2  # each job answered once: nothing ran twice


def test_every_stale_connection_is_skipped_before_a_fresh_one(openai_fake: FakeServer) -> None:
    async def run() -> str:
        async with started(backend("openai", openai_fake, capacity=3)) as b:
            await asyncio.gather(*(collect(b, make_job()) for _ in range(3)))  # 3 pooled
            assert openai_fake.connections == 3
            openai_fake.close_reused = 3  # the server closed all of them at once
            return (await collect(b, make_job()))[1]

    assert asyncio.run(run()) == "Hello, world!"
    assert openai_fake.closed_unanswered == 3
    assert openai_fake.connections == 4


def test_a_fresh_connection_closing_unanswered_is_a_network_error(
    openai_fake: FakeServer,
) -> None:
    openai_fake.close_fresh = 1

    async def run() -> ProviderError:
        async with started(backend("openai", openai_fake)) as b:
            with pytest.raises(ProviderError) as caught:
                await collect(b, make_job())
            return caught.value

    err = asyncio.run(run())
    assert err.category is ErrorCategory.NETWORK
    assert openai_fake.connections == 1  # not sent again: a fresh connection is no race
    assert openai_fake.closed_unanswered == 1 and openai_fake.requests == []


@pytest.mark.parametrize(("expiry", "connections"), [(None, 1), (0.05, 2)])
def test_idle_connections_expire_after_keepalive_expiry(
    openai_fake: FakeServer, expiry: float | None, connections: int
) -> None:
    options = {} if expiry is None else {"keepalive_expiry": expiry}

    async def run() -> None:
        async with started(backend("openai", openai_fake, **options)) as b:
            await collect(b, make_job())
            await asyncio.sleep(0.3)  # idle: past 0.05 s, well within the 4 s default
            await collect(b, make_job())

    asyncio.run(run())
    assert openai_fake.connections == connections
    assert openai_fake.closed_unanswered == 0
