"""Rate-limit response headers -> one small normalized dict the broker learns from.

Every HTTP response (success or error) is read once, in `HttpBackend`; a provider only says
which header families it sends (`HttpBackend.ratelimit_headers`). The result has only the
keys the headers gave, all numbers:

    requests_limit, requests_remaining, tokens_limit, tokens_remaining   (int)
    requests_reset, tokens_reset                                         (seconds from now)
    input_tokens_* / output_tokens_*                                     (Anthropic only)

A value that does not parse is left out, never guessed.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

Parser = Callable[[str, float], float | None]  # (header value, wall-clock now) -> value
FieldTable = dict[str, tuple[str, Parser]]  # lower-case header -> (key, parser)

MAX_COUNT = 10**15  # anything larger is garbage, not a limit


def count(value: str, now: float) -> float | None:
    """A non-negative integer ("4999"; "4999.0" is tolerated)."""
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0 or number > MAX_COUNT:
        return None
    return int(number)


_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_DURATION = re.compile(rf"(?:{_PART.pattern})+")


def duration(value: str, now: float) -> float | None:
    """A Go duration ("1s", "6m0s", "120ms", "1h2m3.5s"); a bare number counts as seconds."""
    text = value.strip()
    if _DURATION.fullmatch(text):
        return sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))
    return count_seconds(text)


def count_seconds(text: str) -> float | None:
    """A non-negative finite number."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def timestamp(value: str, now: float) -> float | None:
    """An RFC 3339 instant ("2025-01-01T00:00:30Z") as seconds from now (0 if past)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def epoch_or_delta(value: str, now: float) -> float | None:
    """A reset given as epoch milliseconds, epoch seconds, or seconds from now."""
    number = count_seconds(value.strip())
    if number is None:
        return None
    if number > 1e11:  # epoch milliseconds
        return max(0.0, number / 1000.0 - now)
    if number > 1e9:  # epoch seconds
        return max(0.0, number - now)
    return number


@dataclass(frozen=True, slots=True)
class HeaderFamily:
    """One provider family's rate-limit headers: header name -> (normalized key, parser)."""

    name: str
    fields: tuple[tuple[str, str, Parser], ...]


def _openai() -> HeaderFamily:
    rows = []
    for what in ("requests", "tokens"):
        rows += [
            (f"x-ratelimit-limit-{what}", f"{what}_limit", count),
            (f"x-ratelimit-remaining-{what}", f"{what}_remaining", count),
            (f"x-ratelimit-reset-{what}", f"{what}_reset", duration),
        ]
    return HeaderFamily("openai", tuple(rows))


def _anthropic() -> HeaderFamily:
    rows = []
    for what in ("requests", "tokens", "input-tokens", "output-tokens"):
        key = what.replace("-", "_")
        rows += [
            (f"anthropic-ratelimit-{what}-limit", f"{key}_limit", count),
            (f"anthropic-ratelimit-{what}-remaining", f"{key}_remaining", count),
            (f"anthropic-ratelimit-{what}-reset", f"{key}_reset", timestamp),
        ]
    return HeaderFamily("anthropic", tuple(rows))


# OpenAI, and the OpenAI-compatible servers that copy it.
OPENAI = _openai()
ANTHROPIC = _anthropic()
# OpenRouter's own headers, sent only with the 429s it generates itself. The window of
# X-RateLimit-Limit is not stated, so only remaining/reset are read (as request counts).
GENERIC = HeaderFamily(
    "generic",
    (
        ("x-ratelimit-remaining", "requests_remaining", count),
        ("x-ratelimit-reset", "requests_reset", epoch_or_delta),
    ),
)


def field_table(families: Iterable[HeaderFamily]) -> FieldTable:
    """The lookup table for a backend's families (built once per backend)."""
    return {header: (key, parse) for family in families for header, key, parse in family.fields}


def parse_ratelimit(
    table: FieldTable, headers: Mapping[str, str], now: float | None = None
) -> dict[str, float]:
    """The normalized rate-limit dict of one response's headers (empty when there is none)."""
    if not table:
        return {}
    wall = time.time() if now is None else now
    out: dict[str, float] = {}
    for name, value in headers.items():
        row = table.get(name.lower())
        if row is not None:
            parsed = row[1](value, wall)
            if parsed is not None:
                out[row[0]] = parsed
    return out


@dataclass(slots=True)
class Reading:
    """One attempt's rate-limit headers, with its resets counted from when it is reported."""

    values: dict[str, float] = field(default_factory=dict)
    stamp: float = 0.0  # time.monotonic() when the headers were read

    def read(self, table: FieldTable, headers: Mapping[str, str]) -> None:
        self.values = parse_ratelimit(table, headers)
        self.stamp = time.monotonic()

    def report(self) -> dict[str, float] | None:
        """The values now: resets shortened by the time since the headers arrived."""
        if not self.values:
            return None
        age = time.monotonic() - self.stamp
        return {
            k: (max(0.0, v - age) if k.endswith("_reset") else v) for k, v in self.values.items()
        }
