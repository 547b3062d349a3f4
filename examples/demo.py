"""`make demo`: a broker, a local llama-server on a tiny TEST model, and mock workers; no keys.

It streams a prompt through llama.cpp, runs a batch through the mock workers, shows a
failover and a parameter-driven fallback, then prints the broker's status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from protocol.client import Client
from protocol.errors import ProviderError
from protocol.results import Done, Reset, Token

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "llmrelay"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(model: Path) -> tuple[Path, str]:
    client_ep = f"tcp://127.0.0.1:{free_port()}"
    worker_ep = f"tcp://127.0.0.1:{free_port()}"
    config = CACHE / "demo.toml"
    config.write_text(
        f"""
[broker]
client_endpoint = "{client_ep}"
worker_endpoint = "{worker_ep}"

[providers.llama]
kind = "llamacpp"
models = ["tiny"]
capacity = 2
[providers.llama.options]
model_path = "{model}"
ctx_size = 512

[providers.mock]
kind = "mock"
models = ["echo"]
capacity = 16
replicas = 2

[providers.backup]
kind = "mock"
models = ["echo"]
capacity = 8

# Configured but not running here (no key): jobs fall through to the next candidate.
[providers.openai]
kind = "openai"
models = ["gpt-4o-mini"]
spawn = false

[routes.default]
candidates = ["llama:tiny", "mock:echo"]

[providers.primary]
kind = "mock"
models = ["echo"]
capacity = 4

[routes.chain]
candidates = ["primary:echo", "backup:echo"]

[routes.smart]
candidates = ["openai:gpt-4o-mini", "llama:tiny"]
"""
    )
    return config, client_ep


def wait_ready(client: Client, providers: set[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ready = {w["provider"] for w in client.status(timeout=1.0)["workers"]}
            if providers <= ready:
                return
        except ProviderError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"workers {sorted(providers)} did not register in {timeout}s")


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run(client: Client) -> None:
    section("1. streaming from llama-server (tiny random TEST model: its text is noise)")
    for event in client.stream(route="default", prompt="Tell me a story", max_tokens=48, seed=7):
        if isinstance(event, Token):
            print(event.text, end="", flush=True)
        elif isinstance(event, Reset):
            print(f"\n[reset: {event.reason}]")
        elif isinstance(event, Done):
            r = event.result
            print(f"\n-> provider={r.provider} finish={r.finish_reason} usage={r.usage}")
            print(f"   ttft={r.ttft:.4f}s latency={r.latency:.4f}s")

    section("2. a batch of 2,000 prompts through two mock workers")
    started = time.perf_counter()
    jobs = [{"model": "mock:echo", "prompt": f"prompt number {i} says hello"} for i in range(2000)]
    ok = failed = 0
    for outcome in client.map(jobs, concurrency=128):
        if isinstance(outcome, ProviderError):
            failed += 1
        else:
            ok += 1
    took = time.perf_counter() - started
    print(f"-> {ok} done, {failed} failed in {took:.2f}s ({ok / took:.0f} jobs/s)")

    section("3. failover: the primary says quota_exhausted, the backup answers")
    script = {"fail": [{"attempt": 1, "category": "quota_exhausted", "status_code": 429}]}
    result = client.complete(route="chain", prompt="fail over please", metadata={"mock": script})
    for attempt in result.attempts:
        print(f"   attempt {attempt['attempt']}: {attempt['provider']} -> {attempt['outcome']}")
    print(f"-> text={result.text!r}")

    section("4. no silent drops: repeat_penalty removes OpenAI from the chain, visibly")
    result = client.complete(route="smart", prompt="hi", max_tokens=8, repeat_penalty=1.1)
    print(f"-> skipped: {result.skipped}")
    print(f"-> answered by {result.provider}")
    try:
        client.complete(model="openai:gpt-4o-mini", prompt="hi", repeat_penalty=1.1)
    except ProviderError as exc:
        print(f"-> direct to openai: {exc}")

    section("5. broker status")
    status = client.status()
    print(f"queued={status['queued']} running={status['running']} totals={status['totals']}")
    for w in status["workers"]:
        rss = (w["stats"].get("rss") or 0) >> 20
        extra = w["stats"].get("llama_rss")
        server = f" llama-server rss {extra >> 20} MiB" if extra else ""
        print(
            f"   {w['worker']:<26} {w['provider']:<8} {w['inflight']}/{w['capacity']} "
            f"rss {rss} MiB{server}"
        )
    for key, h in status["health"].items():
        print(f"   health {key:<22} {h['state']:<9} circuit={h['circuit']}")


def main() -> int:
    from workers.llamacpp.tinymodel import write_tiny_model

    CACHE.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(CACHE / "tiny-test-model.gguf")
    config, endpoint = write_config(model)
    log_path = CACHE / "demo-broker.log"
    print(f"broker logs (structlog JSON): {log_path}")
    with open(log_path, "wb") as log:
        broker = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "broker", "--config", str(config)],
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=ROOT,
        )
    try:
        with Client(endpoint) as client:
            wait_ready(client, {"llama", "mock", "primary", "backup"})
            run(client)
    finally:
        os.killpg(broker.pid, signal.SIGTERM)
        try:
            broker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(broker.pid, signal.SIGKILL)
    print("\ndemo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
