"""The catalog end to end: fake provider servers <- workers <- broker <- client and CLI.

Real broker and worker processes, real HTTP to the fakes; costs are checked against a hand
computation from the fake's usage and the shipped prices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from catalog.capabilities import shipped
from protocol.errors import ErrorCategory, ProviderError
from tests.fakes.drive import API_ROOT, FAKE_KEY
from tests.fakes.server import FakeServer, Reply
from tests.harness import ROOT, BrokerProcess

pytestmark = pytest.mark.timeout(120)

KEY_ENV = {
    "openai": "LLMRELAY_TEST_OPENAI_KEY",
    "anthropic": "LLMRELAY_TEST_ANTHROPIC_KEY",
    "openrouter": "LLMRELAY_TEST_OPENROUTER_KEY",
}
JOB_TIMEOUT = 60.0
WORKER_WAIT = 60.0


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in KEY_ENV.values():
        monkeypatch.setenv(env, FAKE_KEY)


def provider(kind: str, fake: FakeServer, **spec: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {"base_url": fake.url + API_ROOT[kind]}
    if kind in KEY_ENV:
        opts["api_key_env"] = KEY_ENV[kind]
    return {"kind": kind, "capacity": 2, "options": opts, **spec}


def start(broker_factory: Any, providers: dict[str, Any], routes: Any = None) -> BrokerProcess:
    process: BrokerProcess = broker_factory(providers, routes)
    spawned = [p for p in providers.values() if p.get("spawn", True)]
    process.wait_workers(len(spawned), timeout=WORKER_WAIT)
    return process


def outcomes(attempts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["provider"], a["outcome"]) for a in attempts]


def priced(kind: str, model: str, prompt: int, completion: int) -> float:
    caps = shipped().lookup(kind, model)
    assert caps.input_price is not None and caps.output_price is not None
    return (prompt * caps.input_price + completion * caps.output_price) / 1_000_000


def oai_error(message: str, type_: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


CREDITS = Reply(status=402, body={"error": {"code": 402, "message": "Insufficient credits"}})
SERVER_ERROR = Reply(status=500, body=oai_error("The server had an error", "server_error", None))
QUOTA = Reply(
    status=429,
    headers={"x-should-retry": "false"},
    body=oai_error("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
)
NOT_FOUND = Reply(
    status=404,
    body=oai_error(
        "The model `gpt-4o-mini` does not exist", "invalid_request_error", "model_not_found"
    ),
)


def test_chain_openai_openrouter_ollama_failover_trail_and_costs(
    broker_factory: Any,
    openai_fake: FakeServer,
    openrouter_fake: FakeServer,
    ollama_fake: FakeServer,
) -> None:
    openai_fake.default = Reply(tokens=["from ", "openai"], prompt_tokens=12)
    openrouter_fake.default = Reply(tokens=["from ", "router"], prompt_tokens=12, cost=0.000042)
    ollama_fake.default = Reply(tokens=["from ", "ollama"], prompt_tokens=12)
    chain = ["oai:gpt-4o-mini", "router:openai/gpt-4o-mini", "local:llama3.2"]
    broker = start(
        broker_factory,
        {
            "oai": provider("openai", openai_fake),
            "router": provider("openrouter", openrouter_fake),
            "local": provider("ollama", ollama_fake),
            "oai2": provider("openai", openai_fake),
        },
        {"chain": chain, "missing": ["oai2:gpt-4o-mini", "local:llama3.2"]},
    )
    with broker.client() as client:
        # the same prompt on each of the three: the cost of each, side by side
        costs = {}
        for name in chain:
            done = client.complete(model=name, prompt="Say hi", timeout=JOB_TIMEOUT)
            assert done.provider == name.partition(":")[0], done.attempts
            costs[name] = (done.cost, done.cost_source, done.usage["prompt_tokens"])
        completion = 2  # two tokens from each fake
        assert costs == {
            "oai:gpt-4o-mini": (
                pytest.approx(priced("openai", "gpt-4o-mini", 12, completion)),
                "priced",
                12,
            ),
            "router:openai/gpt-4o-mini": (0.000042, "reported", 12),  # OpenRouter's, as is
            "local:llama3.2": (0.0, "priced", 12),
        }

        # a bare name is detected (an OpenAI pattern; two such providers, in config order)
        bare = client.complete(model="gpt-4o-mini", prompt="Say hi", timeout=JOB_TIMEOUT)
        assert bare.provider == "oai"
        assert bare.detected == (
            "'gpt-4o-mini' looks like a openai model name: oai (also oai2; tried in config order)"
        )

        # repeat_penalty to OpenAI: with drop_unsupported it is dropped, and the result says so
        dropped = client.complete(
            model="oai:gpt-4o-mini", prompt="x", repeat_penalty=1.1, drop_unsupported=True
        )
        assert dropped.dropped == [{"candidate": "oai:gpt-4o-mini", "params": ["repeat_penalty"]}]
        assert "repeat_penalty" not in openai_fake.requests[-1].body.decode()

        # OpenAI fails with a 5xx, OpenRouter then with quota (402 credits): done on Ollama
        openai_fake.script(SERVER_ERROR)
        openrouter_fake.script(CREDITS)
        result = client.complete(route="chain", prompt="Say hi", timeout=JOB_TIMEOUT)
        assert result.text == "from ollama" and result.provider == "local"
        assert outcomes(result.attempts) == [
            ("oai", "server_error"),
            ("router", "quota_exhausted"),
            ("local", "ok"),
        ]
        assert [a["status_code"] for a in result.attempts[:2]] == [500, 402]
        assert "Insufficient credits" in result.attempts[1]["message"]
        assert (result.cost, result.cost_source) == (0.0, "priced")
        assert result.raw["strategy"] == "first_healthy"
        # quota opened OpenRouter's circuit: the next job skips it; OpenAI serves again
        again = client.complete(route="chain", prompt="Say hi", timeout=JOB_TIMEOUT)
        assert outcomes(again.attempts) == [("oai", "ok")]

        # model not found on one provider moves on to the next
        openai_fake.script(NOT_FOUND)
        moved = client.complete(route="missing", prompt="Say hi", timeout=JOB_TIMEOUT)
        assert moved.provider == "local" and moved.text == "from ollama"
        assert outcomes(moved.attempts) == [("oai2", "not_found"), ("local", "ok")]
        assert "does not exist" in moved.attempts[0]["message"]


def test_cost_for_each_provider_kind_matches_a_hand_computation(
    broker_factory: Any, anthropic_fake: FakeServer, openai_fake: FakeServer
) -> None:
    anthropic_fake.default = Reply(tokens=["a", "b", "c"], prompt_tokens=40)
    openai_fake.default = Reply(tokens=["x", "y"], prompt_tokens=30)
    broker = start(
        broker_factory,
        {
            "claude": provider("anthropic", anthropic_fake),
            "oai": provider(
                "openai",
                openai_fake,
                # a price from the config wins over the shipped one
                catalog={"my-finetune": {"input_price": 3.0, "output_price": 12.0}},
            ),
        },
    )
    with broker.client() as client:
        claude = client.complete(
            model="claude:claude-3-5-haiku-latest", prompt="x", stream=False, timeout=JOB_TIMEOUT
        )
        assert claude.usage["prompt_tokens"] == 40 and claude.usage["completion_tokens"] == 3
        assert claude.cost_source == "priced"
        assert claude.cost == pytest.approx((40 * 0.80 + 3 * 4.00) / 1e6)
        tuned = client.complete(model="oai:my-finetune", prompt="x", timeout=JOB_TIMEOUT)
        assert tuned.cost == pytest.approx((30 * 3.0 + 2 * 12.0) / 1e6)
        unknown = client.complete(model="oai:not-in-any-list", prompt="x", timeout=JOB_TIMEOUT)
        assert (unknown.cost, unknown.cost_source) == (None, "unknown")


def test_images_go_to_the_vision_candidate_or_are_rejected_naming_each(broker_factory: Any) -> None:
    text_only = {"kind": "mock", "catalog": {"*": {"vision": False}}}
    broker = start(
        broker_factory,
        {"text": text_only, "seeing": {"kind": "mock"}, "text2": dict(text_only)},
        {"images": ["text:m", "seeing:m"], "blind": ["text:m", "text2:m"]},
    )
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ]
    with broker.client() as client:
        result = client.complete(route="images", messages=image, timeout=JOB_TIMEOUT)
        assert result.provider == "seeing" and outcomes(result.attempts) == [("seeing", "ok")]
        assert result.skipped == [
            {"candidate": "text:m", "reason": "text:m does not take images (no vision)"}
        ]
        with pytest.raises(ProviderError) as info:
            client.complete(route="blind", messages=image, timeout=JOB_TIMEOUT)
        err = info.value
        assert err.category is ErrorCategory.UNSUPPORTED and not err.attempts
        assert "text:m: text:m does not take images" in err.message
        assert "text2:m: text2:m does not take images" in err.message


def test_client_catalog_api_and_the_models_command(
    broker_factory: Any, openrouter_fake: FakeServer, ollama_fake: FakeServer
) -> None:
    openrouter_fake.models.ids = ["vendor/fake-model-1", "meta-llama/llama-3.1-8b-instruct"]
    ollama_fake.models.ids = ["llava:7b"]
    broker = start(
        broker_factory,
        {
            "router": provider("openrouter", openrouter_fake),
            "local": provider("ollama", ollama_fake),
            "oai": {"kind": "openai", "spawn": False, "models": ["gpt-4o"]},
        },
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "models",
                "--endpoint",
                broker.client_endpoint,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    with broker.client() as client:
        listing = client.models(refresh=True)  # waits for a fetch made after the ask
        names = {(e["provider"], e["model"]) for e in listing["models"]}
        assert ("router", "meta-llama/llama-3.1-8b-instruct") in names
        assert ("local", "llava:7b") in names
        # a provider with no worker (spawn = false) is known from its config and the shipped data
        gpt = client.capabilities("oai", "gpt-4o")
        assert gpt["capabilities"]["context_window"] == 128000 and gpt["sources"] == ["shipped"]
        llama = client.capabilities("router", "meta-llama/llama-3.1-8b-instruct")
        assert llama["sources"] == ["shipped", "live"] and not llama["stale"]
        assert llama["capabilities"]["input_price"] == 1.0  # the fake's live price wins
        seeing = client.find_providers("vision")
        assert {(e["provider"], e["model"]) for e in seeing} == {
            ("local", "llava:7b"),
            ("oai", "gpt-4o"),
        }
        counts = client.count_tokens(model="oai:gpt-4o", prompt="hello there " * 10, max_tokens=5)
        (count,) = counts["counts"]
        assert count["candidate"] == "oai:gpt-4o" and count["context_window"] == 128000
        if not count["exact"]:
            assert count["method"] == "estimate"  # flagged, never passed off as exact
        assert count["estimated_cost"] == pytest.approx((count["tokens"] * 2.5 + 5 * 10.0) / 1e6)
        with pytest.raises(ProviderError, match="unknown capability 'x-ray'"):
            client.find_providers("x-ray")

    table = cli()
    assert table.returncode == 0, table.stderr
    assert (
        "meta-llama/llama-3.1-8b-instruct" in table.stdout
        and "shipped data written 2026-12-02" in table.stdout
    )
    assert "live router: fetched" in table.stdout

    # the fake goes down: the cached data stays in use, marked stale
    openrouter_fake.models.status = 503
    down = cli("--refresh", "--json", "--provider", "router")
    assert down.returncode == 0, down.stderr
    data = json.loads(down.stdout)
    assert {e["model"] for e in data["models"]} >= {"meta-llama/llama-3.1-8b-instruct"}
    assert all(e["stale"] for e in data["models"] if "live" in e["sources"])
    assert data["live"]["router"]["stale"] and "HTTP 503" in data["live"]["router"]["error"]
    assert "STALE" in cli("--provider", "router").stdout

    # back up with a new model: --refresh refetches it
    openrouter_fake.models.status = 200
    openrouter_fake.models.ids = ["vendor/brand-new"]
    before = len(openrouter_fake.model_requests)
    fresh = json.loads(cli("--refresh", "--json", "--provider", "router").stdout)
    assert len(openrouter_fake.model_requests) > before
    assert "vendor/brand-new" in {e["model"] for e in fresh["models"]}
    assert not fresh["live"]["router"]["stale"]
    vision_only = json.loads(cli("--json", "--capability", "vision").stdout)
    assert {e["model"] for e in vision_only["models"]} == {"llava:7b", "gpt-4o"}


def test_count_tokens_is_exact_where_the_provider_counts_and_flagged_where_not(
    broker_factory: Any, anthropic_fake: FakeServer, openai_fake: FakeServer
) -> None:
    broker = start(
        broker_factory,
        {"claude": provider("anthropic", anthropic_fake), "oai": provider("openai", openai_fake)},
        {"both": ["claude:claude-3-5-haiku-latest", "oai:gpt-4o"]},
    )
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one two three four five"},
    ]
    with broker.client() as client:
        counts = client.count_tokens(route="both", messages=messages, max_tokens=20)["counts"]
    claude, oai = counts
    # the fake's tokenizer: a token per word of the system prompt and the text blocks
    assert (claude["tokens"], claude["exact"], claude["method"]) == (7, True, "count_tokens")
    assert claude["estimated_cost"] == pytest.approx((7 * 0.80 + 20 * 4.00) / 1e6)
    (asked,) = [r for r in anthropic_fake.model_requests if r.route.endswith("/count_tokens")]
    body = asked.json()
    assert body["system"] == "be brief" and body["model"] == "claude-3-5-haiku-latest"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one two three four five"}]}
    ]
    assert asked.headers["x-api-key"] == FAKE_KEY
    assert oai["method"] in ("tiktoken", "estimate") and oai["exact"] == (
        oai["method"] == "tiktoken"
    )
