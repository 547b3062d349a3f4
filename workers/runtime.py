"""The worker process every backend shares: registration, heartbeats, concurrency, streaming.

One asyncio loop, one DEALER socket to the broker, one task per job (never more than the
broker's credit allows). Outgoing traffic leaves in the order it is produced: a message is sent
at once when nothing is queued before it; only while a send waits for room (the broker is slow)
do messages queue for the sender task, and text of one job that queues then is merged into one
frame. So streaming stays token by token, and a job's token frames always precede its
done/failed message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio
import psutil
import structlog

from protocol import messages as m
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError
from protocol.job import Job
from protocol.peer import PeerLink
from protocol.result_schema import RateLimits, WorkerResult
from protocol.transport import SocketOptions
from workers.backend import MAX_MODEL_ID, MAX_MODELS, Backend, Finish, TextDelta
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


@dataclass(slots=True)
class _Running:
    job: Job
    attempt: int
    task: asyncio.Task[None] | None = None
    buffer: list[str] = field(default_factory=list)
    seq: int = 0  # token frames sent so far
    started: float = field(default_factory=time.monotonic)


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
        )
        self.running: dict[tuple[str, int], _Running] = {}
        self.counting: set[asyncio.Task[None]] = set()  # exact token counts being made
        self.outbox: deque[tuple[str, Any]] = deque()
        self.outbox_ready = asyncio.Event()
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

    def _register(self, identity: str) -> None:
        self.outbox.clear()  # messages for the old connection mean nothing to the new one
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

    @property
    def stalls(self) -> int:
        """Receive waits that timed out with a message waiting (lost wake-ups; should be 0)."""
        return self.link.missed

    def _send_now(self, frames: list[bytes]) -> bool:
        """Send at once if nothing is queued before it and the socket has room."""
        return not self.outbox and self.link.try_send(frames)

    def _post(self, msg: m.Message) -> None:
        frames = [msg.encode()]
        if not self._send_now(frames):
            self.outbox.append(("msg", frames))
            self.outbox_ready.set()

    def _push_text(self, run: _Running, text: str) -> None:
        if run.buffer:  # a frame of this job is queued behind a blocked send: merge into it
            run.buffer.append(text)
            return
        if self._send_now(self._token_frames(run, text)):
            run.seq += 1
            return
        self.outbox.append(("tokens", run))
        self.outbox_ready.set()
        run.buffer.append(text)

    @staticmethod
    def _token_frames(run: _Running, text: str) -> list[bytes]:
        """The next token frame of `run` (the caller counts it in `run.seq` once it is sent)."""
        header = m.Tokens(job_id=run.job.id, attempt=run.attempt, seq=run.seq)
        return [header.encode(), text.encode("utf-8", "surrogatepass")]

    async def _sender(self) -> None:
        """Sends what queued while the socket had no room, in order, merging text per job."""
        while True:
            if not self.outbox:
                self.outbox_ready.clear()
                await self.outbox_ready.wait()
                continue
            kind, item = self.outbox[0]
            if kind == "tokens":
                run: _Running = item
                frames = self._token_frames(run, "".join(run.buffer))
                run.seq += 1  # counted now: text arriving during the send goes in the next frame
                run.buffer.clear()
            else:
                frames = item
            await self.link.send(frames)
            # Popped only now so nothing is sent directly past a message still waiting here.
            if self.outbox and self.outbox[0][1] is item:
                self.outbox.popleft()

    # --- jobs -----------------------------------------------------------------------------

    def _start_job(self, msg: m.Dispatch) -> None:
        key = (msg.job.id, msg.attempt)
        if key in self.running:
            return  # duplicate dispatch (e.g. resent after a reconnect): already running
        run = _Running(job=msg.job, attempt=msg.attempt)
        self.running[key] = run
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

    async def _run_job(self, run: _Running, model: str) -> None:
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
                        self._push_text(run, event.text)
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
            self.running.pop((job.id, attempt), None)
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
        # frames = frames already sent + the one still buffered (sent before this message)
        frames = run.seq + (1 if run.buffer else 0)
        wire = result.to_wire()
        self._post(m.Completed(job_id=job.id, attempt=attempt, frames=frames, result=wire))
        self.log.debug("job_finished", frames=frames)

    def _fail(self, run: _Running, exc: ProviderError) -> None:
        self.failed_jobs += 1
        self.running.pop((run.job.id, run.attempt), None)
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
            self._post(m.Pong())
        elif isinstance(msg, m.Error):
            self.log.error("broker_error", message=msg.message)
        elif isinstance(msg, m.Rejected):
            self.log.error("registration_rejected", reason=msg.reason)
            self.exit_code = CONFIG_ERROR  # restarting would only repeat it
            self.stopping.set()
        elif isinstance(msg, m.Disconnect):
            self.log.warning("broker_disconnected_us", reason=msg.reason)
            if not self.stopping.is_set():  # draining: finish here rather than start over
                self.link.request_reconnect("broker asked us to register again")

    def _drop_all(self, why: str) -> None:
        """The broker forgot us: it re-dispatches these jobs elsewhere, so stop them here."""
        for run in list(self.running.values()):
            if run.task is not None:
                run.task.cancel()
        if self.running:
            self.log.warning("jobs_abandoned", count=len(self.running), reason=why)

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
            asyncio.create_task(self._sender()),
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
            # An anyio scope, like HttpBackend's own timeouts (see workers.http.until).
            with anyio.fail_after(timeout):
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
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        flush_deadline = time.monotonic() + 2.0
        while self.outbox and time.monotonic() < flush_deadline:
            await asyncio.sleep(0.01)
        self.log.info("worker_stopped", jobs_done=self.done_jobs, jobs_failed=self.failed_jobs)


def run_worker(spec: ProviderSpec, endpoint: str, **kwargs: Any) -> int:
    """Run until SIGTERM; the exit code tells the supervisor whether a restart can help."""
    runtime = WorkerRuntime(spec, endpoint, **kwargs)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runtime.run())
    return runtime.exit_code
