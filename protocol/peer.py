"""One DEALER link to the broker, shared by the client stub and the worker runtime.

Open (tune, CURVE, connect), liveness (when was the broker last heard), reconnect by swapping
the socket between two polls (so no await is pending on a closed socket), drain what is
queued without one await per message, and send without an event-loop round trip. Readiness
(protocol/readiness.py) owns the socket's FD, so no wake-up is lost to a send. With
`on_lost`, a socket monitor (protocol/link_monitor.py) reports a dropped connection at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import zmq

from protocol.link_monitor import LinkMonitor
from protocol.readiness import Readiness
from protocol.transport import SocketOptions, apply_client_curve, tune_socket


class PeerLink:
    def __init__(
        self,
        endpoint: str,
        options: SocketOptions,
        identity: Callable[[], bytes],
        *,
        heartbeat_interval: float,
        liveness: int,
        on_reopen: Callable[[str], Awaitable[None]] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """`identity` names each new socket; `on_reopen(reason)` runs after a reconnect;
        `on_lost()` when an established connection dropped (it may `request_reconnect`)."""
        self.endpoint = endpoint
        self.options = options
        self.identity = identity
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.on_reopen = on_reopen
        self.on_lost = on_lost
        self.monitor: LinkMonitor | None = None
        self.drops = 0  # established connections that dropped (seen by the monitor)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.ready: Readiness | None = None  # the current socket and its FD's wake-ups
        self.closed_missed = 0  # lost wake-ups counted on sockets already closed
        self.last_heard = time.monotonic()
        self.routing_id = b""  # the current socket's identity
        self.reconnects = 0
        self.reconnect_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.ready is not None

    @property
    def missed(self) -> int:
        """Receive waits that timed out with a message waiting (lost wake-ups; should be 0)."""
        return self.closed_missed + (self.ready.missed if self.ready is not None else 0)

    def open(self) -> bytes:
        """A fresh socket (closing any old one); returns its routing identity."""
        self.close()
        identity = self.identity()
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        tune_socket(sock, self.options)
        apply_client_curve(sock, self.options)
        if self.on_lost is not None:  # before connect: the first handshake is seen too
            self.monitor = LinkMonitor(sock, self._connection_lost)
        sock.connect(self.endpoint)
        self.ready = Readiness(sock)
        self.routing_id = identity
        self.last_heard = time.monotonic()
        return identity

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        if self.ready is not None:
            self.closed_missed += self.ready.missed
            self.ready.close()
            self.ready = None

    def _connection_lost(self) -> None:
        self.drops += 1
        assert self.on_lost is not None
        self.on_lost()
        if self.reconnect_reason is not None and self.ready is not None:
            self.ready.wake()  # the receive waiting now returns, and the next one reconnects

    # --- liveness -------------------------------------------------------------------------

    def silent_for(self, now: float) -> float:
        return now - self.last_heard

    def is_silent(self, now: float) -> bool:
        """Nothing heard from the broker for `liveness` heartbeat intervals."""
        return self.silent_for(now) > self.heartbeat_interval * self.liveness

    def request_reconnect(self, reason: str) -> None:
        """Swap sockets at the next `receive` (between two polls)."""
        self.reconnect_reason = reason

    # --- traffic --------------------------------------------------------------------------

    async def receive(self, timeout_ms: int) -> list[list[bytes]]:
        """Messages that arrived within `timeout_ms` (each a list of frames), all at once."""
        if self.reconnect_reason is not None:
            reason, self.reconnect_reason = self.reconnect_reason, None
            self.reconnects += 1
            self.open()
            if self.on_reopen is not None:
                await self.on_reopen(reason)
        assert self.ready is not None
        if not await self.ready.wait(zmq.POLLIN, timeout_ms / 1000):
            return []
        self.last_heard = time.monotonic()
        return self.ready.drain()

    def try_send(self, frames: list[bytes]) -> bool:
        """Send now if the socket is open and has room; False otherwise (nothing sent)."""
        return self.ready is not None and self.ready.try_send(frames)

    async def send(self, frames: list[bytes]) -> None:
        """Send now if the queue has room, else wait for it.

        A send that fails because a reconnect closed its socket meanwhile is dropped: the new
        broker does not know what it was about.
        """
        ready = self.ready
        assert ready is not None, "link not open"
        try:
            await ready.send(frames)
        except zmq.ZMQError:
            if ready is self.ready:
                raise
