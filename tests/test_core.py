"""The broker core in-process on a fake clock: every scheduling rule, each in milliseconds.

The subprocess tests (test_e2e_*) stay as the end-to-end layer; these pin the rules.
"""

from __future__ import annotations

import pytest

from protocol import messages as m
from protocol.errors import ErrorCategory as C
from tests.core_harness import CoreHarness, Relayed

P = {"p": {"kind": "mock", "models": ["m"]}}
AB = {"a": {"kind": "mock", "models": ["m"]}, "b": {"kind": "mock", "models": ["m"]}}
ROUTE = {"chain": ["a:m", "b:m"]}


def test_success_reports_trail_latency_and_ttft() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m")
    assert isinstance(h.received()[0], m.Accepted)
    h.advance(0.5)
    h.tokens(w, job, "he", "llo")
    h.advance(0.5)
    h.done(w, job, usage={"total_tokens": 7})
    done = h.outcome(job)
    assert isinstance(done, m.Completed) and done.frames == 2
    assert h.text(job) == "hello"
    assert done.result["attempts"] == [
        {"attempt": 1, "provider": "p", "model": "m", "outcome": "ok"}
    ]
    assert done.result["ttft"] == pytest.approx(0.5) and done.result["latency"] == pytest.approx(1)
    assert h.processes.healthy == [w.pid]


def test_retry_with_exponential_backoff_on_the_same_provider() -> None:
    h = CoreHarness(P, retry_base_delay=1.0, retry_max_delay=10.0)
    w = h.worker("p")
    job = h.submit(model="p:m", max_attempts=3)
    h.fail(w, job, C.SERVER_ERROR)
    h.advance(0.9)
    assert len(w.dispatches()) == 1  # first backoff step: 1 s
    h.advance(0.1)
    assert w.attempt_of(job) == 2
    h.fail(w, job, C.SERVER_ERROR)
    h.advance(1.9)
    assert len(w.dispatches()) == 2  # second step doubles: 2 s
    h.advance(0.1)
    assert w.attempt_of(job) == 3
    h.fail(w, job, C.SERVER_ERROR)
    err = h.error(job)
    assert err.category is C.SERVER_ERROR and "3 attempts used" in err.message
    assert [a["outcome"] for a in err.attempts] == ["server_error"] * 3


def test_jitter_shortens_the_backoff_step() -> None:
    h = CoreHarness(P, retry_base_delay=1.0, jitter=0.0)  # 50% of the step
    w = h.worker("p")
    job = h.submit(model="p:m")
    h.fail(w, job, C.NETWORK)
    h.advance(0.5)
    assert w.attempt_of(job) == 2


def test_failover_to_the_next_candidate() -> None:
    h = CoreHarness(AB, ROUTE)
    wa, wb = h.worker("a"), h.worker("b")
    job = h.submit(route="chain")
    h.fail(wa, job, C.AUTH)  # never again on a for this job
    assert wb.attempt_of(job) == 2
    h.fail(wb, job, C.SERVER_ERROR)
    h.advance(5)
    assert len(wa.dispatches()) == 1 and wb.attempt_of(job) == 3
    h.done(wb, job)
    done = h.outcome(job)
    assert isinstance(done, m.Completed) and done.result["provider"] == "b"
    assert [(t["provider"], t["outcome"]) for t in done.result["attempts"]] == [
        ("a", "auth"),
        ("b", "server_error"),
        ("b", "ok"),
    ]


def test_answering_names_each_attempt_before_its_first_frame_when_asked() -> None:
    h = CoreHarness(AB, ROUTE)
    wa, wb = h.worker("a"), h.worker("b")
    job = h.submit(route="chain", answering=True)
    h.fail(wa, job, C.AUTH)  # before any text: the caller hears only of the attempt after it
    h.tokens(wb, job, "he", "llo")
    relayed = [x for x in h.received() if isinstance(x, m.Answering | Relayed)]
    first, *frames = relayed
    assert isinstance(first, m.Answering) and len(frames) == 2  # once, before the first frame
    assert (first.attempt, first.provider, first.model) == (2, "b", "m")
    assert [(t["provider"], t["outcome"]) for t in first.attempts] == [("a", "auth")]
    plain = h.submit(model="a:m", client=b"client-2")  # not asked: no extra message
    h.advance(400)  # a's auth hold ends
    h.tokens(wa, plain, "x")
    assert h.text(plain, b"client-2") == "x"
    assert not any(isinstance(x, m.Answering) for x in h.received(b"client-2"))


