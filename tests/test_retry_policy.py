"""The retry policy alone: every rule that decides a failed attempt's fate."""

from __future__ import annotations

import pytest

from dispatcher.retry import Decision, RetryPolicy, bounded_retry_after
from protocol.errors import ErrorCategory as C


def decide(category: C, **overrides: object) -> Decision:
    args: dict[str, object] = {
        "attempt": 1,
        "max_attempts": 4,
        "voids_delivered_output": False,
        "on_partial": "restart",
        "retry_after": None,
        "tries_here": 1,
    }
    args.update(overrides)
    return RetryPolicy(base_delay=1.0, max_delay=8.0, rand=lambda: 1.0).decide(category, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("category", [C.INVALID_REQUEST, C.CONTENT_FILTER, C.CANCELLED, C.DEADLINE])
def test_final_categories_end_the_job(category: C) -> None:
    assert decide(category).give_up == "not retryable"


@pytest.mark.parametrize(
    "category",
    [C.AUTH, C.PERMISSION, C.QUOTA_EXHAUSTED, C.NOT_FOUND, C.CONTEXT_LENGTH, C.UNSUPPORTED],
)
def test_failover_categories_exclude_the_provider(category: C) -> None:
    assert decide(category) == Decision(exclude=True)


@pytest.mark.parametrize(
    "category", [C.RATE_LIMITED, C.OVERLOADED, C.SERVER_ERROR, C.NETWORK, C.PROTOCOL]
)
def test_retry_categories_back_off(category: C) -> None:
    assert decide(category, tries_here=1) == Decision(delay=1.0)
    assert decide(category, tries_here=3) == Decision(delay=4.0)
    assert decide(category, tries_here=10) == Decision(delay=8.0)  # capped
    assert decide(category, retry_after=2.5) == Decision(delay=2.5)  # the server knows best


def test_worker_lost_is_retried_at_once_within_its_own_bound() -> None:
    # Not the provider's fault: no backoff, and max_attempts does not apply (attempt=4 of 4).
    assert decide(C.WORKER_LOST, attempt=4, tries_here=3, lost=10) == Decision()
    assert decide(C.WORKER_LOST, lost=11).give_up == "worker lost 11 times"
    assert decide(C.WORKER_LOST, voids_delivered_output=True, on_partial="fail").give_up


def test_attempt_budget_and_partial_output_policy() -> None:
    assert decide(C.SERVER_ERROR, attempt=4).give_up == "4 attempts used"
    assert decide(C.NETWORK, voids_delivered_output=True, on_partial="fail").give_up
    assert decide(C.NETWORK, voids_delivered_output=True, on_partial="restart").give_up is None


def test_jitter_stays_within_half_to_full_step() -> None:
    low = RetryPolicy(base_delay=1.0, max_delay=8.0, rand=lambda: 0.0)
    assert low.backoff(2) == 1.0 and RetryPolicy(1.0, 8.0, lambda: 1.0).backoff(2) == 2.0


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, None),
        ("5", None),
        (True, None),
        (-1, None),
        (float("nan"), None),
        (0, 0.0),
        (1.5, 1.5),
        (10_000, 900.0),
    ],
)
def test_retry_after_parsing(value: object, parsed: float | None) -> None:
    assert bounded_retry_after(value) == parsed


def test_unknown_category_is_protocol() -> None:
    assert C.parse("teapot") is C.PROTOCOL and C.parse("auth") is C.AUTH
