"""The broker core: a state machine fed decoded messages and `now`, answering through an outbox.

It holds no socket and reads no clock, so tests drive it in-process on a fake clock
(tests/core_harness.py). The socket layer (dispatcher/broker.py) decodes what arrives, calls
the entry points below (`client_message`, `worker_message`, `bad_message`, `tick`,
`processes_exited`, `workers_unreachable`, `dispatch_pending`) and flushes `outbox`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from dispatcher import status
from dispatcher.attempts import AttemptOutcomes, malformed_report, worker_error
from dispatcher.catalog_service import CatalogService
from dispatcher.config import Config
from dispatcher.health import CircuitPolicy, HealthBook
from dispatcher.jobs import JobState, WorkerState
from dispatcher.outbox import CLIENT, WORKER, Outbox, Side
from dispatcher.pacing import Pacer, estimate_tokens
from dispatcher.retry import RetryPolicy
from dispatcher.routing import resolve
from dispatcher.scheduling import Scheduler
from dispatcher.worker_book import WorkerBook
from protocol import messages as m
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError
from protocol.result_schema import WorkerResult
from workers.registry import static_features

log = structlog.get_logger("llmrelay.broker")


def job_id_of(msg: m.Message) -> str | None:
    """The job a message is about, if any."""
    if isinstance(msg, m.Submit | m.Dispatch):
        return msg.job.id
    job_id = getattr(msg, "job_id", None)
    return job_id if isinstance(job_id, str) else None


class ProcessControl(Protocol):
    """What the core asks of whoever runs the local worker processes (the supervisor)."""

    def mark_healthy(self, pid: int) -> None: ...

    def kill(self, pid: int) -> bool: ...

    def snapshot(self) -> list[dict[str, object]]: ...


class BrokerCore:
    def __init__(
        self,
        config: Config,
        processes: ProcessControl,
        now: float,
        *,
        endpoints: Mapping[str, str] | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.config = config
        self.bc = bc = config.broker
        self.processes = processes
        self.endpoints = dict(endpoints or {})  # shown in status
        # More of the status reply from the socket side, which the core does not see
        # (the broker sets it: its ZeroMQ I/O threads' policy, protocol/io_threads.py).
        self.status_extra: Callable[[], dict[str, Any]] = dict
        self.started = now
        # Told to clients on Pong and Accepted, to workers on Ping and Disconnect: a restarted
        # broker is recognisably a new one.
        self.instance = secrets.token_hex(8)
        self.worker_ping = m.Ping(broker=self.instance)
        self.log = log.bind(component="broker")
        self.outbox = Outbox()
        # Knows every configured provider; its live discovery runs on a thread only once
        # the socket layer calls catalog.start() (the core itself never fetches).
        self.catalog = CatalogService(config, ttl=bc.catalog_ttl, discover=bc.catalog_discovery)
        self.workers = WorkerBook(
            {name: static_features(spec.kind) for name, spec in config.providers.items()}
        )
        self.health = HealthBook(
            CircuitPolicy(bc.circuit_failures, bc.circuit_cooldown, bc.circuit_max_cooldown)
        )
        self.pacers = {
            name: Pacer(spec.rpm, spec.tpm, now) for name, spec in config.providers.items()
        }
        self.scheduler = Scheduler(
            config, self.workers, self.health, self.pacers, self.outbox, self.log
        )
        self.outcomes = AttemptOutcomes(
            self.scheduler,
            self.workers,
            self.health,
            self.pacers,
            retry_policy
            or RetryPolicy(bc.retry_base_delay, bc.retry_max_delay, max_lost=bc.max_worker_lost),
            self.log,
            self.catalog.cost,
        )

    # --- what the socket layer asks ----------------------------------------------------

    @property
    def jobs(self) -> dict[str, JobState]:
        return self.scheduler.jobs

    @property
    def wake_at(self) -> float:
        """When a waiting job may become dispatchable although nothing arrives (inf: never)."""
        return self.scheduler.next_wake

    @property
    def needs_dispatch(self) -> bool:
        return self.scheduler.dirty

    def dispatch_pending(self, now: float) -> None:
        self.scheduler.dispatch_pending(now)

    # --- entry points -------------------------------------------------------------------

    def bad_message(self, side: Side, identity: bytes, error: str, now: float) -> None:
        """A peer sent something that does not decode: log it and tell the peer why."""
        if side == WORKER:
            worker = self.workers.get(identity)
            if worker is not None:
                worker.last_seen = now  # garbage still proves the peer is alive
        self.log.warning(f"bad_{side}_message", error=error[:200])
        reply = m.Error(message=f"protocol error: {error[:1000]}")
        if side == WORKER:
            self.outbox.to_worker(identity, reply)
        else:
            self.outbox.to_client(identity, reply)

    def client_message(self, identity: bytes, msg: m.Message, now: float) -> None:
        try:
            self._client_message(identity, msg, now)
        except Exception as exc:  # a bug must still answer the job, not leave it waiting
            self._handler_failed(CLIENT, identity, msg, exc)

    def worker_message(
        self, identity: bytes, msg: m.Message, payload: Sequence[object], now: float
    ) -> None:
        """`payload`: the frames after the routing id, as received (relayed as they are)."""
        try:
            self._worker_message(identity, msg, payload, now)
        except Exception as exc:
            self._handler_failed(WORKER, identity, msg, exc)

    def _handler_failed(self, side: Side, identity: bytes, msg: m.Message, exc: Exception) -> None:
        """Answer for a message whose handling raised: its job fails `internal`, once.

        The traceback is logged once here; the job (if the message names one) is aborted so
        its client hears a final answer instead of waiting for a deadline that may not exist.
        """
        job_id = job_id_of(msg)
        self.log.exception("message_handler_failed", side=side, type=msg.TYPE, job=job_id)
        text = f"internal error handling {msg.TYPE}: {type(exc).__name__}: {str(exc)[:300]}"
        err = ProviderError(ErrorCategory.INTERNAL, text, job_id=job_id)
        js = self.scheduler.jobs.get(job_id) if job_id is not None else None
        if js is not None:
            try:
                self.scheduler.abort(js, err)
                return
            except Exception:  # the job's state is what broke: drop it, still answer
                self.log.exception("job_abort_failed", job=job_id)
                self.scheduler.jobs.pop(js.id, None)
                js.finished = True
                if js.queued:
                    js.queued = False
                self.outbox.to_client(
                    js.client, m.Failed(job_id=js.id, attempt=js.attempt, error=err.to_wire())
                )
                return
        if side != CLIENT:
            return
        if job_id is not None and isinstance(msg, m.Submit):
            self.outbox.to_client(identity, m.Failed(job_id=job_id, attempt=0, error=err.to_wire()))
        else:
            self.outbox.to_client(identity, m.Error(message=text, job_id=job_id))

    def _client_message(self, identity: bytes, msg: m.Message, now: float) -> None:
        if isinstance(msg, m.Submit):
            self._submit(identity, msg, now)
        elif isinstance(msg, m.Ping):
            self.outbox.to_client(identity, m.Pong(broker=self.instance))
        elif isinstance(msg, m.Cancel):
            self._cancel(msg.job_id)
        elif isinstance(msg, m.StatusQuery):
            self.outbox.to_client(identity, m.StatusReply(status=status.build(self, now)))
        elif isinstance(msg, m.CatalogQuery):
            reply_to = lambda reply: self.outbox.to_client(identity, reply)  # noqa: E731
            self.catalog.ask(msg, reply_to, now, self._count_on)
        else:
            error = m.Error(message=f"unexpected message type {msg.TYPE!r}")
            self.outbox.to_client(identity, error)

    def _worker_message(
        self, identity: bytes, msg: m.Message, payload: Sequence[object], now: float
    ) -> None:
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = now
        if isinstance(msg, m.Tokens):
            if worker is not None and len(payload) == 2:
                self._relay(worker, msg, payload, now)
            return
        if isinstance(msg, m.Ready):
            self._register(identity, msg, now)
            return
        if worker is None:
            # A worker the broker does not know (it restarted, or declared it dead).
            reply = m.Disconnect(reason="unknown worker: register again", broker=self.instance)
            self.outbox.to_worker(identity, reply)
            return
        if isinstance(msg, m.Heartbeat):
            worker.stats = msg.stats
        elif isinstance(msg, m.Completed):
            self._completed(worker, msg, now)
        elif isinstance(msg, m.Failed):
            failure, limits = worker_error(msg.error)
            self.outcomes.failed(worker, msg, failure, limits, now)
        elif isinstance(msg, m.TokenCount):
            self.catalog.counted(msg)
        elif isinstance(msg, m.Disconnect):
            worker.draining = True
            self.log.info("worker_draining", worker=worker.label, provider=worker.provider)
        elif not isinstance(msg, m.Pong):
            error = m.Error(message=f"unexpected message type {msg.TYPE!r}")
            self.outbox.to_worker(identity, error)

    def _completed(self, worker: WorkerState, msg: m.Completed, now: float) -> None:
        """Decode the worker's result once, here: the core works on checked values only."""
        try:
            report = WorkerResult.from_wire(msg.result)
        except ProtocolViolation as exc:
            self.log.warning("malformed_worker_report", worker=worker.label, error=str(exc))
            self.outcomes.failed(worker, msg, malformed_report(exc), None, now)
            return
        self.outcomes.done(worker, msg, report, now)

    def tick(self, now: float) -> None:
        """Periodic work: worker liveness (ping or declare lost) and job deadlines."""
        cutoff = now - self.bc.heartbeat_interval * self.bc.heartbeat_liveness
        for worker in self.workers:
            if worker.last_seen < cutoff:
                self._worker_lost(worker, "heartbeat timeout", now)
            else:
                self.outbox.to_worker(worker.identity, self.worker_ping)
        self.scheduler.expire(now)
        self.catalog.flush(now)  # `models --refresh` answers, overdue token counts

    def workers_unreachable(self, identities: Iterable[bytes], now: float) -> None:
        """The socket layer found no connection to these workers: lost, without waiting."""
        for identity in identities:
            worker = self.workers.get(identity)
            if worker is not None:
                self._worker_lost(worker, "connection lost", now)

    def processes_exited(self, pids: Iterable[int], now: float) -> None:
        """The supervisor saw these worker processes exit."""
        for worker in self.workers.with_pids(set(pids)):
            self._worker_lost(worker, "process exited", now)

    # --- client side --------------------------------------------------------------------

    def _submit(self, identity: bytes, msg: m.Submit, now: float) -> None:
        job = msg.job
        js = self.scheduler.jobs.get(job.id)
        if js is not None:
            self._resubmitted(js, identity, msg)
            return
        cached = self.scheduler.finished.get(job.id)
        if cached is not None and cached[1] in (None, msg.delivered):
            self.outbox.frames_to_client(identity, cached[0])
            return
        # Fairness is per named client when it gives a name (stable across reconnects),
        # else per connection.
        owner = b"n:" + msg.client.encode() if msg.client else identity
        queue = self.scheduler.queue
        try:
            if len(queue) >= self.bc.max_queued or (
                queue.size_of(owner) >= self.bc.max_queued_per_client
            ):
                raise ProviderError(
                    ErrorCategory.BROKER_BUSY,
                    f"broker queue full ({len(queue)} waiting); retry later",
                )
            resolved = resolve(
                job,
                self.config,
                self.catalog.catalog,
                self.workers.serves,
                self.workers.features_of,
            )
        except ProviderError as exc:
            self.log.info("job_rejected", job=job.id, category=exc.category.value, why=exc.message)
            failed = m.Failed(job_id=job.id, attempt=0, error=exc.to_wire())
            self.outbox.to_client(identity, failed)
            return
        timeout = job.timeout if job.timeout is not None else self.bc.default_timeout
        js = JobState(
            job=job,
            client=identity,
            owner=owner,
            candidates=resolved.candidates,
            skipped=resolved.skipped,
            notes=resolved.notes(),
            strategy=resolved.strategy,
            deadline=now + timeout,
            attempt=msg.first_attempt - 1,
            client_has_tokens=msg.delivered > 0,
            answering=msg.answering,
            est_tokens=estimate_tokens(
                resolved.prompt_tokens.tokens if resolved.prompt_tokens else 0,
                job.params.get("max_tokens"),
            ),
            submitted=now,
        )
        self.scheduler.admit(js)
        names = [str(c) for c in resolved.candidates]
        accepted = m.Accepted(
            job_id=job.id, candidates=names, skipped=resolved.skipped, broker=self.instance
        )
        self.outbox.to_client(identity, accepted)
        self.log.debug("job_accepted", job=job.id, candidates=names)

    def _resubmitted(self, js: JobState, identity: bytes, msg: m.Submit) -> None:
        """Same id again: the caller reconnected. Re-attach; restart if it missed frames.

        Frames it has not had yet but that went to this same connection are still on their
        way (ZeroMQ keeps a connection's order), so they are not missed: a client that
        resubmits twice in a row (after a reconnect, then on hearing the new broker's id)
        does not restart a job that is streaming to it.
        """
        in_flight = identity == js.client and msg.delivered <= js.frames
        js.client = identity
        js.answering = msg.answering
        names = [str(c) for c in js.candidates]
        accepted = m.Accepted(
            job_id=js.id, candidates=names, skipped=js.skipped, broker=self.instance
        )
        self.outbox.to_client(identity, accepted)
        if js.worker is not None and msg.delivered != js.frames and not in_flight:
            self.log.info("job_restarted_for_client", job=js.id, attempt=js.attempt)
            self.scheduler.unassign(js, cancel=True)
            js.client_has_tokens = msg.delivered > 0
            js.attempt = max(js.attempt, msg.first_attempt - 1)
            self.scheduler.enqueue(js, front=True)

    def _cancel(self, job_id: str) -> None:
        js = self.scheduler.jobs.get(job_id)
        if js is not None:
            cancelled = ProviderError(ErrorCategory.CANCELLED, "cancelled by the caller")
            self.scheduler.abort(js, cancelled)

    # --- worker side --------------------------------------------------------------------

    def _register(self, identity: bytes, msg: m.Ready, now: float) -> None:
        old = self.workers.get(identity)
        if old is not None:
            self._worker_lost(old, "worker registered again", now)
        if msg.provider not in self.config.providers:
            self.log.warning("worker_rejected", provider=msg.provider, reason="unknown provider")
            reply = m.Rejected(reason=f"unknown provider {msg.provider!r}")
            self.outbox.to_worker(identity, reply)
            return
        worker = WorkerState(
            identity=identity,
            provider=msg.provider,
            kind=msg.kind,
            models=msg.models,
            capacity=msg.capacity,
            pid=msg.pid,
            features=frozenset(msg.features),
            info=msg.info,
            last_seen=now,
        )
        self.workers.add(worker)
        self.catalog.catalog.from_worker(msg.provider, msg.models, msg.info)
        self.processes.mark_healthy(msg.pid)
        self.scheduler.dirty = True
        self.log.info(
            "worker_ready",
            worker=worker.label,
            provider=msg.provider,
            kind=msg.kind,
            capacity=msg.capacity,
            pid=msg.pid,
        )

    def _count_on(
        self, provider: str, model: str, messages: list[dict[str, object]], request: str
    ) -> bool:
        """Ask a worker of `provider` for an exact prompt count (False: none connected)."""
        worker = self.workers.most_free(provider)
        if worker is None:
            return False
        ask = m.CountTokens(request=request, model=model, messages=messages)
        self.outbox.to_worker(worker.identity, ask)
        return True

    def _relay(
        self, worker: WorkerState, msg: m.Tokens, payload: Sequence[object], now: float
    ) -> None:
        js = worker.jobs.get(msg.job_id)
        if js is None or js.attempt != msg.attempt:
            return  # a frame of an attempt that was already abandoned
        if js.first_token_at is None:
            js.first_token_at = now
        if js.frames == 0 and js.answering and js.candidate is not None:
            answering = m.Answering(
                job_id=js.id,
                attempt=js.attempt,
                provider=js.candidate.provider,
                model=js.candidate.model,
                attempts=js.trail_maps(),
            )
            self.outbox.to_client(js.client, answering)
        js.frames += 1
        # The caller now holds output a retry would void. If it is gone or too slow the send
        # is dropped; it resubmits with its own frame count and the attempt restarts then.
        js.client_has_tokens = True
        self.scheduler.totals["frames"] += 1
        self.outbox.frames_to_client(js.client, payload)

    def _worker_lost(self, worker: WorkerState, reason: str, now: float) -> None:
        self.workers.remove(worker.identity)
        self.log.warning(
            "worker_lost",
            worker=worker.label,
            provider=worker.provider,
            pid=worker.pid,
            reason=reason,
            jobs=len(worker.jobs),
        )
        self.outbox.to_worker(worker.identity, m.Disconnect(reason=reason, broker=self.instance))
        if reason == "heartbeat timeout" and self.processes.kill(worker.pid):
            self.log.warning("worker_killed_hung", worker=worker.label, pid=worker.pid)
        for js in list(worker.jobs.values()):
            js.worker = None
            err = ProviderError(ErrorCategory.WORKER_LOST, f"worker {worker.label} lost: {reason}")
            err.provider = worker.provider
            self.outcomes.attempt_failed(js, err, now)
        worker.jobs.clear()
        self.scheduler.dirty = True
