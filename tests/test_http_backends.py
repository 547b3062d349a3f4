# ruff: noqa: E501  (literal wire captures)
"""The HTTP backends end to end against the fake servers: text, usage, pooling, cancel, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import ErrorCategory as C
from protocol.errors import ProviderError
from tests.fakes.drive import FAKE_KEY, collect, make_backend, make_job, started
from tests.fakes.openai_fake import openai_server
from tests.fakes.server import FakeServer, Reply, json_response
from workers.backend import TextDelta
from workers.http_mapping import Malformed, load_json
from workers.http_pool import env_proxy, tls_context

KINDS = ["openai", "anthropic", "openrouter", "ollama"]


@pytest.fixture(params=KINDS)
def kind_fake(request: pytest.FixtureRequest) -> tuple[str, FakeServer]:
    kind: str = request.param
    return kind, request.getfixturevalue(f"{kind}_fake")


def backend_for(kind: str, fake: FakeServer, **options: Any) -> Any:
    options.setdefault("api_key", FAKE_KEY)
    return make_backend(kind, fake.url, **options)


async def run_one(kind: str, fake: FakeServer, stream: bool = True, **options: Any) -> Any:
    async with started(backend_for(kind, fake, **options)) as backend:
        return await collect(backend, make_job(stream=stream))


async def failure(kind: str, fake: FakeServer, stream: bool = True, **options: Any) -> Any:
    """Run one job that must fail; return (text delivered before the failure, the error)."""
    got: list[str] = []
    async with started(backend_for(kind, fake, **options)) as backend:
        with pytest.raises(ProviderError) as caught:
            async for event in backend.generate(make_job(stream=stream), "test-model", 1):
                if isinstance(event, TextDelta):
                    got.append(event.text)
    return "".join(got), caught.value


def test_streamed_and_whole_responses_agree(kind_fake: tuple[str, FakeServer]) -> None:
    kind, fake = kind_fake
    fake.default = Reply(tokens=["Hel", "lo", " wörld"], prompt_tokens=12)
    events, text, finish = asyncio.run(run_one(kind, fake, stream=True))
    _, whole_text, whole_finish = asyncio.run(run_one(kind, fake, stream=False))
    assert [e.text for e in events[:-1] if isinstance(e, TextDelta)] == ["Hel", "lo", " wörld"]
    assert text == whole_text == "Hello wörld"
    expected: dict[str, Any] = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    if kind == "openrouter":
        expected["cost"] = 0.00005
    assert finish.usage == whole_finish.usage == expected
    assert finish.reason == whole_finish.reason == "stop"
    assert finish.model == whole_finish.model == "test-model"


def test_utf8_split_mid_character_arrives_intact(kind_fake: tuple[str, FakeServer]) -> None:
    kind, fake = kind_fake
    tokens = ["日本", "😀", "é", " ok"]
    # Every byte is its own HTTP chunk: every character and every event is split.
    fake.default = Reply(tokens=tokens, split_every=1, keepalive=1)
    events, text, _ = asyncio.run(run_one(kind, fake))
    assert text == "日本😀é ok"
    # Each event was decoded exactly once: one delta per token, in order.
    assert [e.text for e in events[:-1] if isinstance(e, TextDelta)] == tokens


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
def test_500_jobs_use_no_more_connections_than_capacity(kind: str, request: Any) -> None:
    fake: FakeServer = request.getfixturevalue(f"{kind}_fake")
    fake.default = Reply(tokens=["a", "b", "c"])
    capacity = 8

    async def main() -> list[str]:
        async with started(backend_for(kind, fake, capacity=capacity)) as backend:
            results = await asyncio.gather(*(collect(backend, make_job()) for _ in range(500)))
        return [text for _, text, _ in results]

    texts = asyncio.run(main())
    assert texts == ["abc"] * 500
    assert len(fake.requests) == 500
    assert 1 <= fake.connections <= capacity


def test_cancel_closes_the_stream(kind_fake: tuple[str, FakeServer]) -> None:
    kind, fake = kind_fake
    fake.default = Reply(tokens=["a", "b", "c", "d"], stall_after=2)

    async def main() -> list[str]:
        got: list[str] = []
        first_two = asyncio.Event()

        async def consume() -> None:
            async for event in backend.generate(make_job(), "test-model", 1):
                assert isinstance(event, TextDelta)
                got.append(event.text)
                if len(got) == 2:
                    first_two.set()

        async with started(backend_for(kind, fake)) as backend:
            task = asyncio.create_task(consume())
            await first_two.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return got

    assert asyncio.run(main()) == ["a", "b"]
    # The server sees the client close the connection it was stalling on.
    assert fake.wait_for(lambda f: f.client_disconnects == 1)


def test_consumer_stopping_early_closes_the_stream(openai_fake: FakeServer) -> None:
    openai_fake.default = Reply(tokens=["a", "b", "c"], stall_after=1)

    async def main() -> None:
        async with started(backend_for("openai", openai_fake)) as backend:
            stream = backend.generate(make_job(), "test-model", 1)
            assert isinstance(stream, AsyncGenerator)
            assert await anext(stream) == TextDelta("a")
            await stream.aclose()

    asyncio.run(main())
    assert openai_fake.wait_for(lambda f: f.client_disconnects == 1)


def test_keepalive_comments_and_pings_yield_no_text(kind_fake: tuple[str, FakeServer]) -> None:
    kind, fake = kind_fake
    fake.default = Reply(tokens=["x", "y"], keepalive=3)
    _, text, finish = asyncio.run(run_one(kind, fake))
    assert text == "xy" and finish.reason == "stop"


# -- errors ----------------------------------------------------------------------------------

ERROR_REPLIES = {
    "openai": Reply(
        status=429,
        headers={"retry-after-ms": "250"},
        body={
            "error": {
                "message": "Rate limit reached",
                "type": "tokens",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
    ),
    "anthropic": Reply(
        status=529,
        body={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ),
    "openrouter": Reply(
        status=402, body={"error": {"code": 402, "message": "Insufficient credits"}}
    ),
    "ollama": Reply(status=404, body={"error": "model 'llama9' not found"}),
}
ERROR_CATEGORIES = {
    "openai": (C.RATE_LIMITED, 0.25),
    "anthropic": (C.OVERLOADED, None),
    "openrouter": (C.QUOTA_EXHAUSTED, None),
    "ollama": (C.NOT_FOUND, None),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_http_error_status_is_classified(kind_fake: tuple[str, FakeServer], stream: bool) -> None:
    kind, fake = kind_fake
    fake.default = ERROR_REPLIES[kind]
    text, err = asyncio.run(failure(kind, fake, stream=stream))
    assert text == ""
    assert (err.category, err.retry_after) == ERROR_CATEGORIES[kind]
    assert err.status_code == fake.default.status and err.provider == kind


RATE_HEADERS = {
    "openai": {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-remaining-tokens": "garbage",
    },
    "anthropic": {
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2999-01-01T00:00:00Z",
    },
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_rate_limit_headers_reach_finish_and_errors(
    kind: str, stream: bool, request: pytest.FixtureRequest
) -> None:
    fake: FakeServer = request.getfixturevalue(f"{kind}_fake")
    fake.script(Reply(headers=RATE_HEADERS[kind]), Reply())
    body = ERROR_REPLIES["openai"].body
    if kind == "anthropic":
        body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}
    fake.default = Reply(status=429, headers=RATE_HEADERS[kind], body=body)
    _, _, finish = asyncio.run(run_one(kind, fake, stream=stream))
    if kind == "openai":
        assert finish.ratelimit["requests_limit"] == 500
        assert finish.ratelimit["requests_remaining"] == 0
        assert 359 < finish.ratelimit["requests_reset"] <= 360
        assert set(finish.ratelimit) == {"requests_limit", "requests_remaining", "requests_reset"}
    else:
        assert finish.ratelimit["tokens_limit"] == 40000
        assert finish.ratelimit["tokens_remaining"] == 0
        assert finish.ratelimit["tokens_reset"] > 1e9
    _, _, plain = asyncio.run(run_one(kind, fake, stream=stream))
    assert plain.ratelimit == {}  # no headers, no key
    _, err = asyncio.run(failure(kind, fake, stream=stream))
    assert err.category is C.RATE_LIMITED
    assert err.ratelimit is not None and err.ratelimit == {
        k: pytest.approx(v, abs=1.0) for k, v in (finish.ratelimit or {}).items()
    }
    assert err.to_wire()["ratelimit"] == err.ratelimit


def test_mid_stream_error_after_tokens(kind_fake: tuple[str, FakeServer]) -> None:
    kind, fake = kind_fake
    fake.default = Reply(tokens=["a", "b", "c"], error_after=2)
    text, err = asyncio.run(failure(kind, fake))
    assert text == "ab"
    expected = {"anthropic": C.OVERLOADED, "openrouter": C.RATE_LIMITED}.get(kind, C.SERVER_ERROR)
    assert err.category is expected


def test_dropped_connection_is_network(kind_fake: tuple[str, FakeServer]) -> None:
    kind, fake = kind_fake
    fake.default = Reply(tokens=["a", "b", "c"], drop_after=1)
    text, err = asyncio.run(failure(kind, fake))
    assert text == "a" and err.category is C.NETWORK


def test_stalled_stream_hits_the_read_timeout(openai_fake: FakeServer) -> None:
    openai_fake.default = Reply(tokens=["a", "b"], stall_after=1)
    text, err = asyncio.run(failure("openai", openai_fake, read_timeout=0.2))
    assert text == "a" and err.category is C.NETWORK and "read timeout" in err.message


async def _deaf_server() -> tuple[asyncio.Server, str]:
    """Accepts connections and never reads from them: a request larger than the socket
    buffers cannot be written."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # cancelled when the server closes
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def test_a_request_the_server_does_not_read_hits_the_write_timeout() -> None:
    async def run() -> tuple[ProviderError, float]:
        server, url = await _deaf_server()
        backend = make_backend("openai", url, api_key=FAKE_KEY, write_timeout=0.3)
        job = make_job("x" * (64 << 20))  # far more than loopback's socket buffers hold
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        try:
            async with started(backend) as b:
                with pytest.raises(ProviderError) as caught:
                    await collect(b, job)
        finally:
            server.close()
        return caught.value, loop.time() - started_at

    err, took = asyncio.run(run())
    assert err.category is C.NETWORK and "write timeout after 0.3s" in err.message
    assert took < 20  # the write timeout ended it, not the read (120 s) or total (600 s) one


