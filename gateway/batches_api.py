"""The OpenAI Batch API: batches run by the batch runner (batch.runner.run_batch) through the
broker, their state in the gateway's store so a restarted gateway carries on where it was.

A batch's job ids derive from its id and each custom_id, and its result files are the
runner's resume ledger: after a restart the finished lines are skipped and a job still in
flight in the broker is re-attached (the broker answers a resubmitted id with the same job),
so every custom_id ends up in the output exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from batch.runner import BatchOptions, run_batch
from batch.stats import Stats
from gateway.errors import ApiError
from gateway.files_api import missing, page_limit
from gateway.store import Store, new_id

if TYPE_CHECKING:
    from gateway.app import Gateway

log = structlog.get_logger("llmrelay.gateway.batches")
ENDPOINT = "/v1/chat/completions"
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
SAVE_EVERY = 0.5  # seconds between request_counts writes while a batch runs


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


class BatchesApi:
    def __init__(self, gateway: Gateway, store: Store) -> None:
        self.gateway = gateway
        self.store = store
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.cancels: dict[str, asyncio.Event] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def resume_all(self) -> None:
        """At startup: carry on with every batch a previous gateway left unfinished."""
        for batch, owner in self.store.unfinished():
            log.info("batch_resumed", batch=batch["id"], status=batch["status"])
            self._launch(batch, owner)

    async def stop_all(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _launch(self, batch: dict[str, Any], owner: str) -> None:
        cancel = self.cancels.setdefault(batch["id"], asyncio.Event())
        if batch["status"] == "cancelling":
            cancel.set()
        task = asyncio.get_running_loop().create_task(self._run(batch, owner, cancel))
        self.tasks[batch["id"]] = task
        task.add_done_callback(lambda _: self.tasks.pop(batch["id"], None))

    async def _run(self, batch: dict[str, Any], owner: str, cancel: asyncio.Event) -> None:
        folder = self.store.batch_dir(batch["id"])
        out, err = folder / "output.jsonl", folder / "errors.jsonl"
        source = self.store.blob(batch["input_file_id"])
        if batch["status"] == "validating":
            batch.update(status="in_progress", in_progress_at=int(time.time()))
        batch["request_counts"]["total"] = _lines(source)
        self.store.put_batch(batch, owner)
        before_ok, before_err = _lines(out), _lines(err)
        last_save = 0.0

        def progress(stats: Stats) -> None:
            nonlocal last_save
            counts = batch["request_counts"]
            counts["completed"] = before_ok + stats.succeeded
            counts["failed"] = before_err + stats.failed + stats.bad_lines
            now = time.monotonic()
            if now - last_save >= SAVE_EVERY:
                last_save = now
                self.store.put_batch(batch, owner)

        if batch["status"] in ("in_progress", "cancelling"):
            options = BatchOptions(
                format="openai",
                resume=True,
                batch_key=batch["id"],
                timeout=self.gateway.settings.request_timeout,
            )
            report = await run_batch(
                source,
                out,
                err,
                client=self.gateway.link.client(owner),
                options=options,
                progress=progress,
                cancel=cancel,
            )
            progress(report.stats)
            if report.interrupted:
                batch.update(status="cancelled", cancelled_at=int(time.time()))
                self._publish(batch, owner, out, err)
                return
            batch.update(status="finalizing", finalizing_at=int(time.time()))
            self.store.put_batch(batch, owner)
        self._publish(batch, owner, out, err)
        if batch["status"] == "finalizing":
            batch.update(status="completed", completed_at=int(time.time()))
        self.store.put_batch(batch, owner)

    def _publish(self, batch: dict[str, Any], owner: str, out: Path, err: Path) -> None:
        """The result files as Files (purpose batch_output), each registered once."""
        for key, path, name in (
            ("output_file_id", out, "output"),
            ("error_file_id", err, "errors"),
        ):
            if batch.get(key) or _lines(path) == 0:
                continue
            copy = path.with_suffix(".publish")
            shutil.copyfile(path, copy)
            stored = self.store.add_file(f"{batch['id']}_{name}.jsonl", "batch_output", owner, copy)
            batch[key] = stored.id
        self.store.put_batch(batch, owner)

    # --- endpoints ----------------------------------------------------------------------------

    async def create(self, request: Request, owner: str) -> Response:
        body = await self.gateway.read_json(request)
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or self.store.get_file(file_id, owner) is None:
            raise missing("file", str(file_id))
        if body.get("endpoint") != ENDPOINT:
            raise ApiError.bad_request(f"endpoint: only {ENDPOINT} is supported", "endpoint")
        if body.get("completion_window") != "24h":
            raise ApiError.bad_request("completion_window: must be '24h'", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16):
            raise ApiError.bad_request("metadata: at most 16 string pairs", "metadata")
        unknown = set(body) - {
            "input_file_id",
            "endpoint",
            "completion_window",
            "metadata",
            "output_expires_after",
        }
        if unknown:
            name = sorted(unknown)[0]
            raise ApiError.bad_request(f"{name}: unknown field", name)
        now = int(time.time())
        batch: dict[str, Any] = {
            "id": new_id("batch"),
            "object": "batch",
            "endpoint": ENDPOINT,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        self.store.put_batch(batch, owner)
        self._launch(batch, owner)
        return JSONResponse(batch)

    def _owned(self, batch_id: str, owner: str) -> dict[str, Any]:
        batch = self.store.get_batch(batch_id, owner)
        if batch is None:
            raise missing("batch", batch_id)
        return batch

    async def retrieve(self, request: Request, owner: str) -> Response:
        return JSONResponse(self._owned(request.path_params["batch_id"], owner))

    async def cancel(self, request: Request, owner: str) -> Response:
        batch = self._owned(request.path_params["batch_id"], owner)
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelling", cancelling_at=int(time.time()))
            self.store.put_batch(batch, owner)
            self.cancels.setdefault(batch["id"], asyncio.Event()).set()
        return JSONResponse(batch)

    async def list(self, request: Request, owner: str) -> Response:
        limit = page_limit(request.query_params.get("limit"), 20, 100)
        batches, more = self.store.list_batches(owner, request.query_params.get("after"), limit)
        return JSONResponse(
            {
                "object": "list",
                "data": batches,
                "first_id": batches[0]["id"] if batches else None,
                "last_id": batches[-1]["id"] if batches else None,
                "has_more": more,
            }
        )
