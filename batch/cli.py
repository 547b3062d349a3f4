"""`llmrelay batch IN -o OUT ...`: the command around `batch.runner.run_batch`.

Exit codes: 0 every request succeeded; 1 some failed, were malformed or did not run
(interrupted); 2 bad usage (unknown option, missing input, OUT exists without --resume).
Ctrl-C once stops dispatching, cancels the jobs in flight and leaves OUT/ERR resumable;
a second Ctrl-C exits at once (the files still hold whole lines only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from batch.dryrun import DryRunReport, dry_run
from batch.formats import FORMATS
from batch.runner import BatchOptions, BatchReport, BatchUsageError, run_batch
from batch.source import SourceError
from batch.stats import Stats
from protocol import eventloop
from protocol.client import AsyncClient
from protocol.errors import ProviderError

# rich is imported only when a batch runs: every `llmrelay` command builds this parser.

HELP = __doc__


def add_arguments(parser: argparse.ArgumentParser, default_endpoint: str) -> None:
    parser.add_argument(
        "input",
        help="OpenAI batch JSONL, Anthropic requests (JSONL or "
        '{"requests": [...]}), or llmrelay job lines',
    )
    parser.add_argument("-o", "--output", required=True, help="results file (JSONL, appended)")
    parser.add_argument(
        "--errors",
        help="failures and malformed lines (default: OUT with .errors before the "
        "suffix; may be the same path as OUT for one file)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="jobs in flight (default 64)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip every custom_id already in OUT/ERR and append the rest",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="take the rerunnable failures out of ERR and run them again (implies --resume)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--model",
        help="run EVERY line on this model (provider:model or a "
        "bare name), overriding the lines' own model",
    )
    target.add_argument(
        "--route", help="run EVERY line on this route, overriding the lines' own model"
    )
    parser.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    parser.add_argument("--summary-json", help="also write the summary as JSON to this file")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every line and report what would run; send nothing",
    )
    parser.add_argument("--timeout", type=float, help="per-job deadline in seconds")
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        help="seconds between progress lines when not on a terminal",
    )
    parser.add_argument("--endpoint", default=default_endpoint)


def _options(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(
        format=args.format,
        concurrency=args.concurrency,
        resume=args.resume or args.retry_failed,
        retry_failed=args.retry_failed,
        model=args.model,
        route=args.route,
        timeout=args.timeout,
    )


async def _dry_run(args: argparse.Namespace, options: BatchOptions) -> DryRunReport:
    async with AsyncClient(args.endpoint) as client:
        try:
            await client.status(timeout=3.0)
        except ProviderError:
            print(
                f"no broker at {args.endpoint}: candidates, tokens and cost unknown",
                file=sys.stderr,
            )
            return await dry_run(args.input, options, None)
        return await dry_run(args.input, options, client)


def _print_dry_run(args: argparse.Namespace, options: BatchOptions) -> int:
    report = eventloop.run(_dry_run(args, options))
    for bad in report.bad:
        print(f"line {bad.line}: {bad.error}", file=sys.stderr)
    print(
        f"format {report.format}: {report.valid} valid, {len(report.bad)} malformed; nothing sent"
    )
    for target in report.to_json()["targets"]:
        cost = target["estimated_cost"]
        tokens = target["input_tokens"]
        exact = "" if target["tokens_exact"] or tokens == "unknown" else " (estimate)"
        candidates = target["candidates"]
        print(
            f"  {target['target']}: {target['jobs']} jobs; candidates "
            f"{', '.join(candidates) if isinstance(candidates, list) else candidates}; "
            f"prompt tokens {tokens}{exact}; estimated cost "
            + ("unknown" if cost is None else f"${cost:.4f}")
        )
        for note, times in target["notes"].items():
            print(f"    note ({times} lines): {note}")
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report.exit_code


async def _run(args: argparse.Namespace, options: BatchOptions) -> BatchReport:
    from rich.console import Console

    from batch.progress import BarProgress, PlainProgress

    err_console = Console(stderr=True)
    display: BarProgress | PlainProgress = (
        BarProgress(err_console)
        if err_console.is_terminal
        else PlainProgress(sys.stderr, args.progress_interval)
    )
    cancel = asyncio.Event()
    latest: list[Stats] = []
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        if cancel.is_set():
            os._exit(1)  # second Ctrl-C: at once (every line already written is whole)
        cancel.set()
        print(
            "\nstopping: cancelling the jobs in flight (Ctrl-C again to quit now); "
            "rerun with --resume to finish",
            file=sys.stderr,
            flush=True,
        )

    loop.add_signal_handler(signal.SIGINT, interrupt)
    loop.add_signal_handler(signal.SIGTERM, interrupt)

    def progress(stats: Stats) -> None:
        if not latest:
            latest.append(stats)
        display.update(stats)

    async def tick() -> None:
        while True:
            await asyncio.sleep(min(1.0, args.progress_interval))
            if latest:
                display.update(latest[0])

    async with AsyncClient(args.endpoint) as client:
        with display:
            ticker = asyncio.create_task(tick())
            try:
                report = await run_batch(
                    args.input,
                    args.output,
                    args.errors,
                    client=client,
                    options=options,
                    progress=progress,
                    cancel=cancel,
                )
            finally:
                ticker.cancel()
            display.update(report.stats, force=True)
    return report


def _print_report(report: BatchReport) -> None:
    from rich.console import Console

    from batch.progress import summary_table

    stats = report.stats
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a log or pipe: do not squeeze the table into 80 columns
    console.print(summary_table(stats))
    print(
        f"{stats.succeeded} succeeded, {stats.failed} failed, {stats.bad_lines} malformed, "
        f"{stats.skipped} already done; {stats.input_tokens} tokens in, "
        f"{stats.output_tokens} out; cost "
        + ("unknown" if stats.cost is None else f"${stats.cost:.4f}")
    )
    print(f"results: {report.output}  errors: {report.errors}")
    if report.torn_bytes:
        print(f"resume: cut a torn last line ({report.torn_bytes} bytes)")
    if report.interrupted:
        print(f"interrupted: {report.not_run} requests not run; rerun with --resume")


def main(args: argparse.Namespace) -> int:
    options = _options(args)
    try:
        options.check()
        if args.dry_run:
            return _print_dry_run(args, options)
        report = eventloop.run(_run(args, options))
    except (BatchUsageError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_report(report)
    if args.summary_json:
        summary: dict[str, Any] = report.to_json()
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    return report.exit_code
