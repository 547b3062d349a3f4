"""Unit tests of the broker's pure parts: fair queues, circuit breaker, pacing, routing."""

from __future__ import annotations

import re

import pytest

from dispatcher.catalog_service import build_catalog
from dispatcher.config import ConfigError, default_config, parse_config
from dispatcher.health import Circuit, CircuitPolicy, Health
from dispatcher.pacing import Pacer
from dispatcher.queues import FairQueue
from dispatcher.routing import Candidate, resolve
from protocol.client import build_job
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError
from protocol.result_schema import RateLimits


def test_fair_queue_interleaves_clients_and_honours_priority() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(1000):
        queue.push(b"batch", 0, f"b{i}")
    queue.push(b"interactive", 0, "i0")
    queue.push(b"interactive", 5, "urgent")
    taken = []
    for item in queue.rounds(lambda item: True):
        taken.append(item)
        if len(taken) == 4:
            break
    assert "urgent" in taken[:2] and "i0" in taken[:4]
    assert len(queue) == 1002 - 4


def test_fair_queue_lookahead_skips_blocked_heads() -> None:
    queue: FairQueue[str] = FairQueue()
    for item in ["blocked1", "blocked2", "ok"]:
        queue.push(b"c", 0, item)
    assert list(queue.rounds(lambda item: item == "ok")) == ["ok"]
    assert len(queue) == 2 and queue.remove(b"c", 0, "blocked2") and len(queue) == 1


def test_circuit_breaker_cycle() -> None:
    health = Health("p", CircuitPolicy(failures=3, cooldown=10, max_cooldown=40))
    for _ in range(2):
        assert health.record_failure(0.0, "server_error") is None
    assert health.state == "degraded"
    assert health.record_failure(0.0, "server_error") == "open"
    assert not health.allows(5.0) and health.ready_at() == 10.0
    assert health.allows(10.0)
    assert health.on_dispatch(10.0) == "half_open"
    assert not health.allows(10.0)  # one probe at a time
    assert health.record_failure(11.0, "server_error") == "open"
    assert health.cooldown == 20  # doubled after a failed probe
    health.on_dispatch(31.0)
    assert health.record_success(0.1) == "closed"
    assert health.circuit is Circuit.CLOSED
    assert health.state == "degraded"  # closed, but most recent outcomes were failures
    for _ in range(15):
        health.record_success(0.1)
    assert health.state == "healthy"


def test_hold_opens_at_once() -> None:
    health = Health("p", CircuitPolicy(failures=5, cooldown=1))
    assert health.record_failure(0.0, "quota_exhausted", hold=600) == "open"
    assert health.ready_at() == 600


def test_pacer_spreads_requests() -> None:
    pacer = Pacer(rpm=60, tpm=None, now=0.0)  # one per second, burst of 6
    for _ in range(6):
        assert pacer.wait_for(1, 0.0) == 0.0
        pacer.take(1, 0.0)
    assert pacer.wait_for(1, 0.0) == pytest.approx(1.0)
    assert pacer.wait_for(1, 1.0) == pytest.approx(0.0)
    pacer.pause(30.0)
    assert pacer.wait_for(1, 10.0) == pytest.approx(20.0)


def test_pacer_tokens_per_minute() -> None:
    pacer = Pacer(rpm=None, tpm=6000, now=0.0)  # 100 tokens/s, burst 600
    pacer.take(600, 0.0)
    assert pacer.wait_for(200, 0.0) == pytest.approx(2.0)


def limits(wire: dict[str, float]) -> RateLimits:
    """A worker's rate-limit report as the broker's edge decodes it."""
    return RateLimits.from_wire(wire, "ratelimit")