def test_a_retryable_failure_moves_on_to_a_ready_candidate_at_once() -> None:
    h = CoreHarness(AB, ROUTE, retry_base_delay=5.0)
    wa, wb = h.worker("a"), h.worker("b")
    job = h.submit(route="chain")
    h.fail(wa, job, C.OVERLOADED)
    assert wb.attempt_of(job) == 2  # no waiting out a's backoff


def test_every_candidate_failing_over_ends_the_job() -> None:
    h = CoreHarness(AB, ROUTE)
    wa, wb = h.worker("a"), h.worker("b")
    job = h.submit(route="chain")
    h.fail(wa, job, C.QUOTA_EXHAUSTED)
    h.fail(wb, job, C.PERMISSION)
    err = h.error(job)
    assert err.category is C.PERMISSION and "every candidate failed" in err.message


def test_final_category_is_not_retried() -> None:
    h = CoreHarness(AB, ROUTE)
    wa, wb = h.worker("a"), h.worker("b")
    job = h.submit(route="chain")
    h.fail(wa, job, C.INVALID_REQUEST, status_code=400)
    err = h.error(job)
    assert err.category is C.INVALID_REQUEST and err.status_code == 400
    assert wb.dispatches() == []


def test_retry_after_holds_the_provider_for_that_long() -> None:
    h = CoreHarness(P, retry_base_delay=0.1)
    w = h.worker("p")
    job = h.submit(model="p:m")
    h.fail(w, job, C.RATE_LIMITED, retry_after=5.0)
    other = h.submit(model="p:m")  # the pause holds every job of the provider, not only this
    assert h.status()["providers"]["p"]["paused_for"] == pytest.approx(5.0)
    h.advance(4.9)
    assert [d.job.id for d in w.dispatches()] == [job]
    h.advance(0.1)
    assert w.attempt_of(job) == 2
    h.done(w, job)
    assert w.attempt_of(other) == 1


def test_circuit_opens_then_half_open_probe_then_closes() -> None:
    h = CoreHarness(P, circuit_failures=2, circuit_cooldown=5.0)
    w = h.worker("p", capacity=4)
    for _ in range(2):
        job = h.submit(model="p:m", max_attempts=1)
        h.fail(w, job, C.SERVER_ERROR)
    assert h.status()["health"]["p"]["circuit"] == "open"
    probe = h.submit(model="p:m")
    second = h.submit(model="p:m")
    h.advance(4.9)
    assert len(w.dispatches()) == 2  # open: nothing goes
    h.advance(0.1)
    assert w.attempt_of(probe) == 1  # one probe
    assert h.status()["health"]["p"]["circuit"] == "half_open"
    assert [d.job.id for d in w.dispatches()].count(second) == 0  # waits for the verdict
    h.done(w, probe)
    assert h.status()["health"]["p"]["circuit"] == "closed"
    assert w.attempt_of(second) == 1


def test_failed_probe_reopens_with_a_doubled_cooldown() -> None:
    h = CoreHarness(P, circuit_failures=1, circuit_cooldown=2.0)
    w = h.worker("p")
    h.fail(w, h.submit(model="p:m", max_attempts=1), C.NETWORK)
    probe = h.submit(model="p:m", max_attempts=1)
    h.advance(2.0)
    h.fail(w, probe, C.NETWORK)
    assert h.status()["health"]["p"]["reopens_in"] == pytest.approx(4.0)


def test_a_job_waits_for_recovery_within_its_deadline() -> None:
    h = CoreHarness(P, circuit_failures=1, circuit_cooldown=5.0)
    w = h.worker("p")
    h.fail(w, h.submit(model="p:m", max_attempts=1), C.SERVER_ERROR)
    job = h.submit(model="p:m", timeout=30)
    h.advance(5)
    h.done(w, job)
    assert isinstance(h.outcome(job), m.Completed)


