"""Broker ceiling: a minimal pyzmq ROUTER-to-ROUTER relay vs the llmrelay broker with mock
workers, moving the same jobs with the same frames per job.

Both sides get the same cheap load generator (a raw DEALER keeping `window` jobs in flight) so
the figure is the relay's or the broker's, not the client library's. The relay's worker answers
each job with `frames` messages; the broker's mock workers emit `frames - 1` token frames and a
done message, which is `frames` messages too. The relay, its worker and the load generator
report themselves busy to `protocol.io_threads` once their sockets exist, as llmrelay's
processes do with this many jobs in flight, so their ZeroMQ I/O threads run under the same
scheduling policy as the broker's.

    python -m benchmarks.ceiling relay --front tcp://127.0.0.1:P --back tcp://127.0.0.1:Q
    python -m benchmarks.ceiling worker --connect tcp://127.0.0.1:Q --frames 10
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from benchmarks.common import CpuMeter, Row, child, free_port, worker_pids
from protocol import messages as m
from protocol.client import build_job
from protocol.io_threads import IO_THREADS
from protocol.job import Job
from protocol.transport import SocketOptions, tune_socket
from tests.harness import BrokerProcess


def _busy() -> None:
    """Batch this process's ZeroMQ I/O threads, as llmrelay's own under load (see above)."""
    IO_THREADS.report(_busy, 256)


def relay(front: str, back: str) -> None:
    """Clients on `front`, workers on `back`; jobs go round-robin, replies go straight back."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    clients, workers = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for sock in (clients, workers):
        tune_socket(sock, SocketOptions())  # the broker's limits: nothing dropped at the HWM
    clients.bind(front)
    workers.bind(back)
    _busy()
    ready: list[bytes] = []
    waiting: list[list[zmq.Frame]] = []
    turn = 0
    poller = zmq.Poller()
    poller.register(clients, zmq.POLLIN)
    poller.register(workers, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            for _ in range(1000):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if sock is workers:
                    if len(frames) == 2:  # [worker, "ready"]
                        ready.append(frames[0].bytes)
                        while waiting:  # jobs that came before any worker
                            workers.send_multipart([ready[0], *waiting.pop()], copy=False)
                    else:  # [worker, client, payload]
                        clients.send_multipart(frames[1:], copy=False)
                elif ready:
                    turn = (turn + 1) % len(ready)
                    workers.send_multipart([ready[turn], *frames], copy=False)
                else:
                    waiting.append(frames)


def worker(connect: str, frames: int) -> None:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    tune_socket(sock, SocketOptions())
    sock.connect(connect)
    _busy()
    sock.send(b"ready")
    while True:
        client, _job = sock.recv_multipart()
        for i in range(frames):
            sock.send_multipart([client, b"done" if i == frames - 1 else b"token text"])


def drive(endpoint: str, jobs: int, window: int, submit: Any, kind: Any) -> tuple[float, int]:
    """Keep `window` jobs in flight until `jobs` are done; returns (wall seconds, frames).

    `kind(reply)` says what a reply is: "frame" (a token frame), "done" (the job's last frame)
    or anything else (not counted, e.g. the broker's acknowledgements).
    """
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    tune_socket(sock, SocketOptions())
    sock.connect(endpoint)
    _busy()
    try:
        started = time.perf_counter()
        sent = done = frames = 0
        while sent < min(window, jobs):
            sock.send_multipart(submit(sent))
            sent += 1
        while done < jobs:
            if not sock.poll(30_000):
                raise TimeoutError(f"no reply for 30 s after {done} of {jobs} jobs")
            while True:
                try:
                    reply = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                what = kind(reply)
                if what not in ("frame", "done"):
                    continue
                frames += 1
                if what == "done":
                    done += 1
                    if sent < jobs:
                        sock.send_multipart(submit(sent))
                        sent += 1
        return time.perf_counter() - started, frames
    finally:
        sock.close(linger=0)


@contextlib.contextmanager
def relay_processes(frames: int) -> Iterator[tuple[str, dict[str, Any]]]:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    py = [sys.executable, "-m", "benchmarks.ceiling"]
    with child([*py, "relay", "--front", front, "--back", back]) as r:
        time.sleep(0.3)  # bound before the worker connects (ZeroMQ reconnects anyway)
        with child([*py, "worker", "--connect", back, "--frames", str(frames)]) as w:
            time.sleep(0.5)
            yield front, {"client": -1, "relay": r.pid, "worker": w.pid}


def relay_kind(reply: list[bytes]) -> str:
    return "done" if reply[-1] == b"done" else "frame"


def broker_kind(reply: list[bytes]) -> str:
    if len(reply) == 2:
        return "frame"  # header + text
    return "done" if isinstance(m.decode(reply[0]), m.Completed) else "other"


def run(
    jobs: int = 20_000, window: int = 256, frames_per_job: tuple[int, ...] = (10, 1)
) -> list[Row]:
    rows: list[Row] = []
    me = os.getpid()
    warm = min(jobs, 2000)
    for frames in frames_per_job:
        wire = build_job(
            model="mock:echo", prompt="x", metadata={"mock": {"token_count": frames - 1}}
        ).to_wire()

        def submit(i: int, wire: dict[str, Any] = wire, frames: int = frames) -> list[bytes]:
            job = Job.from_wire({**wire, "id": f"j{frames}x{i:09d}"})
            return [m.Submit(job=job, client="ceiling-bench").encode()]

        with relay_processes(frames) as (front, procs):
            procs["client"] = me
            drive(front, warm, window, lambda i: [b"job"], relay_kind)
            meter = CpuMeter(procs)
            wall_r, frames_r = drive(front, jobs, window, lambda i: [b"job"], relay_kind)
            cpu_r = meter.ms_per_job(jobs)
        with tempfile.TemporaryDirectory() as tmp:
            mock = {"kind": "mock", "capacity": window // 2, "replicas": 2}
            limit = jobs + warm + window
            bp = BrokerProcess(
                Path(tmp), {"mock": mock}, max_queued_per_client=limit, max_queued=limit
            )
            bp.log_level = "info"  # what users run
            bp.start()
            try:
                bp.wait_workers(2)
                assert bp.proc is not None
                drive(bp.client_endpoint, warm, window, lambda i: submit(i + jobs), broker_kind)
                meter = CpuMeter(
                    {"client": me, "broker": bp.proc.pid, "worker": worker_pids(bp.proc.pid)}
                )
                wall_b, frames_b = drive(bp.client_endpoint, jobs, window, submit, broker_kind)
                cpu_b = meter.ms_per_job(jobs)
            finally:
                bp.stop()
        label = f"{jobs} jobs x {frames} frame{'s' if frames > 1 else ''}, {window} in flight"
        for unit, got, base in (
            ("frames/s", frames_b / wall_b, frames_r / wall_r),
            ("jobs/s", jobs / wall_b, jobs / wall_r),
        ):
            rows.append(
                Row(
                    "broker ceiling",
                    f"{unit} ({label})",
                    "llmrelay broker + mock",
                    "pyzmq relay",
                    got,
                    base,
                    cpu_ms_per_job=cpu_b,
                    target=">= 0.5x" if unit == "frames/s" else "",
                )
            )
        rows.append(
            Row(
                "broker ceiling",
                f"jobs/s ({label})",
                "pyzmq relay",
                "pyzmq relay",
                jobs / wall_r,
                jobs / wall_r,
                cpu_ms_per_job=cpu_r,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    r = sub.add_parser("relay")
    r.add_argument("--front", required=True)
    r.add_argument("--back", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--connect", required=True)
    w.add_argument("--frames", type=int, default=10)
    args = parser.parse_args()
    if args.role == "relay":
        relay(args.front, args.back)
    else:
        worker(args.connect, args.frames)


if __name__ == "__main__":
    main()
