"""Clean shutdowns: a worker drains on SIGTERM; a broker stops its whole worker tree."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest

from protocol.results import Token
from tests.harness import ROOT

pytestmark = pytest.mark.timeout(90)


def test_sigterm_lets_a_worker_finish_its_jobs(broker_factory: Any) -> None:
    broker = broker_factory({"ext": {"kind": "mock", "capacity": 2, "spawn": False}})
    worker = broker.start_worker("ext")
    broker.wait_workers(1)
    tokens = [f"d{k} " for k in range(40)]
    texts: list[str] = []
    with broker.client() as client:
        started = threading.Event()

        def run() -> None:
            for event in client.stream(
                model="ext:echo",
                prompt="x",
                metadata={"mock": {"tokens": tokens, "token_delay": 0.02}},
            ):
                if isinstance(event, Token):
                    started.set()
                else:
                    texts.append(event.result.text)

        runner = threading.Thread(target=run)
        runner.start()
        assert started.wait(30)
        worker.send_signal(signal.SIGTERM)
        runner.join(60)
        assert worker.wait(30) == 0
    assert texts == ["".join(tokens)]  # finished on the draining worker, not lost
    assert broker.events("worker_draining")


def test_broker_sigterm_stops_every_worker(broker_factory: Any) -> None:
    broker = broker_factory({"mock": {"kind": "mock", "capacity": 2, "replicas": 3}})
    broker.wait_workers(3)
    pids = broker.worker_pids()
    assert len(pids) == 3
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGTERM)
    assert broker.proc.wait(30) == 0
    _, alive = psutil.wait_procs(
        [psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10
    )
    assert not alive
    assert broker.events("broker_stopped")


def test_broker_kill_9_takes_its_workers_along(broker_factory: Any) -> None:
    broker = broker_factory({"mock": {"kind": "mock", "capacity": 2, "replicas": 2}})
    broker.wait_workers(2)
    pids = broker.worker_pids()
    assert broker.proc is not None
    broker.proc.kill()
    broker.proc.wait(10)
    procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive  # PDEATHSIG: no orphan worker keeps running


def test_cli_submit_and_status(broker_factory: Any) -> None:
    broker = broker_factory({"mock": {"kind": "mock", "capacity": 2}})
    broker.wait_workers(1)
    base = [sys.executable, "-m", "dispatcher.cli"]

    out = subprocess.run(
        [
            *base,
            "submit",
            "--endpoint",
            broker.client_endpoint,
            "--model",
            "mock:echo",
            "--stream",
            "hello from the cli",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hello from the cli"
    assert '"provider": "mock"' in out.stderr
    status = subprocess.run(
        [*base, "status", "--endpoint", broker.client_endpoint, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and '"workers"' in status.stdout
    bad = subprocess.run(
        [
            *base,
            "submit",
            "--endpoint",
            broker.client_endpoint,
            "--model",
            "mock:echo",
            "--params",
            '{"temperature": 7}',
            "x",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "params.temperature" in bad.stderr


def test_worker_for_an_unknown_provider_stops_with_a_config_error(broker_factory: Any) -> None:
    broker = broker_factory({"known": {"kind": "mock", "capacity": 1}})
    broker.wait_workers(1)
    stray = broker.start_worker("mock")  # a kind, but no provider of that name in the config
    assert stray.wait(30) == 2
    assert len(broker.events("worker_rejected")) == 1


def test_job_for_a_provider_without_workers_waits_visibly_then_meets_its_deadline(
    broker_factory: Any,
) -> None:
    from protocol.errors import ErrorCategory, ProviderError

    broker = broker_factory({"remote": {"kind": "mock", "spawn": False}})
    with broker.client() as client:
        try:
            client.complete(model="remote:echo", prompt="x", job_id="lonely", timeout=1.5)
            raise AssertionError("the job should not complete")
        except ProviderError as exc:
            assert exc.category is ErrorCategory.DEADLINE
    waits = broker.events("job_waiting_for_worker")
    assert [w["job"] for w in waits] == ["lonely"]  # said once, not once per loop turn


def test_broker_logs_periodic_stats(broker_factory: Any) -> None:
    broker = broker_factory({"mock": {"kind": "mock", "capacity": 1}}, stats_interval=0.2)
    broker.wait_workers(1)
    with broker.client() as client:
        client.complete(model="mock:echo", prompt="count me")
        deadline = time.monotonic() + 20
        while not [e for e in broker.events("broker_stats") if e["done"] >= 1]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    line = broker.events("broker_stats")[-1]
    assert line["workers"] == 1 and line["rss"] > 0 and line["submitted"] >= 1
