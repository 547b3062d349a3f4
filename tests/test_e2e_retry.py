"""Retry, failover, circuit breaking, deadlines and no-silent-drop semantics, end to end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocol.client import AsyncClient
from protocol.errors import ErrorCategory, ProviderError
from protocol.job import build_job
from protocol.results import Done, Reset, Token

pytestmark = pytest.mark.timeout(120)

TOKENS = [f"x{k} " for k in range(8)]


def two_providers(broker_factory: Any, **broker: Any) -> Any:
    process = broker_factory(
        {"flaky": {"kind": "mock", "capacity": 4}, "backup": {"kind": "mock", "capacity": 4}},
        {"chain": ["flaky:echo", "backup:echo"]},
        **broker,
    )
    process.wait_workers(2)
    return process


def script(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"mock": {"tokens": TOKENS, "fail": list(rules)}}


def outcomes(result: Any) -> list[tuple[str, str]]:
    return [(a["provider"], a["outcome"]) for a in result.attempts]


def test_failover_semantics(broker_factory: Any) -> None:
    broker = two_providers(broker_factory)
    with broker.client() as client:
        # Quota exhausted: never again on that provider, fail over, and the provider's
        # circuit opens so the next job skips it without an attempt.
        result = client.complete(
            route="chain",
            prompt="x",
            metadata=script({"attempt": 1, "category": "quota_exhausted", "status_code": 429}),
        )
        assert result.text == "".join(TOKENS)
        assert outcomes(result) == [("flaky", "quota_exhausted"), ("backup", "ok")]
        second = client.complete(route="chain", prompt="y")
        assert outcomes(second) == [("backup", "ok")]
        health = client.status()["health"]
        assert health["flaky"]["circuit"] == "open" and health["backup"]["state"] == "healthy"
    assert broker.events("circuit_opened")[0]["provider"] == "flaky"
    assert broker.events("failover")


def test_rate_limit_retries_then_invalid_request_is_final(broker_factory: Any) -> None:
    broker = broker_factory({"solo": {"kind": "mock", "capacity": 2}})
    broker.wait_workers(1)
    with broker.client() as client:
        result = client.complete(
            model="solo:echo",
            prompt="x",
            metadata=script(
                {"attempt": 1, "category": "rate_limited", "retry_after": 0.3},
                {"attempt": 2, "category": "server_error", "status_code": 502},
            ),
        )
        assert outcomes(result) == [
            ("solo", "rate_limited"),
            ("solo", "server_error"),
            ("solo", "ok"),
        ]
        assert result.attempts[0]["retry_after"] == 0.3
        with pytest.raises(ProviderError) as info:
            client.complete(
                model="solo:echo",
                prompt="x",
                metadata=script(
                    {"category": "invalid_request", "status_code": 400, "message": "bad schema"}
                ),
            )
        err = info.value
        assert err.category is ErrorCategory.INVALID_REQUEST and not err.retryable
        assert err.status_code == 400 and "bad schema" in err.message
        assert len(err.attempts) == 1
        with pytest.raises(ProviderError) as info:
            client.complete(
                model="solo:echo",
                prompt="x",
                max_attempts=2,
                metadata=script({"category": "server_error"}),
            )
        assert info.value.category is ErrorCategory.SERVER_ERROR
        assert [a["outcome"] for a in info.value.attempts] == ["server_error"] * 2
    retries = broker.events("retry_scheduled")
    assert retries[0]["delay"] == 0.3  # Retry-After is honoured exactly


def test_partial_output_policies(broker_factory: Any) -> None:
    broker = broker_factory({"solo": {"kind": "mock", "capacity": 2}})
    broker.wait_workers(1)
    with broker.client() as client:
        events = list(
            client.stream(
                model="solo:echo",
                prompt="x",
                metadata=script({"attempt": 1, "after": 3, "category": "network"}),
            )
        )
        kinds = [type(e).__name__ for e in events]
        assert kinds.count("Reset") == 1
        reset_at = kinds.index("Reset")
        before = "".join(e.text for e in events[:reset_at] if isinstance(e, Token))
        assert before == "".join(TOKENS[:3])
        tail = "".join(e.text for e in events[reset_at:] if isinstance(e, Token))
        assert tail == "".join(TOKENS) and isinstance(events[-1], Done)
        assert isinstance(events[reset_at], Reset) and "injected" in events[reset_at].reason

        received: list[str] = []
        with pytest.raises(ProviderError) as info:
            for event in client.stream(
                model="solo:echo",
                prompt="x",
                on_partial="fail",
                metadata=script({"attempt": 1, "after": 3, "category": "network"}),
            ):
                if isinstance(event, Token):
                    received.append(event.text)
        assert info.value.category is ErrorCategory.NETWORK
        assert "on_partial=fail" in info.value.message
        assert "".join(received) == "".join(TOKENS[:3])

        # A failure before any token reached the caller is invisible: no reset.
        events = list(
            client.stream(
                model="solo:echo",
                prompt="x",
                metadata=script({"attempt": 1, "after": 0, "category": "overloaded"}),
            )
        )
        assert not any(isinstance(e, Reset) for e in events)
        assert events[-1].result.text == "".join(TOKENS)


def test_result_without_token_events_counts_the_restart(broker_factory: Any) -> None:
    """`AsyncClient.result` (behind complete, map and the batch runner) makes no per-token
    events, yet its result is the stream's: the last attempt's whole text and the reset."""
    broker = broker_factory({"solo": {"kind": "mock", "capacity": 2}})
    broker.wait_workers(1)
    failing = script({"attempt": 1, "after": 3, "category": "network"})

    async def main() -> tuple[Any, Any]:
        async with AsyncClient(broker.client_endpoint) as c:
            quiet = await c.result(build_job(model="solo:echo", prompt="x", metadata=failing))
            events = [e async for e in c.stream(model="solo:echo", prompt="x", metadata=failing)]
            return quiet, events[-1].result

    quiet, streamed = asyncio.run(asyncio.wait_for(main(), 60))
    with broker.client() as client:  # the blocking client's `result`
        blocking = client.result(build_job(model="solo:echo", prompt="x", metadata=failing))
    for result in (quiet, streamed, blocking):
        assert result.text == "".join(TOKENS) and result.resets == 1
        assert [a["outcome"] for a in result.attempts] == ["network", "ok"]


def test_open_circuit_makes_jobs_wait_for_recovery(broker_factory: Any) -> None:
    broker = broker_factory(
        {"solo": {"kind": "mock", "capacity": 2}}, circuit_failures=2, circuit_cooldown=1.0
    )
    broker.wait_workers(1)
    with broker.client() as client:
        result = client.complete(
            model="solo:echo",
            prompt="x",
            timeout=30,
            metadata=script(
                {"attempt": 1, "category": "server_error"},
                {"attempt": 2, "category": "server_error"},
            ),
        )
        assert [a["outcome"] for a in result.attempts] == ["server_error", "server_error", "ok"]
        assert client.status()["health"]["solo"]["circuit"] == "closed"
    for event in ("circuit_opened", "circuit_half_open", "circuit_closed"):
        assert [e["provider"] for e in broker.events(event)][:1] == ["solo"], event


def test_deadline_fails_a_stalled_job(broker_factory: Any) -> None:
    broker = broker_factory({"solo": {"kind": "mock", "capacity": 2}})
    broker.wait_workers(1)
    with broker.client() as client:
        with pytest.raises(ProviderError) as info:
            client.complete(
                model="solo:echo",
                prompt="x",
                timeout=1.0,
                metadata=script({"after": 2, "mode": "stall"}),
            )
        assert info.value.category is ErrorCategory.DEADLINE
        # The stalled attempt was cancelled on the worker, freeing its slot.
        assert client.complete(model="solo:echo", prompt="ok").text == "ok "


def test_full_broker_answers_with_a_clear_error(broker_factory: Any) -> None:
    broker = broker_factory({"solo": {"kind": "mock", "capacity": 1}}, max_queued=2)
    broker.wait_workers(1)
    slow = {"mock": {"tokens": ["a"], "first_token_delay": 2.0}}
    with broker.client() as client:
        outcomes_ = list(
            client.map(
                [{"model": "solo:echo", "prompt": "x", "metadata": slow} for _ in range(3)],
                concurrency=3,
            )
        )
        assert all(not isinstance(o, ProviderError) for o in outcomes_)  # map waited

        async def burst() -> list[Any]:
            async with AsyncClient(broker.client_endpoint) as c:
                return await asyncio.gather(
                    *(c.complete(model="solo:echo", prompt="x", metadata=slow) for _ in range(5)),
                    return_exceptions=True,
                )

        results = asyncio.run(burst())
        busy = [r for r in results if isinstance(r, ProviderError)]
        assert busy and all(r.category is ErrorCategory.BROKER_BUSY for r in busy)
        assert all("queue full" in r.message for r in busy)
