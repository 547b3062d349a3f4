"""`--dry-run`: validate every line and say what would run, sending nothing to the broker.

Token counts, candidate chains and cost need the catalog's API (count_tokens, find_providers,
pricing); until it is on main they are reported as "unknown", never guessed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batch import ledger
from batch.formats import BadLine
from batch.runner import BatchOptions, Targets, plan
from batch.source import Source

UNKNOWN = "unknown (needs the catalog API)"


@dataclass(slots=True)
class DryRunReport:
    format: str
    valid: int = 0
    bad: list[BadLine] = field(default_factory=list)
    jobs_by_target: Counter[str] = field(default_factory=Counter)
    prompt_chars: Counter[str] = field(default_factory=Counter)

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
            "targets": [
                {
                    "target": target,
                    "jobs": jobs,
                    "prompt_chars": self.prompt_chars[target],
                    "candidates": UNKNOWN,
                    "input_tokens": UNKNOWN,
                    "cost": UNKNOWN,
                }
                for target, jobs in sorted(self.jobs_by_target.items())
            ],
        }


def dry_run(source: Source, options: BatchOptions) -> DryRunReport:
    options.check()
    fmt, items, _ = plan(source, options, Targets(options), ledger.Finished(), {})
    report = DryRunReport(fmt.name)
    for item in items:
        if isinstance(item, BadLine):
            report.bad.append(item)
            continue
        report.valid += 1
        target = f"route:{item.job.route}" if item.job.route else str(item.job.model)
        report.jobs_by_target[target] += 1
        report.prompt_chars[target] += item.job.prompt_chars()
    return report
