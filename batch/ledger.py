"""OUT and ERR: append-only result files that survive kill -9 and tell a resume what is done.

Each line goes to the kernel in one `write` call on an O_APPEND descriptor, so a killed run
leaves whole lines, except at worst a torn last line if the machine itself dies mid-write;
opening for resume cuts such a tail. fsync runs at most once per `sync_interval`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Finished:
    """What a result file already holds: finished custom_ids, and input lines that were bad."""

    ids: set[str] = field(default_factory=set)
    bad_lines: set[int] = field(default_factory=set)
    torn_bytes: int = 0


def _records(path: Path) -> tuple[list[tuple[int, dict[str, Any] | None]], int]:
    """Every whole line's parsed object (None if unreadable) with its end offset."""
    out: list[tuple[int, dict[str, Any] | None]] = []
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # a torn tail
            offset += len(raw)
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                obj = None
            out.append((offset, obj if isinstance(obj, dict) else None))
    return out, offset


def note_done(done: Finished, obj: dict[str, Any]) -> None:
    meta = obj.get("llmrelay")
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("category") == "invalid_input" and isinstance(meta.get("line"), int):
        done.bad_lines.add(meta["line"])
    elif isinstance(obj.get("custom_id"), str):
        done.ids.add(obj["custom_id"])


def scan(path: Path) -> Finished:
    """Read what a result file holds, cutting a torn last line off the file."""
    done = Finished()
    if not path.exists():
        return done
    records, whole = _records(path)
    size = path.stat().st_size
    if size > whole:
        done.torn_bytes = size - whole
        os.truncate(path, whole)
    for _, obj in records:
        if obj is not None:
            note_done(done, obj)
    return done


def drop_lines(path: Path, drop: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Rewrite `path` without the lines `drop` selects (atomically); return the dropped ones."""
    records, _ = _records(path)
    dropped: list[dict[str, Any]] = []
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        start = 0
        for end, obj in records:
            src.seek(start)
            raw = src.read(end - start)
            start = end
            if obj is not None and drop(obj):
                dropped.append(obj)
            else:
                dst.write(raw)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    return dropped


def encode_line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class LineWriter:
    """Appends whole JSON lines; one write call per line."""

    def __init__(self, path: Path, sync_interval: float = 1.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.sync_interval = sync_interval
        self.last_sync = time.monotonic()
        self.lines = 0

    def write(self, obj: dict[str, Any]) -> None:
        data = encode_line(obj)
        written = os.write(self.fd, data)
        while written < len(data):  # only on a full disk or a signal; finish the line
            written += os.write(self.fd, data[written:])
        self.lines += 1
        now = time.monotonic()
        if now - self.last_sync >= self.sync_interval:
            os.fsync(self.fd)
            self.last_sync = now

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
