"""The ZeroMQ I/O threads' scheduling policy follows the load (protocol/io_threads.py): in this
process directly, and in a real broker and worker with jobs in flight."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import zmq

from protocol.client import AsyncClient
from protocol.io_threads import BUSY, IoThreads, _io_thread_ids
from tests.harness import BrokerProcess, run_async

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies"),
]


def policies(pid: int | None = None) -> set[int]:
    """The policies of a process's ZeroMQ I/O threads (this process's when pid is None)."""
    tasks = Path(f"/proc/{pid or os.getpid()}/task")
    found = set()
    for task in tasks.iterdir():
        if (task / "comm").read_text().startswith("ZMQbg/IO/"):
            found.add(os.sched_getscheduler(int(task.name)))
    return found


def test_policy_switches_with_the_jobs_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)  # the context's I/O threads start here
    try:
        assert _io_thread_ids(), "no ZeroMQ I/O thread found by name"
        io = IoThreads()
        client, broker = object(), object()
        io.report(client, 1)
        assert policies() == {os.SCHED_OTHER} and not io.batch
        io.report(client, BUSY)
        assert policies() == {os.SCHED_BATCH} and io.batch
        io.report(client, 1)
        assert policies() == {os.SCHED_OTHER}
        io.report(broker, 1)  # two reporters of one job each: together busy
        assert policies() == {os.SCHED_BATCH}
        io.report(client, 0)
        assert policies() == {os.SCHED_OTHER}
        io.report(broker, 0)
        assert io.switches == 4
        monkeypatch.setenv("LLMRELAY_ZMQ_IO_POLICY", "normal")
        off = IoThreads()
        off.report(client, 100)
        assert policies() == {os.SCHED_OTHER} and off.switches == 0
    finally:
        sock.close(linger=0)


def test_broker_and_worker_batch_only_under_load(tmp_path: Path) -> None:
    mock = {"kind": "mock", "models": ["echo"], "capacity": 16}
    broker = BrokerProcess(tmp_path, {"mock": mock}, None)
    try:
        broker.start()
        broker.wait_workers(1, timeout=60)
        assert broker.proc is not None
        import psutil

        (worker,) = psutil.Process(broker.proc.pid).children()

        def seen() -> tuple[set[int], set[int]]:
            return policies(broker.proc.pid), policies(worker.pid)  # type: ignore[union-attr]

        normal = ({os.SCHED_OTHER}, {os.SCHED_OTHER})
        assert seen() == normal

        @run_async
        async def under_load() -> None:
            slow = {"mock": {"first_token_delay": 1.0, "token_count": 2}}
            async with AsyncClient(broker.client_endpoint) as client:
                jobs = [
                    asyncio.ensure_future(
                        client.complete(model="mock:echo", prompt=f"{i}", metadata=slow)
                    )
                    for i in range(8)
                ]
                await asyncio.sleep(0.5)  # dispatched, all waiting for their first token
                assert seen() == ({os.SCHED_BATCH}, {os.SCHED_BATCH})
                assert policies() == {os.SCHED_BATCH}  # this client's own I/O thread too
                assert (await client.status())["io_threads"]["batch"] is True
                await asyncio.gather(*jobs)
            deadline = time.monotonic() + 10
            while seen() != normal and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert seen() == normal
            assert policies() == {os.SCHED_OTHER}
            async with AsyncClient(broker.client_endpoint) as client:
                io = (await client.status())["io_threads"]
            assert io == {"batch": False, "switches": 2}  # to batch under load, and back

        under_load()
    finally:
        broker.stop()