def test_the_write_timeout_does_not_bound_waiting_for_the_answer(
    openai_fake: FakeServer,
) -> None:
    # The request is out at once; the server then thinks longer than write_timeout.
    openai_fake.default = Reply(tokens=["a"], first_token_delay=0.5)
    for stream in (True, False):
        _, text, _ = asyncio.run(run_one("openai", openai_fake, stream, write_timeout=0.1))
        assert text == "a"


def test_total_timeout(anthropic_fake: FakeServer) -> None:
    anthropic_fake.default = Reply(tokens=["a", "b"], stall_after=1)
    _, err = asyncio.run(failure("anthropic", anthropic_fake, total_timeout=0.2))
    assert err.category is C.NETWORK and "total timeout" in err.message


def test_connection_refused_is_network() -> None:
    with openai_server() as fake:
        url = fake.url  # nothing listens here once the server stopped
    backend = make_backend("openai", url, api_key=FAKE_KEY)

    async def main() -> ProviderError:
        async with started(backend):
            with pytest.raises(ProviderError) as caught:
                await collect(backend, make_job())
        return caught.value

    err = asyncio.run(main())
    assert err.category is C.NETWORK and err.retryable


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("openai", [b"data: {not json}\n\n"]),
        ("anthropic", [b"event: message_start\ndata: [1, 2]\n\n"]),
        ("ollama", [b'{"message":{"content":"a"},"done":false}\n', b"<html>oops</html>\n"]),
        ("openai", [b"data: \xff\xfe\n\n"]),  # not UTF-8
        ("openai", [b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n']),  # no finish, no [DONE]
        ("anthropic", [b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n']),
        ("openai", [b'data: {"choices":[1]}\n\n']),  # JSON of the wrong shape
    ],
    ids=[
        "bad-json",
        "not-an-object",
        "ndjson-junk",
        "bad-utf8",
        "truncated",
        "no-message_stop",
        "wrong-shape",
    ],
)
def test_malformed_streams_are_protocol_errors(kind: str, raw: list[bytes], request: Any) -> None:
    fake: FakeServer = request.getfixturevalue(f"{kind}_fake")
    fake.default = Reply(raw=raw)
    _, err = asyncio.run(failure(kind, fake))
    assert err.category is C.PROTOCOL and err.retryable


def test_non_json_error_page_keeps_its_text(openai_fake: FakeServer) -> None:
    openai_fake.default = Reply(status=502, body="<html>502 Bad Gateway</html>")
    _, err = asyncio.run(failure("openai", openai_fake))
    assert err.category is C.SERVER_ERROR and "Bad Gateway" in err.message


def test_malformed_whole_body_is_protocol() -> None:
    # A 200 whose body is not the provider's JSON.
    with FakeServer(lambda request, reply: json_response(200, "not json")) as fake:
        _, err = asyncio.run(failure("openai", fake, stream=False))
    assert err.category is C.PROTOCOL


# -- keys ------------------------------------------------------------------------------------


def test_wrong_key_is_auth_and_the_key_never_leaks(kind_fake: tuple[str, FakeServer]) -> None:
    kind, fake = kind_fake
    secret = "sk-live-THIS-MUST-NOT-LEAK-0123456789"
    # A server that echoes the key back in its error message.
    fake.default = Reply(status=401, body={"error": {"message": f"bad key {secret}", "type": "x"}})
    if kind == "anthropic":
        fake.default.body = {
            "type": "error",
            "error": {"type": "authentication_error", "message": f"bad key {secret}"},
        }
    if kind == "ollama":
        fake.default.body = {"error": f"bad key {secret}"}
    _, err = asyncio.run(failure(kind, fake, api_key=secret))
    assert err.category is C.AUTH
    assert secret not in str(err) and secret not in repr(err.to_wire())
    assert err.__cause__ is None and err.__suppress_context__


def test_missing_key_fails_before_any_request(
    openai_fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _, err = asyncio.run(failure("openai", openai_fake, api_key=None))
    assert err.category is C.AUTH and "OPENAI_API_KEY" in err.message
    assert openai_fake.requests == []


def test_key_from_environment(openai_fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY_VAR", FAKE_KEY)
    _, text, _ = asyncio.run(run_one("openai", openai_fake, api_key=None, api_key_env="MY_KEY_VAR"))
    assert text == "Hello, world!"


def test_auth_headers(kind_fake: tuple[str, FakeServer]) -> None:
    kind, fake = kind_fake
    asyncio.run(run_one(kind, fake))
    headers = fake.requests[-1].headers
    if kind == "anthropic":
        assert headers["x-api-key"] == FAKE_KEY and headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in headers
    else:
        assert headers["authorization"] == f"Bearer {FAKE_KEY}"
    assert headers["user-agent"].startswith("llmrelay/")


# -- tool calls (the literal streams of the wire-format reference) ----------------------------

OPENAI_TOOL_STREAM = [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_4Xz","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\""}}]},"logprobs":null,"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"city\\":\\"Paris\\"}"}}]},"logprobs":null,"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":44,"completion_tokens":16,"total_tokens":60,"completion_tokens_details":{"reasoning_tokens":0}}}\n\n',
    b"data: [DONE]\n\n",
]
ANTHROPIC_TOOL_STREAM = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-x","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":44,"cache_read_input_tokens":6,"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_4Xz","name":"get_weather","caller":{"type":"direct"},"input":{}}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\":"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"\\"Paris\\"}"}}\n\n',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":16}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]
OLLAMA_TOOL_STREAM = [
    b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.184789Z","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},"done":false}\n',
    b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.3Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"prompt_eval_count":50,"eval_count":10}\n',
]


