"""Unit tests of the wire format and the canonical job schema."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from protocol import messages as m
from protocol.client import build_job
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError, is_retryable
from protocol.job import Job
from protocol.job_stream import JobStream
from protocol.results import Reset, Token
from tests.harness import run_async


def job(**extra: object) -> Job:
    return build_job(model="mock:echo", prompt="hi", **extra)


def test_every_message_round_trips() -> None:
    samples: list[m.Message] = [
        m.Submit(job=job(), first_attempt=2, delivered=3, client="host-1-abc", answering=True),
        m.Accepted(
            job_id="a", candidates=["mock:echo"], skipped=[{"candidate": "x", "reason": "y"}]
        ),
        m.Cancel(job_id="a", attempt=2),
        m.Tokens(job_id="a", attempt=1, seq=5),
        m.Answering(job_id="a", attempt=2, provider="p", model="m/x:1", attempts=[{"a": 1}]),
        m.Restarted(job_id="a", attempt=2, reason="retry"),
        m.Completed(job_id="a", attempt=1, frames=4, result={"usage": {"prompt_tokens": 1}}),
        m.Failed(job_id="a", attempt=1, error=ProviderError("auth", "no").to_wire()),
        m.StatusQuery(),
        m.StatusReply(status={"queued": 0}),
        m.CatalogQuery(request="r1", query="models", args={"refresh": True}),
        m.CatalogReply(request="r1", result={"models": []}),
        m.CatalogReply(request="r2", error=ProviderError("invalid_request", "no").to_wire()),
        m.CountTokens(request="c1", model="m", messages=[{"role": "user", "content": "hi"}]),
        m.TokenCount(request="c1", tokens=12, method="tokenize"),
        m.TokenCount(request="c2", error="unsupported: no tokenizer"),
        m.Ping(),
        m.Pong(),
        m.Error(message="bad", job_id="a"),
        m.Ready(provider="p", kind="mock", models=["x"], capacity=2, pid=1, features=["seed"]),
        m.Heartbeat(inflight=1, stats={"rss": 1}),
        m.Dispatch(job=job(), attempt=1, model="echo"),
        m.Disconnect(reason="bye"),
        m.Rejected(reason="unknown provider 'x'"),
    ]
    assert {type(s) for s in samples} == set(m.REGISTRY.values())
    for sample in samples:
        assert m.decode(sample.encode()) == sample


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (b"\xc1\xff garbage", "msgpack"),
        (msgpack.packb([1, 2, 3]), "map"),
        (msgpack.packb({"v": 99, "t": "ping"}), "version"),
        (msgpack.packb({"v": 1, "t": "launch_missiles"}), "unknown message type"),
        (msgpack.packb({"v": 1, "t": "cancel"}), "cancel.job_id: missing"),
        (msgpack.packb({"v": 1, "t": "cancel", "job_id": 7}), "cancel.job_id"),
        (msgpack.packb({"v": 1, "t": "cancel", "job_id": "a", "x": 1}), "unknown field"),
        (msgpack.packb({"v": 1, "t": "tokens", "job_id": "a", "attempt": -1, "seq": 0}), "attempt"),
        (
            msgpack.packb(
                {
                    "v": 1,
                    "t": "ready",
                    "provider": "p",
                    "kind": "k",
                    "models": [],
                    "capacity": 0,
                    "pid": 1,
                }
            ),
            "capacity",
        ),
        (msgpack.packb({1: 2}), "msgpack"),
    ],
)
def test_bad_frames_are_rejected_with_the_field_named(frame: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolViolation, match=fragment):
        m.decode(frame)


def test_oversized_header_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="exceeds"):
        m.decode(b"\x00" * (m.MAX_HEADER_BYTES + 1))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"temperature": 3.0}, "params.temperature"),
        ({"max_tokens": 0}, "params.max_tokens"),
        ({"max_tokens": True}, "params.max_tokens"),
        ({"top_p": float("nan")}, "params.top_p"),
        ({"stop": [""]}, r"params.stop\[0\]"),
        ({"best_of": 3}, "params.best_of: unknown parameter"),
        ({"tools": [{"type": "function", "function": {}}]}, "function.name"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"on_partial": "shrug"}, "on_partial"),
        ({"priority": 1000}, "priority"),
        ({"timeout": -1}, "timeout"),
        ({"job_id": "has space"}, "job.id"),
    ],
)
def test_bad_jobs_name_the_parameter(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ProtocolViolation, match=fragment):
        job(**kwargs)


def test_message_validation() -> None:
    with pytest.raises(ProtocolViolation, match="role"):
        build_job(model="m", messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(ProtocolViolation, match=r"image_url\.url"):
        build_job(
            model="m",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                }
            ],
        )
    with pytest.raises(ProtocolViolation, match="tool_call_id"):
        build_job(model="m", messages=[{"role": "tool", "content": "42"}])
    with pytest.raises(ProtocolViolation, match="exactly one of model or route"):
        Job.from_wire(
            {"id": "a", "messages": [{"role": "user", "content": "x"}], "model": "m", "route": "r"}
        )


def test_required_features_name_params_and_vision() -> None:
    vision = build_job(
        model="m",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
        top_k=5,
        seed=1,
    )
    assert vision.required_features() == {"vision", "top_k", "seed"}


def test_error_taxonomy() -> None:
    err = ProviderError("quota_exhausted", "out of credit", provider="openai", status_code=429)
    assert isinstance(err, RuntimeError)
    assert err.retryable  # another provider may still run it
    assert not is_retryable(ErrorCategory.INVALID_REQUEST)
    again = ProviderError.from_wire(err.to_wire())
    assert (again.category, again.provider, again.status_code) == (
        ErrorCategory.QUOTA_EXHAUSTED,
        "openai",
        429,
    )
    assert "openai" in str(err) and "429" in str(err)
    assert "ratelimit" not in err.to_wire() and again.ratelimit is None  # optional field
    limited = ProviderError("rate_limited", "slow down", ratelimit={"requests_remaining": 0})
    assert ProviderError.from_wire(limited.to_wire()).ratelimit == {"requests_remaining": 0}
    assert (
        ProviderError.from_wire({"category": "rate_limited", "ratelimit": "junk"}).ratelimit is None
    )


def test_client_delivers_in_order_once_and_resets() -> None:
    pending = JobStream(job=job())
    pending.attempt = 1
    for seq, text in [(1, "b"), (0, "a"), (0, "a"), (3, "d"), (2, "c"), (1, "b")]:
        pending.deliver(seq, text)
    got, pending.ready = pending.ready, []
    assert got == [Token("a"), Token("b"), Token("c"), Token("d")]
    pending.start_attempt(2, "worker died")
    assert pending.ready == [Reset(reason="worker died", attempt=2)]
    assert pending.next_seq == 0 and pending.parts == []


@run_async
async def test_take_wakes_a_waiter_and_survives_another_one_cancelled() -> None:
    """Two callers waiting on one stream: each event goes to one of them, and a caller
    cancelled while waiting leaves the other waiting (no lost wake-up, no hang)."""
    pending = JobStream(job=job())
    first, second = asyncio.ensure_future(pending.take()), asyncio.ensure_future(pending.take())
    await asyncio.sleep(0)
    pending.put(Token("a"))
    done, waiting = await asyncio.wait({first, second}, timeout=5)
    assert [t.result() for t in done] == [[Token("a")]] and len(waiting) == 1
    third = asyncio.ensure_future(pending.take())
    await asyncio.sleep(0)
    waiting.pop().cancel()
    await asyncio.sleep(0)
    pending.put(Token("b"))
    assert await asyncio.wait_for(third, 5) == [Token("b")]
    assert pending.ready == []


def test_a_stream_without_token_events_keeps_the_text_and_the_resets() -> None:
    pending = JobStream(job=job(), tokens=False)
    pending.attempt = 1
    for seq, text in [(1, "b"), (0, "a"), (2, "c")]:
        pending.deliver(seq, text)
    pending.start_attempt(2, "worker died")
    pending.deliver(0, "z")
    assert pending.ready == []  # nothing per token, and no Reset event either
    assert pending.parts == ["z"] and pending.resets == 1
    pending.end(Reset(reason="stand-in for the final event", attempt=2))
    assert len(pending.ready) == 1


def test_map_reports_an_invalid_item_instead_of_hanging() -> None:
    import asyncio

    from protocol.client import AsyncClient

    async def main() -> list[object]:
        client = AsyncClient("tcp://127.0.0.1:9")  # never contacted: the item is invalid
        try:
            return [o async for o in client.map([{"model": "m", "prompt": "x", "best_of": 2}])]
        finally:
            await client.close()

    (outcome,) = asyncio.run(asyncio.wait_for(main(), 10))
    assert isinstance(outcome, ProviderError)
    assert outcome.category is ErrorCategory.INVALID_REQUEST and "best_of" in outcome.message


def test_maps_and_known_keys_checked_on_the_fast_path_too() -> None:
    """need_map and no_extra take a shortcut for plain dicts and frozensets: what they reject
    (a bin key, an unknown key) and what they promise (a copy, str subclasses allowed) hold."""
    wire = job().to_wire()
    frame = m.Submit(job=job(), client="c").encode()
    body = msgpack.unpackb(frame, raw=False)
    body["job"]["metadata"] = {b"bin-key": 1}
    with pytest.raises(ProtocolViolation, match=r"job\.metadata: expected a map with string keys"):
        m.decode(msgpack.packb(body, use_bin_type=True))
    body["job"]["metadata"] = {}
    body["job"]["messages"] = [{"role": "user", "content": "x", "colour": "red"}]
    with pytest.raises(ProtocolViolation, match=r"messages\[0\]: unknown field\(s\) \['colour'\]"):
        m.decode(msgpack.packb(body, use_bin_type=True))
    body["job"]["messages"] = [{"role": "user", "content": "x"}]
    body["job"]["colour"] = "red"
    with pytest.raises(ProtocolViolation, match=r"job: unknown field\(s\) \['colour'\]"):
        m.decode(msgpack.packb(body, use_bin_type=True))

    class Key(str):
        pass

    metadata = {Key("tag"): 1}
    parsed = Job.from_wire({**wire, "metadata": metadata})
    assert parsed.metadata == {"tag": 1}
    assert parsed.metadata is not metadata  # a copy: the caller's map stays the caller's