def test_pacer_learns_an_exhausted_budget_as_a_pause_until_reset() -> None:
    pacer = Pacer(rpm=None, tpm=None, now=0.0)
    assert not pacer.learn(limits({"requests_remaining": 5, "requests_reset": 9.0}), 0.0)
    assert pacer.wait_for(1, 0.0) == 0.0  # budget left: no pause
    assert not pacer.learn(limits({"requests_remaining": 0, "requests_reset": 2.5}), 1.0)
    assert pacer.wait_for(1, 1.0) == pytest.approx(2.5)
    assert pacer.wait_for(1, 3.5) == 0.0
    # Remaining below what is already in flight: pause too (here without a reset: 1 s).
    pacer.learn(limits({"requests_remaining": 2}), 10.0, inflight=3)
    assert pacer.wait_for(1, 10.0) == pytest.approx(1.0)
    pacer.learn(limits({"tokens_remaining": 500, "tokens_reset": 4.0}), 20.0, inflight_tokens=800.0)
    assert pacer.wait_for(1, 20.0) == pytest.approx(4.0)
    pacer.learn(limits({"output_tokens_remaining": 0, "output_tokens_reset": 3.0}), 30.0)
    assert pacer.wait_for(1, 30.0) == pytest.approx(3.0)
    # A far reset (a daily quota, a skewed clock) is capped.
    pacer.learn(limits({"requests_remaining": 0, "requests_reset": 86400.0}), 40.0)
    assert pacer.wait_for(1, 40.0) == pytest.approx(60.0)


def test_pacer_adopts_reported_limits_only_without_config() -> None:
    pacer = Pacer(rpm=None, tpm=None, now=0.0)
    assert pacer.learned() == {"rpm": None, "tpm": None}
    assert pacer.learn(limits({"requests_limit": 60, "tokens_limit": 6000}), 0.0)
    assert pacer.learned() == {"rpm": 60.0, "tpm": 6000.0}
    # Pacing now works as if configured: a burst of 6 requests, then one per second.
    for _ in range(6):
        assert pacer.wait_for(1, 0.0) == 0.0
        pacer.take(1, 0.0)
    assert pacer.wait_for(1, 0.0) == pytest.approx(1.0)
    assert not pacer.learn(limits({"requests_limit": 60, "tokens_limit": 6000}), 0.5)  # unchanged
    assert pacer.learn(limits({"requests_limit": 120}), 1.0)  # the provider raised it
    assert pacer.learned()["rpm"] == 120.0
    configured = Pacer(rpm=30, tpm=None, now=0.0)
    assert configured.learn(limits({"requests_limit": 5000, "tokens_limit": 9000}), 0.0)
    assert configured.learned() == {"rpm": 30.0, "tpm": 9000.0}  # config wins for rpm


@pytest.mark.parametrize(
    ("garbage", "named"),
    [
        ({"requests_limit": "60", "requests_remaining": "0"}, "ratelimit.requests_limit"),
        ({"requests_limit": -5, "requests_remaining": -1}, "ratelimit.requests_limit"),
        ({"requests_remaining": float("inf")}, "ratelimit.requests_remaining"),
        ({"requests_limit": float("nan")}, "ratelimit.requests_limit"),
        ({"requests_limit": True, "requests_remaining": False}, "ratelimit.requests_limit"),
        ({"requests_remaining": None, "requests_reset": 3.0}, "ratelimit.requests_remaining"),
        ({"unknown": 0}, "ratelimit: unknown field(s) ['unknown']"),
    ],
)
def test_garbage_from_the_wire_is_rejected_before_the_pacer(
    garbage: dict[str, object], named: str
) -> None:
    with pytest.raises(ProtocolViolation, match=re.escape(named)):
        RateLimits.from_wire(garbage, "ratelimit")


def test_pacer_ignores_a_limit_below_one() -> None:
    pacer = Pacer(rpm=None, tpm=None, now=0.0)
    assert not pacer.learn(limits({"requests_limit": 0.5, "requests_reset": 3.0}), 0.0)
    assert pacer.wait_for(1, 0.0) == 0.0
    assert pacer.learned() == {"rpm": None, "tpm": None}


