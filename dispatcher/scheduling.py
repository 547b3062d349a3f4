"""The job table and the fair queue: which job runs where next, and how jobs end.

Part of the broker core: no sockets (sends go to the outbox) and no clock (`now` comes in).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from dispatcher.config import Config
from dispatcher.deadlines import DeadlineHeap
from dispatcher.health import HealthBook
from dispatcher.jobs import JobState, WorkerState
from dispatcher.outbox import Outbox
from dispatcher.pacing import Pacer
from dispatcher.queues import FairQueue
from dispatcher.routing import (
    FIRST_HEALTHY,
    Candidate,
    CandidateView,
    Unavailable,
    explain_unavailable,
    order,
)
from dispatcher.worker_book import WorkerBook
from protocol import messages as m
from protocol.errors import ErrorCategory, ProviderError


class Scheduler:
    def __init__(
        self,
        config: Config,
        workers: WorkerBook,
        health: HealthBook,
        pacers: dict[str, Pacer],
        outbox: Outbox,
        log: Any,
    ) -> None:
        self.bc = config.broker
        self.workers = workers
        self.health = health
        self.pacers = pacers
        self.outbox = outbox
        self.log = log
        self.jobs: dict[str, JobState] = {}
        self.queue: FairQueue[JobState] = FairQueue()
        self.deadlines = DeadlineHeap(self._deadline_of)
        # Finished jobs' encoded outcome and frame count, for idempotent resubmission.
        self.finished: OrderedDict[str, tuple[list[bytes], int | None]] = OrderedDict()
        self.totals = {"submitted": 0, "done": 0, "failed": 0, "retries": 0, "frames": 0}
        self.next_wake = math.inf  # when a waiting job's earliest candidate becomes ready
        self.dirty = False  # something changed that may let a queued job go

    # --- admitting and queueing ---------------------------------------------------------

    def _deadline_of(self, job_id: str) -> float | None:
        js = self.jobs.get(job_id)
        return None if js is None else js.deadline

    def admit(self, js: JobState) -> None:
        self.jobs[js.id] = js
        self.totals["submitted"] += 1
        self.deadlines.push(js.deadline, js.id)
        self.enqueue(js)

    def enqueue(self, js: JobState, *, front: bool = False) -> None:
        js.queued = True
        self.queue.push(js.owner, js.job.priority, js, front=front)
        self.dirty = True

    # --- dispatch -----------------------------------------------------------------------

    def dispatch_pending(self, now: float) -> None:
        self.dirty = False
        self.next_wake = math.inf
        if not self.queue:
            return
        for js in self.queue.rounds(lambda js: self._try_dispatch_guarded(js, now)):
            js.queued = False

    def _try_dispatch_guarded(self, js: JobState, now: float) -> bool:
        """`_try_dispatch`, but a bug while placing one job fails that job `internal` (logged
        once with its traceback) instead of escaping the broker loop with it still queued."""
        try:
            return self._try_dispatch(js, now)
        except Exception as exc:
            self.log.exception("dispatch_failed", job=js.id)
            text = f"internal error dispatching the job: {type(exc).__name__}: {str(exc)[:300]}"
            if js.worker is not None:
                self.unassign(js, cancel=True)
            self.fail(js, ProviderError(ErrorCategory.INTERNAL, text))
            return True

    def _view(self, cand: Candidate, now: float) -> CandidateView:
        """What the route's strategy sees of a candidate now."""
        prov, pair = self.health.pair(cand.provider, cand.model)
        states = {prov.state, pair.state}
        state = next(s for s in ("unhealthy", "degraded", "healthy") if s in states)
        return CandidateView(
            has_worker=self.workers.has_workers(cand.provider),
            state=state,
            circuit_allows=prov.allows(now) and pair.allows(now),
            latency=pair.latency_ewma if pair.latency_ewma is not None else prov.latency_ewma,
        )

    def _ready_at(self, js: JobState, cand: Candidate, now: float, *, health: bool) -> float:
        """When `cand` may take `js`: Retry-After holds and pacing always; with `health`,
        also the circuit breakers' cool-downs."""
        ready = js.avoid_until.get(cand.provider, 0.0)
        if health:
            prov, pair = self.health.pair(cand.provider, cand.model)
            ready = max(ready, prov.ready_at(), pair.ready_at())
        pacer = self.pacers.get(cand.provider)
        if pacer is not None:
            ready = max(ready, now + pacer.wait_for(js.est_tokens, now))
        return ready

    def _try_dispatch(self, js: JobState, now: float) -> bool:
        """Dispatch or settle `js` now (True: leave the queue) or leave it waiting (False)."""
        live = [c for c in js.candidates if c.provider not in js.excluded]
        if not live:
            self.fail(js, js.final_error("every candidate failed"))
            return True
        # first_healthy waits out open circuits; the other strategies try them too (last,
        # for best_effort). Holds a provider asked for (Retry-After) and pacing always apply.
        gated = js.strategy == FIRST_HEALTHY
        earliest = math.inf
        ordered = order(js.strategy, live, lambda c: self._view(c, now))
        for cand in ordered:
            ready = self._ready_at(js, cand, now, health=gated)
            if ready > now:
                earliest = min(earliest, ready)
                continue
            best = self.workers.most_free(cand.provider)
            if best is None:
                continue
            if best.free <= 0:
                return False  # busy, not broken: wait for capacity, keep the preference order
            self._dispatch(js, cand, best, now)
            return True
        for cand in live:  # those the strategy left out now (open circuits): when they recover
            if cand not in ordered:
                ready = self._ready_at(js, cand, now, health=True)
                if ready > now:
                    earliest = min(earliest, ready)
        unserved = not any(self.workers.has_workers(c.provider) for c in live)
        if unserved and earliest == math.inf and not js.waiting_logged:
            js.waiting_logged = True  # once per job: it waits for a worker to register
            self.log.warning(
                "job_waiting_for_worker", job=js.id, candidates=[str(c) for c in js.candidates]
            )
        if earliest < math.inf:
            if earliest > js.deadline:
                self.fail(js, self._unavailable(js, live, now))
                return True
            self.next_wake = min(self.next_wake, earliest)
        return False

    def _unavailable(self, js: JobState, live: list[Candidate], now: float) -> ProviderError:
        """No candidate recovers before the deadline: each one, its state, when it recovers;
        retry_after is the time to the earliest recovery."""
        items = []
        for cand in live:
            prov, pair = self.health.pair(cand.provider, cand.model)
            pacer = self.pacers.get(cand.provider)
            waits = [
                ("no worker", None if self.workers.has_workers(cand.provider) else math.inf),
                ("held (retry after)", js.avoid_until.get(cand.provider, 0.0) - now),
                ("circuit open", max(prov.ready_at(), pair.ready_at()) - now),
                ("paced (rpm/tpm)", pacer.wait_for(js.est_tokens, now) if pacer else 0.0),
            ]
            blocking = [(what, wait) for what, wait in waits if wait is not None and wait > 0]
            if not blocking:
                items.append(Unavailable(str(cand), "busy", None))
                continue
            what, wait = max(blocking, key=lambda item: item[1])
            items.append(Unavailable(str(cand), what, None if wait == math.inf else round(wait, 3)))
        message, retry_after = explain_unavailable(items)
        return js.final_error(
            "no candidate recovers before the deadline",
            message,
            retryable=True,  # waiting helps: retry_after says how long
            retry_after=retry_after,
        )

    def _dispatch(self, js: JobState, cand: Candidate, worker: WorkerState, now: float) -> None:
        previous = js.candidate
        js.attempt += 1
        if js.client_has_tokens:
            reason = js.last_message or "attempt restarted"
            reset = m.Restarted(job_id=js.id, attempt=js.attempt, reason=str(reason)[:500])
            self.outbox.to_client(js.client, reset)
            js.client_has_tokens = False
        js.candidate = cand
        js.worker = worker
        js.frames = 0
        js.dispatched_at = now
        worker.jobs[js.id] = js
        for entry in self.health.pair(cand.provider, cand.model):
            if entry.on_dispatch(now):
                self.log.info("circuit_half_open", provider=entry.key, job=js.id)
        pacer = self.pacers.get(cand.provider)
        if pacer is not None:
            pacer.take(js.est_tokens, now)
        if previous is not None and previous.provider != cand.provider:
            self.log.info(
                "failover", job=js.id, attempt=js.attempt, frm=str(previous), to=str(cand)
            )
        dispatch = m.Dispatch(job=js.job, attempt=js.attempt, model=cand.model)
        self.outbox.to_worker(worker.identity, dispatch)
        self.log.debug("job_dispatched", job=js.id, attempt=js.attempt, worker=worker.label)

    def unassign(self, js: JobState, *, cancel: bool) -> None:
        """Take `js` off its worker (telling the worker to stop when `cancel`)."""
        worker = js.worker
        if worker is None:
            return
        worker.jobs.pop(js.id, None)
        js.worker = None
        if js.candidate is not None:
            for entry in self.health.pair(js.candidate.provider, js.candidate.model):
                entry.release_probe()
        if cancel:
            self.outbox.to_worker(worker.identity, m.Cancel(job_id=js.id, attempt=js.attempt))
        self.dirty = True

    # --- ending jobs ----------------------------------------------------------------------

    def abort(self, js: JobState, err: ProviderError) -> None:
        """End a job wherever it is: waiting in a queue or running on a worker."""
        if js.queued:
            self.queue.remove(js.owner, js.job.priority, js)
            js.queued = False
        self.unassign(js, cancel=True)
        self.fail(js, err)

    def expire(self, now: float) -> None:
        """Abort every job whose deadline has passed."""
        for job_id in self.deadlines.expired(now):
            js = self.jobs[job_id]  # expired() yields only live jobs, one at a time
            err = ProviderError(ErrorCategory.DEADLINE, "job deadline passed")
            if js.last_error is not None:
                err.message += f"; last error: {js.last_error.message}"
            self.abort(js, err)

    def finish(self, js: JobState, msg: m.Message, frames: int | None) -> None:
        js.finished = True
        if self.jobs.pop(js.id, None) is not None:
            self.deadlines.finished()
        encoded = [msg.encode()]
        self.finished[js.id] = (encoded, frames)
        while len(self.finished) > self.bc.finished_cache:
            self.finished.popitem(last=False)
        self.outbox.frames_to_client(js.client, encoded)

    def fail(self, js: JobState, err: ProviderError) -> None:
        if js.finished:
            return
        err.attempts = js.trail_maps()
        self.totals["failed"] += 1
        self.log.info(
            "job_failed",
            job=js.id,
            attempt=js.attempt,
            category=err.category.value,
            provider=err.provider,
            message=err.message[:300],
        )
        self.finish(js, m.Failed(job_id=js.id, attempt=js.attempt, error=err.to_wire()), None)
        self.dirty = True
