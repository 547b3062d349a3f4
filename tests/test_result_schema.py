"""The result map's schema (protocol/result_schema.py) against docs/protocol.md and the core.

A worker's `done.result` and rate-limit reports are decoded once where they enter the broker:
a malformed field fails the attempt as a protocol error naming the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from protocol import messages as m
from protocol.errors import ErrorCategory as C
from protocol.errors import ProtocolViolation
from protocol.result_schema import (
    JOB_RESULT_KEYS,
    JOB_RESULT_REQUIRED,
    RATE_LIMIT_KEYS,
    WORKER_RESULT_KEYS,
    WORKER_RESULT_REQUIRED,
    AttemptEntry,
    Budget,
    RateLimits,
    WorkerResult,
)
from tests.core_harness import CoreHarness, stop_result
from workers.ratelimit import ANTHROPIC, GENERIC, OPENAI

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
P = {"p": {"kind": "mock", "models": ["m"]}}


def documented_result_keys() -> set[str]:
    text = DOC.read_text()
    section = text.split("### The result map", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            keys |= set(re.findall(r"`([a-z_]+)`", first_cell))
    return keys


def documented_worker_done() -> tuple[set[str], set[str]]:
    """The `done` W→B row's result keys: (required, optional)."""
    row = next(line for line in DOC.read_text().splitlines() if line.startswith("| `done` | W→B"))
    listed = row.split("`result` (", 1)[1].split(")", 1)[0]
    required, optional = set(), set()
    for item in listed.split(","):
        key = re.findall(r"`([a-z_]+)`", item)[0]
        (optional if item.strip().startswith("optional") else required).add(key)
    return required, optional


def test_docs_list_exactly_the_result_schema_keys() -> None:
    assert documented_result_keys() == set(JOB_RESULT_KEYS)


def test_docs_worker_done_row_matches_the_worker_result_type() -> None:
    required, optional = documented_worker_done()
    assert required == set(WORKER_RESULT_REQUIRED)
    assert optional == WORKER_RESULT_KEYS - set(WORKER_RESULT_REQUIRED)


def test_worker_keys_are_a_subset_of_the_job_result() -> None:
    assert WORKER_RESULT_KEYS < JOB_RESULT_KEYS
    assert {"attempt", "provider", "model", "outcome"} == AttemptEntry.__required_keys__


def test_every_key_the_header_tables_produce_is_a_rate_limit_key() -> None:
    produced = {key for family in (OPENAI, ANTHROPIC, GENERIC) for _, key, _ in family.fields}
    assert produced == RATE_LIMIT_KEYS


def test_rate_limits_decode_into_budgets_and_back_unchanged() -> None:
    wire = {"requests_remaining": 0, "requests_reset": 1.5, "tokens_limit": 90000}
    limits = RateLimits.from_wire(wire, "ratelimit")
    assert limits.requests == Budget(remaining=0, reset=1.5)
    assert limits.tokens == Budget(limit=90000) and limits.output_tokens == Budget()
    again = limits.to_wire()
    assert again == wire and isinstance(again["tokens_limit"], int)  # ints stay ints


def test_worker_result_round_trips() -> None:
    report = WorkerResult(
        finish_reason="tool_calls",
        usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cost": 0.001},
        model="m-2025",
        worker_latency=0.25,
        worker_ttft=0.1,
        extra={"tool_calls": [{"id": "c1"}]},
        ratelimit=RateLimits(requests=Budget(limit=500, remaining=499, reset=0.12)),
    )
    assert WorkerResult.from_wire(report.to_wire()) == report


BAD_REPORTS: list[tuple[str, dict[str, Any], str]] = [
    ("usage-not-a-number", {"usage": {"total_tokens": "7"}}, "done.result.usage.total_tokens"),
    ("negative-latency", {"worker_latency": -1.0}, "done.result.worker_latency"),
    ("model-empty", {"model": ""}, "done.result.model"),
    ("unknown-key", {"surprise": 1}, "done.result: unknown field(s) ['surprise']"),
    ("extra-not-a-map", {"extra": ["x"]}, "done.result.extra"),
    ("limit-text", {"ratelimit": {"requests_remaining": "0"}}, "done.result.ratelimit.requests_"),
    ("limit-unknown", {"ratelimit": {"requests_left": 1}}, "unknown field(s) ['requests_left']"),
    ("limit-inf", {"ratelimit": {"tokens_reset": float("inf")}}, "ratelimit.tokens_reset"),
]


@pytest.mark.parametrize(
    ("change", "named"), [c[1:] for c in BAD_REPORTS], ids=[c[0] for c in BAD_REPORTS]
)
def test_a_malformed_done_result_fails_the_attempt_as_protocol_naming_the_field(
    change: dict[str, Any], named: str
) -> None:
    h = CoreHarness(P, retry_base_delay=0.5)
    w = h.worker("p")
    job = h.submit(model="p:m")
    h.done(w, job, **change)
    h.advance(0.5)
    assert w.attempt_of(job) == 2  # protocol: retried, like any other protocol violation
    h.done(w, job)
    done = h.outcome(job)
    assert isinstance(done, m.Completed)
    first = done.result["attempts"][0]
    assert first["outcome"] == "protocol" and named in first["message"]


def test_a_missing_required_field_is_named() -> None:
    wire = stop_result("m")
    del wire["worker_ttft"]
    with pytest.raises(ProtocolViolation, match=r"done\.result\.worker_ttft: missing"):
        WorkerResult.from_wire(wire)


def test_a_malformed_rate_limit_report_on_a_failure_is_a_protocol_error() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m", max_attempts=1)
    wire = {"category": "rate_limited", "message": "slow down", "ratelimit": {"tokens_reset": "x"}}
    h.core.worker_message(w.identity, m.Failed(job_id=job, attempt=1, error=wire), (), h.now)
    h.pump()
    err = h.error(job)
    assert err.category is C.PROTOCOL
    assert "failed.error.ratelimit.tokens_reset" in err.message and "slow down" in err.message


def test_a_reported_exhausted_budget_pauses_the_provider_until_its_reset() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    first = h.submit(model="p:m")
    h.done(w, first, ratelimit={"requests_remaining": 0, "requests_reset": 5.0})
    second = h.submit(model="p:m")
    h.advance(4.9)
    assert [d.job.id for d in w.dispatches()] == [first]
    h.advance(0.2)
    assert w.attempt_of(second) == 1


def test_a_reported_limit_on_a_failure_sizes_the_request_bucket() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m")
    h.fail(w, job, C.SERVER_ERROR, ratelimit={"requests_limit": 600})
    assert h.core.pacers["p"].learned()["rpm"] == 600


def test_the_core_result_has_every_required_key_and_nothing_unknown() -> None:
    h = CoreHarness(P)
    w = h.worker("p")
    job = h.submit(model="p:m")
    reported = WorkerResult(
        finish_reason="stop",
        usage={"total_tokens": 3},
        model="m",
        worker_latency=0.1,
        worker_ttft=0.05,
    )
    h.done(w, job, **reported.to_wire())
    done = h.outcome(job)
    assert isinstance(done, m.Completed)
    keys = set(done.result)
    assert JOB_RESULT_REQUIRED <= keys <= JOB_RESULT_KEYS
