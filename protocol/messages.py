"""Wire messages: one definition per message type, msgpack on the wire, every field checked.

The shared machinery (the `Message` base, `decode`, the type registry) is protocol/wire.py;
everything here is re-exported with it, so callers use `protocol.messages` alone.

A message is one ZeroMQ frame holding a msgpack map ``{"v": VERSION, "t": TYPE, ...fields}``.
`Tokens` alone carries a second frame: the raw UTF-8 text, so the broker can relay it without
decoding or copying the text (it only reads the small header frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol import validate as v
from protocol.job import Job, validate_messages

# Re-exported: callers import every wire name from here.
from protocol.wire import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from protocol.wire import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from protocol.wire import REGISTRY as REGISTRY
from protocol.wire import VERSION as VERSION
from protocol.wire import Message as Message
from protocol.wire import decode as decode


def _any_map(value: Any, name: str) -> dict[str, Any]:
    return v.need_map(value, name)


def _str_list(value: Any, name: str) -> list[str]:
    items = v.need_list(value, name, max_len=4096)
    return [v.need_str(s, f"{name}[{i}]", max_len=256) for i, s in enumerate(items)]


def _map_list(value: Any, name: str) -> list[dict[str, Any]]:
    items = v.need_list(value, name, max_len=4096)
    return [v.need_map(m, f"{name}[{i}]") for i, m in enumerate(items)]


def _job(value: Any, name: str) -> Job:
    return Job.from_wire(value)


def _id(value: Any, name: str) -> str:
    return v.need_id(value, name)


def _attempt(value: Any, name: str) -> int:
    return v.need_int(value, name, 0, 10_000)


def _seq(value: Any, name: str) -> int:
    return v.need_int(value, name, 0, 2**62)


def _text(value: Any, name: str) -> str:
    return v.need_str(value, name, max_len=4096)


def _bool(value: Any, name: str) -> bool:
    return v.need_bool(value, name)


def _capacity(value: Any, name: str) -> int:
    return v.need_int(value, name, 1, 100_000)


def _pid(value: Any, name: str) -> int:
    return v.need_int(value, name, 0, 2**31)


# --- client <-> broker ------------------------------------------------------------------


@dataclass(slots=True)
class Submit(Message):
    """Client asks for a job. Resubmitting the same job id is idempotent."""

    TYPE = "submit"
    CHECKS = {
        "job": _job,
        "first_attempt": _attempt,
        "delivered": _seq,
        "client": _id,
        "answering": _bool,
    }
    job: Job
    first_attempt: int = 1  # after a broker restart, attempts continue past those already seen
    delivered: int = 0  # token frames the caller already received
    client: str | None = None  # stable name for fair queueing (survives reconnects)
    answering: bool = False  # send an Answering before each attempt's first token frame


@dataclass(slots=True)
class Answering(Message):
    """Broker -> client, before the first token frame of an attempt, when the Submit asked:
    which provider and model now answer, and the attempts that failed before it.

    Lets a caller that must commit to its answer's metadata at the first token (the HTTP
    gateway's response headers) name the attempt that got through. The caller's side of it
    is the `protocol.results.Origin` event.
    """

    TYPE = "answering"
    CHECKS = {
        "job_id": _id,
        "attempt": _attempt,
        "provider": _id,
        "model": _text,
        "attempts": _map_list,
    }
    job_id: str
    attempt: int
    provider: str
    model: str
    attempts: list[dict[str, Any]] = field(default_factory=list)  # the trail before this one


@dataclass(slots=True)
class Accepted(Message):
    TYPE = "accepted"
    CHECKS = {"job_id": _id, "candidates": _str_list, "skipped": _map_list, "broker": _id}
    job_id: str
    candidates: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    broker: str | None = None  # the broker run's instance id (see Pong)


@dataclass(slots=True)
class Cancel(Message):
    """Client -> broker (attempt omitted) and broker -> worker (attempt given)."""

    TYPE = "cancel"
    CHECKS = {"job_id": _id, "attempt": _attempt}
    job_id: str
    attempt: int = 0


@dataclass(slots=True)
class Tokens(Message):
    """Header of a token frame; the text follows in the next ZeroMQ frame, raw UTF-8."""

    TYPE = "tokens"
    CHECKS = {"job_id": _id, "attempt": _attempt, "seq": _seq}
    job_id: str
    attempt: int
    seq: int


@dataclass(slots=True)
class Restarted(Message):
    """Broker -> client: output already delivered is void, a new attempt starts over.

    The caller's side of it is the `protocol.results.Reset` event.
    """

    TYPE = "reset"
    CHECKS = {"job_id": _id, "attempt": _attempt, "reason": _text}
    job_id: str
    attempt: int
    reason: str


@dataclass(slots=True)
class Completed(Message):
    """Worker -> broker and broker -> client: the attempt (or the job) succeeded.

    `frames` is the count of token frames sent; the caller's side of it is the
    `protocol.results.Done` event.
    """

    TYPE = "done"
    CHECKS = {"job_id": _id, "attempt": _attempt, "frames": _seq, "result": _any_map}
    job_id: str
    attempt: int
    frames: int
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Failed(Message):
    """Worker -> broker (one attempt failed) and broker -> client (the job failed)."""

    TYPE = "failed"
    CHECKS = {"job_id": _id, "attempt": _attempt, "error": _any_map}
    job_id: str
    attempt: int
    error: dict[str, Any]


@dataclass(slots=True)
class StatusQuery(Message):
    TYPE = "status"


@dataclass(slots=True)
class StatusReply(Message):
    TYPE = "status_reply"
    CHECKS = {"status": _any_map}
    status: dict[str, Any]


CATALOG_QUERIES = ("capabilities", "find_providers", "models", "count_tokens")


def _query(value: Any, name: str) -> str:
    return v.need_enum(value, name, CATALOG_QUERIES)


def _any(value: Any, name: str) -> Any:
    return value


@dataclass(slots=True)
class CatalogQuery(Message):
    """Client asks the broker's catalog; `request` pairs the reply with the question."""

    TYPE = "catalog"
    CHECKS = {"request": _id, "query": _query, "args": _any_map}
    request: str
    query: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CatalogReply(Message):
    """`result` on success, else `error` (a ProviderError's wire map)."""

    TYPE = "catalog_reply"
    CHECKS = {"request": _id, "result": _any, "error": _any_map}
    request: str
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class Ping(Message):
    """Heartbeat in every direction; any traffic also counts as one. On a broker's ping to a
    worker, `broker` is the broker run's instance id (see Pong): a worker that sees a new one
    registers again at once."""

    TYPE = "ping"
    CHECKS = {"broker": _id}
    broker: str | None = None


