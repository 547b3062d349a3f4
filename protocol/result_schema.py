"""The result map's schema as types: what a worker reports on `done`, and what the broker adds.

The wire carries plain msgpack maps. A worker builds a `WorkerResult` and sends its
`to_wire()`; the broker decodes it with `WorkerResult.from_wire` once, where it enters
(dispatcher/core.py), so a malformed field is a protocol violation naming the field and the
core works on checked values. The rate-limit report a worker attaches to a result or an error
(`ratelimit`, normalized by workers/ratelimit.py) is decoded into `RateLimits` the same way.
`BrokerFields` is what the broker adds (mypy checks dispatcher/attempts.py against it);
tests/test_result_schema.py checks docs/protocol.md lists exactly these keys.
"""

# No `from __future__ import annotations`: TypedDict must see real NotRequired[...] objects
# to tell optional keys from required ones at run time (result_keys, the tests).
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from protocol import validate as v

RATE_LIMIT_BUDGETS = ("requests", "tokens", "input_tokens", "output_tokens")
RATE_LIMIT_PARTS = ("limit", "remaining", "reset")
# Every key a rate-limit report may hold: requests_limit, ..., output_tokens_reset.
RATE_LIMIT_KEYS = frozenset(f"{b}_{p}" for b in RATE_LIMIT_BUDGETS for p in RATE_LIMIT_PARTS)
# A rate-limit report on the wire: only the keys the headers gave, numbers only.
RateLimitReport = dict[str, float]


# Each check below takes the common case (a plain value of the right type) without building
# the field's name; only a value that fails goes to protocol.validate, which names the field.
# The broker decodes one of these per finished attempt, so this stays cheap.


def _number(value: Any, where: str, key: str) -> float:
    """A finite number >= 0, returned as sent (an int stays an int on its way to the client)."""
    if type(value) in (int, float) and 0 <= value < math.inf:  # NaN fails the comparison
        number: float = value
        return number
    return v.need_float(value, f"{where}.{key}", 0.0)


def _text(value: Any, where: str, key: str, min_len: int = 0) -> str:
    if type(value) is str and min_len <= len(value) <= MAX_TEXT:
        return value
    return v.need_str(value, f"{where}.{key}", max_len=MAX_TEXT, min_len=min_len)


def _map(value: Any, where: str) -> dict[str, Any]:
    if type(value) is dict and all(type(k) is str for k in value):
        return value
    return v.need_map(value, where)


MAX_TEXT = 256  # finish_reason, model
MAX_USAGE_KEYS = 64


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget a provider's rate-limit headers describe; None where they said nothing."""

    limit: float | None = None  # requests or tokens per window
    remaining: float | None = None
    reset: float | None = None  # seconds until the window resets, from when it was reported


NO_BUDGET = Budget()
# Per budget, in field order: its (limit, remaining, reset) keys.
_BUDGET_KEYS = tuple(tuple(f"{b}_{p}" for p in RATE_LIMIT_PARTS) for b in RATE_LIMIT_BUDGETS)


@dataclass(frozen=True, slots=True)
class RateLimits:
    """A rate-limit report, decoded: one Budget per kind of limit."""

    requests: Budget = NO_BUDGET
    tokens: Budget = NO_BUDGET
    input_tokens: Budget = NO_BUDGET  # Anthropic only
    output_tokens: Budget = NO_BUDGET

    @classmethod
    def from_wire(cls, value: Any, where: str) -> "RateLimits":
        # A plain dict whose keys are all known is a map with string keys: no second check.
        data = value if type(value) is dict else v.need_map(value, where)
        if not RATE_LIMIT_KEYS.issuperset(data):
            v.no_extra(data, RATE_LIMIT_KEYS, where)
        for key, item in data.items():
            _number(item, where, key)
        budgets = [
            Budget(data.get(lk), data.get(rk), data.get(tk))
            if lk in data or rk in data or tk in data
            else NO_BUDGET
            for lk, rk, tk in _BUDGET_KEYS
        ]
        return cls(*budgets)

    def to_wire(self) -> RateLimitReport:
        wire: RateLimitReport = {}
        for budget, keys in zip(
            (self.requests, self.tokens, self.input_tokens, self.output_tokens),
            _BUDGET_KEYS,
            strict=True,
        ):
            if budget is NO_BUDGET:
                continue
            for key, number in zip(
                keys, (budget.limit, budget.remaining, budget.reset), strict=True
            ):
                if number is not None:
                    wire[key] = number
        return wire


