"""Moves one job's events from the broker link into a bounded buffer the HTTP side drains.

The pump reads the broker's frames as fast as they come, so the link's queue stays short; the
writer takes everything gathered since its last write as one piece (a slow reader gets fewer,
larger SSE events). Undelivered text above `limit` bytes cancels the job: a reader that does
not keep up cannot make the gateway hold an unbounded backlog. Over the cap while the writer
is not blocked (a burst that came before it could run) the pump yields to it first; eight
times the cap is a hard bound either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from starlette.types import Receive

from gateway.sse import wait_disconnect
from protocol.errors import ErrorCategory, ProviderError
from protocol.results import Done, Event, Origin, Reset, Result, Token


class Backlog:
    """Bytes held for readers across all streams (exported as a gauge)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.peak = 0

    def add(self, n: int) -> None:
        self.bytes += n
        self.peak = max(self.peak, self.bytes)


class Pump:
    def __init__(
        self,
        events: AsyncGenerator[list[Event], None],
        limit: int,
        backlog: Backlog,
    ) -> None:
        self.limit = limit
        self.backlog = backlog
        self.parts: list[str] = []
        self.size = 0
        self.tokens = 0  # token frames received from the broker
        self.sending = False  # the writer is blocked handing text to a slow reader
        self.result: Result | None = None
        self.origin: Origin | None = None  # the attempt now answering (when asked for)
        self.error: ProviderError | None = None
        # The reader's wait, if it waits: one future woken by news, not an Event awaited through
        # wait_for (a task and its callbacks per wait, several per streamed request).
        self._waiter: asyncio.Future[bool] | None = None
        self._loop = asyncio.get_running_loop()
        self.task = self._loop.create_task(self._run(events))
        self.gone = False  # the HTTP client disconnected (see watch)
        self._watch: asyncio.Task[None] | None = None

    def watch(self, receive: Receive) -> None:
        """Watch the request's `receive` for the client going away, for as long as the pump
        lives: then the job is cancelled and every wait on the pump ends (`gone`). One task
        per request, not one per phase of it: each wait would otherwise need its own."""
        self._watch = self._loop.create_task(wait_disconnect(receive))
        self._watch.add_done_callback(self._client_gone)

    def _client_gone(self, watch: asyncio.Task[None]) -> None:
        if watch.cancelled():
            return
        self.gone = True
        self.task.cancel()  # closing the link's stream sends Cancel to the broker
        self._notify()

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def over(self) -> bool:
        """Nothing more will come: the job ended, its client went away, or the pump stopped."""
        return self.finished or self.gone or self.task.done()

    async def _run(self, events: AsyncGenerator[list[Event], None]) -> None:
        try:
            async with contextlib.aclosing(events):  # closing it cancels the job upstream
                async for batch in events:  # what came in one read of the link, in order
                    for event in batch:
                        if isinstance(event, Token):
                            self.tokens += 1
                            self.parts.append(event.text)
                            n = len(event.text.encode())
                            self.size += n
                            self.backlog.add(n)
                            if self.size > self.limit:
                                if self.sending or self.size > 8 * self.limit:
                                    self._drop()
                                    self.error = ProviderError(
                                        ErrorCategory.CANCELLED,
                                        f"the client read too slowly: over {self.limit} bytes "
                                        "were waiting to be sent, so the job was cancelled",
                                    )
                                    return
                                self._notify()
                                await asyncio.sleep(0)  # a burst: let the writer take it first
                        elif isinstance(event, Reset):
                            self._drop()
                        elif isinstance(event, Origin):
                            self.origin = event
                        elif isinstance(event, Done):
                            self.result = event.result
                    self._notify()
        except ProviderError as exc:
            self.error = exc
        else:
            if self.result is None and self.error is None:  # the link's contract says never
                self.error = ProviderError(ErrorCategory.PROTOCOL, "the job ended without a result")
        finally:
            self._notify()

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _wait(self, timeout: float | None) -> bool:
        """Until the pump has news (True) or `timeout` seconds pass (False)."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiter = waiter
        timer = None if timeout is None else self._loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _drop(self) -> None:
        self.backlog.add(-self.size)
        self.parts.clear()
        self.size = 0

    async def take(self) -> str:
        """Wait for text or the end; return the text gathered so far ('' once it ended)."""
        while not self.parts and not self.over:
            await self._wait(None)
        text = "".join(self.parts)
        self._drop()
        return text

    @property
    def started(self) -> bool:
        """Text is waiting, or nothing more will come: what the response's start waits for."""
        return bool(self.parts) or self.over

    async def first(self, keepalive: float) -> bool:
        """Wait for any news (text, the end, an Origin); False after `keepalive` seconds."""
        if self.parts or self.over:
            return True
        return await self._wait(keepalive)

    async def settled(self) -> None:
        """Until the job ended or its client went away."""
        while not self.over:
            await self._wait(None)

    def stop(self) -> None:
        """The request is over: stop the job if it still runs (the link sends Cancel), stop
        watching the client and free the backlog."""
        self.task.cancel()
        if self._watch is not None:
            self._watch.cancel()
        self._drop()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
