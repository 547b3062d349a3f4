"""Broker-side state of one job and of one connected worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dispatcher.routing import Candidate
from protocol.errors import ErrorCategory, ProviderError
from protocol.job import Job
from protocol.result_schema import AttemptEntry


@dataclass(slots=True, eq=False)
class WorkerState:
    identity: bytes
    provider: str
    kind: str
    models: list[str]
    capacity: int
    pid: int
    features: frozenset[str]
    info: dict[str, Any]
    last_seen: float
    jobs: dict[str, JobState] = field(default_factory=dict)  # job id -> job running here
    stats: dict[str, Any] = field(default_factory=dict)
    draining: bool = False
    model_set: frozenset[str] = field(init=False)  # `models` for lookups

    def __post_init__(self) -> None:
        self.model_set = frozenset(self.models)

    @property
    def free(self) -> int:
        return 0 if self.draining else self.capacity - len(self.jobs)

    @property
    def label(self) -> str:
        return self.identity.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One entry of a job's trail: which attempt ran where and how it ended."""

    attempt: int
    provider: str
    model: str
    outcome: str  # "ok", or the error category
    message: str = ""  # a failure's message (at most 500 characters)
    status_code: int | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_wire(self) -> AttemptEntry:
        """The result's / error's `attempts` entry (docs/protocol.md, the result map)."""
        wire: AttemptEntry = {
            "attempt": self.attempt,
            "provider": self.provider,
            "model": self.model,
            "outcome": self.outcome,
        }
        if not self.ok:
            wire["message"] = self.message
            wire["status_code"] = self.status_code
            wire["retry_after"] = self.retry_after
        return wire


@dataclass(slots=True, eq=False)
class JobState:
    job: Job
    client: bytes  # routing id of the client socket that submitted (or resubmitted) it
    owner: bytes  # fair-queue key: the client's name if it gave one, else its routing id
    candidates: list[Candidate]
    skipped: list[dict[str, str]]
    deadline: float
    attempt: int = 0  # number of the latest dispatched attempt
    lost_attempts: int = 0  # attempts lost with their worker process (not the provider's fault)
    trail: list[Attempt] = field(default_factory=list)
    worker: WorkerState | None = None
    candidate: Candidate | None = None
    frames: int = 0  # token frames relayed for the current attempt
    client_has_tokens: bool = False  # the caller holds output that a retry would void
    answering: bool = False  # the caller asked for an Answering before each attempt's text
    excluded: set[str] = field(default_factory=set)  # providers that must not be tried again
    avoid_until: dict[str, float] = field(default_factory=dict)  # provider -> retry time
    last_error: ProviderError | None = None  # the latest attempt's failure
    submitted: float = 0.0  # broker clock when accepted (the core passes `now` in)
    dispatched_at: float = 0.0
    first_token_at: float | None = None
    est_tokens: float = 0.0
    queued: bool = False
    finished: bool = False
    waiting_logged: bool = False
    # what submit decided that the result reports (strategy, dropped, detected)
    notes: dict[str, Any] = field(default_factory=dict)
    strategy: str = "first_healthy"  # the route's strategy (dispatcher.routing.order)

    @property
    def id(self) -> str:
        return self.job.id

    def trail_wire(self) -> list[AttemptEntry]:
        return [attempt.to_wire() for attempt in self.trail]

    def trail_maps(self) -> list[dict[str, Any]]:
        """The trail as ProviderError.attempts holds it."""
        return [{**attempt} for attempt in self.trail_wire()]

    @property
    def last_message(self) -> str:
        return self.last_error.message if self.last_error is not None else ""

    def final_error(self, why: str, message: str | None = None, **fields: Any) -> ProviderError:
        """The error the caller sees when this job ends unfinished: its last failure, and why.

        `message` replaces the last failure's message; `fields` override ProviderError fields.
        """
        last = self.last_error
        text = message or self.last_message or "no candidate available"
        values: dict[str, Any] = {
            "provider": last.provider if last else None,
            "status_code": last.status_code if last else None,
            "retry_after": last.retry_after if last else None,
            "attempts": self.trail_maps(),
            **fields,
        }
        category = last.category if last else ErrorCategory.NO_PROVIDER
        return ProviderError(category, f"{text} ({why})", **values)
