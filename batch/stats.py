"""Running totals of a batch and its end-of-run summary, per provider and model."""

from __future__ import annotations

import itertools
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import ProviderError
from protocol.results import Result


def percentile(values: array[float], q: float) -> float | None:
    """Nearest-rank percentile; None when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _retries_and_failovers(attempts: list[dict[str, Any]]) -> tuple[int, int]:
    retries = max(0, len(attempts) - 1)
    providers = [a.get("provider") for a in attempts]
    failovers = sum(1 for a, b in itertools.pairwise(providers) if a != b)
    return retries, failovers


@dataclass(slots=True)
class Row:
    """One provider+model. Latencies are kept as packed floats (8 bytes a job)."""

    jobs: int = 0
    succeeded: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    failovers: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    cost_unknown: int = 0  # jobs whose cost could not be priced
    latency: array[float] = field(default_factory=lambda: array("d"))
    ttft: array[float] = field(default_factory=lambda: array("d"))

    def to_json(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "succeeded": self.succeeded,
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures),
            "retries": self.retries,
            "failovers": self.failovers,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
            "cost_unknown_jobs": self.cost_unknown,
            "latency_p50": percentile(self.latency, 50),
            "latency_p95": percentile(self.latency, 95),
            "ttft_p50": percentile(self.ttft, 50),
            "ttft_p95": percentile(self.ttft, 95),
        }


@dataclass(slots=True)
class Stats:
    """Counts the runner and the progress display read; rows for the summary."""

    total: int | None = None  # input requests, when known up front
    succeeded: int = 0
    failed: int = 0  # jobs that ran and failed
    bad_lines: int = 0  # input lines that never became a job
    skipped: int = 0  # already in OUT/ERR (resume)
    running: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    started: float = field(default_factory=time.monotonic)
    rows: dict[tuple[str, str], Row] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.bad_lines

    def rate(self) -> float:
        took = time.monotonic() - self.started
        return self.done / took if took > 0 else 0.0

    def eta(self) -> float | None:
        if self.total is None:
            return None
        rate, left = self.rate(), self.total - self.skipped - self.done
        return left / rate if rate > 0 else None

    def _row(self, provider: str | None, model: str | None) -> Row:
        key = (provider or "-", model or "-")
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Row()
        return row

    def _add_cost(self, row: Row, cost: float | None) -> None:
        if cost is None:
            row.cost_unknown += 1
            return
        row.cost = (row.cost or 0.0) + cost
        self.cost = (self.cost or 0.0) + cost

    def record_success(self, result: Result, cost: float | None) -> None:
        self.succeeded += 1
        row = self._row(result.provider, result.model)
        row.jobs += 1
        row.succeeded += 1
        retries, failovers = _retries_and_failovers(result.attempts)
        row.retries += retries
        row.failovers += failovers
        usage = result.usage or {}
        tokens_in = int(usage.get("prompt_tokens") or 0)
        tokens_out = int(usage.get("completion_tokens") or 0)
        row.input_tokens += tokens_in
        row.output_tokens += tokens_out
        self.input_tokens += tokens_in
        self.output_tokens += tokens_out
        self._add_cost(row, cost)
        if result.latency is not None:
            row.latency.append(result.latency)
        if result.ttft is not None:
            row.ttft.append(result.ttft)

    def record_failure(self, error: ProviderError) -> None:
        self.failed += 1
        last = error.attempts[-1] if error.attempts else {}
        row = self._row(error.provider or last.get("provider"), last.get("model"))
        row.jobs += 1
        row.failures[error.category.value] += 1
        retries, failovers = _retries_and_failovers(error.attempts)
        row.retries += retries
        row.failovers += failovers

    def to_json(self) -> dict[str, Any]:
        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "bad_lines": self.bad_lines,
            "skipped": self.skipped,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
            "seconds": round(time.monotonic() - self.started, 3),
            "by_provider_model": [
                {"provider": p, "model": m, **row.to_json()} for (p, m), row in self.rows.items()
            ],
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def _cost(value: float | None, unknown: int) -> str:
    if value is None:
        return "unknown"
    return f"${value:.4f}" + (f" (+{unknown} unpriced)" if unknown else "")


SUMMARY_COLUMNS = (
    "provider",
    "model",
    "jobs",
    "failed",
    "retries",
    "failovers",
    "tokens in",
    "tokens out",
    "cost",
    "p50",
    "p95",
    "ttft p50",
    "ttft p95",
)


def summary_rows(stats: Stats) -> list[list[str]]:
    rows = []
    for (provider, model), row in sorted(stats.rows.items()):
        failures = ", ".join(f"{k} {n}" for k, n in sorted(row.failures.items())) or "0"
        rows.append(
            [
                provider,
                model,
                str(row.jobs),
                failures,
                str(row.retries),
                str(row.failovers),
                str(row.input_tokens),
                str(row.output_tokens),
                _cost(row.cost, row.cost_unknown),
                _ms(percentile(row.latency, 50)),
                _ms(percentile(row.latency, 95)),
                _ms(percentile(row.ttft, 50)),
                _ms(percentile(row.ttft, 95)),
            ]
        )
    return rows
