"""Worker losses are not the provider's fault: their own bound, no backoff, jobs spread out.

On the broker core with a fake clock (tests/core_harness.py).
"""

from __future__ import annotations

from protocol import messages as m
from protocol.errors import ErrorCategory as C
from tests.core_harness import CoreHarness

P = {"p": {"kind": "mock", "models": ["m"]}}


def test_worker_losses_do_not_use_up_max_attempts() -> None:
    h = CoreHarness(P)
    job = h.submit(model="p:m", max_attempts=2)
    for _ in range(5):  # five workers die under it in a row, more than max_attempts
        worker = h.worker("p")
        h.tokens(worker, job, "par", "tial")
        h.exit(worker)
    last = h.worker("p")
    h.tokens(last, job, "whole")
    h.done(last, job)
    done = h.outcome(job)
    assert isinstance(done, m.Completed)
    assert [a["outcome"] for a in done.result["attempts"]] == ["worker_lost"] * 5 + ["ok"]
    assert h.text(job) == "whole"  # each replaced partial was announced with a reset
    assert sum(isinstance(x, m.Restarted) for x in h.received()) == 5


def test_worker_losses_have_their_own_bound() -> None:
    h = CoreHarness(P, max_worker_lost=3)
    job = h.submit(model="p:m")
    for _ in range(4):
        worker = h.worker("p")
        h.exit(worker)
    error = h.error(job)
    assert error.category is C.WORKER_LOST
    assert "worker lost 4 times" in error.message


def test_provider_failures_still_count_after_losses() -> None:
    h = CoreHarness(P, retry_base_delay=0.0)
    job = h.submit(model="p:m", max_attempts=2)
    for _ in range(2):
        h.exit(h.worker("p"))
    worker = h.worker("p", capacity=4)
    h.fail(worker, job, C.SERVER_ERROR)
    h.advance(0.1)
    h.fail(worker, job, C.SERVER_ERROR)
    error = h.error(job)
    assert error.category is C.SERVER_ERROR and "2 attempts used" in error.message


def test_a_lost_workers_jobs_spread_over_workers_with_free_capacity() -> None:
    h = CoreHarness(P)
    doomed = h.worker("p", capacity=4)
    jobs = [h.submit(model="p:m") for _ in range(4)]
    assert all(doomed.attempt_of(j) == 1 for j in jobs)
    left, right = h.worker("p", capacity=4), h.worker("p", capacity=4)
    h.exit(doomed)
    assert len(left.dispatches()) == 2 and len(right.dispatches()) == 2
    assert {d.job.id for d in left.dispatches() + right.dispatches()} == set(jobs)
    assert all(d.attempt == 2 for d in left.dispatches() + right.dispatches())
