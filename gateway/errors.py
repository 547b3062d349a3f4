"""Errors answered in each API's own shape: the body, the status and the retry headers.

The category -> status table is `protocol.http_errors.ROWS` (shared with batch output lines).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from protocol.errors import ErrorCategory, ProviderError
from protocol.http_errors import ROWS, Row

C = ErrorCategory


# Statuses the gateway itself answers with, outside the category table.
UNAUTHORIZED = Row(401, "invalid_request_error", "invalid_api_key", 401, "authentication_error")
TOO_LARGE = Row(413, "invalid_request_error", "request_too_large", 413, "request_too_large")

_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*):")


@dataclass(slots=True)
class ApiError(Exception):
    """One failure to answer in the caller's API shape."""

    row: Row
    message: str
    param: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    category: str | None = None  # the llmrelay category, when the failure came from a job

    @property
    def error_type(self) -> str:
        """The metrics' low-cardinality `error_type`: the category, else the status code."""
        return self.category or str(self.row.status)

    def __str__(self) -> str:
        return self.message

    @classmethod
    def bad_request(cls, message: str, param: str | None = None) -> ApiError:
        return cls(ROWS[C.INVALID_REQUEST], message, param)

    @classmethod
    def from_provider(cls, exc: ProviderError) -> ApiError:
        row = ROWS.get(exc.category, ROWS[C.SERVER_ERROR])
        param = None
        if exc.category in (C.INVALID_REQUEST, C.UNSUPPORTED):
            param = field_of(exc.message)
        elif exc.category is C.CONTEXT_LENGTH:
            param = "messages"
        return cls(row, exc.message, param, exc.retry_after, category=exc.category.value)

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None and self.retry_after > 0:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
            headers["retry-after-ms"] = str(round(self.retry_after * 1000))
        if self.row.should_retry is not None:
            headers["x-should-retry"] = "true" if self.row.should_retry else "false"
        return headers

    def openai_body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.row.openai_type,
                "param": self.param,
                "code": self.row.openai_code,
            }
        }

    def anthropic_body(self, request_id: str) -> dict[str, object]:
        return {
            "type": "error",
            "error": {"type": self.row.anthropic_type, "message": self.message},
            "request_id": request_id,
        }


def field_of(message: str) -> str | None:
    """The field a validation message names ("params.temperature: ..." -> "temperature")."""
    match = _FIELD.match(message)
    if match is None:
        return None
    name = match.group(1)
    for prefix in ("params.", "job."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name
