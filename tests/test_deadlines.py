"""The broker's deadline heap: bounded by the live jobs, never expiring the wrong job."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from dispatcher.deadlines import MIN_COMPACT, DeadlineHeap
from protocol import messages as m
from protocol.client import build_job
from tests.core_harness import CoreHarness, stop_result


def test_heap_stays_small_after_100k_finished_jobs() -> None:
    live: dict[str, float] = {}
    heap = DeadlineHeap(live.get)
    for i in range(100_000):
        job = f"job-{i}"
        live[job] = 3600.0 + i  # the default one-hour deadline: none expires during the run
        heap.push(live[job], job)
        if i >= 10:  # ten jobs stay in flight, the rest finish in order
            del live[f"job-{i - 10}"]
            heap.finished()
    assert len(live) == 10
    assert len(heap) <= MIN_COMPACT
    heap.compact()
    assert len(heap) == 10
    assert sorted(heap.expired(10_000_000.0)) == sorted(live)


def test_only_live_jobs_expire_and_a_reused_id_keeps_its_own_deadline() -> None:
    live = {"a": 5.0, "b": 7.0}
    heap = DeadlineHeap(live.get)
    heap.push(5.0, "a")
    heap.push(7.0, "b")
    del live["a"]  # finished
    heap.finished()
    live["a"] = 50.0  # the same id submitted again later, with a later deadline
    heap.push(50.0, "a")
    assert list(heap.expired(10.0)) == ["b"]  # the stale 5.0 entry of "a" is skipped
    del live["b"]
    assert list(heap.expired(60.0)) == ["a"]
    assert len(heap) == 0


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """100k jobs' info lines would cost more than the jobs; warnings still show."""
    old = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.configure(**old)


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("quiet_logs")
def test_broker_deadline_heap_after_100k_finished_jobs() -> None:
    """Through the broker core: finished jobs leave no deadline entries behind (flat memory)."""
    h = CoreHarness({"p": {"kind": "mock", "models": ["m"]}})  # default one-hour deadlines
    worker = h.worker("p", capacity=8)
    core = h.core
    for i in range(100_000):
        job = build_job(model="p:m", prompt="x", job_id=f"job-{i}")
        core.client_message(b"client-1", m.Submit(job=job), h.now)
        core.dispatch_pending(h.now)
        done = m.Completed(job_id=job.id, attempt=1, frames=0, result=stop_result("m"))
        core.worker_message(worker.identity, done, (), h.now)
        core.outbox.take()
    assert core.scheduler.totals["done"] == 100_000
    assert not core.scheduler.jobs
    assert len(core.scheduler.deadlines) <= MIN_COMPACT
