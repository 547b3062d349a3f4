"""llmrelay failure categories as the OpenAI and Anthropic HTTP APIs spell them.

The official SDKs pick their exception class from the status code and decide on retries from
`x-should-retry` first, then the status (408/409/429/>=500 are retried). So every row says
both what a client sees and whether its SDK may try again. One table for everything that
speaks those APIs: the HTTP gateway's responses and batch output lines.
"""

from __future__ import annotations

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
# One row per category. Budget exhaustion is a 429 whose retry is useless: x-should-retry false.
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
    C.BROKER_BUSY: Row(429, "requests", "rate_limit_exceeded", 429, "rate_limit_error"),
    C.QUOTA_EXHAUSTED: Row(
        429, "insufficient_quota", "insufficient_quota", 429, "rate_limit_error", False
    ),
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
