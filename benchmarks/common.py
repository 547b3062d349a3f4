"""What every benchmark shares: rows of figures beside their baseline, CPU per process, helpers.

Every row is measured against its baseline in the same run (the machine is shared, so only
ratios taken side by side mean anything). CPU is counted per process from the kernel's own
accounting (psutil cpu_times: user + system, children of a process counted separately), so
"CPU per job" is what each process spent, not what the wall clock suggests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from workers.procutil import die_with_parent_preexec

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One measure of one path beside its baseline, in the same run."""

    bench: str  # which benchmark (broker ceiling, added latency, ...)
    measure: str  # e.g. "jobs/s @64", "p50 TTFT @1 (ms)"
    path: str  # what was measured, e.g. "llmrelay, 1 openai worker"
    baseline_path: str  # e.g. "direct httpx"
    value: float
    baseline: float
    higher_is_better: bool = True
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)  # process -> ms
    target: str = ""  # the target for this ratio, if any

    @property
    def ratio(self) -> float:
        """Candidate over baseline (for latencies, >1 means slower)."""
        return self.value / self.baseline if self.baseline else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(**{k: v for k, v in data.items() if k != "ratio"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class CpuMeter:
    """CPU seconds spent by named processes (and, for each, its descendants) between marks."""

    def __init__(self, procs: dict[str, int | list[int]]) -> None:
        self.procs = {k: v if isinstance(v, list) else [v] for k, v in procs.items()}
        self.start = self._sample()

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            t = psutil.Process(pid).cpu_times()
            return float(t.user + t.system)
        except psutil.NoSuchProcess:
            return 0.0

    def _sample(self) -> dict[str, float]:
        return {name: sum(self._cpu(p) for p in pids) for name, pids in self.procs.items()}

    def ms_per_job(self, jobs: int) -> dict[str, float]:
        end = self._sample()
        return {k: round((end[k] - self.start[k]) * 1000 / max(1, jobs), 4) for k in end}


def worker_pids(broker_pid: int) -> list[int]:
    """The broker's spawned worker processes (and anything they run, e.g. llama-server)."""
    try:
        return [c.pid for c in psutil.Process(broker_pid).children(recursive=False)]
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def child(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    cpu: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A helper process in its own process group, killed (group and all) on the way out."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        args,
        stdout=out,
        stderr=out,
        cwd=ROOT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        preexec_fn=die_with_parent_preexec(),  # a killed benchmark leaves nothing behind
    )
    if log:
        out.close()  # type: ignore[union-attr]
    try:
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, {cpu})
        yield proc
    finally:
        from tests.harness import kill_tree

        kill_tree(proc)


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def sse_fake(cpu: int | None = 0) -> Iterator[str]:
    """The benchmark's fake OpenAI server; yields its base URL (…/v1)."""
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.sse_fake", "--port", str(port)]
    with child(args, cpu=cpu) as proc:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
        yield f"http://127.0.0.1:{port}/v1"


def other_cores(avoid: int = 0) -> set[int] | None:
    """Every core but `avoid` (where the fake server runs), or None on a 1-core machine."""
    cores = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    rest = cores - {avoid}
    return rest or None