def _config():  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "providers": {
                "openai": {"kind": "openai", "models": ["gpt-x"], "spawn": False},
                "claude": {"kind": "anthropic", "models": ["sonnet"], "spawn": False},
                "local": {"kind": "mock", "models": ["llama"]},
            },
            "routes": {"smart": ["openai:gpt-x", "claude:sonnet", "local:llama"]},
        }
    )


def _resolve(job):  # type: ignore[no-untyped-def]
    config = _config()
    resolved = resolve(job, config, build_catalog(config))
    return resolved.candidates, resolved.skipped


def test_routing_removes_candidates_that_cannot_honour_a_parameter() -> None:
    candidates, skipped = _resolve(build_job(route="smart", prompt="x", top_k=3))
    assert candidates == [Candidate("claude", "sonnet"), Candidate("local", "llama")]
    assert [s["candidate"] for s in skipped] == ["openai:gpt-x"]
    assert "parameter 'top_k' for openai (openai): OpenAI has no top_k" in skipped[0]["reason"]
    job = build_job(route="smart", prompt="x", repeat_penalty=1.1, top_k=2)
    assert [str(c) for c in _resolve(job)[0]] == ["local:llama"]
    with pytest.raises(ProviderError) as info:
        _resolve(build_job(model="openai:gpt-x", prompt="x", repeat_penalty=1.1))
    assert info.value.category is ErrorCategory.UNSUPPORTED
    assert "openai:gpt-x: parameter 'repeat_penalty' for openai" in info.value.message


def test_routing_by_model_name_and_errors() -> None:
    assert _resolve(build_job(model="sonnet", prompt="x"))[0] == [Candidate("claude", "sonnet")]
    with pytest.raises(ProviderError, match="no provider serves model"):
        _resolve(build_job(model="gpt9", prompt="x"))
    with pytest.raises(ProviderError, match="unknown route"):
        _resolve(build_job(route="nope", prompt="x"))


def test_config_errors_are_clear() -> None:
    # The full table of config mistakes is tests/test_config.py; these are the routing ones.
    with pytest.raises(ConfigError, match=r"providers\.m\.capcity: unknown key"):
        parse_config({"providers": {"m": {"kind": "mock", "capcity": 3}}})
    with pytest.raises(ConfigError, match=r"providers\.m\.kind: 'gpt' unknown"):
        parse_config({"providers": {"m": {"kind": "gpt"}}})
    with pytest.raises(ConfigError, match="unknown provider 'x'"):
        parse_config({"providers": {"m": {"kind": "mock"}}, "routes": {"r": ["x:y"]}})
    assert default_config().routes == {"default": ["mock:echo"]}


def test_failures_of_stragglers_do_not_extend_an_open_circuit() -> None:
    health = Health("p", CircuitPolicy(failures=2, cooldown=5, max_cooldown=120))
    health.record_failure(0.0, "network")
    assert health.record_failure(0.0, "network") == "open"
    for _ in range(20):  # jobs already in flight when it tripped fail one by one
        assert health.record_failure(0.1, "network") is None
    assert health.cooldown == 5 and health.ready_at() == 5.0


def test_supervisor_gives_up_on_slow_crash_loops() -> None:
    import subprocess

    from dispatcher.supervisor import Managed, Supervisor
    from workers.spec import ProviderSpec

    sup = Supervisor(
        [ProviderSpec(name="x", kind="mock")],
        "tcp://127.0.0.1:9",
        backoff=0.0,
        flap_restarts=2,
        flap_window=1.0,
    )

    def start(item: Managed) -> None:
        item.proc = subprocess.Popen(["false"])

    sup._start = start  # type: ignore[method-assign]
    sup.start_all()
    item = sup.managed[0]
    now = 0.0
    for _ in range(10):  # each exit far apart in time: the window rule alone never trips
        assert item.proc is not None
        item.proc.wait()
        now += 100.0
        sup.poll(now)
        if item.restarts.gave_up:
            break
    assert item.restarts.gave_up and item.restarts.failures == 5
