"""uvicorn's HTTP protocol with the writes of one event-loop step sent as one.

uvicorn writes a response's head when the app sends `http.response.start` and each body piece
when it is sent: a streamed answer's head and first text are two writes, as are its last text
and the chunked terminator, and each write wakes the reader. Measured through the gateway at
concurrency 1 (client and gateway sharing a core), the client saw the first text 0.75 ms after
the gateway handed it over, most of it spent reading the head on its own first. Joined, both
go out in one write a few microseconds later: at the end of the loop step that made them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class StepTransport:
    """An asyncio transport whose writes of one loop step go to the socket as one write.

    Everything but `write` and `close` is the wrapped transport's own. Bytes held here wait at
    most until the loop runs its next callbacks, so a slow reader still pushes back through
    the real transport's flow control.
    """

    __slots__ = ("_loop", "_parts", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._parts: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._parts:
            self._loop.call_soon(self._flush)
        self._parts.append(data)

    def _flush(self) -> None:
        parts, self._parts = self._parts, []
        if parts and not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._parts))

    def close(self) -> None:
        self._flush()  # what the app sent before closing still goes out first
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class StepHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `StepTransport` (pass it as `uvicorn.Config(http=)`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(StepTransport(transport))  # type: ignore[arg-type]
