"""The worker's hot path: no lost ZeroMQ wake-ups, and token frames as they are produced.

A real WorkerRuntime (mock or scripted backend) talks to a real ROUTER socket that plays the
broker, so these tests see exactly the frames a broker would. No wall-clock assertions: a lost
wake-up shows up as a wait that timed out with a message waiting (`Readiness.missed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import zmq

from protocol import messages as m
from protocol.client import build_job
from protocol.job import Job
from protocol.readiness import Readiness
from protocol.transport import SocketOptions
from tests.harness import run_async
from workers.backend import Backend, Finish, StreamEvent, TextDelta
from workers.providers.mock import MockBackend
from workers.runtime import WorkerRuntime
from workers.spec import ProviderSpec

CTX: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()


@contextlib.contextmanager
def router(endpoint: str = "tcp://127.0.0.1", rcvhwm: int = 1000) -> Iterator[tuple[Any, str]]:
    sock: zmq.Socket[bytes] = CTX.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    if endpoint.startswith("tcp"):
        endpoint = f"{endpoint}:{sock.bind_to_random_port(endpoint)}"
    else:
        sock.bind(endpoint)
    try:
        yield sock, endpoint
    finally:
        sock.close(linger=0)


async def recv(sock: zmq.Socket[bytes], timeout: float = 10.0) -> list[bytes]:
    """The next message on the fake broker's socket (polled without blocking the loop)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.001)
    raise AssertionError("the worker sent nothing")


@run_async
async def test_message_arriving_during_a_send_wakes_the_receiver() -> None:
    """The send that consumes the FD's edge must not leave the receiver asleep."""
    with router() as (broker, endpoint):
        dealer: zmq.Socket[bytes] = CTX.socket(zmq.DEALER)
        dealer.connect(endpoint)
        link = Readiness(dealer)
        try:
            await link.send([b"hello"])
            identity = (await recv(broker))[0]
            for _ in range(20):
                waiting = asyncio.ensure_future(link.wait(zmq.POLLIN, 0.5))
                await asyncio.sleep(0)  # the receiver is now parked on the FD
                broker.send_multipart([identity, b"dispatch"])
                select.select([link.fd], [], [], 5)  # the message's signal reached the FD...
                time.sleep(0.002)  # ...and libzmq's command throttle lets a send read it
                assert link.try_send([b"token"])  # this send consumes the FD's edge
                assert await waiting
                assert link.drain() == [[b"dispatch"]]
                await recv(broker)
            assert link.missed == 0
        finally:
            link.close()


@run_async
async def test_a_wait_after_an_empty_drain_parks_without_reading_events_and_still_wakes() -> None:
    """After a receive that found nothing libzmq has handled its commands, so the FD signals
    the next message: the wait skips the ZMQ_EVENTS read (a syscall or two) and still wakes
    for every message, within its timeout."""
    with router() as (broker, endpoint):
        dealer: zmq.Socket[bytes] = CTX.socket(zmq.DEALER)
        dealer.connect(endpoint)
        link = Readiness(dealer)
        reads = 0
        real = link._events

        def counted() -> int:
            nonlocal reads
            reads += 1
            return real()

        link._events = counted  # type: ignore[method-assign]
        try:
            await link.send([b"hello"])
            identity = (await recv(broker))[0]
            for k in range(20):
                assert link.drain() == []  # nothing yet: the link is known quiet
                before = reads
                waiting = asyncio.ensure_future(link.wait(zmq.POLLIN, 5))
                await asyncio.sleep(0)
                assert reads == before  # parked on the FD without a read
                broker.send_multipart([identity, b"m%d" % k])
                assert await waiting  # woken by the FD, not by the 5 s timeout
                assert link.drain() == [[b"m%d" % k]]
            assert link.missed == 0
        finally:
            link.close()


class Burst(Backend):
    """Yields "a" and "b" in one loop turn (like deltas parsed from one HTTP read), then "c"
    and "d" in a turn of its own, then "e" in another (like separate reads)."""

    kind = "mock"

    async def generate(self, job: Job, model: str, attempt: int) -> AsyncIterator[StreamEvent]:
        yield TextDelta("a")
        yield TextDelta("b")
        await asyncio.sleep(0)
        yield TextDelta("c")
        yield TextDelta("d")
        await asyncio.sleep(0)
        yield TextDelta("e")
        yield Finish(reason="stop")


