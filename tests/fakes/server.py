"""The core every fake provider shares: a real HTTP/1.1 server on 127.0.0.1 in its own thread.

Plain asyncio streams keep it small and let a test control every byte and every flush (a
framework would buffer or re-chunk). Keep-alive is real, so `connections` (TCP connections
accepted) measures connection pooling. A provider fake only renders a `Reply` script into
a `Response`; this module does the transport: chunked streaming, pauses, stalls, drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    """What the fake does for one request. Providers read the fields that apply to them."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    status: int = 200
    body: Any = None  # for status != 200: the exact error body (dict -> JSON, str/bytes raw)
    headers: dict[str, str] = field(default_factory=dict)
    first_token_delay: float = 0.0  # seconds before the first token
    token_delay: float = 0.0  # seconds between tokens
    error_after: int | None = None  # mid-stream: after this many tokens send `error`
    error: Any = None  # the provider's mid-stream error payload (provider-shaped)
    drop_after: int | None = None  # close the socket after this many tokens
    stall_after: int | None = None  # stop sending (keep the socket) after this many tokens
    keepalive: int = 0  # keep-alive comments / pings before each token
    split_every: int | None = None  # write the body in pieces of this many bytes
    prompt_tokens: int = 7
    completion_tokens: int | None = None  # default: len(tokens)
    finish_reason: str = "stop"
    cost: float | None = None
    raw: Sequence[Piece] | None = None  # exact streamed body pieces (replaces rendering)
    model: str | None = None  # the model name the server reports (default: the requested one)

    @property
    def completion(self) -> int:
        return len(self.tokens) if self.completion_tokens is None else self.completion_tokens


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def route(self) -> str:
        """The path without its query."""
        return urlsplit(self.path).path

    def query(self, name: str) -> str | None:
        values = parse_qs(urlsplit(self.path).query).get(name)
        return values[0] if values else None


@dataclass
class ModelList:
    """What the fake's model-list endpoint answers (not taken from the `Reply` queue)."""

    ids: list[str] = field(default_factory=list)
    status: int = 200
    body: Any = None  # replaces the rendered list (dict -> JSON, str/bytes raw): errors, junk
    page_size: int | None = None  # at most this many per page, where the provider pages


@runtime_checkable
class ListsModels(Protocol):
    """A provider fake that renders its models endpoint; None if `request` is not for it."""

    default_models: tuple[str, ...]

    def models(self, request: Request, listing: ModelList) -> Response | None: ...


def scripted_listing(listing: ModelList) -> Response | None:
    """The response a test scripted instead of the rendered list (an error, junk), if any."""
    if listing.status == 200 and listing.body is None:
        return None
    body = listing.body if listing.body is not None else {"error": "scripted failure"}
    return json_response(listing.status, body)


def page(ids: list[str], offset: int, limit: int | None) -> tuple[list[str], bool]:
    """One page of `ids` from `offset`, and whether more follow."""
    end = len(ids) if limit is None else offset + max(1, limit)
    return ids[offset:end], end < len(ids)


@dataclass(frozen=True)
class Pause:
    seconds: float


class Stall:
    """Stop sending but keep the connection open until the client goes away."""


class Drop:
    """Close the connection at once, mid-body."""


Piece = bytes | Pause | Stall | Drop


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # sent with Content-Length when `pieces` is None
    pieces: Sequence[Piece] | None = None  # streamed with chunked transfer encoding


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if isinstance(body, bytes | str):
        raw = body.encode() if isinstance(body, str) else body
    else:
        raw = json.dumps(body).encode()
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, raw)


class ChatEndpoint:
    """The request flow every chat fake shares: route, auth, a scripted error status, then a
    streamed or whole answer. A provider fake fills in only what is its own."""

    paths: tuple[str, ...] = ()
    not_found: Any = "not found"  # the provider's own 404 body
    default_model = "test-model"
    stream_type = "text/event-stream"
    streams_by_default = False  # Ollama streams unless the body says "stream": false
    request_id: tuple[str, str] | None = None  # header the provider stamps on answers

    def authorize(self, request: Request) -> Response | None:
        return None  # an error response when the request may not pass

    def render_stream(self, reply: Reply, body: dict[str, Any], model: str) -> list[Piece]:
        raise NotImplementedError

    def render_whole(self, reply: Reply, body: dict[str, Any], model: str) -> Any:
        raise NotImplementedError

    def __call__(self, request: Request, reply: Reply) -> Response:
        if request.method != "POST" or request.route not in self.paths:
            return json_response(404, self.not_found)
        denied = self.authorize(request)
        if denied is not None:
            return denied
        if reply.status != 200:
            return json_response(reply.status, reply.body, reply.headers)
        body = request.json() or {}
        model = reply.model or body.get("model", self.default_model)
        headers = {**(dict([self.request_id]) if self.request_id else {}), **reply.headers}
        if body.get("stream", self.streams_by_default):
            pieces = reply.raw if reply.raw is not None else self.render_stream(reply, body, model)
            return Response(200, {"Content-Type": self.stream_type, **headers}, pieces=pieces)
        return json_response(200, self.render_whole(reply, body, model), headers)


