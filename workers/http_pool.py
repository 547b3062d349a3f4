"""The HTTP backends' keep-alive pool: the client, its timeouts, stale connections, and what
its transport errors mean.

A server closes an idle keep-alive connection on its own clock: llama-server (cpp-httplib),
uvicorn and Node all do it after 5 s, which is also httpx's own default expiry. A request
written into a connection just as the server closes it fails before any response byte
("Server disconnected without sending a response", or a reset). The pool therefore expires
idle connections sooner than those servers do, and a request that still meets a stale reused
connection is sent again on another one: the server never read it, so it never answered it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import anyio
import httpx
import structlog

from protocol.errors import ErrorCategory, ProviderError

log = structlog.get_logger("llmrelay.worker")

# Defaults for spec.options; all in seconds.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # idle time between bytes; a local model may think long before a token
WRITE_TIMEOUT = 30.0
TOTAL_TIMEOUT = 600.0
KEEPALIVE_EXPIRY = 4.0  # below the 5 s after which llama-server, uvicorn and Node close idle ones

# What a request meets on a connection the server closed as the request went out.
_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_NO_RESPONSE = "without sending a response"  # h11 saw the close before any response byte


def pool_client(
    base_url: str,
    headers: Mapping[str, str],
    timeouts: httpx.Timeout,
    capacity: int,
    *,
    options: Mapping[str, Any],
) -> httpx.AsyncClient:
    """One keep-alive pool of `capacity` connections."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers=dict(headers),
        timeout=timeouts,
        limits=httpx.Limits(
            max_connections=capacity,
            max_keepalive_connections=capacity,
            keepalive_expiry=float(options.get("keepalive_expiry", KEEPALIVE_EXPIRY)),
        ),
        follow_redirects=False,
        trust_env=bool(options.get("trust_env", True)),
    )


# Connections per httpx pool. httpcore walks every connection of a pool when a request starts
# and when one ends, and for each idle one walks the pool again and poll()s its socket: per
# request that grows with the square of the pool's size (a quarter of a worker's CPU at 64).
SHARD_CONNECTIONS = 8


class Pools:
    """`capacity` keep-alive connections as pools of at most SHARD_CONNECTIONS each.

    The backend's semaphore admits at most `capacity` requests, so `take` always finds a pool
    with room and no request ever waits inside httpx. The first pool with room is taken, so
    light traffic keeps reusing the same few warm connections.
    """

    def __init__(self, make: Callable[[int], httpx.AsyncClient], capacity: int) -> None:
        sizes = [
            min(SHARD_CONNECTIONS, capacity - n) for n in range(0, capacity, SHARD_CONNECTIONS)
        ]
        self.clients = [make(size) for size in sizes]
        self.sizes = sizes
        self.free = list(sizes)

    def take(self) -> int:
        for i, free in enumerate(self.free):
            if free:
                self.free[i] = free - 1
                return i
        raise RuntimeError("more concurrent requests than the pools' capacity")

    def give(self, i: int) -> None:
        self.free[i] += 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def _stale(exc: httpx.TransportError) -> bool:
    """The connection closed before any response byte (a reset, or h11's empty response)."""
    if isinstance(exc, httpx.RemoteProtocolError):
        return _NO_RESPONSE in str(exc)
    return isinstance(exc, _STALE)


async def send_streaming(
    client: httpx.AsyncClient, request: httpx.Request, provider: str
) -> httpx.Response:
    """`client.send(request, stream=True)`, sent again while it meets stale reused connections.

    Each stale connection fails once and leaves the pool, so at most one retry per pooled
    connection happens before a fresh one is opened; a fresh connection failing is an error.
    """
    capacity = SHARD_CONNECTIONS
    fresh = False

    async def trace(event: str, info: Mapping[str, Any]) -> None:
        nonlocal fresh
        if event.startswith("connection.connect_"):  # tcp or unix socket: a new connection
            fresh = True

    request.extensions["trace"] = trace
    for retry in range(capacity + 1):
        fresh = False
        try:
            return await client.send(request, stream=True)
        except _STALE as exc:
            if fresh or retry == capacity or not _stale(exc):
                raise
            log.info("stale_connection_retried", provider=provider, error=type(exc).__name__)
    raise AssertionError("unreachable: the last try returns or raises")


def until(deadline: float) -> AbstractContextManager[anyio.CancelScope]:
    """A timeout ending at `deadline` (event-loop time) that raises TimeoutError.

    An anyio scope, not `asyncio.timeout_at`: httpcore shields its connection clean-up with
    anyio, which holds off an anyio scope's cancellation but not a native `task.cancel()`. A
    native timeout that fires inside that clean-up (e.g. the drain grace expiring just as the
    body ends) leaves the connection counted as in use forever (encode/httpcore#1115); after
    `capacity` of them every request waits for a pool slot until its total timeout.
    """
    return anyio.fail_after(max(0.0, deadline - anyio.current_time()))


def network_error(
    provider: str, exc: httpx.TransportError, timeouts: httpx.Timeout
) -> ProviderError:
    if isinstance(exc, httpx.ConnectTimeout):
        what = f"connect timeout after {timeouts.connect}s"
    elif isinstance(exc, httpx.ReadTimeout):
        what = f"read timeout: no data for {timeouts.read}s"
    elif isinstance(exc, httpx.WriteTimeout):
        what = f"write timeout after {timeouts.write}s"
    elif isinstance(exc, httpx.PoolTimeout):
        what = "timed out waiting for a pooled connection"
    elif isinstance(exc, httpx.ConnectError):
        what = "connection failed"
    elif isinstance(exc, httpx.RemoteProtocolError):
        what = "connection closed or broken by the server"
    else:
        what = "connection error"
    detail = str(exc).strip()
    message = f"{what} ({type(exc).__name__}: {detail})" if detail else what
    return ProviderError(ErrorCategory.NETWORK, message, provider=provider)
