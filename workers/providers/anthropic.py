"""Anthropic Messages API (`POST /v1/messages`).

Options: base_url, api_key / api_key_env, max_tokens (default when the job sets none; the
API requires one), anthropic_version, anthropic_beta.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from catalog.discovery import ENDPOINTS
from catalog.schemas import SCHEMAS, schema_features
from protocol.errors import ErrorCategory as C
from protocol.errors import ProviderError
from protocol.job import Job
from protocol.schema import Key
from workers import options
from workers.backend import Finish, TextDelta
from workers.classify import ErrorTable
from workers.decode import ServerEvent
from workers.http import HttpBackend
from workers.http_mapping import ErrorInfo, Malformed, StreamError, StreamMapper, load_json, usage
from workers.ratelimit import ANTHROPIC

SCHEMA = SCHEMAS["anthropic"]
DEFAULT_MAX_TOKENS: int = SCHEMA.params["max_tokens"].default  # the API requires one
VERSION = "2023-06-01"

ERRORS = ErrorTable(
    codes={
        # error.type; invalid_request_error is left to the status and phrases
        # ("prompt is too long" is a context-length error inside it).
        "authentication_error": C.AUTH,
        "permission_error": C.PERMISSION,
        "billing_error": C.QUOTA_EXHAUSTED,
        "not_found_error": C.NOT_FOUND,
        "rate_limit_error": C.RATE_LIMITED,
        "overloaded_error": C.OVERLOADED,
        "api_error": C.SERVER_ERROR,
        "timeout_error": C.NETWORK,
        "request_too_large": C.INVALID_REQUEST,
    },
    phrases=(
        # An exhausted prepaid balance arrives as a 400 invalid_request_error, not a 402:
        # "Your credit balance is too low to access the Anthropic API. Please go to Plans &
        # Billing to upgrade or purchase credits." Another provider may still serve the job.
        ("credit balance is too low", C.QUOTA_EXHAUSTED),
    ),
)

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

TOOL_CHOICE = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}


def _usage(raw: dict[str, Any]) -> dict[str, Any]:
    # Cached prompt tokens are counted apart from input_tokens; the prompt is their sum.
    prompt = sum(
        int(raw.get(k) or 0)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return usage(
        prompt,
        raw.get("output_tokens"),
        cached=raw.get("cache_read_input_tokens"),
        written=raw.get("cache_creation_input_tokens"),
    )


def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0]
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content or []:
        if part["type"] == "text":
            blocks.append({"type": "text", "text": part["text"]})
        else:
            blocks.append(_image(part["image_url"]["url"]))
    return blocks


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content or [] if p.get("type") == "text")


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        args = {}
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args}


def convert_messages(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI-style messages -> (top-level system, Anthropic turns).

    Tool results become `tool_result` blocks in a user turn; consecutive turns of one role
    are merged, because tool results must share the user turn that follows the tool call.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for msg in messages:
        role = msg["role"]
        if role == "system":
            system.append(_text(msg.get("content")))
            continue
        if role == "tool":
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": msg["tool_call_id"],
                    "content": _text(msg.get("content")),
                }
            ]
            role = "user"
        else:
            blocks = _blocks(msg.get("content"))
            blocks += [_tool_use(c) for c in msg.get("tool_calls") or []]
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return ("\n\n".join(system) if system else None), turns


def convert_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        fn = tool["function"]
        item = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            item["description"] = fn["description"]
        out.append(item)
    return out


class MessageStream(StreamMapper):
    """message_start / content_block_* / message_delta / message_stop, pings skipped."""

    def __init__(self, backend: AnthropicBackend) -> None:
        self.backend = backend
        self.usage_raw: dict[str, Any] = {}
        self.reason: str | None = None
        self.model: str | None = None
        self.tools: dict[int, dict[str, Any]] = {}  # content-block index -> tool call

    def on_event(self, event: ServerEvent) -> list[TextDelta]:
        if event.event == "ping":
            return []
        data = load_json(event.data)
        if not isinstance(data, dict):
            raise Malformed("event data is not a JSON object")
        kind = data.get("type") or event.event
        if kind == "error" or event.event == "error":
            raise StreamError(self.backend.error_info(data) or ErrorInfo(event.data[:500]))
        if kind == "message_start":
            message = data.get("message") or {}
            self.model = message.get("model")
            self.usage_raw.update(message.get("usage") or {})
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.tools[int(data.get("index", 0))] = {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [TextDelta(delta.get("text", ""))] if delta.get("text") else []
            if delta.get("type") == "input_json_delta":
                call = self.tools.get(int(data.get("index", 0)))
                if call is not None:
                    call["function"]["arguments"] += delta.get("partial_json", "")
        elif kind == "message_delta":
            stop = (data.get("delta") or {}).get("stop_reason")
            self.reason = STOP_REASONS.get(stop, stop) if stop else self.reason
            self.usage_raw.update(data.get("usage") or {})  # output_tokens is cumulative
        elif kind == "message_stop":
            self.done = True
        return []

    def finish(self) -> Finish:
        if not self.done:
            raise Malformed("stream ended before message_stop")
        extra = {"tool_calls": [self.tools[i] for i in sorted(self.tools)]} if self.tools else {}
        return Finish(self.reason, _usage(self.usage_raw), self.model, extra)


class AnthropicBackend(HttpBackend):
    kind = "anthropic"
    path = "/v1/messages"
    # GET /v1/models: {"data": [{"id": ...}], "has_more": bool, "first_id", "last_id"}
    models_path = "/v1/models"
    models_params: ClassVar[Mapping[str, str]] = {"limit": "1000"}
    default_base_url, api_key_env = ENDPOINTS["anthropic"]
    errors = ERRORS
    ratelimit_headers = (ANTHROPIC,)
    schema = SCHEMA
    features = schema_features(SCHEMA)

    exact_counting = "count_tokens"

    async def count_prompt(self, messages: list[dict[str, Any]], model: str) -> int:
        """POST /v1/messages/count_tokens: Anthropic's own count (needs a key)."""
        if not self._key:
            raise ProviderError(C.AUTH, "count_tokens needs an API key", provider=self.spec.name)
        system, turns = convert_messages(messages)
        body: dict[str, Any] = {"model": model, "messages": turns}
        if system is not None:
            body["system"] = system
        deadline = asyncio.get_running_loop().time() + self.timeouts.total
        timed_out = f"count_tokens exceeded the total timeout of {self.timeouts.total}s"
        with self._provider_errors("count_tokens body", "count_tokens: ", timed_out):
            answer = await self.call_json(
                "POST", "/v1/messages/count_tokens", body=body, deadline=deadline
            )
        tokens = answer.get("input_tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, int) or tokens < 0:
            raise ProviderError(
                C.PROTOCOL, "count_tokens answered no input_tokens", provider=self.spec.name
            )
        return tokens

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    option_keys: ClassVar[Mapping[str, Key]] = options.ANTHROPIC

    def extra_headers(self) -> dict[str, str]:
        opts = self.spec.options
        headers = {"anthropic-version": str(opts.get("anthropic_version", VERSION))}
        if opts.get("anthropic_beta"):
            headers["anthropic-beta"] = str(opts["anthropic_beta"])
        return headers

    def build_body(self, job: Job, model: str) -> dict[str, Any]:
        params = self.checked_params(job)  # e.g. temperature 0..1: refused, never clamped
        system, messages = convert_messages(job.messages)
        max_tokens = params.get("max_tokens", self.spec.options.get("max_tokens"))
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": int(max_tokens or DEFAULT_MAX_TOKENS),
            "stream": job.stream,
        }
        if system is not None:
            body["system"] = system
        for name in ("temperature", "top_p", "top_k", "stop"):  # the schema's plain renames
            if name in params:
                body[self.schema.params[name].name] = params[name]
        if "tools" in params:
            body["tools"] = convert_tools(params["tools"])
        if "tool_choice" in params:
            choice = params["tool_choice"]
            body["tool_choice"] = (
                TOOL_CHOICE[choice]
                if isinstance(choice, str)
                else {"type": "tool", "name": choice["function"]["name"]}
            )
        if "response_format" in params:
            self._response_format(body, params["response_format"])
        return body

    def _response_format(self, body: dict[str, Any], fmt: dict[str, Any]) -> None:
        # json_object has no Anthropic form: the schema refuses it (fail over, never pretend).
        if fmt["type"] == "json_schema":
            schema = fmt["json_schema"].get("schema", {})
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}

    def stream_mapper(self, job: Job) -> StreamMapper:
        return MessageStream(self)

    def parse_body(self, body: Any) -> tuple[str, Finish]:
        if not isinstance(body, dict):
            raise Malformed("response is not a JSON object")
        if body.get("type") == "error":
            raise StreamError(self.error_info(body) or ErrorInfo("error"))
        if not isinstance(body.get("content"), list):
            raise Malformed("response has no content list")
        text = "".join(b.get("text", "") for b in body["content"] if b.get("type") == "text")
        calls = [
            {
                "id": b.get("id"),
                "type": "function",
                "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input", {}))},
            }
            for b in body["content"]
            if b.get("type") == "tool_use"
        ]
        stop = body.get("stop_reason")
        finish = Finish(
            STOP_REASONS.get(stop, stop) if stop else None,
            _usage(body.get("usage") or {}),
            body.get("model"),
            {"tool_calls": calls} if calls else {},
        )
        return text, finish

    def next_models_page(self, body: Any, seen: int) -> Mapping[str, str] | None:
        last = body.get("last_id")
        if body.get("has_more") and isinstance(last, str) and last:
            return {"limit": "1000", "after_id": last}
        return None

    def error_info(self, body: Any) -> ErrorInfo | None:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return None
        message = error.get("message")
        # OpenRouter's Anthropic skin adds error_type; it is more specific than type.
        codes = (error.get("error_type"), error.get("type"))
        return ErrorInfo(message if isinstance(message, str) else str(error)[:500], codes)
