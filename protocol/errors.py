"""The error taxonomy: one category per kind of failure, one exception type for callers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ErrorCategory(StrEnum):
    AUTH = "auth"
    PERMISSION = "permission"
    QUOTA_EXHAUSTED = "quota_exhausted"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    NOT_FOUND = "not_found"
    INVALID_REQUEST = "invalid_request"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    SERVER_ERROR = "server_error"
    NETWORK = "network"
    CANCELLED = "cancelled"
    DEADLINE = "deadline"
    PROTOCOL = "protocol"
    UNSUPPORTED = "unsupported"
    BROKER_BUSY = "broker_busy"
    NO_PROVIDER = "no_provider"
    WORKER_LOST = "worker_lost"
    BROKER_UNREACHABLE = "broker_unreachable"  # client side: no broker answered in time
    INTERNAL = "internal"  # the broker failed while handling this job's message (a bug)

    @classmethod
    def parse(cls, value: object) -> ErrorCategory:
        """A category from the wire; one this version does not know counts as protocol."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.PROTOCOL


class Disposition(StrEnum):
    """What the broker may do after a failure of this category."""

    RETRY = "retry"  # retry on the same provider after a delay, or fail over
    FAILOVER = "failover"  # never again on this provider; the next candidate may succeed
    FINAL = "final"  # no other attempt can succeed


class HealthScope(StrEnum):
    """Which circuit breakers a failure of this category counts on."""

    PROVIDER = "provider"  # the provider's entry and its provider:model entry
    MODEL = "model"  # the provider:model entry alone (the model is missing, not the provider)
    NONE = "none"  # says nothing about the backend; only frees a half-open probe slot


class Retrier(StrEnum):
    """Who tries again after a failure of this category."""

    BROKER = "broker"  # the broker: here after a delay, or on the next candidate
    CLIENT = "client"  # the caller, later (AsyncClient.map waits and resubmits broker_busy)
    NOBODY = "nobody"


@dataclass(frozen=True, slots=True)
class FailureClass:
    """Everything the system does about one error category, in one row."""

    disposition: Disposition
    health: HealthScope
    retried_by: Retrier
    hold: float | None = None  # seconds both circuits open at once (the provider refuses all)
    pauses_provider: bool = False  # stop dispatching to the provider for retry_after (or 1 s)


_D, _H, _R = Disposition, HealthScope, Retrier
# A bad request or a cancel says nothing about the backend, and a lost worker process is the
# supervisor's business (it restarts it), not a verdict on the provider behind it.
# context_length is about the caller's prompt, so it feeds no circuit at all.
FAILURE_CLASSES: dict[ErrorCategory, FailureClass] = {
    ErrorCategory.AUTH: FailureClass(_D.FAILOVER, _H.PROVIDER, _R.BROKER, hold=300.0),
    ErrorCategory.PERMISSION: FailureClass(_D.FAILOVER, _H.PROVIDER, _R.BROKER, hold=300.0),
    ErrorCategory.QUOTA_EXHAUSTED: FailureClass(_D.FAILOVER, _H.PROVIDER, _R.BROKER, hold=600.0),
    ErrorCategory.RATE_LIMITED: FailureClass(
        _D.RETRY, _H.PROVIDER, _R.BROKER, pauses_provider=True
    ),
    ErrorCategory.OVERLOADED: FailureClass(_D.RETRY, _H.PROVIDER, _R.BROKER),
    ErrorCategory.NOT_FOUND: FailureClass(_D.FAILOVER, _H.MODEL, _R.BROKER),
    ErrorCategory.INVALID_REQUEST: FailureClass(_D.FINAL, _H.NONE, _R.NOBODY),
    ErrorCategory.CONTEXT_LENGTH: FailureClass(_D.FAILOVER, _H.NONE, _R.BROKER),
    ErrorCategory.CONTENT_FILTER: FailureClass(_D.FINAL, _H.NONE, _R.NOBODY),
    ErrorCategory.SERVER_ERROR: FailureClass(_D.RETRY, _H.PROVIDER, _R.BROKER),
    ErrorCategory.NETWORK: FailureClass(_D.RETRY, _H.PROVIDER, _R.BROKER),
    ErrorCategory.CANCELLED: FailureClass(_D.FINAL, _H.NONE, _R.NOBODY),
    ErrorCategory.DEADLINE: FailureClass(_D.FINAL, _H.NONE, _R.NOBODY),
    ErrorCategory.PROTOCOL: FailureClass(_D.RETRY, _H.PROVIDER, _R.BROKER),
    ErrorCategory.UNSUPPORTED: FailureClass(_D.FAILOVER, _H.NONE, _R.BROKER),
    ErrorCategory.BROKER_BUSY: FailureClass(_D.FINAL, _H.NONE, _R.CLIENT),
    ErrorCategory.NO_PROVIDER: FailureClass(_D.FINAL, _H.NONE, _R.NOBODY),
    ErrorCategory.WORKER_LOST: FailureClass(_D.RETRY, _H.NONE, _R.BROKER),
    ErrorCategory.BROKER_UNREACHABLE: FailureClass(_D.FINAL, _H.NONE, _R.NOBODY),
    ErrorCategory.INTERNAL: FailureClass(_D.FINAL, _H.NONE, _R.NOBODY),
}
# The disposition column alone (what workers report as `retryable`).
DISPOSITION: dict[ErrorCategory, Disposition] = {
    category: row.disposition for category, row in FAILURE_CLASSES.items()
}


def is_retryable(category: ErrorCategory) -> bool:
    """True when a later attempt (here or on another provider) may succeed."""
    return DISPOSITION[category] is not Disposition.FINAL


class ProviderError(RuntimeError):
    """Every failure a caller can see: one type, told apart by ``category``."""

    def __init__(
        self,
        category: ErrorCategory | str,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        attempts: list[dict[str, Any]] | None = None,
        job_id: str | None = None,
        ratelimit: dict[str, float] | None = None,
    ) -> None:
        self.category = ErrorCategory(category)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.retryable = is_retryable(self.category) if retryable is None else retryable
        self.retry_after = retry_after
        self.attempts = attempts or []
        self.job_id = job_id
        # The failed response's rate-limit headers, normalized (workers/ratelimit.py).
        self.ratelimit = ratelimit
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" from {self.provider}" if self.provider else ""
        code = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"{self.category.value}{where}{code}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "category": self.category.value,
            "message": self.message,
            "provider": self.provider,
            "status_code": self.status_code,
            "retryable": self.retryable,
            "retry_after": self.retry_after,
            "attempts": self.attempts,
        }
        if self.ratelimit:  # only when the response had rate-limit headers
            wire["ratelimit"] = self.ratelimit
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any], job_id: str | None = None) -> ProviderError:
        limits = data.get("ratelimit")
        return cls(
            ErrorCategory.parse(data.get("category")),
            str(data.get("message", "")),
            provider=data.get("provider"),
            status_code=data.get("status_code"),
            retryable=data.get("retryable"),
            retry_after=data.get("retry_after"),
            attempts=data.get("attempts") or [],
            job_id=job_id,
            ratelimit=limits if isinstance(limits, dict) else None,
        )


class ProtocolViolation(ValueError):
    """An incoming message failed validation; the text names the offending field."""
