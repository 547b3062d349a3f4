"""The official openai SDK against a real gateway process in front of a real broker.

One broker (mock workers plus OpenAI and Anthropic workers on fake servers) and one gateway
serve the whole module; each test scripts the fakes it uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.anthropic_fake import anthropic_server
from tests.fakes.drive import API_ROOT, FAKE_KEY
from tests.fakes.openai_fake import openai_server
from tests.fakes.server import FakeServer, Reply
from tests.gateway_support import GatewayProcess, mock_provider
from tests.harness import BrokerProcess
from tests.test_http_backends import ANTHROPIC_TOOL_STREAM, OPENAI_TOOL_STREAM

pytestmark = pytest.mark.timeout(120)

OAI_KEY_ENV = "LLMRELAY_TEST_GW_OPENAI_KEY"
ANT_KEY_ENV = "LLMRELAY_TEST_GW_ANTHROPIC_KEY"
TOKENS = ["Hé", "llo", ", wö", "rld ", "🙂", " naïve", "!"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@dataclass
class Stack:
    broker: BrokerProcess
    gateway: GatewayProcess
    oai: FakeServer
    ant: FakeServer

    def sdk(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.gateway.base_url, api_key="unused", **kwargs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
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
            yield Stack(broker, gateway, oai, ant)
        finally:
            gateway.stop()
            broker.stop()
            mp.undo()


@pytest.fixture
def s(stack: Stack) -> Iterator[Stack]:
    stack.oai.default = Reply(tokens=list(TOKENS))
    stack.ant.default = Reply(tokens=list(TOKENS))
    yield stack
    stack.oai.default = Reply()
    stack.ant.default = Reply()


def streamed_text(client: openai.OpenAI, **kwargs: Any) -> tuple[str, list[Any]]:
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("model", ["default", "mock:echo", "oai:gpt-x", "ant:claude-x"])
def test_sdk_text_equals_zeromq_client(s: Stack, model: str) -> None:
    messages = [{"role": "user", "content": "Say the words back to me"}]
    sdk = s.sdk()
    whole = sdk.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    text, chunks = streamed_text(sdk, model=model, messages=messages)
    target = {"route": model} if model == "default" else {"model": model}
    with s.broker.client() as client:
        direct = client.complete(messages=messages, **target)
    assert direct.text
    assert whole.choices[0].message.content == direct.text
    assert text == direct.text
    assert whole.choices[0].finish_reason == "stop" and whole.object == "chat.completion"
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


def test_trail_and_provider_headers(s: Stack) -> None:
    raw = s.sdk().chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi there"}]
    )
    assert raw.headers["x-llmrelay-provider"] == "mock"
    assert raw.headers["x-llmrelay-attempts"] == "1"
    assert raw.headers["x-llmrelay-attempt-trail"] == "mock:echo=ok"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.parse().choices[0].message.content == "hi there "


@pytest.mark.parametrize(("model", "fake", "raw"), [
    ("oai:gpt-x", "oai", OPENAI_TOOL_STREAM),
    ("ant:claude-x", "ant", ANTHROPIC_TOOL_STREAM),
])
def test_tool_calls_streamed_and_whole(s: Stack, model: str, fake: str, raw: list[bytes]) -> None:
    server: FakeServer = getattr(s, fake)
    server.default = Reply(raw=raw)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    sdk = s.sdk()
    whole = sdk.chat.completions.create(model=model, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.id == "call_4Xz" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    sent = server.requests[-1].json()
    assert sent["tools"][0]["name" if fake == "ant" else "function"]  # the tools went upstream

    _, chunks = streamed_text(sdk, model=model, messages=messages, tools=TOOLS)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls if c.function] == ["get_weather"]
    assert json.loads("".join(c.function.arguments or "" for c in calls if c.function)) == {
        "city": "Paris"
    }
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip_reaches_provider(s: Stack) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    reply = s.sdk().chat.completions.create(model="oai:gpt-x", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "".join(TOKENS)
    sent = s.oai.requests[-1].json()["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1" and sent[2]["tool_call_id"] == "call_1"


def test_max_tokens_both_spellings(s: Stack) -> None:
    sdk = s.sdk()
    messages = [{"role": "user", "content": "a b c d e f"}]
    new = sdk.chat.completions.create(model="mock:echo", messages=messages, max_completion_tokens=2)  # type: ignore[arg-type]
    old = sdk.chat.completions.create(model="mock:echo", messages=messages, max_tokens=3)  # type: ignore[arg-type]
    both = sdk.chat.completions.create(
        model="mock:echo", messages=messages, max_tokens=5, max_completion_tokens=1  # type: ignore[arg-type]
    )
    assert (new.choices[0].message.content, new.choices[0].finish_reason) == ("a b ", "length")
    assert old.choices[0].message.content == "a b c "
    assert both.choices[0].message.content == "a "  # max_completion_tokens wins


def test_response_format_and_params_reach_provider(s: Stack) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    s.sdk().chat.completions.create(
        model="oai:gpt-x",
        messages=[{"role": "user", "content": "json please"}],
        response_format=schema,  # type: ignore[arg-type]
        temperature=0.3,
        seed=7,
        stop=["END"],
    )
    sent = s.oai.requests[-1].json()
    assert sent["response_format"] == schema
    assert (sent["temperature"], sent["seed"], sent["stop"]) == (0.3, 7, ["END"])


def test_include_usage_adds_one_usage_chunk(s: Stack) -> None:
    sdk = s.sdk()
    messages = [{"role": "user", "content": "one two three"}]
    _, plain = streamed_text(sdk, model="mock:echo", messages=messages)
    _, with_usage = streamed_text(
        sdk, model="mock:echo", messages=messages, stream_options={"include_usage": True}
    )
    assert all(c.usage is None for c in plain)
    last = with_usage[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 3)
    assert all(c.usage is None for c in with_usage[:-1])


def test_sse_wire_ends_with_done(s: Stack) -> None:
    body = {"model": "mock:echo", "stream": True, "messages": [{"role": "user", "content": "x y"}]}
    with httpx.stream("POST", s.gateway.base_url + "/chat/completions", json=body) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_models_list_and_retrieve(s: Stack) -> None:
    sdk = s.sdk()
    ids = {m.id for m in sdk.models.list()}
    assert {"default", "mock:echo", "oai:gpt-x", "ant:claude-x"} <= ids
    assert sdk.models.retrieve("oai:gpt-x").owned_by == "oai"
    with pytest.raises(openai.NotFoundError) as info:
        sdk.models.retrieve("nope:nothing")
    assert info.value.code == "model_not_found"


def test_bad_requests_name_the_field(s: Stack) -> None:
    sdk = s.sdk(max_retries=2)
    messages = [{"role": "user", "content": "x"}]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"n": 2}, "n"),
        ({"temperature": 5}, "temperature"),
        ({"extra_body": {"bogus": 1}}, "bogus"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            sdk.chat.completions.create(model="mock:echo", messages=messages, **extra)  # type: ignore[arg-type]
        assert info.value.param == param, (extra, info.value.body)
        assert param in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="mock:echo", messages=[{"role": "user"}])  # type: ignore[list-item]
    assert info.value.param is not None and "messages[0]" in info.value.param
