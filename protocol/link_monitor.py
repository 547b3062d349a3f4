"""Learn at once that a DEALER's connection to the broker dropped (a ZeroMQ socket monitor).

ZeroMQ hides connections: a peer that went away is reconnected to in the background and a
send meanwhile just queues. The application heartbeats notice only after their liveness
window. The socket monitor reports the drop itself: the broker process exited (the kernel
closed its TCP connection) or a ZMTP heartbeat timed out (transport.tune_socket: a frozen
broker, a network path gone). What arrived on the old connection may be lost, so the owner
starts over (a worker registers again, a client resubmits its unfinished jobs).

Only a drop after a completed handshake counts: a CURVE refusal or a broker that is not up
yet also ends connections, and starting over would not help them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class LinkMonitor:
    """Calls `on_lost()` when an established connection of `sock` drops (asyncio, one loop)."""

    def __init__(self, sock: zmq.Socket[bytes], on_lost: Callable[[], None]) -> None:
        self.sock = sock
        self.on_lost = on_lost
        self.loop = asyncio.get_running_loop()
        self.monitor = sock.get_monitor_socket(EVENTS)
        self.fd = int(self.monitor.get(zmq.FD))
        self.established = 0  # connections whose handshake completed and that are still up
        self.closed = False
        self.loop.add_reader(self.fd, self._on_fd)
        self._on_fd()  # reading ZMQ_EVENTS arms the FD; until then it may never signal

    def _on_fd(self) -> None:
        # Edge-triggered like every ZeroMQ FD: read until nothing is left.
        while not self.closed and int(self.monitor.get(zmq.EVENTS)) & zmq.POLLIN:
            event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.established += 1
            elif event == zmq.EVENT_DISCONNECTED and self.established > 0:
                self.established -= 1
                self.on_lost()

    def close(self) -> None:
        """Stop watching; call before the socket itself is closed."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
