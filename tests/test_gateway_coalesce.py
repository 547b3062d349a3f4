"""The gateway's transport joins the writes of one loop step (gateway/coalesce.py).

The unit tests use a recording transport on a real event loop; the last one serves a streamed
response through real uvicorn on a loopback socket and counts the writes that reach the socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn

from gateway.coalesce import StepHttpProtocol, StepTransport
from tests.harness import free_port, run_async

pytestmark = pytest.mark.timeout(30)


class Recorder(asyncio.Transport):
    """Records what reaches the "socket"."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.buffered = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default


def wrapped() -> tuple[Recorder, StepTransport]:
    inner = Recorder()
    return inner, StepTransport(inner)


@run_async
async def test_writes_of_one_step_reach_the_socket_as_one() -> None:
    inner, step = wrapped()
    step.write(b"HTTP/1.1 200 OK\r\n\r\n")
    step.write(b"")  # nothing to send is not a write
    step.write(b"5\r\nhello\r\n")
    assert inner.writes == []  # held until the step ends
    assert step.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n")
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n"]
    assert step.get_write_buffer_size() == 0
    step.write(b"0\r\n\r\n")  # a later step is a write of its own
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"0\r\n\r\n"]


@run_async
async def test_close_sends_what_was_held_first() -> None:
    inner, step = wrapped()
    step.write(b"last bytes")
    step.close()
    assert inner.writes == [b"last bytes"] and inner.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing more to send
    assert inner.writes == [b"last bytes"]


@run_async
async def test_bytes_held_for_a_transport_closed_meanwhile_are_dropped() -> None:
    inner, step = wrapped()
    step.write(b"to a peer that left")
    inner.closed = True  # the connection was lost before the step ended
    await asyncio.sleep(0)
    assert inner.writes == []


@run_async
async def test_everything_else_is_the_wrapped_transports() -> None:
    inner, step = wrapped()
    inner.buffered = 7
    assert step.get_extra_info("peername") == ("127.0.0.1", 1234)
    assert step.is_closing() is False
    assert step.get_write_buffer_size() == 7  # the real buffer counts for flow control


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
    await asyncio.sleep(0.05)  # the next piece comes in a later step
    await send({"type": "http.response.body", "body": b"data: second\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_a_streamed_answer_through_uvicorn_is_head_and_first_piece_in_one_write() -> None:
    writes: list[bytes] = []

    class Counting(StepHttpProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            real_write = transport.write

            def write(data: Any) -> None:
                writes.append(bytes(data))
                real_write(data)

            transport.write = write  # type: ignore[method-assign]
            super().connection_made(transport)

    port = free_port()
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, http=Counting, log_level="warning")
    server = uvicorn.Server(config)

    async def main() -> bytes:
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            body = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return body
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    received = asyncio.run(main())
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"data: first" in received and received.endswith(b"0\r\n\r\n")
    # Head and first piece in one write; the second piece and the terminator in another.
    assert len(writes) == 2, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK") and b"data: first" in writes[0]
    assert b"data: second" in writes[1] and writes[1].endswith(b"0\r\n\r\n")
