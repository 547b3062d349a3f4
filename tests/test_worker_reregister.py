"""A worker the broker forgot starts over cleanly: nothing of a dropped attempt is reported.

A real WorkerRuntime talks to a real ROUTER socket that plays the broker. When the broker
forgets the worker (it restarted, or declared it lost), the worker cancels its jobs and
registers again; the broker may then hand it the same (job, attempt) again, since a client
resubmitting after a broker restart continues at the attempt it last saw. A cancelled task
may take a while to end (a backend awaiting its cleanup): its late `cancelled` must not
answer the redispatch, and the redispatch must not pass for a duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import zmq

from protocol import messages as m
from protocol.job import Job
from tests.test_worker_hot_path import (
    mock_job,
    recv,
    router,
    run_async,
    spec,
    started,
    stop,
)
from workers.backend import Backend, Finish, StreamEvent, TextDelta
from workers.runtime import WorkerRuntime

TOKENS = ["a", "b", "c"]


class Lingering(Backend):
    """Its first attempt streams one token then waits; cancelled, it lingers in its cleanup
    until `release` is set. Later attempts stream every token and finish."""

    kind = "mock"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.release = asyncio.Event()
        self.calls = 0
        self.cancelled = 0
        self.ended = False  # the cancelled first attempt finished its cleanup

    async def generate(self, job: Job, model: str, attempt: int) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        if self.calls == 1:
            yield TextDelta("old")
            try:
                await asyncio.Event().wait()  # until cancelled
            except asyncio.CancelledError:
                self.cancelled += 1
                await self.release.wait()  # e.g. closing an HTTP response
                self.ended = True
                raise
        for token in TOKENS:
            await asyncio.sleep(0)  # a turn each: one frame per token (see outgoing.py)
            yield TextDelta(token)
        yield Finish(reason="stop")


async def next_from(
    broker: zmq.Socket[bytes], identity: bytes | None, timeout: float
) -> tuple[bytes, m.Message, list[bytes]] | None:
    """The next message (from `identity` if given; heartbeats and pongs skipped), or None."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            frames = await recv(broker, timeout=end - time.monotonic())
        except AssertionError:
            return None
        msg = m.decode(frames[1])
        if isinstance(msg, m.Heartbeat | m.Pong):
            continue
        if identity is None or frames[0] == identity:
            return frames[0], msg, frames
    return None


async def reregistered(broker: zmq.Socket[bytes], old: bytes) -> bytes:
    """Wait for `ready` from a new identity; return it."""
    while True:
        got = await next_from(broker, None, timeout=10.0)
        assert got is not None, "the worker did not register again"
        identity, msg, _ = got
        if isinstance(msg, m.Ready) and identity != old:
            return identity


@run_async
async def test_dropped_attempts_late_cancel_never_answers_its_redispatch() -> None:
    with router() as (broker, endpoint):
        backend = Lingering(spec())
        rt = WorkerRuntime(spec(), endpoint, backend=backend)
        task, old = await started(rt, broker)
        try:
            job = mock_job()
            dispatch = m.Dispatch(job=job, attempt=1, model="echo").encode()
            broker.send_multipart([old, dispatch])
            got = await next_from(broker, old, timeout=10.0)
            assert got is not None and isinstance(got[1], m.Tokens)
            # The broker forgot us (as a restarted broker does): register again...
            forget = m.Disconnect(reason="unknown worker: register again", broker="new-run")
            broker.send_multipart([old, forget.encode()])
            new = await reregistered(broker, old)
            assert backend.cancelled == 1 and not backend.release.is_set()  # still lingering
            # ...and get the same job and attempt again while the old task still winds down.
            broker.send_multipart([new, dispatch])
            texts: list[tuple[int, str]] = []
            final: m.Message | None = None
            while final is None:
                got = await next_from(broker, new, timeout=5.0)
                if got is None:
                    break
                _, msg, frames = got
                if isinstance(msg, m.Tokens):
                    texts.append((msg.seq, frames[2].decode()))
                elif isinstance(msg, m.Completed | m.Failed):
                    final = msg
            backend.release.set()  # the old task ends now
            while not backend.ended:
                await asyncio.sleep(0.01)
            late = []
            while (got := await next_from(broker, None, timeout=0.3)) is not None:
                late.append(got[1])
            assert isinstance(final, m.Completed), f"redispatch answered {final!r}, late: {late!r}"
            assert texts == list(enumerate(TOKENS)) and final.frames == len(TOKENS)
            assert late == [], "a dropped attempt reported after the worker registered again"
            assert not rt.running
        finally:
            backend.release.set()
            await stop(rt, task)


@run_async
async def test_a_new_broker_instance_id_on_a_ping_makes_the_worker_register_again() -> None:
    with router() as (broker, endpoint):
        backend = Lingering(spec())
        rt = WorkerRuntime(spec(), endpoint, backend=backend)
        task, first = await started(rt, broker)
        try:
            broker.send_multipart([first, m.Ping(broker="run-1").encode()])
            got = await recv(broker)
            assert isinstance(m.decode(got[1]), m.Pong)  # the run it registered with
            dispatch = m.Dispatch(job=mock_job(), attempt=1, model="echo")
            broker.send_multipart([first, dispatch.encode()])
            got = await next_from(broker, first, timeout=10.0)
            assert got is not None and isinstance(got[1], m.Tokens)
            # The same endpoint now answers as another run (restarted within ZeroMQ's
            # reconnect, so the socket never noticed): the job is dropped, we register again.
            broker.send_multipart([first, m.Ping(broker="run-2").encode()])
            second = await reregistered(broker, first)
            assert not rt.running
            backend.release.set()
            while not backend.ended:
                await asyncio.sleep(0.01)
            broker.send_multipart([second, m.Ping(broker="run-2").encode()])
            while True:  # the same run again: answered, no new registration
                frames = await recv(broker)
                msg = m.decode(frames[1])
                assert not isinstance(msg, m.Ready | m.Failed | m.Tokens), msg
                if isinstance(msg, m.Pong):
                    break
            assert frames[0] == second and rt.link.reconnects == 1
            assert rt.broker_instance == "run-2"
        finally:
            backend.release.set()
            await stop(rt, task)
