"""Batch scale: many mock prompts (20 ms to the first token) through one client window of 512.

Ideal wall time is what a perfect dispatcher would take: ceil(jobs / window) waves of the
mock's own generation time. Peak RSS of broker and client is sampled while the batch runs; the
broker's CPU per job at each size says whether its per-job cost grows with the run's length.
(`Client.map` drives it until the batch runner's library API is on main.)
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import CpuMeter, Row, worker_pids
from protocol import eventloop
from protocol.client import AsyncClient
from tests.harness import BrokerProcess

FIRST_TOKEN = 0.02
WINDOW = 512
TOKENS = 4


class PeakRss:
    """Samples the RSS of some processes every 0.1 s in a thread; keeps each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {k: psutil.Process(p) for k, p in pids.items()}
        self.peak = {k: 0 for k in pids}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                self.peak[name] = max(self.peak[name], proc.memory_info().rss)
            except psutil.NoSuchProcess:
                pass

    def _run(self) -> None:
        # Sample before the first wait and again at done(): a smoke-sized batch can end inside
        # one 0.1 s period, and a peak of 0 MB would be a lie.
        self._sample()
        while not self.stop.wait(0.1):
            self._sample()

    def done(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        self._sample()
        return {k: round(v / 2**20, 1) for k, v in self.peak.items()}


async def batch(endpoint: str, jobs: int) -> float:
    spec = {"model": "mock:echo", "prompt": "x", "metadata": {"mock": {"token_count": TOKENS}}}
    async with AsyncClient(endpoint) as client:
        started = time.perf_counter()
        failed = 0
        async for outcome in client.map((spec for _ in range(jobs)), concurrency=WINDOW):
            failed += isinstance(outcome, Exception)
        if failed:
            raise RuntimeError(f"{failed} of {jobs} batch jobs failed")
        return time.perf_counter() - started


def run(sizes: tuple[int, ...] = (1_000, 10_000, 100_000)) -> list[Row]:
    rows: list[Row] = []
    me = os.getpid()
    per_job: dict[int, float] = {}
    client_mb: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        mock = {
            "kind": "mock",
            "capacity": WINDOW // 2,
            "replicas": 2,
            "options": {"first_token_delay": FIRST_TOKEN},
        }
        bp = BrokerProcess(Path(tmp), {"mock": mock})
        bp.log_level = "info"  # what users run
        bp.start()
        try:
            bp.wait_workers(2)
            assert bp.proc is not None
            eventloop.run(batch(bp.client_endpoint, WINDOW))  # warm-up
            for jobs in sizes:
                meter = CpuMeter(
                    {"client": me, "broker": bp.proc.pid, "worker": worker_pids(bp.proc.pid)}
                )
                rss = PeakRss({"broker": bp.proc.pid, "client": me})
                wall = eventloop.run(batch(bp.client_endpoint, jobs))
                peak = rss.done()
                cpu = meter.ms_per_job(jobs)
                per_job[jobs] = cpu["broker"]
                client_mb[jobs] = peak["client"]
                ideal = math.ceil(jobs / WINDOW) * FIRST_TOKEN
                rows.append(
                    Row(
                        "batch scale",
                        f"wall s, {jobs} jobs (window {WINDOW})",
                        "llmrelay Client.map",
                        "ideal",
                        wall,
                        ideal,
                        higher_is_better=False,
                        cpu_ms_per_job=cpu,
                        target="<= 1.3x" if jobs == 10_000 else "",
                    )
                )
                for name, mb in peak.items():
                    rows.append(
                        Row(
                            "batch scale",
                            f"peak RSS MB, {name}, {jobs} jobs",
                            f"llmrelay {name}",
                            "200 MB budget",
                            mb,
                            200.0,
                            higher_is_better=False,
                            target="<= 1x" if name == "broker" else "",
                        )
                    )
        finally:
            bp.stop()
    first = min(per_job)
    for jobs, ms in per_job.items():
        if jobs != first:
            rows.append(
                Row(
                    "batch scale",
                    f"broker CPU ms/job, {jobs} vs {first} jobs",
                    f"{jobs} jobs",
                    f"{first} jobs",
                    ms,
                    per_job[first],
                    higher_is_better=False,
                    target="within 1.2x",
                )
            )
    return rows
