"""OpenAI Chat Completions, and any OpenAI-compatible server (llama-server, vLLM...) by base_url.

Subclasses (OpenRouter, llama.cpp) change class attributes: `default_base_url`, `api_key_env`,
`key_required`, `schema` + `features` (catalog.schemas), and override the hooks.
Options: base_url, api_key / api_key_env, max_tokens_field ("max_completion_tokens" or
"max_tokens"), include_usage (bool), extra_body (dict merged into every request),
organization, project.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from catalog.discovery import ENDPOINTS
from catalog.schemas import SCHEMAS, schema_features
from protocol.errors import ErrorCategory as C
from protocol.job import Job
from protocol.schema import Key
from workers import options
from workers.backend import Finish, TextDelta
from workers.classify import ErrorTable
from workers.decode import ServerEvent
from workers.http import HttpBackend
from workers.http_mapping import ErrorInfo, Malformed, StreamError, StreamMapper, load_json, usage

ERRORS = ErrorTable(
    codes={
        "insufficient_quota": C.QUOTA_EXHAUSTED,  # a 429 that waiting will not fix
        "credit_balance_exhausted": C.QUOTA_EXHAUSTED,
        "billing_hard_limit_reached": C.QUOTA_EXHAUSTED,
        "billing_not_active": C.QUOTA_EXHAUSTED,  # 429 "Your account is not active, ..."
        "rate_limit_exceeded": C.RATE_LIMITED,
        "context_length_exceeded": C.CONTEXT_LENGTH,
        "model_not_found": C.NOT_FOUND,
        # "Unsupported parameter: 'max_tokens' is not supported with this model": another
        # candidate may take it, so fail over rather than end the job.
        "unsupported_parameter": C.UNSUPPORTED,
        "invalid_api_key": C.AUTH,
        "content_filter": C.CONTENT_FILTER,
        "content_policy_violation": C.CONTENT_FILTER,
        # The OpenAI-compatible dialect of llama-server (error.type).
        "exceed_context_size_error": C.CONTEXT_LENGTH,
        "unavailable_error": C.OVERLOADED,
        "authentication_error": C.AUTH,
        "permission_error": C.PERMISSION,
        "not_found_error": C.NOT_FOUND,
    },
    phrases=(
        # The same quota 429s relayed by OpenAI-compatible proxies that drop code and type.
        ("exceeded your current quota", C.QUOTA_EXHAUSTED),
        ("account is not active, please check your billing", C.QUOTA_EXHAUSTED),
    ),
)


def chat_usage(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        return {}
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return usage(
        raw.get("prompt_tokens"), raw.get("completion_tokens"), raw.get("cost"), cached=cached
    )


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not a JSON object")
    return value


class ToolCalls:
    """Tool calls assembled from stream fragments (id, name, then argument pieces by index)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, fragments: Any) -> None:
        for frag in fragments if isinstance(fragments, list) else []:
            call = self._calls.setdefault(
                int(frag.get("index", len(self._calls))),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if frag.get("id"):
                call["id"] = frag["id"]
            fn = frag.get("function") or {}
            call["function"]["name"] += fn.get("name") or ""
            call["function"]["arguments"] += fn.get("arguments") or ""

    def extra(self) -> dict[str, Any]:
        return {"tool_calls": [self._calls[i] for i in sorted(self._calls)]} if self._calls else {}


class ChatStream(StreamMapper):
    """Chat-completion chunks: text deltas, tool-call fragments, finish_reason, usage, [DONE]."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self.backend = backend
        self.reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.model: str | None = None
        self.tools = ToolCalls()
        self.refusal = ""

    def on_event(self, event: ServerEvent) -> list[TextDelta]:
        if event.data.startswith("[DONE]"):
            self.done = True
            return []
        chunk = _dict(load_json(event.data), "stream chunk")
        if chunk.get("error"):
            raise StreamError(self.backend.error_info(chunk) or ErrorInfo(str(chunk["error"])))
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chat_usage(chunk["usage"])
        out: list[TextDelta] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(TextDelta(delta["content"]))
            if delta.get("refusal"):
                self.refusal += delta["refusal"]
            self.tools.add(delta.get("tool_calls"))
            self.reason = choice.get("finish_reason") or self.reason
        return out

    def finish(self) -> Finish:
        # Servers without [DONE] (or that drop the socket after it) still sent a finish_reason.
        if not self.done and self.reason is None:
            raise Malformed("stream ended before its finish_reason or [DONE]")
        extra = self.tools.extra()
        if self.refusal:
            extra["refusal"] = self.refusal
        return Finish(self.reason, self.usage, self.model, extra)


class OpenAIBackend(HttpBackend):
    kind = "openai"
    path = "/chat/completions"
    models_path = "/models"  # {"object": "list", "data": [{"id": ...}]}
    default_base_url, api_key_env = ENDPOINTS["openai"]
    errors = ERRORS
    schema = SCHEMAS["openai"]
    features = schema_features(SCHEMAS["openai"])
    include_usage: ClassVar[bool] = True  # ask for the usage chunk (stream_options)

    option_keys: ClassVar[Mapping[str, Key]] = options.OPENAI

    def extra_headers(self) -> dict[str, str]:
        opts = self.spec.options
        headers = {}
        if opts.get("organization"):
            headers["OpenAI-Organization"] = str(opts["organization"])
        if opts.get("project"):
            headers["OpenAI-Project"] = str(opts["project"])
        return headers

    def build_body(self, job: Job, model: str) -> dict[str, Any]:
        opts = self.spec.options
        body: dict[str, Any] = {"model": model, "messages": job.messages, "stream": job.stream}
        if job.stream and opts.get("include_usage", self.include_usage):
            body["stream_options"] = {"include_usage": True}
        names = self.schema.params
        for name, value in self.checked_params(job).items():
            field = names[name].name
            if name == "max_tokens":  # OpenAI-compatible servers may want the older name
                field = str(opts.get("max_tokens_field", field))
            body[field] = value
        body.update(opts.get("extra_body") or {})
        return body

    def stream_mapper(self, job: Job) -> StreamMapper:
        return ChatStream(self)

    def parse_body(self, body: Any) -> tuple[str, Finish]:
        body = _dict(body, "response")
        if body.get("error"):
            raise StreamError(self.error_info(body) or ErrorInfo(str(body["error"])))
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            raise Malformed("response has no choices")
        choice = _dict(choices[0], "choice")
        message = choice.get("message") or {}
        extra: dict[str, Any] = {}
        if message.get("tool_calls"):
            extra["tool_calls"] = message["tool_calls"]
        if message.get("refusal"):
            extra["refusal"] = message["refusal"]
        finish = Finish(
            choice.get("finish_reason"), chat_usage(body.get("usage")), body.get("model"), extra
        )
        return message.get("content") or "", finish

    def error_info(self, body: Any) -> ErrorInfo | None:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, str):
            return ErrorInfo(error)
        if not isinstance(error, dict):
            return None
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else None
        message = error.get("message")
        if not isinstance(message, str):
            message = json.dumps(error)[:500]
        return ErrorInfo(message, (code, error.get("type")), status)
