"""A SIGKILLed worker leaves no llama-server behind (PR_SET_PDEATHSIG in the child)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from workers.llamacpp.binary import ServerBinary

# Fixtures (llama_binary, tiny_model, long_model, reap_children) live in a shared plugin.
pytestmark = pytest.mark.usefixtures("reap_children")

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import asyncio, sys
from workers.providers.llamacpp import LlamaCppBackend
from workers.spec import ProviderSpec

async def main() -> None:
    spec = ProviderSpec(name="orphan-test", kind="llamacpp", capacity=1,
                        options={"model_path": sys.argv[1]})
    backend = LlamaCppBackend(spec)
    await backend.start()
    print(f"LLAMA_PID={backend.server.pid}", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.llama
def test_sigkilled_worker_leaves_no_llama_server(
    llama_binary: ServerBinary, tiny_model: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tiny_model)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    llama_pid = None
    try:
        assert worker.stdout is not None
        for line in worker.stdout:
            if line.startswith("LLAMA_PID="):
                llama_pid = int(line.split("=", 1)[1])
                break
        assert llama_pid is not None, "the worker did not start llama-server"
        llama = psutil.Process(llama_pid)
        assert llama.ppid() == worker.pid
        assert "llama-server" in llama.name()

        worker.send_signal(signal.SIGKILL)  # no cleanup code can run in the worker
        worker.wait(timeout=10)

        _, alive = psutil.wait_procs([llama], timeout=10)
        assert not alive, f"orphaned llama-server left running: {alive}"
        leftovers = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(tiny_model) in " ".join(p.info["cmdline"] or [])
        ]
        assert not leftovers
    finally:
        for pid in (worker.pid, llama_pid):
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        worker.wait(timeout=10)
