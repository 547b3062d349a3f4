"""The canonical job: OpenAI-style messages plus canonical parameters.

This module is the single definition of what a job may contain. Workers map it to their
provider's names; the broker uses `required_features` to match jobs to providers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol import validate as v
from protocol.errors import ProtocolViolation

ROLES = ("system", "user", "assistant", "tool")
ON_PARTIAL = ("restart", "fail")
MAX_MESSAGES = 10_000
MAX_TEXT = 4 << 20  # 4 MiB of text per message part
MAX_METADATA_KEYS = 64


def _stop(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return [v.need_str(value, name, max_len=512, min_len=1)]
    items = v.need_list(value, name, max_len=16)
    return [v.need_str(s, f"{name}[{i}]", max_len=512, min_len=1) for i, s in enumerate(items)]


def _response_format(value: Any, name: str) -> Any:
    fmt = v.need_map(value, name)
    kind = v.need_enum(fmt.get("type"), f"{name}.type", ("text", "json_object", "json_schema"))
    if kind == "json_schema":
        schema = v.need_map(fmt.get("json_schema"), f"{name}.json_schema")
        v.need_map(schema.get("schema", {}), f"{name}.json_schema.schema")
    return fmt


def _tools(value: Any, name: str) -> Any:
    tools = v.need_list(value, name, max_len=128, min_len=1)
    for i, tool in enumerate(tools):
        where = f"{name}[{i}]"
        tool = v.need_map(tool, where)
        v.need_enum(tool.get("type"), f"{where}.type", ("function",))
        fn = v.need_map(tool.get("function"), f"{where}.function")
        v.need_str(fn.get("name"), f"{where}.function.name", max_len=64, min_len=1)
        if "parameters" in fn:
            v.need_map(fn["parameters"], f"{where}.function.parameters")
    return tools


def _tool_choice(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return v.need_enum(value, name, ("auto", "none", "required"))
    choice = v.need_map(value, name)
    v.need_enum(choice.get("type"), f"{name}.type", ("function",))
    fn = v.need_map(choice.get("function"), f"{name}.function")
    v.need_str(fn.get("name"), f"{name}.function.name", max_len=64, min_len=1)
    return choice


def _int(lo: int, hi: int) -> Callable[[Any, str], Any]:
    return lambda value, name: v.need_int(value, name, lo, hi)


def _float(lo: float, hi: float) -> Callable[[Any, str], Any]:
    return lambda value, name: v.need_float(value, name, lo, hi)


# One checker per canonical parameter. Anything else is rejected, never dropped.
PARAMS: dict[str, Callable[[Any, str], Any]] = {
    "max_tokens": _int(1, 1_000_000),
    "temperature": _float(0.0, 2.0),
    "top_p": _float(0.0, 1.0),
    "top_k": _int(0, 100_000),
    "stop": _stop,
    "seed": _int(-(2**63), 2**63 - 1),
    "presence_penalty": _float(-2.0, 2.0),
    "frequency_penalty": _float(-2.0, 2.0),
    "repeat_penalty": _float(0.0, 10.0),
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": _tool_choice,
}

# Features that are not parameters but still decide which provider can run a job.
FEATURE_VISION = "vision"


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in v.need_map(params, "params").items():
        check = PARAMS.get(name)
        if check is None:
            raise v.fail(f"params.{name}", f"unknown parameter; known: {sorted(PARAMS)}")
        if value is not None:
            out[name] = check(value, f"params.{name}")
    return out


_TEXT_PART_KEYS = frozenset({"type", "text"})
_IMAGE_PART_KEYS = frozenset({"type", "image_url"})
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_call_id", "tool_calls"})


def _content_part(raw: Any, where: str) -> dict[str, Any]:
    part = v.need_map(raw, where)
    kind = v.need_enum(part.get("type"), f"{where}.type", ("text", "image_url"))
    if kind == "text":
        v.no_extra(part, _TEXT_PART_KEYS, where)
        v.need_str(part.get("text"), f"{where}.text", max_len=MAX_TEXT)
    else:
        v.no_extra(part, _IMAGE_PART_KEYS, where)
        image = v.need_map(part.get("image_url"), f"{where}.image_url")
        url = v.need_str(image.get("url"), f"{where}.image_url.url", max_len=32 << 20, min_len=1)
        if not url.startswith(("http://", "https://", "data:image/")):
            raise v.fail(f"{where}.image_url.url", "must be an http(s) URL or a data:image/ URL")
        if "detail" in image:
            v.need_enum(image["detail"], f"{where}.image_url.detail", ("auto", "low", "high"))
    return part


def _message(raw: Any, where: str) -> dict[str, Any]:
    msg = v.need_map(raw, where)
    v.no_extra(msg, _MESSAGE_KEYS, where)
    role = v.need_enum(msg.get("role"), f"{where}.role", ROLES)
    content = msg.get("content")
    if isinstance(content, str):
        v.need_str(content, f"{where}.content", max_len=MAX_TEXT)
    elif content is None and role == "assistant" and msg.get("tool_calls"):
        pass
    else:
        parts = v.need_list(content, f"{where}.content", max_len=256, min_len=1)
        for i, part in enumerate(parts):
            _content_part(part, f"{where}.content[{i}]")
        if role != "user" and any(p.get("type") == "image_url" for p in parts):
            raise v.fail(f"{where}.content", "images are only allowed in user messages")
    if "name" in msg:
        v.need_str(msg["name"], f"{where}.name", max_len=64)
    if role == "tool":
        v.need_str(msg.get("tool_call_id"), f"{where}.tool_call_id", max_len=128, min_len=1)
    if "tool_calls" in msg:
        v.need_list(msg["tool_calls"], f"{where}.tool_calls", max_len=128)
    return msg


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    items = v.need_list(messages, "messages", max_len=MAX_MESSAGES, min_len=1)
    return [_message(m, f"messages[{i}]") for i, m in enumerate(items)]


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class Job:
    """What the caller asked for. Immutable once submitted."""

    id: str
    messages: list[dict[str, Any]]
    model: str | None = None
    route: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = True
    timeout: float | None = None  # seconds from submit; the broker turns it into a deadline
    on_partial: str = "restart"  # what a retry does after tokens reached the caller
    priority: int = 0  # higher is served first within the caller's queue
    max_attempts: int = 4
    metadata: dict[str, Any] = field(default_factory=dict)
    # Let a candidate that does not support a parameter run without it; the result lists
    # what was dropped for which candidate. Off by default: unsupported means rejected.
    drop_unsupported: bool = False

    FIELDS = (
        "id",
        "messages",
        "model",
        "route",
        "params",
        "stream",
        "timeout",
        "on_partial",
        "priority",
        "max_attempts",
        "metadata",
        "drop_unsupported",
    )

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_wire(cls, data: Any) -> Job:
        data = v.need_map(data, "job")
        v.no_extra(data, _JOB_KEYS, "job")
        model = data.get("model")
        route = data.get("route")
        if (model is None) == (route is None):
            raise v.fail("job", "give exactly one of model or route")
        timeout = data.get("timeout")
        metadata = v.need_map(data.get("metadata") or {}, "job.metadata")
        if len(metadata) > MAX_METADATA_KEYS:
            raise v.fail("job.metadata", f"at most {MAX_METADATA_KEYS} keys")
        return cls(
            id=v.need_id(data.get("id"), "job.id"),
            messages=validate_messages(data.get("messages")),
            model=None if model is None else v.need_str(model, "job.model", max_len=256, min_len=1),
            route=None if route is None else v.need_id(route, "job.route"),
            params=validate_params(data.get("params") or {}),
            stream=v.need_bool(data.get("stream", True), "job.stream"),
            timeout=None if timeout is None else v.need_float(timeout, "job.timeout", 0.001, 86400),
            on_partial=v.need_enum(data.get("on_partial", "restart"), "job.on_partial", ON_PARTIAL),
            priority=v.need_int(data.get("priority", 0), "job.priority", -100, 100),
            max_attempts=v.need_int(data.get("max_attempts", 4), "job.max_attempts", 1, 50),
            metadata=metadata,
            drop_unsupported=v.need_bool(
                data.get("drop_unsupported", False), "job.drop_unsupported"
            ),
        )

    def required_features(self) -> set[str]:
        """Parameters and content types a provider must honour to run this job."""
        features = set(self.params)
        for msg in self.messages:
            content = msg.get("content")
            if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
                features.add(FEATURE_VISION)
        return features


_JOB_KEYS = frozenset(Job.FIELDS)
# Job fields a caller passes as keywords next to the canonical parameters.
JOB_OPTIONS = tuple(
    f for f in Job.FIELDS if f not in ("id", "messages", "model", "route", "params")
)


def build_job(
    *,
    model: str | None = None,
    route: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    prompt: str | None = None,
    system: str | None = None,
    job_id: str | None = None,
    **kwargs: Any,
) -> Job:
    """Build and validate a job from a caller's keywords (the clients' `complete`/`stream`):
    job options and canonical parameters share the kwargs."""
    if messages is None:
        if prompt is None:
            raise ProtocolViolation("give messages=[...] or prompt='...'")
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
    options = {k: kwargs.pop(k) for k in JOB_OPTIONS if k in kwargs}
    params = kwargs.pop("params", None) or {}
    params.update(kwargs)  # the rest are canonical parameters; unknown ones are rejected
    wire = {
        "id": job_id or new_job_id(),
        "messages": messages,
        "model": model,
        "route": route,
        "params": params,
        **options,
    }
    if model is None and route is None:
        wire["route"] = "default"
    return Job.from_wire(wire)
