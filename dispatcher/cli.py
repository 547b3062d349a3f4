"""The `llmrelay` command: broker, worker, submit, status, tiny-model."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from dispatcher.config import ConfigError, load_config
from protocol import logs
from protocol.client import DEFAULT_ENDPOINT, AsyncClient
from protocol.errors import ProviderError
from protocol.results import Done, Reset, Token
from workers.registry import KINDS
from workers.spec import ProviderSpec


def _cmd_broker(args: argparse.Namespace) -> int:
    from dispatcher.broker import Broker

    logs.configure(args.log_level, component="broker")
    config = load_config(args.config)
    if args.client_endpoint:
        config.broker.client_endpoint = args.client_endpoint
    if args.worker_endpoint:
        config.broker.worker_endpoint = args.worker_endpoint
    broker = Broker(config, spawn=not args.no_spawn)
    broker.install_signal_handlers()
    broker.run()
    return 0


def _worker_spec(args: argparse.Namespace) -> ProviderSpec:
    raw = os.environ.get("LLMRELAY_WORKER_SPEC")
    if raw:  # spawned by the broker: the spec travels in the environment, never in argv
        return ProviderSpec(**json.loads(raw))
    config = (
        load_config(args.config) if (args.config or os.environ.get("LLMRELAY_CONFIG")) else None
    )
    if config is not None and args.provider in config.providers:
        return config.providers[args.provider]
    if args.provider in KINDS:
        return ProviderSpec(name=args.provider, kind=args.provider)
    raise ConfigError(f"provider {args.provider!r} is neither in the config nor a known kind")


def _cmd_worker(args: argparse.Namespace) -> int:
    from workers.runtime import run_worker

    logs.configure(args.log_level, component="worker")
    spec = _worker_spec(args)
    if args.capacity:
        spec.capacity = args.capacity
    return run_worker(spec, args.connect, heartbeat_interval=args.heartbeat_interval)


async def _submit(args: argparse.Namespace) -> int:
    params: dict[str, Any] = json.loads(args.params) if args.params else {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    target = {"model": args.model} if args.model else {"route": args.route or "default"}
    async with AsyncClient(args.endpoint) as client:
        kwargs: dict[str, Any] = {
            **target,
            "prompt": args.prompt,
            "system": args.system,
            "params": params,
            "timeout": args.timeout,
        }
        if args.stream:
            async for event in client.stream(**kwargs):
                if isinstance(event, Token):
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, Reset):
                    sys.stdout.write(f"\n[reset: {event.reason}]\n")
                elif isinstance(event, Done):
                    result = event.result
            sys.stdout.write("\n")
        else:
            result = await client.complete(**kwargs)
            print(result.text)
        summary = {
            "provider": result.provider,
            "model": result.model,
            "finish_reason": result.finish_reason,
            "usage": result.usage,
            "attempts": len(result.attempts),
            "latency": result.latency,
            "ttft": result.ttft,
        }
        print(json.dumps(summary), file=sys.stderr)
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_submit(args))
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _status(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncClient(args.endpoint) as client:
        return await client.status(timeout=args.timeout)


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        status = asyncio.run(_status(args))
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print(f"queued {status['queued']}  running {status['running']}  totals {status['totals']}")
    for w in status["workers"]:
        stats = w.get("stats") or {}
        print(
            f"  worker {w['worker']:<28} {w['provider']:<12} pid {w['pid']:<7} "
            f"{w['inflight']}/{w['capacity']} rss {stats.get('rss', 0) // (1 << 20)} MiB"
        )
    for key, h in status["health"].items():
        print(f"  health {key:<32} {h['state']:<9} circuit {h['circuit']}")
    return 0


def _gateway_catalog(config: Any) -> Any:
    """Routes and provider:model ids from the config, for /v1/models and route names."""
    from gateway.app import Catalog, ModelInfo

    models = [ModelInfo(route, "llmrelay-route") for route in config.routes]
    for name, spec in config.providers.items():
        models += [ModelInfo(f"{name}:{model}", name) for model in spec.models]
    return Catalog(models=models, routes=frozenset(config.routes))


def _cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from gateway.settings import GatewaySettings

    logs.configure(args.log_level, component="gateway")
    config = load_config(args.config)
    settings = config.http or GatewaySettings()
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    endpoint = args.broker or settings.broker_endpoint or config.broker.client_endpoint
    serve(settings, endpoint.replace("0.0.0.0", "127.0.0.1"), _gateway_catalog(config))
    return 0


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from workers.llamacpp.tinymodel import write_tiny_model

    path = write_tiny_model(args.path)
    print(f"wrote TEST model (random weights, output is noise): {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrelay", description=__doc__)
    parser.add_argument("--log-level", default=None, help="debug, info, warning (default info)")
    sub = parser.add_subparsers(dest="command", required=True)

    broker = sub.add_parser("broker", help="run the broker and the local workers it supervises")
    broker.add_argument("--config", help="TOML file (default $LLMRELAY_CONFIG, else defaults)")
    broker.add_argument("--client-endpoint")
    broker.add_argument("--worker-endpoint")
    broker.add_argument("--no-spawn", action="store_true", help="do not start local workers")
    broker.set_defaults(func=_cmd_broker)

    worker = sub.add_parser("worker", help="run one worker process for a provider")
    worker.add_argument("--provider", required=True, help="provider name in the config, or a kind")
    worker.add_argument("--connect", default="tcp://127.0.0.1:5556", help="broker worker endpoint")
    worker.add_argument("--config")
    worker.add_argument("--capacity", type=int)
    worker.add_argument("--heartbeat-interval", type=float, default=1.0)
    worker.set_defaults(func=_cmd_worker)

    submit = sub.add_parser("submit", help="run one prompt through the broker")
    submit.add_argument("prompt")
    target = submit.add_mutually_exclusive_group()
    target.add_argument("--model", help="provider:model, or a model name a provider lists")
    target.add_argument("--route", help="a route from the config (default: 'default')")
    submit.add_argument("--system")
    submit.add_argument("--stream", action="store_true")
    submit.add_argument("--max-tokens", type=int)
    submit.add_argument("--params", help='canonical parameters as JSON, e.g. {"temperature":0}')
    submit.add_argument("--timeout", type=float, default=300.0)
    submit.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    submit.set_defaults(func=_cmd_submit)

    status = sub.add_parser("status", help="workers, queues, health")
    status.add_argument("--json", action="store_true")
    status.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    status.add_argument("--timeout", type=float, default=5.0)
    status.set_defaults(func=_cmd_status)

    gateway = sub.add_parser("gateway", help="serve the OpenAI/Anthropic-compatible HTTP API")
    gateway.add_argument("--config", help="TOML file; its [http] table sets the gateway up")
    gateway.add_argument("--host", help="address to bind (default [http] host, 127.0.0.1)")
    gateway.add_argument("--port", type=int, help="port to bind (default [http] port, 8080)")
    gateway.add_argument("--broker", help="broker client endpoint (default from the config)")
    gateway.set_defaults(func=_cmd_gateway)

    tiny = sub.add_parser("tiny-model", help="write a tiny random-weight GGUF (TEST model)")
    tiny.add_argument("path")
    tiny.set_defaults(func=_cmd_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
