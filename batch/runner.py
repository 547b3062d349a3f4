"""The batch runner's library API: `run_batch` (the CLI and the HTTP gateway call it).

    report = await run_batch("in.jsonl", "out.jsonl", client=client,
                             options=BatchOptions(concurrency=128, resume=True),
                             progress=on_progress, cancel=stop_event)

Reads the input lazily, keeps at most `concurrency` jobs in flight, and appends each result
to OUT (successes) or ERR (failures and malformed lines) the moment it ends. Memory is the
window of jobs in flight plus one set of custom_ids (for duplicates and resume) and 16 bytes
of latency figures per job, so a 100,000-line file runs in flat memory.

Job ids are derived from the batch key (the input's absolute path by default), the custom_id
and a digest of the line: a resubmission after a broker restart or a resumed run re-attaches
to the same job on the broker instead of starting another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch import ledger
from batch.formats import (
    RERUNNABLE,
    BadLine,
    BatchFormat,
    InputError,
    Request,
    digest_of,
    get_format,
)
from batch.source import Source, count_requests, open_source
from batch.stats import Stats
from protocol.client import AsyncClient, build_job
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError
from protocol.job import Job
from protocol.results import Result

MAX_RENEWALS = 20  # fresh ids tried for a request that earlier runs cancelled
CostFn = Callable[[str | None, str | None, dict[str, Any]], float | None]
ProgressFn = Callable[[Stats], None]


class BatchUsageError(ValueError):
    """The run cannot start as asked (exit code 2): the message says what to change."""


@dataclass(slots=True)
class BatchOptions:
    format: str | None = None  # forced input format; detected from the file when None
    concurrency: int = 64  # jobs in flight at once
    resume: bool = False  # skip every custom_id already in OUT/ERR and append
    retry_failed: bool = False  # drop rerunnable failures from ERR and run them again
    model: str | None = None  # overrides every line's model
    route: str | None = None  # overrides every line's model with a route
    batch_key: str | None = None  # what job ids derive from; default: the input's path
    timeout: float | None = None  # per-job deadline in seconds; None: the broker's default
    busy_retry: float = 0.5  # seconds to wait when the broker's queue is full
    sync_interval: float = 1.0  # seconds between fsyncs of OUT/ERR
    cost: CostFn | None = None  # prices a job the broker could not price

    def check(self) -> None:
        if self.concurrency < 1:
            raise BatchUsageError("--concurrency must be at least 1")
        if self.model and self.route:
            raise BatchUsageError("give --model or --route, not both")


@dataclass(slots=True)
class BatchReport:
    format: str
    output: Path
    errors: Path
    stats: Stats
    interrupted: bool = False
    not_run: int = 0  # requests left for a resume (cancelled or never started)
    failures_before: int = 0  # lines already in ERR from earlier runs
    torn_bytes: int = 0  # cut off a torn last line on resume
    retried: int = 0  # ERR lines dropped by --retry-failed to run again

    @property
    def exit_code(self) -> int:
        """0 when every request succeeded; 1 when any failed, was malformed or did not run."""
        failed = self.stats.failed + self.stats.bad_lines + self.failures_before
        return 0 if failed == 0 and not self.interrupted and self.not_run == 0 else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "output": str(self.output),
            "errors": str(self.errors),
            "interrupted": self.interrupted,
            "not_run": self.not_run,
            "failures_before": self.failures_before,
            "retried": self.retried,
            "exit_code": self.exit_code,
            **self.stats.to_json(),
        }


def default_errors_path(output: Path) -> Path:
    """out.jsonl -> out.errors.jsonl"""
    return output.with_name(f"{output.stem}.errors{output.suffix or '.jsonl'}")


def job_id_for(batch_key: str, custom_id: str, digest: str, rerun_of: str | None = None) -> str:
    seed = f"{batch_key}\0{custom_id}\0{digest}\0{rerun_of or ''}"
    return "b" + hashlib.sha256(seed.encode()).hexdigest()[:31]


def _field_of(exc: ProtocolViolation) -> InputError:
    name, _, why = str(exc).partition(": ")
    return InputError(name.removeprefix("job."), why or str(exc))


def result_cost(options: BatchOptions, result: Result) -> float | None:
    """The job's cost in USD: as the broker reported it (the provider's or the catalog's
    price), else from `options.cost`, else None (unknown, never invented)."""
    if result.cost is not None:
        return result.cost
    if options.cost is None:
        return None
    return options.cost(result.provider, result.model, result.usage or {})


class Targets:
    """Which job field a line's model name goes in.

    `provider:model` is a model; `route:NAME` (llmrelay lines) a route. A plain name may be a
    route or a bare model: it is tried as a route first (routes are explicit configuration),
    and the answer is remembered per name.
    """

    def __init__(self, options: BatchOptions) -> None:
        self.options = options
        self.kinds: dict[str, str] = {}

    def fields(self, req: Request) -> dict[str, str]:
        if self.options.route:
            return {"route": self.options.route}
        if self.options.model:
            return {"model": self.options.model}
        name = req.target
        if name is None:
            raise InputError("model", "missing: give it in the line, or --model / --route")
        if name.startswith("route:"):
            return {"route": name.removeprefix("route:")}
        if ":" in name or self.kinds.get(name) == "model":
            return {"model": name}
        try:
            Job.from_wire({"id": "x", "messages": [{"role": "user", "content": ""}], "route": name})
        except ProtocolViolation:
            return {"model": name}  # not a valid route name
        return {"route": name}

    def not_a_route(self, job: Job, exc: ProviderError) -> Job | None:
        """The same job with its name as a model, when the broker says no such route."""
        if job.route is None or self.options.route or exc.attempts:
            return None
        if exc.category is not ErrorCategory.INVALID_REQUEST or "unknown route" not in exc.message:
            return None
        self.kinds[job.route] = "model"
        return dataclasses.replace(job, route=None, model=job.route)


@dataclass(slots=True)
class _Work:
    req: Request
    job: Job


def plan(
    source: Source,
    options: BatchOptions,
    targets: Targets,
    done: ledger.Finished,
    reruns: dict[str, str],
) -> tuple[BatchFormat, Iterator[_Work | BadLine], Stats]:
    """The input's format and its items (jobs to run, bad lines to report), resume applied."""
    fmt_name, records = open_source(source, options.format)
    fmt = get_format(fmt_name)
    stats = Stats(total=count_requests(source))
    key = options.batch_key or (
        str(Path(source).resolve()) if isinstance(source, str | Path) else "iterable"
    )

    def items() -> Iterator[_Work | BadLine]:
        seen: set[str] = set()
        for line, obj in records:
            custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
            custom_id = custom_id if isinstance(custom_id, str) and custom_id else None
            bad: InputError | None = obj if isinstance(obj, InputError) else None
            work: _Work | None = None
            if bad is None and isinstance(obj, dict):
                try:
                    req = fmt.parse(obj, line)
                    if req.custom_id in seen:
                        raise InputError(
                            "custom_id",
                            f"duplicate custom_id {req.custom_id!r}",
                            "duplicate_custom_id",
                        )
                    req.digest = digest_of(obj)
                    job = _build(req, targets.fields(req), key, reruns, options)
                    work = _Work(req, job)
                except InputError as exc:
                    bad = exc
            if custom_id is not None:
                seen.add(custom_id)
            if bad is not None:
                if line in done.bad_lines:
                    stats.skipped += 1
                else:
                    yield BadLine(line, custom_id, bad)
            elif work is not None:
                if work.req.custom_id in done.ids:
                    stats.skipped += 1
                else:
                    yield work

    return fmt, items(), stats


