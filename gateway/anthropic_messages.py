"""Anthropic Messages: the request body -> a canonical job, a result -> a message or events."""

from __future__ import annotations

import json
from typing import Any

import orjson

from gateway.errors import ApiError
from gateway.openai_chat import tool_calls
from protocol.results import Result

STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
NEUTRAL = ("service_tier", "stream")
SAME = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "stop_sequences": "stop"}


def _text_of(blocks: Any, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise ApiError.bad_request(f"{where}: must be a string or a list of blocks", where)
    out = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise ApiError.bad_request(f"{where}[{i}]: only text blocks are allowed here", where)
        out.append(str(block.get("text", "")))
    return "".join(out)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = str(source.get("url"))
    else:
        raise ApiError.bad_request(f"{where}.source: base64 or url images only", where)
    return {"type": "image_url", "image_url": {"url": url}}


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise ApiError.bad_request("messages: required, a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise ApiError.bad_request(f"{where}.role: must be user or assistant", where)
        role, content = msg["role"], msg.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise ApiError.bad_request(f"{where}.content: a string or a list of blocks", where)
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "image" and role == "user":
                parts.append(_image(block, at))
            elif kind == "tool_use" and role == "assistant":
                calls.append(
                    {
                        "id": str(block.get("id")),
                        "type": "function",
                        "function": {
                            "name": str(block.get("name")),
                            "arguments": json.dumps(block.get("input") or {}),
                        },
                    }
                )
            elif kind == "tool_result" and role == "user":
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": str(block.get("tool_use_id")),
                        "content": _text_of(block.get("content", ""), f"{at}.content"),
                    }
                )
            else:
                raise ApiError.bad_request(f"{at}.type: {kind!r} is not supported here", at)
        if calls:
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            out.append({"role": "assistant", "content": text or None, "tool_calls": calls})
        elif parts:
            out.append({"role": role, "content": parts})
    return out


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise ApiError.bad_request("tools: must be a list", "tools")
    tools = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            raise ApiError.bad_request(f"tools[{i}]: only client tools are supported", "tools")
        function: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description"):
            function["description"] = tool["description"]
        if "input_schema" in tool:
            function["parameters"] = tool["input_schema"]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any) -> Any:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": raw.get("name")}}
    raise ApiError.bad_request("tool_choice.type: auto, any, tool or none", "tool_choice")


def job_kwargs(body: dict[str, Any], routes: frozenset[str]) -> dict[str, Any]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError.bad_request("model: required", "model")
    if "max_tokens" not in body:
        raise ApiError.bad_request("max_tokens: Field required", "max_tokens")
    messages = _messages(body.get("messages"))
    params: dict[str, Any] = {"max_tokens": body["max_tokens"]}
    for key, value in body.items():
        if key in ("model", "messages", "max_tokens", "system"):
            continue
        if key in SAME:
            params[SAME[key]] = value
        elif key == "tools":
            params["tools"] = _tools(value)
        elif key == "tool_choice":
            params["tool_choice"] = _tool_choice(value)
        elif key == "metadata":
            if not isinstance(value, dict):
                raise ApiError.bad_request("metadata: must be an object", "metadata")
        elif key not in NEUTRAL:
            raise ApiError.bad_request(f"{key}: not supported by llmrelay", key)
    system = body.get("system")
    if system is not None:
        messages.insert(0, {"role": "system", "content": _text_of(system, "system")})
    target = {"route": model} if model in routes else {"model": model}
    extra = {"metadata": body["metadata"]} if body.get("metadata") else {}
    return {**target, "messages": messages, "params": params, **extra}


def _usage(result: Result) -> dict[str, int]:
    return {
        "input_tokens": int(result.usage.get("prompt_tokens") or 0),
        "output_tokens": int(result.usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _tool_blocks(result: Result) -> list[dict[str, Any]]:
    blocks = []
    for call in tool_calls(result):
        try:
            arguments = json.loads(call["function"]["arguments"] or "{}")
        except json.JSONDecodeError:
            arguments = {"_raw": call["function"]["arguments"]}
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["function"]["name"],
                "input": arguments,
            }
        )
    return blocks


def stop_reason(result: Result) -> str:
    return STOP_REASON.get(result.finish_reason or "stop", "end_turn")


def message(result: Result, requested: str) -> dict[str, Any]:
    tools = _tool_blocks(result)
    content: list[dict[str, Any]] = []
    if result.text or not tools:
        content.append({"type": "text", "text": result.text})
    return {
        "id": f"msg_{result.job_id}",
        "type": "message",
        "role": "assistant",
        "model": result.model or requested,
        "content": content + tools,
        "stop_reason": stop_reason(result),
        "stop_sequence": None,
        "usage": _usage(result),
    }


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# A text delta differs from the next only in its text: its bytes around the JSON string.
_DELTA_HEAD, _DELTA_TAIL = event(
    "content_block_delta",
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ""}},
).split(b'"text":""')
_DELTA_HEAD += b'"text":'


class EventWriter:
    """Renders one stream's Messages events: start, text block, tool blocks, delta, stop."""

    def __init__(self, job_id: str, model: str) -> None:
        self.id = f"msg_{job_id}"
        self.model = model
        self.index = 0
        self.text_open = False

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message})

    def text(self, text: str) -> bytes:
        out = b""
        if not self.text_open:
            self.text_open = True
            block = {"type": "text", "text": ""}
            out += event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            )
        return out + _DELTA_HEAD + orjson.dumps(text) + _DELTA_TAIL

    def ending(self, result: Result) -> bytes:
        tools = _tool_blocks(result)
        out = b"" if self.text_open or tools else self.text("")
        index = 0
        if self.text_open:
            out += event("content_block_stop", {"type": "content_block_stop", "index": 0})
            index = 1
        for block in tools:
            start = {**block, "input": {}}
            out += event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            out += event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            out += event("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        usage = _usage(result)
        out += event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(result), "stop_sequence": None},
                "usage": {
                    "output_tokens": usage["output_tokens"],
                    "input_tokens": usage["input_tokens"],
                },
            },
        )
        return out + event("message_stop", {"type": "message_stop"})
