"""The llama.cpp backend against the real llama-server and the tiny test model."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from protocol.errors import ErrorCategory, ProviderError
from protocol.job import Job
from tests.llamacpp_support import run, spec_for
from workers.backend import Finish, TextDelta
from workers.llamacpp.binary import ServerBinary
from workers.providers.llamacpp import LlamaCppBackend
from workers.registry import backend_class

# Fixtures (llama_binary, tiny_model, long_model, reap_children) live in a shared plugin.
pytestmark = [pytest.mark.llama, pytest.mark.usefixtures("reap_children")]

# Quotes, shell syntax, newlines, tabs, CRLF and non-ASCII (2-, 3- and 4-byte UTF-8).
NASTY = (
    "He said \"hi\" and 'bye'; $(touch /tmp/pwned-llmrelay) `id` ${HOME} | & > < \\ \n"
    "line two\ttab\r\nünïcödé 漢字 🎉 -- --port 1 -m /etc/passwd"
)


def job(content: str, **params: Any) -> Job:
    return Job(
        id="j1", messages=[{"role": "user", "content": content}], model="tiny", params=params
    )


async def collect(backend: LlamaCppBackend, j: Job, attempt: int = 1) -> tuple[str, Finish]:
    text: list[str] = []
    finish: Finish | None = None
    async for event in backend.generate(j, "tiny", attempt):
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            finish = event
    assert finish is not None
    return "".join(text), finish


async def direct_stream(
    backend: LlamaCppBackend, body: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The same request straight to llama-server, bypassing the backend (the reference)."""
    import json

    assert backend.server is not None
    headers = {"Authorization": f"Bearer {backend.server.api_key}"}
    text, usage = "", {}
    async with httpx.AsyncClient(base_url=backend.server.base_url, headers=headers) as client:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or []:
                    text += (choice.get("delta") or {}).get("content") or ""
                usage = chunk.get("usage") or usage
    return text, usage


def test_registered_kind() -> None:
    assert backend_class("llamacpp") is LlamaCppBackend


def test_stream_matches_direct_request(llama_binary: ServerBinary, tiny_model: Path) -> None:
    backend = LlamaCppBackend(spec_for(tiny_model))

    async def body() -> None:
        try:
            await backend.start()
            params = {"max_tokens": 24, "temperature": 0.0, "seed": 7}
            text, finish = await collect(backend, job("Hello there", **params))
            ref_text, ref_usage = await direct_stream(
                backend, {"messages": [{"role": "user", "content": "Hello there"}], **params}
            )
            assert text == ref_text and text
            assert finish.usage["prompt_tokens"] == ref_usage["prompt_tokens"] > 0
            assert finish.usage["completion_tokens"] == ref_usage["completion_tokens"] == 24
            assert finish.reason == "length"
            assert finish.model == str(tiny_model)  # llama-server echoes the GGUF path
            assert finish.usage["prompt_tokens"] == await backend.count_tokens(job("Hello there"))
        finally:
            await backend.close()

    run(body)


def test_info_features_and_stats(llama_binary: ServerBinary, tiny_model: Path) -> None:
    backend = LlamaCppBackend(spec_for(tiny_model, capacity=2))

    async def body() -> None:
        try:
            await backend.start()
            info = backend.info()
            assert info["context_window"] and info["context_window"] > 0
            assert info["modalities"].get("vision") is False
            assert info["total_slots"] == 2
            assert info["auth_enforced"] is True
            assert "vision" not in backend.features and "tools" not in backend.features
            assert {"top_k", "repeat_penalty", "seed", "response_format"} <= backend.features
            stats = backend.stats()
            assert stats["llama_state"] == "ready" and stats["llama_rss"] > 0
        finally:
            await backend.close()

    run(body)


def test_llama_parameters_reach_the_server(llama_binary: ServerBinary, tiny_model: Path) -> None:
    backend = LlamaCppBackend(spec_for(tiny_model, capacity=1))
    params = {
        "max_tokens": 3,
        "top_k": 7,
        "top_p": 0.5,
        "repeat_penalty": 1.3,
        "seed": 11,
        "presence_penalty": 0.25,
        "frequency_penalty": 0.5,
        "temperature": 0.7,
    }

    async def body() -> None:
        try:
            await backend.start()
            await collect(backend, job("x", **params))
            assert backend.server is not None
            headers = {"Authorization": f"Bearer {backend.server.api_key}"}
            slots = httpx.get(f"{backend.server.base_url}/slots", headers=headers).json()
            used = slots[0]["params"]
            for name in (
                "top_k",
                "top_p",
                "repeat_penalty",
                "seed",
                "presence_penalty",
                "frequency_penalty",
                "temperature",
            ):
                assert used[name] == pytest.approx(params[name]), name
            schema = {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "required": ["a"],
                "additionalProperties": False,
            }
            fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
            text, _ = await collect(backend, job("x", max_tokens=60, response_format=fmt))
            import json

            assert isinstance(json.loads(text)["a"], int)  # grammar-constrained: valid JSON
        finally:
            await backend.close()

    run(body)


