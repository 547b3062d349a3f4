"""A server-sent-events response that notices a client going away while nothing is sent.

Starlette's StreamingResponse learns of a disconnect only when a write fails; a stream waiting
for its next token would keep its job running. Here a second task waits for `http.disconnect`
and cancels the stream, whose generator then stops the job (see gateway.pump.Pump.stop).
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStream(StreamingResponse):
    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            for task in (stream, gone):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        if self.background is not None:
            await self.background()
