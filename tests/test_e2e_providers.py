"""The HTTP provider workers end to end: fake provider server <- worker <- broker <- client.

Every test starts real fake HTTP servers in this process, a real broker process that spawns
and supervises one worker process per provider, and talks to it through the client stub.
API keys reach the workers the way production does it: through environment variables named
by `api_key_env` (or the documented defaults), never through the config file or argv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psutil
import pytest

from protocol.errors import ErrorCategory, ProviderError
from protocol.results import Done, Reset, Token
from tests.fakes.drive import API_ROOT, FAKE_KEY
from tests.fakes.server import FakeServer, Reply
from tests.harness import ROOT, BrokerProcess

pytestmark = pytest.mark.timeout(120)

KINDS = ("openai", "anthropic", "openrouter", "ollama")
KEY_ENV = {
    "openai": "LLMRELAY_TEST_OPENAI_KEY",
    "anthropic": "LLMRELAY_TEST_ANTHROPIC_KEY",
    "openrouter": "LLMRELAY_TEST_OPENROUTER_KEY",
}
MODEL = {
    "openai": "gpt-x",
    "anthropic": "claude-x",
    "openrouter": "vendor/model-x",
    "ollama": "llama-x",
}
JOB_TIMEOUT = 60.0  # a job's deadline: a stuck job fails with a message instead of hanging
WORKER_WAIT = 60.0  # spawning Python workers is slow on a busy 2-core machine

# Text with multi-byte characters, so a wrong UTF-8 path anywhere would show.
TOKENS = ["Hé", "llo", ", wö", "rld ", "🙂", " naïve", "!"]


def oai_error(message: str, type_: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def ant_error(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_1"}


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys live in the environment; spawned workers inherit it from the broker."""
    for env in KEY_ENV.values():
        monkeypatch.setenv(env, FAKE_KEY)


def fake_for(request: pytest.FixtureRequest, kind: str) -> FakeServer:
    fake = request.getfixturevalue(f"{kind}_fake")
    assert isinstance(fake, FakeServer)
    return fake


def provider(kind: str, fake: FakeServer, capacity: int = 4, **options: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {"base_url": fake.url + API_ROOT[kind]}
    if kind in KEY_ENV:
        opts["api_key_env"] = KEY_ENV[kind]
    opts.update(options)
    return {"kind": kind, "capacity": capacity, "options": opts}


def start(
    broker_factory: Any,
    providers: dict[str, dict[str, Any]],
    routes: dict[str, list[str]] | None = None,
    **broker: Any,
) -> BrokerProcess:
    process: BrokerProcess = broker_factory(providers, routes, **broker)
    process.wait_workers(len(providers), timeout=WORKER_WAIT)
    return process


def chain(broker_factory: Any, *members: tuple[str, FakeServer]) -> BrokerProcess:
    """A broker whose route `chain` tries each (kind, fake) in order."""
    return start(
        broker_factory,
        {kind: provider(kind, fake) for kind, fake in members},
        {"chain": [f"{kind}:{MODEL[kind]}" for kind, _ in members]},
    )


def outcomes(attempts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["provider"], a["outcome"]) for a in attempts]


def expected_usage(kind: str, prompt: int, completion: int, cost: float) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if kind == "openrouter":
        usage["cost"] = cost
    return usage


def assert_no_key(broker: BrokerProcess, *keys: str) -> None:
    """No key in any file the broker and its workers wrote, nor in any worker's argv."""
    keys = keys or (FAKE_KEY,)
    files = [p for p in broker.tmp.rglob("*") if p.is_file()]
    assert broker.log_path in files and broker.log_path.stat().st_size > 0
    for path in files:
        text = path.read_text(errors="replace")
        for key in keys:
            assert key not in text, f"API key found in {path.name}"
    for pid in broker.worker_pids() if broker.proc is not None else []:
        try:
            argv = " ".join(psutil.Process(pid).cmdline())
        except psutil.NoSuchProcess:
            continue
        for key in keys:
            assert key not in argv


