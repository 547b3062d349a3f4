"""The official anthropic SDK against the gateway: messages.create and messages.stream."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.fakes.server import Reply
from tests.gateway_support import ChatStack
from tests.test_http_backends import OPENAI_TOOL_STREAM

pytestmark = pytest.mark.timeout(120)

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def sdk(chat: ChatStack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=chat.gateway.url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", ["mock:echo", "oai:gpt-x", "ant:claude-x"])
def test_messages_create_and_stream_match_zeromq(chat: ChatStack, model: str) -> None:
    messages: list[Any] = [{"role": "user", "content": "Say the words back to me"}]
    client = sdk(chat)
    whole = client.messages.create(model=model, max_tokens=100, messages=messages)
    with client.messages.stream(model=model, max_tokens=100, messages=messages) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    with chat.broker.client() as zmq_client:
        direct = zmq_client.complete(model=model, messages=messages, max_tokens=100)
    assert whole.type == "message" and whole.role == "assistant"
    assert whole.content[0].type == "text" and whole.content[0].text == direct.text
    assert "".join(pieces) == direct.text
    assert final.content[0].type == "text" and final.content[0].text == direct.text
    assert whole.stop_reason == final.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens > 0
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_system_prompt_and_max_tokens(chat: ChatStack) -> None:
    client = sdk(chat)
    reply = client.messages.create(
        model="mock:echo",
        max_tokens=2,
        system="be brief",
        messages=[{"role": "user", "content": "a b c d"}],
    )
    assert reply.content[0].type == "text" and reply.content[0].text == "a b "
    assert reply.stop_reason == "max_tokens"
    client.messages.create(
        model="oai:gpt-x",
        max_tokens=20,
        system=[{"type": "text", "text": "be brief"}],
        messages=[{"role": "user", "content": "hi"}],
        stop_sequences=["END"],
        extra_body={"temperature": 0.5},  # this SDK version no longer offers the argument
    )
    sent = chat.oai.requests[-1].json()
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    limit = sent.get("max_completion_tokens", sent.get("max_tokens"))
    assert (sent["stop"], sent["temperature"], limit) == (["END"], 0.5, 20)


def test_tool_use_whole_and_streamed(chat: ChatStack) -> None:
    chat.oai.default = Reply(raw=OPENAI_TOOL_STREAM)
    client = sdk(chat)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    whole = client.messages.create(
        model="oai:gpt-x",
        max_tokens=100,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert whole.stop_reason == "tool_use"
    (block,) = [b for b in whole.content if b.type == "tool_use"]
    assert (block.id, block.name, block.input) == ("call_4Xz", "get_weather", {"city": "Paris"})
    sent = chat.oai.requests[-1].json()
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    with client.messages.stream(
        model="oai:gpt-x",
        max_tokens=100,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_message()
    (block,) = [b for b in final.content if b.type == "tool_use"]
    assert block.input == {"city": "Paris"} and final.stop_reason == "tool_use"

    chat.oai.default = Reply(tokens=["sunny"])
    follow = client.messages.create(
        model="oai:gpt-x",
        max_tokens=100,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            *messages,
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_4Xz",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_4Xz", "content": "22C"}],
            },
        ],
    )
    assert follow.content[0].type == "text" and follow.content[0].text == "sunny"
    sent_messages = chat.oai.requests[-1].json()["messages"]
    assert sent_messages[1]["tool_calls"][0]["id"] == "call_4Xz"
    assert json.loads(sent_messages[1]["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Paris"
    }
    assert sent_messages[2] == {"role": "tool", "tool_call_id": "call_4Xz", "content": "22C"}


def test_event_sequence_on_the_wire(chat: ChatStack) -> None:
    body = {
        "model": "mock:echo",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "x y"}],
    }
    with httpx.stream("POST", chat.gateway.url + "/v1/messages", json=body) as reply:
        kinds = [line[7:] for line in reply.iter_lines() if line.startswith("event: ")]
    kinds = [k for k in kinds if k != "ping"]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_models_list_in_anthropic_shape(chat: ChatStack) -> None:
    page = sdk(chat).models.list()
    ids = [m.id for m in page.data]
    assert "mock:echo" in ids and "default" in ids
    assert all(m.type == "model" for m in page.data)


def test_missing_max_tokens_is_a_clear_400(chat: ChatStack) -> None:
    reply = httpx.post(
        chat.gateway.url + "/v1/messages",
        json={"model": "mock:echo", "messages": [{"role": "user", "content": "x"}]},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert reply.status_code == 400
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
