"""Real processes for integration tests: a broker (with its supervised workers) on free ports.

Every process runs in its own session; `stop()` kills the whole process group, and the
fixtures call it even when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil

from protocol.client import Client
from workers.procutil import die_with_parent_preexec


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Each test body runs in a fresh event loop (the project uses no asyncio test plugin)."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    wrapper.__name__ = test.__name__
    return wrapper


ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_EPHEMERAL = _ephemeral_range()
_PORTS = random.Random(os.getpid() ^ time.monotonic_ns())
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port that is free now and stays free until a child binds it.

    Picked below the kernel's ephemeral range: `bind(port 0)` and every outgoing connection
    take their port from that range, so a port picked there could be taken by any process's
    connection (or another test's port 0) before the child binds it ("Address already in
    use"). Below it only explicit binds compete; those of this session are never repeated,
    and a random pick makes a clash with a concurrent session unlikely.
    """
    low, high = 20_000, _EPHEMERAL[0] - 1
    if high - low < 1_000:  # an unusual ephemeral range: take any port the kernel offers
        low, high = 0, 0
    for _ in range(200):
        port = _PORTS.randint(low, high) if high else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port found in {low}..{high}")


def toml_value(value: Any) -> str:
    """TOML for the config values tests use: JSON scalars and arrays, inline tables."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def write_config(
    path: Path,
    broker: dict[str, Any],
    providers: dict[str, dict[str, Any]],
    routes: dict[str, Any] | None = None,
) -> Path:
    lines = ["[broker]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in broker.items()]
    for name, spec in providers.items():
        options = spec.pop("options", {})
        lines.append(f"\n[providers.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in spec.items()]
        if options:
            lines.append(f"\n[providers.{name}.options]")
            lines += [f"{k} = {toml_value(v)}" for k, v in options.items()]
    for name, route in (routes or {}).items():
        table = route if isinstance(route, dict) else {"candidates": route}
        lines.append(f"\n[routes.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def kill_tree(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Kill a process group and any stragglers that left it."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


# What most integration tests shorten so they run quickly: a 0.5 s heartbeat (users get 1 s;
# workers started by hand 1 s too), 4 beats of liveness (3), a 0.2 s restart backoff (0.5).
# `user_defaults=True` keeps every default instead: each fault has a test run that way.
SHORTENED = {"heartbeat_interval": 0.5, "heartbeat_liveness": 4, "restart_backoff": 0.2}


class BrokerProcess:
    def __init__(
        self,
        tmp: Path,
        providers: dict[str, dict[str, Any]],
        routes: dict[str, Any] | None = None,
        user_defaults: bool = False,
        **broker: Any,
    ) -> None:
        self.tmp = tmp
        self.user_defaults = user_defaults
        self.client_port = free_port()
        self.worker_port = free_port()
        self.client_endpoint = f"tcp://127.0.0.1:{self.client_port}"
        self.worker_endpoint = f"tcp://127.0.0.1:{self.worker_port}"
        settings = {
            "client_endpoint": self.client_endpoint,
            "worker_endpoint": self.worker_endpoint,
            **({} if user_defaults else SHORTENED),
            **broker,
        }
        self.config = write_config(tmp / "llmrelay.toml", settings, providers, routes)
        self.log_path = tmp / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.log_level = "debug"

    def start(self, wait: bool = True) -> BrokerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {
            **os.environ,
            "LLMRELAY_LOG_LEVEL": self.log_level,
            "PYTHONPATH": str(ROOT),
            "LLMRELAY_CACHE_DIR": str(self.tmp / "cache"),  # live catalog data of this test
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "broker", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            cwd=ROOT,
            preexec_fn=die_with_parent_preexec(),  # a killed test run leaves nothing behind
        )
        log.close()
        return self

    def start_worker(self, provider: str, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker-{provider}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "LLMRELAY_LOG_LEVEL": "debug", "PYTHONPATH": str(ROOT)}
        env.pop("LLMRELAY_WORKER_SPEC", None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "worker",
                "--provider",
                provider,
                "--config",
                str(self.config),
                "--connect",
                self.worker_endpoint,
                *([] if self.user_defaults else ["--heartbeat-interval", "0.5"]),
                *extra,
            ],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            cwd=ROOT,
            preexec_fn=die_with_parent_preexec(),  # a killed test run leaves nothing behind
        )
        log.close()
        self.workers.append(proc)
        return proc

    def client(self, **kwargs: Any) -> Client:
        if not self.user_defaults:
            kwargs.setdefault("heartbeat_interval", 0.5)
        return Client(self.client_endpoint, **kwargs)

    def wait_workers(
        self, count: int, timeout: float = 30.0, provider: str | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                try:
                    status = client.status(timeout=1.0)
                    workers = [
                        w
                        for w in status["workers"]
                        if provider is None or w["provider"] == provider
                    ]
                    if len(workers) >= count:
                        return status
                except Exception:
                    status = None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{count} workers not ready; last status {status}; "
                        f"log tail: {self.log_tail()}"
                    )
                time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"{name}"' in line:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == name:
                    found.append(event)
        return found

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc)
            self.proc = None

    def stop(self) -> None:
        for worker in self.workers:
            kill_tree(worker)
        self.workers = []
        self.kill()
