"""What happens after a failed attempt: end the job, retry here after a delay, or fail over.

Pure policy (no sockets, no clock reads) so every rule is unit-tested on its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.errors import FAILURE_CLASSES, Disposition, ErrorCategory

MAX_RETRY_AFTER = 900.0  # a provider asking for longer is treated as down for that long


def bounded_retry_after(value: Any) -> float | None:
    """A retry_after from the wire: a non-negative number, capped; anything else is None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return min(float(value), MAX_RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class Decision:
    give_up: str | None = None  # why the job ends now, or None to try again
    exclude: bool = False  # never this provider again for this job
    delay: float = 0.0  # seconds before this provider may be tried again for this job


@dataclass(slots=True)
class RetryPolicy:
    base_delay: float = 0.25
    max_delay: float = 10.0
    rand: Callable[[], float] = random.random
    max_lost: int = 10  # worker_lost attempts a job may have (BrokerConfig.max_worker_lost)

    def backoff(self, tries: int) -> float:
        """Exponential backoff with jitter in [50%, 100%] of the step."""
        step = min(self.base_delay * 2.0 ** max(0, tries - 1), self.max_delay)
        return step * (0.5 + self.rand() / 2)

    def decide(
        self,
        category: ErrorCategory,
        *,
        attempt: int,
        max_attempts: int,
        voids_delivered_output: bool,
        on_partial: str,
        retry_after: float | None,
        tries_here: int,
        lost: int = 0,
    ) -> Decision:
        """`attempt`: attempts the providers had (lost ones excluded); `lost`: attempts lost
        with their worker process. A kill storm must not fail a job a healthy worker could
        finish, so losses have their own bound and are retried at once."""
        disposition = FAILURE_CLASSES[category].disposition
        if disposition is Disposition.FINAL:
            return Decision(give_up="not retryable")
        if category is ErrorCategory.WORKER_LOST:
            if lost > self.max_lost:
                return Decision(give_up=f"worker lost {lost} times")
        elif attempt >= max_attempts:
            return Decision(give_up=f"{attempt} attempts used")
        if voids_delivered_output and on_partial == "fail":
            return Decision(give_up="tokens already delivered and on_partial=fail")
        if disposition is Disposition.FAILOVER:
            return Decision(exclude=True)
        if category is ErrorCategory.WORKER_LOST:
            return Decision()  # the provider did nothing wrong: no backoff
        delay = retry_after if retry_after is not None else self.backoff(tries_here)
        return Decision(delay=delay)
