"""The one category -> HTTP table (protocol.http_errors), read back by llmrelay's own workers.

An llmrelay gateway can sit behind another llmrelay (or any client that classifies the way
llmrelay's workers do). Each spelling must keep what matters about the failure: a spent
budget stays quota_exhausted (never a rate limit to wait out), a refusal stays final, and
the broker's own troubles become something the next hop may try elsewhere. The SDK side of
each row (exception class, retries) is tests/test_gateway_errors.py.
"""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCategory as C
from protocol.http_errors import ROWS, anthropic_error, openai_error, param_of
from tests.test_classify import from_body

MESSAGE = "injected failure"

# What each category reads back as, where it is not itself. Broker-side failures (busy, no
# provider, lost worker, ...) say nothing final about the request: the next hop retries.
OPENAI_READS_AS = {
    C.BROKER_BUSY: C.OVERLOADED,
    C.NO_PROVIDER: C.OVERLOADED,
    C.BROKER_UNREACHABLE: C.OVERLOADED,
    C.INTERNAL: C.SERVER_ERROR,
    C.WORKER_LOST: C.SERVER_ERROR,
    C.PROTOCOL: C.SERVER_ERROR,
    C.NETWORK: C.SERVER_ERROR,
    C.DEADLINE: C.SERVER_ERROR,
}
# Anthropic's types are coarser: the 400s are all invalid_request_error (context length is
# told apart by its message, "prompt is too long"), and every 5xx but 529 is api_error.
ANTHROPIC_READS_AS = {
    C.CONTEXT_LENGTH: C.INVALID_REQUEST,
    C.CONTENT_FILTER: C.INVALID_REQUEST,
    C.UNSUPPORTED: C.INVALID_REQUEST,
    C.BROKER_BUSY: C.OVERLOADED,
    C.NO_PROVIDER: C.SERVER_ERROR,
    C.BROKER_UNREACHABLE: C.SERVER_ERROR,
    C.INTERNAL: C.SERVER_ERROR,
    C.WORKER_LOST: C.SERVER_ERROR,
    C.PROTOCOL: C.SERVER_ERROR,
    C.NETWORK: C.SERVER_ERROR,
    C.DEADLINE: C.NETWORK,
    C.CANCELLED: C.SERVER_ERROR,
}


def test_every_category_has_one_row() -> None:
    assert set(ROWS) == set(C)


@pytest.mark.parametrize("category", list(C))
def test_openai_spelling_reads_back(category: C) -> None:
    row = ROWS[category]
    body = openai_error(row, MESSAGE, param_of(category, MESSAGE))
    assert set(body["error"]) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    got = from_body("openai", row.status, body).category
    assert got is OPENAI_READS_AS.get(category, category)


@pytest.mark.parametrize("category", list(C))
def test_anthropic_spelling_reads_back(category: C) -> None:
    row = ROWS[category]
    got = from_body("anthropic", row.anthropic_status, anthropic_error(row, MESSAGE)).category
    assert got is ANTHROPIC_READS_AS.get(category, category)


def test_quota_is_never_a_rate_limit_to_wait_out() -> None:
    row = ROWS[C.QUOTA_EXHAUSTED]
    assert row.should_retry is False
    assert (row.openai_type, row.openai_code) == ("insufficient_quota", "insufficient_quota")
    assert (row.anthropic_status, row.anthropic_type) == (402, "billing_error")


def test_param_names_the_field_at_fault() -> None:
    assert param_of(C.INVALID_REQUEST, "params.temperature: must be <= 2.0") == "temperature"
    assert param_of(C.CONTEXT_LENGTH, "prompt too long") == "messages"
    assert param_of(C.SERVER_ERROR, "params.x: boom") is None