def spec(**options: Any) -> ProviderSpec:
    return ProviderSpec(name="mock", kind="mock", models=["echo"], options=options, capacity=64)


async def started(rt: WorkerRuntime, broker: zmq.Socket[bytes]) -> tuple[asyncio.Task[None], bytes]:
    task = asyncio.create_task(rt.run())
    frames = await recv(broker)
    assert isinstance(m.decode(frames[1]), m.Ready)
    return task, frames[0]


def mock_job() -> Job:
    return build_job(model="mock:echo", prompt="x")


def dispatch(job: Job) -> bytes:
    return m.Dispatch(job=job, attempt=1, model="echo").encode()


async def stop(rt: WorkerRuntime, task: asyncio.Task[None]) -> None:
    rt.shutdown_grace = 0.1
    rt.stopping.set()
    await asyncio.wait_for(task, 10)


async def token_frames(broker: zmq.Socket[bytes]) -> tuple[list[tuple[int, str]], m.Completed]:
    """The (seq, text) of every token frame the worker sends, up to its done message."""
    texts: list[tuple[int, str]] = []
    while True:
        frames = await recv(broker)
        msg = m.decode(frames[1])
        if isinstance(msg, m.Tokens):
            texts.append((msg.seq, frames[2].decode()))
        elif isinstance(msg, m.Completed):
            return texts, msg


@run_async
async def test_text_of_one_loop_turn_is_one_frame_and_each_turn_its_own() -> None:
    """What arrived together goes out together; nothing waits for text still to come, so a
    delta after a pause is its own frame (streaming stays token by token when tokens trickle).
    The attempt's first text goes out at once, before the rest of its turn is produced."""
    with router() as (broker, endpoint):
        rt = WorkerRuntime(spec(), endpoint, backend=Burst(spec()))
        task, identity = await started(rt, broker)
        try:
            broker.send_multipart([identity, dispatch(mock_job())])
            texts, done = await token_frames(broker)
            assert texts == [(0, "a"), (1, "b"), (2, "cd"), (3, "e")]
            assert done.frames == 4
        finally:
            await stop(rt, task)


class Together(Backend):
    """Every job waits until `jobs` of them run, then all yield "<name>1" and "<name>2" in the
    same loop turn (like the reads of many busy connections handled in one turn)."""

    kind = "mock"

    def __init__(self, spec: ProviderSpec, jobs: int) -> None:
        super().__init__(spec)
        self.jobs, self.started, self.go = jobs, 0, asyncio.Event()

    async def generate(self, job: Job, model: str, attempt: int) -> AsyncIterator[StreamEvent]:
        self.started += 1
        if self.started == self.jobs:
            self.go.set()
        await self.go.wait()
        name = job.metadata["name"]
        yield TextDelta(f"{name}1")
        yield TextDelta(f"{name}2")
        await asyncio.sleep(0)  # still streaming when the other job's text comes
        yield Finish(reason="stop")


@run_async
async def test_first_text_goes_at_once_only_when_nothing_else_waits_in_the_turn() -> None:
    """Under load (other jobs' text pending in the turn) a first text costs no frame of its
    own: it is merged with the rest of its turn like any other text."""
    with router() as (broker, endpoint):
        rt = WorkerRuntime(spec(), endpoint, backend=Together(spec(), 2))
        task, identity = await started(rt, broker)
        try:
            for name in ("a", "b"):
                job = build_job(model="mock:echo", prompt="x", metadata={"name": name})
                broker.send_multipart([identity, dispatch(job)])
            frames: dict[str, list[tuple[int, str]]] = {}
            done = 0
            ids: dict[str, str] = {}
            while done < 2:
                raw = await recv(broker)
                msg = m.decode(raw[1])
                if isinstance(msg, m.Tokens):
                    text = raw[2].decode()
                    ids.setdefault(msg.job_id, text[0])
                    frames.setdefault(ids[msg.job_id], []).append((msg.seq, text))
                elif isinstance(msg, m.Completed):
                    done += 1
            first, second = sorted(frames.values(), key=len, reverse=True)
            name = first[0][1][0]
            assert first == [(0, f"{name}1"), (1, f"{name}2")]  # alone in its turn at first
            other = second[0][1][0]
            assert second == [(0, f"{other}1{other}2")]
        finally:
            await stop(rt, task)


