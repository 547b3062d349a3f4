"""The official openai SDK against a real gateway process in front of a real broker.

One broker (mock workers plus OpenAI and Anthropic workers on fake servers) and one gateway
serve the whole module; each test scripts the fakes it uses.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.server import FakeServer, Reply
from tests.gateway_support import TOKENS, ChatStack
from tests.test_http_backends import ANTHROPIC_TOOL_STREAM, OPENAI_TOOL_STREAM

pytestmark = pytest.mark.timeout(120)

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


def streamed_text(client: openai.OpenAI, **kwargs: Any) -> tuple[str, list[Any]]:
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("model", ["default", "mock:echo", "oai:gpt-x", "ant:claude-x"])
def test_sdk_text_equals_zeromq_client(chat: ChatStack, model: str) -> None:
    messages = [{"role": "user", "content": "Say the words back to me"}]
    sdk = chat.sdk()
    whole = sdk.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    text, chunks = streamed_text(sdk, model=model, messages=messages)
    target = {"route": model} if model == "default" else {"model": model}
    with chat.broker.client() as client:
        direct = client.complete(messages=messages, **target)
    assert direct.text
    assert whole.choices[0].message.content == direct.text
    assert text == direct.text
    assert whole.choices[0].finish_reason == "stop" and whole.object == "chat.completion"
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


def test_trail_and_provider_headers(chat: ChatStack) -> None:
    raw = chat.sdk().chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi there"}]
    )
    assert raw.headers["x-llmrelay-provider"] == "mock"
    assert raw.headers["x-llmrelay-attempts"] == "1"
    assert raw.headers["x-llmrelay-attempt-trail"] == "mock:echo=ok"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.parse().choices[0].message.content == "hi there "


@pytest.mark.parametrize(
    ("model", "fake", "raw"),
    [
        ("oai:gpt-x", "oai", OPENAI_TOOL_STREAM),
        ("ant:claude-x", "ant", ANTHROPIC_TOOL_STREAM),
    ],
)
def test_tool_calls_streamed_and_whole(
    chat: ChatStack, model: str, fake: str, raw: list[bytes]
) -> None:
    server: FakeServer = getattr(chat, fake)
    server.default = Reply(raw=raw)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    sdk = chat.sdk()
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


def test_tool_result_round_trip_reaches_provider(chat: ChatStack) -> None:
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
    reply = chat.sdk().chat.completions.create(model="oai:gpt-x", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "".join(TOKENS)
    sent = chat.oai.requests[-1].json()["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1" and sent[2]["tool_call_id"] == "call_1"


def test_max_tokens_both_spellings(chat: ChatStack) -> None:
    sdk = chat.sdk()
    messages = [{"role": "user", "content": "a b c d e f"}]
    new = sdk.chat.completions.create(model="mock:echo", messages=messages, max_completion_tokens=2)  # type: ignore[arg-type]
    old = sdk.chat.completions.create(model="mock:echo", messages=messages, max_tokens=3)  # type: ignore[arg-type]
    both = sdk.chat.completions.create(
        model="mock:echo",
        messages=messages,
        max_tokens=5,
        max_completion_tokens=1,  # type: ignore[arg-type]
    )
    assert (new.choices[0].message.content, new.choices[0].finish_reason) == ("a b ", "length")
    assert old.choices[0].message.content == "a b c "
    assert both.choices[0].message.content == "a "  # max_completion_tokens wins


def test_response_format_and_params_reach_provider(chat: ChatStack) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    chat.sdk().chat.completions.create(
        model="oai:gpt-x",
        messages=[{"role": "user", "content": "json please"}],
        response_format=schema,  # type: ignore[arg-type]
        temperature=0.3,
        seed=7,
        stop=["END"],
    )
    sent = chat.oai.requests[-1].json()
    assert sent["response_format"] == schema
    assert (sent["temperature"], sent["seed"], sent["stop"]) == (0.3, 7, ["END"])


def test_include_usage_adds_one_usage_chunk(chat: ChatStack) -> None:
    sdk = chat.sdk()
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


def test_sse_wire_ends_with_done(chat: ChatStack) -> None:
    body = {"model": "mock:echo", "stream": True, "messages": [{"role": "user", "content": "x y"}]}
    with httpx.stream("POST", chat.gateway.base_url + "/chat/completions", json=body) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_models_list_and_retrieve(chat: ChatStack) -> None:
    sdk = chat.sdk()
    ids = {m.id for m in sdk.models.list()}
    assert {"default", "mock:echo", "oai:gpt-x", "ant:claude-x"} <= ids
    assert sdk.models.retrieve("oai:gpt-x").owned_by == "oai"
    with pytest.raises(openai.NotFoundError) as info:
        sdk.models.retrieve("nope:nothing")
    assert info.value.code == "model_not_found"


def test_bad_requests_name_the_field(chat: ChatStack) -> None:
    sdk = chat.sdk(max_retries=2)
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
