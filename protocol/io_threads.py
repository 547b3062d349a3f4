"""This process's ZeroMQ I/O threads run SCHED_BATCH while it has several jobs in flight.

A Python thread's send hands the message to its context's I/O thread, which writes it to the
socket. Woken that way, an ordinary I/O thread preempts the sender at once and hands the core
back after its one write: a worker relaying tokens for many jobs switched threads for every
frame (21 context switches per job across client, broker and worker at concurrency 64 on the
latency bench's stack, everything but the fake server on one core). A SCHED_BATCH thread is
not given the core on wake-up, only its fair share (Linux's fair scheduler): it runs when the
sender blocks, at the end of its event-loop turn, and writes everything queued by then in one
go: 2 switches per job there.

With one job in flight the same deferral costs latency instead (the first token's frame
waits until the worker has parsed the rest of its read: p50 TTFT at concurrency 1 +0.1 and
+0.8 ms in two runs with the threads always batched). So the policy follows the load:
SCHED_BATCH from BUSY jobs in flight (a client's pending jobs, the broker's jobs, a worker's
attempts; summed over the process), the normal policy below. Measured against the normal
policy throughout, one run each (`python -m benchmarks.run --only latency --no-peers`, with
LLMRELAY_ZMQ_IO_POLICY unset and =normal): one openai worker 664 -> 1,184 jobs/s at
concurrency 64 (CPU ms per job: client 0.35 -> 0.14, broker 0.46 -> 0.20, worker 0.68 ->
0.49), failover 547 -> 1,038 jobs/s, p50 TTFT at concurrency 1 +0.55 -> +0.33 ms over direct
httpx (noise: no worse). Only the ZeroMQ threads change, never the caller's.
`LLMRELAY_ZMQ_IO_POLICY=normal` keeps the normal policy throughout; so does a platform without
SCHED_BATCH or one that refuses it.
"""

from __future__ import annotations

import os
from pathlib import Path

from protocol.constants import IO_POLICY_ENV

BUSY = 2  # jobs in flight from which the I/O threads batch
_TASKS = Path("/proc/self/task")


class IoThreads:
    def __init__(self) -> None:
        self.enabled = os.environ.get(IO_POLICY_ENV, "batch").strip().lower() == "batch" and (
            hasattr(os, "SCHED_BATCH") and _TASKS.is_dir()
        )
        self.batch = False  # the policy the threads have now
        self.switches = 0
        self._load: dict[int, int] = {}  # jobs in flight, by reporter (several clients share)
        self._tids: list[int] = []

    def report(self, owner: object, jobs: int) -> None:
        """`owner` (a client, the broker, a worker) has `jobs` in flight now."""
        if not self.enabled:
            return
        load = self._load
        if jobs:
            load[id(owner)] = jobs
        else:
            load.pop(id(owner), None)
        busy = sum(load.values()) >= BUSY
        if busy != self.batch:
            self._switch(busy)

    def _switch(self, batch: bool) -> None:
        policy = os.SCHED_BATCH if batch else os.SCHED_OTHER
        for attempt in range(2):
            if not self._tids:
                self._tids = _io_thread_ids()
                if not self._tids:
                    return  # no socket yet, so no I/O thread: asked again on the next report
            try:
                for tid in self._tids:
                    os.sched_setscheduler(tid, policy, os.sched_param(0))
            except ProcessLookupError:  # a context was closed and another one started
                self._tids = []
                if attempt == 0:
                    continue
                return
            except OSError:  # not allowed here (a sandbox): stay as we are
                self.enabled = False
                return
            self.batch = batch
            self.switches += 1
            return


def _io_thread_ids() -> list[int]:
    """libzmq names its I/O threads ZMQbg/IO/<n> (and its reaper ZMQbg/Reaper)."""
    tids = []
    for task in _TASKS.iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        if name.startswith("ZMQbg/IO/"):
            tids.append(int(task.name))
    return tids


IO_THREADS = IoThreads()  # one per process: the I/O threads are the process's
