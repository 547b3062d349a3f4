"""llmrelay failure categories as the OpenAI and Anthropic HTTP APIs spell them.

The one table for everything that speaks those APIs: the HTTP gateway's responses and the
batch runner's output lines both build their error bodies here (`openai_error`,
`anthropic_error`), so a category has one status, one `type` and one `code` everywhere.

The official SDKs pick their exception class from the status code and decide on retries from
`x-should-retry` first, then the status (408/409/429/>=500 are retried). So every row says
both what a client sees and whether its SDK may try again. The spellings are also the ones
llmrelay's own workers classify back to the same category (an llmrelay gateway behind
another llmrelay keeps its meaning: billing_error is quota, not a rate limit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.errors import ErrorCategory


@dataclass(frozen=True, slots=True)
class Row:
    status: int
    openai_type: str
    openai_code: str | None
    anthropic_status: int
    anthropic_type: str
    should_retry: bool | None = None  # None: leave it to the SDK's status rule


C = ErrorCategory
# One row per category. Budget exhaustion is a 429 (OpenAI) or 402 billing_error (Anthropic)
# whose retry is useless: x-should-retry false. A full broker queue is the server being
# overloaded (503 / 529, which both SDKs retry), not the caller's rate limit.
ROWS: dict[ErrorCategory, Row] = {
    C.INVALID_REQUEST: Row(400, "invalid_request_error", None, 400, "invalid_request_error"),
    C.CONTEXT_LENGTH: Row(
        400, "invalid_request_error", "context_length_exceeded", 400, "invalid_request_error"
    ),
    C.CONTENT_FILTER: Row(
        400, "invalid_request_error", "content_filter", 400, "invalid_request_error"
    ),
    C.UNSUPPORTED: Row(
        400, "invalid_request_error", "unsupported_parameter", 400, "invalid_request_error"
    ),
    C.AUTH: Row(401, "invalid_request_error", "invalid_api_key", 401, "authentication_error"),
    C.PERMISSION: Row(403, "request_forbidden", "request_forbidden", 403, "permission_error"),
    C.NOT_FOUND: Row(404, "invalid_request_error", "model_not_found", 404, "not_found_error"),
    C.RATE_LIMITED: Row(429, "requests", "rate_limit_exceeded", 429, "rate_limit_error"),
    C.QUOTA_EXHAUSTED: Row(
        429, "insufficient_quota", "insufficient_quota", 402, "billing_error", False
    ),
    C.BROKER_BUSY: Row(503, "server_error", "broker_busy", 529, "overloaded_error"),
    C.OVERLOADED: Row(503, "server_error", "overloaded", 529, "overloaded_error"),
    C.NO_PROVIDER: Row(503, "server_error", "no_provider", 503, "api_error"),
    C.BROKER_UNREACHABLE: Row(503, "server_error", "broker_unreachable", 503, "api_error"),
    C.SERVER_ERROR: Row(500, "server_error", "server_error", 500, "api_error"),
    C.INTERNAL: Row(500, "server_error", "internal", 500, "api_error"),  # a broker bug
    C.WORKER_LOST: Row(500, "server_error", "server_error", 500, "api_error"),
    C.PROTOCOL: Row(502, "server_error", "bad_gateway", 502, "api_error"),
    C.NETWORK: Row(502, "server_error", "bad_gateway", 502, "api_error"),
    C.DEADLINE: Row(504, "server_error", "timeout", 504, "timeout_error"),
    C.CANCELLED: Row(499, "server_error", "cancelled", 499, "api_error", False),
}

_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*):")


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


def param_of(category: ErrorCategory, message: str) -> str | None:
    """OpenAI's `param` for a failure: the field at fault, when the category has one."""
    if category in (C.INVALID_REQUEST, C.UNSUPPORTED):
        return field_of(message)
    if category is C.CONTEXT_LENGTH:
        return "messages"
    return None


def openai_error(row: Row, message: str, param: str | None = None) -> dict[str, object]:
    """OpenAI's ErrorResponse body: all four keys, `param` and `code` may be null."""
    return {
        "error": {
            "message": message,
            "type": row.openai_type,
            "param": param,
            "code": row.openai_code,
        }
    }


def anthropic_error(row: Row, message: str, request_id: str | None = None) -> dict[str, object]:
    """Anthropic's ErrorResponse envelope (also what a batch's `errored` result holds)."""
    body: dict[str, object] = {
        "type": "error",
        "error": {"type": row.anthropic_type, "message": message},
    }
    if request_id is not None:
        body["request_id"] = request_id
    return body