# --- 1. text and usage, streamed and not -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_and_whole_text_and_usage(
    kind: str, broker_factory: Any, request: pytest.FixtureRequest
) -> None:
    fake = fake_for(request, kind)
    fake.default = Reply(tokens=TOKENS, prompt_tokens=11, completion_tokens=9, cost=0.00123)
    broker = start(broker_factory, {kind: provider(kind, fake)})
    text = "".join(TOKENS)
    usage = expected_usage(kind, 11, 9, 0.00123)
    model = f"{kind}:{MODEL[kind]}"
    with broker.client() as client:
        events = list(client.stream(model=model, prompt="Say hello", timeout=JOB_TIMEOUT))
        assert fake.requests[-1].json()["stream"] is True
        assert not any(isinstance(e, Reset) for e in events)
        assert isinstance(events[-1], Done)
        streamed = "".join(e.text for e in events if isinstance(e, Token))
        result = events[-1].result
        assert streamed == result.text == text
        assert result.usage == usage
        assert result.provider == kind and result.model == MODEL[kind]
        assert result.finish_reason == "stop"
        assert outcomes(result.attempts) == [(kind, "ok")]

        whole = client.complete(model=model, prompt="Say hello", stream=False, timeout=JOB_TIMEOUT)
        assert fake.requests[-1].json()["stream"] is False
        assert whole.text == text
        assert whole.usage == usage
        assert whole.provider == kind and whole.finish_reason == "stop"
    assert len(fake.requests) == 2


# --- 2. parameter mapping ------------------------------------------------------------------


