"""End to end over real processes and sockets: broker + 4 supervised mock workers."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
import zmq

from protocol import messages as m
from protocol.client import AsyncClient, build_job
from protocol.errors import ProviderError
from protocol.results import Done, Reset, Token

pytestmark = pytest.mark.timeout(180)


def scripted(i: int) -> tuple[dict[str, Any], str]:
    """A job whose mock output is known in advance: varied lengths and non-ASCII text."""
    rng = random.Random(i)
    tokens = [f"j{i}·{k}{'é' if k % 3 else ''} " for k in range(rng.randint(1, 30))]
    spec = {
        "model": "mock:echo",
        "prompt": f"job {i}",
        "job_id": f"job-{i}",
        "metadata": {"mock": {"tokens": tokens, "token_delay": rng.choice([0, 0, 0.001])}},
    }
    return spec, "".join(tokens)


async def run_client(endpoint: str, ids: range) -> dict[str, str]:
    texts: dict[str, str] = {}
    async with AsyncClient(endpoint, heartbeat_interval=0.5) as client:
        specs = [scripted(i)[0] for i in ids]
        stream_ids = set(list(ids)[::5])  # every fifth job streamed event by event

        async def streamed(spec: dict[str, Any]) -> None:
            parts: list[str] = []
            async for event in client.stream(**spec):
                assert not isinstance(event, Reset)
                if isinstance(event, Token):
                    parts.append(event.text)
                elif isinstance(event, Done):
                    assert event.result.text == "".join(parts)
                    texts[event.result.job_id] = event.result.text

        batch = [s for i, s in zip(ids, specs, strict=True) if i not in stream_ids]
        streams = [streamed(s) for i, s in zip(ids, specs, strict=True) if i in stream_ids]

        async def mapped() -> None:
            async for result in client.map(batch, concurrency=48):
                assert not isinstance(result, ProviderError), result
                assert result.resets == 0 and result.provider == "mock"
                texts[result.job_id] = result.text

        await asyncio.gather(mapped(), *streams)
    return texts


def test_thousand_streamed_jobs_across_four_workers(broker_factory: Any) -> None:
    broker = broker_factory({"mock": {"kind": "mock", "capacity": 8, "replicas": 4}})
    broker.wait_workers(4)

    async def main() -> list[dict[str, str]]:
        return await asyncio.gather(
            *(run_client(broker.client_endpoint, range(k * 250, (k + 1) * 250)) for k in range(4))
        )

    results = asyncio.run(main())
    texts = {k: v for part in results for k, v in part.items()}
    assert len(texts) == 1000
    for i in range(1000):
        assert texts[f"job-{i}"] == scripted(i)[1]
    status = broker.wait_workers(4)
    assert status["totals"]["done"] == 1000 and status["totals"]["failed"] == 0
    # Worker figures travel with heartbeats: wait for the ones that cover the whole run.
    for _ in range(50):
        served = [w["stats"].get("jobs_done", 0) for w in broker.wait_workers(4)["workers"]]
        if sum(served) == 1000:
            break
        time.sleep(0.1)
    assert sum(served) == 1000 and min(served) > 0, served  # all four workers took a share


def test_wire_frames_are_contiguous_and_counted(broker_factory: Any) -> None:
    """A raw DEALER sees seq 0..n-1 for attempt 1 and a done that counts them."""
    broker = broker_factory({"mock": {"kind": "mock", "capacity": 4}})
    broker.wait_workers(1)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker.client_endpoint)
    try:
        tokens = [f"{k} " for k in range(500)]
        job = build_job(
            model="mock:echo", prompt="x", job_id="raw-1", metadata={"mock": {"tokens": tokens}}
        )
        sock.send(m.Submit(job=job).encode())
        seqs, text, done = [], [], None
        while done is None:
            assert sock.poll(10_000), "broker went quiet"
            frames = sock.recv_multipart()
            msg = m.decode(frames[0])
            if isinstance(msg, m.Tokens):
                assert msg.attempt == 1
                seqs.append(msg.seq)
                text.append(frames[1].decode())
            elif isinstance(msg, m.Completed):
                done = msg
        assert seqs == list(range(len(seqs)))
        assert done.frames == len(seqs)
        assert "".join(text) == "".join(tokens)
        assert done.result["usage"]["completion_tokens"] == 500
        # Resubmitting a finished id is idempotent: the same done comes back, nothing reruns.
        sock.send(m.Submit(job=job, delivered=len(seqs)).encode())
        assert sock.poll(5_000)
        again = m.decode(sock.recv_multipart()[0])
        assert isinstance(again, m.Completed) and again.result == done.result
    finally:
        sock.close()
