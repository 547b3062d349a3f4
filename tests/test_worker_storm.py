"""A worker killed with SIGKILL every 2 s while thousands of streamed jobs run on four.

Every job completes, each caller sees its tokens in order with no duplicate, a reset comes
before every replaced partial, and no job fails with worker_lost: the supervisor reports
each exit at once, the broker stops dispatching to the dead worker, and lost attempts do
not use up max_attempts. `make test` runs 600 jobs; `make soak` the full 2,000.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from typing import Any

import pytest

from protocol.client import AsyncClient
from tests.harness import BrokerProcess
from tests.test_broker_restarts import expected, stream_one

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize(
    "jobs",
    [pytest.param(600, id="600"), pytest.param(2000, id="2000", marks=pytest.mark.soak)],
)
def test_kill_9_storm_across_four_workers(broker_factory: Any, jobs: int) -> None:
    broker: BrokerProcess = broker_factory(
        {"mock": {"kind": "mock", "capacity": 8, "replicas": 4}},
        user_defaults=True,  # heartbeats, liveness and restart backoff as users get them
        flap_restarts=1000,  # the storm is deliberate: keep restarting
    )
    broker.wait_workers(4, timeout=90)
    rng = random.Random(7)
    kills: list[int] = []

    async def storm(done: list[dict[str, Any]]) -> None:
        while len(done) < jobs:
            await asyncio.sleep(2.0)
            pids = broker.worker_pids()
            if pids and len(done) < jobs:
                victim = rng.choice(pids)
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)
                except ProcessLookupError:
                    pass

    async def main() -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        async with AsyncClient(broker.client_endpoint) as client:
            slots = asyncio.Semaphore(64)

            async def run(i: int) -> None:
                async with slots:
                    done.append(await stream_one(client, i))

            killer = asyncio.create_task(storm(done))
            await asyncio.gather(*(run(i) for i in range(jobs)))
            await killer
        return done

    outcomes = asyncio.run(main())
    assert len(outcomes) == jobs  # a worker_lost failure would have raised in stream_one
    texts = sorted("".join(o["tokens"]) for o in outcomes)
    assert texts == sorted("".join(expected(i)) for i in range(jobs))
    assert len(kills) >= 2
    lost = [o for o in outcomes if any(a["outcome"] == "worker_lost" for a in o["result"].attempts)]
    assert lost  # the storm hit running jobs
    # stream_one fails on any token out of order, so a partial replaced without a reset
    # first would have failed it; the resets it saw are the ones the result counts.
    assert all(o["resets"] == o["result"].resets for o in outcomes)
    assert not [e for e in broker.events("job_failed") if e.get("category") == "worker_lost"]
    lost_attempts = sum(e["jobs"] for e in broker.events("worker_lost"))
    print(  # the figures a soak run records (pytest -s)
        f"storm: {len(outcomes)}/{jobs} jobs completed, {len(kills)} kills, "
        f"{lost_attempts} attempts lost, {len(lost)} jobs retried after a loss, "
        f"{sum(o['resets'] for o in outcomes)} resets, 0 duplicate or out-of-order tokens, "
        "0 worker_lost failures"
    )
