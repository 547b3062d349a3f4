"""Reading a batch input as a stream of (line number, parsed object or error).

A JSONL file is read line by line; an Anthropic `{"requests": [...]}` document is decoded one
request at a time from a sliding buffer. Neither ever holds the whole input in memory.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from batch.formats import FORMATS, InputError, guess_format

Record = tuple[int, dict[str, Any] | InputError]
Source = str | Path | Iterable[str]

DOCUMENT_START = re.compile(r'\A\s*\{\s*"requests"\s*:\s*\[')
DETECT_LINES = 50
CHUNK = 1 << 20
MAX_REQUEST = 64 << 20  # one request of a document larger than this is an error


class SourceError(ValueError):
    """The input as a whole cannot be read (missing file, format not recognisable)."""


def _parse_line(text: str, line: int) -> dict[str, Any] | InputError:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputError(
            "line", f"not valid JSON ({exc.msg} at column {exc.colno})", "invalid_json_line"
        )
    if not isinstance(obj, dict):
        return InputError("line", "expected a JSON object", "invalid_json_line")
    return obj


def _jsonl(lines: Iterable[str | bytes]) -> Iterator[Record]:
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, InputError("line", "not valid UTF-8", "invalid_json_line")
                continue
        if raw.strip():
            yield number, _parse_line(raw, number)


def _document(stream: IO[str]) -> Iterator[Record]:
    """The requests of `{"requests": [...]}`, each with the line it starts on."""
    decoder = json.JSONDecoder()
    buf = stream.read(CHUNK)
    start = DOCUMENT_START.match(buf)
    if start is None:
        yield (
            1,
            InputError("requests", 'expected a document {"requests": [...]}', "invalid_json_line"),
        )
        return
    pos, line, eof = start.end(), 1 + buf.count("\n", 0, start.end()), False
    index = 0

    def skip_ws() -> None:
        nonlocal pos, line
        while pos < len(buf) and buf[pos] in " \t\r\n":
            if buf[pos] == "\n":
                line += 1
            pos += 1

    def refill() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        more = stream.read(CHUNK)
        if not more:
            eof = True
            return False
        buf = buf[pos:] + more
        pos = 0
        return True

    expect_item = True
    while True:
        skip_ws()
        if pos >= len(buf):
            if refill():
                continue
            yield (
                line,
                InputError(
                    f"requests[{index}]", "document ends inside the list", "invalid_json_line"
                ),
            )
            return
        if buf[pos] == "]" and (expect_item is False or index == 0):
            return
        if not expect_item:
            if buf[pos] != ",":
                yield (
                    line,
                    InputError(f"requests[{index}]", "expected ',' or ']'", "invalid_json_line"),
                )
                return
            pos += 1
            expect_item = True
            continue
        try:
            obj, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            if len(buf) - pos < MAX_REQUEST and refill():
                continue
            yield (
                line,
                InputError(
                    f"requests[{index}]", f"not valid JSON ({exc.msg})", "invalid_json_line"
                ),
            )
            return
        if end == len(buf) and not eof and refill():
            continue  # a number or literal may go on in the next chunk: decode it again
        if isinstance(obj, dict):
            yield line, obj
        else:
            yield (
                line,
                InputError(f"requests[{index}]", "expected a JSON object", "invalid_json_line"),
            )
        line += buf.count("\n", pos, end)
        pos, index, expect_item = end, index + 1, False


def _detect(records: Iterable[Record]) -> str | None:
    for _, obj in itertools.islice(records, DETECT_LINES):
        if isinstance(obj, dict):
            found = guess_format(obj)
            if found:
                return found
    return None


def is_document(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return DOCUMENT_START.match(f.read(4096)) is not None


def _path_records(path: Path, document: bool) -> Iterator[Record]:
    if document:
        with open(path, encoding="utf-8") as f:
            yield from _document(f)
    else:
        with open(path, "rb") as f:
            yield from _jsonl(f)


def open_source(source: Source, forced: str | None = None) -> tuple[str, Iterator[Record]]:
    """The input's format (detected unless `forced`) and its records, read lazily."""
    if forced is not None and forced not in FORMATS:
        raise SourceError(f"--format: unknown format {forced!r}; known: {', '.join(FORMATS)}")
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise SourceError(f"input file {path} does not exist")
        document = is_document(path)
        fmt = "anthropic" if document else (forced or _detect(_path_records(path, False)))
        if forced is not None and document and forced != "anthropic":
            raise SourceError(
                f'{path} is a {{"requests": [...]}} document: only --format anthropic'
            )
        records = _path_records(path, document)
    else:
        lines = iter(source)
        head = list(itertools.islice(lines, DETECT_LINES))
        fmt = forced or _detect(_jsonl(head))
        records = _jsonl(itertools.chain(head, lines))
    if fmt is None:
        raise SourceError(
            "cannot tell the input format from its first lines; "
            "give --format openai|anthropic|llmrelay"
        )
    return fmt, records


def count_requests(source: Source) -> int | None:
    """How many non-blank lines a JSONL file has (for the progress total); None if unknown."""
    if not isinstance(source, str | Path) or is_document(Path(source)):
        return None
    count = 0
    with open(source, "rb") as f:
        for raw in f:
            if raw.strip():
                count += 1
    return count
