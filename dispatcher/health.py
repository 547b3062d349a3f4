"""Per-provider (and per provider+model) health: counts, latency and a circuit breaker.

Circuit: closed --N consecutive failures--> open --cool-down--> half_open (one probe)
--success--> closed, --failure--> open again with a doubled cool-down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitPolicy:
    failures: int = 5
    cooldown: float = 5.0
    max_cooldown: float = 120.0


@dataclass(slots=True)
class Health:
    key: str
    policy: CircuitPolicy
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    latency_ewma: float | None = None
    circuit: Circuit = Circuit.CLOSED
    open_until: float = 0.0
    cooldown: float = 0.0
    probe_inflight: bool = False
    last_error: str | None = None
    recent: list[bool] = field(default_factory=list)  # last outcomes, newest last

    def allows(self, now: float) -> bool:
        """May a job be sent now? In half-open state only one probe at a time."""
        if self.circuit is Circuit.CLOSED:
            return True
        if self.circuit is Circuit.OPEN and now < self.open_until:
            return False
        return not self.probe_inflight

    def on_dispatch(self, now: float) -> str | None:
        """Returns the new circuit state name when dispatching changes it."""
        if self.circuit is Circuit.OPEN and now >= self.open_until:
            self.circuit = Circuit.HALF_OPEN
            self.probe_inflight = True
            return Circuit.HALF_OPEN.value
        if self.circuit is Circuit.HALF_OPEN:
            self.probe_inflight = True
        return None

    def ready_at(self) -> float:
        return self.open_until if self.circuit is Circuit.OPEN else 0.0

    def _remember(self, ok: bool) -> None:
        self.recent.append(ok)
        if len(self.recent) > 20:
            del self.recent[0]

    def record_success(self, latency: float) -> str | None:
        self.successes += 1
        self.consecutive_failures = 0
        self._remember(True)
        self.latency_ewma = (
            latency if self.latency_ewma is None else 0.8 * self.latency_ewma + 0.2 * latency
        )
        self.probe_inflight = False
        if self.circuit is not Circuit.CLOSED:
            self.circuit = Circuit.CLOSED
            self.cooldown = 0.0
            return Circuit.CLOSED.value
        return None

    def record_failure(self, now: float, error: str, *, hold: float | None = None) -> str | None:
        """Count a failure; `hold` opens the circuit at once for that long (quota, auth...)."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error
        self._remember(False)
        self.probe_inflight = False
        trip = (
            hold is not None
            or self.circuit is Circuit.HALF_OPEN
            or self.consecutive_failures >= self.policy.failures
        )
        if not trip:
            return None
        was_open = self.circuit is Circuit.OPEN
        if hold is not None:
            self.cooldown = max(hold, self.policy.cooldown)
        elif was_open:
            return None  # stragglers dispatched before the trip: the cool-down stands
        else:  # a failed half-open probe doubles the cool-down; a fresh trip starts at base
            doubled = self.cooldown * 2 if self.cooldown else self.policy.cooldown
            self.cooldown = min(doubled, self.policy.max_cooldown)
        self.circuit = Circuit.OPEN
        self.open_until = max(self.open_until, now + self.cooldown)
        return None if was_open else Circuit.OPEN.value

    def release_probe(self) -> None:
        """A probe that ended without a verdict (cancelled) frees the slot."""
        self.probe_inflight = False

    @property
    def state(self) -> str:
        if self.circuit is Circuit.OPEN:
            return "unhealthy"
        if self.circuit is Circuit.HALF_OPEN or self.consecutive_failures:
            return "degraded"
        if self.recent and self.recent.count(False) * 4 > len(self.recent):
            return "degraded"
        return "healthy"

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state,
            "circuit": self.circuit.value,
            "successes": self.successes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "latency_ewma": self.latency_ewma,
            "reopens_in": max(0.0, self.open_until - now) if self.circuit is Circuit.OPEN else 0,
            "last_error": self.last_error,
        }


class HealthBook:
    """Health entries keyed by provider and by provider:model."""

    def __init__(self, policy: CircuitPolicy) -> None:
        self.policy = policy
        self.entries: dict[str, Health] = {}

    def get(self, key: str) -> Health:
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Health(key=key, policy=self.policy)
        return entry

    def pair(self, provider: str, model: str) -> tuple[Health, Health]:
        return self.get(provider), self.get(f"{provider}:{model}")

    def snapshot(self, now: float) -> dict[str, Any]:
        return {key: h.snapshot(now) for key, h in sorted(self.entries.items())}
