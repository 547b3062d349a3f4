"""The llama-server supervisor: loading, bad models, crashes, hangs, flapping, clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.llamacpp_support import fake_binary, fake_model, run
from workers.llamacpp.binary import ServerBinary
from workers.llamacpp.server import LlamaServer, ServerConfig, ServerFailed, ServerState

# Fixtures (llama_binary, tiny_model, long_model, reap_children) live in a shared plugin.
pytestmark = pytest.mark.usefixtures("reap_children")


def fake_config(tmp_path: Path, **script: object) -> ServerConfig:
    binary = ServerBinary(fake_binary(tmp_path), "option")
    return ServerConfig(
        binary=binary,
        model=fake_model(tmp_path, **script),
        health_interval=0.05,
        health_timeout=0.5,
        health_failures=2,
        backoff_initial=0.01,
        max_restarts=2,
        stop_timeout=2.0,
    )


async def wait_for_state(server: LlamaServer, *states: ServerState) -> None:
    for _ in range(400):  # a bound, not a timing assertion
        if server.state in states:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"server stayed {server.state}, expected {states}")


def test_loading_503_is_waited_out(tmp_path: Path) -> None:
    config = fake_config(tmp_path, loading_503=4)

    async def body() -> None:
        server = LlamaServer(config)
        try:
            await server.start()
            assert server.state is ServerState.READY
            hits = (config.model.parent / (config.model.name + ".hits")).read_text()
            assert len(hits) >= 5  # four 503 answers, then the 200
            assert any("fake llama-server starting" in line for line in server.output)
        finally:
            await server.close()

    run(body)


def test_missing_model_fails_fast_without_launching(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    config.model = tmp_path / "no-such-model.gguf"

    async def body() -> None:
        server = LlamaServer(config)
        with pytest.raises(ServerFailed, match="does not exist") as info:
            await server.start()
        assert info.value.missing_model
        assert server.pid is None  # nothing was launched
        assert server.state is ServerState.FAILED
        await server.close()

    run(body)


def test_exit_during_load_reports_its_output(tmp_path: Path) -> None:
    config = fake_config(tmp_path, exit_at_start=True)

    async def body() -> None:
        server = LlamaServer(config)
        with pytest.raises(ServerFailed, match="bad magic") as info:
            await server.start()
        assert "exited with code 1 while loading" in str(info.value)
        assert server.restarts == 0  # not a restart loop
        await server.close()

    run(body)


def test_a_server_killed_by_repacking_is_started_again_without(tmp_path: Path) -> None:
    config = fake_config(tmp_path, sigill_unless_no_repack=True)

    async def body() -> None:
        server = LlamaServer(config)
        try:
            assert "--no-repack" not in server.argv()  # llama-server's default, repacking
            await server.start()
            assert server.state is ServerState.READY
            assert server.no_repack and server.argv()[-1] == "--no-repack"
            assert server.restarts == 0  # one more launch while starting, not a restart
        finally:
            await server.close()

    run(body)


def test_an_explicit_repack_flag_is_never_overridden(tmp_path: Path) -> None:
    config = fake_config(tmp_path, sigill_unless_no_repack=True)
    config.extra_args = ["--repack"]

    async def body() -> None:
        server = LlamaServer(config)
        with pytest.raises(ServerFailed, match=f"exited with code -{int(signal.SIGILL)}"):
            await server.start()
        assert not server.no_repack and "--no-repack" not in server.argv()
        await server.close()

    run(body)


def test_flapping_server_gives_up_with_clear_error(tmp_path: Path) -> None:
    config = fake_config(tmp_path, exit_after_ready=True)

    async def body() -> None:
        server = LlamaServer(config)
        try:
            await server.start()
            await wait_for_state(server, ServerState.FAILED)
            assert server.restarts == config.max_restarts
            assert server.error is not None and "giving up" in server.error
            with pytest.raises(ServerFailed, match="giving up"):
                await server.wait_ready(1.0)
        finally:
            await server.close()

    run(body)


def test_hung_server_is_restarted(tmp_path: Path) -> None:
    config = fake_config(tmp_path, hang_after_ready=True)
    config.max_restarts = 10

    async def body() -> None:
        server = LlamaServer(config)
        try:
            await server.start()
            first = server.pid
            for _ in range(400):
                if server.restarts >= 1 and server.ready:
                    break
                await asyncio.sleep(0.05)
            assert server.restarts >= 1 and server.pid != first
            assert first is not None and not psutil.pid_exists(first)
        finally:
            await server.close()

    run(body)


@pytest.mark.llama
def test_real_server_start_restart_close(llama_binary: ServerBinary, tiny_model: Path) -> None:
    config = ServerConfig(
        binary=llama_binary, model=tiny_model, parallel=2, health_interval=0.1, backoff_initial=0.01
    )

    async def body() -> None:
        server = LlamaServer(config)
        try:
            await server.start()
            stats = server.stats()
            assert stats["llama_state"] == "ready" and stats["llama_rss"] > 0
            assert "llama_cpu_percent" in stats
            first = server.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            for _ in range(400):
                if server.ready and server.pid != first:
                    break
                await asyncio.sleep(0.05)
            assert server.restarts == 1 and server.ready
            pid = server.pid
        finally:
            await server.close()
        assert pid is not None and not psutil.pid_exists(pid)
        assert server.state is ServerState.CLOSED

    run(body)


@pytest.mark.llama
def test_real_server_rejects_a_corrupt_model(llama_binary: ServerBinary, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"not a gguf file at all")
    config = ServerConfig(binary=llama_binary, model=bad)

    async def body() -> None:
        server = LlamaServer(config)
        with pytest.raises(ServerFailed, match="failed to load model") as info:
            await server.start()
        assert "while loading" in str(info.value)  # seen exiting, not a load_timeout
        await server.close()

    run(body)


@pytest.mark.parametrize("flag", ["--host", "--api-key", "--port=1"])
def test_extra_args_cannot_override_managed_flags(tmp_path: Path, flag: str) -> None:
    binary = ServerBinary(fake_binary(tmp_path), "option")
    options = {"model_path": "m.gguf", "extra_args": [flag, "x"]}
    with pytest.raises(ValueError, match="manages them"):
        ServerConfig.from_options(binary, options, 1)
    ok = ServerConfig.from_options(binary, {"model_path": "m.gguf", "extra_args": ["-t", "2"]}, 3)
    assert ok.parallel == 3 and ok.extra_args == ["-t", "2"]