def test_prompt_reaches_model_unchanged_and_never_in_argv(
    llama_binary: ServerBinary, long_model: Path
) -> None:
    backend = LlamaCppBackend(spec_for(long_model, capacity=1, extra_body={"ignore_eos": True}))

    async def body() -> None:
        try:
            await backend.start()
            ids = await backend.tokenize(NASTY)
            # The tiny vocabulary: id 3+b is byte b, id 259 is the SentencePiece space.
            raw = bytes(32 if i == 259 else i - 3 for i in ids)
            assert raw == NASTY.encode("utf-8")
            assert await backend.detokenize(ids) == NASTY
            # While a generation with this prompt runs, no process shows it (or the key).
            assert backend.server is not None
            async with aclosing(backend.generate(job(NASTY, max_tokens=5000), "tiny", 1)) as ev:
                async for _ in ev:
                    break
                for proc in psutil.process_iter(["cmdline"]):
                    argv = " ".join(proc.info["cmdline"] or [])
                    assert "pwned-llmrelay" not in argv and "漢字" not in argv
                    assert backend.server.api_key not in argv
            _, finish = await collect(backend, job(NASTY, max_tokens=2))
            assert finish.usage["prompt_tokens"] == await backend.count_tokens(job(NASTY))
            assert not Path("/tmp/pwned-llmrelay").exists()
        finally:
            await backend.close()

    run(body)


@pytest.mark.timeout(90)
def test_kill9_mid_stream_then_retry_completes(
    llama_binary: ServerBinary, long_model: Path
) -> None:
    backend = LlamaCppBackend(spec_for(long_model, capacity=1, extra_body={"ignore_eos": True}))

    async def body() -> None:
        try:
            await backend.start()
            assert backend.server is not None
            first_pid = backend.server.pid
            assert first_pid is not None
            got = 0
            with pytest.raises(ProviderError) as info:
                async for event in backend.generate(job("go", max_tokens=8000), "tiny", 1):
                    got += isinstance(event, TextDelta)
                    if got == 3:
                        os.kill(first_pid, signal.SIGKILL)
                    assert not isinstance(event, Finish)
            assert info.value.retryable
            assert info.value.category in (ErrorCategory.NETWORK, ErrorCategory.SERVER_ERROR)
            # The retried attempt waits for the restarted server and completes.
            text, finish = await collect(backend, job("go", max_tokens=16), attempt=2)
            assert finish.usage["completion_tokens"] == 16 and text
            assert backend.server.restarts == 1 and backend.server.pid != first_pid
        finally:
            await backend.close()

    run(body)


def test_cancel_closes_the_stream_and_frees_the_slot(
    llama_binary: ServerBinary, long_model: Path
) -> None:
    backend = LlamaCppBackend(spec_for(long_model, capacity=1, extra_body={"ignore_eos": True}))
    max_tokens = 8000

    async def body() -> None:
        try:
            await backend.start()
            assert backend.server is not None
            server = backend.server
            async with aclosing(
                backend.generate(job("go", max_tokens=max_tokens), "tiny", 1)
            ) as ev:
                seen = 0
                async for _ in ev:
                    seen += 1
                    if seen == 3:
                        break
            # The server's own log shows the cancelled task stopped long before its max_tokens.
            # Read before the next job: `output` keeps only the latest 40 lines, and the next
            # job's lines could push this one out.
            stops: list[int] = []
            for _ in range(100):  # up to 10 s for the line to be relayed
                stops = [
                    int(m.group(1))
                    for line in server.output
                    if (m := re.search(r"stop processing: n_tokens = (\d+)", line))
                ]
                if stops:
                    break
                await asyncio.sleep(0.1)
            # The only slot is free again: the next job runs.
            _, finish = await collect(backend, job("next", max_tokens=4), attempt=1)
            assert finish.usage["completion_tokens"] == 4
            assert stops and stops[0] < max_tokens
        finally:
            await backend.close()

    run(body)


def test_start_errors_are_clear(tmp_path: Path, llama_binary: ServerBinary) -> None:
    async def body() -> None:
        backend = LlamaCppBackend(spec_for(tmp_path / "nope.gguf"))
        with pytest.raises(ProviderError) as info:
            await backend.start()
        assert info.value.category is ErrorCategory.NOT_FOUND and not info.value.retryable
        assert "nope.gguf" in info.value.message and "does not exist" in info.value.message
        await backend.close()
        bad = LlamaCppBackend(spec_for(tmp_path / "x.gguf", binary=str(tmp_path / "no-bin")))
        with pytest.raises(ProviderError, match="no-bin"):
            await bad.start()
        await bad.close()

    run(body)
