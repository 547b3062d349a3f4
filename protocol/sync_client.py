"""The blocking client: an `AsyncClient` driven by a private event-loop thread.

For scripts and threads that are not asyncio code; each call crosses to the loop thread and
waits. A stream crosses once per batch of events already received, not once per token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

from protocol import eventloop
from protocol.async_client import DEFAULT_ENDPOINT, AsyncClient
from protocol.errors import ProviderError
from protocol.job import Job, build_job
from protocol.results import Event, Result

T = TypeVar("T")


class Client:
    """Blocking client: the same calls as AsyncClient, without `await`."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, **kwargs: Any) -> None:
        self._loop = eventloop.new_event_loop()  # uvloop when installed
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._async = self._call(self._make(endpoint, kwargs))

    @staticmethod
    async def _make(endpoint: str, kwargs: dict[str, Any]) -> AsyncClient:
        return AsyncClient(endpoint, **kwargs)

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self._async.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive() and not self._loop.is_closed():
            # uvloop, unlike asyncio, keeps its file descriptors until the loop is closed
            self._loop.close()

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if self._loop.is_running():
                self._call(agen.aclose())  # type: ignore[attr-defined]

    def _flatten(self, batches: AsyncIterator[list[T]]) -> Iterator[T]:
        for batch in self._iterate(batches):
            yield from batch

    def complete(self, **kwargs: Any) -> Result:
        result: Result = self._call(self._async.complete(**kwargs))
        return result

    def result(self, job: Job) -> Result:
        """Run a built `job` to its end (see `AsyncClient.result`)."""
        result: Result = self._call(self._async.result(job))
        return result

    def stream(self, **kwargs: Any) -> Iterator[Event]:
        job = build_job(**kwargs)  # validate in the caller's thread, before anything is sent
        return self._flatten(self._async.submit_job_batches(job))

    def map(
        self, jobs: Iterable[Mapping[str, Any]], *, concurrency: int = 64
    ) -> Iterator[Result | ProviderError]:
        return self._iterate(self._async.map(jobs, concurrency=concurrency))

    def cancel(self, job_id: str) -> None:
        self._call(self._async.cancel(job_id))

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        status: dict[str, Any] = self._call(self._async.status(timeout))
        return status

    def capabilities(self, provider: str, model: str, timeout: float = 5.0) -> Any:
        return self._call(self._async.capabilities(provider, model, timeout))

    def find_providers(self, capability: str, **kwargs: Any) -> Any:
        return self._call(self._async.find_providers(capability, **kwargs))

    def models(self, **kwargs: Any) -> Any:
        return self._call(self._async.models(**kwargs))

    def count_tokens(self, **kwargs: Any) -> Any:
        return self._call(self._async.count_tokens(**kwargs))
