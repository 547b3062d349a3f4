"""Helpers to run a backend against a fake from a plain (non-async) test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from protocol.job import Job
from workers.backend import Finish, StreamEvent, TextDelta
from workers.http import HttpBackend
from workers.registry import backend_class
from workers.spec import ProviderSpec

T = TypeVar("T")

FAKE_KEY = "sk-fake-test-key-0123456789abcdef"  # what the fakes expect and backends send

# Where each provider's API lives below a fake's root URL.
API_ROOT = {"openai": "/v1", "anthropic": "", "openrouter": "/api/v1", "ollama": ""}


def make_backend(kind: str, url: str, capacity: int = 8, **options: Any) -> HttpBackend:
    opts = {"base_url": url + API_ROOT[kind], "api_key": options.pop("api_key", None)}
    spec = ProviderSpec(name=kind, kind=kind, capacity=capacity, options={**opts, **options})
    backend = backend_class(kind)(spec)
    assert isinstance(backend, HttpBackend)
    return backend


@asynccontextmanager
async def started(backend: HttpBackend) -> AsyncIterator[HttpBackend]:
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def make_job(text: str = "Say hello", *, stream: bool = True, **params: Any) -> Job:
    return Job(
        id="job-1",
        messages=[{"role": "user", "content": text}],
        model="test-model",
        stream=stream,
        params=params,
    )


async def collect(backend: HttpBackend, job: Job) -> tuple[list[StreamEvent], str, Finish]:
    events = [event async for event in backend.generate(job, job.model or "test-model", 1)]
    assert events and isinstance(events[-1], Finish), events
    assert all(isinstance(e, TextDelta) for e in events[:-1]), events
    text = "".join(e.text for e in events[:-1] if isinstance(e, TextDelta))
    return events, text, events[-1]


async def with_backend(backend: HttpBackend, body: Callable[[HttpBackend], Awaitable[T]]) -> T:
    async with started(backend):
        return await body(backend)
