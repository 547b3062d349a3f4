"""Tokens/s of llama-server streamed directly vs through LlamaCppBackend.generate() vs
through the whole of llmrelay (client -> broker -> llamacpp worker -> broker -> client).

The first two paths hit the same supervised llama-server; the broker path runs an identical
llama-server (same binary, model and options) owned by a broker-supervised worker. The model is
the tiny test model (random weights, EOS ignored so every run generates exactly --tokens).

    python benchmarks/llama_throughput.py [--tokens 2000] [--runs 5] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.client import AsyncClient
from protocol.job import Job
from protocol.results import Done, Token
from tests.harness import BrokerProcess
from workers.backend import Finish, TextDelta
from workers.llamacpp.tinymodel import write_tiny_model
from workers.providers.llamacpp import LlamaCppBackend
from workers.spec import ProviderSpec


@dataclass
class Run:
    tokens: int  # completion tokens the server reports
    total: float  # request sent -> last byte
    decode: float  # first text -> last text

    @property
    def total_rate(self) -> float:
        return self.tokens / self.total

    @property
    def decode_rate(self) -> float:
        return self.tokens / self.decode if self.decode > 0 else float("nan")


Path_ = Callable[[str, int], Awaitable[Run]]


def make_paths(backend: LlamaCppBackend) -> dict[str, Path_]:
    assert backend.server is not None
    server = backend.server
    headers = {"Authorization": f"Bearer {server.api_key}"}
    direct_client = httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=120)

    async def direct(prompt: str, n: int) -> Run:
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": n,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        start = time.perf_counter()
        first = last = start
        tokens = 0
        async with direct_client.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    last = time.perf_counter()
                    if first == start:
                        first = last
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return Run(tokens, time.perf_counter() - start, last - first)

    async def through_backend(prompt: str, n: int) -> Run:
        job = Job(
            id="bench",
            messages=[{"role": "user", "content": prompt}],
            model="tiny",
            params={"max_tokens": n},
        )
        start = time.perf_counter()
        first = last = start
        tokens = 0
        async for event in backend.generate(job, "tiny", 1):
            if isinstance(event, TextDelta):
                last = time.perf_counter()
                if first == start:
                    first = last
            elif isinstance(event, Finish):
                tokens = event.usage.get("completion_tokens", 0)
        return Run(tokens, time.perf_counter() - start, last - first)

    return {"direct": direct, "backend": through_backend}


async def bench(model: Path, tokens: int, runs: int) -> dict[str, list[Run]]:
    spec = ProviderSpec(
        name="bench",
        kind="llamacpp",
        models=["tiny"],
        capacity=1,
        options={"model_path": str(model), "extra_body": {"ignore_eos": True}},
    )
    backend = LlamaCppBackend(spec)
    await backend.start()
    results: dict[str, list[Run]] = {}
    try:
        paths = make_paths(backend)
        for name, path in paths.items():
            await path("warm up", 16)
            results[name] = []
        for i in range(runs):  # interleaved, so drift (thermal, cache) hits every path alike
            for name, path in paths.items():
                results[name].append(await path(f"benchmark run {i}", tokens))
    finally:
        await backend.close()
    return results


async def broker_runs(endpoint: str, tokens: int, runs: int) -> list[Run]:
    out: list[Run] = []
    async with AsyncClient(endpoint) as client:
        for i in range(runs + 1):  # the first is a warm-up
            start = time.perf_counter()
            first = last = start
            used = 0
            async for event in client.stream(
                model="bench:tiny", prompt=f"benchmark run {i}", max_tokens=tokens
            ):
                if isinstance(event, Token):
                    last = time.perf_counter()
                    if first == start:
                        first = last
                elif isinstance(event, Done):
                    used = event.result.usage.get("completion_tokens", 0)
            if i:
                out.append(Run(used, time.perf_counter() - start, last - first))
    return out


def bench_broker(model: Path, tokens: int, runs: int) -> list[Run]:
    options = {"model_path": str(model), "extra_body": {"ignore_eos": True}}
    with tempfile.TemporaryDirectory() as tmp:
        broker = BrokerProcess(
            Path(tmp), {"bench": {"kind": "llamacpp", "capacity": 1, "options": options}}
        )
        broker.log_level = "warning"
        broker.start()
        try:
            broker.wait_workers(1, timeout=120)
            return asyncio.run(broker_runs(broker.client_endpoint, tokens, runs))
        finally:
            broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, help="a GGUF (default: the tiny test model)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_tiny_model(Path(tmp) / "tiny.gguf", n_ctx=args.tokens + 256)
        results = asyncio.run(bench(model, args.tokens, args.runs))
        results["llmrelay"] = bench_broker(model, args.tokens, args.runs)
    medians = {}
    print(f"llama-server throughput, {args.tokens} tokens x {args.runs} runs (median):")
    for name, runs in results.items():
        total = statistics.median(r.total_rate for r in runs)
        decode = statistics.median(r.decode_rate for r in runs)
        medians[name] = total
        print(f"  {name:>10}: {total:9.0f} tokens/s end-to-end  {decode:9.0f} tokens/s decode")
    for name in ("backend", "llmrelay"):
        print(f"  ratio {name}/direct: {medians[name] / medians['direct']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
