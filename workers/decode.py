"""Incremental stream decoders: bytes in, complete events out. Pure: no I/O, no clock.

Every streaming provider speaks either Server-Sent Events (OpenAI, Anthropic, OpenRouter,
llama-server) or newline-delimited JSON (Ollama). Both sit on one line splitter that
decodes UTF-8 incrementally, so a character or a line split across network chunks comes
out whole, and CRLF, CR or LF all end a line (a CR at the end of a chunk waits for the
next byte to see whether an LF follows).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Literal, Protocol

Framing = Literal["sse", "ndjson"]

MAX_LINE = 16 << 20  # one line (or one event's data) may not exceed 16 MiB: memory stays bounded


class StreamDecodeError(ValueError):
    """The byte stream is not valid UTF-8 or exceeds the size limits."""


@dataclass(slots=True, frozen=True)
class ServerEvent:
    """One complete event of a provider's HTTP stream, before the provider maps it.

    NDJSON lines arrive as events whose `data` is the line.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class Decoder(Protocol):
    def feed(self, chunk: bytes) -> list[ServerEvent]: ...

    def close(self) -> list[ServerEvent]: ...


class LineSplitter:
    """Bytes to complete text lines, without their terminators."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._pending: list[str] = []  # pieces of the unterminated last line
        self._pending_len = 0
        self._after_cr = False  # the last chunk ended in CR: swallow a leading LF
        self._first = True
        self._max_line = max_line

    def feed(self, chunk: bytes, final: bool = False) -> list[str]:
        try:
            text = self._utf8.decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise StreamDecodeError(f"stream is not valid UTF-8: {exc.reason}") from None
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")  # a leading BOM is not part of the stream
        if self._after_cr and text:
            self._after_cr = False
            text = text.removeprefix("\n")
        if "\r" in text:
            # A CR ending this chunk is a line end; an LF opening the next chunk then belongs to it.
            self._after_cr = text.endswith("\r")
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:  # keep pieces of a long line in a list: no quadratic copying
            self._pending.append(text)
            self._pending_len += len(text)
            if self._pending_len > self._max_line:
                raise StreamDecodeError(f"line longer than {self._max_line} characters")
            return []
        *lines, rest = "".join([*self._pending, text]).split("\n")
        self._pending = [rest]
        self._pending_len = len(rest)
        return lines

    def close(self) -> list[str]:
        """End of stream: an unterminated last line still counts."""
        lines = self.feed(b"", final=True)
        rest = "".join(self._pending)
        self._pending, self._pending_len = [], 0
        return [*lines, rest] if rest else lines


class SseDecoder:
    """Server-Sent Events per the WHATWG rules the official SDKs follow.

    Comment lines (`: OPENROUTER PROCESSING`) and unknown fields are ignored; `data` lines
    are joined with "\\n"; one space after the colon is stripped; a blank line dispatches.
    """

    def __init__(self, max_event: int = MAX_LINE) -> None:
        self._lines = LineSplitter(max_event)
        self._max_event = max_event
        self._reset()
        self.comments = 0  # keep-alive comments seen (useful to tests and heartbeats)

    def _reset(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        return self._take(self._lines.feed(chunk))

    def close(self) -> list[ServerEvent]:
        # A stream may end without the final blank line (the Anthropic SDK fixture does).
        return self._take([*self._lines.close(), ""])

    def _take(self, lines: list[str]) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        for line in lines:
            if not line:
                if self._data or self._event:
                    events.append(
                        ServerEvent(
                            "\n".join(self._data), self._event or "message", self._id, self._retry
                        )
                    )
                self._reset()
            elif line.startswith(":"):
                self.comments += 1
            else:
                self._field(line)
        return events

    def _field(self, line: str) -> None:
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value) + 1
            if self._size > self._max_event:
                raise StreamDecodeError(f"event data longer than {self._max_event} characters")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)


class NdjsonDecoder:
    """Newline-delimited JSON: every non-blank line is one event (parsing is the caller's)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._lines = LineSplitter(max_line)

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        return [ServerEvent(line) for line in self._lines.feed(chunk) if line.strip()]

    def close(self) -> list[ServerEvent]:
        return [ServerEvent(line) for line in self._lines.close() if line.strip()]


def make_decoder(framing: Framing) -> Decoder:
    return SseDecoder() if framing == "sse" else NdjsonDecoder()
