"""Added latency and throughput on one fake OpenAI server: direct httpx (the floor) vs llmrelay
(one and two openai workers) vs LiteLLM (Router in-process, proxy), and the cost of failover.

The fake (benchmarks/sse_fake.py) runs pinned to core 0; everything measured runs on the other
core(s). Each round runs every path once, in turn, so a noisy neighbour hits all of them; the
figures are medians over rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from benchmarks.common import (
    CpuMeter,
    Row,
    child,
    free_port,
    other_cores,
    percentile,
    sse_fake,
    wait_http,
    worker_pids,
)
from protocol import eventloop
from protocol.client import AsyncClient
from protocol.results import Token
from tests.harness import BrokerProcess

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

MESSAGES: list[Any] = [{"role": "user", "content": "Say twenty tokens"}]
Sample = tuple[float, float]  # (time to first token, total), seconds
Runner = Callable[[int, int], Awaitable[list[Sample]]]


@dataclass
class Sizes:
    rounds: int = 3
    serial: int = 300  # requests at concurrency 1
    parallel: int = 2000  # requests at concurrency 64
    failover: int = 300  # requests with the first candidate failing, concurrency 16


async def fan_out(n: int, concurrency: int, one: Callable[[], Awaitable[Sample]]) -> list[Sample]:
    samples: list[Sample] = []
    left = iter(range(n))

    async def lane() -> None:
        for _ in left:
            samples.append(await one())

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return samples


# Connections per httpx client of the load generator. httpcore walks every connection of a pool
# for each of them when a request starts and ends (quadratic in the pool's size): one pool of
# the 64 connections that concurrency 64 leaves behind cost the client 2.5 ms of CPU per request
# even at concurrency 1 afterwards, and 6 ms at 64 behind a slower server, which the gateway
# and LiteLLM proxy rows then measured as their own. The worker shards its pools the same way
# (workers/http_pool.py).
SHARD = 8
DIRECT = "direct httpx"
SHARDED = "direct httpx, pools of 8"
AIOHTTP = "direct aiohttp"  # the client the workers use, on its own: the fastest floor here


def has_content(line: bytes) -> bool:
    """An SSE line of an OpenAI chat stream that carries text (what TTFT waits for)."""
    if not line.startswith(b"data: ") or line == b"data: [DONE]":
        return False
    choices = orjson.loads(line[6:]).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


def openai_stream_client(
    base_url: str, model: str, key: str = "bench", pool: int = SHARD
) -> tuple[Callable[[], Awaitable[None]], Runner]:
    """A plain httpx streaming client (what an application would write without any library),
    its 128 connections in pools of `pool` (128: one pool); returns (aclose, runner)."""
    shards = [
        httpx.AsyncClient(
            base_url=base_url,
            headers={"authorization": f"Bearer {key}"},
            # Connections kept across the other paths' runs (httpx expires idle ones after
            # 5 s, and a pool rebuilt under load is slow for a whole run, see SHARD). The fake
            # (benchmarks/sse_fake.py) keeps them for as long.
            limits=httpx.Limits(
                max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=300
            ),
            timeout=60.0,
        )
        for _ in range(128 // pool)
    ]
    free = [pool] * len(shards)
    body = {"model": model, "messages": MESSAGES, "stream": True}

    async def one() -> Sample:
        # The first pool with room: light load keeps reusing the same warm connections.
        i = next(i for i, n in enumerate(free) if n)
        free[i] -= 1
        try:
            started = time.perf_counter()
            first = 0.0
            async with shards[i].stream("POST", "/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not first and has_content(line.encode()):
                        first = time.perf_counter() - started
            return first, time.perf_counter() - started
        finally:
            free[i] += 1

    async def run(n: int, concurrency: int) -> list[Sample]:
        return await fan_out(n, concurrency, one)

    async def aclose() -> None:
        for shard in shards:
            await shard.aclose()

    return aclose, run


def aiohttp_stream_client(
    base_url: str, model: str, key: str = "bench"
) -> tuple[Callable[[], Awaitable[None]], Runner]:
    """The same streaming client on aiohttp, one session of 128 connections."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=128, keepalive_timeout=300),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    url = base_url.rstrip("/") + "/chat/completions"
    data = orjson.dumps({"model": model, "messages": MESSAGES, "stream": True})

    async def one() -> Sample:
        started = time.perf_counter()
        first = 0.0
        async with session.post(url, data=data) as response:
            response.raise_for_status()
            async for line in response.content:  # line by line
                if not first and has_content(line.rstrip(b"\r\n")):
                    first = time.perf_counter() - started
        return first, time.perf_counter() - started

    async def run(n: int, concurrency: int) -> list[Sample]:
        return await fan_out(n, concurrency, one)

    return session.close, run


