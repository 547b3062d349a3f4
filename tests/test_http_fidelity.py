# ruff: noqa: E501  (the case tables read best one case per line)
"""The fakes are faithful: each provider's official SDK reads the same text, usage and error
kind from them that our backend reports. If an SDK and our backend disagree, the fake (or
the backend) is wrong about the wire format.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import ollama
import openai
import pytest

from protocol.errors import ErrorCategory as C
from protocol.errors import ProviderError
from tests.fakes.drive import FAKE_KEY, collect, make_backend, make_job, started
from tests.fakes.server import FakeServer, Reply

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]

STREAMS = {
    "plain": Reply(tokens=["Hel", "lo", ", ", "wörld", "!"], prompt_tokens=9),
    "utf8-split-keepalive": Reply(tokens=["日本", "😀", "é"], split_every=1, keepalive=2),
    "long": Reply(tokens=[f"t{i} " for i in range(200)], completion_tokens=200),
}


async def ours(kind: str, fake: FakeServer, stream: bool) -> tuple[str, dict[str, Any]]:
    async with started(make_backend(kind, fake.url, api_key=FAKE_KEY)) as backend:
        _, text, finish = await collect(backend, make_job(stream=stream))
    return text, finish.usage


async def our_error(kind: str, fake: FakeServer, stream: bool = True) -> tuple[str, ProviderError]:
    got = ""
    async with started(make_backend(kind, fake.url, api_key=FAKE_KEY)) as backend:
        try:
            async for event in backend.generate(make_job(stream=stream), "test-model", 1):
                got += getattr(event, "text", "")
        except ProviderError as exc:
            return got, exc
    raise AssertionError("expected a ProviderError")


def norm(prompt: int, completion: int, **extra: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        **extra,
    }


# -- OpenAI and OpenRouter (both read by openai-python) ----------------------------------------


def openai_client(fake: FakeServer, root: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake.url + root, max_retries=0)


async def openai_sdk(fake: FakeServer, root: str, stream: bool) -> tuple[str, dict[str, Any]]:
    async with openai_client(fake, root) as client:
        if not stream:
            resp = await client.chat.completions.create(model="test-model", messages=MESSAGES)
            assert resp.usage is not None
            return resp.choices[0].message.content or "", resp.usage.model_dump(exclude_none=True)
        text, usage = "", {}
        chunks = await client.chat.completions.create(
            model="test-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in chunks:
            for choice in chunk.choices:
                text += choice.delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage.model_dump(exclude_none=True)
        return text, usage


@pytest.mark.parametrize("kind", ["openai", "openrouter"])
@pytest.mark.parametrize("script", list(STREAMS), ids=list(STREAMS))
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_openai_sdk_reads_what_we_read(kind: str, script: str, stream: bool, request: Any) -> None:
    fake: FakeServer = request.getfixturevalue(f"{kind}_fake")
    fake.default = STREAMS[script]
    root = "/v1" if kind == "openai" else "/api/v1"
    sdk_text, sdk_usage = asyncio.run(openai_sdk(fake, root, stream))
    text, usage = asyncio.run(ours(kind, fake, stream))
    assert text == sdk_text == "".join(STREAMS[script].tokens)
    keys = ["prompt_tokens", "completion_tokens", "total_tokens"]
    assert {k: usage[k] for k in keys} == {k: sdk_usage[k] for k in keys}
    if kind == "openrouter":
        assert usage["cost"] == sdk_usage["cost"] == 0.00005


def oai_error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# (fake reply, SDK exception class, our category)
# fmt: off
OPENAI_ERRORS = {
    "401": (Reply(status=401, body=oai_error("Incorrect API key provided", "invalid_request_error", "invalid_api_key")),
            openai.AuthenticationError, C.AUTH),
    "404-model": (Reply(status=404, body=oai_error("The model `x` does not exist", "invalid_request_error", "model_not_found")),
                  openai.NotFoundError, C.NOT_FOUND),
    "400-context": (Reply(status=400, body=oai_error("maximum context length is 4097 tokens", "invalid_request_error", "context_length_exceeded")),
                    openai.BadRequestError, C.CONTEXT_LENGTH),
    "429-rate": (Reply(status=429, headers={"retry-after-ms": "50"}, body=oai_error("Rate limit reached", "tokens", "rate_limit_exceeded")),
                 openai.RateLimitError, C.RATE_LIMITED),
    # openai-python retries every 429 unless told not to; the fake says so like the reference.
    "429-quota": (Reply(status=429, headers={"x-should-retry": "false"}, body=oai_error("You exceeded your current quota", "insufficient_quota", "insufficient_quota")),
                  openai.RateLimitError, C.QUOTA_EXHAUSTED),
    "500": (Reply(status=500, body=oai_error("The server had an error", "server_error", None)),
            openai.InternalServerError, C.SERVER_ERROR),
    "503": (Reply(status=503, body=oai_error("The engine is currently overloaded", "server_error", None)),
            openai.InternalServerError, C.OVERLOADED),
}
# fmt: on


async def openai_sdk_error(fake: FakeServer, root: str, stream: bool) -> tuple[str, Exception]:
    text = ""
    async with openai_client(fake, root) as client:
        try:
            if not stream:
                await client.chat.completions.create(model="test-model", messages=MESSAGES)
            else:
                chunks = await client.chat.completions.create(
                    model="test-model", messages=MESSAGES, stream=True
                )
                async for chunk in chunks:
                    text += "".join(c.delta.content or "" for c in chunk.choices)
        except openai.APIError as exc:
            return text, exc
    raise AssertionError("expected an SDK error")


@pytest.mark.parametrize("case", list(OPENAI_ERRORS))
def test_openai_errors_agree(openai_fake: FakeServer, case: str) -> None:
    reply, sdk_class, category = OPENAI_ERRORS[case]
    openai_fake.default = reply
    _, sdk_err = asyncio.run(openai_sdk_error(openai_fake, "/v1", stream=True))
    _, err = asyncio.run(our_error("openai", openai_fake))
    assert type(sdk_err) is sdk_class
    assert isinstance(sdk_err, openai.APIStatusError)
    assert sdk_err.status_code == err.status_code == reply.status
    assert err.category is category
    if category is C.QUOTA_EXHAUSTED:
        assert sdk_err.code == "insufficient_quota"


@pytest.mark.parametrize("kind", ["openai", "openrouter"])
def test_openai_mid_stream_error_agrees(kind: str, request: Any) -> None:
    fake: FakeServer = request.getfixturevalue(f"{kind}_fake")
    fake.default = Reply(tokens=["a", "b", "c"], error_after=2)
    root = "/v1" if kind == "openai" else "/api/v1"
    sdk_text, sdk_err = asyncio.run(openai_sdk_error(fake, root, stream=True))
    text, err = asyncio.run(our_error(kind, fake))
    assert sdk_text == text == "ab"
    assert type(sdk_err) is openai.APIError  # an error event inside a 200: not a status error
    expected = C.RATE_LIMITED if kind == "openrouter" else C.SERVER_ERROR
    assert err.category is expected
    assert sdk_err.message == err.message


def test_openrouter_402_agrees(openrouter_fake: FakeServer) -> None:
    openrouter_fake.default = Reply(
        status=402, body={"error": {"code": 402, "message": "Insufficient credits"}}
    )
    _, sdk_err = asyncio.run(openai_sdk_error(openrouter_fake, "/api/v1", stream=True))
    _, err = asyncio.run(our_error("openrouter", openrouter_fake))
    assert isinstance(sdk_err, openai.APIStatusError) and sdk_err.status_code == 402
    assert err.category is C.QUOTA_EXHAUSTED and err.message == "Insufficient credits"


# -- Anthropic ----------------------------------------------------------------------------------


def anthropic_client(fake: FakeServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=FAKE_KEY, base_url=fake.url, max_retries=0)


async def anthropic_sdk(fake: FakeServer, stream: bool) -> tuple[str, dict[str, Any]]:
    async with anthropic_client(fake) as client:
        if not stream:
            msg = await client.messages.create(
                model="test-model", max_tokens=100, messages=MESSAGES
            )
            text = "".join(getattr(b, "text", "") for b in msg.content)
            return text, norm(msg.usage.input_tokens, msg.usage.output_tokens)
        text, prompt, completion = "", 0, 0
        events = await client.messages.create(
            model="test-model", max_tokens=100, messages=MESSAGES, stream=True
        )
        async for event in events:
            if event.type == "message_start":
                prompt = event.message.usage.input_tokens
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
            elif event.type == "message_delta":
                completion = event.usage.output_tokens
        return text, norm(prompt, completion)


@pytest.mark.parametrize("script", list(STREAMS), ids=list(STREAMS))
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_anthropic_sdk_reads_what_we_read(
    anthropic_fake: FakeServer, script: str, stream: bool
) -> None:
    anthropic_fake.default = STREAMS[script]
    sdk = asyncio.run(anthropic_sdk(anthropic_fake, stream))
    assert asyncio.run(ours("anthropic", anthropic_fake, stream)) == sdk
    assert sdk[0] == "".join(STREAMS[script].tokens)


def ant_error(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_1"}


# fmt: off
ANTHROPIC_ERRORS = {
    "401": (Reply(status=401, body=ant_error("authentication_error", "invalid x-api-key")),
            anthropic.AuthenticationError, C.AUTH),
    "400-too-long": (Reply(status=400, body=ant_error("invalid_request_error", "prompt is too long: 205351 tokens > 200000 maximum")),
                     anthropic.BadRequestError, C.CONTEXT_LENGTH),
    "404": (Reply(status=404, body=ant_error("not_found_error", "model: x")),
            anthropic.NotFoundError, C.NOT_FOUND),
    "429": (Reply(status=429, headers={"retry-after": "3"}, body=ant_error("rate_limit_error", "rate limited")),
            anthropic.RateLimitError, C.RATE_LIMITED),
    "529": (Reply(status=529, body=ant_error("overloaded_error", "Overloaded")),
            anthropic.OverloadedError, C.OVERLOADED),
    "500": (Reply(status=500, body=ant_error("api_error", "Internal server error")),
            anthropic.InternalServerError, C.SERVER_ERROR),
}
# fmt: on


async def anthropic_sdk_error(fake: FakeServer) -> tuple[str, Exception]:
    text = ""
    async with anthropic_client(fake) as client:
        try:
            events = await client.messages.create(
                model="test-model", max_tokens=100, messages=MESSAGES, stream=True
            )
            async for event in events:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text += event.delta.text
        except anthropic.APIError as exc:
            return text, exc
    raise AssertionError("expected an SDK error")


@pytest.mark.parametrize("case", list(ANTHROPIC_ERRORS))
def test_anthropic_errors_agree(anthropic_fake: FakeServer, case: str) -> None:
    reply, sdk_class, category = ANTHROPIC_ERRORS[case]
    anthropic_fake.default = reply
    _, sdk_err = asyncio.run(anthropic_sdk_error(anthropic_fake))
    _, err = asyncio.run(our_error("anthropic", anthropic_fake))
    assert isinstance(sdk_err, sdk_class)
    assert isinstance(sdk_err, anthropic.APIStatusError)
    assert sdk_err.status_code == err.status_code == reply.status
    assert err.category is category
    if case == "429":
        assert err.retry_after == 3.0


def test_anthropic_mid_stream_error_agrees(anthropic_fake: FakeServer) -> None:
    anthropic_fake.default = Reply(tokens=["a", "b", "c"], error_after=2)
    sdk_text, sdk_err = asyncio.run(anthropic_sdk_error(anthropic_fake))
    text, err = asyncio.run(our_error("anthropic", anthropic_fake))
    assert sdk_text == text == "ab"
    assert isinstance(sdk_err, anthropic.APIStatusError)
    assert sdk_err.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert err.category is C.OVERLOADED


# -- Ollama -------------------------------------------------------------------------------------


async def ollama_sdk(fake: FakeServer, stream: bool) -> tuple[str, dict[str, Any]]:
    client = ollama.AsyncClient(host=fake.url)
    if not stream:
        resp = await client.chat(model="test-model", messages=MESSAGES, stream=False)
        return resp.message.content or "", norm(resp.prompt_eval_count or 0, resp.eval_count or 0)
    text, usage = "", {}
    async for part in await client.chat(model="test-model", messages=MESSAGES, stream=True):
        text += part.message.content or ""
        if part.done:
            usage = norm(part.prompt_eval_count or 0, part.eval_count or 0)
    return text, usage


@pytest.mark.parametrize("script", list(STREAMS), ids=list(STREAMS))
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_ollama_sdk_reads_what_we_read(ollama_fake: FakeServer, script: str, stream: bool) -> None:
    ollama_fake.default = STREAMS[script]
    sdk = asyncio.run(ollama_sdk(ollama_fake, stream))
    assert asyncio.run(ours("ollama", ollama_fake, stream)) == sdk
    assert sdk[0] == "".join(STREAMS[script].tokens)


async def ollama_sdk_error(fake: FakeServer) -> tuple[str, ollama.ResponseError]:
    text = ""
    try:
        async for part in await ollama.AsyncClient(host=fake.url).chat(
            model="test-model", messages=MESSAGES, stream=True
        ):
            text += part.message.content or ""
    except ollama.ResponseError as exc:
        return text, exc
    raise AssertionError("expected an SDK error")


@pytest.mark.parametrize(
    ("reply", "category"),
    [
        (Reply(status=404, body={"error": "model 'llama9' not found"}), C.NOT_FOUND),
        (
            Reply(
                status=503,
                body={"error": "server busy, please try again.  maximum pending requests exceeded"},
            ),
            C.OVERLOADED,
        ),
        (Reply(status=500, body={"error": "llama runner process has terminated"}), C.SERVER_ERROR),
        (Reply(tokens=["a", "b", "c"], error_after=2), C.SERVER_ERROR),
    ],
    ids=["404", "503", "500", "mid-stream"],
)
def test_ollama_errors_agree(ollama_fake: FakeServer, reply: Reply, category: C) -> None:
    ollama_fake.default = reply
    sdk_text, sdk_err = asyncio.run(ollama_sdk_error(ollama_fake))
    text, err = asyncio.run(our_error("ollama", ollama_fake))
    assert sdk_text == text
    assert sdk_err.error == err.message
    assert err.category is category
    if reply.status != 200:
        assert sdk_err.status_code == err.status_code == reply.status
