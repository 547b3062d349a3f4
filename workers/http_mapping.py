"""What a provider module writes its mapping with: the stream mapper it implements, the errors
it raises (a provider's own error, malformed data), and the readers it shares (JSON, usage).

Kept apart from workers/http.py, which runs the exchange (the pool, the decode loop, error
translation); a provider module needs both, the fuzz tests only this.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from protocol.errors import ErrorCategory, ProviderError
from workers.backend import Finish, TextDelta
from workers.decode import ServerEvent

T = TypeVar("T")


class Malformed(ValueError):
    """The provider sent something that does not follow its own wire format."""


@dataclass(slots=True, frozen=True)
class ErrorInfo:
    """What a provider's error body says, in its own words."""

    message: str
    codes: tuple[str | int | None, ...] = ()
    status: int | None = None  # when the body carries the HTTP status (OpenRouter mid-stream)


class StreamError(Exception):
    """An error the provider reported inside a 200 response (mid-stream or in the body)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class StreamMapper(ABC):
    """Per-request state that turns decoded events into text; one per provider."""

    done = False  # the provider's terminator was seen

    @abstractmethod
    def on_event(self, event: ServerEvent) -> list[TextDelta]:
        """Text in this event; raise StreamError for an error event, Malformed for junk."""

    @abstractmethod
    def finish(self) -> Finish:
        """The Finish at end of stream; raise Malformed if the stream was cut short."""


def load_json(data: str | bytes) -> Any:
    # orjson: a third of the stdlib's time per SSE event (json.loads was 11% of a streaming
    # worker's samples). What it refuses goes to the stdlib, which reads a little more: a
    # lone surrogate escape (a JavaScript server that split a UTF-16 pair between two events)
    # and NaN.
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise Malformed(f"invalid JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise Malformed("invalid JSON (nested too deeply)") from None
    except ValueError as exc:  # bytes that are not UTF-8
        raise Malformed(f"invalid JSON ({exc})") from None


def shape_checked(read: Callable[[Any], T], data: Any) -> T:
    """Run a provider's reader; JSON of an unexpected shape is the server's fault, not ours."""
    try:
        return read(data)
    except Malformed:
        raise
    # ValueError: e.g. dict.update() given a list where the format has an object (found by
    # tests/test_fuzz.py); int() of a non-numeric string.
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise Malformed(f"unexpected response shape ({type(exc).__name__}: {exc})") from None


def usage(
    prompt: Any, completion: Any, cost: Any = None, *, cached: Any = None, written: Any = None
) -> dict[str, Any]:
    """The normalized usage every backend reports. `prompt` counts every prompt token; of
    them, `cached` were read from the provider's prompt cache and `written` were written to
    it (catalog.cost prices each at its own rate)."""
    p = int(prompt or 0)
    c = int(completion or 0)
    out: dict[str, Any] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    if cached:
        out["cached_tokens"] = int(cached)
    if written:
        out["cache_creation_tokens"] = int(written)
    if cost is not None:
        out["cost"] = float(cost)
    return out


def unsupported(provider: str, what: str) -> ProviderError:
    """A job asks for something this provider cannot express: fail over, never drop it."""
    return ProviderError(ErrorCategory.UNSUPPORTED, what, provider=provider)
