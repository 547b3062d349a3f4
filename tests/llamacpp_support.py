"""Shared fixtures and helpers for the llama.cpp tests (imported by tests/test_llamacpp_*.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from workers.llamacpp.binary import BinaryNotFound, ServerBinary, find_llama_server
from workers.llamacpp.tinymodel import write_tiny_model
from workers.spec import ProviderSpec

LONG_CTX = 16384  # long enough to still be generating when a test acts mid-stream


@pytest.fixture(scope="session")
def llama_binary() -> ServerBinary:
    try:
        return find_llama_server()
    except BinaryNotFound as exc:
        pytest.skip(f"llama-server binary not available: {exc}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("llama") / "tiny.gguf")


@pytest.fixture(scope="session")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("llama") / "tiny-long.gguf", n_ctx=LONG_CTX)


@pytest.fixture(autouse=True)
def reap_children() -> Iterator[None]:
    """Whatever a test started (servers, worker subprocesses) dies with it, failed or not."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    for child in psutil.Process().children(recursive=True):
        if child.pid in before:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # our children lead their own groups
        with contextlib.suppress(psutil.Error):
            child.kill()


def spec_for(model: Path, capacity: int = 2, **options: Any) -> ProviderSpec:
    opts: dict[str, Any] = {
        "model_path": str(model),
        "health_interval": 0.2,
        "restart_backoff": 0.05,
        **options,
    }
    return ProviderSpec(
        name="llama-test", kind="llamacpp", models=["tiny"], capacity=capacity, options=opts
    )


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async test body on the main thread (PR_SET_PDEATHSIG follows the forking thread)."""
    asyncio.run(coro_fn())


# A stand-in for llama-server, driven by its "model" file (JSON): lets tests script loading
# (503s), crashes and hangs. It speaks just /health, like the real one.
FAKE_SERVER = r"""
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
model = args[args.index("-m") + 1]
script = json.load(open(model))
hits = model + ".hits"
state = {"n": 0}
print("fake llama-server starting", flush=True)
print("0.00.000.001 W fake: warming up", file=sys.stderr, flush=True)

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        state["n"] += 1
        with open(hits, "a") as f:
            f.write("x")
        if state["n"] <= script.get("loading_503", 0):
            body, code = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}', 503
        else:
            body, code = b'{"status":"ok"}', 200
            if script.get("hang_after_ready") and state["n"] > script.get("loading_503", 0) + 1:
                time.sleep(3600)
            if script.get("exit_after_ready"):
                threading.Timer(0.05, lambda: os._exit(3)).start()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

if script.get("exit_at_start"):
    print("0.00.000.002 E fake: failed to load model, bad magic", file=sys.stderr, flush=True)
    sys.exit(1)
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def fake_binary(tmp: Path) -> Path:
    path = tmp / "fake-llama-server"
    path.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    path.chmod(0o755)
    return path


def fake_model(tmp: Path, **script: Any) -> Path:
    path = tmp / "fake-model.json"
    path.write_text(json.dumps(script))
    return path