@dataclass(slots=True)
class Pong(Message):
    """Broker -> client: alive. `broker` is this broker run's instance id: a client that sees
    a new one knows its unfinished jobs died with the old run and resubmits them at once."""

    TYPE = "pong"
    CHECKS = {"broker": _id}
    broker: str | None = None


@dataclass(slots=True)
class Error(Message):
    """The broker could not accept what the peer sent (bad frame, unknown job...)."""

    TYPE = "error"
    CHECKS = {"message": _text, "job_id": _id}
    message: str
    job_id: str | None = None


# --- worker <-> broker ------------------------------------------------------------------


def _messages(value: Any, name: str) -> list[dict[str, Any]]:
    return validate_messages(value)


def _count(value: Any, name: str) -> int:
    return v.need_int(value, name, 0, 1 << 40)


@dataclass(slots=True)
class CountTokens(Message):
    """Broker -> worker: count this prompt exactly with the provider's own tokenizer."""

    TYPE = "count_tokens"
    CHECKS = {"request": _id, "model": _text, "messages": _messages}
    request: str
    model: str
    messages: list[dict[str, Any]]


@dataclass(slots=True)
class TokenCount(Message):
    """Worker -> broker: the exact count (`tokens`, by `method`), or why there is none."""

    TYPE = "token_count"
    CHECKS = {"request": _id, "tokens": _count, "method": _text, "error": _text}
    request: str
    tokens: int | None = None
    method: str | None = None
    error: str | None = None


@dataclass(slots=True)
class Ready(Message):
    """Worker registers: what it serves and how many jobs it runs at once."""

    TYPE = "ready"
    CHECKS = {
        "provider": _id,
        "kind": _id,
        "models": _str_list,
        "capacity": _capacity,
        "pid": _pid,
        "features": _str_list,
        "info": _any_map,
    }
    provider: str
    kind: str
    models: list[str]
    capacity: int
    pid: int
    features: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Heartbeat(Message):
    """Worker liveness plus its periodic figures (in-flight jobs, RSS, CPU, counters)."""

    TYPE = "heartbeat"
    CHECKS = {"inflight": _seq, "stats": _any_map}
    inflight: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Dispatch(Message):
    """Broker hands one attempt of a job to a worker, with the provider's model resolved."""

    TYPE = "dispatch"
    CHECKS = {"job": _job, "attempt": _attempt, "model": _text}
    job: Job
    attempt: int
    model: str


@dataclass(slots=True)
class Disconnect(Message):
    """Broker -> worker: register again (the broker does not know you); worker -> broker:
    I am stopping. The broker's carries its instance id (see Ping)."""

    TYPE = "disconnect"
    CHECKS = {"reason": _text, "broker": _id}
    reason: str
    broker: str | None = None


@dataclass(slots=True)
class Rejected(Message):
    """Broker -> worker: your registration is refused for good (e.g. unknown provider).

    Restarting the worker would only repeat it, so the worker exits with CONFIG_ERROR.
    """

    TYPE = "rejected"
    CHECKS = {"reason": _text}
    reason: str


__all__ = [
    "MAX_MESSAGE_BYTES",
    "VERSION",
    "Accepted",
    "Answering",
    "Cancel",
    "Completed",
    "Disconnect",
    "Dispatch",
    "Error",
    "Failed",
    "Heartbeat",
    "Message",
    "Ping",
    "Pong",
    "Ready",
    "Rejected",
    "Restarted",
    "StatusQuery",
    "StatusReply",
    "Submit",
    "Tokens",
    "decode",
]
