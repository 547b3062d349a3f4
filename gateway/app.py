"""The gateway's ASGI application: routes, auth, request ids, errors in each API's shape."""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import anthropic_messages, openai_chat
from gateway.batches_api import BatchesApi
from gateway.errors import TOO_LARGE, UNAUTHORIZED, ApiError
from gateway.files_api import FilesApi
from gateway.link import ANONYMOUS, BrokerLink
from gateway.metrics import GatewayMetrics, GenAi, provider_name
from gateway.pump import Backlog, Pump
from gateway.settings import GatewaySettings
from gateway.sse import EventStream
from gateway.store import Store
from protocol.client import build_job
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError
from protocol.http_errors import ROWS
from protocol.job import Job, new_job_id
from protocol.results import Origin, Result

log = structlog.get_logger("llmrelay.gateway")
OPENAI, ANTHROPIC = "openai", "anthropic"
MODELS_CACHE = 10.0  # seconds one catalog listing serves /v1/models


@dataclass(slots=True)
class ModelInfo:
    """One id `/v1/models` lists: a route, or provider:model."""

    id: str
    owned_by: str
    created: int = 0


@dataclass(slots=True)
class Catalog:
    """What the gateway lists and how it tells routes from model names."""

    models: list[ModelInfo] = field(default_factory=list)
    routes: frozenset[str] = frozenset()


def _request_id() -> str:
    return "req_" + secrets.token_hex(12)