def llmrelay_runner(client: AsyncClient, model: str) -> Runner:
    async def one() -> Sample:
        started = time.perf_counter()
        first = 0.0
        async for event in client.stream(model=model, messages=MESSAGES):
            if isinstance(event, Token) and not first:
                first = time.perf_counter() - started
        return first, time.perf_counter() - started

    async def run(n: int, concurrency: int) -> list[Sample]:
        return await fan_out(n, concurrency, one)

    return run


def litellm_router(base_url: str, fallback: bool) -> Runner:
    from litellm.router import Router

    good = {"model": "openai/bench", "api_base": base_url, "api_key": "bench"}
    model_list = [{"model_name": "bench", "litellm_params": good}]
    kwargs: dict[str, Any] = {}
    name = "bench"
    if fallback:
        bad = {"model": "openai/fail", "api_base": base_url, "api_key": "bench"}
        model_list.append({"model_name": "first", "litellm_params": bad})
        kwargs = {"fallbacks": [{"first": ["bench"]}], "num_retries": 0}
        name = "first"
    router = Router(model_list=model_list, **kwargs)

    async def one() -> Sample:
        started = time.perf_counter()
        first = 0.0
        response = await router.acompletion(model=name, messages=MESSAGES, stream=True)
        async for chunk in response:
            if chunk.choices and chunk.choices[0].delta.content and not first:
                first = time.perf_counter() - started
        return first, time.perf_counter() - started

    async def run(n: int, concurrency: int) -> list[Sample]:
        return await fan_out(n, concurrency, one)

    return run


def openai_provider(base_url: str, model: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "kind": "openai",
        "capacity": 64,
        "replicas": replicas,
        "models": [model],
        "options": {"base_url": base_url, "api_key": "bench", "list_models": False},
    }


@contextlib.contextmanager
def broker(
    providers: dict[str, dict[str, Any]], workers: int, **settings: Any
) -> Iterator[BrokerProcess]:
    with tempfile.TemporaryDirectory() as tmp:
        process = BrokerProcess(Path(tmp), providers, settings.pop("routes", None), **settings)
        process.log_level = "info"  # what users run: the per-job info line included
        process.start()
        try:
            process.wait_workers(workers, timeout=120)
            yield process
        finally:
            process.stop()


@contextlib.contextmanager
def litellm_proxy(base_url: str) -> Iterator[tuple[str, int, str]]:
    """The LiteLLM proxy server on the same fake; yields its base URL, pid and key."""
    import shutil
    import sys

    exe = shutil.which("litellm", path=str(Path(sys.executable).parent))
    if exe is None:
        raise RuntimeError("litellm proxy not installed (pip install -e '.[bench]')")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "litellm.yaml"
        key = "sk-" + secrets.token_hex(32)
        config.write_text(
            f"general_settings:\n  master_key: {key}\n"
            "model_list:\n  - model_name: bench\n    litellm_params:\n"
            f"      model: openai/bench\n      api_base: {base_url}\n      api_key: bench\n"
        )
        port = free_port()
        args = [exe, "--config", str(config), "--port", str(port), "--num_workers", "1"]
        with child(args, log=Path(tmp) / "litellm.log") as proc:
            wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180, proc=proc)
            yield f"http://127.0.0.1:{port}/v1", proc.pid, key


@dataclass
class Measured:
    samples: list[Sample]
    wall: float
    cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return len(self.samples) / self.wall

    def ms(self, which: int, q: float) -> float:
        return percentile([s[which] for s in self.samples], q) * 1000


