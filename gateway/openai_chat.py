"""OpenAI Chat Completions: the request body -> a canonical job, a result -> the response.

Fields that do not change the output (user, store, metadata...) are accepted; a field that
would change it and that llmrelay cannot honour is a 400 naming it, never silently dropped.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson

from gateway.errors import ApiError
from protocol.job import PARAMS
from protocol.results import Result

# Passed straight through: every canonical parameter has its OpenAI name, except max_tokens
# (two spellings, below). top_k and repeat_penalty are llmrelay extensions (via extra_body).
SAME_PARAMS = frozenset(PARAMS) - {"max_tokens"}
# Accepted and without effect on the generated text.
NEUTRAL = ("user", "store", "service_tier", "prompt_cache_key", "safety_identifier", "stream")
# Would change the output; llmrelay has no canonical equivalent.
UNSUPPORTED = (
    "logit_bias",
    "top_logprobs",
    "audio",
    "prediction",
    "reasoning_effort",
    "verbosity",
    "web_search_options",
    "functions",
    "function_call",
)
MESSAGE_KEYS = ("role", "content", "name", "tool_call_id", "tool_calls")
FINISH = ("stop", "length", "tool_calls", "content_filter", "function_call")


def _message(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ApiError.bad_request(f"{where}: must be an object", where)
    msg: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None and key != "content":
            continue  # e.g. "refusal": null echoed back from an earlier response
        if key == "refusal" and raw.get("role") == "assistant":
            continue  # a refusal the model gave earlier carries no instruction
        if key not in MESSAGE_KEYS:
            raise ApiError.bad_request(f"{where}.{key}: not supported", f"{where}.{key}")
        msg[key] = value
    if msg.get("role") == "developer":
        msg["role"] = "system"
    if msg.get("role") == "function":
        raise ApiError.bad_request(f"{where}.role: 'function' messages are not supported", where)
    return msg


def job_kwargs(body: dict[str, Any], routes: frozenset[str]) -> dict[str, Any]:
    """The build_job keyword arguments for one chat request (validated by build_job after)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError.bad_request("model: required, a route name or provider:model", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError.bad_request("messages: required, a non-empty list", "messages")
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError.bad_request("n: only n=1 is supported", "n")
    params: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("model", "messages", "n", "max_tokens", "max_completion_tokens", "metadata"):
            continue
        if key in SAME_PARAMS:
            params[key] = value
        elif key == "stream_options":
            if not isinstance(value, dict) or not set(value) <= {
                "include_usage",
                "include_obfuscation",
            }:
                raise ApiError.bad_request("stream_options: unknown option", "stream_options")
        elif key == "parallel_tool_calls" or key == "logprobs":
            if key == "logprobs" and value:
                raise ApiError.bad_request("logprobs: not supported", key)
        elif key == "modalities":
            if value not in (["text"], None):
                raise ApiError.bad_request("modalities: only ['text'] is supported", key)
        elif key in UNSUPPORTED:
            raise ApiError.bad_request(f"{key}: not supported by llmrelay", key)
        elif key not in NEUTRAL:
            raise ApiError.bad_request(f"{key}: unknown field", key)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        params["max_tokens"] = limit
    kwargs: dict[str, Any] = {
        "messages": [_message(m, f"messages[{i}]") for i, m in enumerate(messages)],
        "params": params,
    }
    if model in routes:
        kwargs["route"] = model
    else:
        kwargs["model"] = model
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ApiError.bad_request("metadata: must be an object", "metadata")
        kwargs["metadata"] = metadata
    return kwargs


def finish_reason(result: Result) -> str:
    reason = result.finish_reason
    return reason if reason in FINISH else "stop"


def tool_calls(result: Result) -> list[dict[str, Any]]:
    extra = result.raw.get("extra") or {}
    calls = extra.get("tool_calls") or []
    return [
        {
            "id": call.get("id") or f"call_{result.job_id[:8]}_{i}",
            "type": "function",
            "function": {
                "name": (call.get("function") or {}).get("name", ""),
                "arguments": _arguments((call.get("function") or {}).get("arguments")),
            },
        }
        for i, call in enumerate(calls)
    ]


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {})


def usage(result: Result) -> dict[str, int]:
    prompt = int(result.usage.get("prompt_tokens") or 0)
    completion = int(result.usage.get("completion_tokens") or 0)
    total = int(result.usage.get("total_tokens") or prompt + completion)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def completion(result: Result, requested: str, created: int | None = None) -> dict[str, Any]:
    calls = tool_calls(result)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.text if result.text or not calls else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{result.job_id}",
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": result.model or requested,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(result),
            }
        ],
        "usage": usage(result),
        "system_fingerprint": None,
    }


def sse(obj: Any) -> bytes:
    """One server-sent event holding `obj` as JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class ChunkWriter:
    """Renders one stream's `chat.completion.chunk` events (same id and created on each).

    A text chunk differs from the next only in its text, so its bytes are a prefix and a
    suffix rendered once per stream around the JSON string: one small encode per event.
    """

    def __init__(self, job_id: str, model: str) -> None:
        self.id = f"chatcmpl-{job_id}"
        self.created = int(time.time())
        self.model = model
        template = sse(self.text(""))
        cut = template.index(b'"content":""') + len(b'"content":')
        self._text_head, self._text_tail = template[:cut], template[cut + 2 :]

    def text_event(self, text: str) -> bytes:
        """`sse(self.text(text))`, without building and encoding the whole chunk."""
        return self._text_head + orjson.dumps(text) + self._text_tail

    def chunk(
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model or self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def first(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": "", "refusal": None})

    def text(self, text: str) -> dict[str, Any]:
        return self.chunk({"content": text})

    def ending(self, result: Result, include_usage: bool, trail: dict[str, Any]) -> list[Any]:
        """The closing chunks: tool calls, the finish reason, usage if asked for."""
        model = result.model or self.model
        out: list[Any] = []
        calls = tool_calls(result)
        if calls:
            delta = [{"index": i, **call} for i, call in enumerate(calls)]
            out.append(self.chunk({"tool_calls": delta}, model=model))
        last = self.chunk({}, finish_reason(result), model=model)
        last["x_llmrelay"] = trail  # unknown keys are kept (not rejected) by the SDK models
        out.append(last)
        if include_usage:
            out.append(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": usage(result),
                }
            )
        return out
