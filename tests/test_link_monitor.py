"""A dropped connection to the broker is noticed at once (the socket monitor), on both peers.

The fake broker is a real ROUTER socket; "the broker process died" is that socket closing,
and "a new broker" a new socket bound on the same port. ZeroMQ alone would reconnect the
old DEALER silently (same identity) and neither peer would know; the liveness windows are
set out of reach here, so only the monitor can explain what the peers do next. A frozen
broker (SIGSTOP) closes nothing: there the ZMTP heartbeats are what ends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import zmq

from protocol import messages as m
from protocol.async_client import AsyncClient
from tests.test_worker_hot_path import CTX, recv, router, run_async, spec, started, stop
from tests.test_worker_reregister import Lingering, reregistered
from workers.procutil import die_with_parent_preexec
from workers.runtime import WorkerRuntime

NEVER_SILENT = 1_000_000  # liveness beats: the silence path cannot fire during a test


@contextlib.contextmanager
def rebound(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    """A new broker socket on the same endpoint."""
    sock: zmq.Socket[bytes] = CTX.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    for _ in range(250):  # the old socket's listener closes in libzmq's I/O thread
        try:
            sock.bind(endpoint)
            break
        except zmq.ZMQError:
            time.sleep(0.02)
    else:
        sock.bind(endpoint)  # raises with the reason
    try:
        yield sock
    finally:
        sock.close(linger=0)


@run_async
async def test_a_dropped_connection_makes_the_worker_register_again_at_once() -> None:
    """The broker's socket goes away (its process died) and a new one binds the same port.

    ZeroMQ would reconnect the old socket silently; the socket monitor saw the drop, so the
    worker registers on the new one without waiting for its silence window (out of reach
    here) or for a `disconnect`.
    """
    with router() as (broker, endpoint):
        rt = WorkerRuntime(spec(), endpoint, liveness=NEVER_SILENT, backend=Lingering(spec()))
        task, first = await started(rt, broker)
        try:
            broker.send_multipart([first, m.Ping(broker="run-1").encode()])
            assert isinstance(m.decode((await recv(broker))[1]), m.Pong)
            broker.close(linger=0)
            with rebound(endpoint) as replacement:
                identity = await reregistered(replacement, first)
                assert identity != first and rt.link.drops == 1
                # The new run's id is the one it registered with, not a second restart.
                replacement.send_multipart([identity, m.Ping(broker="run-2").encode()])
                while True:
                    frames = await recv(replacement)
                    msg = m.decode(frames[1])
                    assert not isinstance(msg, m.Ready), "registered twice with one run"
                    if isinstance(msg, m.Pong):
                        break
                assert rt.link.reconnects == 1 and rt.broker_instance == "run-2"
        finally:
            await stop(rt, task)


@run_async
async def test_a_dropped_connection_makes_the_client_resubmit_at_once() -> None:
    with router() as (broker, endpoint):
        async with AsyncClient(endpoint, liveness=NEVER_SILENT, connect_timeout=60) as client:
            stream = client.stream(model="mock:echo", prompt="x", job_id="drop-1")
            reader = asyncio.ensure_future(stream.__anext__())
            while True:
                frames = await recv(broker)
                msg = m.decode(frames[1])
                if isinstance(msg, m.Submit):
                    break
            first = frames[0]
            accepted = m.Accepted(job_id="drop-1", candidates=["mock:echo"], broker="run-1")
            broker.send_multipart([first, accepted.encode()])
            await asyncio.sleep(0.1)
            broker.close(linger=0)
            with rebound(endpoint) as replacement:
                end = time.monotonic() + 10
                while True:  # pings come meanwhile; the resubmission must come too
                    assert time.monotonic() < end, "the client did not resubmit"
                    frames = await recv(replacement)
                    msg = m.decode(frames[1])
                    if isinstance(msg, m.Submit):
                        break
                assert msg.job.id == "drop-1" and frames[0] != first  # new socket, resubmitted
                assert client.link.drops == 1 and client.reconnects == 1
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


FROZEN_BROKER = """
import sys, time, zmq
sock = zmq.Context().socket(zmq.ROUTER)
port = sock.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
while True:
    time.sleep(60)
"""


@run_async
async def test_a_frozen_broker_is_noticed_by_zmtp_heartbeats() -> None:
    """A broker process stopped with SIGSTOP keeps its TCP connection (its kernel still
    answers), so only the ZMTP heartbeat (transport.tune_socket) can tell: its PING goes
    unanswered, libzmq closes the connection, the monitor reports it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FROZEN_BROKER],
        stdout=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=die_with_parent_preexec(),
    )
    try:
        assert proc.stdout is not None
        endpoint = f"tcp://127.0.0.1:{int(proc.stdout.readline())}"
        rt = WorkerRuntime(spec(), endpoint, liveness=NEVER_SILENT, backend=Lingering(spec()))
        task = asyncio.create_task(rt.run())
        try:
            while rt.link.monitor is None or not rt.link.monitor.established:
                await asyncio.sleep(0.01)
            os.kill(proc.pid, signal.SIGSTOP)
            end = time.monotonic() + 30  # the heartbeat times out after about 4 s
            while rt.link.drops == 0:
                assert time.monotonic() < end, "the frozen broker was never noticed"
                await asyncio.sleep(0.05)
            assert rt.link.reconnects >= 1 or rt.link.reconnect_reason is not None
        finally:
            await stop(rt, task)
    finally:
        proc.kill()
        proc.wait(timeout=10)
