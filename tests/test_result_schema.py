"""The result map's schema (protocol/result_schema.py) against docs/protocol.md and the core."""

from __future__ import annotations

import re
from pathlib import Path

from protocol import messages as m
from protocol.result_schema import AttemptEntry, JobResult, WorkerResult, result_keys
from tests.core_harness import CoreHarness

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def documented_result_keys() -> set[str]:
    text = DOC.read_text()
    section = text.split("### The result map", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            keys |= set(re.findall(r"`([a-z_]+)`", first_cell))
    return keys


def test_docs_list_exactly_the_result_schema_keys() -> None:
    assert documented_result_keys() == set(result_keys(JobResult))


def test_worker_keys_are_a_subset_of_the_job_result() -> None:
    assert result_keys(WorkerResult) < result_keys(JobResult)
    assert {"attempt", "provider", "model", "outcome"} == AttemptEntry.__required_keys__


def test_the_core_result_has_every_required_key_and_nothing_unknown() -> None:
    h = CoreHarness({"p": {"kind": "mock", "models": ["m"]}})
    w = h.worker("p")
    job = h.submit(model="p:m")
    reported: WorkerResult = {
        "finish_reason": "stop",
        "usage": {"total_tokens": 3},
        "model": "m",
        "worker_latency": 0.1,
        "worker_ttft": 0.05,
    }
    h.done(w, job, **reported)
    done = h.outcome(job)
    assert isinstance(done, m.Completed)
    keys = set(done.result)
    assert JobResult.__required_keys__ <= keys <= result_keys(JobResult)