def test_parameters_arrive_in_each_providers_own_names(
    broker_factory: Any, request: pytest.FixtureRequest
) -> None:
    fakes = {kind: fake_for(request, kind) for kind in KINDS}
    broker = start(broker_factory, {kind: provider(kind, fakes[kind]) for kind in KINDS})
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
    ]
    params: dict[str, dict[str, Any]] = {
        "openai": {"max_tokens": 33, "stop": ["END"], "temperature": 0.5, "seed": 7},
        "anthropic": {"max_tokens": 33, "stop": ["END"], "temperature": 0.5, "top_k": 40},
        "openrouter": {"max_tokens": 33, "stop": ["END"], "top_k": 40, "repeat_penalty": 1.2},
        "ollama": {
            "max_tokens": 33,
            "stop": ["END"],
            "temperature": 0.5,
            "top_k": 40,
            "seed": 7,
            "repeat_penalty": 1.2,
        },
    }
    with broker.client() as client:
        for kind in KINDS:
            result = client.complete(
                model=f"{kind}:{MODEL[kind]}",
                messages=messages,
                timeout=JOB_TIMEOUT,
                **params[kind],
            )
            assert result.text == "Hello, world!" and result.provider == kind

    sent = {kind: fakes[kind].requests[-1] for kind in KINDS}
    for kind in KINDS:
        assert len(fakes[kind].requests) == 1, kind
        assert sent[kind].json()["model"] == MODEL[kind]

    openai = sent["openai"].json()
    assert sent["openai"].headers["authorization"] == f"Bearer {FAKE_KEY}"
    assert openai["messages"] == messages
    assert openai["max_completion_tokens"] == 33 and "max_tokens" not in openai
    assert openai["stop"] == ["END"] and openai["temperature"] == 0.5 and openai["seed"] == 7
    assert openai["stream_options"] == {"include_usage": True}

    anthropic = sent["anthropic"].json()
    assert sent["anthropic"].headers["x-api-key"] == FAKE_KEY
    assert "authorization" not in sent["anthropic"].headers
    assert sent["anthropic"].headers["anthropic-version"]
    assert anthropic["system"] == "Be terse."  # the system message moved to the top level
    assert anthropic["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert anthropic["stop_sequences"] == ["END"] and "stop" not in anthropic
    assert anthropic["max_tokens"] == 33 and anthropic["top_k"] == 40
    assert anthropic["temperature"] == 0.5

    openrouter = sent["openrouter"].json()
    assert sent["openrouter"].headers["authorization"] == f"Bearer {FAKE_KEY}"
    assert openrouter["messages"] == messages
    assert openrouter["max_tokens"] == 33 and openrouter["top_k"] == 40
    assert openrouter["repetition_penalty"] == 1.2 and "repeat_penalty" not in openrouter
    assert openrouter["provider"] == {"require_parameters": True}

    ollama = sent["ollama"].json()
    assert "authorization" not in sent["ollama"].headers
    assert ollama["messages"] == messages
    assert ollama["options"] == {
        "num_predict": 33,
        "stop": ["END"],
        "temperature": 0.5,
        "top_k": 40,
        "seed": 7,
        "repeat_penalty": 1.2,
    }
    assert "max_tokens" not in ollama and "stop" not in ollama
    assert_no_key(broker)


# --- 3. error classification through the broker ------------------------------------------


def test_openai_quota_exhausted_fails_over_to_anthropic(
    broker_factory: Any, openai_fake: FakeServer, anthropic_fake: FakeServer
) -> None:
    openai_fake.script(
        Reply(
            status=429,
            headers={"x-should-retry": "false"},
            body=oai_error(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            ),
        )
    )
    anthropic_fake.default = Reply(tokens=["from ", "claude"])
    broker = chain(broker_factory, ("openai", openai_fake), ("anthropic", anthropic_fake))
    with broker.client() as client:
        result = client.complete(route="chain", prompt="x", timeout=JOB_TIMEOUT)
        assert result.text == "from claude" and result.provider == "anthropic"
        assert outcomes(result.attempts) == [("openai", "quota_exhausted"), ("anthropic", "ok")]
        first = result.attempts[0]
        assert first["status_code"] == 429 and "exceeded your current quota" in first["message"]
        assert result.resets == 0
        # Quota is not something waiting fixes: the provider's circuit is open, so the next
        # job goes straight to the second candidate without trying openai again.
        health = client.status()["health"]
        assert health["openai"]["circuit"] == "open"
        again = client.complete(route="chain", prompt="y", timeout=JOB_TIMEOUT)
        assert outcomes(again.attempts) == [("anthropic", "ok")]
    assert len(openai_fake.requests) == 1 and len(anthropic_fake.requests) == 2
    assert [e["provider"] for e in broker.events("circuit_opened")][:1] == ["openai"]
    assert broker.events("failover")


def test_anthropic_credit_balance_400_fails_over(
    broker_factory: Any, openai_fake: FakeServer, anthropic_fake: FakeServer
) -> None:
    # Anthropic reports an empty prepaid balance as a 400 invalid_request_error, not a 402.
    credit = (
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits."
    )
    anthropic_fake.script(Reply(status=400, body=ant_error("invalid_request_error", credit)))
    openai_fake.default = Reply(tokens=["from ", "gpt"])
    broker = chain(broker_factory, ("anthropic", anthropic_fake), ("openai", openai_fake))
    with broker.client() as client:
        result = client.complete(route="chain", prompt="x", timeout=JOB_TIMEOUT)
    assert result.text == "from gpt" and result.provider == "openai"
    assert outcomes(result.attempts) == [("anthropic", "quota_exhausted"), ("openai", "ok")]
    assert result.attempts[0]["status_code"] == 400
    assert "credit balance is too low" in result.attempts[0]["message"]
    assert len(anthropic_fake.requests) == 1


def test_anthropic_529_overloaded_is_retried_after_retry_after_ms(
    broker_factory: Any, anthropic_fake: FakeServer
) -> None:
    anthropic_fake.script(
        Reply(
            status=529,
            headers={"retry-after-ms": "50"},
            body=ant_error("overloaded_error", "Overloaded"),
        )
    )
    anthropic_fake.default = Reply(tokens=["second ", "try"])
    broker = start(broker_factory, {"anthropic": provider("anthropic", anthropic_fake)})
    with broker.client() as client:
        events = list(client.stream(model="anthropic:claude-x", prompt="x", timeout=JOB_TIMEOUT))
        # Failed before any token: the retry is invisible to the caller.
        assert not any(isinstance(e, Reset) for e in events)
        result = events[-1].result
        assert result.text == "second try" and result.resets == 0
        assert outcomes(result.attempts) == [("anthropic", "overloaded"), ("anthropic", "ok")]
        assert result.attempts[0]["status_code"] == 529
        assert result.attempts[0]["retry_after"] == 0.05
        assert client.status()["health"]["anthropic"]["circuit"] == "closed"
    assert len(anthropic_fake.requests) == 2
    delays = [e["delay"] for e in broker.events("retry_scheduled")]
    assert delays == [0.05]


def test_rate_limit_headers_pause_dispatch_until_their_reset(
    broker_factory: Any, openai_fake: FakeServer
) -> None:
    limit = {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "90000"}
    openai_fake.script(
        Reply(
            tokens=["first"],
            headers={
                **limit,
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1s",
            },
        )
    )
    openai_fake.default = Reply(
        tokens=["more"], headers={**limit, "x-ratelimit-remaining-requests": "599"}
    )
    broker = start(broker_factory, {"openai": provider("openai", openai_fake)})
    with broker.client() as client:
        first = client.complete(model="openai:gpt-x", prompt="x", timeout=JOB_TIMEOUT)
        assert first.text == "first"
        assert first.raw["ratelimit"]["requests_remaining"] == 0
        # The pause is set before the broker answers the first job, so it shows at once.
        status = client.status()["providers"]["openai"]
        assert status["paused_for"] > 0
        # No rpm/tpm in the config: the reported limits became the buckets.
        assert (status["rpm"], status["tpm"]) == (600, 90000)
        jobs = [
            {"model": "openai:gpt-x", "prompt": f"job {i}", "timeout": JOB_TIMEOUT}
            for i in range(4)
        ]
        results = list(client.map(jobs, concurrency=4))
        assert not [r for r in results if isinstance(r, ProviderError)], results
        assert [r.text for r in results if not isinstance(r, ProviderError)] == ["more"] * 4
        assert all(
            outcomes(r.attempts) == [("openai", "ok")]
            for r in results
            if not isinstance(r, ProviderError)
        )
    assert len(openai_fake.requests) == 5
    # The next dispatch waited: the provider was paused when the batch arrived, and nothing
    # was rejected with a 429 meanwhile.
    assert not broker.events("retry_scheduled")
    learned = broker.events("rate_limit_learned")
    assert [(e["provider"], e["rpm"], e["tpm"]) for e in learned] == [("openai", 600, 90000)]


def test_auth_failure_fails_over_and_opens_the_circuit(
    broker_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    anthropic_fake: FakeServer,
    openai_fake: FakeServer,
) -> None:
    wrong_key = "sk-ant-wrong-key-ffffffffffffffff"
    monkeypatch.setenv(KEY_ENV["anthropic"], wrong_key)
    openai_fake.default = Reply(tokens=["from ", "openai"])
    broker = start(
        broker_factory,
        {
            "anthropic": provider("anthropic", anthropic_fake),
            "openai": provider("openai", openai_fake),
        },
        {"chain": ["anthropic:claude-x", "openai:gpt-x"]},
    )
    with broker.client() as client:
        result = client.complete(route="chain", prompt="x", timeout=JOB_TIMEOUT)
        assert result.text == "from openai"
        assert outcomes(result.attempts) == [("anthropic", "auth"), ("openai", "ok")]
        assert result.attempts[0]["status_code"] == 401
        assert "invalid x-api-key" in result.attempts[0]["message"]
        health = client.status()["health"]
        assert health["anthropic"]["circuit"] == "open"
        assert health["anthropic"]["state"] == "unhealthy"
        assert health["anthropic"]["last_error"] == "auth"
        assert health["openai"]["circuit"] == "closed"
        again = client.complete(route="chain", prompt="y", timeout=JOB_TIMEOUT)
        assert outcomes(again.attempts) == [("openai", "ok")]
    assert len(anthropic_fake.requests) == 1
    assert anthropic_fake.requests[0].headers["x-api-key"] == wrong_key  # the env var was used
    assert_no_key(broker, wrong_key, FAKE_KEY)


def test_context_length_errors_reach_the_caller_classified(
    broker_factory: Any,
    openai_fake: FakeServer,
    anthropic_fake: FakeServer,
    openrouter_fake: FakeServer,
) -> None:
    rows: dict[str, tuple[FakeServer, Reply, str]] = {
        "openai": (
            openai_fake,
            Reply(
                status=400,
                body=oai_error(
                    "This model's maximum context length is 4097 tokens. "
                    "However, you requested 4120 tokens.",
                    "invalid_request_error",
                    "context_length_exceeded",
                ),
            ),
            "maximum context length is 4097 tokens",
        ),
        "anthropic": (
            anthropic_fake,
            Reply(
                status=400,
                body=ant_error(
                    "invalid_request_error", "prompt is too long: 205351 tokens > 200000 maximum"
                ),
            ),
            "prompt is too long: 205351 tokens",
        ),
        "openrouter": (
            openrouter_fake,
            Reply(
                status=400,
                body={
                    "error": {
                        "code": 400,
                        "message": "This endpoint's maximum context length is 8192 tokens",
                        "metadata": {"error_type": "context_length_exceeded"},
                    }
                },
            ),
            "maximum context length is 8192 tokens",
        ),
    }
    for fake, reply, _ in rows.values():
        fake.default = reply
    broker = start(broker_factory, {kind: provider(kind, row[0]) for kind, row in rows.items()})
    with broker.client() as client:
        for kind, (fake, _, text) in rows.items():
            with pytest.raises(ProviderError) as info:
                client.complete(model=f"{kind}:{MODEL[kind]}", prompt="long", timeout=JOB_TIMEOUT)
            err = info.value
            assert err.category is ErrorCategory.CONTEXT_LENGTH, (kind, err)
            assert err.provider == kind and err.status_code == 400
            assert text in err.message
            assert outcomes(err.attempts) == [(kind, "context_length")]
            assert len(fake.requests) == 1, kind  # never retried on the same model
        # A too-long prompt says nothing about the provider's health.
        health = client.status()["health"]
        for kind in rows:
            assert health[kind]["circuit"] == "closed" and health[kind]["failures"] == 0


def test_more_error_rows_rate_limit_credits_and_missing_model(
    broker_factory: Any,
    openai_fake: FakeServer,
    openrouter_fake: FakeServer,
    ollama_fake: FakeServer,
) -> None:
    openai_fake.script(
        Reply(
            status=429,
            headers={"retry-after-ms": "30"},
            body=oai_error("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
        )
    )
    openrouter_fake.default = Reply(
        status=402, body={"error": {"code": 402, "message": "Insufficient credits"}}
    )
    ollama_fake.default = Reply(
        status=404, body={"error": "model 'llama9' not found, try pulling it first"}
    )
    broker = start(
        broker_factory,
        {
            kind: provider(kind, fake)
            for kind, fake in (
                ("openai", openai_fake),
                ("openrouter", openrouter_fake),
                ("ollama", ollama_fake),
            )
        },
        {"credits": ["openrouter:vendor/model-x", "openai:gpt-x"]},
    )
    with broker.client() as client:
        # 429 rate limit: retried on the same provider after exactly retry-after-ms.
        result = client.complete(model="openai:gpt-x", prompt="x", timeout=JOB_TIMEOUT)
        assert outcomes(result.attempts) == [("openai", "rate_limited"), ("openai", "ok")]
        assert result.attempts[0]["retry_after"] == 0.03
        assert result.attempts[0]["status_code"] == 429
        # 402 (OpenRouter credits): quota exhausted, fail over to the next candidate.
        result = client.complete(route="credits", prompt="x", timeout=JOB_TIMEOUT)
        assert outcomes(result.attempts) == [("openrouter", "quota_exhausted"), ("openai", "ok")]
        assert "Insufficient credits" in result.attempts[0]["message"]
        # 404 model not found with no other candidate: the caller gets not_found.
        with pytest.raises(ProviderError) as info:
            client.complete(model="ollama:llama9", prompt="x", timeout=JOB_TIMEOUT)
        err = info.value
        assert err.category is ErrorCategory.NOT_FOUND
        assert err.provider == "ollama" and err.status_code == 404
        assert "model 'llama9' not found" in err.message
    assert len(openai_fake.requests) == 3
    assert len(openrouter_fake.requests) == len(ollama_fake.requests) == 1
    assert [e["delay"] for e in broker.events("retry_scheduled")][:1] == [0.03]


MID_STREAM = {
    "openai": "server_error",  # an `error` chunk with type server_error
    "anthropic": "overloaded",  # an `event: error` with overloaded_error
    "openrouter": "rate_limited",  # an error chunk with code 429 and finish_reason "error"
    "ollama": "server_error",  # an {"error": ...} NDJSON line
}


@pytest.mark.parametrize("kind", KINDS)
def test_mid_stream_error_restarts_with_a_reset(
    kind: str, broker_factory: Any, request: pytest.FixtureRequest
) -> None:
    first = [f"a{k} " for k in range(6)]
    second = [f"b{k}é " for k in range(5)]
    fake = fake_for(request, kind)
    fake.script(Reply(tokens=first, error_after=3))
    fake.default = Reply(tokens=second)
    broker = start(broker_factory, {kind: provider(kind, fake)})
    with broker.client() as client:
        events = list(
            client.stream(
                model=f"{kind}:{MODEL[kind]}",
                prompt="x",
                on_partial="restart",
                timeout=JOB_TIMEOUT,
            )
        )
    resets = [i for i, e in enumerate(events) if isinstance(e, Reset)]
    assert len(resets) == 1, events
    before = "".join(e.text for e in events[: resets[0]] if isinstance(e, Token))
    after = "".join(e.text for e in events[resets[0] :] if isinstance(e, Token))
    assert before == "".join(first[:3])
    assert after == "".join(second)
    assert isinstance(events[-1], Done)
    result = events[-1].result
    assert result.text == "".join(second) and result.resets == 1
    assert outcomes(result.attempts) == [(kind, MID_STREAM[kind]), (kind, "ok")]
    assert events[resets[0]].attempt == 2
    assert len(fake.requests) == 2


# --- 4. no silent drops ------------------------------------------------------------------


def test_unsupported_parameter_skips_or_rejects_never_drops(
    broker_factory: Any,
    openai_fake: FakeServer,
    ollama_fake: FakeServer,
    anthropic_fake: FakeServer,
) -> None:
    ollama_fake.default = Reply(tokens=["from ", "ollama"])
    broker = start(
        broker_factory,
        {
            "openai": provider("openai", openai_fake),
            "ollama": provider("ollama", ollama_fake),
            "anthropic": provider("anthropic", anthropic_fake),
        },
        {"chain": ["openai:m", "ollama:m"], "hot": ["anthropic:m", "openai:m"]},
    )
    with broker.client() as client:
        result = client.complete(route="chain", prompt="x", repeat_penalty=1.1, timeout=JOB_TIMEOUT)
        assert result.provider == "ollama" and result.text == "from ollama"
        assert outcomes(result.attempts) == [("ollama", "ok")]
        assert len(result.skipped) == 1
        skipped = result.skipped[0]
        assert skipped["candidate"] == "openai:m"
        assert "openai" in skipped["reason"] and "repeat_penalty" in skipped["reason"]
        assert ollama_fake.requests[-1].json()["options"] == {"repeat_penalty": 1.1}

        with pytest.raises(ProviderError) as info:
            client.complete(model="openai:m", prompt="x", repeat_penalty=1.1, timeout=JOB_TIMEOUT)
        err = info.value
        assert err.category is ErrorCategory.UNSUPPORTED and not err.attempts
        assert "repeat_penalty" in err.message and "openai" in err.message

        # A value outside the provider's range (Anthropic's temperature stops at 1.0) is
        # refused at submit by its parameter schema: that candidate is skipped, with the
        # reason, and the next one serves.
        hot = client.complete(route="hot", prompt="x", temperature=1.5, timeout=JOB_TIMEOUT)
        assert outcomes(hot.attempts) == [("openai", "ok")]
        assert hot.skipped[0]["candidate"] == "anthropic:m"
        assert "'temperature'" in hot.skipped[0]["reason"]
        assert "expected float in [0, 1]" in hot.skipped[0]["reason"]
        assert openai_fake.requests[-1].json()["temperature"] == 1.5
    assert not anthropic_fake.requests  # refused before anything was sent
    assert len(openai_fake.requests) == 1  # only the temperature job reached openai


# --- 5. connection pooling ---------------------------------------------------------------


def test_two_hundred_jobs_share_a_pool_of_capacity_connections(
    broker_factory: Any, openai_fake: FakeServer
) -> None:
    openai_fake.default = Reply(tokens=["p", "o", "o", "l"], token_delay=0.002)
    # The broker's own catalog fetch (GET /v1/models, once) would be one more connection
    # from another process; this test counts the worker's pool alone.
    broker = start(
        broker_factory,
        {"openai": provider("openai", openai_fake, capacity=4)},
        catalog_discovery=False,
    )
    jobs = [
        {"model": "openai:gpt-x", "prompt": f"job {i}", "timeout": 90.0, "job_id": f"pool-{i}"}
        for i in range(200)
    ]
    with broker.client() as client:
        results = list(client.map(jobs, concurrency=32))
    failures = [r for r in results if isinstance(r, ProviderError)]
    assert not failures, failures[:3]
    assert len(results) == 200
    assert {r.job_id for r in results} == {j["job_id"] for j in jobs}
    assert all(r.text == "pool" and r.provider == "openai" for r in results)
    assert len(openai_fake.requests) == 200
    assert 1 <= openai_fake.connections <= 4, openai_fake.connections


def test_drain_timeouts_do_not_leak_pool_connections(
    broker_factory: Any, openai_fake: FakeServer
) -> None:
    """drain_grace=0: the drain timer fires while httpx releases the connection, every job.

    It used to leave the connection counted as in use for ever, so after `capacity` jobs
    every request waited for a pool slot until its total timeout.
    """
    spec = provider("openai", openai_fake, capacity=2, drain_grace=0, total_timeout=5)
    broker = start(broker_factory, {"openai": spec})
    with broker.client() as client:
        for i in range(6):
            result = client.complete(
                model="openai:gpt-x", prompt=f"job {i}", max_attempts=1, timeout=JOB_TIMEOUT
            )
            assert result.text == "Hello, world!", i
    assert len(openai_fake.requests) == 6


# --- 6. key hygiene ----------------------------------------------------------------------


def test_api_key_never_reaches_logs_argv_or_errors(
    broker_factory: Any, openai_fake: FakeServer
) -> None:
    broker = start(broker_factory, {"openai": provider("openai", openai_fake)})
    assert FAKE_KEY not in broker.config.read_text()  # only the variable's name is there
    with broker.client() as client:
        ok = client.complete(model="openai:gpt-x", prompt="x", timeout=JOB_TIMEOUT)
        assert ok.text == "Hello, world!"
        assert openai_fake.requests[-1].headers["authorization"] == f"Bearer {FAKE_KEY}"
        # A server that echoes the key back in its error: the caller never sees it.
        openai_fake.script(
            Reply(
                status=401,
                body=oai_error(
                    f"Incorrect API key provided: {FAKE_KEY}.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
        )
        with pytest.raises(ProviderError) as info:
            client.complete(model="openai:gpt-x", prompt="x", timeout=JOB_TIMEOUT)
        err = info.value
        assert err.category is ErrorCategory.AUTH and err.status_code == 401
        assert FAKE_KEY not in str(err) and FAKE_KEY not in repr(err.attempts)
        assert "Incorrect API key provided: ***" in err.message
    assert_no_key(broker)
    broker.stop()  # every process has said all it will say
    assert_no_key(broker)


# --- the CLI -------------------------------------------------------------------------------


def test_cli_submit_against_a_broker(
    broker_factory: Any, monkeypatch: pytest.MonkeyPatch, openai_fake: FakeServer
) -> None:
    # No api_key_env: the documented default variable OPENAI_API_KEY is read.
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    openai_fake.default = Reply(tokens=TOKENS, prompt_tokens=5)
    spec = {"kind": "openai", "capacity": 2, "options": {"base_url": openai_fake.url + "/v1"}}
    broker = start(broker_factory, {"openai": spec})
    text = "".join(TOKENS)

    def submit(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "submit",
                "--endpoint",
                broker.client_endpoint,
                "--model",
                "openai:gpt-x",
                *extra,
                "Say hi",
            ],
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=90,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    for extra in ((), ("--stream",)):
        done = submit(*extra)
        assert done.returncode == 0, done.stderr
        assert done.stdout == text + "\n"
        summary = json.loads(done.stderr.strip().splitlines()[-1])
        assert summary["provider"] == "openai" and summary["attempts"] == 1
        assert summary["usage"] == {
            "prompt_tokens": 5,
            "completion_tokens": len(TOKENS),
            "total_tokens": 5 + len(TOKENS),
        }
        body = openai_fake.requests[-1].json()
        assert body["messages"] == [{"role": "user", "content": "Say hi"}]
        assert body["model"] == "gpt-x"
    assert len(openai_fake.requests) == 2
