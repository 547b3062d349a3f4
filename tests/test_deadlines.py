"""The broker's deadline heap: bounded by the live jobs, never expiring the wrong job."""

from __future__ import annotations

from dispatcher.deadlines import MIN_COMPACT, DeadlineHeap


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
