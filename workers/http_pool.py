"""The HTTP backends' keep-alive pool: the client, its timeouts, stale connections, and what
its transport errors mean.

The client is aiohttp. Measured streaming the bench's 20-token answers at concurrency 64
(client alone on a core, /work/notes r6 http_cmp): httpx 0.29 with pools of 8 spent 1.42 ms of
CPU per request, aiohttp 3.14 0.35 ms (C parser, no per-request pool walk, no anyio layer), and
its time to first token at concurrency 1 was 0.58 ms against 1.08.

A server closes an idle keep-alive connection on its own clock: llama-server (cpp-httplib),
uvicorn and Node all do it after 5 s. A request written into a connection just as the server
closes it fails before any response byte ("Server disconnected", or a reset). The pool
therefore expires idle connections sooner than those servers do, and a request that still
meets a stale reused connection is sent again on another one: the server never read it, so it
never answered it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import certifi
import structlog
from aiohttp.abc import AbstractStreamWriter
from yarl import URL

from protocol.errors import ErrorCategory, ProviderError

log = structlog.get_logger("llmrelay.worker")

# Defaults for spec.options; all in seconds.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # idle time between bytes; a local model may think long before a token
WRITE_TIMEOUT = 30.0
TOTAL_TIMEOUT = 600.0
MAX_HEADER_LINE = 16 << 10  # bytes
SIDE_CONNECTIONS = 2  # beyond the backend's capacity, see Pool
KEEPALIVE_EXPIRY = 4.0  # below the 5 s after which llama-server, uvicorn and Node close idle ones

# What a request meets on a connection the server closed as the request went out: the close
# seen before any response byte, or a reset (ClientOSError carries the errno).
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float  # DNS and TCP (and TLS) connect
    read: float  # no byte from the server for this long
    write: float  # from having a connection to the request handed to the kernel
    total: float  # the whole exchange, body included


class WriteTimeout(aiohttp.ServerTimeoutError):
    """The request was not written within the write timeout (the server does not read)."""


class Pool:
    """One keep-alive pool of `capacity` connections to one base URL.

    The backend's semaphore admits at most `capacity` requests, so no request ever waits in
    aiohttp's own connection queue.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        capacity: int,
        *,
        options: Mapping[str, Any],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        self.connections = capacity + SIDE_CONNECTIONS
        self._urls: dict[str, URL] = {}
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(_connected_fresh)
        trace.on_connection_reuseconn.append(_connected)
        trace.on_request_headers_sent.append(_headers_sent)
        trust_env = bool(options.get("trust_env", True))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=tls_context(trust_env),
                # Side requests (model list, token counts) run beside `capacity` streams and
                # must not wait for one to end: aiohttp's connect timeout counts that wait.
                limit=self.connections,
                limit_per_host=0,
                keepalive_timeout=float(options.get("keepalive_expiry", KEEPALIVE_EXPIRY)),
            ),
            headers=dict(headers),
            # Connect covers DNS and the TCP/TLS handshake (no request ever queues for a
            # connection, see above); the socket read timer runs from when the request goes out
            # and restarts with every byte received.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=timeouts.connect,
                sock_connect=timeouts.connect,
                sock_read=timeouts.read,
            ),
            trace_configs=[trace],
            # aiohttp's own trust_env looks up proxies and ~/.netrc in a worker thread on every
            # request: two thread hand-offs per job. The environment is read once instead.
            trust_env=False,
            auto_decompress=True,
            # h11's limit (httpx), above aiohttp's 8 KiB: a CDN in front of a provider can send
            # long header lines.
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
        )
        self.proxy = env_proxy(self.base_url) if trust_env else None

    def url(self, path: str) -> URL:
        """`path` under the base URL (an absolute http(s) URL is taken as it is)."""
        url = self._urls.get(path)
        if url is None:
            absolute = path.startswith(("http://", "https://"))
            url = self._urls[path] = URL(path if absolute else self.base_url + path)
        return url

    async def send(
        self,
        method: str,
        path: str,
        *,
        deadline: float,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        provider: str,
    ) -> aiohttp.ClientResponse:
        """The response once its head has arrived, sent again while it meets stale reused
        connections; `deadline` (event-loop time) bounds getting the head.

        Each stale connection fails once and leaves the pool, so at most one retry per pooled
        connection happens before a fresh one is opened; a fresh connection failing is an error.
        """
        for retry in range(self.connections + 1):
            phase = _Phase(deadline, self.timeouts.write)
            try:
                async with asyncio.timeout_at(deadline) as scope:
                    phase.scope = scope
                    return await self.session.request(
                        method,
                        self.url(path),
                        data=None if body is None else _Body(body, phase),
                        headers=headers,
                        params=params,
                        allow_redirects=False,
                        proxy=self.proxy,
                        trace_request_ctx=phase,
                    )
            except TimeoutError:
                if phase.writing:
                    written = f"request not written within {self.timeouts.write}s"
                    raise WriteTimeout(written) from None
                raise
            except _STALE as exc:
                if phase.fresh or retry == self.connections or _unconnected(exc):
                    raise
                log.info("stale_connection_retried", provider=provider)
        raise AssertionError("unreachable: the last try returns or raises")

    async def aclose(self) -> None:
        await self.session.close()