def test_a_job_whose_candidates_cannot_recover_before_its_deadline_fails_at_once() -> None:
    h = CoreHarness(P, circuit_failures=1, circuit_cooldown=60.0)
    w = h.worker("p")
    h.fail(w, h.submit(model="p:m", max_attempts=1), C.SERVER_ERROR)
    job = h.submit(model="p:m", timeout=10)
    err = h.error(job)  # no waiting out the 10 s only to fail then
    assert "no candidate recovers before the deadline" in err.message


def test_deadline_expiry_cancels_the_running_attempt() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m", timeout=3)
    h.advance(2.5)
    assert h.outcome(job) is None
    h.advance(0.5)
    err = h.error(job)
    assert err.category is C.DEADLINE
    assert [(c.job_id, c.attempt) for c in w.cancels()] == [(job, 1)]
    h.done(w, job)  # a late report of the cancelled attempt changes nothing
    assert isinstance(h.outcome(job), m.Failed)


def test_deadline_of_a_queued_job_names_the_last_error() -> None:
    h = CoreHarness(P, retry_base_delay=100.0, retry_max_delay=100.0)
    w = h.worker("p")
    job = h.submit(model="p:m", timeout=200)
    h.fail(w, job, C.OVERLOADED, "busy upstream")
    h.advance(200)
    err = h.error(job)
    assert err.category is C.DEADLINE and "busy upstream" in err.message


def test_cancel_removes_a_queued_job_and_stops_a_running_one() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    running, queued = h.submit(model="p:m"), h.submit(model="p:m")
    h.cancel(queued)
    h.cancel(running)
    assert h.error(running).category is C.CANCELLED and h.error(queued).category is C.CANCELLED
    assert [c.job_id for c in w.cancels()] == [running]
    assert h.status()["queued"] == 0 and h.status()["running"] == 0


def test_resubmit_reattaches_a_running_job_to_the_new_connection() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m", client=b"old")
    h.tokens(w, job, "a", "b")
    h.submit(model="p:m", client=b"new", job_id=job, delivered=2)
    assert isinstance(h.received(b"new")[0], m.Accepted)
    assert len(w.dispatches()) == 1 and w.cancels() == []  # nothing missed: no restart
    h.tokens(w, job, "c")
    h.done(w, job)
    assert h.text(job, b"new") == "c" and isinstance(h.received(b"new")[-1], m.Completed)


def test_resubmit_that_missed_frames_restarts_the_attempt_with_a_reset() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m", client=b"old")
    h.tokens(w, job, "a", "b", "c")
    h.submit(model="p:m", client=b"new", job_id=job, delivered=1)
    assert [(c.job_id, c.attempt) for c in w.cancels()] == [(job, 1)]
    assert w.attempt_of(job) == 2
    kinds = [type(x) for x in h.received(b"new")]
    assert kinds == [m.Accepted, m.Restarted]


def test_resubmit_on_the_same_connection_does_not_restart_frames_in_flight() -> None:
    """A client resubmits twice in a row (after its reconnect, then on hearing the new
    broker's id): the frames relayed since its first resubmit are on their way to it."""
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m", client=b"c")
    h.tokens(w, job, "a", "b")
    h.submit(model="p:m", client=b"c", job_id=job, delivered=0)
    assert w.cancels() == [] and len(w.dispatches()) == 1
    assert not any(isinstance(x, m.Restarted) for x in h.received(b"c"))
    h.submit(model="p:m", client=b"c", job_id=job, delivered=3)  # more than was relayed
    assert [(c.job_id, c.attempt) for c in w.cancels()] == [(job, 1)]


def test_resubmit_of_a_finished_job_replays_the_cached_outcome() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m")
    h.tokens(w, job, "x")
    h.done(w, job)
    first = h.outcome(job)
    h.submit(model="p:m", client=b"again", job_id=job, delivered=1)
    assert h.received(b"again") == [first]
    assert len(w.dispatches()) == 1
    # A resubmission that did not get the frames cannot be served from the cache: a new run.
    h.submit(model="p:m", client=b"fresh", job_id=job, delivered=0, first_attempt=2)
    assert isinstance(h.received(b"fresh")[0], m.Accepted) and w.attempt_of(job) == 2