def token_pieces(
    reply: Reply,
    token: Callable[[str], bytes],
    keepalive: bytes | None,
    error: Callable[[], bytes],
) -> Iterator[Piece]:
    """The shared token loop: delays, keep-alives, mid-stream error, drop and stall."""
    for i, text in enumerate(reply.tokens):
        if reply.error_after == i:
            yield error()
            return
        if reply.drop_after == i:
            yield Drop()
            return
        if reply.stall_after == i:
            yield Stall()
            return
        delay = reply.first_token_delay if i == 0 else reply.token_delay
        if delay:
            yield Pause(delay)
        if keepalive is not None:
            yield from [keepalive] * reply.keepalive
        yield token(text)
    n = len(reply.tokens)
    if reply.error_after is not None and reply.error_after >= n:
        yield error()
    elif reply.drop_after is not None and reply.drop_after >= n:
        yield Drop()
    elif reply.stall_after is not None and reply.stall_after >= n:
        yield Stall()


Handler = Callable[[Request, Reply], Response]


class FakeServer:
    """Serves scripted replies; `script()` queues them, `default` answers when none is queued."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.default = Reply()
        # Answered at the provider's models endpoint; these requests go to `model_requests`
        # and never consume a scripted reply (a worker asks once when it starts).
        self.models = ModelList(
            list(handler.default_models) if isinstance(handler, ListsModels) else []
        )
        self.model_requests: list[Request] = []
        self.replies: deque[Reply] = deque()
        self.requests: list[Request] = []
        self.connections = 0  # TCP connections accepted
        self.open_connections = 0
        self.client_disconnects = 0  # clients that went away while the fake was stalled
        # The stale keep-alive race, made certain: close this many connections, unanswered,
        # as a request arrives on them; `close_reused` only when it is not their first one.
        self.close_reused = 0
        self.close_fresh = 0
        self.closed_unanswered = 0
        self.port = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        with self._cond:
            self.replies.extend(replies)

    def wait_for(self, predicate: Callable[[FakeServer], bool], timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def _changed(self, update: Callable[[], None]) -> None:
        with self._cond:
            update()
            self._cond.notify_all()

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> FakeServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as exc:  # surfaced to start(); the thread must not die silently
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="fake-http", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure or not self.port:
            self.stop()
            raise RuntimeError(f"fake server did not start: {failure}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    # -- HTTP -------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._changed(lambda: self._count(+1, accepted=True))
        try:
            served = 0
            while await self._exchange(reader, writer, served):
                served += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping; end quietly (asyncio logs cancelled handlers)
        finally:
            self._tasks.discard(task)
            self._changed(lambda: self._count(-1))
            writer.transport.abort()

    def _close_unanswered(self, reused: bool) -> bool:
        with self._cond:
            which = "close_reused" if reused else "close_fresh"
            if getattr(self, which) <= 0:
                return False
            setattr(self, which, getattr(self, which) - 1)
            self.closed_unanswered += 1
            self._cond.notify_all()
            return True

    def _client_went_away(self) -> None:
        self.client_disconnects += 1

    def _count(self, delta: int, accepted: bool = False) -> None:
        self.open_connections += delta
        if accepted:
            self.connections += 1

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, served: int
    ) -> bool:
        """One request/response; False when the connection must end."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        if self._close_unanswered(reused=served > 0):
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self._body(reader, headers)
        request = Request(method, path, headers, body)
        if isinstance(self.handler, ListsModels):
            with self._cond:
                listing = self.models
            listed = self.handler.models(request, listing)
            if listed is not None:
                self._changed(lambda: self.model_requests.append(request))
                keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                return await self._send(reader, writer, listed, self.default, keep)
        with self._cond:
            self.requests.append(request)
            reply = self.replies.popleft() if self.replies else self.default
            self._cond.notify_all()
        response = self.handler(request, reply)
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return await self._send(reader, writer, response, reply, keep)

    async def _body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append((await reader.readexactly(size + 2))[:-2])
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        return await reader.readexactly(int(headers.get("content-length", "0")))

    async def _send(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        response: Response,
        reply: Reply,
        keep: bool,
    ) -> bool:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Overloaded" if response.status == 529 else "Unknown"
        head = [f"HTTP/1.1 {response.status} {phrase}"]
        headers = dict(response.headers)
        if response.pieces is None:
            headers["Content-Length"] = str(len(response.body))
        else:
            headers["Transfer-Encoding"] = "chunked"
        if not keep:
            headers["Connection"] = "close"
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if response.pieces is None:
            writer.write(response.body)
            await writer.drain()
            return keep
        for piece in response.pieces:
            if isinstance(piece, Pause):
                await asyncio.sleep(piece.seconds)
            elif isinstance(piece, Drop):
                await writer.drain()
                return False
            elif isinstance(piece, Stall):
                await writer.drain()
                await reader.read()  # returns when the client closes its side
                self._changed(self._client_went_away)
                return False
            else:
                step = reply.split_every or len(piece) or 1
                for start in range(0, len(piece), step):
                    part = piece[start : start + step]
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep
