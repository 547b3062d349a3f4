"""How an llmrelay failure category is spelled in the OpenAI and Anthropic APIs.

One table, so batch output lines (and anything else speaking those APIs) agree on the HTTP
status and the error `type` a given category becomes.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import ErrorCategory as C


@dataclass(frozen=True, slots=True)
class ApiError:
    status: int
    openai_type: str
    anthropic_type: str


ERRORS: dict[C, ApiError] = {
    C.AUTH: ApiError(401, "authentication_error", "authentication_error"),
    C.PERMISSION: ApiError(403, "permission_error", "permission_error"),
    C.QUOTA_EXHAUSTED: ApiError(429, "insufficient_quota", "billing_error"),
    C.RATE_LIMITED: ApiError(429, "rate_limit_error", "rate_limit_error"),
    C.OVERLOADED: ApiError(503, "server_error", "overloaded_error"),
    C.NOT_FOUND: ApiError(404, "not_found_error", "not_found_error"),
    C.INVALID_REQUEST: ApiError(400, "invalid_request_error", "invalid_request_error"),
    C.CONTEXT_LENGTH: ApiError(400, "invalid_request_error", "invalid_request_error"),
    C.CONTENT_FILTER: ApiError(400, "invalid_request_error", "invalid_request_error"),
    C.SERVER_ERROR: ApiError(500, "server_error", "api_error"),
    C.NETWORK: ApiError(502, "server_error", "api_error"),
    C.CANCELLED: ApiError(499, "cancelled", "api_error"),
    C.DEADLINE: ApiError(504, "timeout", "timeout_error"),
    C.PROTOCOL: ApiError(502, "server_error", "api_error"),
    C.UNSUPPORTED: ApiError(400, "invalid_request_error", "invalid_request_error"),
    C.BROKER_BUSY: ApiError(503, "server_error", "overloaded_error"),
    C.NO_PROVIDER: ApiError(503, "server_error", "api_error"),
    C.WORKER_LOST: ApiError(502, "server_error", "api_error"),
}


def api_error(category: C) -> ApiError:
    return ERRORS[category]
