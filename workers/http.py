"""The shared HTTP backend: one pooled client, one decode loop, one error path.

A provider module supplies only its own parts (request body, event mapping, error table);
everything about connections, timeouts, decoding, cancellation and key hygiene lives here.
"""

from __future__ import annotations

import asyncio
import os
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing, contextmanager, suppress
from functools import partial
from typing import Any, ClassVar

import aiohttp
import orjson
import structlog

from protocol.errors import ErrorCategory, ProviderError
from protocol.job import Job
from protocol.schema import Key
from workers import options
from workers.backend import MAX_MODEL_ID, MAX_MODELS, Backend, Finish, StreamEvent, TextDelta
from workers.classify import MAX_MESSAGE, ErrorTable, classify, scrubbed
from workers.decode import Framing, StreamDecodeError, make_decoder
from workers.http_mapping import (
    ErrorInfo,
    Malformed,
    StreamError,
    StreamMapper,
    load_json,
    shape_checked,
)
from workers.http_pool import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    TOTAL_TIMEOUT,
    WRITE_TIMEOUT,
    Pool,
    Timeouts,
    network_error,
)
from workers.ratelimit import OPENAI, HeaderFamily, Reading, field_table
from workers.spec import ProviderSpec

# Defaults for spec.options (the timeouts' are in workers/http_pool.py); in seconds.
DRAIN_GRACE = 2.0  # after the terminator, wait this long for the body's end to reuse the socket
MAX_BODY = 32 << 20  # a non-streamed response body larger than this is refused
MAX_ERROR_BODY = 64 << 10  # only this much of an error body is read
LIST_MODELS_TIMEOUT = 10.0  # the whole model-list fetch, all pages
MAX_MODEL_PAGES = 10

log = structlog.get_logger("llmrelay.worker")


