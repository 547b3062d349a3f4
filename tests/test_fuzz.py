# ruff: noqa: E501  (strategy tables read best one per line)
"""Property-based fuzzing: decoding never fails in any way but the documented one.

Random and mutated frames (tests/fuzz_frames.py, built from the real message schemas) go
to the message decoder and the client's handler; random byte streams, split anywhere, go
to the SSE/NDJSON decoders and each provider's stream mapper. The broker's two sockets are
fuzzed over real ZeroMQ in tests/test_fuzz_broker.py. `make soak` runs ten times more cases
(FUZZ_SCALE).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.client import AsyncClient
from protocol.errors import ProtocolViolation, ProviderError
from protocol.results import Done, Reset, Token
from tests.fuzz_frames import JOB, header_frames, json_values, messages, values
from workers.decode import ServerEvent, StreamDecodeError, make_decoder
from workers.http import HttpBackend
from workers.http_mapping import Malformed, StreamError, shape_checked
from workers.registry import backend_class
from workers.spec import ProviderSpec

# A pytest-timeout alarm inside a Hypothesis draw shows up as a confusing flaky-strategy
# error, so these get room enough for a loaded machine.
pytestmark = pytest.mark.timeout(900)
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=2000 * SCALE,
    deadline=None,  # a loaded 2-core host makes single examples slow now and then
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # every run draws fresh cases; failures print their reproduction
)


@FUZZ
@given(header_frames)
def test_decode_raises_only_protocol_violations(frame: bytes) -> None:
    try:
        msg = m.decode(frame)
    except ProtocolViolation as exc:
        assert str(exc)  # names what was wrong
        return
    assert isinstance(msg, m.Message)
    assert m.decode(msg.encode()) == msg  # whatever is accepted survives a round trip


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@FUZZ
@given(st.lists(messages, min_size=1, max_size=8))
def test_client_handler_survives_any_frames(
    loop: asyncio.AbstractEventLoop, batch: list[list[bytes]]
) -> None:
    async def feed() -> list[Any]:
        client = AsyncClient("tcp://127.0.0.1:1")  # never started: _handle is driven directly
        pending = client.pending.setdefault(JOB.id, _pending())
        client._send_submit = _no_send  # type: ignore[method-assign]  # a resubmission is fine
        for frames in batch:
            if not frames:
                continue
            try:
                client._handle(frames)
            except ProtocolViolation:
                pass  # the receiver drops it; anything else would escape as a crash
        await asyncio.sleep(0)
        return pending.ready

    events = loop.run_until_complete(feed())
    assert all(isinstance(e, Token | Reset | Done | ProviderError) for e in events)
    finals = [e for e in events if isinstance(e, Done | ProviderError)]
    assert len(finals) <= 1  # at most one final answer, never two


def _pending() -> Any:
    from protocol.job_stream import JobStream

    return JobStream(job=JOB)


async def _no_send(_: Any) -> None:
    return None


sse_text = st.lists(
    st.sampled_from(
        ["data: ", "event: ", "id: ", "retry: ", ": comment", "\n", "\r\n", "\r", "{}", "[DONE]"]
    )
    | st.text(max_size=20),
    max_size=30,
).map("".join)
stream_bytes = sse_text.map(str.encode) | st.binary(max_size=300)


def _decode_all(framing: str, chunks: list[bytes]) -> list[ServerEvent] | str:
    decoder = make_decoder(framing)  # type: ignore[arg-type]
    events: list[ServerEvent] = []
    try:
        for chunk in chunks:
            events += decoder.feed(chunk)
        events += decoder.close()
    except StreamDecodeError:
        return "error"
    return events


@FUZZ
@given(st.sampled_from(["sse", "ndjson"]), stream_bytes, st.lists(st.integers(0, 300), max_size=6))
def test_stream_decoders_are_split_invariant(framing: str, data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert _decode_all(framing, chunks) == _decode_all(framing, [data])


MAPPED_KINDS = ("openai", "anthropic", "openrouter", "ollama")
json_events = values.map(lambda v: json.dumps(v, default=repr))
provider_shaped = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message_start", "content_block_delta", "message_delta", "error", "ping"]),
        "choices": st.lists(st.fixed_dictionaries({}, optional={"delta": json_values, "finish_reason": json_values, "index": json_values}), max_size=2),
        "delta": json_values, "message": json_values, "done": json_values, "error": json_values, "usage": json_values, "index": json_values,
    },
).map(json.dumps)  # fmt: skip


@FUZZ
@given(
    st.sampled_from(MAPPED_KINDS),
    st.lists(
        st.tuples(
            st.sampled_from(["message", "error", "content_block_delta"]),
            json_events | provider_shaped | st.text(max_size=30),
        ),
        max_size=6,
    ),
)
def test_stream_mappers_raise_only_their_documented_errors(
    kind: str, events: list[tuple[str, str]]
) -> None:
    backend = backend_class(kind)(ProviderSpec(kind, kind, options={"api_key": "k"}))
    assert isinstance(backend, HttpBackend)
    mapper = backend.stream_mapper(JOB)
    try:
        for name, data in events:
            # The streaming path's own wrapper: a wrong JSON shape becomes Malformed there.
            for delta in shape_checked(mapper.on_event, ServerEvent(data=data, event=name)):
                assert isinstance(delta.text, str)
        mapper.finish()
    except (StreamError, Malformed, ProviderError):
        pass
