"""asyncio readiness of a plain ZeroMQ socket that never loses a wake-up.

A ZeroMQ socket's FD is edge-triggered: it signals "look at ZMQ_EVENTS", and any call on the
socket (a send included) may consume that signal while leaving a message queued. So whoever
owns every call on the socket must re-check ZMQ_EVENTS after each one. pyzmq's asyncio socket
does this for its own calls, but not for calls on a plain shadow of it; a receiver awaiting
`poll(timeout)` then sleeps out the whole timeout with a message waiting. Here one object owns
the socket's FD reader, every send and every receive, and re-checks after each.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

from protocol.transport import recv_parts, send_parts


class Readiness:
    """Waits for POLLIN/POLLOUT on `sock` (a plain socket) from one asyncio loop."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.fd = int(sock.get(zmq.FD))
        self.waiters: list[tuple[int, asyncio.Future[bool]]] = []
        # Waits whose timeout expired while the awaited event was pending: each is a lost
        # wake-up (should stay 0; tests and `make bench` read it).
        self.missed = 0
        self.closed = False
        self._check_soon = False  # a check() is scheduled for this loop turn's end
        # Known since the last call on the socket: nothing to receive, and the FD signals when
        # something comes (true after ZMQ_EVENTS read without POLLIN, or a receive that found
        # nothing; a send makes it unknown again). A POLLIN wait then needs no ZMQ_EVENTS read,
        # which costs a syscall or two: 8 us on average in a gateway streaming at concurrency
        # 1, which read it 12.7 times per request before and 5.0 since.
        self._quiet = False
        self.loop.add_reader(self.fd, self._on_fd)

    def _events(self) -> int:
        events = int(self.sock.get(zmq.EVENTS))
        self._quiet = not events & zmq.POLLIN
        return events

    def _on_fd(self) -> None:
        # Reading ZMQ_EVENTS is what resets the FD; skipping it would make the loop spin.
        if self.closed:
            return
        events = self._events()
        for mask, fut in self.waiters:
            if events & mask and not fut.done():
                fut.set_result(True)

    def check(self) -> None:
        """Wake every waiter whose event is ready; call after any call on the socket.

        Done once at the end of the loop turn, not after every call: reading ZMQ_EVENTS costs
        as much as a send, and a worker relaying tokens sends many times per turn. A waiter
        cannot run before the turn ends anyway, so it wakes just as soon.
        """
        if self.waiters and not self._check_soon:
            self._check_soon = True
            self.loop.call_soon(self._checked)

    def _checked(self) -> None:
        self._check_soon = False
        self._on_fd()

    def wake(self) -> None:
        """End every wait now (each reports whether its event is ready): the owner has
        something to do first, e.g. swap sockets after its connection dropped."""
        for _, fut in self.waiters:
            if not fut.done():
                fut.set_result(False)  # not known to be ready: wait() reads ZMQ_EVENTS

    def _expire(self, mask: int, fut: asyncio.Future[bool]) -> None:
        if fut.done():
            return
        if not self.closed and self._events() & mask:
            self.missed += 1
        fut.set_result(False)

    async def wait(self, mask: int, timeout: float) -> bool:
        """True as soon as `mask` is ready; False after `timeout` seconds without it."""
        if self.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        if not (mask == zmq.POLLIN and self._quiet) and self._events() & mask:
            return True
        fut: asyncio.Future[bool] = self.loop.create_future()
        entry = (mask, fut)
        self.waiters.append(entry)
        timer = self.loop.call_later(timeout, self._expire, mask, fut)
        try:
            seen = await fut  # True: _on_fd saw it (a caller whose send fails waits again)
        finally:
            timer.cancel()
            self.waiters.remove(entry)
        if self.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        return seen or bool(self._events() & mask)

    def try_send(self, frames: list[Any]) -> bool:
        """Send now if the queue has room (the usual case); False when it is full."""
        self._quiet = False
        try:
            send_parts(self.sock, frames)
        except zmq.Again:
            return False
        finally:
            self.check()  # the send may have consumed the FD's signal for a waiting message
        return True

    async def send(self, frames: list[Any], timeout: float = 1.0) -> None:
        """Send, waiting for room as long as it takes (re-checked every `timeout` seconds)."""
        while not self.try_send(frames):
            await self.wait(zmq.POLLOUT, timeout)

    def drain(self, limit: int = 1000) -> list[list[bytes]]:
        """Every message already queued (up to `limit`), without one await per message."""
        batch: list[list[bytes]] = []
        self._quiet = False
        try:
            for _ in range(limit):
                batch.append([frame.bytes for frame in recv_parts(self.sock)])
        except zmq.Again:
            # libzmq handled its pending commands before saying so: the FD is armed.
            self._quiet = True
        finally:
            self.check()
        return batch

    def close(self) -> None:
        """Stop watching and close the socket; pending waits raise ZMQError."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        self.wake()
        self.sock.close(linger=0)
