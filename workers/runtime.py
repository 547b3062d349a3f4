"""The worker process every backend shares: registration, heartbeats, concurrency, streaming.

One asyncio loop, one DEALER socket to the broker, one task per job (never more than the
broker's credit allows). What it sends leaves in order through workers/outgoing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from typing import Any

import psutil
import structlog

from protocol import eventloop
from protocol import messages as m
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError
from protocol.io_threads import IO_THREADS
from protocol.peer import PeerLink
from protocol.result_schema import RateLimits, WorkerResult
from protocol.transport import SocketOptions
from workers.backend import MAX_MODEL_ID, MAX_MODELS, Backend, Finish, TextDelta
from workers.outgoing import Outgoing, RunningJob
from workers.procutil import CONFIG_ERROR
from workers.registry import backend_class
from workers.spec import ProviderSpec

log = structlog.get_logger("llmrelay.worker")

LIST_MODELS_TIMEOUT = 10.0  # seconds; spec.options list_models_timeout


def merge_models(config: list[str], live: list[str]) -> list[str]:
    """Config models first, then the live ones; order kept, duplicates and bad ids dropped."""
    merged = dict.fromkeys(config)
    for model in live:
        if len(merged) >= MAX_MODELS:
            break
        if isinstance(model, str) and 0 < len(model) <= MAX_MODEL_ID:
            merged.setdefault(model)
    return list(merged)[:MAX_MODELS]


class WorkerRuntime:
    def __init__(
        self,
        spec: ProviderSpec,
        endpoint: str,
        *,
        heartbeat_interval: float = 1.0,
        liveness: int = 5,
        shutdown_grace: float = 10.0,
        stats_interval: float = 15.0,
        socket_options: SocketOptions | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.spec = spec
        self.endpoint = endpoint
        self.heartbeat_interval = heartbeat_interval
        self.shutdown_grace = shutdown_grace
        self.stats_interval = stats_interval
        self.socket_options = socket_options or SocketOptions.from_env()
        self.backend = backend or backend_class(spec.kind)(spec)
        self.models = list(spec.models)  # what we register with: config plus live models
        self.link = PeerLink(
            endpoint,
            self.socket_options,
            lambda: f"{spec.name}-{os.getpid()}-{secrets.token_hex(3)}".encode(),
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            on_reopen=self._reregister,
            on_lost=self._connection_lost,
        )
        self.running: dict[tuple[str, int], RunningJob] = {}
        # Tasks of dropped attempts still winding down (a backend may await while cancelled).
        self.abandoned: set[asyncio.Task[None]] = set()
        self.broker_instance: str | None = None  # the broker run we registered with, once known
        self.counting: set[asyncio.Task[None]] = set()  # exact token counts being made
        self.outgoing = Outgoing(self.link, self.running)
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.done_jobs = 0
        self.failed_jobs = 0
        self.proc = psutil.Process()
        self.log = log.bind(provider=spec.name, kind=spec.kind, worker_pid=os.getpid())

    # --- socket ---------------------------------------------------------------------------

    def _connect(self) -> None:
        identity = self.link.open().decode()
        self._register(identity)

    async def _reregister(self, reason: str) -> None:
        """The link has a new socket: the broker forgot us, so stop our jobs and register."""
        self._drop_all(reason)
        self._register(self.link.routing_id.decode())

    def _connection_lost(self) -> None:
        """The socket monitor saw our connection drop: the broker may have lost what we sent
        (and forgotten us), so start over now rather than after the silence window."""
        self.log.warning("broker_connection_lost", endpoint=self.endpoint)
        if not self.stopping.is_set():
            self.link.request_reconnect("connection to the broker dropped")

    def _register(self, identity: str) -> None:
        self.outgoing.clear()  # messages for the old connection mean nothing to the new one
        # Whichever run answers this registration is ours: the first id heard from now on.
        self.broker_instance = None
        self._post(
            m.Ready(
                provider=self.spec.name,
                kind=self.spec.kind,
                models=list(self.models),
                capacity=self.spec.capacity,
                pid=os.getpid(),
                features=sorted(self.backend.features),
                info=self.backend.info(),
            )
        )
        self.log.info("worker_registering", endpoint=self.endpoint, identity=identity)

    def _post(self, msg: m.Message) -> None:
        self.outgoing.post(msg)

    @property
    def stalls(self) -> int:
        """Receive waits that timed out with a message waiting (lost wake-ups; should be 0)."""
        return self.link.missed

    # --- jobs -----------------------------------------------------------------------------

    def _start_job(self, msg: m.Dispatch) -> None:
        key = (msg.job.id, msg.attempt)
        if key in self.running:
            return  # duplicate dispatch (e.g. resent after a reconnect): already running
        run = RunningJob(job=msg.job, attempt=msg.attempt)
        self.running[key] = run
        IO_THREADS.report(self, len(self.running))
        run.task = asyncio.create_task(self._run_job(run, msg.model))

    async def _count(self, msg: m.CountTokens) -> None:
        """Answer the broker's exact-count request (catalog count_tokens)."""
        try:
            tokens = await self.backend.count_prompt(msg.messages, msg.model)
        except ProviderError as exc:
            reply = m.TokenCount(request=msg.request, error=f"{exc.category.value}: {exc.message}")
        except Exception as exc:  # a backend bug must not kill the worker
            reply = m.TokenCount(request=msg.request, error=f"{type(exc).__name__}: {exc}")
        else:
            reply = m.TokenCount(
                request=msg.request, tokens=tokens, method=self.backend.exact_counting
            )
        self._post(reply)

    async def _run_job(self, run: RunningJob, model: str) -> None:
        job, attempt = run.job, run.attempt
        structlog.contextvars.bind_contextvars(job=job.id, attempt=attempt)
        first_token: float | None = None
        finish = Finish()
        try:
            async for event in self.backend.generate(job, model, attempt):
                if isinstance(event, TextDelta):
                    if event.text:
                        if first_token is None:
                            first_token = time.monotonic() - run.started
                        self.outgoing.push_text(run, event.text)
                else:
                    finish = event
        except asyncio.CancelledError:
            if self.stopping.is_set():  # not the caller's wish: let the broker run it again
                err = ProviderError(ErrorCategory.WORKER_LOST, "worker shut down mid-job")
            else:
                err = ProviderError(ErrorCategory.CANCELLED, "cancelled on request")
            self._fail(run, err)
            return
        except ProviderError as exc:
            self._fail(run, exc)
            return
        except Exception as exc:  # a backend bug must not kill the worker or lose the job
            self.log.exception("backend_crashed")
            err = ProviderError(ErrorCategory.SERVER_ERROR, f"{type(exc).__name__}: {exc}")
            self._fail(run, err)
            return
        finally:
            self._forget(run)
        if run.dropped:
            return
        self.done_jobs += 1
        limits = finish.ratelimit
        result = WorkerResult(
            finish_reason=finish.reason,
            usage=finish.usage,
            model=finish.model or model,
            worker_latency=time.monotonic() - run.started,
            worker_ttft=first_token,
            extra=finish.extra or None,
            ratelimit=RateLimits.from_wire(limits, "ratelimit") if limits else None,
        )
        self.outgoing.end_turn()  # this turn's text becomes a frame (sent or queued) first
        # frames = frames already sent + the one still buffered (sent before this message)
        frames = run.seq + (1 if run.buffer else 0)
        wire = result.to_wire()
        self._post(m.Completed(job_id=job.id, attempt=attempt, frames=frames, result=wire))
        self.log.debug("job_finished", frames=frames)

    def _forget(self, run: RunningJob) -> None:
        """Remove `run` from the running table, unless a redispatch already took its key."""
        key = (run.job.id, run.attempt)
        if self.running.get(key) is run:
            del self.running[key]
            IO_THREADS.report(self, len(self.running))

    def _fail(self, run: RunningJob, exc: ProviderError) -> None:
        self._forget(run)
        if run.dropped:
            return  # a dropped attempt's end (its `cancelled` above all) is nobody's news
        self.failed_jobs += 1
        if exc.provider is None:
            exc.provider = self.spec.name
        self.log.info(
            "job_attempt_failed", category=exc.category.value, status_code=exc.status_code
        )
        self._post(m.Failed(job_id=run.job.id, attempt=run.attempt, error=exc.to_wire()))

    def _cancel(self, job_id: str, attempt: int) -> None:
        for (jid, att), run in list(self.running.items()):
            if jid == job_id and (attempt == 0 or att == attempt) and run.task is not None:
                run.task.cancel()

    # --- control loop ---------------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = m.decode(frames[0])
        except ProtocolViolation as exc:
            self.log.warning("bad_message_from_broker", error=str(exc))
            return
        if isinstance(msg, m.Dispatch):
            self._start_job(msg)
        elif isinstance(msg, m.CountTokens):
            task = asyncio.create_task(self._count(msg))
            self.counting.add(task)
            task.add_done_callback(self.counting.discard)
        elif isinstance(msg, m.Cancel):
            self._cancel(msg.job_id, msg.attempt)
        elif isinstance(msg, m.Ping):
            if not self._new_broker(msg.broker):
                self._post(m.Pong())
        elif isinstance(msg, m.Error):
            self.log.error("broker_error", message=msg.message)
        elif isinstance(msg, m.Rejected):
            self.log.error("registration_rejected", reason=msg.reason)
            self.exit_code = CONFIG_ERROR  # restarting would only repeat it
            self.stopping.set()
        elif isinstance(msg, m.Disconnect):
            if self._new_broker(msg.broker):
                return
            self.log.warning("broker_disconnected_us", reason=msg.reason)
            if not self.stopping.is_set():  # draining: finish here rather than start over
                self.link.request_reconnect("broker asked us to register again")

    def _new_broker(self, instance: str | None) -> bool:
        """True if `instance` names a broker run other than the one we registered with.

        ZeroMQ reconnects our socket to a broker restarted on the same endpoint without
        telling us; the jobs the old run gave us are gone with it (their callers resubmit
        them to the new run), so we drop them and register again at once.
        """
        if instance is None or instance == self.broker_instance:
            return False
        old, self.broker_instance = self.broker_instance, instance
        if old is None:
            return False  # the first run heard since we registered: the one we registered with
        self.log.warning("broker_restarted", old=old, new=instance)
        if not self.stopping.is_set():
            self.link.request_reconnect("new broker instance")
        return True

    def _drop_all(self, why: str) -> None:
        """The broker forgot us: it re-dispatches these jobs (perhaps to us, with the same
        job id and attempt), so stop them here and never report them.

        The table is emptied at once, not when each task ends: a cancelled task may take a
        while (a backend awaiting its cleanup), and meanwhile a redispatch of the same
        (job, attempt) must start afresh rather than pass for a duplicate, and the old
        task's late `cancelled` must not reach the broker as that redispatch's answer.
        """
        if self.running:
            self.log.warning("jobs_abandoned", count=len(self.running), reason=why)
        for run in self.running.values():
            run.dropped = True
            if run.task is not None:
                run.task.cancel()
                self.abandoned.add(run.task)
                run.task.add_done_callback(self.abandoned.discard)
        self.running.clear()
        IO_THREADS.report(self, 0)

    async def _heartbeats(self) -> None:
        next_stats = time.monotonic() + self.stats_interval
        self.proc.cpu_percent()
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            now = time.monotonic()
            stats = self._stats()
            self._post(m.Heartbeat(inflight=len(self.running), stats=stats))
            reason = self.backend.failure()
            if reason is not None:
                self.log.error("backend_failed", error=reason)
                self.exit_code = 1  # the supervisor restarts us (with its flapping guard)
                self.stopping.set()
            if now >= next_stats:
                next_stats = now + self.stats_interval
                self.log.info("worker_stats", **stats)
            if self.link.is_silent(now):
                self.log.warning("broker_silent", seconds=round(self.link.silent_for(now), 1))
                if not self.stopping.is_set():
                    self.link.request_reconnect("broker silent")
                self.link.last_heard = now  # one reconnect per silent period

    def _stats(self) -> dict[str, Any]:
        with self.proc.oneshot():
            figures: dict[str, Any] = {
                "rss": self.proc.memory_info().rss,
                "cpu_percent": self.proc.cpu_percent(),
            }
        figures.update(
            inflight=len(self.running),
            jobs_done=self.done_jobs,
            jobs_failed=self.failed_jobs,
            io_batch=IO_THREADS.batch,  # ZeroMQ I/O threads batched now (protocol/io_threads.py)
            **self.backend.stats(),
        )
        return figures

    async def _receiver(self) -> None:
        while True:
            for frames in await self.link.receive(200):
                self._handle(frames)

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(provider=self.spec.name, worker_pid=os.getpid())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            await self.backend.start()
        except ProviderError as exc:
            # Retryable start failures (a server that may come up) let the supervisor try
            # again with backoff; the others are configuration mistakes it must not loop on.
            self.log.error("backend_start_failed", category=exc.category.value, error=exc.message)
            self.exit_code = 1 if exc.retryable else CONFIG_ERROR
            await self.backend.close()
            return
        await self._discover_models()
        self._connect()
        tasks = [
            asyncio.create_task(self.outgoing.sender()),
            asyncio.create_task(self._receiver()),
            asyncio.create_task(self._heartbeats()),
        ]
        try:
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            await self._drain()
        finally:
            for task in tasks:
                task.cancel()
            await self.backend.close()
            self.link.close()

    async def _discover_models(self) -> None:
        """Ask the backend once for its live model list; any failure keeps the config list."""
        opts = self.spec.options
        if not opts.get("list_models", True):
            return
        timeout = float(opts.get("list_models_timeout", LIST_MODELS_TIMEOUT))
        try:
            async with asyncio.timeout(timeout):
                live = await self.backend.list_models()
        except TimeoutError:
            self.log.warning("models_unavailable", error=f"no model list within {timeout}s")
            return
        except Exception as exc:  # a backend bug must not stop the worker
            self.log.warning("models_unavailable", error=f"{type(exc).__name__}: {exc}")
            return
        if live is None:
            return
        self.models = merge_models(list(self.spec.models), live)
        self.log.info("models_listed", count=len(live), registered=len(self.models))

    async def _drain(self) -> None:
        """SIGTERM: let running jobs finish for a grace period, cancel the rest, then leave."""
        self.log.info("worker_stopping", inflight=len(self.running))
        self._post(m.Disconnect(reason="worker shutting down"))
        deadline = time.monotonic() + self.shutdown_grace
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        pending = [run.task for run in self.running.values() if run.task is not None]
        pending += self.abandoned
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        flush_deadline = time.monotonic() + 2.0
        while self.outgoing.queue and time.monotonic() < flush_deadline:
            await asyncio.sleep(0.01)
        self.log.info("worker_stopped", jobs_done=self.done_jobs, jobs_failed=self.failed_jobs)


def run_worker(spec: ProviderSpec, endpoint: str, **kwargs: Any) -> int:
    """Run until SIGTERM; the exit code tells the supervisor whether a restart can help."""
    runtime = WorkerRuntime(spec, endpoint, **kwargs)
    with contextlib.suppress(KeyboardInterrupt):
        eventloop.run(runtime.run())  # uvloop when installed
    return runtime.exit_code