def _usage(value: Any, where: str) -> dict[str, float]:
    data = _map(value, where)
    if len(data) > MAX_USAGE_KEYS:
        raise v.fail(where, f"at most {MAX_USAGE_KEYS} keys")
    for key, item in data.items():
        _number(item, where, key)
    return data


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """`done.result` from a worker."""

    finish_reason: str | None  # stop, length, tool_calls, content_filter, ...
    # prompt_tokens, completion_tokens, total_tokens; optional cached_tokens,
    # cache_creation_tokens, cost (workers/http.py `usage`)
    usage: dict[str, float]
    model: str  # the model the provider reported, else the dispatched one
    worker_latency: float  # seconds, measured in the worker
    worker_ttft: float | None
    extra: dict[str, Any] | None = None  # tool_calls, refusal
    ratelimit: RateLimits | None = None  # the response's rate-limit headers

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "model": self.model,
            "worker_latency": self.worker_latency,
            "worker_ttft": self.worker_ttft,
        }
        if self.extra:
            wire["extra"] = self.extra
        if self.ratelimit is not None:
            wire["ratelimit"] = self.ratelimit.to_wire()
        return wire

    @classmethod
    def from_wire(cls, value: Any, where: str = "done.result") -> "WorkerResult":
        """Check every field of a worker's result map; ProtocolViolation names a bad one.

        The map itself is kept as it came (its values are returned as sent), so the broker
        may pass the checked map on instead of encoding it again.
        """
        data = value if type(value) is dict else v.need_map(value, where)
        if not WORKER_RESULT_KEYS.issuperset(data):
            v.no_extra(data, WORKER_RESULT_KEYS, where)
        if not _REQUIRED_SET.issubset(data):
            missing = next(key for key in WORKER_RESULT_REQUIRED if key not in data)
            raise v.fail(f"{where}.{missing}", "missing")
        reason, ttft = data["finish_reason"], data["worker_ttft"]
        extra, limits = data.get("extra"), data.get("ratelimit")
        return cls(
            None if reason is None else _text(reason, where, "finish_reason"),
            _usage(data["usage"], f"{where}.usage"),
            _text(data["model"], where, "model", min_len=1),
            _number(data["worker_latency"], where, "worker_latency"),
            None if ttft is None else _number(ttft, where, "worker_ttft"),
            None if extra is None else v.need_map(extra, f"{where}.extra"),
            None if limits is None else RateLimits.from_wire(limits, f"{where}.ratelimit"),
        )


_FIELDS = dataclasses.fields(WorkerResult)
WORKER_RESULT_KEYS = frozenset(f.name for f in _FIELDS)
# The keys without a default must be present (a None value is still sent).
WORKER_RESULT_REQUIRED = tuple(f.name for f in _FIELDS if f.default is dataclasses.MISSING)
_REQUIRED_SET = frozenset(WORKER_RESULT_REQUIRED)


class AttemptEntry(TypedDict):
    """One attempt of a job (dispatcher.jobs.Attempt on the wire)."""

    attempt: int
    provider: str
    model: str
    outcome: str  # "ok", or the error category
    message: NotRequired[str]  # failures only, at most 500 characters
    status_code: NotRequired[int | None]
    retry_after: NotRequired[float | None]


class BrokerFields(TypedDict):
    """What the broker adds to a worker's result."""

    provider: str
    candidate: str  # provider:model
    attempts: list[AttemptEntry]
    skipped: list[dict[str, str]]  # {candidate, reason} removed at submit
    strategy: str  # the route strategy that ordered the candidates
    dropped: NotRequired[list[dict[str, Any]]]  # {candidate, params} left out
    detected: NotRequired[str]  # how a bare model name was matched to providers
    cost: float | None  # US dollars
    cost_source: str  # reported | priced | unknown
    latency: float  # seconds from submit to done, measured by the broker
    ttft: float | None  # seconds from submit to the first token relayed


def result_keys(schema: type) -> frozenset[str]:
    """Every key a TypedDict schema allows (required or not)."""
    keys: frozenset[str] = schema.__required_keys__ | schema.__optional_keys__  # type: ignore[attr-defined]
    return keys


# `done.result` from the broker: the worker's result plus what the broker knows.
JOB_RESULT_KEYS = WORKER_RESULT_KEYS | result_keys(BrokerFields)
JOB_RESULT_REQUIRED = frozenset(WORKER_RESULT_REQUIRED) | BrokerFields.__required_keys__
