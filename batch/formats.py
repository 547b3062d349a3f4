"""The three batch line formats: each turns an input line into a request and a result into a line.

- `openai`: OpenAI Batch API lines (`custom_id`, `method`, `url`, `body`); results as the API
  writes them (`id`, `custom_id`, `response{status_code, request_id, body}`, `error`).
- `anthropic`: Message Batches requests (`custom_id`, `params`); results as
  `MessageBatchIndividualResponse` lines (`custom_id`, `result{type, message|error}`).
- `llmrelay`: llmrelay's own job lines (`custom_id`, `messages` or `prompt`, `params`, ...).

Every output line also carries an `llmrelay` object (job id, input line, provider, model,
attempts, latency, ttft, usage, cost; for failures the category and whether a rerun may help).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol import validate as v
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError, is_retryable
from protocol.http_errors import ROWS, anthropic_error, openai_error, param_of
from protocol.job import validate_messages, validate_params
from protocol.results import Result

FORMATS = ("openai", "anthropic", "llmrelay")
CUSTOM_ID_MAX = 512
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OPENAI_URL = "/v1/chat/completions"

# Failures worth another run of the batch (`--retry-failed`): what the broker itself may retry,
# plus what only time fixes at batch scale (a deadline, no provider up, a full broker).
RERUNNABLE = frozenset(
    {c for c in ErrorCategory if is_retryable(c)}
    | {ErrorCategory.DEADLINE, ErrorCategory.NO_PROVIDER, ErrorCategory.BROKER_BUSY}
)


class InputError(ValueError):
    """A malformed input line: names the field; `code` follows OpenAI's batch error codes."""

    def __init__(self, field: str, message: str, code: str = "invalid_request") -> None:
        self.field = field
        self.message = message
        self.code = code
        super().__init__(f"{field}: {message}")


@dataclass(slots=True)
class Request:
    """One valid input line, ready to become a job."""

    custom_id: str
    line: int
    target: str | None  # the line's own model (or route) name, if it gives one
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)  # job options (timeout, metadata...)
    digest: str = ""  # of the raw line, so a changed line gets a new job id


@dataclass(slots=True)
class BadLine:
    line: int
    custom_id: str | None
    error: InputError


