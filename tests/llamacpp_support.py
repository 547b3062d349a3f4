"""Helpers for the llama.cpp tests (fixtures are in tests/llamacpp_fixtures.py)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from workers.spec import ProviderSpec


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
            body = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
            code = 503
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

if script.get("sigill_unless_no_repack") and "--no-repack" not in args:
    import resource, signal  # what llama-server does loading repacked weights on some VMs
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), signal.SIGILL)
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
