"""llama.cpp: a worker that owns a supervised llama-server and talks to it like OpenAI.

Request mapping, SSE decoding and error classification are the OpenAI-compatible backend's;
this module adds the local server (workers.llamacpp.server), llama.cpp's extra sampling
parameters, token counting via /tokenize and the server's own facts from /props.

Options (spec.options): model_path (required), binary, ctx_size, n_gpu_layers, extra_args,
load_timeout, health_interval, health_timeout, health_failures, restart_backoff,
restart_backoff_max, max_restarts, restart_window, stop_timeout, ready_wait (seconds a job
waits for a restarting server), enable_tools (only for models whose chat template supports
tools; needs --jinja, llama-server's default), plus the OpenAI backend's timeouts.
spec.capacity is llama-server's --parallel (one slot per concurrent job).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import Any, ClassVar, cast

import aiohttp

from catalog.schemas import SCHEMAS, schema_features, schema_for
from protocol.errors import ErrorCategory, ProviderError
from protocol.job import FEATURE_VISION, Job
from protocol.schema import Key
from workers import options
from workers.backend import StreamEvent
from workers.http_mapping import unsupported
from workers.llamacpp.binary import BinaryNotFound, find_llama_server
from workers.llamacpp.server import (
    LlamaServer,
    ServerConfig,
    ServerFailed,
    ServerState,
)
from workers.providers.openai import OpenAIBackend
from workers.spec import ProviderSpec

READY_WAIT = 30.0
PROPS_TIMEOUT = 5.0  # each /props request at start
DEATH_GRACE = 0.25  # see _settle
# A prompt surely fits when its UTF-8 bytes (no token is shorter than a byte) plus this
# template allowance per message, plus max_tokens, fit the window; otherwise it is counted
# exactly (/apply-template + /tokenize) before anything is generated.
TEMPLATE_BYTES_PER_MESSAGE = 64
TEMPLATE_BYTES = 128


class LlamaCppBackend(OpenAIBackend):
    kind = "llamacpp"
    default_base_url = "http://127.0.0.1"  # replaced by the server's URL in start()
    api_key_env: ClassVar[str | None] = None  # the key is generated per server, never configured
    # Verified against llama-server: each of these changes the request it runs (see tests).
    # Tools are opt-in (enable_tools): with a template that lacks them they are ignored.
    schema = SCHEMAS["llamacpp"]
    features = schema_features(SCHEMAS["llamacpp"], vision=False)
    option_keys: ClassVar[Mapping[str, Key]] = options.LLAMACPP

    def __init__(self, spec: ProviderSpec) -> None:
        # Always 127.0.0.1: an HTTP(S)_PROXY from the environment must not capture it.
        super().__init__(replace(spec, options={"trust_env": False, **spec.options}))
        self.server: LlamaServer | None = None
        self.props: dict[str, Any] = {}
        self.auth_enforced: bool | None = None
        self.ready_wait = float(spec.options.get("ready_wait", READY_WAIT))
        self.tools_enabled = bool(spec.options.get("enable_tools"))
        self.schema = schema_for(self.kind, tools_enabled=self.tools_enabled)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        opts = self.spec.options
        try:
            binary = find_llama_server(opts)
            config = ServerConfig.from_options(binary, opts, self.spec.capacity)
        except BinaryNotFound as exc:
            raise self._error(ErrorCategory.NOT_FOUND, str(exc), retryable=False) from None
        except (ValueError, TypeError) as exc:
            raise self._error(ErrorCategory.INVALID_REQUEST, str(exc), retryable=False) from None
        self.server = LlamaServer(config, name=self.spec.name)
        try:
            await self.server.start()
        except ServerFailed as exc:
            category = ErrorCategory.NOT_FOUND if exc.missing_model else ErrorCategory.SERVER_ERROR
            # A slow load on a busy host may succeed next time; a bad model never will.
            raise self._error(category, str(exc), retryable=not exc.permanent) from None
        self.base_url = f"{self.server.base_url}/v1"
        self._key = self.server.api_key
        try:
            await super().start()
            await self._learn_server()
        except BaseException:
            await self.close()  # the runtime does not call close() when start() fails
            raise

    async def close(self) -> None:
        await super().close()
        if self.server is not None:
            await self.server.close()

    async def _learn_server(self) -> None:
        """Context window, modalities and slots from /props; check the key is enforced."""
        assert self.server is not None
        url = f"{self.server.base_url}/props"
        try:
            status, props = await self.fetch_json("GET", url, timeout=PROPS_TIMEOUT)
            if status != 200 or props is None:
                raise ValueError(f"HTTP {status}" if status != 200 else "not JSON")
            # The key travels by environment (LLAMA_API_KEY); an old build might not read it.
            status, _ = await self.fetch_json("GET", url, auth=False, timeout=PROPS_TIMEOUT)
            self.auth_enforced = status == 401
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            message = f"llama-server /props failed: {type(exc).__name__}: {exc}"
            raise self._error(ErrorCategory.SERVER_ERROR, message, retryable=False) from None
        self.props = props if isinstance(props, dict) else {}
        if not self.auth_enforced:
            self.server.log.error("llama_server_auth_not_enforced")
        features = set(schema_features(self.schema, vision=False))
        if self.modalities().get("vision"):
            features.add(FEATURE_VISION)
        # Features depend on this server's model; the class default stays conservative.
        self.features = frozenset(features)

    # --- facts and figures ----------------------------------------------------------------

    def failure(self) -> str | None:
        if self.server is not None and self.server.state is ServerState.FAILED:
            return self.server.error or "llama-server gave up"
        return None

    def modalities(self) -> dict[str, bool]:
        raw = self.props.get("modalities")
        return {str(k): bool(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def context_window(self) -> int | None:
        settings = self.props.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return n_ctx if isinstance(n_ctx, int) else None

    def info(self) -> dict[str, Any]:
        return {
            "context_window": self.context_window(),  # per slot: what one job can use
            "modalities": self.modalities(),
            "total_slots": self.props.get("total_slots"),
            "build_info": self.props.get("build_info"),
            "model_path": self.props.get("model_path"),
            "auth_enforced": self.auth_enforced,
            "tools_enabled": self.tools_enabled,
        }

    def stats(self) -> dict[str, Any]:
        return self.server.stats() if self.server is not None else {}

    # --- token counting -------------------------------------------------------------------

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        body = {"content": text, "add_special": special, "parse_special": special}
        data = await self._post_json("/tokenize", body)
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise self._error(ErrorCategory.PROTOCOL, "/tokenize returned no token list")
        return [int(t) for t in tokens]

    async def detokenize(self, tokens: list[int]) -> str:
        data = await self._post_json("/detokenize", {"tokens": tokens})
        return str(data.get("content", ""))

    exact_counting = "tokenize"

    async def count_tokens(self, job: Job) -> int:
        """Prompt tokens exactly as llama-server will see them (chat template applied)."""
        return await self.count_prompt(job.messages, "")

    async def count_prompt(self, messages: list[dict[str, Any]], model: str) -> int:
        data = await self._post_json("/apply-template", {"messages": messages})
        return len(await self.tokenize(str(data.get("prompt", "")), special=True))

    async def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        assert self.server is not None
        url = f"{self.server.base_url}{path}"
        try:
            # A stale keep-alive socket (llama-server closes idle ones) is sent again by the pool.
            status, data = await self.fetch_json("POST", url, body, timeout=self.timeouts.total)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._error(ErrorCategory.NETWORK, f"{path}: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise self._error(ErrorCategory.SERVER_ERROR, f"{path}: HTTP {status}")
        return data if isinstance(data, dict) else {}

    # --- generation -----------------------------------------------------------------------

    def build_body(self, job: Job, model: str) -> dict[str, Any]:
        # The broker routes images only to vision servers; this guards against a quiet drop.
        if FEATURE_VISION in job.required_features() and FEATURE_VISION not in self.features:
            raise unsupported(self.spec.name, "this llama-server's model takes no images")
        return super().build_body(job, model)

    async def check_context(self, job: Job) -> None:
        """Refuse, before generating, a prompt that with max_tokens exceeds one slot's window
        (an exact count: llama-server's own template and tokenizer)."""
        window = self.context_window()
        if window is None:
            return
        max_tokens = int(job.params.get("max_tokens") or 0)
        upper = sum(
            len(str(part).encode()) + TEMPLATE_BYTES_PER_MESSAGE for part in _texts(job.messages)
        )
        if upper + TEMPLATE_BYTES + max_tokens <= window:
            return
        count = await self.count_tokens(job)
        if count + max_tokens > window:
            raise ProviderError(
                ErrorCategory.CONTEXT_LENGTH,
                f"prompt of {count} tokens (exact, llama-server /tokenize) + max_tokens "
                f"{max_tokens} exceeds this server's context window of {window}",
                provider=self.spec.name,
                retryable=False,
            )

    async def _ensure_ready(self) -> None:
        server = self.server
        if server is None or self._pool is None:
            raise RuntimeError("LlamaCppBackend.start() was not called")
        try:
            await server.wait_ready(self.ready_wait)
        except ServerFailed as exc:
            # Retryable: the broker tries again later or fails over to another provider.
            raise self._error(ErrorCategory.SERVER_ERROR, str(exc).splitlines()[0]) from None

    async def generate(self, job: Job, model: str, attempt: int) -> AsyncIterator[StreamEvent]:
        await self._ensure_ready()
        await self.check_context(job)
        assert self.server is not None
        server, generation = self.server, self.server.generation
        try:
            # aclosing: a cancelled job closes the HTTP stream at once, freeing the slot.
            inner = cast(AsyncGenerator[StreamEvent, None], super().generate(job, model, attempt))
            async with aclosing(inner) as events:
                async for event in events:
                    yield event
        except ProviderError as exc:
            if exc.category is ErrorCategory.NETWORK and server.generation == generation:
                await _settle(server)
            if server.generation != generation or not server.alive():
                # The server died under this job: retry it once the supervisor restarted it.
                raise self._error(
                    ErrorCategory.NETWORK, f"llama-server died mid-request ({exc.message})"
                ) from None
            raise

    def _error(
        self, category: ErrorCategory, message: str, *, retryable: bool | None = None
    ) -> ProviderError:
        return ProviderError(category, message, provider=self.spec.name, retryable=retryable)


def _texts(messages: list[dict[str, Any]]) -> list[str]:
    """One string per message: its text parts joined."""
    out = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            out.append("".join(str(p.get("text", "")) for p in content))
        else:
            out.append(str(content or ""))
    return out


async def _settle(server: LlamaServer) -> None:
    """Wait briefly for a server whose connection just broke to show whether it is dying.

    A killed process closes its sockets before it turns zombie, so the broken connection can
    be seen while it still looks alive; the next attempt would then be sent to the dying
    process (a reset) instead of waiting for the restart.
    """
    loop = asyncio.get_running_loop()
    until = loop.time() + DEATH_GRACE
    while server.alive() and loop.time() < until:
        await asyncio.sleep(0.01)
