"""The asyncio client: one connection to the broker, many jobs streamed over it at once.

Guarantees: the caller sees the frames of the current attempt in seq order, each once; a
retry before any delivered token is invisible; after delivered tokens a `Reset` event comes
first (protocol/job_stream.py keeps that per job). The client heartbeats the broker; when it
goes silent the client reconnects and resubmits its unfinished jobs by id (resubmission is
idempotent on the broker). The catalog calls are in protocol/catalog_calls.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any

from protocol import messages as m
from protocol.catalog_calls import CatalogCalls
from protocol.constants import DEFAULT_CLIENT_ENDPOINT, ENDPOINT_ENV
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError
from protocol.io_threads import IO_THREADS
from protocol.job import Job, build_job
from protocol.job_stream import JobStream
from protocol.peer import PeerLink
from protocol.results import Done, Event, Origin, Result
from protocol.transport import SocketOptions
from protocol.validate import need_id

DEFAULT_ENDPOINT = os.environ.get(ENDPOINT_ENV, DEFAULT_CLIENT_ENDPOINT)
# Seconds a call waits for the first word from a broker before failing broker_unreachable.
# ZeroMQ connects lazily and silently, so without it a client with no broker waits forever.
CONNECT_TIMEOUT = 5.0
# A job that has heard no final answer this long after its own timeout fails with `deadline`
# on the client side (the broker's deadline normally fires first; this covers a lost broker).
DEADLINE_GRACE = 10.0


class AsyncClient(CatalogCalls):
    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        heartbeat_interval: float = 1.0,
        liveness: int = 5,
        socket_options: SocketOptions | None = None,
        name: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        deadline_grace: float = DEADLINE_GRACE,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.deadline_grace = deadline_grace
        self.heard_broker = False  # any message from a broker since this client started
        self.broker_instance: str | None = None  # the broker run we last heard from
        self.broker_restarts = 0  # new broker runs seen (each resubmitted our unfinished jobs)
        self._background: set[asyncio.Task[None]] = set()
        # The broker queues fairly per name; one per client object unless the caller shares one.
        host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:60]
        self.name = need_id(name or f"{host}-{os.getpid()}-{secrets.token_hex(3)}", "client name")
        self.heartbeat_interval = heartbeat_interval
        self.socket_options = socket_options or SocketOptions.from_env()
        self.link = PeerLink(
            endpoint,
            self.socket_options,
            lambda: b"c-" + secrets.token_hex(6).encode(),
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            on_reopen=self._resubmit_all,
            on_lost=self._connection_lost,
        )
        self.pending: dict[str, JobStream] = {}
        self.status_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self.catalog_waiters: dict[str, asyncio.Future[m.CatalogReply]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self._start_lock: asyncio.Lock | None = None

    @property
    def reconnects(self) -> int:
        return self.link.reconnects

    async def __aenter__(self) -> AsyncClient:
        await self._ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connection ---------------------------------------------------------------------

    async def _ensure_started(self) -> None:
        if self.link.is_open:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self.link.is_open:
                self.link.open()
                self.tasks = [
                    asyncio.create_task(self._receiver()),
                    asyncio.create_task(self._heartbeat()),
                ]

    def _connection_lost(self) -> None:
        """The socket monitor saw the connection drop (the broker exited, or a ZMTP heartbeat
        timed out): what was in flight may be lost, so with unfinished jobs start over now
        (new socket, every one resubmitted) instead of after the silence window."""
        if any(not p.finished for p in self.pending.values()):
            self.link.request_reconnect("connection to the broker dropped")

    async def _resubmit_all(self, reason: str) -> None:
        """The broker went silent or our connection dropped, and the link has a new socket:
        resubmit every unfinished job by id (resubmission is idempotent on the broker)."""
        for pending in list(self.pending.values()):
            if not pending.finished:
                await self._send_submit(pending)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []
        self.link.close()
        IO_THREADS.report(self, 0)

    async def _send(self, msg: m.Message) -> None:
        await self._ensure_started()
        await self.link.send([msg.encode()])

    async def _send_submit(self, pending: JobStream) -> None:
        await self._send(
            m.Submit(
                job=pending.job,
                first_attempt=pending.attempt + 1,
                delivered=pending.next_seq,
                client=self.name,
                answering=pending.answering,
            )
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if self.link.is_silent(time.monotonic()) and self.pending:
                self.link.request_reconnect("broker silent")  # swapped between two polls
            else:
                await self._send(m.Ping())

    async def _receiver(self) -> None:
        while True:
            batch = await self.link.receive(100)
            if not batch:
                continue
            self.heard_broker = True
            for frames in batch:
                try:
                    self._handle(frames)
                except (ProtocolViolation, ValueError, KeyError, TypeError):
                    continue  # a garbled broker message: heartbeats and resubmission recover

    def _handle(self, frames: list[bytes]) -> None:
        msg = m.decode(frames[0])
        if isinstance(msg, m.Tokens):
            pending = self._current(msg.job_id, msg.attempt)
            if pending is not None:
                text = frames[1].decode("utf-8", "replace") if len(frames) > 1 else ""
                pending.deliver(msg.seq, text)
        elif isinstance(msg, m.Answering):
            pending = self._current(msg.job_id, msg.attempt)
            if pending is not None and pending.answering:  # never an event not asked for
                origin = Origin(msg.provider, msg.model, msg.attempt, msg.attempts)
                pending.put(origin)
        elif isinstance(msg, m.Restarted):
            pending = self.pending.get(msg.job_id)
            if pending is not None and msg.attempt > pending.attempt and not pending.finished:
                pending.start_attempt(msg.attempt, msg.reason)
        elif isinstance(msg, m.Completed):
            self._done(msg)
        elif isinstance(msg, m.Failed):
            pending = self.pending.get(msg.job_id)
            if pending is not None and not pending.finished:
                pending.end(ProviderError.from_wire(msg.error, job_id=msg.job_id))
        elif isinstance(msg, m.Accepted):
            pending = self.pending.get(msg.job_id)
            if pending is not None:
                pending.accepted_by = msg.broker
            self._broker_is(msg.broker)
        elif isinstance(msg, m.Pong):
            self._broker_is(msg.broker)
        elif isinstance(msg, m.StatusReply):
            if self.status_waiters:
                waiter = self.status_waiters.pop(0)
                if not waiter.done():
                    waiter.set_result(msg.status)
        elif isinstance(msg, m.CatalogReply):
            catalog_waiter = self.catalog_waiters.pop(msg.request, None)
            if catalog_waiter is not None and not catalog_waiter.done():
                catalog_waiter.set_result(msg)
        elif isinstance(msg, m.Error) and msg.job_id:
            pending = self.pending.get(msg.job_id)
            if pending is not None and not pending.finished:
                pending.end(ProviderError(ErrorCategory.PROTOCOL, msg.message, job_id=msg.job_id))

    def _current(self, job_id: str, attempt: int) -> JobStream | None:
        """The job a message of `attempt` is news for (a newer attempt starts here)."""
        pending = self.pending.get(job_id)
        if pending is None or pending.finished or attempt < pending.attempt:
            return None
        if attempt > pending.attempt:
            pending.start_attempt(attempt, "retried")
        return pending

    def _broker_is(self, instance: str | None) -> None:
        """A broker run's id: a new one lost every job the old run had (a quick restart
        reconnects before the liveness window notices), so resubmit those at once."""
        if instance is None or instance == self.broker_instance:
            return
        known, self.broker_instance = self.broker_instance, instance
        if known is None:
            return
        self.broker_restarts += 1
        lost = [p for p in self.pending.values() if not p.finished and p.accepted_by != instance]
        task = asyncio.get_running_loop().create_task(self._resubmit(lost))
        self._background.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._background.discard)

    async def _resubmit(self, pendings: list[JobStream]) -> None:
        for pending in pendings:
            if not pending.finished:
                await self._send_submit(pending)

    def _done(self, msg: m.Completed) -> None:
        pending = self.pending.get(msg.job_id)
        if pending is None or pending.finished:
            return
        if msg.attempt > pending.attempt:
            pending.start_attempt(msg.attempt, "retried")
        if pending.next_seq != msg.frames or pending.held:
            # Frames were lost (e.g. across a reconnect): run the job again, visibly.
            asyncio.get_running_loop().create_task(self._send_submit(pending))
            return
        result = Result.from_done(msg.job_id, "".join(pending.parts), msg.result, pending.resets)
        pending.end(Done(result))

    # --- public API ---------------------------------------------------------------------

    async def submit_job(self, job: Job, *, answering: bool = False) -> AsyncIterator[Event]:
        """Stream the events of one job; raises ProviderError when the job fails.

        `answering`: an `Origin` event comes before each attempt's first token (who answers).
        """
        batches = self.submit_job_batches(job, answering=answering)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for event in batch:
                    yield event

    async def submit_job_batches(
        self, job: Job, *, answering: bool = False, tokens: bool = True
    ) -> AsyncGenerator[list[Event], None]:
        """`submit_job`, yielding every event already received at once (in order).

        For callers that pay per resumption: the blocking `Client` crosses threads once per
        batch, not once per token. `tokens=False`: no Token or Reset events, only the final
        `Done` (its result holds the whole text and the reset count), see `result`.
        """
        pending = self.pending.get(job.id)
        if pending is None or pending.finished:
            pending = JobStream(job=job, answering=answering, tokens=tokens)
            self.pending[job.id] = pending
            IO_THREADS.report(self, len(self.pending))
        loop = asyncio.get_running_loop()
        watchdogs = []
        if not self.heard_broker:
            watchdogs.append(loop.call_later(self.connect_timeout, self._unreachable, pending))
        if job.timeout is not None:
            later = job.timeout + self.deadline_grace
            watchdogs.append(loop.call_later(later, self._overdue, pending))
        try:
            await self._send_submit(pending)
            while True:
                batch: list[Event] = []
                for item in await pending.take():
                    if isinstance(item, ProviderError):
                        if batch:
                            yield batch
                        raise item
                    batch.append(item)
                    if isinstance(item, Done):  # the end: nothing after it is news
                        yield batch
                        return
                yield batch
        finally:
            for watchdog in watchdogs:
                watchdog.cancel()
            if not pending.finished:  # the caller stopped listening: stop the work too
                pending.finished = True
                with contextlib.suppress(Exception):
                    await self._send(m.Cancel(job_id=job.id))
            self.pending.pop(job.id, None)
            IO_THREADS.report(self, len(self.pending))

    def unreachable_error(self, waited: float, job_id: str | None = None) -> ProviderError:
        refused = " (or it refused this client's CURVE key)" if self.socket_options.curve else ""
        return ProviderError(
            ErrorCategory.BROKER_UNREACHABLE,
            f"no broker answered at {self.endpoint} within {waited:g}s{refused}; start one with "
            "`llmrelay broker`, or point --endpoint / LLMRELAY_ENDPOINT at a running one",
            job_id=job_id,
        )

    def _unreachable(self, pending: JobStream) -> None:
        if not self.heard_broker and not pending.finished:
            pending.end(self.unreachable_error(self.connect_timeout, pending.job.id))

    def _overdue(self, pending: JobStream) -> None:
        if not pending.finished:
            pending.end(
                ProviderError(
                    ErrorCategory.DEADLINE,
                    f"no final answer within the job's timeout ({pending.job.timeout:g}s) plus "
                    f"{self.deadline_grace:g}s; the broker at {self.endpoint} was lost",
                    job_id=pending.job.id,
                )
            )

    def stream(self, **kwargs: Any) -> AsyncIterator[Event]:
        """Yield Token, Reset and finally Done events. Same arguments as `complete`."""
        return self.submit_job(build_job(**kwargs))

    async def complete(self, **kwargs: Any) -> Result:
        """Run one job to the end: `complete(model="mock:echo", prompt="hi", max_tokens=20)`."""
        return await self.result(build_job(**kwargs))

    async def result(self, job: Job) -> Result:
        """Run `job` to its end and return its result; raises ProviderError when it fails.

        No per-token events are made: the caller's task wakes once, for the outcome (batch
        runs and `map` pay for that once per job, not once per frame).
        """
        batches = self.submit_job_batches(job, tokens=False)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for event in batch:
                    if isinstance(event, Done):
                        return event.result
        raise ProviderError(ErrorCategory.PROTOCOL, "stream ended without a result", job_id=job.id)

    async def map(
        self,
        jobs: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = 64,
        busy_retry: float = 0.5,
    ) -> AsyncIterator[Result | ProviderError]:
        """Run many jobs with at most `concurrency` in flight; yield each outcome as it ends.

        Failures are yielded as ProviderError values (with job_id) so one bad prompt does not
        stop a batch. A full broker (broker_busy) makes the batch wait, not fail.
        """
        source = iter(jobs)
        running: set[asyncio.Task[None]] = set()
        finished: asyncio.Queue[Result | ProviderError] = asyncio.Queue()

        async def one(spec: Mapping[str, Any]) -> None:
            try:
                job = build_job(**spec)
            except ProtocolViolation as exc:  # one bad item is one failed outcome
                finished.put_nowait(ProviderError(ErrorCategory.INVALID_REQUEST, str(exc)))
                return
            while True:
                try:
                    finished.put_nowait(await self.result(job))
                    return
                except ProviderError as exc:
                    if exc.category is not ErrorCategory.BROKER_BUSY:
                        exc.job_id = job.id
                        finished.put_nowait(exc)
                        return
                    await asyncio.sleep(busy_retry)

        outstanding = 0  # jobs started whose outcome was not yielded yet

        def refill() -> None:
            nonlocal outstanding
            for spec in itertools.islice(source, concurrency - outstanding):
                task = asyncio.create_task(one(spec))
                running.add(task)
                task.add_done_callback(running.discard)
                outstanding += 1

        refill()
        try:
            while outstanding:
                outcome = await finished.get()
                outstanding -= 1
                yield outcome
                refill()
        finally:
            for task in running:
                task.cancel()

    async def cancel(self, job_id: str) -> None:
        await self._send(m.Cancel(job_id=job_id))

    async def status(self, timeout: float = 5.0) -> dict[str, Any]:
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.status_waiters.append(waiter)
        await self._send(m.StatusQuery())
        first = not self.heard_broker
        wait = min(timeout, self.connect_timeout) if first else timeout
        try:
            return await asyncio.wait_for(waiter, wait)
        except TimeoutError:
            if first and not self.heard_broker:
                raise self.unreachable_error(wait) from None
            raise ProviderError(
                ErrorCategory.NETWORK, f"no status reply from {self.endpoint} within {wait:g}s"
            ) from None
        finally:
            if waiter in self.status_waiters:
                self.status_waiters.remove(waiter)
