"""`--dry-run`: validate every line and say what would run; no job is sent.

With a broker to ask, each valid line's candidates, prompt tokens and estimated cost come
from the catalog's `count_tokens` query (exact where the provider counts, else an estimate
that says so). Without one, or where the catalog cannot tell, they are "unknown".
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batch import ledger
from batch.formats import BadLine
from batch.runner import BatchOptions, Targets, plan
from batch.source import Source
from protocol.client import AsyncClient
from protocol.errors import ProviderError

COUNT_WINDOW = 32  # count_tokens queries in flight


@dataclass(slots=True)
class TargetPlan:
    """What the lines naming one model or route would cost, per the catalog's first candidate."""

    jobs: int = 0
    candidates: list[str] = field(default_factory=list)
    tokens: int = 0
    exact: bool = True
    counted: int = 0  # lines the catalog counted
    cost: float | None = 0.0  # None once any line could not be priced
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, reply: Any) -> None:
        counts = reply.get("counts") if isinstance(reply, dict) else None
        if not counts:
            self.cost = None
            self.notes["no count from the catalog"] += 1
            return
        first = counts[0]
        self.candidates = self.candidates or [str(c.get("candidate")) for c in counts]
        self.counted += 1
        self.tokens += int(first.get("tokens") or 0)
        self.exact = self.exact and bool(first.get("exact"))
        price = first.get("estimated_cost")
        self.cost = None if price is None or self.cost is None else self.cost + float(price)

    def to_json(self, target: str) -> dict[str, Any]:
        known = self.counted == self.jobs
        return {
            "target": target,
            "jobs": self.jobs,
            "candidates": self.candidates or "unknown",
            "input_tokens": self.tokens if known else "unknown",
            "tokens_exact": self.exact if known else False,
            "estimated_cost": self.cost if known else None,
            "notes": dict(self.notes),
        }


@dataclass(slots=True)
class DryRunReport:
    format: str
    valid: int = 0
    bad: list[BadLine] = field(default_factory=list)
    targets: dict[str, TargetPlan] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.bad else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "valid": self.valid,
            "bad_lines": [
                {
                    "line": b.line,
                    "custom_id": b.custom_id,
                    "field": b.error.field,
                    "error": str(b.error),
                }
                for b in self.bad
            ],
            "targets": [p.to_json(t) for t, p in sorted(self.targets.items())],
        }


async def dry_run(
    source: Source, options: BatchOptions, client: AsyncClient | None = None
) -> DryRunReport:
    """Validate `source`; with `client`, ask the broker's catalog about every valid line."""
    options.check()
    fmt, items, _ = plan(source, options, Targets(options), ledger.Finished(), {})
    report = DryRunReport(fmt.name)
    window: set[asyncio.Task[None]] = set()

    async def count(target: str, kwargs: dict[str, Any]) -> None:
        entry = report.targets[target]
        if client is None:
            entry.cost = None
            entry.notes["no broker asked"] += 1
            return
        try:
            entry.add(await client.count_tokens(**kwargs))
        except ProviderError as exc:
            entry.cost = None
            entry.notes[exc.message[:200]] += 1

    for item in items:
        if isinstance(item, BadLine):
            report.bad.append(item)
            continue
        report.valid += 1
        job = item.job
        target = f"route:{job.route}" if job.route else str(job.model)
        report.targets.setdefault(target, TargetPlan()).jobs += 1
        kwargs: dict[str, Any] = {
            "messages": job.messages,
            "max_tokens": job.params.get("max_tokens"),
        }
        kwargs["route" if job.route else "model"] = job.route or job.model
        task = asyncio.create_task(count(target, kwargs))
        window.add(task)
        task.add_done_callback(window.discard)
        if len(window) >= COUNT_WINDOW:
            await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
    if window:
        await asyncio.gather(*window)
    return report
