"""The broker: one process, one thread, a non-blocking ZeroMQ poll loop.

Clients talk to one ROUTER socket, workers to another. Token frames are relayed as the raw
frames the worker sent (the broker reads only the small header, never the text). Every state
change is one structlog event; nothing is logged per token.
"""

from __future__ import annotations

import heapq
import itertools
import math
import signal
import threading
import time
from collections import OrderedDict
from typing import Any

import psutil
import structlog
import zmq

from dispatcher.auth import start_authenticator
from dispatcher.catalog_service import CatalogService
from dispatcher.config import Config
from dispatcher.health import CircuitPolicy, HealthBook
from dispatcher.jobs import JobState, WorkerState
from dispatcher.pacing import Pacer, estimate_tokens
from dispatcher.queues import FairQueue
from dispatcher.retry import (
    HOLD_SECONDS,
    MODEL_FAILURES,
    RetryPolicy,
    parse_retry_after,
)
from dispatcher.routing import Candidate, resolve
from dispatcher.supervisor import Supervisor
from protocol import messages as m
from protocol.errors import HEALTH_FAILURES, ErrorCategory, ProtocolViolation, ProviderError
from protocol.transport import apply_server_curve, tune_socket

log = structlog.get_logger("llmrelay.broker")

REJECTED = "registration rejected"  # prefix a worker treats as fatal
MAX_BATCH = 2000  # messages handled per socket per loop turn, so neither side starves


