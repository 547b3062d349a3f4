"""Remote workers (started by hand, not by the broker) that die or freeze, on the defaults.

The broker cannot waitpid a worker it did not start. A worker process that dies has its TCP
connection closed by the kernel; the broker's ROUTER then has no route to it and the next
ping fails with EHOSTUNREACH, so the worker is lost at once ("connection lost") instead of
after the heartbeat timeout. A frozen worker (SIGSTOP) keeps its TCP connection; it is
found by the heartbeats (the application's, or ZMTP's closing the connection), and after
SIGCONT its socket monitor sees the closed connection and it registers again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest

from protocol.results import Result
from tests.harness import BrokerProcess

pytestmark = pytest.mark.timeout(180)


def remote_broker(broker_factory: Any) -> tuple[BrokerProcess, list[subprocess.Popen[bytes]]]:
    """A broker and two workers started by hand, all on the defaults users get."""
    broker: BrokerProcess = broker_factory(
        {"mock": {"kind": "mock", "capacity": 4, "spawn": False}}, user_defaults=True
    )
    workers = [broker.start_worker("mock") for _ in range(2)]
    broker.wait_workers(2, timeout=60)
    return broker, workers


def slow_job(broker: BrokerProcess, job_id: str) -> dict[str, Any]:
    return {
        "model": "mock:echo",
        "prompt": "x",
        "job_id": job_id,
        "timeout": 120,
        "metadata": {"mock": {"tokens": [f"t{i} " for i in range(40)], "token_delay": 0.1}},
    }


def running_on(broker: BrokerProcess, workers: list[subprocess.Popen[bytes]]) -> Any:
    """The worker process the (only) job is running on, once it is dispatched."""
    deadline = time.monotonic() + 30
    with broker.client() as client:
        while time.monotonic() < deadline:
            busy = [w["pid"] for w in client.status(timeout=5)["workers"] if w["inflight"]]
            if busy:
                return next(w for w in workers if w.pid == busy[0])
            time.sleep(0.05)
    raise AssertionError("the job never started")


def stream_while(broker: BrokerProcess, job_id: str, fault: Any) -> Result:
    """Run the job; once its first token arrives, apply `fault`; return the result."""
    from protocol.results import Done, Token

    result = None
    faulted = False
    with broker.client() as client:
        for event in client.stream(**slow_job(broker, job_id)):
            if isinstance(event, Token) and not faulted:
                faulted = True
                fault()
            elif isinstance(event, Done):
                result = event.result
    assert result is not None
    return result


def test_killed_remote_worker_is_lost_with_its_connection(broker_factory: Any) -> None:
    broker, workers = remote_broker(broker_factory)
    victims: list[int] = []

    def kill() -> None:
        victim = running_on(broker, workers)
        victim.send_signal(signal.SIGKILL)
        victims.append(victim.pid)

    result = stream_while(broker, "remote-kill", kill)
    assert [a["outcome"] for a in result.attempts] == ["worker_lost", "ok"]
    (lost,) = [e for e in broker.events("worker_lost") if e["pid"] == victims[0]]
    # Not "heartbeat timeout": the dead peer's closed connection told the broker.
    assert lost["reason"] == "connection lost", lost
    assert result.text == "".join(f"t{i} " for i in range(40))


def test_frozen_remote_worker_is_lost_then_registers_again(broker_factory: Any) -> None:
    broker, workers = remote_broker(broker_factory)
    frozen: list[subprocess.Popen[bytes]] = []

    def freeze() -> None:
        victim = running_on(broker, workers)
        victim.send_signal(signal.SIGSTOP)
        frozen.append(victim)

    try:
        result = stream_while(broker, "remote-freeze", freeze)
        assert [a["outcome"] for a in result.attempts] == ["worker_lost", "ok"]
        (lost,) = [e for e in broker.events("worker_lost") if e["pid"] == frozen[0].pid]
        assert lost["reason"] in ("heartbeat timeout", "connection lost"), lost
        readies = len([e for e in broker.events("worker_ready") if e["pid"] == frozen[0].pid])
    finally:
        for proc in frozen:
            os.kill(proc.pid, signal.SIGCONT)
    # Thawed, it finds its connection closed (or hears it was forgotten) and registers again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        again = [e for e in broker.events("worker_ready") if e["pid"] == frozen[0].pid]
        if len(again) > readies:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the thawed worker did not register again: {broker.log_tail()}")
    status = broker.wait_workers(2, timeout=30)
    assert frozen[0].pid in {w["pid"] for w in status["workers"]}
