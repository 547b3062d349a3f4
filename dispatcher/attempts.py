"""What the end of an attempt does: success settles the job, failure retries, fails over or ends it.

Each outcome also feeds the circuit breakers and the pacers with what it says about the
provider. Part of the broker core: no sockets, no clock (`now` comes in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dispatcher.health import HealthBook
from dispatcher.jobs import Attempt, JobState, WorkerState
from dispatcher.pacing import Pacer
from dispatcher.retry import RetryPolicy, bounded_retry_after
from dispatcher.routing import Candidate
from dispatcher.scheduling import Scheduler
from dispatcher.worker_book import WorkerBook
from protocol import messages as m
from protocol.errors import (
    FAILURE_CLASSES,
    ErrorCategory,
    HealthScope,
    ProtocolViolation,
    ProviderError,
)
from protocol.result_schema import BrokerFields, RateLimits, WorkerResult


class AttemptOutcomes:
    def __init__(
        self,
        scheduler: Scheduler,
        workers: WorkerBook,
        health: HealthBook,
        pacers: dict[str, Pacer],
        retry_policy: RetryPolicy,
        log: Any,
        pricing: Callable[[Candidate, Any], dict[str, Any]],
    ) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self.health = health
        self.pacers = pacers
        self.retry_policy = retry_policy
        self.log = log
        self.pricing = pricing  # candidate, usage -> {cost, cost_source} (the catalog)

    def _current(self, worker: WorkerState, job_id: str, attempt: int) -> JobState | None:
        """The job this report is about, if it is still this worker's current attempt."""
        js = worker.jobs.get(job_id)
        if js is None or js.attempt != attempt:
            return None  # a report of an attempt that was already abandoned
        del worker.jobs[js.id]
        js.worker = None
        self.scheduler.dirty = True
        return js

    # --- success --------------------------------------------------------------------------

    def done(self, worker: WorkerState, msg: m.Completed, report: WorkerResult, now: float) -> None:
        """`report`: the worker's `done.result`, decoded once at the edge (core)."""
        js = self._current(worker, msg.job_id, msg.attempt)
        if js is None:
            return
        assert js.candidate is not None
        latency = now - js.dispatched_at
        for entry in self.health.pair(js.candidate.provider, js.candidate.model):
            if entry.record_success(latency):
                self.log.info("circuit_closed", provider=entry.key)
        self._learn_usage(js, report.usage)
        self._learn_limits(js.candidate.provider, report.ratelimit, now)
        js.trail.append(Attempt(js.attempt, js.candidate.provider, js.candidate.model, "ok"))
        priced = self.pricing(js.candidate, report.usage)
        added: BrokerFields = {
            "provider": js.candidate.provider,
            "candidate": str(js.candidate),
            "attempts": js.trail_wire(),
            "skipped": js.skipped,
            "strategy": js.notes.get("strategy", js.strategy),
            "cost": priced.get("cost"),
            "cost_source": priced.get("cost_source", "unknown"),
            "latency": now - js.submitted,
            "ttft": None if js.first_token_at is None else js.first_token_at - js.submitted,
        }
        if "dropped" in js.notes:
            added["dropped"] = js.notes["dropped"]
        if "detected" in js.notes:
            added["detected"] = js.notes["detected"]
        # The worker's map as it came: `report` was decoded from it, every key and value checked.
        result: dict[str, Any] = {**msg.result, **added}
        done = m.Completed(job_id=js.id, attempt=js.attempt, frames=msg.frames, result=result)
        self.scheduler.finish(js, done, msg.frames)
        self.scheduler.totals["done"] += 1
        self.log.info(
            "job_done",
            job=js.id,
            attempt=js.attempt,
            provider=js.candidate.provider,
            model=js.candidate.model,
            frames=msg.frames,
            latency=round(now - js.submitted, 4),
        )

    def _learn_usage(self, js: JobState, usage: dict[str, float]) -> None:
        """Charge the tokens actually used to the provider's tokens-per-minute budget."""
        assert js.candidate is not None
        pacer = self.pacers.get(js.candidate.provider)
        total = usage.get("total_tokens")
        if pacer is not None and total is not None:
            pacer.settle(js.est_tokens, float(total))

    def _learn_limits(self, provider: str, limits: RateLimits | None, now: float) -> None:
        """Learn from the rate-limit headers a worker reported (absent for most providers)."""
        pacer = self.pacers.get(provider)
        if pacer is None or limits is None:
            return
        inflight, inflight_tokens = self.workers.inflight(provider)
        if pacer.learn(limits, now, inflight=inflight, inflight_tokens=inflight_tokens):
            self.log.info("rate_limit_learned", provider=provider, **pacer.learned())

    # --- failure --------------------------------------------------------------------------

    def failed(
        self,
        worker: WorkerState,
        msg: m.Failed | m.Completed,
        error: ProviderError,
        limits: RateLimits | None,
        now: float,
    ) -> None:
        """`error` and `limits`: the worker's report, decoded once at the edge (worker_error,
        or a malformed `done` as a protocol error)."""
        js = self._current(worker, msg.job_id, msg.attempt)
        if js is not None:
            self.attempt_failed(js, error, now, limits)

    def attempt_failed(
        self, js: JobState, error: ProviderError, now: float, limits: RateLimits | None = None
    ) -> None:
        assert js.candidate is not None
        provider, model = js.candidate.provider, js.candidate.model
        error.provider = provider  # what the broker dispatched to, whatever the worker said
        category, retry_after = error.category, error.retry_after
        js.trail.append(
            Attempt(
                js.attempt,
                provider,
                model,
                category.value,
                message=error.message[:500],
                status_code=error.status_code,
                retry_after=retry_after,
            )
        )
        js.last_error = error
        self._learn_limits(provider, limits, now)
        self._record_failure(provider, model, category, retry_after, now)
        if js.finished:
            return
        if category is ErrorCategory.WORKER_LOST:
            js.lost_attempts += 1
        decision = self.retry_policy.decide(
            category,
            attempt=js.attempt - js.lost_attempts,
            lost=js.lost_attempts,
            max_attempts=js.job.max_attempts,
            voids_delivered_output=js.client_has_tokens,
            on_partial=js.job.on_partial,
            retry_after=retry_after,
            tries_here=sum(1 for t in js.trail if t.provider == provider),
        )
        if decision.give_up is not None:
            self.scheduler.fail(js, js.final_error(decision.give_up))
            return
        if decision.exclude:
            js.excluded.add(provider)
        else:
            js.avoid_until[provider] = now + decision.delay
        self.scheduler.totals["retries"] += 1
        self.log.info(
            "retry_scheduled",
            job=js.id,
            attempt=js.attempt,
            category=category.value,
            provider=provider,
            delay=round(decision.delay, 3),
            excluded=sorted(js.excluded),
        )
        self.scheduler.enqueue(js, front=True)

    def _record_failure(
        self,
        provider: str,
        model: str,
        category: ErrorCategory,
        retry_after: float | None,
        now: float,
    ) -> None:
        """Feed the circuit breakers and the pacer with what this failure says."""
        row = FAILURE_CLASSES[category]
        prov_health, pair_health = self.health.pair(provider, model)
        if row.health is HealthScope.NONE:
            prov_health.release_probe()
            pair_health.release_probe()
        else:
            entries = (
                [pair_health] if row.health is HealthScope.MODEL else [prov_health, pair_health]
            )
            for entry in entries:
                if entry.record_failure(now, category.value, hold=row.hold):
                    self.log.warning(
                        "circuit_opened", provider=entry.key, reopens_in=entry.cooldown
                    )
        if row.pauses_provider and provider in self.pacers:
            self.pacers[provider].pause(now + (retry_after or 1.0))


def worker_error(wire: dict[str, Any]) -> tuple[ProviderError, RateLimits | None]:
    """A worker's `failed.error` map as a ProviderError and its rate-limit report, read once
    where it enters the broker.

    A category this version does not know reads as protocol; a retry_after that is not a
    sane number is dropped (and a huge one capped); a status_code that is not an int too.
    A malformed rate-limit report makes the failure a protocol error naming the field.
    """
    error = ProviderError.from_wire(wire)
    error.retry_after = bounded_retry_after(error.retry_after)
    code = error.status_code
    if isinstance(code, bool) or not isinstance(code, int):
        error.status_code = None
    report = wire.get("ratelimit")
    if report is None:
        return error, None
    try:
        return error, RateLimits.from_wire(report, "failed.error.ratelimit")
    except ProtocolViolation as exc:
        return malformed_report(exc, f" (it reported {error})"), None


def malformed_report(exc: ProtocolViolation, also: str = "") -> ProviderError:
    """A worker's report that does not decode: the attempt fails as a protocol error."""
    return ProviderError(ErrorCategory.PROTOCOL, f"malformed worker report: {exc}{also}")
