"""Showing a batch's progress: a live bar on a terminal (rich), plain periodic lines otherwise."""

from __future__ import annotations

import time
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from batch.stats import SUMMARY_COLUMNS, Stats, summary_rows


def _cost(stats: Stats) -> str:
    return "unknown" if stats.cost is None else f"${stats.cost:.4f}"


def _eta(stats: Stats) -> str:
    eta = stats.eta()
    return "?" if eta is None else f"{eta:.0f}s"


def plain_line(stats: Stats) -> str:
    total = "?" if stats.total is None else str(stats.total - stats.skipped)
    return (
        f"batch: {stats.done}/{total} done, {stats.failed} failed, {stats.bad_lines} bad lines, "
        f"{stats.running} running, {stats.rate():.1f}/s, eta {_eta(stats)}, "
        f"tokens {stats.input_tokens} in / {stats.output_tokens} out, cost {_cost(stats)}"
    )


class PlainProgress:
    """One line every `interval` seconds (and a last one), for logs and pipes."""

    def __init__(self, stream: IO[str], interval: float = 5.0) -> None:
        self.stream = stream
        self.interval = interval
        self.last = time.monotonic()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, stats: Stats, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            print(plain_line(stats), file=self.stream, flush=True)


class BarProgress:
    """A rich live bar: done/total, failed, rate, ETA, tokens and cost so far."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[rate]}/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("tok {task.fields[tokens]}"),
            TextColumn("cost {task.fields[cost]}"),
            console=console,
            refresh_per_second=4,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> BarProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, stats: Stats, *, force: bool = False) -> None:
        fields: dict[str, Any] = {
            "failed": stats.failed + stats.bad_lines,
            "rate": f"{stats.rate():.1f}",
            "tokens": f"{stats.input_tokens}/{stats.output_tokens}",
            "cost": _cost(stats),
        }
        total = None if stats.total is None else max(0, stats.total - stats.skipped)
        if self.task is None:
            self.task = self.progress.add_task("batch", total=total, **fields)
        self.progress.update(self.task, completed=stats.done, total=total, **fields)


def summary_table(stats: Stats) -> Table:
    table = Table(title="batch summary (per provider and model)")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="left" if column in ("provider", "model") else "right")
    for row in summary_rows(stats):
        table.add_row(*row)
    return table
