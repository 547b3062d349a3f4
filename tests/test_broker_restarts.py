"""A broker killed with SIGKILL and back within a second, again and again, loses no job.

ZeroMQ reconnects the client before its liveness window notices anything, so only the
broker's instance id (on Pong and Accepted) tells the client that a new broker run has
forgotten its jobs; it resubmits them at once. Workers started by hand survive each broker
and register again. The client runs with its default heartbeat settings.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from protocol.client import AsyncClient
from protocol.results import Done, Reset, Token
from tests.harness import BrokerProcess

pytestmark = pytest.mark.timeout(240)

JOBS = 200
TOKENS = 20
RESTARTS = 5


def expected(i: int) -> list[str]:
    return [f"j{i}.{k} " for k in range(TOKENS)]


async def stream_one(client: AsyncClient, i: int) -> dict[str, Any]:
    """Every event of one streamed job, checked as the caller would see them."""
    tokens: list[str] = []  # since the last reset
    dones = resets = 0
    result = None
    async for event in client.stream(
        model="mock:echo",
        prompt="x",
        job_id=f"restart-{i}",
        timeout=120,
        metadata={"mock": {"tokens": expected(i), "token_delay": 0.05}},
    ):
        if isinstance(event, Token):
            tokens.append(event.text)
            assert tokens == expected(i)[: len(tokens)], "duplicate or out-of-order token"
        elif isinstance(event, Reset):
            resets += 1
            tokens = []  # a replaced partial is always announced by a reset first
        elif isinstance(event, Done):
            dones += 1
            result = event.result
    assert result is not None and dones == 1
    return {"tokens": tokens, "result": result, "resets": resets}


def test_five_quick_broker_restarts_during_200_streamed_jobs(broker_factory: Any) -> None:
    broker: BrokerProcess = broker_factory(
        {"mock": {"kind": "mock", "capacity": 16, "spawn": False}},
        user_defaults=True,  # broker, workers and client as users get them
    )
    for _ in range(2):
        broker.start_worker("mock")
    broker.wait_workers(2, timeout=60)
    gaps: list[float] = []

    async def restarts(client: AsyncClient, done: list[dict[str, Any]]) -> None:
        for _ in range(RESTARTS):
            await asyncio.sleep(1.5)
            if len(done) == JOBS:
                break
            killed = time.monotonic()
            broker.kill()  # SIGKILL
            await asyncio.sleep(0.3)
            broker.start()
            gaps.append(time.monotonic() - killed)

    async def main() -> tuple[list[dict[str, Any]], AsyncClient]:
        async with AsyncClient(broker.client_endpoint) as client:  # default heartbeats
            done: list[dict[str, Any]] = []

            async def run(i: int) -> None:
                done.append(await stream_one(client, i))

            killer = asyncio.create_task(restarts(client, done))
            await asyncio.gather(*(run(i) for i in range(JOBS)))
            await killer
        return done, client

    outcomes, client = asyncio.run(main())
    assert len(gaps) == RESTARTS  # each broker started again 0.3 s after its SIGKILL
    assert len(outcomes) == JOBS
    texts = sorted("".join(o["tokens"]) for o in outcomes)
    assert texts == sorted("".join(expected(i)) for i in range(JOBS))  # each exactly once
    assert all(o["result"].text == "".join(o["tokens"]) for o in outcomes)
    # New runs were recognised as new (a run killed before this client heard from it is
    # never seen, so not every restart need be counted on a loaded host).
    assert client.broker_restarts >= 1
    assert sum(o["resets"] for o in outcomes) >= 1  # some partials were replaced, announced
    # The workers outlived every broker and registered with each new run by themselves:
    # their socket monitor saw the killed broker's connection drop.
    drops: dict[int, int] = {}
    for line in (broker.tmp / "worker-mock.log").read_text().splitlines():
        if '"broker_connection_lost"' in line:
            pid = json.loads(line)["worker_pid"]
            drops[pid] = drops.get(pid, 0) + 1
    assert sorted(drops) == sorted(w.pid for w in broker.workers), drops
    assert broker.wait_workers(2, timeout=30)
