"""Jobs/s and tokens/s through the broker with mock workers, against in-process baselines.

Baselines run the same mock backend directly in this process (no sockets), so the ratio
is the cost of the whole broker path: client stub -> broker -> worker -> broker -> client.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from protocol.client import AsyncClient, build_job
from tests.harness import BrokerProcess
from workers.providers.mock import MockBackend
from workers.spec import ProviderSpec

JOBS = 5000
TOKENS_PER_JOB = 10
STREAM_TOKENS = 200_000


async def direct_jobs(n: int) -> float:
    backend = MockBackend(
        ProviderSpec(name="mock", kind="mock", options={"token_count": TOKENS_PER_JOB})
    )
    job = build_job(model="mock:echo", prompt="x")
    started = time.perf_counter()
    for _ in range(n):
        async for _event in backend.generate(job, "echo", 1):
            pass
    return n / (time.perf_counter() - started)


async def direct_tokens(n: int) -> float:
    backend = MockBackend(ProviderSpec(name="mock", kind="mock", options={"token_count": n}))
    job = build_job(model="mock:echo", prompt="x")
    started = time.perf_counter()
    async for _event in backend.generate(job, "echo", 1):
        pass
    return n / (time.perf_counter() - started)


async def broker_jobs(endpoint: str, n: int, concurrency: int) -> float:
    specs = [
        {"model": "mock:echo", "prompt": "x", "metadata": {"mock": {"token_count": TOKENS_PER_JOB}}}
        for _ in range(n)
    ]
    async with AsyncClient(endpoint) as client:
        started = time.perf_counter()
        done = 0
        async for outcome in client.map(specs, concurrency=concurrency):
            assert not isinstance(outcome, Exception), outcome
            done += 1
        return done / (time.perf_counter() - started)


async def broker_tokens(endpoint: str, n: int) -> tuple[float, int]:
    async with AsyncClient(endpoint) as client:
        started = time.perf_counter()
        result = await client.complete(
            model="mock:echo", prompt="x", metadata={"mock": {"token_count": n}}
        )
        rate = n / (time.perf_counter() - started)
        return rate, len(result.text)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = BrokerProcess(Path(tmp), {"mock": {"kind": "mock", "capacity": 32, "replicas": 4}})
        broker.log_level = "warning"  # as in production: no per-job lines below info
        broker.start()
        try:
            broker.wait_workers(4)
            base_jobs = asyncio.run(direct_jobs(JOBS))
            via_jobs = asyncio.run(broker_jobs(broker.client_endpoint, JOBS, 256))
            base_tok = asyncio.run(direct_tokens(STREAM_TOKENS))
            via_tok, _ = asyncio.run(broker_tokens(broker.client_endpoint, STREAM_TOKENS))
        finally:
            broker.stop()
    print(f"{'measure':<44}{'direct (in-process)':>22}{'through llmrelay':>20}{'ratio':>8}")
    print(
        f"{'jobs/s, 10-token mock jobs, 4 workers':<44}{base_jobs:>22,.0f}{via_jobs:>20,.0f}"
        f"{via_jobs / base_jobs:>8.3f}"
    )
    print(
        f"{'tokens/s, one 200k-token stream':<44}{base_tok:>22,.0f}{via_tok:>20,.0f}"
        f"{via_tok / base_tok:>8.3f}"
    )


if __name__ == "__main__":
    main()
