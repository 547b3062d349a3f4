"""The OpenAI Files API over the gateway's store: upload, list, retrieve, content, delete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from gateway.errors import TOO_LARGE, ApiError
from gateway.store import Store
from protocol.errors import ErrorCategory
from protocol.http_errors import ROWS

if TYPE_CHECKING:
    from gateway.app import Gateway

PURPOSES = ("batch", "batch_output", "assistants", "fine-tune", "vision", "user_data")
CHUNK = 1 << 20


def missing(kind: str, ident: str) -> ApiError:
    return ApiError(ROWS[ErrorCategory.NOT_FOUND], f"No such {kind}: '{ident}'", "id")


class FilesApi:
    def __init__(self, gateway: Gateway, store: Store) -> None:
        self.gateway = gateway
        self.store = store

    async def create(self, request: Request, owner: str) -> Response:
        limit = self.gateway.settings.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + (1 << 20):
            raise ApiError(TOO_LARGE, f"File is too large: over {limit} bytes.")
        async with request.form(max_files=1, max_fields=16) as form:
            upload = form.get("file")
            purpose = form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise ApiError.bad_request("file: required, a file part", "file")
            if purpose not in PURPOSES:
                raise ApiError.bad_request(f"purpose: one of {', '.join(PURPOSES)}", "purpose")
            fd, name = tempfile.mkstemp(dir=self.store.blobs, prefix=".upload-")
            try:
                size = 0
                with os.fdopen(fd, "wb") as out:
                    while chunk := await upload.read(CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise ApiError(TOO_LARGE, f"File is too large: over {limit} bytes.")
                        out.write(chunk)
                stored = self.store.add_file(
                    upload.filename or "upload.jsonl", str(purpose), owner, Path(name)
                )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        return JSONResponse(stored.to_api())

    def retrieve(self, file_id: str, owner: str) -> Response:
        stored = self.store.get_file(file_id, owner)
        if stored is None:
            raise missing("file", file_id)
        return JSONResponse(stored.to_api())

    def content(self, file_id: str, owner: str) -> Response:
        stored = self.store.get_file(file_id, owner)
        if stored is None:
            raise missing("file", file_id)
        return FileResponse(self.store.blob(file_id), media_type="application/octet-stream")

    def delete(self, file_id: str, owner: str) -> Response:
        if not self.store.delete_file(file_id, owner):
            raise missing("file", file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    def list(self, request: Request, owner: str) -> Response:
        purpose = request.query_params.get("purpose")
        files = self.store.list_files(owner, purpose)
        if request.query_params.get("order", "desc") == "desc":
            files.reverse()
        after = request.query_params.get("after")
        if after:
            ids = [f.id for f in files]
            files = files[ids.index(after) + 1 :] if after in ids else []
        limit = page_limit(request.query_params.get("limit"), 10_000, 10_000)
        page = files[:limit]
        body: dict[str, Any] = {
            "object": "list",
            "data": [f.to_api() for f in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(files) > limit,
        }
        return JSONResponse(body)


def page_limit(raw: str | None, default: int, most: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ApiError.bad_request(f"limit: an integer from 1 to {most}", "limit")
    return int(raw)
