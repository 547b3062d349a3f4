"""The HTTP gateway's added latency and throughput on one fake OpenAI server: direct httpx
requests (the floor) vs the same requests through `llmrelay gateway` (gateway -> broker -> one
openai worker -> fake) vs LiteLLM's proxy (`litellm --config`) on the same fake and load.

The same plain httpx streaming client (benchmarks.latency.openai_stream_client) drives the
HTTP paths, so only what sits between it and the fake differs; an aiohttp client drives the
gateway once more, against direct aiohttp, where the client's own cost is a smaller share.
The llmrelay ZeroMQ client on the same broker is measured too: the gateway's own share is its
row minus that one. The fake is pinned to core 0, the rest to the other core(s); rounds
interleave the paths so a noisy neighbour hits all of them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import Row, other_cores, sse_fake, worker_pids
from benchmarks.latency import (
    AIOHTTP,
    Runner,
    Sizes,
    aiohttp_stream_client,
    latency_rows,
    litellm_proxy,
    llmrelay_runner,
    openai_provider,
    openai_stream_client,
    paths_on,
)
from benchmarks.latency import SHARDED as DIRECT
from protocol import eventloop
from protocol.client import AsyncClient
from tests.gateway_support import GatewayProcess
from tests.harness import BrokerProcess

GATEWAY = "llmrelay gateway, 1 openai worker"
# The same gateway driven by aiohttp: httpx's own tail at concurrency 64 (p99 TTFT seconds
# against a p50 of ~150 ms, against the gateway and the fake alike) hides the gateway's.
GATEWAY_AIO = "llmrelay gateway, aiohttp client"
PROXY = "LiteLLM proxy"
ZMQ = "llmrelay client (ZeroMQ), same broker"


@contextlib.contextmanager
def gateway_stack(url: str) -> Iterator[tuple[GatewayProcess, BrokerProcess]]:
    """A broker with one openai worker on the fake, and a gateway process in front of it."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = BrokerProcess(Path(tmp), {"fake": openai_provider(url, "bench")}, None)
        broker.log_level = "info"  # what users run
        # The bench keeps idle client connections for the whole run (benchmarks.latency), and
        # a path waits ~75 s for its next round while the proxy's runs: past the gateway's
        # default idle timeout, which then races a reuse (an httpx ReadError in one run).
        gateway = GatewayProcess(broker, idle_connection_timeout=900)
        try:
            broker.start()
            broker.wait_workers(1, timeout=120)
            gateway.start()
            yield gateway, broker
        finally:
            gateway.stop()
            broker.stop()


def _added_p50_row(rows: list[Row]) -> None:
    """Mark the issue's target on the gateway's p50 rows at concurrency 1."""
    for row in rows:
        if row.path == GATEWAY and row.measure in ("p50 TTFT @1 (ms)", "p50 total @1 (ms)"):
            row.target = "added <= 1.5 ms"


async def main_async(sizes: Sizes, peers: bool) -> list[Row]:
    me = os.getpid()
    cores = other_cores(0)
    if cores:
        os.sched_setaffinity(0, cores)  # broker, worker and gateway inherit this
    with sse_fake(cpu=0 if cores else None) as url:
        async with contextlib.AsyncExitStack() as stack:
            close_direct, direct = openai_stream_client(url, "bench")
            stack.push_async_callback(close_direct)
            runners: dict[str, Runner] = {DIRECT: direct}
            procs: dict[str, dict[str, Any]] = {DIRECT: {"client": me}}
            gateway, broker = stack.enter_context(gateway_stack(url))
            assert gateway.proc is not None and broker.proc is not None
            close_gateway, via_gateway = openai_stream_client(gateway.base_url, "fake:bench")
            stack.push_async_callback(close_gateway)
            runners[GATEWAY] = via_gateway
            relay = {"broker": broker.proc.pid, "worker": worker_pids(broker.proc.pid)}
            procs[GATEWAY] = {"client": me, "gateway": gateway.proc.pid, **relay}
            close_aio, direct_aio = aiohttp_stream_client(url, "bench")
            stack.push_async_callback(close_aio)
            close_gateway_aio, gateway_aio = aiohttp_stream_client(gateway.base_url, "fake:bench")
            stack.push_async_callback(close_gateway_aio)
            runners[AIOHTTP], runners[GATEWAY_AIO] = direct_aio, gateway_aio
            procs[AIOHTTP], procs[GATEWAY_AIO] = {"client": me}, procs[GATEWAY]
            client = await stack.enter_async_context(AsyncClient(broker.client_endpoint))
            runners[ZMQ] = llmrelay_runner(client, "fake:bench")
            procs[ZMQ] = {"client": me, **relay}
            if peers:
                proxy_url, proxy_pid, key = stack.enter_context(litellm_proxy(url))
                close_proxy, via_proxy = openai_stream_client(proxy_url, "bench", key)
                stack.push_async_callback(close_proxy)
                runners[PROXY] = via_proxy
                procs[PROXY] = {"client": me, "proxy": proxy_pid}
            results = await paths_on(url, sizes, procs, runners)
    httpx_paths = [p for p in runners if p not in (DIRECT, AIOHTTP, GATEWAY_AIO)]
    rows = latency_rows(results, DIRECT, httpx_paths)
    rows += latency_rows(results, AIOHTTP, [GATEWAY_AIO])
    for row in rows:
        row.bench = f"gateway {row.bench}"
    _added_p50_row(rows)
    for which, label in ((0, "TTFT"), (1, "total")):  # the gateway's own share
        rows.append(
            Row(
                "gateway added latency",
                f"p50 {label} @1 (ms)",
                GATEWAY,
                ZMQ,
                results[(GATEWAY, 1)].ms(which, 50),
                results[(ZMQ, 1)].ms(which, 50),
                higher_is_better=False,
            )
        )
    if peers:
        ours, theirs = results[(GATEWAY, 64)], results[(PROXY, 64)]
        rows.append(
            Row(
                "gateway throughput",
                "jobs/s @64",
                GATEWAY,
                PROXY,
                ours.rate,
                theirs.rate,
                cpu_ms_per_job=ours.cpu,
                target=">= 5x",
            )
        )
    return rows


def run(sizes: Sizes, peers: bool = True) -> list[Row]:
    # The loop the latency benchmark and our client use (uvloop), so the two benchmarks'
    # direct-httpx baselines are taken the same way.
    return eventloop.run(main_async(sizes, peers))