def _build(
    req: Request, target: dict[str, str], key: str, reruns: dict[str, str], options: BatchOptions
) -> Job:
    extra = dict(req.options)
    metadata = dict(extra.pop("metadata", None) or {})
    metadata["custom_id"] = req.custom_id
    if options.timeout is not None:
        extra.setdefault("timeout", options.timeout)
    try:
        return build_job(
            job_id=job_id_for(key, req.custom_id, req.digest, reruns.get(req.custom_id)),
            messages=req.messages,
            params=dict(req.params),
            metadata=metadata,
            **target,
            **extra,
        )
    except ProtocolViolation as exc:
        raise _field_of(exc) from None


async def _run_one(
    client: AsyncClient, job: Job, targets: Targets, busy_retry: float
) -> tuple[Job, Result | ProviderError]:
    renewals = 0
    while True:
        try:
            return job, await client.result(job)
        except ProviderError as exc:
            if exc.category is ErrorCategory.BROKER_BUSY:
                await asyncio.sleep(busy_retry)
                continue
            if exc.category is ErrorCategory.CANCELLED and renewals < MAX_RENEWALS:
                # This run never cancels through the broker while it waits for a result, so
                # this is the broker replaying an earlier run's cancel (it remembers finished
                # ids): run the request again under an id derived from the old one.
                renewals += 1
                job = dataclasses.replace(job, id=job_id_for(job.id, "", "", "after-cancel"))
                continue
            as_model = targets.not_a_route(job, exc)
            if as_model is None:
                exc.job_id = job.id
                return job, exc
            job = as_model


