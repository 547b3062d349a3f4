"""What a caller gets back: the final Result and the events of a stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Result:
    job_id: str
    text: str
    provider: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # one entry per attempt
    skipped: list[dict[str, Any]] = field(default_factory=list)  # candidates removed, and why
    latency: float | None = None  # seconds from submit to done, measured by the broker
    ttft: float | None = None  # seconds from submit to the first token
    resets: int = 0  # times delivered output was voided by a retry
    cost: float | None = None  # US dollars; see cost_source
    cost_source: str = "unknown"  # reported (by the provider) | priced (catalog) | unknown
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {candidate, params} dropped
    detected: str | None = None  # how a bare model name was matched to providers
    raw: dict[str, Any] = field(default_factory=dict)  # the broker's full result map

    @classmethod
    def from_done(cls, job_id: str, text: str, result: dict[str, Any], resets: int) -> Result:
        return cls(
            job_id=job_id,
            text=text,
            provider=result.get("provider"),
            model=result.get("model"),
            finish_reason=result.get("finish_reason"),
            usage=result.get("usage") or {},
            attempts=result.get("attempts") or [],
            skipped=result.get("skipped") or [],
            latency=result.get("latency"),
            ttft=result.get("ttft"),
            resets=resets,
            cost=result.get("cost"),
            cost_source=result.get("cost_source") or "unknown",
            dropped=result.get("dropped") or [],
            detected=result.get("detected"),
            raw=result,
        )


@dataclass(slots=True)
class Token:
    """Text of the current attempt, in order, each piece delivered once."""

    text: str


@dataclass(slots=True)
class Reset:
    """Text delivered so far is void: a new attempt starts from scratch."""

    reason: str
    attempt: int


@dataclass(slots=True)
class Done:
    result: Result


@dataclass(slots=True)
class Origin:
    """Who answers: the attempt whose text follows (only for `submit_job(answering=True)`).

    `attempts` is the trail of the attempts that failed before this one."""

    provider: str
    model: str
    attempt: int
    attempts: list[dict[str, Any]] = field(default_factory=list)


Event = Token | Reset | Done | Origin
