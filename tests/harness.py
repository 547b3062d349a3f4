"""Real processes for integration tests: a broker (with its supervised workers) on free ports.

Every process runs in its own session; `stop()` kills the whole process group, and the
fixtures call it even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from protocol.client import Client
from workers.procutil import die_with_parent_preexec

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class BrokerProcess:
    def __init__(
        self,
        tmp: Path,
        providers: dict[str, dict[str, Any]],
        routes: dict[str, Any] | None = None,
        **broker: Any,
    ) -> None:
        self.tmp = tmp
        self.client_port = free_port()
        self.worker_port = free_port()
        self.client_endpoint = f"tcp://127.0.0.1:{self.client_port}"
        self.worker_endpoint = f"tcp://127.0.0.1:{self.worker_port}"
        settings = {
            "client_endpoint": self.client_endpoint,
            "worker_endpoint": self.worker_endpoint,
            "heartbeat_interval": 0.5,
            "heartbeat_liveness": 4,
            "restart_backoff": 0.2,
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
                "--heartbeat-interval",
                "0.5",
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