class Gateway:
    def __init__(
        self, settings: GatewaySettings, endpoint: str, catalog: Catalog | None = None
    ) -> None:
        self.settings = settings
        self.link = BrokerLink(endpoint, settings.status_cache)
        self.keys = settings.api_keys()  # key -> client name; empty: no auth
        self.catalog = catalog or Catalog()
        self.backlog = Backlog()
        self.metrics = GatewayMetrics(self.backlog)
        self.kinds: dict[str, str] = {}  # provider name -> kind, from broker status
        self.store = Store(settings.store_dir)
        self._models: list[ModelInfo] | None = None
        self._models_at = 0.0
        self.files = FilesApi(self, self.store)
        self.batches = BatchesApi(self, self.store)
        self.starlette = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/models", self.list_models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.get_model, methods=["GET"]),
                Route("/v1/files", self._api(self._files_create), methods=["POST"]),
                Route("/v1/files", self._api(self._files_list), methods=["GET"]),
                Route("/v1/files/{file_id}", self._api(self._files_get), methods=["GET"]),
                Route("/v1/files/{file_id}", self._api(self._files_delete), methods=["DELETE"]),
                Route(
                    "/v1/files/{file_id}/content", self._api(self._files_content), methods=["GET"]
                ),
                Route("/v1/batches", self._api(self.batches.create), methods=["POST"]),
                Route("/v1/batches", self._api(self.batches.list), methods=["GET"]),
                Route("/v1/batches/{batch_id}", self._api(self.batches.retrieve), methods=["GET"]),
                Route(
                    "/v1/batches/{batch_id}/cancel",
                    self._api(self.batches.cancel),
                    methods=["POST"],
                ),
                Route("/metrics", self.metrics_page, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )
        # The two generation routes skip Starlette's middleware and route table: they are
        # what every job goes through, and neither needs either.
        self._hot = {
            "/v1/chat/completions": self.chat,
            "/v1/messages": self.messages,
        }

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point (uvicorn's app)."""
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self._hot.get(scope["path"])
            if handler is not None:
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.starlette(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        log.info("gateway_started", broker=self.link.endpoint, auth=bool(self.keys))
        self.batches.resume_all()
        try:
            yield
        finally:
            await self.batches.stop_all()
            await self.link.close()
            self.store.close()
            log.info("gateway_stopped")

    # --- shared request plumbing -----------------------------------------------------------

    def client_name(self, request: Request) -> str:
        """The client name the request's key maps to; ApiError(401) when keys are required."""
        if not self.keys:
            return ANONYMOUS
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        found: str | None = None
        if given:
            raw = given.encode()
            for key, name in self.keys.items():  # every key compared: no early exit on a match
                if hmac.compare_digest(raw, key.encode()):
                    found = name
        if found is None:
            message = "missing API key" if not given else "Incorrect API key provided."
            raise ApiError(UNAUTHORIZED, message)
        return found

    async def read_json(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        limit = self.settings.max_request_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(TOO_LARGE, f"request body over {limit} bytes")
        body = b""
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise ApiError(TOO_LARGE, f"request body over {limit} bytes")
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ApiError.bad_request(f"body: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise ApiError.bad_request("body: not valid UTF-8") from None
        if not isinstance(data, dict):
            raise ApiError.bad_request("body: must be a JSON object")
        return data

    def error_response(self, api: str, exc: ApiError, request_id: str) -> Response:
        headers = {**exc.response_headers(), "x-request-id": request_id}
        if api == ANTHROPIC:
            headers["request-id"] = request_id
            body = exc.anthropic_body(request_id)
            status = exc.row.anthropic_status
        else:
            body = exc.openai_body()
            status = exc.row.status
        return JSONResponse(body, status_code=status, headers=headers)

    def make_job(self, kwargs: dict[str, Any], stream: bool) -> Job:
        try:
            return build_job(
                job_id=new_job_id(),
                timeout=self.settings.request_timeout,
                # A stream cannot take back text already sent: a late retry fails the job
                # (an error event) instead of restarting it.
                on_partial="fail" if stream else "restart",
                **kwargs,
            )
        except ProtocolViolation as exc:
            exc_text = str(exc)
            raise ApiError.from_provider(
                ProviderError(ErrorCategory.INVALID_REQUEST, exc_text)
            ) from None

    def trail_headers(
        self, result: Result | None, attempts: list[dict[str, Any]]
    ) -> dict[str, str]:
        trail = ",".join(
            f"{a.get('provider')}:{a.get('model')}={a.get('outcome')}" for a in attempts
        )
        headers = {"x-llmrelay-attempts": str(len(attempts))}
        if trail:
            headers["x-llmrelay-attempt-trail"] = trail[:4000]
        if result is not None:
            headers["x-llmrelay-job-id"] = result.job_id
            if result.provider:
                headers["x-llmrelay-provider"] = result.provider
            if result.model:
                headers["x-llmrelay-model"] = result.model
            cost = result.usage.get("cost")
            if isinstance(cost, int | float):
                headers["x-llmrelay-cost"] = f"{cost:.8f}"
        return headers

    def origin_headers(self, origin: Origin) -> dict[str, str]:
        """A stream's trail at its first text: the failed attempts, then the one answering."""
        current = {"provider": origin.provider, "model": origin.model, "outcome": "answering"}
        headers = self.trail_headers(None, [*origin.attempts, current])
        headers["x-llmrelay-provider"] = origin.provider
        headers["x-llmrelay-model"] = origin.model
        return headers

    def gen_ai(self, model: str, provider: str | None) -> GenAi:
        """The GenAI label values of a request (gateway.metrics.GEN_AI)."""
        return "chat", provider_name(self.kinds.get(provider or "", provider)), model

    # --- the generation endpoints ----------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self.generate(request, OPENAI)

    async def messages(self, request: Request) -> Response:
        return await self.generate(request, ANTHROPIC)

    async def generate(self, request: Request, api: str) -> Response:
        started = time.monotonic()
        request_id = _request_id()
        model = "unknown"
        self.metrics.inflight.inc()
        try:
            name = self.client_name(request)
            body = await self.read_json(request)
            model = str(body.get("model"))
            translate = openai_chat.job_kwargs if api == OPENAI else anthropic_messages.job_kwargs
            kwargs = translate(body, self.catalog.routes)
            stream = bool(body.get("stream"))
            if "stream" in body and not isinstance(body["stream"], bool):
                raise ApiError.bad_request("stream: must be a boolean", "stream")
            job = self.make_job(kwargs, stream)
            client = self.link.client(name)
            # A stream's headers go out with its first text: it asks who answers by then.
            events = client.submit_job_batches(job, answering=stream)
            pump = Pump(events, self._limit(stream), self.backlog)
            pump.watch(request.receive)  # the body is read: receive() now reports a disconnect
            streaming = False
            try:
                await self._settled(pump, stream)
                if pump.gone:
                    self._finished(api, 499, started, model, None, "client_gone")
                    return Response(status_code=499)
                if pump.error is not None:
                    raise self._failure(pump.error, model)
                if not stream:
                    assert pump.result is not None  # over, not gone, no error: it is done
                    return self._whole(api, pump.result, model, request_id, started)
                response = self._stream(api, pump, job, model, body, request_id, started)
                streaming = True  # the response's generator stops the pump from here on
                return response
            finally:
                if not streaming:
                    pump.stop()  # a whole answer's text is in the result: free the pump's copy
        except ApiError as exc:
            status = exc.row.anthropic_status if api == ANTHROPIC else exc.row.status
            self._finished(api, status, started, model, None, exc.error_type)
            return self.error_response(api, exc, request_id)
        finally:
            self.metrics.inflight.dec()

    def _limit(self, stream: bool) -> int:
        # A whole answer is held by design; its bound is the request's own max_tokens.
        return self.settings.stream_backlog_bytes if stream else 1 << 62

    async def _settled(self, pump: Pump, stream: bool) -> None:
        """Wait for what decides the response's status: the first text (stream) or the end;
        either way no longer than the client stays."""
        if stream:
            while not pump.started:
                await pump.first(self.settings.keepalive_interval)
        else:
            await pump.settled()

    def _failure(self, error: ProviderError, model: str) -> ApiError:
        failure = ApiError.from_provider(error)
        failure.headers.update(self.trail_headers(None, error.attempts))
        self.metrics.child(self.metrics.jobs, "failed", error.category.value).inc()
        self.metrics.observe_attempts(error.attempts)
        return failure

    def _finished(
        self,
        api: str,
        status: int,
        started: float,
        model: str,
        provider: str | None,
        error_type: str,
    ) -> None:
        metrics = self.metrics
        metrics.child(metrics.http, api, str(status)).inc()
        duration = metrics.child(
            metrics.request_duration, *self.gen_ai(model, provider), error_type
        )
        duration.observe(time.monotonic() - started)

    def _observe_success(
        self, result: Result, model: str, started: float, ttft: float | None
    ) -> None:
        gen_ai = self.gen_ai(model, result.provider)
        self.metrics.observe_result(result, gen_ai, self.kinds)
        if ttft is not None:
            self.metrics.child(self.metrics.ttft, *gen_ai).observe(ttft)
        tokens = result.usage.get("completion_tokens")
        if ttft is not None and isinstance(tokens, int) and tokens > 1:
            self.metrics.child(self.metrics.tpot, *gen_ai).observe(
                max(0.0, time.monotonic() - started - ttft) / (tokens - 1)
            )

    def _whole(
        self, api: str, result: Result, model: str, request_id: str, started: float
    ) -> Response:
        if api == OPENAI:
            body = openai_chat.completion(result, model)
        else:
            body = anthropic_messages.message(result, model)
        headers = {**self.trail_headers(result, result.attempts), "x-request-id": request_id}
        if api == ANTHROPIC:
            headers["request-id"] = request_id
        self._observe_success(result, model, started, None)
        self._finished(api, 200, started, model, result.provider, "")
        return JSONResponse(body, headers=headers)

    def _stream(
        self,
        api: str,
        pump: Pump,
        job: Job,
        model: str,
        body: dict[str, Any],
        request_id: str,
        started: float,
    ) -> Response:
        ttft = time.monotonic() - started
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if pump.result is not None:  # it ended before any text: the whole trail is known
            trail = self.trail_headers(pump.result, pump.result.attempts)
        elif pump.origin is not None:
            trail = self.origin_headers(pump.origin)
        else:  # no Answering reached us (the link reconnected in the middle of an attempt)
            trail = {}
        headers = {
            **trail,
            "x-request-id": request_id,
            "x-llmrelay-job-id": job.id,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        if api == ANTHROPIC:
            headers["request-id"] = request_id
        keepalive = (
            b": keep-alive\n\n"
            if api == OPENAI
            else anthropic_messages.event("ping", {"type": "ping"})
        )
        render: Callable[[], AsyncIterator[bytes]]
        if api == OPENAI:
            render = lambda: self._openai_events(pump, job, model, include_usage)  # noqa: E731
        else:
            render = lambda: self._anthropic_events(pump, job, model)  # noqa: E731

        async def events() -> AsyncIterator[bytes]:
            outcome = "client_gone"
            provider = None
            try:
                async for piece in render():
                    pump.sending = True  # until the reader has taken the piece
                    yield piece
                    pump.sending = False
                    while not pump.parts and not pump.over:
                        if not await pump.first(self.settings.keepalive_interval):
                            yield keepalive
                if pump.gone:
                    return
                if pump.result is not None:
                    outcome, provider = "", pump.result.provider
                    self._observe_success(pump.result, model, started, ttft)
                elif pump.error is not None:
                    outcome, provider = pump.error.category.value, pump.error.provider
                    jobs = self.metrics.jobs
                    self.metrics.child(jobs, "failed", pump.error.category.value).inc()
                    self.metrics.observe_attempts(pump.error.attempts)
            finally:
                pump.stop()
                self._finished(api, 200, started, model, provider, outcome)

        return EventStream(events(), headers=headers)

    def _stream_error(self, api: str, error: ProviderError) -> bytes:
        failure = ApiError.from_provider(error)
        if api == OPENAI:
            return openai_chat.sse(failure.openai_body())
        return anthropic_messages.event("error", failure.anthropic_body())

    async def _openai_events(
        self, pump: Pump, job: Job, model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        writer = openai_chat.ChunkWriter(job.id, model)
        sse = openai_chat.sse
        # The role chunk goes out in one write with the first text (fewer, fuller writes).
        text = await pump.take()
        yield sse(writer.first()) + (writer.text_event(text) if text else b"")
        while pump.parts or not pump.over:
            text = await pump.take()
            if text:
                yield writer.text_event(text)
        if pump.gone:
            return
        if pump.error is not None:
            yield self._stream_error(OPENAI, pump.error)  # no [DONE]: the SDK raises APIError
            return
        assert pump.result is not None
        trail = {
            "provider": pump.result.provider,
            "attempts": pump.result.attempts,
            "cost": pump.result.usage.get("cost"),
        }
        closing = [sse(chunk) for chunk in writer.ending(pump.result, include_usage, trail)]
        yield b"".join(closing) + b"data: [DONE]\n\n"

    async def _anthropic_events(self, pump: Pump, job: Job, model: str) -> AsyncIterator[bytes]:
        writer = anthropic_messages.EventWriter(job.id, model)
        text = await pump.take()
        yield writer.start() + (writer.text(text) if text else b"")
        while pump.parts or not pump.over:
            text = await pump.take()
            if text:
                yield writer.text(text)
        if pump.gone:
            return
        if pump.error is not None:
            yield self._stream_error(ANTHROPIC, pump.error)
            return
        assert pump.result is not None
        yield writer.ending(pump.result)

    # --- models, health, metrics -------------------------------------------------------------

    def _anthropic_shape(self, request: Request) -> bool:
        return "anthropic-version" in request.headers

    async def list_models(self, request: Request) -> Response:
        api = ANTHROPIC if self._anthropic_shape(request) else OPENAI
        request_id = _request_id()
        try:
            self.client_name(request)
        except ApiError as exc:
            return self.error_response(api, exc, request_id)
        models = await self.listed_models()
        if api == ANTHROPIC:
            data = [self._anthropic_model(m) for m in models]
            body: dict[str, Any] = {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        else:
            body = {"object": "list", "data": [self._openai_model(m) for m in models]}
        self.metrics.child(self.metrics.http, api, "200").inc()
        return JSONResponse(body, headers={"x-request-id": request_id})

    async def get_model(self, request: Request) -> Response:
        api = ANTHROPIC if self._anthropic_shape(request) else OPENAI
        request_id = _request_id()
        wanted = request.path_params["model"]
        try:
            self.client_name(request)
            for model in await self.listed_models():
                if model.id == wanted:
                    shape = self._anthropic_model if api == ANTHROPIC else self._openai_model
                    return JSONResponse(shape(model), headers={"x-request-id": request_id})
            raise ApiError(
                ROWS[ErrorCategory.NOT_FOUND],
                f"The model `{wanted}` does not exist or you do not have access to it.",
                "model",
            )
        except ApiError as exc:
            return self.error_response(api, exc, request_id)

    async def listed_models(self) -> list[ModelInfo]:
        """The routes, then every provider:model the broker's catalog lists (cached briefly).

        When the broker does not answer the catalog query, the config's lists stand in."""
        now = time.monotonic()
        if self._models is not None and now - self._models_at < MODELS_CACHE:
            return self._models
        try:
            listing = await self.link.client().models(timeout=10.0)
        except ProviderError:
            return self.catalog.models
        routes = [m for m in self.catalog.models if m.id in self.catalog.routes]
        seen = {m.id for m in routes}
        models = list(routes)
        for entry in listing.get("models") or []:
            ident = f"{entry.get('provider')}:{entry.get('model')}"
            if ident not in seen:
                seen.add(ident)
                models.append(ModelInfo(ident, str(entry.get("provider"))))
        self._models, self._models_at = models, now
        return models

    @staticmethod
    def _openai_model(model: ModelInfo) -> dict[str, Any]:
        return {
            "id": model.id,
            "object": "model",
            "created": model.created,
            "owned_by": model.owned_by,
        }

    @staticmethod
    def _anthropic_model(model: ModelInfo) -> dict[str, Any]:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(model.created))
        return {"id": model.id, "type": "model", "display_name": model.id, "created_at": created}

    async def metrics_page(self, request: Request) -> Response:
        status = await self._status()
        return Response(self.metrics.render(status), media_type=CONTENT_TYPE_LATEST)

    async def _status(self) -> dict[str, Any] | None:
        status = await self.link.status()
        if status is not None:
            self.kinds = {
                name: str(entry.get("kind"))
                for name, entry in (status.get("providers") or {}).items()
            }
        return status

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        status = await self._status()
        if status is None:
            return JSONResponse({"ready": False, "reason": "broker unreachable"}, 503)
        workers = len(status.get("workers") or [])
        if workers == 0:
            return JSONResponse({"ready": False, "reason": "no worker registered"}, 503)
        return JSONResponse({"ready": True, "workers": workers})

    # --- files (and batches): OpenAI-shaped JSON endpoints ------------------------------------

    def _api(
        self, handler: Callable[[Request, str], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Auth, request id and OpenAI-shaped errors around one JSON endpoint."""

        async def endpoint(request: Request) -> Response:
            request_id = _request_id()
            try:
                response = await handler(request, self.client_name(request))
                status = response.status_code
            except ApiError as exc:
                response = self.error_response(OPENAI, exc, request_id)
                status = exc.row.status
            response.headers["x-request-id"] = request_id
            self.metrics.child(self.metrics.http, OPENAI, str(status)).inc()
            return response

        return endpoint

    async def _files_create(self, request: Request, owner: str) -> Response:
        return await self.files.create(request, owner)

    async def _files_list(self, request: Request, owner: str) -> Response:
        return self.files.list(request, owner)

    async def _files_get(self, request: Request, owner: str) -> Response:
        return self.files.retrieve(request.path_params["file_id"], owner)

    async def _files_delete(self, request: Request, owner: str) -> Response:
        return self.files.delete(request.path_params["file_id"], owner)

    async def _files_content(self, request: Request, owner: str) -> Response:
        return self.files.content(request.path_params["file_id"], owner)
