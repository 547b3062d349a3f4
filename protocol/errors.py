"""The error taxonomy: one category per kind of failure, one exception type for callers."""

from __future__ import annotations

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


DISPOSITION: dict[ErrorCategory, Disposition] = {
    ErrorCategory.AUTH: Disposition.FAILOVER,
    ErrorCategory.PERMISSION: Disposition.FAILOVER,
    ErrorCategory.QUOTA_EXHAUSTED: Disposition.FAILOVER,
    ErrorCategory.RATE_LIMITED: Disposition.RETRY,
    ErrorCategory.OVERLOADED: Disposition.RETRY,
    ErrorCategory.NOT_FOUND: Disposition.FAILOVER,
    ErrorCategory.INVALID_REQUEST: Disposition.FINAL,
    ErrorCategory.CONTEXT_LENGTH: Disposition.FAILOVER,
    ErrorCategory.CONTENT_FILTER: Disposition.FINAL,
    ErrorCategory.SERVER_ERROR: Disposition.RETRY,
    ErrorCategory.NETWORK: Disposition.RETRY,
    ErrorCategory.CANCELLED: Disposition.FINAL,
    ErrorCategory.DEADLINE: Disposition.FINAL,
    ErrorCategory.PROTOCOL: Disposition.RETRY,
    ErrorCategory.UNSUPPORTED: Disposition.FAILOVER,
    ErrorCategory.BROKER_BUSY: Disposition.FINAL,
    ErrorCategory.NO_PROVIDER: Disposition.FINAL,
    ErrorCategory.WORKER_LOST: Disposition.RETRY,
    ErrorCategory.BROKER_UNREACHABLE: Disposition.FINAL,
}

# Failures that say something about the provider's health (they feed the circuit breaker).
# A bad request or a cancel says nothing about the backend, and a lost worker process is the
# supervisor's business (it restarts it), not a verdict on the provider behind it.
HEALTH_FAILURES = frozenset(
    {
        ErrorCategory.RATE_LIMITED,
        ErrorCategory.OVERLOADED,
        ErrorCategory.SERVER_ERROR,
        ErrorCategory.NETWORK,
        ErrorCategory.PROTOCOL,
        ErrorCategory.AUTH,
        ErrorCategory.PERMISSION,
        ErrorCategory.QUOTA_EXHAUSTED,
    }
)


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
