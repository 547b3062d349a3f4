"""A real `llmrelay gateway` process in front of a test broker, on a free port.

The gateway reads a copy of the broker's config with an `[http]` table added, so it knows the
routes and the models the broker serves. It runs in its own session; `stop()` kills its
process group, and the fixture calls it even when a test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.harness import ROOT, BrokerProcess, free_port, kill_tree, toml_value
from workers.procutil import die_with_parent_preexec

KEYS_ENV = "LLMRELAY_TEST_GATEWAY_KEYS"
GATEWAY_WAIT = 30.0


class GatewayProcess:
    def __init__(self, broker: BrokerProcess, env: dict[str, str] | None = None, **http: Any):
        self.broker = broker
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        store = str(broker.tmp / "store")
        settings = {"port": self.port, "spawn": False, "store_dir": store, **http}
        text = broker.config.read_text() + "\n[http]\n"
        text += "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items())
        self.config = broker.tmp / "gateway.toml"
        self.config.write_text(text)
        self.log_path = broker.tmp / "gateway.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """What the openai SDK takes as base_url (the anthropic SDK takes `url`)."""
        return self.url + "/v1"

    def start(self, wait: bool = True) -> GatewayProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "gateway", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            cwd=ROOT,
            preexec_fn=die_with_parent_preexec(),
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = GATEWAY_WAIT) -> None:
        """Until /readyz says the broker answers and a worker is registered."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log_tail()}")
            try:
                reply = httpx.get(self.url + "/readyz", timeout=2.0)
                if reply.status_code == 200:
                    return
                last = reply.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready: {last}; log: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def rss(self) -> int:
        import psutil

        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc)
            self.proc = None


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways in front of brokers; all of them die at teardown."""
    started: list[GatewayProcess] = []

    def make(broker: BrokerProcess, start: bool = True, **kwargs: Any) -> GatewayProcess:
        gateway = GatewayProcess(broker, **kwargs)
        started.append(gateway)
        if start:
            gateway.start()
        return gateway

    yield make
    for gateway in started:
        gateway.stop()


def mock_provider(capacity: int = 16, **options: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "mock", "models": ["echo"], "capacity": capacity}
    if options:
        spec["options"] = options
    return spec
