"""The `llmrelay` command: broker, worker, submit, status, models, batch, keys, config, tiny-model.

Exit codes: 0 success; 1 the job failed or the broker could not be reached (one line
`error: <category>...`); 2 bad input or configuration (one line naming the field; argparse's
usage errors too); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from catalog.capabilities import FLAGS
from dispatcher.config import ConfigError, load_config
from protocol import eventloop, logs
from protocol.client import CONNECT_TIMEOUT, DEFAULT_ENDPOINT, AsyncClient
from protocol.constants import CONFIG_ENV, DEFAULT_WORKER_ENDPOINT, SPEC_ENV
from protocol.errors import ProtocolViolation, ProviderError
from protocol.results import Done, Reset, Token
from workers.registry import KINDS
from workers.spec import ProviderSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Bad command-line input; the text names the option."""


def _configure_logs(args: argparse.Namespace, component: str) -> None:
    if args.log_format:  # spawned workers inherit it through the environment
        os.environ[logs.FORMAT_ENV] = args.log_format
    logs.configure(args.log_level, component=component)


def _cmd_broker(args: argparse.Namespace) -> int:
    from dispatcher.broker import Broker

    _configure_logs(args, "broker")
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
    raw = os.environ.get(SPEC_ENV)
    if raw:  # spawned by the broker: the spec travels in the environment, never in argv
        return ProviderSpec(**json.loads(raw))
    config = load_config(args.config) if (args.config or os.environ.get(CONFIG_ENV)) else None
    if config is not None and args.provider in config.providers:
        return config.providers[args.provider]
    if args.provider in KINDS:
        return ProviderSpec(name=args.provider, kind=args.provider)
    raise ConfigError("--provider", f"{args.provider!r} is neither in the config nor a known kind")


def _cmd_worker(args: argparse.Namespace) -> int:
    from workers.runtime import run_worker

    _configure_logs(args, "worker")
    spec = _worker_spec(args)
    if args.capacity:
        spec.capacity = args.capacity
    return run_worker(spec, args.connect, heartbeat_interval=args.heartbeat_interval)


def read_prompt(value: str) -> str:
    """The prompt argument: literal text, `-` for stdin, or `@path` for a file's contents."""
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"prompt: cannot read {str(path)!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"prompt: {str(path)!r} is not UTF-8 text") from None
    return value


def parse_params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--params: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(params, dict):
        raise UsageError(f"--params: must be a JSON object, got {type(params).__name__}")
    return params


def _submit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    params = parse_params(args.params)
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    target = {"model": args.model} if args.model else {"route": args.route or "default"}
    return {
        **target,
        "prompt": read_prompt(args.prompt),
        "system": args.system,
        "params": params,
        "timeout": args.timeout,
    }


async def _submit(args: argparse.Namespace, kwargs: dict[str, Any]) -> int:
    async with AsyncClient(args.endpoint, **_client_options(args)) as client:
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


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"connect_timeout": args.connect_timeout}


def _cmd_submit(args: argparse.Namespace) -> int:
    from protocol.client import build_job

    kwargs = _submit_kwargs(args)
    build_job(**{**kwargs, "params": dict(kwargs["params"])})  # bad input fails before connecting
    try:
        return eventloop.run(_submit(args, kwargs))
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def status_table(status: dict[str, Any]) -> str:
    lines = [f"queued {status['queued']}  running {status['running']}  totals {status['totals']}"]
    for w in status["workers"]:
        stats = w.get("stats") or {}
        lines.append(
            f"  worker {w['worker']:<28} {w['provider']:<12} pid {w['pid']:<7} "
            f"{w['inflight']}/{w['capacity']} rss {stats.get('rss', 0) // (1 << 20)} MiB"
        )
    for key, h in status["health"].items():
        lines.append(f"  health {key:<32} {h['state']:<9} circuit {h['circuit']}")
    return "\n".join(lines)


def _show_status(args: argparse.Namespace, status: dict[str, Any]) -> None:
    print(json.dumps(status, indent=2, default=str) if args.json else status_table(status))


async def _status(args: argparse.Namespace) -> int:
    async with AsyncClient(args.endpoint, **_client_options(args)) as client:
        _show_status(args, await client.status(timeout=args.timeout))
        # Ctrl-C sets an event: 3.11's wait_for can swallow a cancellation of the main task.
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        while args.watch:  # a live table: redraw every interval until Ctrl-C
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
                return EXIT_INTERRUPTED
            status = await client.status(timeout=args.timeout)
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")  # home + clear: redraw in place
            else:
                print(f"--- {time.strftime('%H:%M:%S')}")
            _show_status(args, status)
            sys.stdout.flush()
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        return eventloop.run(_status(args))
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _models(args: argparse.Namespace) -> Any:
    async with AsyncClient(args.endpoint, **_client_options(args)) as client:
        return await client.models(
            provider=args.provider,
            capability=args.capability,
            refresh=args.refresh,
            timeout=args.timeout,
        )


