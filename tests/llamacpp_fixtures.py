"""Fixtures for the llama.cpp tests (loaded for every test by tests/conftest.py).

The real-binary fixtures skip (with the reason) only when llama-server cannot be found.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from workers.llamacpp.binary import BinaryNotFound, ServerBinary, find_llama_server
from workers.llamacpp.tinymodel import write_tiny_model

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


@pytest.fixture
def reap_children() -> Iterator[None]:
    """Whatever a test started (servers, worker subprocesses) dies with it, failed or not."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    for child in psutil.Process().children(recursive=True):
        if child.pid in before:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(child.pid) == child.pid:  # it leads its own group: take it all
                os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            child.kill()