class Broker:
    def __init__(self, config: Config, *, spawn: bool = True) -> None:
        self.config = config
        bc = config.broker
        self.bc = bc
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.opts = bc.socket_options()
        self.authenticator = start_authenticator(self.ctx, self.opts, bc.curve_allowed_clients)
        self.clients = self._router(bc.client_endpoint)
        self.workers_sock = self._router(bc.worker_endpoint)
        self.client_endpoint = self.clients.getsockopt_string(zmq.LAST_ENDPOINT)
        self.worker_endpoint = self.workers_sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.workers: dict[bytes, WorkerState] = {}
        self.jobs: dict[str, JobState] = {}
        self.queue: FairQueue[JobState] = FairQueue()
        self.deadlines: list[tuple[float, int, str]] = []
        self.finished: OrderedDict[str, tuple[list[bytes], int | None]] = OrderedDict()
        self.health = HealthBook(
            CircuitPolicy(bc.circuit_failures, bc.circuit_cooldown, bc.circuit_max_cooldown)
        )
        now = time.monotonic()
        self.pacers = {
            name: Pacer(spec.rpm, spec.tpm, now) for name, spec in config.providers.items()
        }
        self.catalog = CatalogService(config, ttl=bc.catalog_ttl, discover=bc.catalog_discovery)
        self.supervisor = Supervisor(
            [s for s in config.providers.values() if spawn and s.spawn],
            bc.worker_connect or self.worker_endpoint.replace("0.0.0.0", "127.0.0.1"),
            backoff=bc.restart_backoff,
            backoff_max=bc.restart_backoff_max,
            flap_restarts=bc.flap_restarts,
            flap_window=bc.flap_window,
            heartbeat_interval=bc.heartbeat_interval,
            private_env=frozenset(filter(None, [bc.curve_secret_key_env])),
        )
        self.retry_policy = RetryPolicy(bc.retry_base_delay, bc.retry_max_delay)
        self.counter = itertools.count()
        self.next_wake = math.inf
        self.dirty = False
        self.stop_event = threading.Event()
        self.started = now
        self.next_stats = now + bc.stats_interval
        self.process = psutil.Process()
        self.totals = {"submitted": 0, "done": 0, "failed": 0, "retries": 0, "frames": 0}
        self.log = log.bind(component="broker")

    def _router(self, endpoint: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        tune_socket(sock, self.opts)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        apply_server_curve(sock, self.opts)
        sock.bind(endpoint)
        return sock

    # --- sending ------------------------------------------------------------------------

    def _send(self, sock: zmq.Socket[bytes], identity: bytes, frames: list[Any]) -> bool:
        try:
            sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise

    def _to_client(self, js: JobState | bytes, msg: m.Message) -> bool:
        identity = js.client if isinstance(js, JobState) else js
        return self._send(self.clients, identity, [msg.encode()])

    def _to_worker(self, worker: WorkerState | bytes, msg: m.Message) -> bool:
        identity = worker.identity if isinstance(worker, WorkerState) else worker
        return self._send(self.workers_sock, identity, [msg.encode()])

    # --- capabilities -------------------------------------------------------------------

    def serves(self, provider: str, model: str) -> bool:
        """Whether a registered worker of `provider` reports `model` (its live model list)."""
        return any(model in w.model_set for w in self.workers.values() if w.provider == provider)

    # --- client side --------------------------------------------------------------------

    def _decode(
        self, sock: zmq.Socket[bytes], frames: list[zmq.Frame], side: str
    ) -> m.Message | None:
        """Decode a peer's header frame; a bad one gets an error reply (where addressable)."""
        try:
            if len(frames) < 2:
                raise ProtocolViolation("empty message")
            return m.decode(frames[1].bytes)
        except ProtocolViolation as exc:
            self.log.warning(f"bad_{side}_message", error=str(exc)[:200])
            error = m.Error(message=f"protocol error: {str(exc)[:1000]}")
            self._send(sock, frames[0].bytes, [error.encode()])
            return None

    def _on_client(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        msg = self._decode(self.clients, frames, "client")
        if msg is None:
            return
        if isinstance(msg, m.Submit):
            self._submit(identity, msg)
        elif isinstance(msg, m.Ping):
            self._to_client(identity, m.Pong())
        elif isinstance(msg, m.Cancel):
            self._cancel(msg.job_id)
        elif isinstance(msg, m.StatusQuery):
            self._to_client(identity, m.StatusReply(status=self.status()))
        elif isinstance(msg, m.CatalogQuery):
            self.catalog.ask(identity, msg, lambda reply: self._to_client(identity, reply))
        else:
            self._to_client(identity, m.Error(message=f"unexpected message type {msg.TYPE!r}"))

    def _submit(self, identity: bytes, msg: m.Submit) -> None:
        job = msg.job
        js = self.jobs.get(job.id)
        if js is not None:
            self._resubmitted(js, identity, msg)
            return
        cached = self.finished.get(job.id)
        if cached is not None and cached[1] in (None, msg.delivered):
            self._send(self.clients, identity, cached[0])
            return
        now = time.monotonic()
        # Fairness is per named client when it gives a name (stable across reconnects),
        # else per connection.
        owner = b"n:" + msg.client.encode() if msg.client else identity
        try:
            if len(self.queue) >= self.bc.max_queued or (
                self.queue.size_of(owner) >= self.bc.max_queued_per_client
            ):
                raise ProviderError(
                    ErrorCategory.BROKER_BUSY,
                    f"broker queue full ({len(self.queue)} waiting); retry later",
                )
            resolved = resolve(job, self.config, self.catalog.catalog, self.serves)
        except ProviderError as exc:
            self.log.info("job_rejected", job=job.id, category=exc.category.value, why=exc.message)
            self._to_client(identity, m.Failed(job_id=job.id, attempt=0, error=exc.to_wire()))
            return
        timeout = job.timeout if job.timeout is not None else self.bc.default_timeout
        js = JobState(
            job=job,
            client=identity,
            owner=owner,
            candidates=resolved.candidates,
            skipped=resolved.skipped,
            notes=resolved.notes(),
            deadline=now + timeout,
            attempt=msg.first_attempt - 1,
            client_has_tokens=msg.delivered > 0,
            est_tokens=estimate_tokens(job.prompt_chars(), job.params.get("max_tokens")),
        )
        self.jobs[job.id] = js
        self.totals["submitted"] += 1
        heapq.heappush(self.deadlines, (js.deadline, next(self.counter), job.id))
        self._enqueue(js)
        self._to_client(
            identity,
            m.Accepted(
                job_id=job.id,
                candidates=[str(c) for c in resolved.candidates],
                skipped=resolved.skipped,
            ),
        )
        self.log.debug(
            "job_accepted", job=job.id, candidates=[str(c) for c in resolved.candidates]
        )

    def _resubmitted(self, js: JobState, identity: bytes, msg: m.Submit) -> None:
        """Same id again: the caller reconnected. Re-attach; restart if it missed frames."""
        js.client = identity
        self._to_client(
            js,
            m.Accepted(
                job_id=js.id, candidates=[str(c) for c in js.candidates], skipped=js.skipped
            ),
        )
        if js.worker is not None and msg.delivered != js.frames:
            self.log.info("job_restarted_for_client", job=js.id, attempt=js.attempt)
            self._unassign(js, cancel=True)
            js.client_has_tokens = msg.delivered > 0
            js.attempt = max(js.attempt, msg.first_attempt - 1)
            self._enqueue(js, front=True)

    def _cancel(self, job_id: str) -> None:
        js = self.jobs.get(job_id)
        if js is not None:
            self._abort(js, ProviderError(ErrorCategory.CANCELLED, "cancelled by the caller"))

    def _abort(self, js: JobState, err: ProviderError) -> None:
        """End a job wherever it is: waiting in a queue or running on a worker."""
        if js.queued:
            self.queue.remove(js.owner, js.job.priority, js)
            js.queued = False
        self._unassign(js, cancel=True)
        self._fail(js, err)

    # --- worker side --------------------------------------------------------------------

    def _on_worker(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        worker = self.workers.get(identity)
        now = time.monotonic()
        if worker is not None:
            worker.last_seen = now
        msg = self._decode(self.workers_sock, frames, "worker")
        if msg is None:
            return
        if isinstance(msg, m.Tokens):
            if worker is not None and len(frames) == 3:
                self._relay(worker, msg, frames)
            return
        if isinstance(msg, m.Ready):
            self._register(identity, msg, now)
            return
        if worker is None:
            # A worker the broker does not know (it restarted, or declared it dead).
            self._to_worker(identity, m.Disconnect(reason="unknown worker: register again"))
            return
        if isinstance(msg, m.Heartbeat):
            worker.stats = msg.stats
        elif isinstance(msg, m.Done):
            self._worker_done(worker, msg, now)
        elif isinstance(msg, m.Failed):
            self._worker_failed(worker, msg)
        elif isinstance(msg, m.Disconnect):
            worker.draining = True
            self.log.info("worker_draining", worker=worker.label, provider=worker.provider)
        elif not isinstance(msg, m.Pong):
            self._to_worker(identity, m.Error(message=f"unexpected message type {msg.TYPE!r}"))

    def _register(self, identity: bytes, msg: m.Ready, now: float) -> None:
        old = self.workers.get(identity)
        if old is not None:
            self._worker_lost(old, "worker registered again")
        if msg.provider not in self.config.providers:
            self.log.warning("worker_rejected", provider=msg.provider, reason="unknown provider")
            self._to_worker(
                identity,
                m.Error(message=f"{REJECTED}: unknown provider {msg.provider!r}"),
            )
            return
        self.workers[identity] = WorkerState(
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
        self.catalog.catalog.from_worker(msg.provider, msg.models, msg.info)
        self.supervisor.mark_healthy(msg.pid)
        self.dirty = True
        self.log.info(
            "worker_ready",
            worker=identity.decode(errors="replace"),
            provider=msg.provider,
            kind=msg.kind,
            capacity=msg.capacity,
            pid=msg.pid,
        )

    def _relay(self, worker: WorkerState, msg: m.Tokens, frames: list[zmq.Frame]) -> None:
        js = worker.jobs.get(msg.job_id)
        if js is None or js.attempt != msg.attempt:
            return  # a frame of an attempt that was already abandoned
        if js.first_token_at is None:
            js.first_token_at = time.monotonic()
        js.frames += 1
        js.client_has_tokens = True
        self.totals["frames"] += 1
        if not self._send(self.clients, js.client, [frames[1], frames[2]]):
            # The caller is gone or too slow; it will resubmit and the attempt restarts then.
            js.client_has_tokens = True

    def _worker_done(self, worker: WorkerState, msg: m.Done, now: float) -> None:
        js = worker.jobs.get(msg.job_id)
        if js is None or js.attempt != msg.attempt:
            return
        del worker.jobs[js.id]
        js.worker = None
        assert js.candidate is not None
        latency = now - js.dispatched_at
        for entry in self.health.pair(js.candidate.provider, js.candidate.model):
            if entry.record_success(latency):
                self.log.info("circuit_closed", provider=entry.key)
        self._learn_usage(js, msg.result)
        self._learn_limits(js.candidate.provider, msg.result.get("ratelimit"), now)
        js.trail.append(self._trail_entry(js, "ok"))
        result = {
            **msg.result,
            "provider": js.candidate.provider,
            "candidate": str(js.candidate),
            "attempts": js.trail,
            "skipped": js.skipped,
            **js.notes,
            **self.catalog.cost(js.candidate, msg.result.get("usage")),
            "latency": now - js.submitted,
            "ttft": None if js.first_token_at is None else js.first_token_at - js.submitted,
        }
        done = m.Done(job_id=js.id, attempt=js.attempt, frames=msg.frames, result=result)
        self._finish(js, done, msg.frames)
        self.totals["done"] += 1
        self.log.info(
            "job_done",
            job=js.id,
            attempt=js.attempt,
            provider=js.candidate.provider,
            model=js.candidate.model,
            frames=msg.frames,
            latency=round(now - js.submitted, 4),
        )
        self.dirty = True

    def _learn_usage(self, js: JobState, result: dict[str, Any]) -> None:
        """Charge the tokens actually used to the provider's tokens-per-minute budget."""
        assert js.candidate is not None
        pacer = self.pacers.get(js.candidate.provider)
        usage = result.get("usage") or {}
        total = usage.get("total_tokens")
        if pacer is not None and pacer.tokens is not None and isinstance(total, int | float):
            bucket = pacer.tokens  # settle the estimate charged at dispatch: refund or top up
            charged = min(js.est_tokens, bucket.per_minute)  # what take() charged at dispatch
            bucket.level = min(bucket.per_minute, bucket.level - (float(total) - charged))

    def _learn_limits(self, provider: str, limits: Any, now: float) -> None:
        """Learn from the rate-limit headers a worker reported (absent for most providers)."""
        pacer = self.pacers.get(provider)
        if pacer is None or not limits or not isinstance(limits, dict):
            return
        inflight = 0
        inflight_tokens = 0.0
        count_tokens = "tokens_remaining" in limits
        for worker in self.workers.values():
            if worker.provider == provider and worker.jobs:
                inflight += len(worker.jobs)
                if count_tokens:
                    inflight_tokens += sum(j.est_tokens for j in worker.jobs.values())
        if pacer.learn(limits, now, inflight=inflight, inflight_tokens=inflight_tokens):
            self.log.info("rate_limit_learned", provider=provider, **pacer.learned())

    def _worker_failed(self, worker: WorkerState, msg: m.Failed) -> None:
        js = worker.jobs.get(msg.job_id)
        if js is None or js.attempt != msg.attempt:
            return
        del worker.jobs[js.id]
        js.worker = None
        self.dirty = True
        self._attempt_failed(js, msg.error)

    def _worker_lost(self, worker: WorkerState, reason: str) -> None:
        self.workers.pop(worker.identity, None)
        self.log.warning(
            "worker_lost",
            worker=worker.label,
            provider=worker.provider,
            pid=worker.pid,
            reason=reason,
            jobs=len(worker.jobs),
        )
        self._to_worker(worker, m.Disconnect(reason=reason))
        if reason == "heartbeat timeout" and self.supervisor.kill(worker.pid):
            self.log.warning("worker_killed_hung", worker=worker.label, pid=worker.pid)
        for js in list(worker.jobs.values()):
            js.worker = None
            err = ProviderError(ErrorCategory.WORKER_LOST, f"worker {worker.label} lost: {reason}")
            err.provider = worker.provider
            self._attempt_failed(js, err.to_wire())
        worker.jobs.clear()
        self.dirty = True

    # --- attempts, retries, failover ------------------------------------------------------

    def _trail_entry(self, js: JobState, outcome: str, **extra: Any) -> dict[str, Any]:
        assert js.candidate is not None
        return {
            "attempt": js.attempt,
            "provider": js.candidate.provider,
            "model": js.candidate.model,
            "outcome": outcome,
            **extra,
        }

    def _attempt_failed(self, js: JobState, error: dict[str, Any]) -> None:
        now = time.monotonic()
        category = ErrorCategory.parse(error.get("category"))
        retry_after = parse_retry_after(error.get("retry_after"))
        assert js.candidate is not None
        provider, model = js.candidate.provider, js.candidate.model
        js.trail.append(
            self._trail_entry(
                js,
                category.value,
                message=str(error.get("message", ""))[:500],
                status_code=error.get("status_code"),
                retry_after=retry_after,
            )
        )
        js.last_error = {
            **error,
            "provider": provider,
            "category": category.value,
            "retry_after": retry_after,
        }
        self._learn_limits(provider, error.get("ratelimit"), now)
        self._record_failure(provider, model, category, retry_after, now)
        if js.finished:
            return
        decision = self.retry_policy.decide(
            category,
            attempt=js.attempt,
            max_attempts=js.job.max_attempts,
            voids_delivered_output=js.client_has_tokens,
            on_partial=js.job.on_partial,
            retry_after=retry_after,
            tries_here=sum(1 for t in js.trail if t["provider"] == provider),
        )
        if decision.give_up is not None:
            self._fail(js, self._job_error(js, decision.give_up))
            return
        if decision.exclude:
            js.excluded.add(provider)
        else:
            js.avoid_until[provider] = now + decision.delay
        self.totals["retries"] += 1
        self.log.info(
            "retry_scheduled",
            job=js.id,
            attempt=js.attempt,
            category=category.value,
            provider=provider,
            delay=round(decision.delay, 3),
            excluded=sorted(js.excluded),
        )
        self._enqueue(js, front=True)

    def _record_failure(
        self,
        provider: str,
        model: str,
        category: ErrorCategory,
        retry_after: float | None,
        now: float,
    ) -> None:
        """Feed the circuit breakers and the pacer with what this failure says."""
        prov_health, pair_health = self.health.pair(provider, model)
        if category in HEALTH_FAILURES or category in MODEL_FAILURES:
            entries = [pair_health] if category in MODEL_FAILURES else [prov_health, pair_health]
            for entry in entries:
                if entry.record_failure(now, category.value, hold=HOLD_SECONDS.get(category)):
                    self.log.warning(
                        "circuit_opened", provider=entry.key, reopens_in=entry.cooldown
                    )
        else:
            prov_health.release_probe()
            pair_health.release_probe()
        if category is ErrorCategory.RATE_LIMITED and provider in self.pacers:
            self.pacers[provider].pause(now + (retry_after or 1.0))

    def _job_error(self, js: JobState, why: str) -> ProviderError:
        last = js.last_error or {}
        category = last.get("category", ErrorCategory.NO_PROVIDER.value)
        message = str(last.get("message") or "no candidate available")
        return ProviderError(
            category,
            f"{message} ({why})",
            provider=last.get("provider"),
            status_code=last.get("status_code"),
            retry_after=last.get("retry_after"),
            attempts=js.trail,
        )

    # --- dispatch -----------------------------------------------------------------------

    def _enqueue(self, js: JobState, *, front: bool = False) -> None:
        js.queued = True
        self.queue.push(js.owner, js.job.priority, js, front=front)
        self.dirty = True

    def _dispatch_pending(self) -> None:
        self.dirty = False
        self.next_wake = math.inf
        if not self.queue:
            return
        now = time.monotonic()
        for js in self.queue.rounds(lambda js: self._try_dispatch(js, now)):
            js.queued = False

    def _try_dispatch(self, js: JobState, now: float) -> bool:
        """Dispatch or settle `js` now (True: leave the queue) or leave it waiting (False)."""
        earliest = math.inf
        viable = False
        unserved = True  # no candidate provider has a registered worker
        for cand in js.candidates:
            if cand.provider in js.excluded:
                continue
            viable = True
            prov_health, pair_health = self.health.pair(cand.provider, cand.model)
            ready = max(
                js.avoid_until.get(cand.provider, 0.0),
                prov_health.ready_at(),
                pair_health.ready_at(),
            )
            pacer = self.pacers.get(cand.provider)
            if pacer is not None:
                ready = max(ready, now + pacer.wait_for(js.est_tokens, now))
            if ready > now:
                earliest = min(earliest, ready)
                continue
            workers = [w for w in self.workers.values() if w.provider == cand.provider]
            if not workers:
                continue  # nobody serves it right now: fall through the chain
            unserved = False
            if not (prov_health.allows(now) and pair_health.allows(now)):
                continue  # a half-open probe is in flight; its outcome wakes us
            best = max(workers, key=lambda w: w.free)
            if best.free <= 0:
                return False  # busy, not broken: wait for capacity, keep the preference order
            self._dispatch(js, cand, best, now)
            return True
        if not viable:
            self._fail(js, self._job_error(js, "every candidate failed"))
            return True
        if unserved and earliest == math.inf and not js.waiting_logged:
            js.waiting_logged = True  # once per job: it waits for a worker to register
            self.log.warning(
                "job_waiting_for_worker", job=js.id, candidates=[str(c) for c in js.candidates]
            )
        if earliest < math.inf:
            if earliest > js.deadline:
                self._fail(js, self._job_error(js, "no candidate recovers before the deadline"))
                return True
            self.next_wake = min(self.next_wake, earliest)
        return False

    def _dispatch(self, js: JobState, cand: Candidate, worker: WorkerState, now: float) -> None:
        previous = js.candidate
        js.attempt += 1
        if js.client_has_tokens:
            reason = (js.last_error or {}).get("message") or "attempt restarted"
            self._to_client(js, m.Reset(job_id=js.id, attempt=js.attempt, reason=str(reason)[:500]))
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
        self._to_worker(worker, m.Dispatch(job=js.job, attempt=js.attempt, model=cand.model))
        self.log.debug("job_dispatched", job=js.id, attempt=js.attempt, worker=worker.label)

    def _unassign(self, js: JobState, *, cancel: bool) -> None:
        worker = js.worker
        if worker is None:
            return
        worker.jobs.pop(js.id, None)
        js.worker = None
        if js.candidate is not None:
            for entry in self.health.pair(js.candidate.provider, js.candidate.model):
                entry.release_probe()
        if cancel:
            self._to_worker(worker, m.Cancel(job_id=js.id, attempt=js.attempt))
        self.dirty = True

    # --- ending jobs ----------------------------------------------------------------------

    def _finish(self, js: JobState, msg: m.Message, frames: int | None) -> None:
        js.finished = True
        self.jobs.pop(js.id, None)
        encoded = [msg.encode()]
        self.finished[js.id] = (encoded, frames)
        while len(self.finished) > self.bc.finished_cache:
            self.finished.popitem(last=False)
        self._send(self.clients, js.client, encoded)

    def _fail(self, js: JobState, err: ProviderError) -> None:
        if js.finished:
            return
        err.attempts = js.trail
        self.totals["failed"] += 1
        self.log.info(
            "job_failed",
            job=js.id,
            attempt=js.attempt,
            category=err.category.value,
            provider=err.provider,
            message=err.message[:300],
        )
        self._finish(js, m.Failed(job_id=js.id, attempt=js.attempt, error=err.to_wire()), None)
        self.dirty = True

    # --- periodic work ------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        if now >= self.next_stats:
            self.next_stats = now + self.bc.stats_interval
            self._log_stats()
        limit = self.bc.heartbeat_interval * self.bc.heartbeat_liveness
        for worker in list(self.workers.values()):
            if now - worker.last_seen > limit:
                self._worker_lost(worker, "heartbeat timeout")
            else:
                self._to_worker(worker, m.Ping())
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, job_id = heapq.heappop(self.deadlines)
            js = self.jobs.get(job_id)
            if js is None:
                continue
            err = ProviderError(ErrorCategory.DEADLINE, "job deadline passed")
            if js.last_error:
                err.message += f"; last error: {js.last_error.get('message')}"
            self._abort(js, err)
        self.catalog.flush()
        exited = set(self.supervisor.poll(now))
        for worker in [w for w in self.workers.values() if w.pid in exited]:
            self._worker_lost(worker, "process exited")

    def _log_stats(self) -> None:
        """The periodic canonical line: queue depth, work in flight, totals, own footprint."""
        with self.process.oneshot():
            rss, cpu = self.process.memory_info().rss, self.process.cpu_percent()
        self.log.info(
            "broker_stats",
            queued=len(self.queue),
            running=sum(len(w.jobs) for w in self.workers.values()),
            workers=len(self.workers),
            rss=rss,
            cpu_percent=cpu,
            **self.totals,
        )

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "uptime": now - self.started,
            "client_endpoint": self.client_endpoint,
            "worker_endpoint": self.worker_endpoint,
            "queued": len(self.queue),
            "running": sum(len(w.jobs) for w in self.workers.values()),
            "jobs": len(self.jobs),
            "totals": dict(self.totals),
            "workers": [
                {
                    "worker": w.label,
                    "provider": w.provider,
                    "kind": w.kind,
                    "pid": w.pid,
                    "capacity": w.capacity,
                    "inflight": len(w.jobs),
                    "draining": w.draining,
                    "last_seen": round(now - w.last_seen, 3),
                    "stats": w.stats,
                    "info": w.info,
                    "features": sorted(w.features),
                    "model_count": len(w.models),  # registered: config + live list
                }
                for w in self.workers.values()
            ],
            "providers": {
                name: {
                    "kind": spec.kind,
                    "workers": sum(1 for w in self.workers.values() if w.provider == name),
                    "paused_for": max(0.0, self.pacers[name].paused_until - now),
                    **self.pacers[name].learned(),
                }
                for name, spec in self.config.providers.items()
            },
            "health": self.health.snapshot(now),
            "supervised": self.supervisor.snapshot(),
            "queues": {k.decode(errors="replace"): n for k, n in self.queue.sizes.items()},
        }

    # --- main loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.log.info(
            "broker_started",
            client_endpoint=self.client_endpoint,
            worker_endpoint=self.worker_endpoint,
            providers=sorted(self.config.providers),
        )
        self.supervisor.start_all()
        self.catalog.start()
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.workers_sock, zmq.POLLIN)
        tick_every = self.bc.heartbeat_interval / 2
        next_tick = time.monotonic()
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                wait = min(next_tick, self.next_wake) - now
                events = dict(poller.poll(max(0, min(int(wait * 1000) + 1, 200))))
                if self.workers_sock in events:
                    self._drain(self.workers_sock, self._on_worker)
                if self.clients in events:
                    self._drain(self.clients, self._on_client)
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + tick_every
                if self.dirty or now >= self.next_wake:
                    self._dispatch_pending()
        finally:
            self.shutdown()

    def _drain(self, sock: zmq.Socket[bytes], handle: Any) -> None:
        for _ in range(MAX_BATCH):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                handle(frames)
            except Exception:  # one bad message must never take the broker down
                self.log.exception("message_handler_failed")

    def shutdown(self) -> None:
        self.log.info("broker_stopping", jobs=len(self.jobs))
        self.supervisor.stop_all()
        self.clients.close(linger=0)
        self.workers_sock.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.log.info("broker_stopped")

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
