"""The catalog inside the broker core, in process on a fake clock: route strategies from
explicitly set health states, the "nothing available" error, cost in the result, catalog
queries."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import messages as m
from protocol.errors import ErrorCategory as C
from tests.core_harness import CoreHarness, FakeWorker

ABC = {name: {"kind": "mock", "models": ["m"]} for name in ("a", "b", "c")}


def _harness(strategy: str) -> tuple[CoreHarness, dict[str, FakeWorker]]:
    """a: circuit open (unhealthy); b: one failure (degraded); c: healthy."""
    route = {"r": {"candidates": ["a:m", "b:m", "c:m"], "strategy": strategy}}
    h = CoreHarness(ABC, route, circuit_failures=2, circuit_cooldown=60.0, max_queued=100)
    workers = {name: h.worker(name) for name in "abc"}
    for name, failures in (("a", 2), ("b", 1)):
        for _ in range(failures):
            h.fail(workers[name], h.submit(model=f"{name}:m", max_attempts=1), C.SERVER_ERROR)
    h.done(workers["c"], h.submit(model="c:m"))
    health = h.status()["health"]
    assert [health[p]["state"] for p in "abc"] == ["unhealthy", "degraded", "healthy"]
    return h, workers


@pytest.mark.parametrize(
    ("strategy", "first"),
    [("first_available", "a"), ("first_healthy", "b"), ("best_effort", "c")],
)
def test_each_strategy_picks_by_the_health_it_sees(strategy: str, first: str) -> None:
    h, workers = _harness(strategy)
    job = h.submit(route="r")
    (served,) = [name for name, w in workers.items() if job in {d.job.id for d in w.dispatches()}]
    assert served == first
    h.done(workers[first], job)
    done = h.outcome(job)
    assert isinstance(done, m.Completed) and done.result["strategy"] == strategy


def test_best_effort_orders_by_latency_within_a_state() -> None:
    route = {"r": {"candidates": ["a:m", "b:m"], "strategy": "best_effort"}}
    h = CoreHarness({n: ABC[n] for n in "ab"}, route)
    a, b = h.worker("a"), h.worker("b")
    slow, fast = h.submit(model="a:m"), h.submit(model="b:m")
    h.advance(0.1)
    h.done(b, fast)
    h.advance(2.0)
    h.done(a, slow)  # both healthy; a took 2.1 s, b 0.1 s
    job = h.submit(route="r")
    assert job in {d.job.id for d in b.dispatches()}
    assert job not in {d.job.id for d in a.dispatches()}


def test_nothing_available_names_each_candidate_its_state_and_recovery() -> None:
    providers: dict[str, Any] = {
        "a": {"kind": "mock", "models": ["m"]},
        "b": {"kind": "mock", "models": ["m"], "rpm": 1},
        "c": {"kind": "mock", "models": ["m"]},
    }
    h = CoreHarness(
        providers, {"r": ["a:m", "b:m", "c:m"]}, circuit_failures=1, circuit_cooldown=60.0
    )
    a, b = h.worker("a"), h.worker("b")  # c has no worker
    h.fail(a, h.submit(model="a:m", max_attempts=1), C.SERVER_ERROR)  # a's circuit opens
    h.done(b, h.submit(model="b:m"))  # b's one request per minute is spent
    job = h.submit(route="r", timeout=5)
    err = h.error(job)  # at once: nothing recovers within 5 s
    assert err.category is C.NO_PROVIDER and err.retryable
    assert "no candidate available: a:m: circuit open, recovers in 60.0s" in err.message
    assert "b:m: paced (rpm/tpm), recovers in " in err.message
    assert "c:m: no worker, no recovery known" in err.message
    assert "no candidate recovers before the deadline" in err.message
    assert err.retry_after is not None and 50 < err.retry_after <= 60.0  # b's, the earliest


def test_cost_and_catalog_queries_in_the_core() -> None:
    providers = {
        "oai": {"kind": "openai", "models": ["gpt-4o"]},
        "off": {"kind": "anthropic", "spawn": False},
    }
    h = CoreHarness(providers)
    w = h.worker("oai")
    job = h.submit(model="oai:gpt-4o")
    h.done(w, job, usage={"prompt_tokens": 1000, "cached_tokens": 200, "completion_tokens": 50})
    done = h.outcome(job)
    assert isinstance(done, m.Completed)
    assert done.result["cost_source"] == "priced"
    assert done.result["cost"] == pytest.approx((800 * 2.5 + 200 * 1.25 + 50 * 10.0) / 1e6)

    def ask(query: str, **args: Any) -> m.CatalogReply:
        h.core.client_message(b"cat", m.CatalogQuery(request="q", query=query, args=args), h.now)
        h.pump()
        reply = h.clients[b"cat"].pop()
        assert isinstance(reply, m.CatalogReply) and reply.request == "q"
        return reply

    assert h.status()["catalog"] == {"written": "2026-12-02", "live": {}}  # nothing fetched
    # a provider with no worker is known from its config and the shipped data
    haiku = ask("capabilities", provider="off", model="claude-3-5-haiku-latest").result
    assert haiku["capabilities"]["input_price"] == 0.8 and haiku["sources"] == ["shipped"]
    bad = ask("find_providers", capability="telepathy").error
    assert bad is not None and "unknown capability 'telepathy'" in bad["message"]
    missing = ask("capabilities", provider="nope", model="x").error
    assert missing is not None and "unknown provider 'nope'" in missing["message"]


def test_count_tokens_asks_the_worker_that_counts_exactly_and_never_waits_forever() -> None:
    providers = {
        "claude": {"kind": "anthropic", "models": ["claude-3-5-haiku-latest"]},
        "oai": {"kind": "openai", "models": ["gpt-4o"]},
    }
    route = {"both": ["claude:claude-3-5-haiku-latest", "oai:gpt-4o"]}
    h = CoreHarness(providers, route)
    w = h.worker("claude")
    prompt = [{"role": "user", "content": "count these five words"}]

    def ask(request: str) -> None:
        query = m.CatalogQuery(
            request=request,
            query="count_tokens",
            args={"target": "both", "messages": prompt, "max_tokens": 10},
        )
        h.core.client_message(b"cat", query, h.now)
        h.pump()

    ask("q1")
    (sent,) = [x for x in w.inbox if isinstance(x, m.CountTokens)]
    assert sent.model == "claude-3-5-haiku-latest" and sent.messages == prompt
    assert not h.clients[b"cat"]  # waits for the worker's exact count
    answer = m.TokenCount(request=sent.request, tokens=9, method="count_tokens")
    h.core.worker_message(w.identity, answer, (), h.now)
    h.pump()
    (reply,) = h.clients[b"cat"]
    assert isinstance(reply, m.CatalogReply) and reply.request == "q1"
    claude, oai = reply.result["counts"]
    assert (claude["tokens"], claude["exact"], claude["method"]) == (9, True, "count_tokens")
    assert claude["estimated_cost"] == pytest.approx((9 * 0.80 + 10 * 4.00) / 1e6)
    assert oai["candidate"] == "oai:gpt-4o" and oai["method"] in ("tiktoken", "estimate")
    assert oai["exact"] == (oai["method"] == "tiktoken")  # an estimate says so

    # a worker that never answers: the reply comes after COUNT_WAIT, with estimates and why
    h.clients[b"cat"].clear()
    ask("q2")
    h.advance(9.0)
    assert not h.clients[b"cat"]
    h.advance(1.5)
    (late,) = h.clients[b"cat"]
    assert isinstance(late, m.CatalogReply)
    first = late.result["counts"][0]
    assert first["exact"] is False and "did not answer in 10s" in first["note"]
