# ruff: noqa: E501  (tables read best one case per line)
"""One row per error case: what each provider sends -> category, retryable, retry_after.

`retryable` follows protocol.errors.DISPOSITION: True means *some* later attempt may succeed.
quota_exhausted is retryable=True only in the failover sense: its disposition is FAILOVER,
so the broker never retries it on the same provider (asserted in
test_quota_exhausted_is_never_retried_on_the_same_provider).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from protocol.errors import DISPOSITION, Disposition, ProviderError
from protocol.errors import ErrorCategory as C
from protocol.job import Job
from workers.classify import classify, parse_retry_after, scrub, scrubbed
from workers.decode import ServerEvent
from workers.http import HttpBackend
from workers.http_mapping import ErrorInfo, StreamError
from workers.http_pool import Timeouts, WriteTimeout, network_error
from workers.registry import backend_class
from workers.spec import ProviderSpec

JOB = Job(id="j", messages=[{"role": "user", "content": "hi"}], model="m")


def backend(kind: str) -> HttpBackend:
    b = backend_class(kind)(ProviderSpec(kind, kind))
    assert isinstance(b, HttpBackend)
    return b


def from_body(
    kind: str, status: int, body: Any, headers: dict[str, str] | None = None
) -> ProviderError:
    """The path a non-2xx response takes: the provider reads its body, the classifier decides."""
    b = backend(kind)
    info = b.error_info(body) or ErrorInfo(str(body))
    return classify(
        kind, b.errors, status=status, headers=headers, codes=info.codes, message=info.message
    )


def from_stream(kind: str, event: ServerEvent) -> ProviderError:
    """The path a mid-stream error takes: the provider's mapper raises, the classifier decides."""
    b = backend(kind)
    with pytest.raises(StreamError) as caught:
        b.stream_mapper(JOB).on_event(event)
    info = caught.value.info
    return classify(kind, b.errors, status=info.status, codes=info.codes, message=info.message)