def _cmd_models(args: argparse.Namespace) -> int:
    from catalog.listing import render_models

    try:
        listing = eventloop.run(_models(args))
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(listing, indent=2) if args.json else render_models(listing))
    return EXIT_OK


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    from dispatcher.keys import ROLES, generate_keys

    written = generate_keys(Path(args.dir))
    print(f"wrote {len(written)} key files (mode 0600) to {args.dir}: {', '.join(ROLES)} pairs")
    print(
        "broker: curve_public_key = <broker.public>, curve_secret_key_env = a variable holding "
        "<broker.secret>, curve_allowed_clients = [<client.public>, <worker.public>]"
    )
    print(
        "client/worker: LLMRELAY_CURVE_SERVER_KEY=<broker.public>, "
        "LLMRELAY_CURVE_PUBLIC_KEY=<its .public>, LLMRELAY_CURVE_SECRET_KEY=<its .secret>"
    )
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    from dispatcher.config import resolved

    config = load_config(args.file)
    print(json.dumps(resolved(config), indent=2))
    print(f"config ok: {args.file}", file=sys.stderr)
    return EXIT_OK


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


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            word = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {word}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line (no usage block): `llmrelay submit: error: argument --timeout: ...`."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="CURVE key pairs")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    generate = actions.add_parser("generate", help="write broker/client/worker key pairs (0600)")
    generate.add_argument("dir", help="directory to write into (created; files never overwritten)")
    generate.set_defaults(func=_cmd_keys_generate)


def _cmd_batch(args: argparse.Namespace) -> int:
    from batch.cli import main as batch_main

    return batch_main(args)


def _add_batch_parser(sub: Any) -> None:
    from batch.cli import HELP, add_arguments

    batch = sub.add_parser(
        "batch",
        help="run an OpenAI / Anthropic / llmrelay batch file through the broker",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(batch, DEFAULT_ENDPOINT)
    batch.set_defaults(func=_cmd_batch)


def _add_models_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="the catalog: models, capabilities, prices")
    models.add_argument("--provider", help="only this configured provider")
    models.add_argument("--capability", choices=FLAGS, help="only models with it")
    models.add_argument("--refresh", action="store_true", help="refetch live model data first")
    models.add_argument("--json", action="store_true")
    models.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    models.add_argument("--timeout", type=_positive(float), default=60.0)
    _add_connect_timeout(models)
    models.set_defaults(func=_cmd_models)


def _add_config_parser(sub: Any) -> None:
    config = sub.add_parser("config", help="configuration files")
    actions = config.add_subparsers(dest="config_command", required=True)
    check = actions.add_parser("check", help="validate FILE and print it resolved, secrets masked")
    check.add_argument("file")
    check.set_defaults(func=_cmd_config_check)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llmrelay", description=__doc__)
    parser.add_argument("--log-level", default=None, help="debug, info, warning (default info)")
    parser.add_argument(
        "--log-format", choices=("json", "console"), help="json lines (default) or console text"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    broker = sub.add_parser("broker", help="run the broker and the local workers it supervises")
    broker.add_argument("--config", help="TOML file (default $LLMRELAY_CONFIG, else defaults)")
    broker.add_argument("--client-endpoint")
    broker.add_argument("--worker-endpoint")
    broker.add_argument("--no-spawn", action="store_true", help="do not start local workers")
    broker.set_defaults(func=_cmd_broker)

    worker = sub.add_parser("worker", help="run one worker process for a provider")
    worker.add_argument("--provider", required=True, help="provider name in the config, or a kind")
    worker.add_argument("--connect", default=DEFAULT_WORKER_ENDPOINT, help="broker worker endpoint")
    worker.add_argument("--config")
    worker.add_argument("--capacity", type=_positive(int))
    worker.add_argument("--heartbeat-interval", type=_positive(float), default=1.0)
    worker.set_defaults(func=_cmd_worker)

    submit = sub.add_parser("submit", help="run one prompt through the broker")
    submit.add_argument("prompt", help="the prompt text, - to read stdin, or @FILE")
    target = submit.add_mutually_exclusive_group()
    target.add_argument("--model", help="provider:model, or a model name a provider lists")
    target.add_argument("--route", help="a route from the config (default: 'default')")
    submit.add_argument("--system")
    submit.add_argument("--stream", action="store_true")
    submit.add_argument("--max-tokens", type=_positive(int))
    submit.add_argument("--params", help='canonical parameters as JSON, e.g. {"temperature":0}')
    submit.add_argument(
        "--timeout", type=_positive(float), default=300.0, help="the job's deadline (seconds)"
    )
    submit.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    _add_connect_timeout(submit)
    submit.set_defaults(func=_cmd_submit)

    status = sub.add_parser("status", help="workers, queues, health")
    status.add_argument("--json", action="store_true")
    status.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    status.add_argument("--timeout", type=_positive(float), default=5.0)
    status.add_argument("--watch", action="store_true", help="redraw every --interval seconds")
    status.add_argument("--interval", type=_positive(float), default=2.0)
    _add_connect_timeout(status)
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
    _add_keys_parser(sub)
    _add_config_parser(sub)
    _add_models_parser(sub)
    _add_batch_parser(sub)
    return parser


def _add_connect_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=CONNECT_TIMEOUT,
        help=f"seconds to wait for a first answer from the broker (default {CONNECT_TIMEOUT:g})",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, ProtocolViolation) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