def test_reset_before_a_retry_that_voids_delivered_text() -> None:
    h = CoreHarness(P, retry_base_delay=0.1)
    w = h.worker("p")
    job = h.submit(model="p:m")
    h.tokens(w, job, "partial ")
    h.fail(w, job, C.NETWORK, "connection dropped")
    h.advance(0.1)
    reset = [x for x in h.received() if isinstance(x, m.Restarted)]
    assert [(r.attempt, r.reason) for r in reset] == [(2, "connection dropped")]
    h.tokens(w, job, "whole")
    h.done(w, job)
    assert h.text(job) == "whole"


def test_on_partial_fail_ends_the_job_instead_of_restarting() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m", on_partial="fail")
    h.tokens(w, job, "partial")
    h.fail(w, job, C.NETWORK)
    assert "tokens already delivered" in h.error(job).message
    assert len(w.dispatches()) == 1


def test_worker_lost_mid_stream_by_heartbeat_moves_the_job() -> None:
    h = CoreHarness(P)
    w1 = h.worker("p")
    job = h.submit(model="p:m")
    h.tokens(w1, job, "half")
    w2 = h.worker("p")
    w1.silent = True
    h.advance(3.5)  # heartbeat_interval 1 s x liveness 3
    assert h.processes.killed == [w1.pid]
    assert isinstance(w1.inbox[-1], m.Disconnect)
    h.advance(0.25)  # worker_lost retries after the first backoff step
    assert w2.attempt_of(job) == 2
    assert any(isinstance(x, m.Restarted) for x in h.received())
    h.done(w2, job)
    done = h.outcome(job)
    assert isinstance(done, m.Completed)
    assert [t["outcome"] for t in done.result["attempts"]] == ["worker_lost", "ok"]


def test_worker_process_exit_moves_the_job_without_waiting_for_heartbeats() -> None:
    h = CoreHarness(P)
    w1, w2 = h.worker("p"), h.worker("p")
    job = h.submit(model="p:m")
    first = w1 if w1.dispatches() else w2
    other = w2 if first is w1 else w1
    h.exit(first)
    h.advance(0.25)
    assert other.attempt_of(job) == 2 and h.processes.killed == []
    h.tokens(first, job, "stale")  # a frame from the dead worker is not relayed
    assert h.text(job) == ""


def test_an_unknown_worker_is_told_to_register_again() -> None:
    h = CoreHarness(P)
    h.core.worker_message(b"stranger", m.Heartbeat(), (), h.now)
    h.pump()
    [(identity, reply)] = h.strays
    assert identity == b"stranger" and isinstance(reply, m.Disconnect)
    assert "register again" in reply.reason


def test_fairness_between_client_names_across_connections() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    # One name over three connections shares one fair share; the other name is not starved.
    batch = [h.submit(model="p:m", client=f"conn{i % 3}".encode(), name="batch") for i in range(9)]
    ui = [h.submit(model="p:m", client=b"ui", name="interactive") for _ in range(2)]
    assert h.status()["queues"] == {"n:batch": 8, "n:interactive": 2}
    for _ in range(5):
        h.done(w, w.dispatches()[-1].job.id)
    order = [d.job.id for d in w.dispatches()]
    assert order == [batch[0], batch[1], ui[0], batch[2], ui[1], batch[3]]


def test_priority_orders_jobs_within_one_client() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    first = h.submit(model="p:m")
    low = h.submit(model="p:m")
    high = h.submit(model="p:m", priority=5)
    h.done(w, first)
    h.done(w, high)
    assert [d.job.id for d in w.dispatches()] == [first, high, low]


def test_rpm_paces_dispatches() -> None:
    h = CoreHarness({"p": {"kind": "mock", "models": ["m"], "rpm": 60}})
    w = h.worker("p", capacity=100)
    jobs = [h.submit(model="p:m") for _ in range(10)]
    assert len(w.dispatches()) == 6  # a starting burst of a tenth of a minute
    h.advance(1.0)
    assert len(w.dispatches()) == 7  # then one a second
    h.advance(3.0)
    assert [d.job.id for d in w.dispatches()] == jobs


