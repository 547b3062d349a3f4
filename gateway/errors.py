"""Errors answered in each API's own shape: the body, the status and the retry headers.

The category -> status table is `protocol.http_errors.ROWS` (shared with batch output lines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from protocol.errors import ErrorCategory, ProviderError
from protocol.http_errors import ROWS, Row, anthropic_error, openai_error, param_of

C = ErrorCategory


# Statuses the gateway itself answers with, outside the category table.
UNAUTHORIZED = Row(401, "invalid_request_error", "invalid_api_key", 401, "authentication_error")
TOO_LARGE = Row(413, "invalid_request_error", "request_too_large", 413, "request_too_large")


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
        param = param_of(exc.category, exc.message)
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
        return openai_error(self.row, self.message, self.param)

    def anthropic_body(self, request_id: str | None = None) -> dict[str, object]:
        return anthropic_error(self.row, self.message, request_id)
