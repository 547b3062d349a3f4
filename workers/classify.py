"""The one error classifier: (provider, status, headers, codes, message) -> ProviderError.

Providers do not write classification logic; each contributes an `ErrorTable` of its own
error codes and message phrases. The order of evidence is: the provider's specific error
codes, then message phrases, then the HTTP status, because a status alone is ambiguous
(OpenAI sends 429 both for "slow down" and for "your credit is gone").
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from protocol.errors import ErrorCategory as C
from protocol.errors import ProviderError

MAX_MESSAGE = 2000  # provider messages are kept, but a whole HTML error page is not

# Phrases every provider (and the OpenAI-compatible local servers) use for these cases.
COMMON_PHRASES: tuple[tuple[str, C], ...] = (
    ("context length", C.CONTEXT_LENGTH),
    ("context_length_exceeded", C.CONTEXT_LENGTH),
    ("context window", C.CONTEXT_LENGTH),
    ("context size", C.CONTEXT_LENGTH),  # llama-server: "exceeds the available context size"
    ("prompt is too long", C.CONTEXT_LENGTH),  # Anthropic
    ("content management policy", C.CONTENT_FILTER),  # Azure OpenAI
    ("content_filter", C.CONTENT_FILTER),
)

STATUS: dict[int, C] = {
    400: C.INVALID_REQUEST,
    401: C.AUTH,
    402: C.QUOTA_EXHAUSTED,  # OpenRouter credits, Anthropic billing_error
    403: C.PERMISSION,
    404: C.NOT_FOUND,
    408: C.NETWORK,  # the server timed out waiting for us: try again
    409: C.SERVER_ERROR,  # conflict/lock: the SDKs retry it
    413: C.INVALID_REQUEST,
    422: C.INVALID_REQUEST,
    429: C.RATE_LIMITED,
    499: C.CANCELLED,  # Ollama "request canceled"
    503: C.OVERLOADED,
    529: C.OVERLOADED,  # Anthropic
}


@dataclass(frozen=True, slots=True)
class ErrorTable:
    """One provider's own knowledge: its error codes/types and message phrases."""

    codes: Mapping[str, C] = field(default_factory=dict)
    phrases: tuple[tuple[str, C], ...] = ()  # lower-case substrings of the message
    status: Mapping[int, C] = field(default_factory=dict)  # overrides of STATUS


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` (float ms) or `Retry-After` (seconds or HTTP date)."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)


def _retry_hint(message: str) -> float | None:
    """OpenAI puts the wait in the 429 message ("Please try again in 174ms")."""
    match = _TRY_AGAIN.search(message)
    if not match:
        return None
    value = float(match.group(1))
    return value / 1000.0 if match.group(2).lower() == "ms" else value


def categorize(
    table: ErrorTable, status: int | None, codes: Iterable[str | int | None], message: str
) -> C:
    for code in codes:
        if code is not None and str(code) in table.codes:
            return table.codes[str(code)]
    lowered = message.lower()
    for phrase, category in (*table.phrases, *COMMON_PHRASES):
        if phrase in lowered:
            return category
    if status is not None:
        known = table.status.get(status) or STATUS.get(status)
        if known is not None:
            return known
        if status >= 500:
            return C.SERVER_ERROR
        if status >= 400:
            return C.INVALID_REQUEST
    return C.SERVER_ERROR  # an error event inside a 200 stream with nothing more specific


def classify(
    provider: str,
    table: ErrorTable,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    codes: Iterable[str | int | None] = (),
    message: str = "",
) -> ProviderError:
    """Build the ProviderError for one failure. `status` is None for mid-stream errors."""
    category = categorize(table, status, codes, message)
    retry_after = parse_retry_after(headers)
    if retry_after is None and category is C.RATE_LIMITED:
        retry_after = _retry_hint(message)
    text = message.strip() or (f"HTTP {status}" if status else "error event in stream")
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "…"
    return ProviderError(
        category, text, provider=provider, status_code=status, retry_after=retry_after
    )


# Secret-looking tokens that must never leave the worker, even if a server echoes them.
_SECRET = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]{8,})")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove API keys: the configured ones verbatim, anything key-shaped by pattern."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET.sub("***", text)


def scrubbed(error: ProviderError, secrets: Iterable[str]) -> ProviderError:
    """The same error with keys removed from its message."""
    clean = scrub(error.message, secrets)
    if clean == error.message:
        return error
    return ProviderError(
        error.category,
        clean,
        provider=error.provider,
        status_code=error.status_code,
        retryable=error.retryable,
        retry_after=error.retry_after,
        job_id=error.job_id,
        ratelimit=error.ratelimit,
    )