class HttpBackend(Backend):
    """A Backend that talks HTTP to one provider through one keep-alive connection pool."""

    framing: ClassVar[Framing] = "sse"
    path: ClassVar[str]  # request path, relative to the base URL
    default_base_url: ClassVar[str]
    api_key_env: ClassVar[str | None] = None  # where the key comes from by default
    key_required: ClassVar[bool] = True
    errors: ClassVar[ErrorTable] = ErrorTable()
    # Which rate-limit headers this provider sends (workers/ratelimit.py).
    ratelimit_headers: ClassVar[tuple[HeaderFamily, ...]] = (OPENAI,)
    # GET path of the provider's model list, relative to the base URL; None: not listed.
    models_path: ClassVar[str | None] = None
    models_params: ClassVar[Mapping[str, str]] = {}  # query of the first page

    option_keys: ClassVar[Mapping[str, Key]] = options.HTTP

    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        opts = spec.options
        self.base_url = str(opts.get("base_url") or self.default_base_url).rstrip("/")
        self._key = self._resolve_key(opts)
        self.timeouts = Timeouts(
            connect=float(opts.get("connect_timeout", CONNECT_TIMEOUT)),
            read=float(opts.get("read_timeout", READ_TIMEOUT)),
            write=float(opts.get("write_timeout", WRITE_TIMEOUT)),
            total=float(opts.get("total_timeout", TOTAL_TIMEOUT)),
        )
        self.drain_grace = float(opts.get("drain_grace", DRAIN_GRACE))
        self._pool: Pool | None = None
        self._slots: asyncio.Semaphore | None = None
        self._auth: dict[str, str] = {}  # set by start(), once the key is known
        self._ratelimit_fields = field_table(self.ratelimit_headers)

    def _resolve_key(self, opts: Mapping[str, Any]) -> str | None:
        if opts.get("api_key"):
            return str(opts["api_key"])
        env = opts.get("api_key_env") or self.api_key_env
        if not env:
            return None
        return os.environ.get(str(env)) or None

    # -- provider hooks ---------------------------------------------------------------------

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def extra_headers(self) -> dict[str, str]:
        return {}

    @abstractmethod
    def build_body(self, job: Job, model: str) -> dict[str, Any]:
        """The provider's request body; raise `unsupported(...)` rather than drop anything."""

    @abstractmethod
    def stream_mapper(self, job: Job) -> StreamMapper: ...

    @abstractmethod
    def parse_body(self, body: Any) -> tuple[str, Finish]:
        """Text and Finish from a non-streamed response; StreamError/Malformed as above."""

    @abstractmethod
    def error_info(self, body: Any) -> ErrorInfo | None:
        """Read the provider's error body (already JSON-decoded); None if it is not one."""

    def model_ids(self, body: Any) -> list[Any]:
        """The model ids in one page of the model list (`data[].id`, the OpenAI shape)."""
        return [entry["id"] for entry in body["data"]]

    def next_models_page(self, body: Any, seen: int) -> Mapping[str, str] | None:
        """The query of the model list's next page, or None when this was the last one.

        `seen` counts the entries read so far (all pages).
        """
        return None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        headers = {"User-Agent": "llmrelay/0.1", **self.extra_headers()}
        # Sent per request, so a side request can go without it (llama.cpp's auth check).
        self._auth = self.auth_headers(self._key) if self._key else {}
        capacity = max(1, self.spec.capacity)
        self._slots = asyncio.Semaphore(capacity)
        self._pool = Pool(
            self.base_url, headers, self.timeouts, capacity, options=self.spec.options
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        deadline: float,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        accept: str | None = None,
    ) -> aiohttp.ClientResponse:
        """One request through the pool: `body` goes as JSON; the response once its head is in
        (release it). Transport errors are aiohttp's; `_provider_errors` translates them."""
        if self._pool is None:
            raise RuntimeError(f"{type(self).__name__}.start() was not called")
        headers = dict(self._auth) if auth else {}
        data = None
        if body is not None:
            data = orjson.dumps(body)
        if accept is not None:
            headers["Accept"] = accept
        return await self._pool.send(
            method,
            path,
            deadline=deadline,
            body=data,
            headers=headers,
            params=params,
            provider=self.spec.name,
        )

    async def call_json(
        self,
        method: str,
        path: str,
        *,
        deadline: float,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """A side request whose JSON answer is wanted; a non-2xx status is the provider's
        error, classified. Run it inside `_provider_errors`."""
        response = await self.request(method, path, body=body, params=params, deadline=deadline)
        try:
            if not _success(response):
                raise await self._status_error(response, deadline)
            return load_json(await self._read(response, deadline, MAX_BODY, strict=True))
        finally:
            response.release()

    async def fetch_json(
        self, method: str, path: str, body: Any = None, *, auth: bool = True, timeout: float
    ) -> tuple[int, Any]:
        """A small side request: (status, its JSON body, or None when it is not JSON)."""
        deadline = asyncio.get_running_loop().time() + timeout
        response = await self.request(method, path, body=body, auth=auth, deadline=deadline)
        try:
            raw = await self._read(response, deadline, MAX_BODY, strict=True)
        finally:
            response.release()
        try:
            return response.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return response.status, None

    # -- live model list --------------------------------------------------------------------

    async def list_models(self) -> list[str] | None:
        """GET the provider's model list; on any failure log `models_unavailable`, return None."""
        if self.models_path is None or self._pool is None:
            return None
        timeout = float(self.spec.options.get("list_models_timeout", LIST_MODELS_TIMEOUT))
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            return await self._list_models(self.models_path, deadline)
        except ProviderError as exc:
            error = scrubbed(exc, [self._key or ""])
            log.warning(
                "models_unavailable",
                provider=self.spec.name,
                category=error.category.value,
                status_code=error.status_code,
                error=error.message,
            )
            return None

    async def _list_models(self, path: str, deadline: float) -> list[str]:
        ids: dict[str, None] = {}  # ordered and deduplicated
        params: Mapping[str, str] | None = self.models_params
        seen = 0
        with self._provider_errors("model list", "model list: ", "model list timed out"):
            for _ in range(MAX_MODEL_PAGES):
                if params is None or len(ids) >= MAX_MODELS:
                    break
                body = await self.call_json("GET", path, params=params, deadline=deadline)
                page = shape_checked(self.model_ids, body)
                seen += len(page)
                for item in page:
                    if isinstance(item, str) and 0 < len(item) <= MAX_MODEL_ID:
                        ids.setdefault(item)
                params = shape_checked(partial(self.next_models_page, seen=seen), body)
        return list(ids)[:MAX_MODELS]

    # -- one job ----------------------------------------------------------------------------

    async def generate(self, job: Job, model: str, attempt: int) -> AsyncIterator[StreamEvent]:
        if self._slots is None or self._pool is None:
            raise RuntimeError("HttpBackend.start() was not called")
        limits = Reading()  # filled from the response headers, reported with the outcome
        try:
            # Jobs beyond capacity queue here, not in the client's connection queue.
            async with self._slots:
                events = self._generate(job, model, limits)
                async with aclosing(events):
                    async for event in events:
                        if isinstance(event, Finish) and limits.values:
                            event.ratelimit = limits.report() or {}
                        yield event
        except ProviderError as exc:
            # `from None`: a chained client error carries the request, headers included.
            error = scrubbed(exc, [self._key or ""])
            if error.ratelimit is None:
                error.ratelimit = limits.report()
            raise error from None

    async def _generate(
        self, job: Job, model: str, limits: Reading
    ) -> AsyncGenerator[StreamEvent, None]:
        if self.key_required and not self._key:
            env = self.spec.options.get("api_key_env") or self.api_key_env
            raise ProviderError(
                ErrorCategory.AUTH,
                f"no API key configured (set {env} or options.api_key)",
                provider=self.spec.name,
            )
        body = self.build_body(job, model)
        accept = "text/event-stream" if self.framing == "sse" and job.stream else None
        deadline = asyncio.get_running_loop().time() + self.timeouts.total
        timed_out = f"request exceeded the total timeout of {self.timeouts.total}s"
        with self._provider_errors("response body", "", timed_out):
            response = await self.request(
                "POST", self.path, body=body, accept=accept, deadline=deadline
            )
            try:
                limits.read(self._ratelimit_fields, response.headers)
                if not _success(response):
                    raise await self._status_error(response, deadline)
                events = (
                    self._stream(job, response, deadline)
                    if job.stream
                    else self._whole(response, deadline)
                )
                async with aclosing(events):
                    async for event in events:
                        yield event
            finally:
                # Runs on success, error, cancel and aclose(): the socket never leaks. A body not
                # read to its end closes the connection instead of returning it to the pool.
                response.release()

    @contextmanager
    def _provider_errors(self, body: str, prefix: str, timed_out: str) -> Iterator[None]:
        """The one translation of what an HTTP exchange raises into a ProviderError.

        `body` names what was being read, `prefix` starts a malformed-content message and
        `timed_out` is the message when the exchange's overall deadline passed.
        """
        try:
            yield
        except aiohttp.ClientError as exc:  # before TimeoutError: aiohttp's timeouts are both
            raise network_error(self.spec.name, exc, self.timeouts) from None
        except (Malformed, StreamDecodeError) as exc:
            raise self._protocol(f"{prefix}{exc}") from None
        except StreamError as exc:
            raise self._classify(exc.info, status=exc.info.status) from None
        except TimeoutError:
            raise ProviderError(ErrorCategory.NETWORK, timed_out, provider=self.spec.name) from None

    async def _stream(
        self, job: Job, response: aiohttp.ClientResponse, deadline: float
    ) -> AsyncGenerator[StreamEvent, None]:
        decoder = make_decoder(self.framing)
        mapper = self.stream_mapper(job)
        chunks = response.content.iter_any()
        loop = asyncio.get_running_loop()
        read_timeout = self.timeouts.read
        while True:
            try:
                if read_timeout is not None and loop.time() + read_timeout < deadline:
                    # The socket read timeout ends this wait before the deadline could pass,
                    # so no scope of our own: one per chunk cost ~15% of a streaming worker.
                    chunk = await anext(chunks)
                else:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
                events = decoder.feed(chunk)
            except StopAsyncIteration:
                events = decoder.close()
                chunk = b""
            except (TimeoutError, aiohttp.ClientError):
                if mapper.done:  # the body's tail never came; the answer is complete anyway
                    break
                raise
            for event in events:
                if not mapper.done:
                    for delta in shape_checked(mapper.on_event, event):
                        yield delta
            if not chunk:
                break
            if mapper.done:
                # Read on to the end of the body so the connection can be reused, briefly.
                deadline = min(deadline, loop.time() + self.drain_grace)
        yield mapper.finish()

    async def _whole(
        self, response: aiohttp.ClientResponse, deadline: float
    ) -> AsyncGenerator[StreamEvent, None]:
        body = load_json(await self._read(response, deadline, MAX_BODY, strict=True))
        text, finish = shape_checked(self.parse_body, body)
        if text:
            yield TextDelta(text)
        yield finish

    async def _read(
        self, response: aiohttp.ClientResponse, deadline: float, limit: int, *, strict: bool
    ) -> bytes:
        parts: list[bytes] = []
        size = 0
        async with asyncio.timeout_at(deadline):
            async for chunk in response.content.iter_any():
                parts.append(chunk)
                size += len(chunk)
                if size > limit:
                    if strict:
                        raise Malformed(f"response body larger than {limit} bytes")
                    break
        return b"".join(parts)

    async def _status_error(
        self, response: aiohttp.ClientResponse, deadline: float
    ) -> ProviderError:
        raw = await self._read(response, deadline, MAX_ERROR_BODY, strict=False)
        info: ErrorInfo | None = None
        with suppress(ValueError, TypeError, AttributeError):
            info = self.error_info(orjson.loads(raw))
        if info is None:  # not the provider's JSON (a proxy's HTML page, an empty body...)
            text = raw.decode("utf-8", "replace").strip()[:MAX_MESSAGE]
            info = ErrorInfo(text or response.reason or f"HTTP {response.status}")
        return self._classify(info, status=response.status, headers=response.headers)

    def _classify(
        self,
        info: ErrorInfo,
        *,
        status: int | None,
        headers: Mapping[str, str] | None = None,
    ) -> ProviderError:
        return classify(
            self.spec.name,
            self.errors,
            status=status,
            headers=headers,
            codes=info.codes,
            message=info.message,
        )

    def _protocol(self, message: str) -> ProviderError:
        return ProviderError(ErrorCategory.PROTOCOL, message, provider=self.spec.name)


def _success(response: aiohttp.ClientResponse) -> bool:
    return 200 <= response.status < 300
