"""llama.cpp tokens/s, direct vs through llmrelay, on the same binary, model and arguments.

Two llama-servers run side by side with identical options: one started here (LlamaCppBackend,
requests sent to it with plain httpx, the floor) and one owned by a broker-supervised worker
(requests through client -> broker -> worker). Runs alternate between them, with one stream and
with as many concurrent streams as the server has slots.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import CpuMeter, Row, worker_pids
from protocol import eventloop
from protocol.client import AsyncClient
from protocol.results import Done
from tests.harness import BrokerProcess
from workers.llamacpp.tinymodel import write_tiny_model
from workers.providers.llamacpp import LlamaCppBackend
from workers.spec import ProviderSpec

SLOTS = 2  # the machine has two cores; more slots only share them
# Same flags on both sides. Without --no-repack, llama-server dies with SIGILL loading SmolLM2's
# Q4_1 weights on CPUs that list AMX the kernel does not grant (this sandbox's Xeon does).
LLAMA_EXTRA_ARGS = ("--no-repack",)


async def direct_stream(http: httpx.AsyncClient, prompt: str, tokens: int) -> int:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    used = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    used = chunk["usage"]["completion_tokens"]
    return used


async def relay_stream(client: AsyncClient, prompt: str, tokens: int) -> int:
    used = 0
    async for event in client.stream(model="bench:model", prompt=prompt, max_tokens=tokens):
        if isinstance(event, Done):
            used = int(event.result.usage.get("completion_tokens", 0))
    return used


async def measure(
    one: Any, streams: int, tokens: int, procs: dict[str, Any]
) -> tuple[float, dict[str, float]]:
    meter = CpuMeter(procs)
    started = time.perf_counter()
    used = await asyncio.gather(*(one(f"run {i}", tokens) for i in range(streams)))
    wall = time.perf_counter() - started
    return sum(used) / wall, meter.ms_per_job(streams)


async def compare(
    label: str, options: dict[str, Any], endpoint: str, broker_pid: int, tokens: int, rounds: int
) -> list[Row]:
    spec = ProviderSpec(
        name="bench", kind="llamacpp", models=["model"], capacity=SLOTS, options=dict(options)
    )
    backend = LlamaCppBackend(spec)
    await backend.start()
    rows: list[Row] = []
    try:
        assert backend.server is not None
        server = backend.server
        headers = {"Authorization": f"Bearer {server.api_key}"}
        me = os.getpid()
        workers = worker_pids(broker_pid)
        relay_procs = {
            "client": me,
            "broker": broker_pid,
            "worker": workers,
            "llama-server": [c for w in workers for c in _children(w)],
        }
        direct_procs = {"client": me, "llama-server": _children(me)}
        async with (
            httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=300) as http,
            AsyncClient(endpoint) as client,
        ):

            async def direct(prompt: str, n: int) -> int:
                return await direct_stream(http, prompt, n)

            async def relay(prompt: str, n: int) -> int:
                return await relay_stream(client, prompt, n)

            await direct("warm up", 8)
            await relay("warm up", 8)
            for streams in (1, SLOTS):
                found: dict[str, list[tuple[float, dict[str, float]]]] = {"d": [], "r": []}
                for _ in range(rounds):
                    found["d"].append(await measure(direct, streams, tokens, direct_procs))
                    found["r"].append(await measure(relay, streams, tokens, relay_procs))
                d = sorted(found["d"])[len(found["d"]) // 2]
                r = sorted(found["r"])[len(found["r"]) // 2]
                rows.append(
                    Row(
                        "llama.cpp",
                        f"tokens/s, {label}, {streams} stream(s) x {tokens}",
                        "llmrelay",
                        "direct httpx",
                        r[0],
                        d[0],
                        cpu_ms_per_job=r[1],
                        target=">= 0.95x",
                    )
                )
                rows.append(
                    Row(
                        "llama.cpp",
                        f"tokens/s, {label}, {streams} stream(s) x {tokens}",
                        "direct httpx",
                        "direct httpx",
                        d[0],
                        d[0],
                        cpu_ms_per_job=d[1],
                    )
                )
    finally:
        await backend.close()
    return rows


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def run(models: dict[str, tuple[Path, int]], rounds: int = 3) -> list[Row]:
    """`models`: label -> (GGUF path, tokens per stream)."""
    rows: list[Row] = []
    for label, (path, tokens) in models.items():
        options = {
            "model_path": str(path),
            "extra_body": {"ignore_eos": True},
            "extra_args": list(LLAMA_EXTRA_ARGS),
        }
        with tempfile.TemporaryDirectory() as tmp:
            bp = BrokerProcess(
                Path(tmp),
                {
                    "bench": {
                        "kind": "llamacpp",
                        "capacity": SLOTS,
                        "models": ["model"],
                        "options": dict(options),
                    }
                },
            )
            bp.log_level = "info"
            bp.start()
            try:
                bp.wait_workers(1, timeout=180)
                assert bp.proc is not None
                rows += eventloop.run(
                    compare(label, options, bp.client_endpoint, bp.proc.pid, tokens, rounds)
                )
            finally:
                bp.stop()
    return rows


def default_models(smoke: bool) -> dict[str, tuple[Path, int]]:
    from workers.llamacpp.smollm2 import smollm2_path

    tiny_tokens = 64 if smoke else 1000
    folder = Path(tempfile.mkdtemp(prefix="llmrelay-bench-"))
    tiny = write_tiny_model(folder / "tiny.gguf", n_ctx=SLOTS * (tiny_tokens + 256))
    models = {"tiny model": (tiny, tiny_tokens)}
    if not smoke:
        models["SmolLM2-135M"] = (smollm2_path(), 200)
    return models
