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
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.anthropic_fake import anthropic_server
from tests.fakes.drive import API_ROOT, FAKE_KEY
from tests.fakes.openai_fake import openai_server
from tests.fakes.server import FakeServer, Reply
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


# --- one broker with mock, OpenAI and Anthropic workers (on fakes) and a gateway ---------

OAI_KEY_ENV = "LLMRELAY_TEST_GW_OPENAI_KEY"
ANT_KEY_ENV = "LLMRELAY_TEST_GW_ANTHROPIC_KEY"
TOKENS = ["Hé", "llo", ", wö", "rld ", "🙂", " naïve", "!"]


@dataclass
class ChatStack:
    broker: BrokerProcess
    gateway: GatewayProcess
    oai: FakeServer
    ant: FakeServer

    def sdk(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.gateway.base_url, api_key="unused", **kwargs)


@pytest.fixture(scope="module")
def chat_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatStack]:
    mp = pytest.MonkeyPatch()
    mp.setenv(OAI_KEY_ENV, FAKE_KEY)
    mp.setenv(ANT_KEY_ENV, FAKE_KEY)
    tmp = tmp_path_factory.mktemp("gw")
    with openai_server(FAKE_KEY) as oai, anthropic_server(FAKE_KEY) as ant:
        providers = {
            "mock": mock_provider(),
            "oai": {
                "kind": "openai",
                "models": ["gpt-x"],
                "capacity": 8,
                "options": {"base_url": oai.url + API_ROOT["openai"], "api_key_env": OAI_KEY_ENV},
            },
            "ant": {
                "kind": "anthropic",
                "models": ["claude-x"],
                "capacity": 8,
                "options": {
                    "base_url": ant.url + API_ROOT["anthropic"],
                    "api_key_env": ANT_KEY_ENV,
                },
            },
        }
        broker = BrokerProcess(tmp, providers, {"default": ["mock:echo"]})
        gateway = GatewayProcess(broker)
        try:
            broker.start()
            broker.wait_workers(3, timeout=60)
            gateway.start()
            yield ChatStack(broker, gateway, oai, ant)
        finally:
            gateway.stop()
            broker.stop()
            mp.undo()


@pytest.fixture
def chat(chat_stack: ChatStack) -> Iterator[ChatStack]:
    chat_stack.oai.default = Reply(tokens=list(TOKENS))
    chat_stack.ant.default = Reply(tokens=list(TOKENS))
    yield chat_stack
    chat_stack.oai.default = Reply()
    chat_stack.ant.default = Reply()