def _open_files(
    output: Path, errors: Path, options: BatchOptions
) -> tuple[ledger.Finished, dict[str, str], int]:
    """Resume bookkeeping: what OUT/ERR hold, and which failures --retry-failed reruns."""
    if not (options.resume or options.retry_failed):
        for path in {output, errors}:
            if path.exists() and path.stat().st_size > 0:
                raise BatchUsageError(f"{path} already has results: add --resume, or remove it")
    reruns: dict[str, str] = {}
    if options.retry_failed and errors.exists():

        def rerunnable(obj: dict[str, Any]) -> bool:
            meta = obj.get("llmrelay") or {}
            return isinstance(meta, dict) and meta.get("category") in RERUNNABLE

        for obj in ledger.drop_lines(errors, rerunnable):
            meta = obj.get("llmrelay") or {}
            if isinstance(obj.get("custom_id"), str):
                reruns[obj["custom_id"]] = str(meta.get("job_id"))
    done = ledger.scan(output)
    failures_before = 0
    if errors != output:
        err_done = ledger.scan(errors)
        failures_before = len(err_done.ids) + len(err_done.bad_lines)
        done.ids |= err_done.ids
        done.bad_lines |= err_done.bad_lines
        done.torn_bytes += err_done.torn_bytes
    return done, reruns, failures_before


async def run_batch(
    source: Source,
    output: str | Path,
    errors: str | Path | None = None,
    *,
    client: AsyncClient,
    options: BatchOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: asyncio.Event | None = None,
) -> BatchReport:
    """Run every request of `source` through `client`; see the module doc.

    `source` is a path or an iterable of JSONL lines. `errors` defaults to OUT with `.errors`
    before its suffix; it may equal `output` (one file, as Anthropic's results are). Setting
    `cancel` stops dispatching and cancels the jobs in flight; their requests are not written,
    so a resumed run picks them up.
    """
    options = options or BatchOptions()
    options.check()
    out_path = Path(output)
    err_path = Path(errors) if errors is not None else default_errors_path(out_path)
    done, reruns, failures_before = _open_files(out_path, err_path, options)
    targets = Targets(options)
    fmt, items, stats = plan(source, options, targets, done, reruns)
    report = BatchReport(
        fmt.name,
        out_path,
        err_path,
        stats,
        failures_before=failures_before,
        torn_bytes=done.torn_bytes,
        retried=len(reruns),
    )
    out = ledger.LineWriter(out_path, options.sync_interval)
    err = out if err_path == out_path else ledger.LineWriter(err_path, options.sync_interval)
    cancel = cancel or asyncio.Event()
    running: dict[asyncio.Task[tuple[Job, Result | ProviderError]], Request] = {}
    stopper = asyncio.ensure_future(cancel.wait())
    exhausted = False
    try:
        while True:
            while not exhausted and not cancel.is_set() and len(running) < options.concurrency:
                item = next(items, None)
                if item is None:
                    exhausted = True
                elif isinstance(item, BadLine):
                    err.write(fmt.bad_line(item))
                    stats.bad_lines += 1
                    if progress:
                        progress(stats)
                else:
                    task = asyncio.create_task(
                        _run_one(client, item.job, targets, options.busy_retry)
                    )
                    running[task] = item.req
            stats.running = len(running)
            if not running or cancel.is_set():
                break
            finished, _ = await asyncio.wait(
                [*running, stopper], return_when=asyncio.FIRST_COMPLETED
            )
            for task in [t for t in running if t in finished]:
                req = running.pop(task)
                job, outcome = task.result()
                if isinstance(outcome, Result):
                    cost = result_cost(options, outcome)
                    out.write(fmt.success(req, job.id, outcome, cost))
                    stats.record_success(outcome, cost)
                else:
                    err.write(fmt.failure(req, job.id, outcome))
                    stats.record_failure(outcome)
            stats.running = len(running)
            if progress:
                progress(stats)
        if cancel.is_set():
            report.interrupted = True
            report.not_run = len(running) + sum(1 for item in items if isinstance(item, _Work))
    finally:
        stopper.cancel()
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        stats.running = 0
        out.close()
        if err is not out:
            err.close()
    return report
