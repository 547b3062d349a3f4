"""Live model lists: each provider's models endpoint, the fallback, the runtime, routing.

The backend tests run each HttpBackend against its fake in this process; the end-to-end tests
go through a real broker whose worker registers with the models its fake lists.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from protocol.job import Job
from tests.fakes.drive import FAKE_KEY, make_backend, with_backend
from tests.fakes.server import FakeServer
from tests.harness import BrokerProcess
from tests.llamacpp_support import run, spec_for
from tests.test_e2e_providers import (  # api_keys: the same autouse fixture
    JOB_TIMEOUT,
    WORKER_WAIT,
    api_keys,  # noqa: F401
    fake_for,
    provider,
)
from workers.backend import Backend, StreamEvent
from workers.http import HttpBackend
from workers.providers.llamacpp import LlamaCppBackend
from workers.runtime import WorkerRuntime, merge_models
from workers.spec import ProviderSpec

pytestmark = pytest.mark.timeout(120)

KINDS = ("openai", "anthropic", "openrouter", "ollama")
MODELS_PATH = {
    "openai": "/v1/models",
    "anthropic": "/v1/models",
    "openrouter": "/api/v1/models",
    "ollama": "/api/tags",
}


def listed(backend: HttpBackend) -> list[str] | None:
    async def body(b: HttpBackend) -> list[str] | None:
        return await b.list_models()

    return asyncio.run(with_backend(backend, body))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- 1. each provider's wire shape --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_each_provider_lists_its_models(kind: str, request: pytest.FixtureRequest) -> None:
    fake = fake_for(request, kind)
    assert len(fake.models.ids) >= 2  # the fakes list a couple of ids by default
    assert listed(make_backend(kind, fake.url, api_key=FAKE_KEY)) == fake.models.ids
    fake.models.ids = ["m-1", "vendor/m-2:free", "m-1"]
    assert listed(make_backend(kind, fake.url, api_key=FAKE_KEY)) == ["m-1", "vendor/m-2:free"]
    assert [r.method for r in fake.model_requests] == ["GET", "GET"]
    assert {r.route for r in fake.model_requests} == {MODELS_PATH[kind]}
    assert fake.requests == []  # the listing never consumes a scripted chat reply


def test_requests_carry_the_providers_auth(
    anthropic_fake: FakeServer, openai_fake: FakeServer
) -> None:
    assert listed(make_backend("anthropic", anthropic_fake.url, api_key=FAKE_KEY))
    headers = anthropic_fake.model_requests[-1].headers
    assert headers["x-api-key"] == FAKE_KEY and "anthropic-version" in headers
    assert listed(make_backend("openai", openai_fake.url, api_key=FAKE_KEY))
    assert openai_fake.model_requests[-1].headers["authorization"] == f"Bearer {FAKE_KEY}"


@pytest.mark.parametrize("kind", ["anthropic", "openrouter"])
def test_pages_are_followed(kind: str, request: pytest.FixtureRequest) -> None:
    fake = fake_for(request, kind)
    fake.models.ids = [f"model-{i}" for i in range(7)]
    fake.models.page_size = 3
    assert listed(make_backend(kind, fake.url, api_key=FAKE_KEY)) == fake.models.ids
    assert len(fake.model_requests) == 3


def test_list_is_bounded(openai_fake: FakeServer) -> None:
    too_long = "x" * 257
    openai_fake.models.ids = ["ok", too_long, *(f"m{i}" for i in range(5000))]
    models = listed(make_backend("openai", openai_fake.url, api_key=FAKE_KEY))
    assert models is not None
    assert len(models) == 4096 and models[0] == "ok" and too_long not in models
    assert all(len(m) <= 256 for m in models)


# --- 2. failures fall back -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "category"),
    [
        (500, {"error": {"message": "boom", "type": "server_error"}}, "server_error"),
        (404, "404 page not found", "not_found"),
        (200, "<html>not json</html>", "protocol"),
        (200, {"data": "not a list"}, "protocol"),
        (200, {"models": []}, "protocol"),
    ],
)
def test_a_bad_listing_gives_none_and_one_warning(
    openai_fake: FakeServer, status: int, body: Any, category: str
) -> None:
    openai_fake.models.status = status
    openai_fake.models.body = body
    with capture_logs() as logs:
        assert listed(make_backend("openai", openai_fake.url, api_key=FAKE_KEY)) is None
    warnings = [e for e in logs if e["event"] == "models_unavailable"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["category"] == category and warnings[0]["provider"] == "openai"


def test_a_wrong_key_is_a_warning_without_the_key(openai_fake: FakeServer) -> None:
    with capture_logs() as logs:
        assert listed(make_backend("openai", openai_fake.url, api_key="sk-wrong-key-1")) is None
    (warning,) = [e for e in logs if e["event"] == "models_unavailable"]
    assert warning["category"] == "auth" and "sk-wrong-key-1" not in str(warning)


def test_an_unreachable_server_gives_none() -> None:
    backend = make_backend("ollama", f"http://127.0.0.1:{closed_port()}")
    with capture_logs() as logs:
        assert listed(backend) is None
    (warning,) = [e for e in logs if e["event"] == "models_unavailable"]
    assert warning["category"] == "network"


# --- 3. the runtime merges and keeps going ----------------------------------------------------


def test_merge_keeps_config_first_and_drops_duplicates() -> None:
    assert merge_models(["b", "a"], ["a", "c", "b", "d"]) == ["b", "a", "c", "d"]
    assert merge_models([], ["", "x" * 257, "y"]) == ["y"]
    assert len(merge_models(["a"], [f"m{i}" for i in range(5000)])) == 4096


class Listing(Backend):
    """A backend whose list_models returns, raises or hangs as told."""

    kind = "test"

    def __init__(self, spec: ProviderSpec, outcome: Any) -> None:
        super().__init__(spec)
        self.outcome = outcome
        self.calls = 0

    async def list_models(self) -> list[str] | None:
        self.calls += 1
        if self.outcome == "hang":
            await asyncio.Event().wait()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        result: list[str] | None = self.outcome
        return result

    async def generate(self, job: Job, model: str, attempt: int) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError
        yield  # pragma: no cover


def discovered(
    outcome: Any, **options: Any
) -> tuple[WorkerRuntime, list[MutableMapping[str, Any]]]:
    spec = ProviderSpec(name="p", kind="mock", models=["cfg-1", "cfg-2"], options=options)
    runtime = WorkerRuntime(spec, "tcp://127.0.0.1:1", backend=Listing(spec, outcome))
    with capture_logs() as logs:
        asyncio.run(runtime._discover_models())
    return runtime, logs


def test_runtime_registers_config_then_live_models() -> None:
    runtime, logs = discovered(["live-1", "cfg-2", "live-2"])
    assert runtime.models == ["cfg-1", "cfg-2", "live-1", "live-2"]
    (event,) = [e for e in logs if e["event"] == "models_listed"]
    assert event["count"] == 3 and "models" not in event  # a count, never the list


@pytest.mark.parametrize("outcome", [None, RuntimeError("backend bug"), "hang"])
def test_runtime_falls_back_to_the_config_list(outcome: Any) -> None:
    runtime, logs = discovered(outcome, list_models_timeout=0.05)
    assert runtime.models == ["cfg-1", "cfg-2"]
    warnings = [e for e in logs if e["event"] == "models_unavailable"]
    assert len(warnings) == (0 if outcome is None else 1)  # None: the backend warned itself


def test_runtime_option_disables_the_listing() -> None:
    runtime, _ = discovered(["live-1"], list_models=False)
    assert runtime.models == ["cfg-1", "cfg-2"]
    backend = runtime.backend
    assert isinstance(backend, Listing) and backend.calls == 0


# --- 4. end to end: the broker routes a bare name by the live list ----------------------------


def start(broker_factory: Any, providers: dict[str, dict[str, Any]]) -> BrokerProcess:
    broker: BrokerProcess = broker_factory(providers)
    broker.wait_workers(len(providers), timeout=WORKER_WAIT)
    return broker


def test_a_bare_model_name_resolves_by_the_live_list(
    broker_factory: Any, openai_fake: FakeServer, ollama_fake: FakeServer
) -> None:
    openai_fake.models.ids = ["live-model-1"]
    ollama_fake.models.ids = ["live-model-1", "other"]
    broker = start(
        broker_factory,
        {
            "first": {**provider("openai", openai_fake), "models": []},
            "second": {**provider("ollama", ollama_fake), "models": ["cfg-only"]},
        },
    )
    with broker.client() as client:
        result = client.complete(model="live-model-1", prompt="hi", timeout=JOB_TIMEOUT)
        assert result.text == "Hello, world!" and result.provider == "first"
        assert openai_fake.requests[-1].json()["model"] == "live-model-1"
        # Listed by "second" only: the config order is kept among those serving it.
        result = client.complete(model="other", prompt="hi", timeout=JOB_TIMEOUT)
        assert result.provider == "second"
        status = client.status(timeout=5.0)
    counts = {w["provider"]: w["model_count"] for w in status["workers"]}
    assert counts == {"first": 1, "second": 3}
    assert "models" not in status["workers"][0]
    assert len(broker.events("models_listed")) == 2


def test_a_failed_listing_still_registers_the_worker(
    broker_factory: Any, anthropic_fake: FakeServer
) -> None:
    anthropic_fake.models.status = 503
    broker = start(
        broker_factory, {"ant": {**provider("anthropic", anthropic_fake), "models": ["c-1"]}}
    )
    with broker.client() as client:
        assert client.complete(model="c-1", prompt="hi", timeout=JOB_TIMEOUT).provider == "ant"
        status = client.status(timeout=5.0)
    assert [w["model_count"] for w in status["workers"]] == [1]
    assert len(broker.events("models_unavailable")) == 1
    assert broker.events("models_listed") == []


@pytest.mark.llama
@pytest.mark.timeout(180)
def test_llama_server_lists_its_model(
    llama_binary: Any, tiny_model: Path, reap_children: None
) -> None:
    """llama-server's `/v1/models` (the OpenAI reader) names the model it loaded."""
    seen: list[list[str] | None] = []

    async def body() -> None:
        backend = LlamaCppBackend(spec_for(tiny_model, extra_args=["--alias", "tiny-alias"]))
        await backend.start()
        try:
            seen.append(await backend.list_models())
        finally:
            await backend.close()

    run(body)
    assert seen == [["tiny-alias"]]
