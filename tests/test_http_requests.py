"""Request mapping: every feature a provider claims reaches its request; nothing is dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.errors import ErrorCategory as C
from protocol.errors import ProviderError
from protocol.job import Job
from workers.backend import ALL_FEATURES
from workers.http import HttpBackend
from workers.registry import backend_class
from workers.spec import ProviderSpec

KINDS = ["openai", "anthropic", "openrouter", "ollama"]
PNG = "data:image/png;base64,iVBORw0KGgo="
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
SAMPLES: dict[str, Any] = {
    "max_tokens": 77,
    "temperature": 0.55,
    "top_p": 0.91,
    "top_k": 41,
    "stop": ["END"],
    "seed": 4242,
    "presence_penalty": 0.33,
    "frequency_penalty": 0.27,
    "repeat_penalty": 1.17,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object", "title": "Answer"}},
    },
    "tools": [TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
}


def backend(kind: str, **options: Any) -> HttpBackend:
    b = backend_class(kind)(ProviderSpec(kind, kind, options=options))
    assert isinstance(b, HttpBackend)
    return b


def job(messages: list[dict[str, Any]] | None = None, stream: bool = True, **params: Any) -> Job:
    messages = messages or [{"role": "user", "content": "hi"}]
    return Job(id="j", messages=messages, model="m", params=params, stream=stream)


def body(kind: str, j: Job, **options: Any) -> dict[str, Any]:
    return backend(kind, **options).build_body(j, "m")


def mentions(value: Any, tree: Any) -> bool:
    """True if `value` (or, for a mapping/list, a distinctive leaf of it) occurs in `tree`."""
    text = json.dumps(tree)
    if isinstance(value, dict | list):
        leaves = [json.dumps(v) for v in _leaves(value)]
        return any(leaf in text for leaf in leaves)
    return json.dumps(value) in text


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


@pytest.mark.parametrize("kind", KINDS)
def test_every_claimed_feature_reaches_the_request(kind: str) -> None:
    features = backend(kind).features
    assert features <= ALL_FEATURES
    plain = body(kind, job())
    for name in sorted(features - {"vision"}):
        mapped = body(kind, job(**{name: SAMPLES[name]}))
        assert mapped != plain, f"{kind} claims {name} but does not send it"
        assert mentions(SAMPLES[name], mapped), f"{kind}: {name} value missing from the request"
    if "vision" in features:
        content = [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": PNG}},
        ]
        mapped = body(kind, job([{"role": "user", "content": content}]))
        assert "iVBORw0KGgo=" in json.dumps(mapped)


def test_features_leave_out_what_a_provider_cannot_honour() -> None:
    assert not {"top_k", "repeat_penalty"} & backend("openai").features
    assert (
        not {"seed", "presence_penalty", "frequency_penalty", "repeat_penalty"}
        & backend("anthropic").features
    )
    assert "tool_choice" not in backend("ollama").features
    assert {"top_k", "repeat_penalty"} <= backend("openrouter").features


# -- OpenAI and compatible servers -----------------------------------------------------------


def test_openai_request() -> None:
    b = body("openai", job(max_tokens=10, stop=["x"], seed=1))
    assert b["max_completion_tokens"] == 10 and "max_tokens" not in b
    assert b["stream"] is True and b["stream_options"] == {"include_usage": True}
    assert b["messages"] == [{"role": "user", "content": "hi"}]
    assert "stream_options" not in body("openai", job(stream=False))


def test_openai_compatible_server_options() -> None:
    b = body(
        "openai",
        job(max_tokens=10),
        max_tokens_field="max_tokens",
        include_usage=False,
        extra_body={"cache_prompt": True},
    )
    assert b["max_tokens"] == 10 and "max_completion_tokens" not in b
    assert "stream_options" not in b and b["cache_prompt"] is True


def test_openai_more_than_four_stop_sequences_is_unsupported() -> None:
    with pytest.raises(ProviderError) as caught:
        body("openai", job(stop=["a", "b", "c", "d", "e"]))
    assert caught.value.category is C.UNSUPPORTED


def test_openai_subclass_hooks() -> None:
    from catalog.schemas import SCHEMAS, Schema, schema_features
    from workers.providers.openai import OpenAIBackend

    compat_schema = Schema("compat", SCHEMAS["llamacpp"].params)  # OpenAI names + extras

    class Compat(OpenAIBackend):
        kind = "compat"
        default_base_url = "http://127.0.0.1:9999/v1"
        key_required = False
        schema = compat_schema
        features = schema_features(compat_schema)

    compat = Compat(ProviderSpec("c", "compat"))
    assert compat.base_url == "http://127.0.0.1:9999/v1"
    b = compat.build_body(job(top_k=5, repeat_penalty=1.2, max_tokens=3), "m")
    assert (b["top_k"], b["repeat_penalty"], b["max_tokens"]) == (5, 1.2, 3)


# -- Anthropic ------------------------------------------------------------------------------


def test_anthropic_request() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be terse."},
        {"role": "system", "content": [{"type": "text", "text": "No emoji."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Two pictures"},
                {"type": "image_url", "image_url": {"url": PNG}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
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
        {"role": "user", "content": "and tomorrow?"},
    ]
    b = body("anthropic", job(messages, stop=["END"], tools=[TOOL], tool_choice="required"))
    assert b["system"] == "Be terse.\n\nNo emoji."
    assert b["max_tokens"] == 4096  # required by the API: the default applies
    assert b["stop_sequences"] == ["END"] and "stop" not in b
    assert b["tool_choice"] == {"type": "any"}
    assert b["tools"] == [
        {
            "name": "get_weather",
            "input_schema": TOOL["function"]["parameters"],
            "description": "Weather for a city",
        }
    ]
    user, assistant, results = b["messages"]
    assert user["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert user["content"][2]["source"] == {"type": "url", "url": "https://example.com/cat.jpg"}
    assert assistant["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    # The tool result and the next user text share one user turn.
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "text", "text": "and tomorrow?"},
        ],
    }


def test_anthropic_max_tokens_default_from_options() -> None:
    assert body("anthropic", job(), max_tokens=123)["max_tokens"] == 123
    assert body("anthropic", job(max_tokens=9), max_tokens=123)["max_tokens"] == 9


@pytest.mark.parametrize(
    "params",
    [{"temperature": 1.5}, {"response_format": {"type": "json_object"}}],
    ids=["temperature>1", "json_object"],
)
def test_anthropic_refuses_what_it_cannot_express(params: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as caught:
        body("anthropic", job(**params))
    assert caught.value.category is C.UNSUPPORTED


# -- OpenRouter -----------------------------------------------------------------------------


def test_openrouter_request() -> None:
    b = body("openrouter", job(max_tokens=5, top_k=3, repeat_penalty=1.1), referer="https://x")
    assert (b["max_tokens"], b["top_k"], b["repetition_penalty"]) == (5, 3, 1.1)
    # Without this OpenRouter silently ignores parameters the routed model lacks.
    assert b["provider"]["require_parameters"] is True
    assert "stream_options" not in b  # usage is always sent
    headers = backend("openrouter", referer="https://x", title="relay").extra_headers()
    assert headers == {"HTTP-Referer": "https://x", "X-Title": "relay"}


def test_openrouter_repeat_penalty_out_of_range() -> None:
    with pytest.raises(ProviderError) as caught:
        body("openrouter", job(repeat_penalty=3.0))
    assert caught.value.category is C.UNSUPPORTED


# -- Ollama ---------------------------------------------------------------------------------


def test_ollama_request() -> None:
    content = [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": PNG}}]
    params: dict[str, Any] = {
        "max_tokens": 9,
        "stop": ["x"],
        "top_k": 4,
        "repeat_penalty": 1.2,
        "seed": 3,
    }
    b = body("ollama", job([{"role": "user", "content": content}], **params), keep_alive="5m")
    assert b["options"] == {
        "num_predict": 9,
        "stop": ["x"],
        "top_k": 4,
        "repeat_penalty": 1.2,
        "seed": 3,
    }
    assert b["messages"] == [{"role": "user", "content": "what?", "images": ["iVBORw0KGgo="]}]
    assert b["stream"] is True and b["keep_alive"] == "5m"
    assert body("ollama", job(stream=False))["stream"] is False  # Ollama streams by default
    assert body("ollama", job(response_format={"type": "json_object"}))["format"] == "json"
    schema = body("ollama", job(response_format=SAMPLES["response_format"]))["format"]
    assert schema == {"type": "object", "title": "Answer"}


def test_ollama_image_by_url_is_unsupported() -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    with pytest.raises(ProviderError) as caught:
        body("ollama", job([{"role": "user", "content": content}]))
    assert caught.value.category is C.UNSUPPORTED


@pytest.mark.parametrize(
    ("env", "url"),
    [
        (None, "http://127.0.0.1:11434"),
        ("gpu-box", "http://gpu-box:11434"),
        ("0.0.0.0:9000", "http://127.0.0.1:9000"),
        ("https://ollama.example.com:443", "https://ollama.example.com:443"),
    ],
)
def test_ollama_host(monkeypatch: pytest.MonkeyPatch, env: str | None, url: str) -> None:
    if env is None:
        monkeypatch.delenv("OLLAMA_HOST", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_HOST", env)
    assert backend("ollama").base_url == url
    assert backend("ollama", base_url="http://h:1").base_url == "http://h:1"