def test_a_lone_attempt_yields_the_core_after_its_first_frame_and_a_busy_worker_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The yield that lets ZeroMQ's I/O thread send a first token at once (see push_text):
    once per lone attempt, never while other attempts run on the worker."""
    yields: list[int] = []
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(1))
    asyncio.run(_yields(yields))


async def _yields(yields: list[int]) -> None:
    with router() as (broker, endpoint):
        rt = WorkerRuntime(spec(token_count=3), endpoint)
        task, identity = await started(rt, broker)
        try:
            broker.send_multipart([identity, dispatch(mock_job())])
            await token_frames(broker)
            assert yields == [1]
            rt.running[("busy", 1)] = object()  # type: ignore[assignment]  # another attempt
            broker.send_multipart([identity, dispatch(mock_job())])
            await token_frames(broker)
            assert yields == [1]  # two attempts in flight: no yield
            del rt.running[("busy", 1)]
        finally:
            await stop(rt, task)


@run_async
async def test_mock_tokens_stay_one_frame_each_without_a_delay() -> None:
    """A scripted token_count means that many frames, even with token_delay 0."""
    with router() as (broker, endpoint):
        rt = WorkerRuntime(spec(token_count=5), endpoint)
        task, identity = await started(rt, broker)
        try:
            broker.send_multipart([identity, dispatch(mock_job())])
            texts, done = await token_frames(broker)
            assert texts == [(i, f"t{i} ") for i in range(5)]
            assert done.frames == 5
        finally:
            await stop(rt, task)


@run_async
async def test_text_queued_behind_a_blocked_send_is_merged_in_order() -> None:
    """A broker that does not read: text waits in one frame per job, none lost or reordered."""
    endpoint = f"inproc://hot-path-{time.monotonic_ns()}"
    with router(endpoint, rcvhwm=1) as (broker, endpoint):
        opts = SocketOptions(sndhwm=1, rcvhwm=1)
        count = 2000
        backend = MockBackend(spec(token_count=count))
        rt = WorkerRuntime(spec(), endpoint, backend=backend, socket_options=opts)
        task, identity = await started(rt, broker)
        try:
            job = mock_job()
            broker.send_multipart([identity, dispatch(job)])
            while backend.tokens_produced < count or rt.running:
                await asyncio.sleep(0.01)  # the worker produces everything; we read nothing
            seqs, text = [], []
            while True:
                frames = await recv(broker)
                msg = m.decode(frames[1])
                if isinstance(msg, m.Tokens):
                    seqs.append(msg.seq)
                    text.append(frames[2].decode())
                elif isinstance(msg, m.Completed):
                    break
            assert "".join(text) == "".join(f"t{i} " for i in range(count))
            assert seqs == list(range(len(seqs)))
            assert msg.frames == len(seqs)
            assert len(seqs) < count  # merged while the send waited for room
        finally:
            await stop(rt, task)


@run_async
async def test_worker_never_sleeps_with_a_dispatch_waiting() -> None:
    """Dispatches arrive while the worker streams other jobs' tokens: no wait times out."""
    jobs = 300
    with router() as (broker, endpoint):
        options = {"token_count": 20}
        rt = WorkerRuntime(spec(**options), endpoint, backend=MockBackend(spec(**options)))
        task, identity = await started(rt, broker)
        try:
            sent = done = 0
            while done < jobs:
                if sent < jobs and sent - done < 8:
                    broker.send_multipart([identity, dispatch(mock_job())])
                    sent += 1
                frames = await recv(broker)
                if isinstance(m.decode(frames[1]), m.Completed):
                    done += 1
            assert rt.stalls == 0
        finally:
            await stop(rt, task)
