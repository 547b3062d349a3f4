"""Drive the broker core in-process on a fake clock (in the spirit of Dramatiq's StubBroker).

No sockets, no processes, no sleeping: a `CoreHarness` builds a `BrokerCore` from a config
dict, plays clients and workers by calling its entry points with the harness clock's `now`,
and decodes what the core put in its outbox. Each test runs in milliseconds.

    h = CoreHarness({"p": {"kind": "mock", "models": ["m"]}})
    w = h.worker("p")
    job = h.submit(model="p:m")
    h.done(w, job)
    assert isinstance(h.outcome(job), m.Completed)
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.config import parse_config
from dispatcher.core import BrokerCore
from dispatcher.outbox import CLIENT
from dispatcher.retry import RetryPolicy
from protocol import messages as m
from protocol.client import build_job
from protocol.errors import ErrorCategory, ProviderError
from protocol.result_schema import WorkerResult

START = 1000.0  # the fake clock's first reading (any value: the core only takes differences)


def stop_result(model: str) -> dict[str, Any]:
    """A worker's `done.result` for a plain stop: every required field, nothing else."""
    plain = WorkerResult(
        finish_reason="stop", usage={}, model=model, worker_latency=0.0, worker_ttft=None
    )
    return plain.to_wire()


@dataclass
class StubProcesses:
    """Stands in for the supervisor: records what the core asked of it."""

    healthy: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)

    def mark_healthy(self, pid: int) -> None:
        self.healthy.append(pid)

    def kill(self, pid: int) -> bool:
        self.killed.append(pid)
        return True

    def snapshot(self) -> list[dict[str, object]]:
        return []


@dataclass(eq=False)
class FakeWorker:
    identity: bytes
    provider: str
    pid: int
    silent: bool = False  # True: the harness stops heart-beating for it
    inbox: list[m.Message] = field(default_factory=list)

    def dispatches(self) -> list[m.Dispatch]:
        return [x for x in self.inbox if isinstance(x, m.Dispatch)]

    def cancels(self) -> list[m.Cancel]:
        return [x for x in self.inbox if isinstance(x, m.Cancel)]

    def attempt_of(self, job_id: str) -> int:
        """The latest attempt of `job_id` dispatched here."""
        attempts = [d.attempt for d in self.dispatches() if d.job.id == job_id]
        assert attempts, f"{job_id} was never dispatched to {self.identity!r}"
        return attempts[-1]


@dataclass(frozen=True)
class Relayed:
    """A token frame pair the core relayed to a client, decoded."""

    header: m.Tokens
    text: str


