"""The broker starts the gateway from its config's `[http]` table and restarts it after kill -9."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psutil
import pytest

from tests.gateway_support import mock_provider
from tests.harness import BrokerProcess, free_port, toml_value

pytestmark = pytest.mark.timeout(120)


def gateway_pids(broker: BrokerProcess) -> list[int]:
    """The broker's living gateway children (a killed one may linger as a zombie)."""
    assert broker.proc is not None
    pids = []
    for child in psutil.Process(broker.proc.pid).children():
        try:
            if "gateway" in child.cmdline():
                pids.append(child.pid)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return pids


def wait_ready(url: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(url + "/readyz", timeout=2.0)
            if reply.status_code == 200:
                return dict(reply.json())
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no ready gateway at {url}")


def test_broker_supervises_the_gateway(broker_factory: Any) -> None:
    broker: BrokerProcess = broker_factory({"mock": mock_provider()}, start=False)
    port = free_port()
    http = {"port": port, "store_dir": str(broker.tmp / "store")}
    broker.config.write_text(
        broker.config.read_text()
        + "\n[http]\n"
        + "".join(f"{k} = {toml_value(v)}\n" for k, v in http.items())
    )
    broker.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    body = {"model": "mock:echo", "messages": [{"role": "user", "content": "via the broker"}]}
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert reply.json()["choices"][0]["message"]["content"] == "via the broker "

    (first,) = gateway_pids(broker)
    psutil.Process(first).kill()
    deadline = time.monotonic() + 60
    while not [p for p in gateway_pids(broker) if p != first]:
        assert time.monotonic() < deadline, broker.log_tail()
        time.sleep(0.2)
    wait_ready(url)
    assert any(e.get("returncode") == -9 for e in broker.events("gateway_process_exited"))
    assert httpx.post(url + "/v1/chat/completions", json=body, timeout=30).status_code == 200

    (second,) = gateway_pids(broker)
    broker.kill()  # kill -9 of the broker: the gateway dies with it (PDEATHSIG)
    deadline = time.monotonic() + 10
    while alive(second):
        assert time.monotonic() < deadline, "the gateway outlived its broker"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