async def measure(run: Runner, n: int, concurrency: int, procs: dict[str, Any]) -> Measured:
    meter = CpuMeter(procs)
    started = time.perf_counter()
    samples = await run(n, concurrency)
    wall = time.perf_counter() - started
    return Measured(samples, wall, meter.ms_per_job(n))


def combine(runs: list[Measured]) -> Measured:
    """The median round by throughput (its percentiles and CPU go with it)."""
    ordered = sorted(runs, key=lambda r: r.rate)
    return ordered[len(ordered) // 2]


async def paths_on(
    url: str, sizes: Sizes, procs: dict[str, dict[str, Any]], runners: dict[str, Runner]
) -> dict[tuple[str, int], Measured]:
    """Every path at concurrency 1 and 64, interleaved round by round."""
    found: dict[tuple[str, int], list[Measured]] = {}
    for run in runners.values():  # warm-up: connections, imports, JIT-free caches
        await run(20, 4)
    for _ in range(sizes.rounds):
        for concurrency, n in ((1, sizes.serial), (64, sizes.parallel)):
            for name, run in runners.items():
                found.setdefault((name, concurrency), []).append(
                    await measure(run, n, concurrency, procs[name])
                )
    return {k: combine(v) for k, v in found.items()}


def latency_rows(
    results: dict[tuple[str, int], Measured], base: str, paths: list[str]
) -> list[Row]:
    rows: list[Row] = []
    floor1, floor64 = results[(base, 1)], results[(base, 64)]
    for path in paths:
        got1, got64 = results[(path, 1)], results[(path, 64)]
        rows.append(
            Row(
                "throughput",
                "jobs/s @64",
                path,
                base,
                got64.rate,
                floor64.rate,
                cpu_ms_per_job=got64.cpu,
            )
        )
        for which, label in ((0, "TTFT"), (1, "total")):
            for q in (50, 99):
                for c, got, floor in ((1, got1, floor1), (64, got64, floor64)):
                    rows.append(
                        Row(
                            "added latency",
                            f"p{q} {label} @{c} (ms)",
                            path,
                            base,
                            got.ms(which, q),
                            floor.ms(which, q),
                            higher_is_better=False,
                            cpu_ms_per_job=got.cpu if c == 1 and which == 0 and q == 50 else {},
                        )
                    )
    rows.append(
        Row(
            "throughput",
            "jobs/s @64",
            base,
            base,
            floor64.rate,
            floor64.rate,
            cpu_ms_per_job=floor64.cpu,
        )
    )
    return rows


async def main_async(sizes: Sizes, peers: bool) -> list[Row]:
    rows: list[Row] = []
    me = os.getpid()
    cores = other_cores(0)
    if cores:
        os.sched_setaffinity(0, cores)  # broker and workers inherit this
    with sse_fake(cpu=0 if cores else None) as url:
        # The floor as the issue measured it: one httpx client, one pool, as an application
        # would write it; beside it the same client with its pools sharded (the fastest plain
        # httpx here, and what drives the gateway and proxy rows).
        close_direct, direct = openai_stream_client(url, "bench", pool=128)
        close_sharded, sharded = openai_stream_client(url, "bench")
        close_aiohttp, plain_aiohttp = aiohttp_stream_client(url, "bench")
        runners: dict[str, Runner] = {DIRECT: direct, SHARDED: sharded, AIOHTTP: plain_aiohttp}
        procs: dict[str, dict[str, Any]] = {
            DIRECT: {"client": me},
            SHARDED: {"client": me},
            AIOHTTP: {"client": me},
        }
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(close_direct)
            stack.push_async_callback(close_sharded)
            stack.push_async_callback(close_aiohttp)
            for replicas in (1, 2):
                name = f"llmrelay, {replicas} openai worker{'s' if replicas > 1 else ''}"
                process = stack.enter_context(
                    broker({"fake": openai_provider(url, "bench", replicas)}, replicas)
                )
                assert process.proc is not None
                client = await stack.enter_async_context(AsyncClient(process.client_endpoint))
                runners[name] = llmrelay_runner(client, "fake:bench")
                procs[name] = {
                    "client": me,
                    "broker": process.proc.pid,
                    "worker": worker_pids(process.proc.pid),
                }
            if peers:
                runners["LiteLLM Router"] = litellm_router(url, fallback=False)
                procs["LiteLLM Router"] = {"client": me}
                proxy_url, proxy_pid, key = stack.enter_context(litellm_proxy(url))
                close_proxy, proxy_run = openai_stream_client(proxy_url, "bench", key)
                stack.push_async_callback(close_proxy)
                runners["LiteLLM proxy"] = proxy_run
                procs["LiteLLM proxy"] = {"client": me, "proxy": proxy_pid}
            results = await paths_on(url, sizes, procs, runners)
        paths = [p for p in runners if p != DIRECT]
        rows += latency_rows(results, DIRECT, paths)
        for floor_name in (SHARDED, AIOHTTP):
            floor = results[(floor_name, 64)]
            for name in ("llmrelay, 1 openai worker", "llmrelay, 2 openai workers"):
                got = results[(name, 64)]
                rows.append(
                    Row(
                        "throughput",
                        "jobs/s @64",
                        name,
                        floor_name,
                        got.rate,
                        floor.rate,
                        cpu_ms_per_job=got.cpu,
                    )
                )
        relay = results[("llmrelay, 1 openai worker", 64)]
        if peers:
            router = results[("LiteLLM Router", 64)]
            rows.append(
                Row(
                    "throughput",
                    "jobs/s @64",
                    "llmrelay, 1 openai worker",
                    "LiteLLM Router",
                    relay.rate,
                    router.rate,
                    cpu_ms_per_job=relay.cpu,
                    target=">= 5x",
                )
            )
        rows += await failover_rows(url, sizes, peers)
    return rows


async def failover_rows(url: str, sizes: Sizes, peers: bool) -> list[Row]:
    """First candidate always 500; jobs/s with the circuit on (default) and off."""
    me = os.getpid()
    routes = {"chain": ["bad:fail", "good:bench"]}
    found: dict[str, list[Measured]] = {}
    settings = {"on": {}, "off": {"circuit_failures": 1_000_000_000}}
    runners: dict[str, tuple[Runner, dict[str, Any]]] = {}
    async with contextlib.AsyncExitStack() as stack:
        for label, extra in settings.items():
            # fresh dicts per broker: the harness's config writer consumes "options"
            providers = {"bad": openai_provider(url, "fail"), "good": openai_provider(url, "bench")}
            process = stack.enter_context(broker(providers, 2, routes=routes, **extra))
            assert process.proc is not None
            client = await stack.enter_async_context(AsyncClient(process.client_endpoint))
            procs = {
                "client": me,
                "broker": process.proc.pid,
                "worker": worker_pids(process.proc.pid),
            }

            async def via(n: int, c: int, client: AsyncClient = client) -> list[Sample]:
                async def one() -> Sample:
                    started = time.perf_counter()
                    await client.complete(route="chain", messages=MESSAGES)
                    return 0.0, time.perf_counter() - started

                return await fan_out(n, c, one)

            runners[f"llmrelay, circuit {label}"] = (via, procs)
        if peers:
            runners["LiteLLM Router fallback"] = (
                litellm_router(url, fallback=True),
                {"client": me},
            )
        for run, _ in runners.values():
            await run(20, 4)
        for _ in range(sizes.rounds):
            for name, (run, procs) in runners.items():
                found.setdefault(name, []).append(await measure(run, sizes.failover, 16, procs))
    results = {k: combine(v) for k, v in found.items()}
    rows = []
    base = "LiteLLM Router fallback" if peers else "llmrelay, circuit off"
    for name, got in results.items():
        if name == base:
            continue
        rows.append(
            Row(
                "failover (1st candidate 500)",
                "jobs/s @16",
                name,
                base,
                got.rate,
                results[base].rate,
                cpu_ms_per_job=got.cpu,
                target=">= 8x" if peers else "",
            )
        )
    rows.append(
        Row(
            "failover (1st candidate 500)",
            "jobs/s @16",
            base,
            base,
            results[base].rate,
            results[base].rate,
            cpu_ms_per_job=results[base].cpu,
        )
    )
    return rows


def run(sizes: Sizes, peers: bool = True) -> list[Row]:
    return eventloop.run(main_async(sizes, peers))
