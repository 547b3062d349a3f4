"""Streams under stress: a client that goes away, 64 at once, and a reader that lags behind."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.gateway_support import GatewayProcess, mock_provider
from tests.harness import BrokerProcess

pytestmark = pytest.mark.timeout(180)


@dataclass
class Stack:
    broker: BrokerProcess
    gateway: GatewayProcess

    def mock_stats(self, provider: str = "mock") -> dict[str, Any]:
        """The mock worker's counters from its last heartbeat (waits for the first one)."""
        with self.broker.client() as client:
            for _ in range(100):
                status = client.status()
                (worker,) = [w for w in status["workers"] if w["provider"] == provider]
                if "jobs_cancelled" in worker["stats"]:
                    return dict(worker["stats"])
                time.sleep(0.1)
        raise AssertionError(f"no stats from the mock worker: {worker}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gwstream")
    broker = BrokerProcess(tmp, {"mock": mock_provider(capacity=64)}, {"default": ["mock:echo"]})
    gateway = GatewayProcess(broker, stream_backlog_bytes=256 << 10)
    try:
        broker.start()
        broker.wait_workers(1, timeout=60)
        gateway.start()
        yield Stack(broker, gateway)
    finally:
        gateway.stop()
        broker.stop()


def slow(count: int, delay: float) -> dict[str, Any]:
    return {"metadata": {"mock": {"token_count": count, "token_delay": delay}}}


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_disconnect_mid_stream_cancels_the_job(stack: Stack) -> None:
    before = stack.mock_stats()
    body = {
        "model": "mock:echo",
        "stream": True,
        "messages": [{"role": "user", "content": "go"}],
        **slow(2000, 0.01),
    }
    with httpx.stream("POST", stack.gateway.base_url + "/chat/completions", json=body) as reply:
        lines = reply.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any("t1 " in line or "t0 " in line for line in got), got
        time.sleep(1.0)
        with stack.broker.client() as client:
            assert client.status()["running"] == 1  # still producing while we listen
    # The connection is closed: the worker's job is cancelled and the mock stops producing.
    stats = wait_for(
        lambda: (s := stack.mock_stats())["jobs_cancelled"] > before["jobs_cancelled"] and s
    )
    assert stats, stack.mock_stats()
    produced = stats["tokens_produced"] - before["tokens_produced"]
    assert produced < 2000
    time.sleep(1.5)  # two heartbeats later nothing more was produced
    assert stack.mock_stats()["tokens_produced"] == stats["tokens_produced"]


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_gone_before_the_answer_starts_cancels_the_job(stack: Stack, stream: bool) -> None:
    """Gone while the gateway waits for the first text (a stream) or the whole answer: the
    job is cancelled then, not when it would have ended."""
    before = stack.mock_stats()
    body = {
        "model": "mock:echo",
        "stream": stream,
        "messages": [{"role": "user", "content": "go"}],
        "metadata": {"mock": {"first_token_delay": 30.0}},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(stack.gateway.base_url + "/chat/completions", json=body, timeout=1.0)
    stats = wait_for(
        lambda: (s := stack.mock_stats())["jobs_cancelled"] > before["jobs_cancelled"] and s
    )
    assert stats, stack.mock_stats()
    assert stats["tokens_produced"] == before["tokens_produced"]
    with stack.broker.client() as client:
        assert wait_for(lambda: client.status()["running"] == 0)


def test_64_concurrent_streams_complete(stack: Stack) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        stream = await client.chat.completions.create(
            model="mock:echo",
            messages=[{"role": "user", "content": f"stream {i} of many"}],
            stream=True,
            extra_body={"metadata": {"mock": {"token_delay": 0.01}}},
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with openai.AsyncOpenAI(
            base_url=stack.gateway.base_url,
            api_key="unused",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits),
        ) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    texts = asyncio.run(main())
    assert texts == [f"stream {i} of many " for i in range(64)]


def test_slow_reader_keeps_gateway_memory_bounded(stack: Stack) -> None:
    """A reader that stops reading: the gateway holds at most its backlog cap, then cancels.

    20 MB of text is generated for a client whose receive window is tiny and who reads only
    the first bytes; the job must be cancelled long before the end, with gateway memory flat.
    """
    before = stack.mock_stats()
    rss_before = stack.gateway.rss()
    script = {"tokens": ["x" * 9999 + " "] * 2000, "token_delay": 0.001}  # 20 MB in total
    body = httpx.Request(
        "POST",
        "http://unused/",
        json={
            "model": "mock:echo",
            "stream": True,
            "messages": [{"role": "user", "content": "go"}],
            "metadata": {"mock": script},
        },
    ).content
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    with sock:
        sock.connect(("127.0.0.1", stack.gateway.port))
        sock.sendall(head.encode() + body)
        first = sock.recv(4096)  # the headers and the first chunk, then nothing is read
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        stats = wait_for(
            lambda: (s := stack.mock_stats())["jobs_cancelled"] > before["jobs_cancelled"] and s,
            timeout=60,
        )
        assert stats, "the job was not cancelled although nobody read"
        produced = stats["tokens_produced"] - before["tokens_produced"]
        assert produced < 2000  # it stopped well before the end
        grown = stack.gateway.rss() - rss_before
        assert grown < 64 << 20, f"gateway grew by {grown} bytes"
        sock.settimeout(10)
        rest = bytearray()
        try:
            while chunk := sock.recv(1 << 16):
                rest += chunk
        except TimeoutError:
            pass
    assert b"read too slowly" in rest and b"[DONE]" not in rest
