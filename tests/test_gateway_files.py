"""The OpenAI Files API through the official SDK: upload, retrieve, content, list, delete,
and the files still there after the gateway restarts."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.gateway_support import GatewayProcess, mock_provider

pytestmark = pytest.mark.timeout(120)


def test_files_round_trip_and_survive_a_restart(broker_factory: Any, gateway_factory: Any) -> None:
    broker = broker_factory({"mock": mock_provider()})
    broker.wait_workers(1)
    gateway: GatewayProcess = gateway_factory(broker)
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    data = b"".join(b'{"custom_id": "r%d"}\n' % i for i in range(1000))
    made = sdk.files.create(file=("in.jsonl", data), purpose="batch")
    assert made.id.startswith("file-") and made.bytes == len(data)
    assert (made.filename, made.purpose) == ("in.jsonl", "batch")
    assert sdk.files.retrieve(made.id).bytes == len(data)
    assert sdk.files.content(made.id).content == data
    other = sdk.files.create(file=("b.jsonl", b"{}\n"), purpose="user_data")
    assert [f.id for f in sdk.files.list(purpose="batch")] == [made.id]

    gateway.stop()
    gateway.start()
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    assert sdk.files.content(made.id).content == data  # the store is on disk
    assert {f.id for f in sdk.files.list()} == {made.id, other.id}
    assert sdk.files.delete(made.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(made.id)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.files.create(file=("x.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert info.value.param == "purpose"
