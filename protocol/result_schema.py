"""The result map's schema as types: what a worker reports on `done`, and what the broker adds.

The wire carries plain msgpack maps; these TypedDicts are the one definition mypy checks the
producers against (workers/runtime.py builds a WorkerResult, dispatcher/attempts.py the
BrokerFields it adds), and tests/test_result_schema.py checks docs/protocol.md lists
exactly these keys.
"""

# No `from __future__ import annotations`: TypedDict must see real NotRequired[...] objects
# to tell optional keys from required ones at run time (result_keys, the tests).
from typing import Any, NotRequired, TypedDict

# A provider's rate-limit headers, normalized by workers/ratelimit.py: requests_remaining,
# tokens_reset (seconds), input_tokens_limit, ... Numbers only.
RateLimitReport = dict[str, float]


class AttemptEntry(TypedDict):
    """One attempt of a job (dispatcher.jobs.Attempt on the wire)."""

    attempt: int
    provider: str
    model: str
    outcome: str  # "ok", or the error category
    message: NotRequired[str]  # failures only, at most 500 characters
    status_code: NotRequired[int | None]
    retry_after: NotRequired[float | None]


class WorkerResult(TypedDict):
    """`done.result` from a worker."""

    finish_reason: str | None  # stop, length, tool_calls, content_filter, ...
    usage: dict[str, Any]  # prompt_tokens, completion_tokens, total_tokens, optional cost
    model: str  # the model the provider reported, else the dispatched one
    worker_latency: float  # seconds, measured in the worker
    worker_ttft: float | None
    extra: NotRequired[dict[str, Any]]  # tool_calls, refusal
    ratelimit: NotRequired[RateLimitReport]


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


class JobResult(WorkerResult, BrokerFields):
    """`done.result` from the broker: the worker's result plus what the broker knows."""


def result_keys(schema: type) -> frozenset[str]:
    """Every key a TypedDict schema allows (required or not)."""
    keys: frozenset[str] = schema.__required_keys__ | schema.__optional_keys__  # type: ignore[attr-defined]
    return keys
