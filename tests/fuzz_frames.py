"""Frames for fuzzing, built from the real message schemas: valid ones, then mutations.

`VALID` holds one real encoding per message type (every field set). Hypothesis strategies
mutate them at the value level (a field replaced, dropped or added; the type or version
changed) and at the byte level (flips, cuts, splices), and add plain random bytes.
`mutated_frames(rng, n)` makes the same kinds of frames quickly from a seeded RNG, for the
long memory runs where Hypothesis's per-example overhead would dominate.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
from hypothesis import strategies as st

from protocol import messages as m
from protocol.client import build_job

JOB = build_job(model="mock:echo", prompt="fuzz", job_id="fuzz-job", max_tokens=5, timeout=30)

EXAMPLES: list[m.Message] = [
    m.Submit(job=JOB, first_attempt=2, delivered=1, client="fuzzer", answering=True),
    m.Accepted(
        job_id="fuzz-job", candidates=["mock:echo"], skipped=[{"candidate": "x:y"}], broker="run-1"
    ),
    m.Cancel(job_id="fuzz-job", attempt=1),
    m.Tokens(job_id="fuzz-job", attempt=1, seq=0),
    m.Answering(
        job_id="fuzz-job",
        attempt=2,
        provider="mock",
        model="echo",
        attempts=[{"attempt": 1, "provider": "mock", "model": "echo", "outcome": "network"}],
    ),
    m.Restarted(job_id="fuzz-job", attempt=2, reason="retried"),
    m.Completed(
        job_id="fuzz-job",
        attempt=1,
        frames=1,
        result={
            "finish_reason": "stop",
            "usage": {"total_tokens": 1},
            "model": "echo",
            "worker_latency": 0.01,
            "worker_ttft": None,
            "ratelimit": {"requests_remaining": 5, "requests_reset": 1.5},
        },
    ),
    m.Failed(job_id="fuzz-job", attempt=1, error={"category": "server_error", "message": "x"}),
    m.StatusQuery(),
    m.StatusReply(status={"queued": 0}),
    m.Ping(),
    m.Pong(broker="run-1"),
    m.Error(message="boom", job_id="fuzz-job"),
    m.Ready(provider="mock", kind="mock", models=["echo"], capacity=2, pid=1, features=["stop"]),
    m.Heartbeat(inflight=1, stats={"rss": 1}),
    m.Dispatch(job=JOB, attempt=1, model="echo"),
    m.Disconnect(reason="unknown worker"),
    m.CatalogQuery(request="q1", query="capabilities", args={"model": "mock:echo"}),
    m.CatalogReply(request="q1", result={"context_window": 1}, error=None),
    m.CountTokens(request="q2", model="echo", messages=[{"role": "user", "content": "hi"}]),
    m.TokenCount(request="q2", tokens=3, method="exact", error=None),
    m.Rejected(reason="unknown provider"),
]
assert {type(e) for e in EXAMPLES} == set(m.REGISTRY.values()), "a message type has no example"
VALID: list[dict[str, Any]] = [e.to_wire() for e in EXAMPLES]

# Values msgpack can carry, nested a little: what a hostile peer can put in any field.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_body(draw: st.DrawFn) -> dict[str, Any]:
    body = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "drop", "add", "type", "version", "nested"]))
        keys = sorted(body)
        if action == "replace" and keys:
            body[draw(st.sampled_from(keys))] = draw(values)
        elif action == "drop" and keys:
            body.pop(draw(st.sampled_from(keys)))
        elif action == "add":
            body[draw(st.text(max_size=10))] = draw(values)
        elif action == "type":
            body["t"] = draw(st.sampled_from(sorted(m.REGISTRY)) | st.text(max_size=8) | values)
        elif action == "version":
            body["v"] = draw(values)
        elif action == "nested" and isinstance(body.get("job"), dict):
            job = dict(body["job"])
            field = draw(st.sampled_from([*sorted(job), "params", "messages", "extra"]))
            job[field] = draw(values)
            body["job"] = job
    return body


def pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


@st.composite
def byte_mutation(draw: st.DrawFn) -> bytes:
    data = bytearray(pack(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[at:] = pack(draw(st.sampled_from(VALID)))
    return bytes(data)


header_frames = (
    mutated_body().map(pack)
    | byte_mutation()
    | st.binary(max_size=200)
    | st.sampled_from(VALID).map(pack)
)
# A whole multipart message: the header, then maybe payload frames (tokens ride in frame 2).
messages = st.lists(header_frames | st.binary(max_size=64), min_size=0, max_size=4)


def mutated_frames(rng: random.Random, count: int) -> list[list[bytes]]:
    """`count` multipart messages of the same kinds, fast, from a seeded RNG."""
    encoded = [pack(body) for body in VALID]
    out: list[list[bytes]] = []
    for _ in range(count):
        base = bytearray(rng.choice(encoded))
        kind = rng.random()
        if kind < 0.3:
            base[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
        elif kind < 0.5:
            del base[rng.randrange(len(base)) :]
        elif kind < 0.7:
            body = dict(rng.choice(VALID))
            body[rng.choice(sorted(body))] = rng.choice([None, -1, 2**40, "x" * 300, [1] * 50, {}])
            base = bytearray(pack(body))
        elif kind < 0.9:
            base = bytearray(rng.randbytes(rng.randrange(1, 200)))
        frames = [bytes(base)]
        if rng.random() < 0.3:
            frames.append(rng.randbytes(rng.randrange(0, 64)))
        out.append(frames)
    return out
