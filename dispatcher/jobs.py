"""Broker-side state of one job and of one connected worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dispatcher.routing import Candidate
from protocol.errors import ErrorCategory, ProviderError
from protocol.job import Job


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


@dataclass(slots=True, eq=False)
class JobState:
    job: Job
    client: bytes  # routing id of the client socket that submitted (or resubmitted) it
    owner: bytes  # fair-queue key: the client's name if it gave one, else its routing id
    candidates: list[Candidate]
    skipped: list[dict[str, str]]
    deadline: float
    attempt: int = 0  # number of the latest dispatched attempt
    trail: list[dict[str, Any]] = field(default_factory=list)
    worker: WorkerState | None = None
    candidate: Candidate | None = None
    frames: int = 0  # token frames relayed for the current attempt
    client_has_tokens: bool = False  # the caller holds output that a retry would void
    excluded: set[str] = field(default_factory=set)  # providers that must not be tried again
    avoid_until: dict[str, float] = field(default_factory=dict)  # provider -> retry time
    last_error: dict[str, Any] | None = None
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

    def final_error(self, why: str) -> ProviderError:
        """The error the caller sees when this job ends unfinished: its last failure, and why."""
        last = self.last_error or {}
        category = last.get("category", ErrorCategory.NO_PROVIDER.value)
        message = str(last.get("message") or "no candidate available")
        return ProviderError(
            category,
            f"{message} ({why})",
            provider=last.get("provider"),
            status_code=last.get("status_code"),
            retry_after=last.get("retry_after"),
            attempts=self.trail,
        )
