"""Failure injection over real processes: crashed, hung and restarted peers, cancel, garbage."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import msgpack
import psutil
import pytest
import zmq

from protocol import messages as m
from protocol.client import AsyncClient, build_job
from protocol.errors import ErrorCategory, ProviderError
from protocol.results import Done, Reset, Token

pytestmark = pytest.mark.timeout(120)


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def busy_worker_pid(broker: Any) -> int | None:
    with broker.client() as client:
        for worker in client.status()["workers"]:
            if worker["inflight"]:
                return int(worker["pid"])
    return None


def test_kill_9_worker_mid_stream(broker_factory: Any) -> None:
    # Every default (heartbeats, liveness, restart backoff): the closed connection is what
    # tells the broker, not a shortened heartbeat.
    broker = broker_factory(
        {"mock": {"kind": "mock", "capacity": 4, "replicas": 2}}, user_defaults=True
    )
    broker.wait_workers(2)
    tokens = [f"w{k} " for k in range(150)]
    events: list[Any] = []
    with broker.client() as client:
        stream = client.stream(
            model="mock:echo",
            prompt="x",
            metadata={"mock": {"tokens": tokens, "token_delay": 0.01}},
        )
        for event in stream:
            events.append(event)
            if len(events) == 10:
                victim = busy_worker_pid(broker)
                assert victim is not None
                os.kill(victim, signal.SIGKILL)
    resets = [i for i, e in enumerate(events) if isinstance(e, Reset)]
    assert len(resets) == 1
    after = events[resets[0] + 1 :]
    assert "".join(e.text for e in after if isinstance(e, Token)) == "".join(tokens)
    result = events[-1].result
    assert isinstance(events[-1], Done) and result.text == "".join(tokens)
    assert [a["outcome"] for a in result.attempts] == ["worker_lost", "ok"]
    assert result.resets == 1
    # The broker notices the exit and starts a replacement.
    wait_for(lambda: broker.events("worker_restarted"), what="worker_restarted")
    status = broker.wait_workers(2)
    assert victim not in [w["pid"] for w in status["workers"]]
    assert [e["pid"] for e in broker.events("worker_exited")] == [victim]


def test_hung_worker_is_detected_and_its_job_redispatched(broker_factory: Any) -> None:
    # On the default heartbeat (1 s x 3): a hang is found only by the application heartbeat.
    broker = broker_factory(
        {"mock": {"kind": "mock", "capacity": 4, "replicas": 2}}, user_defaults=True
    )
    broker.wait_workers(2)
    tokens = [f"h{k} " for k in range(20)]
    with broker.client() as client:
        script = {"tokens": tokens, "fail": [{"attempt": 1, "after": 5, "mode": "hang"}]}
        result = client.complete(model="mock:echo", prompt="x", metadata={"mock": script})
    assert result.text == "".join(tokens)
    assert [a["outcome"] for a in result.attempts] == ["worker_lost", "ok"]
    lost = broker.events("worker_lost")
    assert lost and lost[0]["reason"] == "heartbeat timeout"
    # The hung process is killed (not left frozen) and replaced.
    hung_pid = lost[0]["pid"]
    wait_for(
        lambda: (
            not psutil.pid_exists(hung_pid)
            or psutil.Process(hung_pid).status() == psutil.STATUS_ZOMBIE
        ),
        what="hung worker killed",
    )
    broker.wait_workers(2)


def test_broker_restart_mid_run(broker_factory: Any) -> None:
    # Broker, workers and client on their defaults, as users run them.
    broker = broker_factory(
        {"mock": {"kind": "mock", "capacity": 16, "spawn": False}}, user_defaults=True
    )
    broker.start_worker("mock")
    broker.start_worker("mock")
    broker.wait_workers(2)
    total = 120

    def spec(i: int) -> dict[str, Any]:
        tokens = [f"r{i}.{k} " for k in range(10)]
        return {
            "model": "mock:echo",
            "prompt": "x",
            "job_id": f"restart-{i}",
            "metadata": {"mock": {"tokens": tokens, "token_delay": 0.03}},
        }

    async def main() -> dict[str, Any]:
        results: dict[str, Any] = {}
        async with AsyncClient(broker.client_endpoint) as c:

            async def watch() -> None:
                while len(results) < 20:
                    await asyncio.sleep(0.05)
                broker.kill()
                await asyncio.sleep(1.0)
                broker.start()

            killer = asyncio.create_task(watch())
            async for outcome in c.map([spec(i) for i in range(total)], concurrency=40):
                assert not isinstance(outcome, ProviderError), outcome
                assert outcome.job_id not in results  # each job completes once
                results[outcome.job_id] = outcome
            await killer
            assert c.broker_restarts >= 1  # the new run was recognised by its instance id
        return results

    results = asyncio.run(main())
    assert len(results) == total
    for i in range(total):
        assert results[f"restart-{i}"].text == "".join(spec(i)["metadata"]["mock"]["tokens"])
    # Jobs that were streaming at the kill went on under new attempt numbers on the new broker
    # (never reusing one the client had seen), and only those can have reset their output.
    resumed = [r for r in results.values() if r.attempts[0]["attempt"] >= 2]
    assert resumed
    odd = [
        (r.job_id, r.attempts)
        for r in results.values()
        if r.resets and r.attempts[0]["attempt"] < 2
    ]
    assert not odd, odd
    broker.wait_workers(2)  # the same worker processes registered with the new broker


def test_cancel_stops_generation_on_the_worker(broker_factory: Any) -> None:
    broker = broker_factory({"mock": {"kind": "mock", "capacity": 4}})
    broker.wait_workers(1)
    total = 100_000
    with broker.client() as client:
        job_id = "to-cancel"
        received = 0
        with pytest.raises(ProviderError) as info:
            for event in client.stream(
                model="mock:echo",
                prompt="x",
                job_id=job_id,
                metadata={"mock": {"token_count": total, "token_delay": 0.002}},
            ):
                if isinstance(event, Token):
                    received += 1
                    if received == 20:
                        client.cancel(job_id)
        assert info.value.category is ErrorCategory.CANCELLED

        def stats() -> dict[str, Any] | None:
            worker = client.status()["workers"][0]["stats"]
            return worker if worker.get("jobs_cancelled") else None

        figures = wait_for(stats, what="cancel to reach the worker")
        produced = figures["tokens_produced"]
        time.sleep(1.0)
        later = client.status()["workers"][0]["stats"]["tokens_produced"]
    assert 20 <= produced < total
    assert later == produced  # generation really stopped


def test_garbage_on_both_sockets(broker_factory: Any) -> None:
    broker = broker_factory({"mock": {"kind": "mock", "capacity": 4}})
    broker.wait_workers(1)
    ctx = zmq.Context.instance()
    junk = [
        os.urandom(64),
        b"",
        msgpack.packb({"v": 1, "t": "submit", "job": {"id": 5}}),
        msgpack.packb({"v": 1, "t": "ready", "provider": ["x"]}),
        msgpack.packb({"v": 1, "t": "no_such_type"}),
        msgpack.packb({"v": 1, "t": "tokens", "job_id": "zz", "attempt": 1, "seq": 0}),
        msgpack.packb([None] * 10),
        msgpack.packb({"v": 1, "t": "done", "job_id": "zz", "attempt": 1, "frames": "many"}),
    ]
    replies: dict[str, list[Any]] = {}
    for name, endpoint in (("client", broker.client_endpoint), ("worker", broker.worker_endpoint)):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        for frame in junk:
            sock.send(frame)
        sock.send_multipart([os.urandom(10), os.urandom(10), os.urandom(10)])
        got = []
        while sock.poll(1000):
            got.append(m.decode(sock.recv_multipart()[0]))
        replies[name] = got
        # An oversized message gets the peer disconnected, and nothing else.
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(endpoint)
        big.send(b"\x00" * (m.MAX_MESSAGE_BYTES + 1024))
        big.close()
        sock.close()
    client_errors = [r for r in replies["client"] if isinstance(r, m.Error)]
    assert len(client_errors) >= 6
    assert any("unknown message type" in e.message for e in client_errors)
    assert any("job" in e.message for e in client_errors)
    worker_replies = replies["worker"]
    assert any(isinstance(r, m.Error) for r in worker_replies)
    # The broker keeps serving everybody else.
    with broker.client() as client:
        result = client.complete(model="mock:echo", prompt="still alive")
        assert result.text == "still alive "
    assert broker.proc is not None and broker.proc.poll() is None


def test_bad_job_rejected_at_submit_with_a_clear_error(broker_factory: Any) -> None:
    broker = broker_factory({"mock": {"kind": "mock", "capacity": 2}})
    broker.wait_workers(1)
    with broker.client() as client:
        with pytest.raises(ProviderError) as info:
            client.complete(model="nobody:x", prompt="x")
        assert info.value.category is ErrorCategory.NOT_FOUND
        with pytest.raises(ProviderError, match="unknown route"):
            client.complete(route="missing", prompt="x")
    with pytest.raises(Exception, match=r"params\.frequency_penalty"):
        build_job(model="mock:echo", prompt="x", frequency_penalty=9)
