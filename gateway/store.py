"""The gateway's durable state: uploaded files and batches, in sqlite plus one blob per file.

Everything a restarted gateway needs to carry on lives here: a batch's row says where it
stands, its result files say which requests are done (the batch runner resumes from them).
Writes are small and synchronous; sqlite in WAL mode keeps readers unblocked.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    owner TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    owner TEXT NOT NULL,
    body TEXT NOT NULL
);
"""
FILE_DAYS = 30  # purpose=batch files expire after 30 days, as OpenAI's do


def new_id(prefix: str) -> str:
    """OpenAI's id shapes: file-..., batch_..."""
    sep = "-" if prefix == "file" else "_"
    return f"{prefix}{sep}{secrets.token_hex(12)}"


@dataclass(slots=True)
class StoredFile:
    id: str
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    owner: str

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class Store:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.blobs = self.folder / "files"
        self.work = self.folder / "batches"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.folder / "gateway.sqlite3", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _seq(self, table: str) -> int:
        row = self.db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()
        return int(row[0])

    # --- files ------------------------------------------------------------------------------

    def blob(self, file_id: str) -> Path:
        return self.blobs / file_id

    def add_file(
        self, filename: str, purpose: str, owner: str, path: Path, file_id: str | None = None
    ) -> StoredFile:
        """Register a blob already written at `path` (moved into the store)."""
        file_id = file_id or new_id("file")
        os.replace(path, self.blob(file_id))
        now = int(time.time())
        stored = StoredFile(
            file_id,
            self.blob(file_id).stat().st_size,
            now,
            now + FILE_DAYS * 86400,
            filename,
            purpose,
            owner,
        )
        self.db.execute(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stored.id,
                self._seq("files"),
                stored.bytes,
                stored.created_at,
                stored.expires_at,
                stored.filename,
                stored.purpose,
                stored.owner,
            ),
        )
        return stored

    def get_file(self, file_id: str, owner: str) -> StoredFile | None:
        row = self.db.execute(
            "SELECT id, bytes, created_at, expires_at, filename, purpose, owner FROM files "
            "WHERE id = ? AND owner = ?",
            (file_id, owner),
        ).fetchone()
        return None if row is None else StoredFile(*row)

    def list_files(self, owner: str, purpose: str | None) -> list[StoredFile]:
        query = (
            "SELECT id, bytes, created_at, expires_at, filename, purpose, owner FROM files "
            "WHERE owner = ?"
        )
        args: list[Any] = [owner]
        if purpose:
            query += " AND purpose = ?"
            args.append(purpose)
        return [StoredFile(*row) for row in self.db.execute(query + " ORDER BY seq", args)]

    def delete_file(self, file_id: str, owner: str) -> bool:
        deleted = self.db.execute(
            "DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner)
        ).rowcount
        if deleted:
            self.blob(file_id).unlink(missing_ok=True)
        return bool(deleted)

    # --- batches ----------------------------------------------------------------------------

    def batch_dir(self, batch_id: str) -> Path:
        folder = self.work / batch_id
        folder.mkdir(exist_ok=True)
        return folder

    def put_batch(self, batch: dict[str, Any], owner: str) -> None:
        body = json.dumps(batch)
        updated = self.db.execute(
            "UPDATE batches SET body = ? WHERE id = ?", (body, batch["id"])
        ).rowcount
        if not updated:
            self.db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?)",
                (batch["id"], self._seq("batches"), owner, body),
            )

    def get_batch(self, batch_id: str, owner: str | None = None) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT body, owner FROM batches WHERE id = ?", (batch_id,)
        ).fetchone()
        if row is None or (owner is not None and row[1] != owner):
            return None
        batch: dict[str, Any] = json.loads(row[0])
        return batch

    def owner_of(self, batch_id: str) -> str | None:
        row = self.db.execute("SELECT owner FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return None if row is None else str(row[0])

    def list_batches(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, from after the batch `after` (OpenAI's cursor), `limit` at most."""
        start = None
        if after:
            row = self.db.execute("SELECT seq FROM batches WHERE id = ?", (after,)).fetchone()
            start = None if row is None else int(row[0])
        query = "SELECT body FROM batches WHERE owner = ?"
        args: list[Any] = [owner]
        if start is not None:
            query += " AND seq < ?"
            args.append(start)
        rows = self.db.execute(query + " ORDER BY seq DESC LIMIT ?", [*args, limit + 1]).fetchall()
        batches = [json.loads(r[0]) for r in rows[:limit]]
        return batches, len(rows) > limit

    def unfinished(self) -> list[tuple[dict[str, Any], str]]:
        """Batches a restarted gateway must carry on with, and their owners."""
        out = []
        for body, owner in self.db.execute("SELECT body, owner FROM batches ORDER BY seq"):
            batch = json.loads(body)
            if batch["status"] in ("validating", "in_progress", "finalizing", "cancelling"):
                out.append((batch, str(owner)))
        return out