def tls_context(trust_env: bool) -> ssl.SSLContext:
    """Certificates as httpx verified them: certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR
    when the environment names them (and trust_env is on)."""
    cafile = os.environ.get("SSL_CERT_FILE") if trust_env else None
    capath = os.environ.get("SSL_CERT_DIR") if trust_env else None
    if cafile and os.path.isfile(cafile):
        return _context(cafile, None)
    if capath and os.path.isdir(capath):
        return _context(None, capath)
    return _context(certifi.where(), None)


@functools.lru_cache(maxsize=8)
def _context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    # Loading a bundle takes ~20 ms; every pool of a process shares the one context.
    return ssl.create_default_context(cafile=cafile, capath=capath)


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, each
    also lower-case), or None when there is none or NO_PROXY exempts its host."""
    parsed = URL(url)
    if not parsed.host:
        return None
    proxies = urllib.request.getproxies()
    if urllib.request.proxy_bypass(parsed.host):  # NO_PROXY
        return None
    return proxies.get(parsed.scheme) or proxies.get("all")


class _Phase:
    """Where one request stands, kept by aiohttp's trace callbacks: whether its connection is
    new, and the write timeout, armed from having a connection until the request is out."""

    __slots__ = ("deadline", "fresh", "scope", "write", "writing")

    def __init__(self, deadline: float, write: float) -> None:
        self.deadline = deadline
        self.write = write
        self.scope: asyncio.Timeout | None = None
        self.fresh = False
        self.writing = False

    def connected(self) -> None:
        if self.scope is not None:
            self.writing = True
            loop = asyncio.get_running_loop()
            self.scope.reschedule(min(self.deadline, loop.time() + self.write))

    def sent(self) -> None:
        if self.writing and self.scope is not None:
            self.writing = False
            self.scope.reschedule(self.deadline)


def _unconnected(exc: Exception) -> bool:
    """The connect itself failed: no connection, so nothing stale to skip."""
    return isinstance(exc, aiohttp.ClientConnectorError)


def _phase(ctx: SimpleNamespace) -> _Phase | None:
    phase = ctx.trace_request_ctx
    return phase if isinstance(phase, _Phase) else None


async def _connected_fresh(_s: aiohttp.ClientSession, ctx: SimpleNamespace, _p: Any) -> None:
    if (phase := _phase(ctx)) is not None:
        phase.fresh = True
        phase.connected()


async def _connected(_s: aiohttp.ClientSession, ctx: SimpleNamespace, _p: Any) -> None:
    if (phase := _phase(ctx)) is not None:
        phase.connected()


async def _headers_sent(
    _s: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    # A request with a body is out when its body has been written (_Body); one without is its
    # head, a few hundred bytes the kernel takes at once.
    if (phase := _phase(ctx)) is not None and params.method in ("GET", "HEAD"):
        phase.sent()


class _Body(aiohttp.BytesPayload):
    """A JSON request body that disarms the write timeout once the kernel has taken it all
    (aiohttp's own chunk-sent signal fires before the write, so it cannot tell)."""

    def __init__(self, value: bytes, phase: _Phase) -> None:
        super().__init__(value, content_type="application/json")
        self._phase = phase

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await super().write_with_length(writer, content_length)
        await writer.drain()
        self._phase.sent()

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)


def network_error(provider: str, exc: aiohttp.ClientError, timeouts: Timeouts) -> ProviderError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        what = f"connect timeout after {timeouts.connect}s"
    elif isinstance(exc, WriteTimeout):
        what = f"write timeout after {timeouts.write}s"
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        what = f"read timeout: no data for {timeouts.read}s"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        what = "connection failed"
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        what = "connection closed or broken by the server"
    elif isinstance(exc, aiohttp.ClientResponseError):
        what = "malformed HTTP response"
    else:
        what = "connection error"
    detail = _detail(exc)
    message = f"{what} ({type(exc).__name__}: {detail})" if detail else what
    return ProviderError(ErrorCategory.NETWORK, message, provider=provider)


def _detail(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return str(exc.message).strip()  # str(exc) names the request's URL
    return str(exc).strip()