def test_tpm_paces_by_estimated_tokens_and_learns_actual_usage() -> None:
    h = CoreHarness({"p": {"kind": "mock", "models": ["m"], "tpm": 6000}})
    w = h.worker("p", capacity=100)
    a = h.submit(model="p:m", max_tokens=500)  # estimate ~500; the bucket starts at 600
    b = h.submit(model="p:m", max_tokens=500)
    assert [d.job.id for d in w.dispatches()] == [a]
    h.done(w, a, usage={"total_tokens": 10})  # far less than estimated: refunded at once
    assert [d.job.id for d in w.dispatches()] == [a, b]


def test_full_queue_rejects_with_broker_busy() -> None:
    h = CoreHarness(P, max_queued=3, max_queued_per_client=2)
    jobs = [h.submit(model="p:m") for _ in range(3)]  # no worker: they wait
    assert h.outcome(jobs[0]) is None and h.outcome(jobs[1]) is None
    assert h.error(jobs[2]).category is C.BROKER_BUSY  # per-client limit
    h.submit(model="p:m", client=b"other")
    assert h.error(h.submit(model="p:m", client=b"third")).category is C.BROKER_BUSY


def test_unknown_model_and_unsupported_parameter_are_rejected_at_submit() -> None:
    h = CoreHarness(P)
    assert h.error(h.submit(model="nope")).category is C.NOT_FOUND
    h.worker("p", features=["max_tokens"])
    assert h.error(h.submit(model="p:m", temperature=0.5)).category is C.UNSUPPORTED


def test_bare_model_name_resolves_by_a_worker_live_list() -> None:
    h = CoreHarness(P)
    w = h.worker("p", models=["m", "live-only"])
    job = h.submit(model="live-only")
    assert w.dispatches()[0].model == "live-only" and w.attempt_of(job) == 1


def test_draining_worker_gets_no_new_jobs() -> None:
    h = CoreHarness(P)
    w1 = h.worker("p")
    h.core.worker_message(w1.identity, m.Disconnect(reason="bye"), (), h.now)
    w2 = h.worker("p")
    job = h.submit(model="p:m")
    assert w1.dispatches() == [] and w2.attempt_of(job) == 1


def test_bad_message_gets_a_protocol_error_reply() -> None:
    h = CoreHarness(P)
    h.core.bad_message("client", b"c", "job.model: must be a string", h.now)
    h.pump()
    reply = h.received(b"c")[-1]
    assert isinstance(reply, m.Error) and "job.model" in reply.message


def test_tokens_are_relayed_as_the_frames_received() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m")
    h.tokens(w, job, "héllo")
    relayed = [x for x in h.received() if isinstance(x, Relayed)]
    assert [(r.header.seq, r.text) for r in relayed] == [(0, "héllo")]


def test_a_worker_error_is_decoded_once_with_bad_fields_dropped() -> None:
    h = CoreHarness(P, retry_base_delay=0.5)
    w = h.worker("p")
    job = h.submit(model="p:m")
    wire = {
        "category": "from-the-future",
        "message": "m",
        "retry_after": "soon",
        "status_code": "x",
    }
    h.core.worker_message(w.identity, m.Failed(job_id=job, attempt=1, error=wire), (), h.now)
    h.pump()
    h.advance(0.5)  # an unknown category reads as protocol (retry); the bad retry_after is ignored
    assert w.attempt_of(job) == 2
    h.done(w, job)
    done = h.outcome(job)
    assert isinstance(done, m.Completed)
    assert done.result["attempts"][0] == {
        "attempt": 1,
        "provider": "p",
        "model": "m",
        "outcome": "protocol",
        "message": "m",
        "status_code": None,
        "retry_after": None,
    }


def test_a_huge_retry_after_is_capped() -> None:
    h = CoreHarness(AB, ROUTE)
    wa, _ = h.worker("a"), h.worker("b")
    job = h.submit(route="chain", max_attempts=1)
    h.fail(wa, job, C.RATE_LIMITED, retry_after=10**9)
    assert h.error(job).retry_after == 900.0  # dispatcher.retry.MAX_RETRY_AFTER