def oai(message: str, type_: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def ant(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_1"}


def orr(code: int, message: str, **meta: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "metadata": meta}}


# fmt: off
HTTP_ROWS: list[tuple[str, str, int, dict[str, str], Any, C, bool, float | None]] = [
    ("openai-401", "openai", 401, {}, oai("Incorrect API key provided: sk-...MCQA.", "invalid_request_error", "invalid_api_key"), C.AUTH, True, None),
    ("anthropic-401", "anthropic", 401, {}, ant("authentication_error", "invalid x-api-key"), C.AUTH, True, None),
    ("openai-403", "openai", 403, {}, oai("Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory"), C.PERMISSION, True, None),
    ("anthropic-403", "anthropic", 403, {}, ant("permission_error", "no access"), C.PERMISSION, True, None),
    ("openrouter-402-credits", "openrouter", 402, {}, orr(402, "Insufficient credits. Add more using https://openrouter.ai/credits"), C.QUOTA_EXHAUSTED, True, None),
    ("anthropic-402-billing", "anthropic", 402, {}, ant("billing_error", "credit balance too low"), C.QUOTA_EXHAUSTED, True, None),
    ("anthropic-400-credit-balance", "anthropic", 400, {}, ant("invalid_request_error", "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."), C.QUOTA_EXHAUSTED, True, None),
    ("openai-429-billing-not-active", "openai", 429, {}, oai("Your account is not active, please check your billing details on our website.", "billing_not_active", "billing_not_active"), C.QUOTA_EXHAUSTED, True, None),
    ("openai-429-quota-proxied-no-codes", "openai", 429, {}, {"error": {"message": "You exceeded your current quota, please check your plan and billing details."}}, C.QUOTA_EXHAUSTED, True, None),
    ("openrouter-402-afford", "openrouter", 402, {}, orr(402, "This request requires more credits, or fewer max_tokens. You requested up to 32000 tokens, but can only afford 27342. To increase, visit https://openrouter.ai/settings/credits and upgrade to a paid account", provider_name=None), C.QUOTA_EXHAUSTED, True, None),
    ("openai-404-model", "openai", 404, {}, oai("The model `gpt-4o` does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"), C.NOT_FOUND, True, None),
    ("anthropic-404-model", "anthropic", 404, {}, ant("not_found_error", "model: claude-nope"), C.NOT_FOUND, True, None),
    ("ollama-404-model", "ollama", 404, {}, {"error": "model 'llama9' not found"}, C.NOT_FOUND, True, None),
    ("openrouter-400-model_not_found", "openrouter", 400, {}, {"error": {"message": "acme/fake-1.0 is not a valid model ID", "error_type": "invalid_request", "http_status": 400, "availability": {"code": "model_not_found", "retryable": False, "requested_models": ["acme/fake-1.0"]}}}, C.NOT_FOUND, True, None),
    ("openai-400-context", "openai", 400, {}, oai("This model's maximum context length is 4097 tokens. However, you requested 4120 tokens.", "invalid_request_error", "context_length_exceeded"), C.CONTEXT_LENGTH, True, None),
    ("anthropic-400-prompt-too-long", "anthropic", 400, {}, ant("invalid_request_error", "prompt is too long: 205351 tokens > 200000 maximum"), C.CONTEXT_LENGTH, True, None),
    ("llama-400-context", "openai", 400, {}, {"error": {"code": 400, "message": "request (4476 tokens) exceeds the available context size (4096 tokens)", "type": "exceed_context_size_error", "n_prompt_tokens": 4476, "n_ctx": 4096}}, C.CONTEXT_LENGTH, True, None),
    ("ollama-400-context", "ollama", 400, {}, {"error": "input length exceeds the context length"}, C.CONTEXT_LENGTH, True, None),
    ("openrouter-400-context", "openrouter", 400, {}, orr(400, "This endpoint's maximum context length is 8192 tokens", error_type="context_length_exceeded"), C.CONTEXT_LENGTH, True, None),
    ("openai-429-rate-retry-after-ms", "openai", 429, {"retry-after-ms": "174"}, oai("Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000.", "tokens", "rate_limit_exceeded"), C.RATE_LIMITED, True, 0.174),
    ("openai-429-rate-hint-in-message", "openai", 429, {}, oai("Rate limit reached. Please try again in 174ms. Visit https://platform.openai.com", "tokens", "rate_limit_exceeded"), C.RATE_LIMITED, True, 0.174),
    ("openai-429-insufficient-quota", "openai", 429, {}, oai("You exceeded your current quota, please check your plan and billing details.", "insufficient_quota", "insufficient_quota"), C.QUOTA_EXHAUSTED, True, None),
    ("openai-429-quota-2023-null-code", "openai", 429, {}, oai("You exceeded your current quota", "insufficient_quota", None), C.QUOTA_EXHAUSTED, True, None),
    ("openai-429-credit-balance", "openai", 429, {}, oai("credit balance exhausted", "insufficient_quota", "credit_balance_exhausted"), C.QUOTA_EXHAUSTED, True, None),
    ("anthropic-429-retry-after", "anthropic", 429, {"retry-after": "30"}, ant("rate_limit_error", "This request would exceed the rate limit for your organization"), C.RATE_LIMITED, True, 30.0),
    ("openrouter-429", "openrouter", 429, {"Retry-After": "2"}, orr(429, "Rate limit exceeded"), C.RATE_LIMITED, True, 2.0),
    ("anthropic-529-overloaded", "anthropic", 529, {}, ant("overloaded_error", "Overloaded"), C.OVERLOADED, True, None),
    ("openai-503", "openai", 503, {"retry-after": "1"}, oai("The engine is currently overloaded, please try again later", "server_error", None), C.OVERLOADED, True, 1.0),
    ("openrouter-503-provider-overloaded", "openrouter", 503, {}, orr(503, "Provider overloaded", error_type="provider_overloaded"), C.OVERLOADED, True, None),
    ("ollama-503-busy", "ollama", 503, {}, {"error": "server busy, please try again.  maximum pending requests exceeded"}, C.OVERLOADED, True, None),
    ("llama-503-loading", "openai", 503, {}, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, C.OVERLOADED, True, None),
    ("openai-500", "openai", 500, {}, oai("The server had an error while processing your request.", "server_error", None), C.SERVER_ERROR, True, None),
    ("anthropic-500", "anthropic", 500, {}, ant("api_error", "Internal server error"), C.SERVER_ERROR, True, None),
    ("openrouter-502", "openrouter", 502, {}, orr(502, "Provider returned error", error_type="provider_unavailable"), C.SERVER_ERROR, True, None),
    ("ollama-500", "ollama", 500, {}, {"error": "llama runner process has terminated"}, C.SERVER_ERROR, True, None),
    ("openrouter-408-timeout", "openrouter", 408, {}, orr(408, "Request timed out"), C.NETWORK, True, None),
    ("anthropic-504-timeout", "anthropic", 504, {}, ant("timeout_error", "Request timed out"), C.NETWORK, True, None),
    ("azure-400-content-filter", "openai", 400, {}, oai("The response was filtered due to the prompt triggering Azure OpenAI's content management policy.", None, "content_filter"), C.CONTENT_FILTER, False, None),
    ("openrouter-403-moderation", "openrouter", 403, {}, orr(403, "Input was flagged", reasons=["violence"], flagged_input="..."), C.CONTENT_FILTER, False, None),
    ("openrouter-400-content-policy", "openrouter", 400, {}, orr(400, "Blocked", error_type="content_policy_violation"), C.CONTENT_FILTER, False, None),
    ("openai-400-unsupported-parameter", "openai", 400, {}, oai("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", "invalid_request_error", "unsupported_parameter"), C.UNSUPPORTED, True, None),
    ("openai-400-invalid", "openai", 400, {}, oai("Invalid value for 'temperature'", "invalid_request_error", "invalid_value"), C.INVALID_REQUEST, False, None),
    ("ollama-400-no-tools", "ollama", 400, {}, {"error": "llama2:latest does not support tools"}, C.UNSUPPORTED, True, None),
    ("ollama-499-canceled", "ollama", 499, {}, {"error": "request canceled"}, C.CANCELLED, False, None),
    ("unknown-418", "openai", 418, {}, "I'm a teapot", C.INVALID_REQUEST, False, None),
]
# fmt: on


@pytest.mark.parametrize(
    ("kind", "status", "headers", "body", "category", "retryable", "retry_after"),
    [pytest.param(*row[1:], id=row[0]) for row in HTTP_ROWS],
)
def test_http_error_table(
    kind: str,
    status: int,
    headers: dict[str, str],
    body: Any,
    category: C,
    retryable: bool,
    retry_after: float | None,
) -> None:
    err = from_body(kind, status, body, headers)
    assert (err.category, err.retryable, err.status_code) == (category, retryable, status)
    assert err.retry_after == pytest.approx(retry_after)
    assert err.provider == kind
    assert err.message  # the provider's own words are kept


# fmt: off
STREAM_ROWS: list[tuple[str, str, ServerEvent, C, int | None]] = [
    ("openai-data-error", "openai", ServerEvent('{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}'), C.SERVER_ERROR, None),
    ("anthropic-event-error", "anthropic", ServerEvent('{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}', event="error"), C.OVERLOADED, None),
    ("openrouter-error-chunk-numeric", "openrouter", ServerEvent('{"id":"gen-abc123","object":"chat.completion.chunk","model":"openai/gpt-4o","provider":"OpenAI","error":{"code":429,"message":"Rate limit exceeded","metadata":{"error_type":"rate_limit_exceeded"}},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}'), C.RATE_LIMITED, 429),
    ("openrouter-error-chunk-string", "openrouter", ServerEvent('{"id":"cmpl-abc123","provider":"openai","error":{"code":"server_error","message":"Provider disconnected unexpectedly"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}'), C.SERVER_ERROR, None),
    ("openrouter-error-chunk-credits", "openrouter", ServerEvent('{"id":"gen-1","object":"chat.completion.chunk","error":{"code":"payment","message":"This request requires more credits, or fewer max_tokens. You requested up to 4096 tokens, but can only afford 4000."},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}'), C.QUOTA_EXHAUSTED, None),
    ("ollama-error-line", "ollama", ServerEvent('{"error":"an error was encountered while running the model"}'), C.SERVER_ERROR, None),
    ("llama-data-error", "openai", ServerEvent('{"error":{"code":500,"message":"slot failed","type":"server_error"}}'), C.SERVER_ERROR, 500),
]
# fmt: on


@pytest.mark.parametrize(
    ("kind", "event", "category", "status"),
    [pytest.param(*row[1:], id=row[0]) for row in STREAM_ROWS],
)
def test_mid_stream_error_table(
    kind: str, event: ServerEvent, category: C, status: int | None
) -> None:
    err = from_stream(kind, event)
    assert (err.category, err.retryable, err.status_code) == (category, True, status)
    assert err.message


_KEY = ConnectionKey("h", 80, False, True, None, None, None, None)


@pytest.mark.parametrize(
    ("exc", "what"),
    [
        (aiohttp.ConnectionTimeoutError("timed out"), "connect timeout after 5.0s"),
        (aiohttp.SocketTimeoutError("timed out"), "read timeout: no data for 6.0s"),
        (WriteTimeout("w"), "write timeout after 7.0s"),
        (aiohttp.ClientConnectorError(_KEY, ConnectionRefusedError(111, "refused")), "failed"),
        (aiohttp.ServerDisconnectedError(), "closed or broken"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), "closed or broken"),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "connection error"),
    ],
    ids=lambda e: type(e).__name__ if isinstance(e, Exception) else "",
)
def test_transport_failures_are_network(exc: aiohttp.ClientError, what: str) -> None:
    err = network_error("p", exc, Timeouts(connect=5.0, read=6.0, write=7.0, total=8.0))
    assert (err.category, err.retryable, err.retry_after) == (C.NETWORK, True, None)
    assert what in err.message


def test_quota_exhausted_is_never_retried_on_the_same_provider() -> None:
    # retryable=True means "another provider may succeed"; FAILOVER forbids a same-provider retry.
    assert DISPOSITION[C.QUOTA_EXHAUSTED] is Disposition.FAILOVER
    assert DISPOSITION[C.RATE_LIMITED] is Disposition.RETRY


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now.timestamp()) == 30.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    assert parse_retry_after({}) is None


def test_keys_are_scrubbed() -> None:
    key = "my-very-secret-key-value"
    assert "secret" not in scrub(f"bad key {key}", [key])
    assert scrub("Incorrect API key provided: sk-proj-abcdefghijklmnop", []) == (
        "Incorrect API key provided: ***"
    )
    err = scrubbed(ProviderError(C.AUTH, f"key {key} rejected", provider="x"), [key])
    assert key not in str(err) and err.category is C.AUTH
