"""The OpenAI Batch API through the official SDK, across two providers, with the gateway
killed and restarted mid-batch: the batch still completes with every custom_id once."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from tests.gateway_support import GatewayProcess, mock_provider

pytestmark = pytest.mark.timeout(240)
LINES = 1000


def batch_input() -> bytes:
    rows = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "alpha:echo" if i % 2 else "beta:echo",
                "messages": [{"role": "user", "content": f"line {i}"}],
            },
        }
        for i in range(LINES)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def poll(sdk: openai.OpenAI, batch_id: str, done: Any, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


def test_batch_across_two_providers_survives_a_gateway_restart(
    broker_factory: Any, gateway_factory: Any
) -> None:
    slow = {"first_token_delay": 0.1}  # so the batch takes long enough to be interrupted
    broker = broker_factory(
        {"alpha": mock_provider(capacity=32, **slow), "beta": mock_provider(capacity=32, **slow)}
    )
    broker.wait_workers(2)
    gateway: GatewayProcess = gateway_factory(broker)
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=2)
    upload = sdk.files.create(file=("in.jsonl", batch_input()), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status in ("validating", "in_progress")
    midway = poll(sdk, batch.id, lambda b: b.request_counts and b.request_counts.completed >= 100)
    assert midway.status == "in_progress"
    assert midway.request_counts is not None and midway.request_counts.completed < LINES

    gateway.stop()  # kill -9 of the gateway's process group mid-batch
    gateway.start()
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=2)
    final = poll(sdk, batch.id, lambda b: b.status in ("completed", "failed", "cancelled"))
    assert final.status == "completed"
    assert final.request_counts is not None
    assert (final.request_counts.total, final.request_counts.completed) == (LINES, LINES)
    assert final.request_counts.failed == 0 and final.error_file_id is None
    assert final.output_file_id is not None
    lines = [json.loads(x) for x in sdk.files.content(final.output_file_id).text.splitlines()]
    ids = [line["custom_id"] for line in lines]
    assert len(ids) == LINES and set(ids) == {f"req-{i}" for i in range(LINES)}
    for line in lines:
        assert line["response"]["status_code"] == 200
        i = int(line["custom_id"].split("-")[1])
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == f"line {i} "
    providers = {line["llmrelay"]["provider"] for line in lines}
    assert providers == {"alpha", "beta"}
    listed = [b.id for b in sdk.batches.list(limit=10)]
    assert listed == [batch.id]
