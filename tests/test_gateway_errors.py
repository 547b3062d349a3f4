"""Each failure row: the status and body the gateway answers, the exception class the official
SDK raises, and how often the SDK tries (it retries only where the real API would let it).

Failures are scripted per request through the mock worker (`metadata.mock.fail`), so one
broker and one gateway serve every row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import pytest

from protocol.errors import ErrorCategory
from tests.gateway_support import KEYS_ENV, GatewayProcess, mock_provider
from tests.harness import BrokerProcess

pytestmark = pytest.mark.timeout(180)

MESSAGES = [{"role": "user", "content": "one two three four"}]


@dataclass
class Counter:
    """Counts the HTTP requests an SDK client sends (its retries included)."""

    paths: list[str] = field(default_factory=list)

    def hook(self, request: Any) -> None:  # an httpx (openai) or httpx2 (anthropic) request
        self.paths.append(request.url.path)

    def client(self) -> httpx.Client:
        return httpx.Client(event_hooks={"request": [self.hook]})

    def anthropic_client(self) -> Any:
        return anthropic.DefaultHttpxClient(event_hooks={"request": [self.hook]})


@dataclass
class Stack:
    broker: BrokerProcess
    gateway: GatewayProcess

    def openai(self, counter: Counter, max_retries: int = 2) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.base_url,
            api_key="unused",
            max_retries=max_retries,
            http_client=counter.client(),
        )

    def anthropic(self, counter: Counter) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.gateway.url,
            api_key="unused",
            max_retries=2,
            http_client=counter.anthropic_client(),
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gwerr")
    providers = {
        "mock": mock_provider(),
        "paced": {**mock_provider(), "rpm": 1},  # one request, then a minute's wait
        "single": mock_provider(capacity=1),
        "spare": mock_provider(),  # where the "pair" route fails over to
        # auth, permission and quota failures hold their provider for minutes: one each
        **{name: mock_provider(capacity=2) for name in HELD.values()},
    }
    broker = BrokerProcess(
        tmp,
        providers,
        {"default": ["mock:echo"], "pair": ["mock:echo", "spare:echo"]},
        circuit_failures=100_000,  # scripted failures must not open the mock's circuit
        retry_base_delay=0.01,
        retry_max_delay=0.05,
    )
    # The job deadline is shorter than the paced provider's wait: no candidate can run it.
    gateway = GatewayProcess(broker, request_timeout=20.0)
    try:
        broker.start()
        broker.wait_workers(4 + len(HELD), timeout=90)
        gateway.start()
        yield Stack(broker, gateway)
    finally:
        gateway.stop()
        broker.stop()


# (category, api) -> the provider that fails that way; the broker then holds it for minutes
HELD = {
    ("auth", "openai"): "auth-o",
    ("permission", "openai"): "perm-o",
    ("quota_exhausted", "openai"): "quota-o",
    ("auth", "anthropic"): "auth-a",
    ("permission", "anthropic"): "perm-a",
    ("quota_exhausted", "anthropic"): "quota-a",
}


def target(category: str, api: str) -> str:
    return f"{HELD.get((category, api), 'mock')}:echo"


def fail(category: str, delay: float = 0.0, **rule: Any) -> dict[str, Any]:
    script: dict[str, Any] = {"fail": [{"category": category, **rule}]}
    if delay:
        script["token_delay"] = delay  # so the failure comes after the response has begun
    return {"metadata": {"mock": script}}


# category, status, openai class, openai code, SDK requests (1 = not retried). Written out
# from the SDK's rules and OpenAI's own spellings, not read from protocol.http_errors: the
# point is to check that table. Every category has a row (test_every_category_has_sdk_rows).
OPENAI_ROWS = [
    ("invalid_request", 400, openai.BadRequestError, None, 1),
    ("context_length", 400, openai.BadRequestError, "context_length_exceeded", 1),
    ("content_filter", 400, openai.BadRequestError, "content_filter", 1),
    ("unsupported", 400, openai.BadRequestError, "unsupported_parameter", 1),
    ("auth", 401, openai.AuthenticationError, "invalid_api_key", 1),
    ("permission", 403, openai.PermissionDeniedError, "request_forbidden", 1),
    ("not_found", 404, openai.NotFoundError, "model_not_found", 1),
    ("rate_limited", 429, openai.RateLimitError, "rate_limit_exceeded", 3),
    ("quota_exhausted", 429, openai.RateLimitError, "insufficient_quota", 1),
    ("broker_busy", 503, openai.InternalServerError, "broker_busy", 3),
    ("overloaded", 503, openai.InternalServerError, "overloaded", 3),
    ("no_provider", 503, openai.InternalServerError, "no_provider", 3),
    ("broker_unreachable", 503, openai.InternalServerError, "broker_unreachable", 3),
    ("server_error", 500, openai.InternalServerError, "server_error", 3),
    ("internal", 500, openai.InternalServerError, "internal", 3),
    ("worker_lost", 500, openai.InternalServerError, "server_error", 3),
    ("protocol", 502, openai.InternalServerError, "bad_gateway", 3),
    ("network", 502, openai.InternalServerError, "bad_gateway", 3),
    ("deadline", 504, openai.InternalServerError, "timeout", 3),
    ("cancelled", 499, openai.APIStatusError, "cancelled", 1),
]


@pytest.mark.parametrize(("category", "status", "cls", "code", "requests"), OPENAI_ROWS)
def test_openai_error_rows(
    stack: Stack, category: str, status: int, cls: type, code: str | None, requests: int
) -> None:
    counter = Counter()
    sdk = stack.openai(counter)
    with pytest.raises(cls) as info:
        sdk.chat.completions.create(
            model=target(category, "openai"),
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_body=fail(category, retry_after=0.05),
        )
    err = info.value
    assert type(err) is cls and isinstance(err, openai.APIStatusError)
    assert err.status_code == status
    assert err.code == code
    assert err.response.headers["x-request-id"].startswith("req_")
    assert err.response.headers["x-llmrelay-attempts"] != "0"
    assert len(counter.paths) == requests, (category, counter.paths)
    if category == "quota_exhausted":
        assert err.response.headers["x-should-retry"] == "false"
        assert err.type == "insufficient_quota"
    if category == "rate_limited":
        assert "retry-after" in err.response.headers


def test_unknown_model_is_404_model_not_found(stack: Stack) -> None:
    counter = Counter()
    with pytest.raises(openai.NotFoundError) as info:
        stack.openai(counter).chat.completions.create(model="gpt-nothing", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found" and len(counter.paths) == 1


def test_no_candidate_is_503_with_the_recovery_time(stack: Stack) -> None:
    """The paced provider's next slot is a minute away, past the job's deadline: a 503 that
    tells the SDK when to come back (it would wait that long before its retry)."""
    counter = Counter()
    sdk = stack.openai(counter, max_retries=0)
    first = sdk.chat.completions.create(model="paced:echo", messages=MESSAGES)  # type: ignore[arg-type]
    assert first.choices[0].message.content  # the one request of this minute
    with pytest.raises(openai.InternalServerError) as info:
        sdk.chat.completions.create(model="paced:echo", messages=MESSAGES)  # type: ignore[arg-type]
    err = info.value
    assert err.status_code == 503 and err.code == "no_provider"
    assert 30 <= int(err.response.headers["retry-after"]) <= 61
    assert "x-should-retry" not in err.response.headers  # the SDK's own rule: 503 is retried
    assert len(counter.paths) == 2


def test_failure_after_first_token_is_an_error_event(stack: Stack) -> None:
    counter = Counter()
    sdk = stack.openai(counter)
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in sdk.chat.completions.create(
            model="mock:echo",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_body=fail("server_error", delay=0.2, after=2),
        ):
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "one two "
    assert "injected failure" in info.value.message
    assert len(counter.paths) == 1  # an error after 200 is not retried by the SDK
    failing = fail("server_error", delay=0.2, after=2)
    body = {"model": "mock:echo", "stream": True, "messages": MESSAGES, **failing}
    with httpx.stream("POST", stack.gateway.base_url + "/chat/completions", json=body) as reply:
        lines = [line for line in reply.iter_lines() if line]
    assert reply.status_code == 200
    assert lines[-1].startswith('data: {"error"') and "data: [DONE]" not in lines


def test_failover_before_first_token_is_invisible(stack: Stack) -> None:
    counter = Counter()
    chunks = list(
        stack.openai(counter).chat.completions.create(
            model="mock:echo",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_body=fail("server_error", attempt=1, after=0),
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four " and len(counter.paths) == 1
    trail = chunks[-1].model_extra["x_llmrelay"]["attempts"]  # type: ignore[index]
    assert [a["outcome"] for a in trail] == ["server_error", "ok"]


def test_stream_headers_name_the_attempt_that_got_through(stack: Stack) -> None:
    """The response starts with the first token, so its headers carry the trail up to the
    attempt answering; the failover before it stays invisible in the stream itself."""
    counter = Counter()
    sdk = stack.openai(counter)
    with sdk.chat.completions.with_streaming_response.create(
        model="pair",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        # mock fails over to spare, whose tokens are slow enough that the job is still
        # running when the response starts (had it ended, the trail would end "=ok")
        extra_body=fail("not_found", delay=0.2, attempt=1, after=0),
    ) as response:
        headers = response.headers
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four " and len(counter.paths) == 1
    assert headers["x-llmrelay-provider"] == "spare"
    assert headers["x-llmrelay-model"] == "echo"
    assert headers["x-llmrelay-attempts"] == "2"
    assert headers["x-llmrelay-attempt-trail"] == "mock:echo=not_found,spare:echo=answering"
    trail = chunks[-1].model_extra["x_llmrelay"]["attempts"]  # type: ignore[index]
    assert [a["outcome"] for a in trail] == ["not_found", "ok"]  # the whole trail, at the end

    plain = sdk.chat.completions.with_raw_response.create(
        model="mock:echo",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    assert plain.headers["x-llmrelay-provider"] == "mock"
    assert plain.headers["x-llmrelay-attempts"] == "1"
    assert "".join(c.choices[0].delta.content or "" for c in plain.parse() if c.choices)

    body = {"model": "pair", "max_tokens": 50, "stream": True, "messages": MESSAGES}
    body.update(fail("not_found", attempt=1, after=0))
    with httpx.stream("POST", stack.gateway.url + "/v1/messages", json=body) as reply:
        events = [line for line in reply.iter_lines() if line.startswith("event:")]
    assert reply.status_code == 200 and reply.headers["x-llmrelay-provider"] == "spare"
    assert events[0] == "event: message_start" and events[-1] == "event: message_stop"


@pytest.mark.parametrize(
    ("category", "status", "cls", "requests"),
    [
        ("invalid_request", 400, openai.BadRequestError, 1),
        ("rate_limited", 429, openai.RateLimitError, 3),
        ("server_error", 500, openai.InternalServerError, 3),
    ],
)
def test_stream_failing_before_its_first_token_is_an_http_error(
    stack: Stack, category: str, status: int, cls: type, requests: int
) -> None:
    """Not a 200 with an error event: the status the SDK raises (and retries) by."""
    counter = Counter()
    with pytest.raises(cls) as info:
        stack.openai(counter).chat.completions.create(
            model=target(category, "openai"),
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_body=fail(category, retry_after=0.05),
        )
    assert type(info.value) is cls and info.value.status_code == status
    assert len(counter.paths) == requests


# category, anthropic status, class, error type, SDK requests (the SDK picks its class from
# the status alone; 529 overloaded is retried, a 402 billing_error is not).
ANTHROPIC_ROWS = [
    ("invalid_request", 400, anthropic.BadRequestError, "invalid_request_error", 1),
    ("context_length", 400, anthropic.BadRequestError, "invalid_request_error", 1),
    ("content_filter", 400, anthropic.BadRequestError, "invalid_request_error", 1),
    ("unsupported", 400, anthropic.BadRequestError, "invalid_request_error", 1),
    ("auth", 401, anthropic.AuthenticationError, "authentication_error", 1),
    ("permission", 403, anthropic.PermissionDeniedError, "permission_error", 1),
    ("not_found", 404, anthropic.NotFoundError, "not_found_error", 1),
    ("rate_limited", 429, anthropic.RateLimitError, "rate_limit_error", 3),
    ("quota_exhausted", 402, anthropic.PaymentRequiredError, "billing_error", 1),
    ("broker_busy", 529, anthropic.OverloadedError, "overloaded_error", 3),
    ("overloaded", 529, anthropic.OverloadedError, "overloaded_error", 3),
    ("no_provider", 503, anthropic.ServiceUnavailableError, "api_error", 3),
    ("broker_unreachable", 503, anthropic.ServiceUnavailableError, "api_error", 3),
    ("server_error", 500, anthropic.InternalServerError, "api_error", 3),
    ("internal", 500, anthropic.InternalServerError, "api_error", 3),
    ("worker_lost", 500, anthropic.InternalServerError, "api_error", 3),
    ("protocol", 502, anthropic.InternalServerError, "api_error", 3),
    ("network", 502, anthropic.InternalServerError, "api_error", 3),
    ("deadline", 504, anthropic.GatewayTimeoutError, "timeout_error", 3),
    ("cancelled", 499, anthropic.ClientClosedRequestError, "api_error", 1),
]


def test_every_category_has_sdk_rows() -> None:
    every = {c.value for c in ErrorCategory}
    assert {row[0] for row in OPENAI_ROWS} == every
    assert {row[0] for row in ANTHROPIC_ROWS} == every


@pytest.mark.parametrize(("category", "status", "cls", "kind", "requests"), ANTHROPIC_ROWS)
def test_anthropic_error_rows(
    stack: Stack, category: str, status: int, cls: type, kind: str, requests: int
) -> None:
    counter = Counter()
    with pytest.raises(cls) as info:
        stack.anthropic(counter).messages.create(
            model=target(category, "anthropic"),
            max_tokens=50,
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_body=fail(category, retry_after=0.05),
        )
    err = info.value
    assert type(err) is cls and err.status_code == status
    assert isinstance(err.body, dict)
    assert err.body["type"] == "error" and err.body["error"]["type"] == kind
    assert err.response.headers["request-id"] == err.body["request_id"]
    assert len(counter.paths) == requests, (category, counter.paths)


def test_anthropic_failure_mid_stream_is_an_error_event(stack: Stack) -> None:
    counter = Counter()
    text: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        stack.anthropic(counter).messages.stream(
            model="mock:echo",
            max_tokens=50,
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_body=fail("overloaded", delay=0.2, after=2),
        ) as stream,
    ):
        for piece in stream.text_stream:
            text.append(piece)
    assert "".join(text) == "one two "
    assert "injected failure" in str(info.value)
    assert len(counter.paths) == 1


@pytest.fixture
def keyed(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayProcess]:
    keys = "alice:sk-alice-0123456789,bob:sk-bob-9876543210"
    gateway = GatewayProcess(stack.broker, env={KEYS_ENV: keys}, api_keys_env=KEYS_ENV)
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


def test_api_keys_gate_entry_and_name_the_client(stack: Stack, keyed: GatewayProcess) -> None:
    counter = Counter()
    sdk = openai.OpenAI(
        base_url=keyed.base_url, api_key="sk-wrong", max_retries=2, http_client=counter.client()
    )
    with pytest.raises(openai.AuthenticationError) as info:
        sdk.chat.completions.create(model="mock:echo", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "invalid_api_key"
    assert len(counter.paths) == 1  # never retried
    bare = httpx.post(
        keyed.base_url + "/chat/completions", json={"model": "mock:echo", "messages": MESSAGES}
    )
    assert bare.status_code == 401
    assert bare.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=keyed.url, api_key="sk-wrong", max_retries=0).messages.create(
            model="mock:echo",
            max_tokens=5,
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    ok = openai.OpenAI(base_url=keyed.base_url, api_key="sk-bob-9876543210", max_retries=0)
    assert ok.chat.completions.create(model="mock:echo", messages=MESSAGES).choices  # type: ignore[arg-type]
    ant = anthropic.Anthropic(base_url=keyed.url, api_key="sk-alice-0123456789", max_retries=0)
    assert ant.messages.create(model="mock:echo", max_tokens=5, messages=MESSAGES).content  # type: ignore[arg-type]
    log = keyed.log_path.read_text()
    assert "sk-alice" not in log and "sk-bob" not in log and "sk-wrong" not in log


def test_each_key_queues_under_its_client_name(stack: Stack, keyed: GatewayProcess) -> None:
    """bob holds the one slot of `single`; alice's job waits in the queue named after her."""
    slow = {"metadata": {"mock": {"token_count": 400, "token_delay": 0.05}}}
    url = keyed.base_url + "/chat/completions"
    bob_body = {"model": "single:echo", "stream": True, "messages": MESSAGES, **slow}
    alice_body = {"model": "single:echo", "messages": MESSAGES}
    alice: list[httpx.Response] = []

    def alice_asks() -> None:
        headers = {"authorization": "Bearer sk-alice-0123456789"}
        alice.append(httpx.post(url, json=alice_body, headers=headers, timeout=60))

    headers = {"authorization": "Bearer sk-bob-9876543210"}
    with httpx.stream("POST", url, json=bob_body, headers=headers, timeout=30) as bob:
        lines = bob.iter_lines()  # kept: dropping the iterator would close the connection
        first = next(lines)  # bob's job holds the slot
        assert bob.status_code == 200, first
        thread = threading.Thread(target=alice_asks)
        thread.start()
        queues: dict[str, Any] = {}
        with stack.broker.client() as client:
            for _ in range(200):
                queues = client.status()["queues"]
                if "n:alice" in queues:
                    break
                time.sleep(0.05)
        assert queues == {"n:alice": 1}
    thread.join(timeout=60)  # bob went away: his job is cancelled and alice's runs
    assert alice and alice[0].status_code == 200
    assert alice[0].json()["choices"][0]["message"]["content"] == "one two three four "
