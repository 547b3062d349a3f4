"""The llama.cpp worker through the broker, with the real llama-server and the tiny model."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from protocol.client import AsyncClient
from protocol.results import Done, Reset, Token
from tests.llamacpp_support import run, spec_for
from tests.test_llamacpp_backend import direct_stream
from workers.providers.llamacpp import LlamaCppBackend

pytestmark = [pytest.mark.llama, pytest.mark.timeout(180)]


def llama_broker(
    broker_factory: Any, model: Path, user_defaults: bool = False, **options: Any
) -> Any:
    broker = broker_factory(
        {
            "llama": {
                "kind": "llamacpp",
                "models": ["tiny"],
                "capacity": 2,
                "options": {"model_path": str(model), **options},
            }
        },
        user_defaults=user_defaults,
    )
    broker.wait_workers(1, timeout=120)
    return broker


def llama_stats(broker: Any, not_worker: int | None = None) -> dict[str, Any]:
    """The figures of a registered worker whose llama-server is ready (not `not_worker`)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for worker in broker.wait_workers(1, timeout=60)["workers"]:
            stats = worker["stats"]
            if worker["pid"] == not_worker:
                continue  # the broker may not have noticed its death yet
            if stats.get("llama_pid") and stats.get("llama_state") == "ready":
                return {**stats, "worker_pid": worker["pid"]}
        time.sleep(0.1)
    raise AssertionError("llama-server never reported ready")


def test_streamed_job_returns_what_llama_server_produced(
    broker_factory: Any, llama_binary: Any, tiny_model: Path
) -> None:
    broker = llama_broker(broker_factory, tiny_model)
    params = {"max_tokens": 32, "temperature": 0.0, "seed": 11}
    with broker.client() as client:
        events = list(client.stream(model="llama:tiny", prompt="Hello there", **params))
    assert isinstance(events[-1], Done) and not any(isinstance(e, Reset) for e in events)
    result = events[-1].result
    assert result.text == "".join(e.text for e in events if isinstance(e, Token))
    assert result.finish_reason == "length"
    assert result.usage["completion_tokens"] == 32 and result.usage["prompt_tokens"] > 0

    # The reference: the same request sent straight to a llama-server on the same model.
    reference = LlamaCppBackend(spec_for(tiny_model))

    async def direct() -> None:
        try:
            await reference.start()
            text, usage = await direct_stream(
                reference, {"messages": [{"role": "user", "content": "Hello there"}], **params}
            )
            assert text == result.text
            assert usage["prompt_tokens"] == result.usage["prompt_tokens"]
        finally:
            await reference.close()

    run(direct)


def test_kill_9_of_llama_server_mid_stream_is_retried(
    broker_factory: Any, llama_binary: Any, long_model: Path
) -> None:
    # Broker and llama-server supervision on the defaults users get.
    broker = llama_broker(broker_factory, long_model, user_defaults=True, ctx_size=16384)
    victim = llama_stats(broker)["llama_pid"]
    events: list[Any] = []
    # Long enough that the kill (at the first token the caller sees) lands mid-generation
    # with a wide margin, short enough that the retry, which generates it all again, stays
    # cheap on a loaded host: 6,000 tokens took 82 s at 74 tokens/s under load 8.
    max_tokens = 1000
    with broker.client() as client:
        for event in client.stream(
            model="llama:tiny", prompt="go", max_tokens=max_tokens, temperature=0.0
        ):
            events.append(event)
            if len(events) == 1:
                os.kill(victim, signal.SIGKILL)
    done = events[-1]
    assert isinstance(done, Done)
    assert [a["outcome"] for a in done.result.attempts][-1] == "ok"
    assert done.result.attempts[0]["outcome"] in ("network", "server_error"), "not mid-stream"
    assert done.result.usage["completion_tokens"] == max_tokens
    if any(isinstance(e, Reset) for e in events):  # tokens had reached us before the kill
        assert done.result.resets == 1
    # The figures come with the worker's heartbeats: the one after the restart may be due.
    deadline = time.monotonic() + 60
    while (stats := llama_stats(broker))["llama_pid"] == victim:
        assert time.monotonic() < deadline, "the server's restart was never reported"
        time.sleep(0.2)
    assert stats["llama_restarts"] >= 1


def test_kill_9_of_the_worker_leaves_no_llama_server(
    broker_factory: Any, llama_binary: Any, tiny_model: Path
) -> None:
    broker = llama_broker(broker_factory, tiny_model)
    before = llama_stats(broker)
    server = psutil.Process(before["llama_pid"])
    assert "llama-server" in server.name() or "llama" in " ".join(server.cmdline())
    os.kill(before["worker_pid"], signal.SIGKILL)
    _, alive = psutil.wait_procs([server], timeout=15)
    assert not alive, "llama-server outlived its worker"
    # The broker restarted the worker, which started a new server.
    after = llama_stats(broker, not_worker=before["worker_pid"])
    assert after["worker_pid"] != before["worker_pid"]
    assert after["llama_pid"] != before["llama_pid"]


def test_batch_through_two_slots(broker_factory: Any, llama_binary: Any, tiny_model: Path) -> None:
    broker = llama_broker(broker_factory, tiny_model)
    jobs = [{"model": "llama:tiny", "prompt": f"prompt {i}", "max_tokens": 16} for i in range(20)]

    async def main() -> list[Any]:
        async with AsyncClient(broker.client_endpoint) as client:
            return [o async for o in client.map(jobs, concurrency=8)]

    outcomes = asyncio.run(main())
    assert len(outcomes) == 20
    for outcome in outcomes:
        assert not isinstance(outcome, Exception), outcome
        # A random model may draw the end-of-sequence token before the cap.
        used = outcome.usage["completion_tokens"]
        assert (outcome.finish_reason, used) == ("length", 16) or (
            outcome.finish_reason == "stop" and 0 <= used <= 16
        ), (outcome.finish_reason, used)


def test_missing_model_is_a_clear_error_not_a_restart_loop(
    broker_factory: Any, llama_binary: Any, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model.gguf"
    broker = broker_factory(
        {"llama": {"kind": "llamacpp", "options": {"model_path": str(missing)}}}
    )
    deadline = time.monotonic() + 60
    while not broker.events("worker_config_error"):
        assert time.monotonic() < deadline, broker.log_tail()
        time.sleep(0.1)
    failures = broker.events("backend_start_failed")
    assert len(failures) == 1 and str(missing) in failures[0]["error"]
    assert failures[0]["category"] == "not_found"
    time.sleep(1.0)  # a restart loop would have started another worker by now
    assert not broker.events("worker_restarted")
    with broker.client() as client:
        assert client.status()["supervised"][0]["gave_up"] is True