class CoreHarness:
    def __init__(
        self,
        providers: dict[str, dict[str, Any]],
        routes: dict[str, list[str]] | None = None,
        *,
        jitter: float = 1.0,
        **broker: Any,
    ) -> None:
        """`jitter`: the retry policy's random draw (1.0: every backoff is its full step)."""
        config = parse_config({"broker": broker, "providers": providers, "routes": routes or {}})
        self.config = config
        self.now = START
        self.processes = StubProcesses()
        policy = RetryPolicy(
            config.broker.retry_base_delay,
            config.broker.retry_max_delay,
            rand=lambda: jitter,
            max_lost=config.broker.max_worker_lost,
        )
        self.core = BrokerCore(config, self.processes, self.now, retry_policy=policy)
        self.workers: dict[bytes, FakeWorker] = {}
        self.strays: list[tuple[bytes, m.Message]] = []  # sent to peers no FakeWorker plays
        self.clients: dict[bytes, list[m.Message | Relayed]] = defaultdict(list)
        self._ids = itertools.count(1)
        self._seq: dict[tuple[str, int], int] = defaultdict(int)

    # --- the loop the socket layer would run -----------------------------------------------

    def pump(self) -> None:
        """Run due dispatching, then deliver the outbox to the fake peers."""
        for _ in range(100):
            if not (self.core.needs_dispatch or self.now >= self.core.wake_at):
                break
            self.core.dispatch_pending(self.now)
        for side, identity, frames in self.core.outbox.take():
            if side == CLIENT:
                self.clients[identity].append(self._decode_client(frames))
            else:
                msg = m.decode(_bytes(frames[0]))
                worker = self.workers.get(identity)
                if worker is not None:
                    worker.inbox.append(msg)
                else:
                    self.strays.append((identity, msg))

    @staticmethod
    def _decode_client(frames: Sequence[object]) -> m.Message | Relayed:
        header = m.decode(_bytes(frames[0]))
        if isinstance(header, m.Tokens):
            return Relayed(header, _bytes(frames[1]).decode())
        return header

    def advance(self, seconds: float) -> None:
        """Move the clock forward in heartbeat-sized steps, ticking like the real loop."""
        target = self.now + seconds
        step = self.config.broker.heartbeat_interval / 2
        while True:
            self.now = min(target, self.now + step)
            for worker in self.workers.values():
                if not worker.silent and self.core.workers.get(worker.identity) is not None:
                    self.core.worker_message(worker.identity, m.Heartbeat(), (), self.now)
            self.core.tick(self.now)
            self.pump()
            if self.now >= target:
                return

    # --- playing clients ----------------------------------------------------------------

    def submit(
        self,
        *,
        client: bytes = b"client-1",
        name: str | None = None,
        delivered: int = 0,
        first_attempt: int = 1,
        job_id: str | None = None,
        prompt: str = "hello",
        answering: bool = False,
        **job: Any,
    ) -> str:
        """Submit a job (build_job keywords) as connection `client`; returns its id."""
        built = build_job(prompt=prompt, job_id=job_id or f"job-{next(self._ids)}", **job)
        msg = m.Submit(
            job=built,
            first_attempt=first_attempt,
            delivered=delivered,
            client=name,
            answering=answering,
        )
        self.core.client_message(client, msg, self.now)
        self.pump()
        return built.id

    def cancel(self, job_id: str, client: bytes = b"client-1") -> None:
        self.core.client_message(client, m.Cancel(job_id=job_id), self.now)
        self.pump()

    def status(self, client: bytes = b"client-1") -> dict[str, Any]:
        self.core.client_message(client, m.StatusQuery(), self.now)
        self.pump()
        reply = self.clients[client][-1]
        assert isinstance(reply, m.StatusReply)
        return reply.status

    def received(self, client: bytes = b"client-1") -> list[m.Message | Relayed]:
        return self.clients[client]

    def text(self, job_id: str, client: bytes = b"client-1") -> str:
        """Text relayed to `client` for `job_id` since its last Reset."""
        out = ""
        for item in self.clients[client]:
            if isinstance(item, m.Restarted) and item.job_id == job_id:
                out = ""
            elif isinstance(item, Relayed) and item.header.job_id == job_id:
                out += item.text
        return out

    def outcome(self, job_id: str) -> m.Completed | m.Failed | None:
        """The job's final message to any client (None while it runs)."""
        for inbox in self.clients.values():
            for item in reversed(inbox):
                if isinstance(item, m.Completed | m.Failed) and item.job_id == job_id:
                    return item
        return None

    def error(self, job_id: str) -> ProviderError:
        final = self.outcome(job_id)
        assert isinstance(final, m.Failed), f"{job_id} did not fail: {final!r}"
        return ProviderError.from_wire(final.error, job_id)

    # --- playing workers ----------------------------------------------------------------

    def worker(
        self,
        provider: str,
        *,
        capacity: int = 1,
        models: list[str] | None = None,
        features: list[str] | None = None,
    ) -> FakeWorker:
        """Register a worker of `provider` (features default to what its kind honours)."""
        number = next(self._ids)
        worker = FakeWorker(f"w{number}".encode(), provider, pid=10_000 + number)
        self.workers[worker.identity] = worker
        spec = self.config.providers[provider]
        ready = m.Ready(
            provider=provider,
            kind=spec.kind,
            models=models if models is not None else list(spec.models),
            capacity=capacity,
            pid=worker.pid,
            features=features
            if features is not None
            else sorted(self.core.workers.static_features[provider]),
        )
        self.core.worker_message(worker.identity, ready, (), self.now)
        self.pump()
        return worker

    def tokens(self, worker: FakeWorker, job_id: str, *texts: str) -> None:
        attempt = worker.attempt_of(job_id)
        for text in texts:
            seq = self._seq[(job_id, attempt)]
            self._seq[(job_id, attempt)] += 1
            header = m.Tokens(job_id=job_id, attempt=attempt, seq=seq)
            payload = (header.encode(), text.encode())
            self.core.worker_message(worker.identity, header, payload, self.now)
        self.pump()

    def done(self, worker: FakeWorker, job_id: str, **result: Any) -> None:
        """Report the job's current attempt succeeded: a worker's whole `done.result`, the
        fields given as keywords over those of a plain stop (protocol.result_schema)."""
        attempt = worker.attempt_of(job_id)
        frames = self._seq[(job_id, attempt)]
        model = [d.model for d in worker.dispatches() if d.job.id == job_id][-1]
        report = stop_result(model)
        report.update(result)
        msg = m.Completed(job_id=job_id, attempt=attempt, frames=frames, result=report)
        self.core.worker_message(worker.identity, msg, (), self.now)
        self.pump()

    def fail(
        self,
        worker: FakeWorker,
        job_id: str,
        category: ErrorCategory,
        message: str = "it failed",
        **error: Any,
    ) -> None:
        """Report the job's current attempt failed (ProviderError fields as keywords)."""
        attempt = worker.attempt_of(job_id)
        wire = ProviderError(category, message, provider=worker.provider, **error).to_wire()
        msg = m.Failed(job_id=job_id, attempt=attempt, error=wire)
        self.core.worker_message(worker.identity, msg, (), self.now)
        self.pump()

    def exit(self, worker: FakeWorker) -> None:
        """The supervisor saw the worker's process exit."""
        self.core.processes_exited([worker.pid], self.now)
        self.pump()


def _bytes(frame: object) -> bytes:
    assert isinstance(frame, bytes), f"expected bytes, got {type(frame).__name__}"
    return frame