def digest_of(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _reprefix(exc: ProtocolViolation, prefix: str) -> InputError:
    """A job validation error ("params.temperature: ...") in the input's own field names."""
    text = str(exc)
    name, _, why = text.partition(": ")
    if name.startswith("params."):
        name = name[len("params.") :]
    return InputError(f"{prefix}{name}", why or text)


def _custom_id(obj: dict[str, Any]) -> str:
    if "custom_id" not in obj:
        raise InputError("custom_id", "missing", "missing_custom_id")
    value = obj["custom_id"]
    if not isinstance(value, str) or not value:
        raise InputError("custom_id", "expected a non-empty string", "invalid_custom_id")
    if len(value) > CUSTOM_ID_MAX:
        raise InputError(
            "custom_id", f"longer than {CUSTOM_ID_MAX} characters", "invalid_custom_id"
        )
    return value


def _checked(
    messages: Any, params: dict[str, Any], prefix: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        return validate_messages(messages), validate_params(params)
    except ProtocolViolation as exc:
        raise _reprefix(exc, prefix) from None


def _target(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InputError(name, "expected a model name (1-256 characters)")
    return value


def _meta(
    request_line: int, job_id: str, result: Result | None, cost: float | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"job_id": job_id, "line": request_line}
    if result is not None:
        meta.update(
            provider=result.provider,
            model=result.model,
            attempts=result.attempts,
            latency=result.latency,
            ttft=result.ttft,
            usage=result.usage,
            cost=cost,
            cost_source=result.cost_source if result.cost is not None else "unknown",
            skipped=result.skipped,
            resets=result.resets,
        )
    return meta


def failure_meta(line: int, job_id: str | None, error: ProviderError) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "line": line,
        "category": error.category.value,
        "retryable": error.category in RERUNNABLE,
        "provider": error.provider,
        "status_code": error.status_code,
        "attempts": error.attempts,
    }


def bad_line_meta(bad: BadLine) -> dict[str, Any]:
    return {
        "job_id": None,
        "line": bad.line,
        "field": bad.error.field,
        "category": "invalid_input",
        "retryable": False,
    }


def _usage_tokens(result: Result) -> tuple[int, int]:
    usage = result.usage or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class BatchFormat:
    """What every format provides; see the module doc for the line shapes."""

    name = ""

    def parse(self, obj: dict[str, Any], line: int) -> Request:
        raise NotImplementedError

    def success(
        self, req: Request, job_id: str, result: Result, cost: float | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def failure(self, req: Request, job_id: str, error: ProviderError) -> dict[str, Any]:
        raise NotImplementedError

    def bad_line(self, bad: BadLine) -> dict[str, Any]:
        raise NotImplementedError


# --- OpenAI ---------------------------------------------------------------------------------

OPENAI_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}
OPENAI_FINISH["content_filter"] = "content_filter"
# Body fields that become canonical parameters (same name unless mapped).
OPENAI_PARAMS = {
    "max_completion_tokens": "max_tokens",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "response_format": "response_format",
    "tools": "tools",
    "tool_choice": "tool_choice",
    # llmrelay's canonical extras, accepted in an OpenAI body on purpose
    "top_k": "top_k",
    "repeat_penalty": "repeat_penalty",
}
# Body fields that do not change the generation: kept in the job metadata, not sent upstream.
OPENAI_INFO = ("user", "metadata", "store")


class OpenAIFormat(BatchFormat):
    name = "openai"

    def parse(self, obj: dict[str, Any], line: int) -> Request:
        custom_id = _custom_id(obj)
        extra = set(obj) - {"custom_id", "method", "url", "body"}
        if extra:
            raise InputError(
                sorted(extra)[0], "unknown field; a line has custom_id, method, url, body"
            )
        if obj.get("method", "POST") != "POST":
            raise InputError("method", f"only POST is supported, got {obj.get('method')!r}")
        if obj.get("url") != OPENAI_URL:
            raise InputError(
                "url",
                f"unsupported url {obj.get('url')!r}; supported: {OPENAI_URL}",
                "url_mismatch",
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            raise InputError("body", "missing or not an object")
        if "messages" not in body:
            raise InputError("body.messages", "missing")
        if body.get("stream"):
            raise InputError("body.stream", "batch requests cannot stream")
        if body.get("n", 1) != 1:
            raise InputError("body.n", "only n=1 is supported")
        params: dict[str, Any] = {}
        info: dict[str, Any] = {}
        for key, value in body.items():
            if key in ("model", "messages", "stream", "n"):
                continue
            if key in OPENAI_INFO:
                info[key] = value
            elif key in OPENAI_PARAMS:
                if key == "max_tokens" and "max_completion_tokens" in body:
                    continue  # the newer name wins when both are given
                params[OPENAI_PARAMS[key]] = value
            else:
                raise InputError(f"body.{key}", "unknown parameter for llmrelay")
        messages, params = _checked(body["messages"], params, "body.")
        options = {"metadata": {"openai": info}} if info else {}
        return Request(
            custom_id, line, _target(body.get("model"), "body.model"), messages, params, options
        )

    @staticmethod
    def _line_id(job_id: str) -> str:
        return f"batch_req_{job_id[-24:]}"

    def success(
        self, req: Request, job_id: str, result: Result, cost: float | None
    ) -> dict[str, Any]:
        prompt, completion = _usage_tokens(result)
        body = {
            "id": f"chatcmpl-{job_id[-24:]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": result.model or req.target or "",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": OPENAI_FINISH.get(result.finish_reason or "stop", "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            "system_fingerprint": None,
        }
        return {
            "id": self._line_id(job_id),
            "custom_id": req.custom_id,
            "response": {"status_code": 200, "request_id": f"req_{job_id[-24:]}", "body": body},
            "error": None,
            "llmrelay": {
                **_meta(req.line, job_id, result, cost),
                "finish_reason": result.finish_reason,
            },
        }

    def failure(self, req: Request, job_id: str, error: ProviderError) -> dict[str, Any]:
        # As the OpenAI API writes an HTTP-level failure: the status and error body in
        # `response`, and `error` null (readers must test status_code, not just `error`).
        # The status the gateway would answer (the upstream's own is in llmrelay.status_code).
        row = ROWS[error.category]
        message = str(error)
        return {
            "id": self._line_id(job_id),
            "custom_id": req.custom_id,
            "response": {
                "status_code": row.status,
                "request_id": f"req_{job_id[-24:]}",
                "body": openai_error(row, message, param_of(error.category, message)),
            },
            "error": None,
            "llmrelay": failure_meta(req.line, job_id, error),
        }

    def bad_line(self, bad: BadLine) -> dict[str, Any]:
        return {
            "id": f"batch_req_line{bad.line}",
            "custom_id": bad.custom_id,
            "response": None,
            "error": {
                "code": bad.error.code,
                "message": f"line {bad.line}: {bad.error}",
                "param": bad.error.field,
                "line": bad.line,
            },
            "llmrelay": bad_line_meta(bad),
        }


# --- Anthropic ------------------------------------------------------------------------------

ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
ANTHROPIC_PARAMS = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "stop_sequences": "stop",
}


def _anthropic_block(block: Any, where: str) -> dict[str, Any]:
    if not isinstance(block, dict):
        raise InputError(where, "expected a content block object")
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text")}
    if kind == "image":
        source = block.get("source")
        if not isinstance(source, dict):
            raise InputError(f"{where}.source", "missing or not an object")
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        elif source.get("type") == "url":
            url = str(source.get("url"))
        else:
            raise InputError(f"{where}.source.type", "expected base64 or url")
        return {"type": "image_url", "image_url": {"url": url}}
    raise InputError(f"{where}.type", f"unsupported content block type {kind!r} (text, image)")


def _anthropic_messages(raw: Any, system: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InputError("params.messages", "expected a non-empty list")
    out: list[dict[str, Any]] = []
    if system is not None:
        if isinstance(system, list):
            texts = []
            for i, block in enumerate(system):
                if not isinstance(block, dict) or block.get("type") != "text":
                    raise InputError(f"params.system[{i}]", "expected a text block")
                texts.append(str(block.get("text", "")))
            system = "\n".join(texts)
        if not isinstance(system, str):
            raise InputError("params.system", "expected a string or text blocks")
        out.append({"role": "system", "content": system})
    for i, msg in enumerate(raw):
        where = f"params.messages[{i}]"
        if not isinstance(msg, dict):
            raise InputError(where, "expected an object")
        if msg.get("role") not in ("user", "assistant"):
            raise InputError(f"{where}.role", "expected user or assistant")
        content = msg.get("content")
        if isinstance(content, list):
            content = [_anthropic_block(b, f"{where}.content[{j}]") for j, b in enumerate(content)]
        out.append({"role": msg["role"], "content": content})
    return out


def _anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InputError("params.tools", "expected a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or "name" not in tool:
            raise InputError(f"params.tools[{i}]", "expected {name, description?, input_schema}")
        fn = {"name": tool["name"], "parameters": tool.get("input_schema") or {}}
        if "description" in tool:
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _anthropic_tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    simple = {"auto": "auto", "any": "required", "none": "none"}
    if kind in simple:
        return simple[kind]
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise InputError("params.tool_choice.type", "expected auto, any, none or tool")


class AnthropicFormat(BatchFormat):
    name = "anthropic"

    def parse(self, obj: dict[str, Any], line: int) -> Request:
        custom_id = _custom_id(obj)
        if not ANTHROPIC_CUSTOM_ID.match(custom_id):
            raise InputError("custom_id", "must match ^[a-zA-Z0-9_-]{1,64}$", "invalid_custom_id")
        extra = set(obj) - {"custom_id", "params"}
        if extra:
            raise InputError(sorted(extra)[0], "unknown field; a request has custom_id, params")
        params_in = obj.get("params")
        if not isinstance(params_in, dict):
            raise InputError("params", "missing or not an object")
        if "messages" not in params_in:
            raise InputError("params.messages", "missing")
        if "max_tokens" not in params_in:
            raise InputError("params.max_tokens", "missing (required by the Messages API)")
        if params_in.get("stream"):
            raise InputError("params.stream", "batch requests cannot stream")
        temperature = params_in.get("temperature")
        if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
            raise InputError("params.temperature", "must be between 0 and 1")
        params: dict[str, Any] = {}
        info: dict[str, Any] = {}
        for key, value in params_in.items():
            if key in ("model", "messages", "system", "stream"):
                continue
            if key == "metadata":
                info[key] = value
            elif key == "tools":
                params["tools"] = _anthropic_tools(value)
            elif key == "tool_choice":
                params["tool_choice"] = _anthropic_tool_choice(value)
            elif key in ANTHROPIC_PARAMS:
                params[ANTHROPIC_PARAMS[key]] = value
            else:
                raise InputError(f"params.{key}", "unknown parameter for llmrelay")
        messages = _anthropic_messages(params_in["messages"], params_in.get("system"))
        messages, params = _checked(messages, params, "params.")
        options = {"metadata": {"anthropic": info}} if info else {}
        target = _target(params_in.get("model"), "params.model")
        return Request(custom_id, line, target, messages, params, options)

    def success(
        self, req: Request, job_id: str, result: Result, cost: float | None
    ) -> dict[str, Any]:
        prompt, completion = _usage_tokens(result)
        message = {
            "id": f"msg_{job_id[-24:]}",
            "type": "message",
            "role": "assistant",
            "model": result.model or req.target or "",
            "content": [{"type": "text", "text": result.text}],
            "stop_reason": ANTHROPIC_STOP.get(result.finish_reason or "stop", "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }
        return {
            "custom_id": req.custom_id,
            "result": {"type": "succeeded", "message": message},
            "llmrelay": {
                **_meta(req.line, job_id, result, cost),
                "finish_reason": result.finish_reason,
            },
        }

    @staticmethod
    def _errored(category: ErrorCategory, message: str) -> dict[str, Any]:
        # `error` is the whole ErrorResponse envelope, one level deeper than it looks.
        return {"type": "errored", "error": anthropic_error(ROWS[category], message)}

    def failure(self, req: Request, job_id: str, error: ProviderError) -> dict[str, Any]:
        return {
            "custom_id": req.custom_id,
            "result": self._errored(error.category, str(error)),
            "llmrelay": failure_meta(req.line, job_id, error),
        }

    def bad_line(self, bad: BadLine) -> dict[str, Any]:
        return {
            "custom_id": bad.custom_id,
            "result": self._errored(ErrorCategory.INVALID_REQUEST, f"line {bad.line}: {bad.error}"),
            "llmrelay": bad_line_meta(bad),
        }


# --- llmrelay's own job lines ---------------------------------------------------------------

LLMRELAY_OPTIONS = ("timeout", "max_attempts", "priority", "on_partial", "metadata")
LLMRELAY_FIELDS = ("custom_id", "messages", "prompt", "system", "model", "route", "params")


class LlmrelayFormat(BatchFormat):
    name = "llmrelay"

    def parse(self, obj: dict[str, Any], line: int) -> Request:
        custom_id = _custom_id(obj)
        extra = set(obj) - set(LLMRELAY_FIELDS) - set(LLMRELAY_OPTIONS)
        if extra:
            raise InputError(sorted(extra)[0], "unknown field")
        messages = obj.get("messages")
        if messages is None:
            prompt = obj.get("prompt")
            if not isinstance(prompt, str):
                raise InputError("messages", "missing (give messages or prompt)")
            messages = [{"role": "user", "content": prompt}]
            if obj.get("system") is not None:
                messages.insert(0, {"role": "system", "content": obj["system"]})
        params = obj.get("params") or {}
        if not isinstance(params, dict):
            raise InputError("params", "expected an object")
        messages, params = _checked(messages, params, "params.")
        if obj.get("model") is not None and obj.get("route") is not None:
            raise InputError("route", "give model or route, not both")
        target = _target(obj.get("model"), "model")
        if obj.get("route") is not None:
            try:
                target = "route:" + v.need_id(obj["route"], "route")
            except ProtocolViolation as exc:
                raise InputError("route", str(exc)) from None
        options = {k: obj[k] for k in LLMRELAY_OPTIONS if k in obj}
        return Request(custom_id, line, target, messages, params, options)

    def success(
        self, req: Request, job_id: str, result: Result, cost: float | None
    ) -> dict[str, Any]:
        return {
            "custom_id": req.custom_id,
            "ok": True,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "usage": result.usage,
            "llmrelay": _meta(req.line, job_id, result, cost),
        }

    def failure(self, req: Request, job_id: str, error: ProviderError) -> dict[str, Any]:
        return {
            "custom_id": req.custom_id,
            "ok": False,
            "error": {"category": error.category.value, "message": str(error)},
            "llmrelay": failure_meta(req.line, job_id, error),
        }

    def bad_line(self, bad: BadLine) -> dict[str, Any]:
        return {
            "custom_id": bad.custom_id,
            "ok": False,
            "error": {"category": "invalid_input", "message": f"line {bad.line}: {bad.error}"},
            "llmrelay": bad_line_meta(bad),
        }


BY_NAME: dict[str, Callable[[], BatchFormat]] = {
    "openai": OpenAIFormat,
    "anthropic": AnthropicFormat,
    "llmrelay": LlmrelayFormat,
}


def get_format(name: str) -> BatchFormat:
    try:
        return BY_NAME[name]()
    except KeyError:
        raise ValueError(f"unknown batch format {name!r}; known: {', '.join(FORMATS)}") from None


def guess_format(obj: dict[str, Any]) -> str | None:
    """The format one parsed line looks like, or None if it gives no hint."""
    if "body" in obj or "url" in obj or "method" in obj:
        return "openai"
    if "messages" in obj or "prompt" in obj:
        return "llmrelay"
    if "params" in obj:
        return "anthropic"
    return None
