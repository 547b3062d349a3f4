"""Chaos soak: a stream of jobs while workers are killed at random; nothing is lost or doubled.

`make test` runs the short variant; `make soak` runs the long one (SOAK_JOBS to change it).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from typing import Any

import psutil
import pytest

from protocol.client import AsyncClient
from protocol.errors import ProviderError


def chaos_run(broker_factory: Any, jobs: int, kills: int) -> None:
    broker = broker_factory(
        {"mock": {"kind": "mock", "capacity": 8, "replicas": 3}}, flap_restarts=kills + 10
    )
    broker.log_level = "info"
    broker.wait_workers(3)
    rng = random.Random(7)

    def spec(i: int) -> dict[str, Any]:
        tokens = [f"s{i}.{k} " for k in range(rng.randint(1, 40))]
        return {
            "model": "mock:echo",
            "prompt": "x",
            "job_id": f"soak-{i}",
            "max_attempts": 10,
            "metadata": {"mock": {"tokens": tokens, "token_delay": 0.002}},
        }

    specs = [spec(i) for i in range(jobs)]
    expected = {s["job_id"]: "".join(s["metadata"]["mock"]["tokens"]) for s in specs}

    async def main() -> dict[str, str]:
        seen: dict[str, str] = {}
        async with AsyncClient(broker.client_endpoint, heartbeat_interval=0.5) as client:

            async def chaos() -> None:
                for _ in range(kills):
                    await asyncio.sleep(rng.uniform(0.3, 1.0))
                    victims = broker.worker_pids()
                    if victims:
                        os.kill(rng.choice(victims), signal.SIGKILL)

            killer = asyncio.create_task(chaos())
            async for outcome in client.map(specs, concurrency=64):
                assert not isinstance(outcome, ProviderError), outcome
                assert outcome.job_id not in seen
                seen[outcome.job_id] = outcome.text
            await killer
        return seen

    seen = asyncio.run(main())
    assert seen == expected
    status = broker.wait_workers(3, timeout=60)
    assert status["totals"]["done"] == jobs
    assert len(broker.events("worker_exited")) >= 1
    # Memory stays bounded: the broker's RSS after the run is modest.
    assert broker.proc is not None
    assert psutil.Process(broker.proc.pid).memory_info().rss < 500 << 20


@pytest.mark.timeout(180)
def test_chaos_short(broker_factory: Any) -> None:
    chaos_run(broker_factory, jobs=1500, kills=3)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_chaos_soak(broker_factory: Any) -> None:
    chaos_run(broker_factory, jobs=int(os.environ.get("SOAK_JOBS", "50000")), kills=60)
