"""Ollama `/api/chat`: NDJSON stream, sampling in `options`, images as raw base64.

Options: base_url (else $OLLAMA_HOST, else http://127.0.0.1:11434), keep_alive, num_ctx,
api_key / api_key_env (only for ollama.com; local servers need none).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from catalog.discovery import ENDPOINTS, ollama_host
from catalog.schemas import SCHEMAS, put, schema_features
from protocol.errors import ErrorCategory as C
from protocol.job import Job
from protocol.schema import Key
from workers import options
from workers.backend import Finish, TextDelta
from workers.classify import ErrorTable
from workers.decode import Framing, ServerEvent
from workers.http import HttpBackend
from workers.http_mapping import (
    ErrorInfo,
    Malformed,
    StreamError,
    StreamMapper,
    load_json,
    unsupported,
    usage,
)
from workers.spec import ProviderSpec

SCHEMA = SCHEMAS["ollama"]
# Canonical parameters that go into `options` (schema names "options.<key>").
OPTIONS = {k: p.name for k, p in SCHEMA.params.items() if p.name.startswith("options.")}

ERRORS = ErrorTable(
    phrases=(
        ("not found", C.NOT_FOUND),  # "model 'x' not found, try pulling it first"
        ("server busy", C.OVERLOADED),  # 503 "maximum pending requests exceeded"
        ("does not support", C.UNSUPPORTED),  # "... does not support tools / chat"
        ("request canceled", C.CANCELLED),
    ),
)


def _images(content: list[dict[str, Any]], provider: str) -> list[str]:
    images = []
    for part in content:
        if part.get("type") != "image_url":
            continue
        url = part["image_url"]["url"]
        if not url.startswith("data:"):  # Ollama takes bytes only; it cannot fetch a URL
            raise unsupported(provider, "image by URL (Ollama needs inline base64 data)")
        images.append(url.partition(",")[2])
    return images


def _message(msg: dict[str, Any], provider: str) -> dict[str, Any]:
    content = msg.get("content")
    out: dict[str, Any] = {"role": msg["role"]}
    if isinstance(content, list):
        out["content"] = "".join(p["text"] for p in content if p.get("type") == "text")
        images = _images(content, provider)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if msg.get("tool_calls"):
        out["tool_calls"] = [
            {"function": {"name": c["function"]["name"], "arguments": _args(c["function"])}}
            for c in msg["tool_calls"]
        ]
    return out


def _args(fn: dict[str, Any]) -> Any:
    try:
        return json.loads(fn.get("arguments") or "{}")
    except ValueError:
        return {}


def _tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Ollama sends whole calls with `arguments` as an object; canonical is a JSON string."""
    return [
        {
            "id": call.get("id"),
            "type": "function",
            "function": {
                "name": (call.get("function") or {}).get("name"),
                "arguments": json.dumps((call.get("function") or {}).get("arguments") or {}),
            },
        }
        for call in message.get("tool_calls") or []
    ]


def _finish(obj: dict[str, Any], tools: list[dict[str, Any]]) -> Finish:
    reason = obj.get("done_reason")
    if tools and reason == "stop":
        reason = "tool_calls"
    return Finish(
        reason,
        usage(obj.get("prompt_eval_count"), obj.get("eval_count")),
        obj.get("model"),
        {"tool_calls": tools} if tools else {},
    )


def _check(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise Malformed("NDJSON line is not a JSON object")
    if "error" in obj:
        error = obj["error"]
        raise StreamError(ErrorInfo(error if isinstance(error, str) else json.dumps(error)))
    return obj


class ChatLines(StreamMapper):
    def __init__(self) -> None:
        self.last: dict[str, Any] = {}
        self.tools: list[dict[str, Any]] = []

    def on_event(self, event: ServerEvent) -> list[TextDelta]:
        obj = _check(load_json(event.data))
        message = obj.get("message") or {}
        self.tools += _tool_calls(message)
        if obj.get("done"):
            self.done = True
            self.last = obj
        text = message.get("content")
        return [TextDelta(text)] if text else []

    def finish(self) -> Finish:
        if not self.done:
            raise Malformed('stream ended before the "done": true line')
        return _finish(self.last, self.tools)


class OllamaBackend(HttpBackend):
    kind = "ollama"
    framing: ClassVar[Framing] = "ndjson"
    path = "/api/chat"
    models_path = "/api/tags"  # {"models": [{"name": ..., "model": ...}]}
    default_base_url = ENDPOINTS["ollama"][0]
    key_required = False
    errors = ERRORS
    # No tool_choice: Ollama cannot force or forbid a tool call.
    schema = SCHEMA
    features = schema_features(SCHEMA)
    option_keys: ClassVar[Mapping[str, Key]] = options.OLLAMA

    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        if not spec.options.get("base_url"):
            self.base_url = ollama_host(os.environ.get("OLLAMA_HOST"))

    def build_body(self, job: Job, model: str) -> dict[str, Any]:
        params = self.checked_params(job)
        opts = self.spec.options
        body: dict[str, Any] = {
            "model": model,
            "messages": [_message(m, self.spec.name) for m in job.messages],
            "stream": job.stream,  # Ollama streams unless told otherwise
        }
        for name, value in params.items():
            if name in OPTIONS:
                put(body, OPTIONS[name], value)
        if opts.get("num_ctx"):
            put(body, "options.num_ctx", int(opts["num_ctx"]))
        fmt = params.get("response_format")
        if fmt and fmt["type"] == "json_object":
            body["format"] = "json"
        elif fmt and fmt["type"] == "json_schema":
            body["format"] = fmt["json_schema"].get("schema", {})
        if "tools" in params:
            body["tools"] = params["tools"]
        if opts.get("keep_alive") is not None:
            body["keep_alive"] = opts["keep_alive"]
        return body

    def stream_mapper(self, job: Job) -> StreamMapper:
        return ChatLines()

    def parse_body(self, body: Any) -> tuple[str, Finish]:
        obj = _check(body)
        message = obj.get("message")
        if not isinstance(message, dict):
            raise Malformed("response has no message")
        return message.get("content") or "", _finish(obj, _tool_calls(message))

    def model_ids(self, body: Any) -> list[Any]:
        return [entry["name"] for entry in body["models"]]

    def error_info(self, body: Any) -> ErrorInfo | None:
        error = body.get("error") if isinstance(body, dict) else None
        return ErrorInfo(error) if isinstance(error, str) else None
