# ruff: noqa: E501  (strategy tables read best one per line)
"""Every submit gets exactly one final answer (Done or Failed), whatever happens meanwhile.

A property test on the broker core (tests/core_harness.py, fake clock): Hypothesis plays a
random program of submits (good, to an unknown route, to a route with a bad candidate),
cancels, worker registrations, tokens, done, failures, process exits, silences, clock steps
and injected handler faults (a bug inside the core while handling a message), then lets every
deadline pass. Each job id must have been answered once: never zero times, never twice.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.errors import ErrorCategory
from tests.core_harness import CoreHarness, FakeWorker

SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
PROVIDERS = {"a": {"kind": "mock", "models": ["m"]}, "b": {"kind": "mock", "models": ["m"]}}
CATEGORIES = [ErrorCategory.SERVER_ERROR, ErrorCategory.QUOTA_EXHAUSTED, ErrorCategory.INVALID_REQUEST,
              ErrorCategory.WORKER_LOST, ErrorCategory.RATE_LIMITED]  # fmt: skip

op = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(["a:m", "b:m", "route:chain", "route:bad", "route:nope", "m"])),
    st.tuples(st.just("worker"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("tokens"), st.integers(0, 7)),
    st.tuples(st.just("done"), st.integers(0, 7)),
    st.tuples(st.just("fail"), st.integers(0, 7), st.sampled_from(CATEGORIES)),
    st.tuples(st.just("exit"), st.integers(0, 7)),
    st.tuples(st.just("silence"), st.integers(0, 7)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 2.0, 7.0])),
    st.tuples(st.just("fault"), st.sampled_from(["admit", "done", "failed", "dispatch"])),
)  # fmt: skip


def inject(h: CoreHarness, target: str) -> None:
    """Make the core's next call of one internal step raise, as a bug would."""
    owners: dict[str, Any] = {
        "admit": h.core.scheduler,
        "done": h.core.outcomes,
        "failed": h.core.outcomes,
        "dispatch": h.core.scheduler,
    }
    name = {"dispatch": "_dispatch"}.get(target, target)
    owner = owners[target]
    original = getattr(owner, name)

    def broken(*args: Any, **kwargs: Any) -> Any:
        setattr(owner, name, original)  # once
        raise RuntimeError(f"injected fault in {target}")

    setattr(owner, name, broken)


def running_on(worker: FakeWorker, h: CoreHarness) -> list[str]:
    state = h.core.workers.get(worker.identity)
    return sorted(state.jobs) if state is not None else []


@settings(max_examples=300 * SCALE, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
@given(st.lists(op, min_size=1, max_size=40))
def test_every_submit_gets_exactly_one_final_answer(program: list[tuple[Any, ...]]) -> None:
    h = CoreHarness(
        PROVIDERS, {"chain": ["a:m", "b:m"]}, heartbeat_interval=1.0, heartbeat_liveness=3
    )
    h.config.routes["bad"] = ["a"]  # a Config built in code is not checked like a file
    submitted: list[str] = []
    workers: list[FakeWorker] = []
    for step in program:
        kind = step[0]
        if kind == "submit":
            target = step[1]
            where = {"route": target[6:]} if target.startswith("route:") else {"model": target}
            submitted.append(h.submit(timeout=30, **where))
        elif kind == "worker":
            workers.append(h.worker(step[1], capacity=2))
        elif kind == "cancel" and submitted:
            h.cancel(submitted[step[1] % len(submitted)])
        elif kind == "advance":
            h.advance(step[1])
        elif kind == "fault":
            inject(h, step[1])
        elif workers:
            worker = workers[step[1] % len(workers)]
            jobs = running_on(worker, h)
            if kind == "exit":
                h.exit(worker)
            elif kind == "silence":
                worker.silent = True
            elif jobs:
                job = jobs[0]
                if kind == "tokens":
                    h.tokens(worker, job, "x", "y")
                elif kind == "done":
                    h.done(worker, job)
                elif kind == "fail":
                    h.fail(worker, job, step[2])
    h.advance(40)  # past every deadline: nothing may still be waiting
    for job in submitted:
        finals = [
            item
            for inbox in h.clients.values()
            for item in inbox
            if isinstance(item, m.Completed | m.Failed) and item.job_id == job
        ]
        assert len(finals) == 1, (job, finals)
    assert not h.core.jobs


def test_a_handler_fault_answers_the_job_internal_and_keeps_serving() -> None:
    h = CoreHarness(PROVIDERS)
    w = h.worker("a")
    inject(h, "admit")
    broken = h.submit(model="a:m")
    error = h.error(broken)
    assert error.category is ErrorCategory.INTERNAL
    assert "injected fault in admit" in error.message
    fine = h.submit(model="a:m")
    h.done(w, fine)
    assert isinstance(h.outcome(fine), m.Completed)
    inject(h, "done")
    third = h.submit(model="a:m")
    h.done(w, third)
    assert h.error(third).category is ErrorCategory.INTERNAL


@pytest.mark.parametrize("route", ["bad"])
def test_bad_route_candidate_in_the_core_is_invalid_request(route: str) -> None:
    h = CoreHarness(PROVIDERS)
    h.config.routes[route] = ["a"]
    job = h.submit(route=route)
    error = h.error(job)
    assert error.category is ErrorCategory.INVALID_REQUEST and "bad candidate 'a'" in error.message
