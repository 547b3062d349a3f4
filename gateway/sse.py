"""Server-sent events: the response class, and the wait for a client going away.

Starlette's StreamingResponse learns of a disconnect only when a write fails (with ASGI spec
2.4), or runs a second task per response that waits for it (older servers, uvicorn included).
A stream waiting for its next token would otherwise keep its job running. The request's Pump
(gateway.pump) watches `receive` with `wait_disconnect` from the moment the body is read, for
both the wait for the first text and the stream itself, and stops the job when the client goes.
"""

from __future__ import annotations

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStream(StreamingResponse):
    """A `text/event-stream` response whose body generator watches for the client itself
    (through its Pump), so it is streamed from the request's own task with no second one."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.stream_response(send)
        if self.background is not None:
            await self.background()