@pytest.mark.parametrize(
    ("kind", "raw", "usage"),
    [
        ("openai", OPENAI_TOOL_STREAM, (44, 16)),
        ("anthropic", ANTHROPIC_TOOL_STREAM, (50, 16)),  # cached prompt tokens count too
        ("ollama", OLLAMA_TOOL_STREAM, (50, 10)),
    ],
)
def test_streamed_tool_calls(
    kind: str, raw: list[bytes], usage: tuple[int, int], request: Any
) -> None:
    fake: FakeServer = request.getfixturevalue(f"{kind}_fake")
    fake.default = Reply(raw=raw)
    _, text, finish = asyncio.run(run_one(kind, fake))
    assert text == "" and finish.reason == "tool_calls"
    (call,) = finish.extra["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    if kind != "ollama":
        assert call["id"] == "call_4Xz"
    p, c = usage
    counts = {k: finish.usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert counts == {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    if kind == "anthropic":  # cache reads count in the prompt and are reported apart
        assert finish.usage["cached_tokens"] == 6


def test_the_environment_names_the_proxy_and_no_proxy_exempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        for variant in (name, name.upper()):
            monkeypatch.delenv(variant, raising=False)
    assert env_proxy("https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.internal:3128"
    assert env_proxy("http://api.openai.com/v1") is None  # no HTTP_PROXY
    assert env_proxy("https://127.0.0.1:8080/v1") is None
    # trust_env=false: the environment is not read at all.
    backend = make_backend("openai", "https://api.openai.com/v1", trust_env=False)

    async def proxy_of(b: Any) -> str | None:
        async with started(b):
            return b._pool.proxy  # type: ignore[no-any-return]

    assert asyncio.run(proxy_of(backend)) is None
    backend = make_backend("openai", "https://api.openai.com/v1")
    assert asyncio.run(proxy_of(backend)) == "http://proxy.internal:3128"


def test_tls_trusts_certifi_or_the_bundle_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import certifi

    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    assert tls_context(True).cert_store_stats()["x509_ca"] > 50  # certifi, the default
    one = tmp_path / "one.pem"
    pem = Path(certifi.where()).read_text()
    one.write_text(pem[: pem.index("-----END CERTIFICATE-----") + 26])
    monkeypatch.setenv("SSL_CERT_FILE", str(one))
    assert tls_context(True).cert_store_stats()["x509_ca"] == 1
    assert tls_context(False).cert_store_stats()["x509_ca"] > 50  # trust_env off: certifi


def test_json_of_every_event_reads_what_the_stdlib_read_and_refuses_junk_clearly() -> None:
    assert load_json(b'{"a":"\\u00e9","n":1}') == {"a": "é", "n": 1}
    # A JavaScript server can split a UTF-16 pair between two events: each half still reads.
    assert load_json('{"t":"\\ud83d"}') == {"t": "\ud83d"}
    for junk in (b"\xff", b"[" * 5000, b"{", b""):
        with pytest.raises(Malformed, match="invalid JSON"):
            load_json(junk)


def test_a_token_count_does_not_wait_for_the_streams_holding_every_connection(
    anthropic_fake: FakeServer,
) -> None:
    # capacity 1, its one stream stalled: the count still gets a connection of its own.
    anthropic_fake.default = Reply(tokens=["a", "b"], stall_after=1)

    async def run() -> int:
        backend = backend_for("anthropic", anthropic_fake, capacity=1, connect_timeout=0.5)
        async with started(backend) as b:
            stream = asyncio.ensure_future(collect(b, make_job()))
            await asyncio.sleep(0.2)  # the stream holds the pool's one streaming connection
            try:
                return int(await b.count_prompt([{"role": "user", "content": "one two"}], "m"))
            finally:
                stream.cancel()
                with contextlib.suppress(asyncio.CancelledError, ProviderError):
                    await stream

    assert asyncio.run(run()) == 2
