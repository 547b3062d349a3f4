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
        events: AsyncGenerator[Event, None],
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
        self.changed = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(events))

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None

    async def _run(self, events: AsyncGenerator[Event, None]) -> None:
        try:
            async with contextlib.aclosing(events):  # closing it cancels the job upstream
                async for event in events:
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
                            await asyncio.sleep(0)  # a burst: let the writer take it first
                    elif isinstance(event, Reset):
                        self._drop()
                    elif isinstance(event, Origin):
                        self.origin = event
                    elif isinstance(event, Done):
                        self.result = event.result
                    self.changed.set()
        except ProviderError as exc:
            self.error = exc
        finally:
            self.changed.set()

    def _drop(self) -> None:
        self.backlog.add(-self.size)
        self.parts.clear()
        self.size = 0

    async def take(self) -> str:
        """Wait for text or the end; return the text gathered so far ('' once it ended)."""
        while not self.parts and not self.finished:
            self.changed.clear()
            await self.changed.wait()
        text = "".join(self.parts)
        self._drop()
        return text

    @property
    def started(self) -> bool:
        """Text is waiting, or the job ended: what the response's start waits for."""
        return bool(self.parts) or self.finished

    async def first(self, keepalive: float) -> bool:
        """Wait for any news (text, the end, an Origin); False after `keepalive` seconds."""
        if self.parts or self.finished:
            return True
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), keepalive)
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        """The reader went away: stop the job (the link sends Cancel) and free the backlog."""
        self.task.cancel()
        self._drop()
