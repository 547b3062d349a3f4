"""`/metrics` after a known run: the GenAI names and llmrelay's own, with the run's values."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway_support import GatewayProcess, mock_provider
from tests.harness import BrokerProcess

pytestmark = pytest.mark.timeout(120)


def scrape(gateway: GatewayProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reply = httpx.get(gateway.url + "/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert found, f"no sample {name}{labels}; have {sorted({n for n, _ in samples})}"
    return sum(found)


def test_metrics_match_a_known_run(broker_factory: Any, gateway_factory: Any) -> None:
    broker: BrokerProcess = broker_factory(
        {"mock": mock_provider(), "flaky": mock_provider()},
        {"default": ["mock:echo"], "chain": ["flaky:echo", "mock:echo"]},
    )
    broker.wait_workers(2)
    gateway: GatewayProcess = gateway_factory(broker)
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "a b c"}]
    for _ in range(3):
        sdk.chat.completions.create(model="mock:echo", messages=messages)
    for _ in range(2):
        list(sdk.chat.completions.create(model="mock:echo", messages=messages, stream=True))
    bad = {"metadata": {"mock": {"fail": [{"category": "invalid_request"}]}}}
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="mock:echo", messages=messages, extra_body=bad)
    # attempt 1 (on flaky) fails with not_found: the job fails over to mock
    over = {"metadata": {"mock": {"fail": [{"category": "not_found", "attempt": 1}]}}}
    chained = sdk.chat.completions.with_raw_response.create(
        model="chain", messages=messages, extra_body=over
    )
    assert chained.headers["x-llmrelay-attempt-trail"] == "flaky:echo=not_found,mock:echo=ok"

    # Broker figures come from its status reply, cached for up to a second (status_cache).
    deadline = time.monotonic() + 10
    while True:
        s = scrape(gateway)
        if value(s, "llmrelay_broker_jobs_total", outcome="submitted") == 7:
            break
        assert time.monotonic() < deadline, "the broker's figures never caught up"
        time.sleep(0.2)
    ok = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "mock", "error_type": ""}
    assert (
        value(
            s,
            "gen_ai_server_request_duration_seconds_count",
            **ok,
            gen_ai_request_model="mock:echo",
        )
        == 5
    )
    assert (
        value(s, "gen_ai_server_request_duration_seconds_count", **ok, gen_ai_request_model="chain")
        == 1
    )
    assert (
        value(s, "gen_ai_server_request_duration_seconds_count", error_type="invalid_request") == 1
    )
    assert (
        value(
            s,
            "gen_ai_server_request_duration_seconds_bucket",
            le="+Inf",
            gen_ai_request_model="mock:echo",
            error_type="",
        )
        == 5
    )
    assert value(s, "gen_ai_server_time_to_first_token_seconds_count") == 2
    for kind in ("input", "output"):
        assert value(s, "gen_ai_client_token_usage_count", gen_ai_token_type=kind) == 6
        assert value(s, "gen_ai_client_token_usage_sum", gen_ai_token_type=kind) == 18
    assert value(s, "gen_ai_client_operation_duration_seconds_count") == 6
    assert value(s, "llmrelay_http_requests_total", api="openai", status="200") == 6
    assert value(s, "llmrelay_http_requests_total", api="openai", status="400") == 1
    assert value(s, "llmrelay_gateway_jobs_total", outcome="done") == 6
    assert (
        value(s, "llmrelay_gateway_jobs_total", outcome="failed", category="invalid_request") == 1
    )
    assert value(s, "llmrelay_failovers_total", from_provider="flaky", to_provider="mock") == 1
    assert (
        value(s, "llmrelay_gateway_attempts_total", llmrelay_provider="flaky", outcome="not_found")
        == 1
    )
    # from the broker's status reply
    assert value(s, "llmrelay_broker_up") == 1
    assert value(s, "llmrelay_broker_jobs_total", outcome="done") == 6
    assert value(s, "llmrelay_broker_jobs_total", outcome="failed") == 1
    assert value(s, "llmrelay_broker_jobs_total", outcome="submitted") == 7
    assert value(s, "llmrelay_queue_depth") == 0
    assert value(s, "llmrelay_jobs_running") == 0
    assert value(s, "llmrelay_circuit_state", llmrelay_provider="mock", model="") == 0
    assert value(s, "llmrelay_worker_capacity", llmrelay_provider="mock") == 16
    assert value(s, "llmrelay_worker_inflight", llmrelay_provider="mock") == 0
    assert value(s, "llmrelay_worker_rss_bytes", llmrelay_provider="mock") > 1 << 20
    assert value(s, "llmrelay_provider_workers", llmrelay_provider="flaky") == 1
    assert value(s, "llmrelay_pacing_paused_seconds", llmrelay_provider="mock") == 0
    assert value(s, "llmrelay_gateway_stream_backlog_bytes") == 0
    assert value(s, "llmrelay_gateway_inflight_requests") == 0


def test_broker_down_shows_as_zero(broker_factory: Any, gateway_factory: Any) -> None:
    broker: BrokerProcess = broker_factory({"mock": mock_provider()})
    broker.wait_workers(1)
    gateway: GatewayProcess = gateway_factory(broker)
    broker.kill()
    deadline = time.monotonic() + 15  # the last good reply is served for up to a second
    while value(scrape(gateway), "llmrelay_broker_up") != 0:
        assert time.monotonic() < deadline, "broker_up stayed 1 after the broker died"
        time.sleep(0.2)
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["reason"] == "broker unreachable"
    assert httpx.get(gateway.url + "/healthz").status_code == 200
