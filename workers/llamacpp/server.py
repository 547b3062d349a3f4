"""A supervised llama-server: launch, wait for /health, probe, restart with backoff, stop.

The prompt never touches the command line (it travels in HTTP bodies) and the API key travels
in the child's environment (LLAMA_API_KEY), so neither appears in any process's argv. The child
runs in its own process group so that stopping it also stops anything it spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import time
from collections import deque
from typing import Any

import aiohttp
import psutil
import structlog

from workers.llamacpp.server_config import (
    NO_REPACK,
    REPACK_FLAGS,
    ServerConfig,
    ServerFailed,
    ServerState,
)
from workers.procutil import RestartBudget, die_with_parent_preexec, free_port, signal_group

__all__ = ["LlamaServer", "ServerConfig", "ServerFailed", "ServerState"]

log = structlog.get_logger("llmrelay.llamacpp")

HOST = "127.0.0.1"
API_KEY_ENV = "LLAMA_API_KEY"  # llama-server reads --api-key from this variable
_LEVEL = re.compile(r"^\s*[\d.]+\s+([DIWE])\s")  # "0.00.025.183 E srv ..."
_BAD = re.compile(r"error|failed|cannot|abort|exception|terminate", re.IGNORECASE)
_BIND = re.compile(r"bind|address already in use", re.IGNORECASE)


class LlamaServer:
    """One llama-server child and its supervisor task. Use from a single event loop."""

    def __init__(self, config: ServerConfig, *, name: str = "llamacpp") -> None:
        self.config = config
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self.state = ServerState.STOPPED
        self.error: str | None = None  # why we are FAILED
        self.restarts = 0
        self.generation = 0  # bumped on every launch; a job can tell the server changed
        self.no_repack = False  # set after the server died of a signal loading repacked weights
        self.proc: asyncio.subprocess.Process | None = None
        self.output: deque[str] = deque(maxlen=40)  # recent lines, for error messages
        self._ps: psutil.Process | None = None
        self._budget = RestartBudget(
            config.backoff_initial, config.backoff_max, config.max_restarts, config.restart_window
        )
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._probe: aiohttp.ClientSession | None = None
        self.log = log.bind(provider=name)

    # --- public ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def argv(self) -> list[str]:
        c = self.config
        args = [str(c.binary.path), "-m", str(c.model), "--host", HOST, "--port", str(self.port)]
        args += ["--parallel", str(c.parallel)]
        if c.ctx_size is not None:
            args += ["--ctx-size", str(c.ctx_size)]
        if c.n_gpu_layers is not None:
            args += ["--n-gpu-layers", str(c.n_gpu_layers)]
        args += list(c.extra_args)
        return [*args, NO_REPACK] if self.no_repack else args

    async def start(self) -> None:
        """Launch and wait until ready; ServerFailed if the model cannot be served."""
        self._probe = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.health_timeout)
        )
        self.state = ServerState.STARTING
        try:
            self._check_model()
            await self._launch_until_ready()
        except BaseException as exc:
            await self._kill()
            self.state = ServerState.FAILED
            self.error = str(exc)
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="llama-supervisor")

    async def wait_ready(self, timeout: float) -> None:
        """Return once the server is ready; ServerFailed if it gave up or did not recover."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.state in (ServerState.FAILED, ServerState.CLOSED):
                raise ServerFailed(self.error or f"llama-server is {self.state.value}")
            if self.ready:
                if self.alive():
                    return
                # Died a moment ago and the supervisor has not reaped it yet: wait for it.
                self._ready.clear()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._ready.wait(), remaining)
            except TimeoutError:
                raise ServerFailed(
                    f"llama-server not ready after {timeout:g}s ({self.state.value})",
                    permanent=False,
                ) from None
            if self._ready.is_set() and self.ready and not self.alive():
                await asyncio.sleep(0.01)  # still the dead one: let the supervisor run

    def alive(self) -> bool:
        """The current child is running (not exited, not a zombie awaiting reaping)."""
        proc, ps = self.proc, self._ps
        if proc is None or proc.returncode is not None:
            return False
        try:
            return ps is None or ps.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    @property
    def ready(self) -> bool:
        return self.state is ServerState.READY

    async def close(self) -> None:
        self.state = ServerState.CLOSED
        self._ready.set()  # wake waiters so they see CLOSED
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._kill()
        if self._probe is not None:
            await self._probe.close()
        self.log.info("llama_server_closed", restarts=self.restarts)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "llama_state": self.state.value,
            "llama_restarts": self.restarts,
            "llama_pid": self.pid,
        }
        ps = self._ps
        if ps is not None:
            try:
                with ps.oneshot():
                    out["llama_rss"] = ps.memory_info().rss
                    out["llama_cpu_percent"] = ps.cpu_percent()
                    out["llama_threads"] = ps.num_threads()
            except psutil.Error:
                pass
        return out

    # --- launching ------------------------------------------------------------------------

    def _check_model(self) -> None:
        model = self.config.model
        if not model.is_file():
            raise ServerFailed(
                f"model file {str(model)!r} does not exist or is not a file", missing_model=True
            )
        if not os.access(model, os.R_OK):
            raise ServerFailed(f"model file {str(model)!r} is not readable", missing_model=True)

    async def _launch_until_ready(self) -> None:
        for _ in range(3):  # a lost race for the port is retried with a fresh one
            # Keep the port across restarts so clients' base URL stays valid.
            self.port = self.port or free_port(HOST)
            try:
                await self._launch()
                await self._await_ready()
                return
            except ServerFailed as exc:
                await self._kill()
                if self._retry_without_repack(exc):
                    continue
                if not any(_BIND.search(line) for line in exc.output):
                    raise
                self.log.warning("llama_server_port_taken", port=self.port)
                self.port = 0
        raise ServerFailed("llama-server could not bind a port", output=list(self.output))

    def _retry_without_repack(self, exc: ServerFailed) -> bool:
        """Died of a signal while loading, with repacking on by default: try once without."""
        chosen = {a.split("=", 1)[0] for a in self.config.extra_args} & REPACK_FLAGS
        if exc.killed_by is None or self.no_repack or chosen:
            return False
        self.no_repack = True
        self.log.warning(
            "llama_server_repack_crashed",
            signal=exc.killed_by,
            action=f"starting again with {NO_REPACK}; pass --repack in extra_args to insist",
        )
        return True

    async def _launch(self) -> None:
        argv = self.argv()
        env = self.config.binary.child_env()
        env[API_KEY_ENV] = self.api_key
        self.output.clear()
        self.generation += 1
        started = time.monotonic()
        # create_subprocess_exec forks on this (the loop's) thread: PDEATHSIG follows it.
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent_preexec(),
        )
        self._ps = None
        with contextlib.suppress(psutil.Error):
            self._ps = psutil.Process(self.proc.pid)
            self._ps.cpu_percent()  # prime: the next call reports usage since now
        # argv holds no secret (the key is in env); logged in full for reproducibility.
        self.log.info(
            "llama_server_starting",
            pid=self.proc.pid,
            argv=argv,
            generation=self.generation,
            launch_ms=round((time.monotonic() - started) * 1000, 1),
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._pump(self.proc.stdout, "stdout")),
            asyncio.create_task(self._pump(self.proc.stderr, "stderr")),
        ]

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        """Relay output line by line: errors at warning, chatter at debug; never the key."""
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the reader's limit: skip the rest
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            line = line.replace(self.api_key, "[REDACTED]")
            self.output.append(line)
            m = _LEVEL.match(line)
            level = m.group(1) if m else ("E" if _BAD.search(line) else "D")
            if level == "E":
                self.log.warning("llama_server_output", stream=name, line=line)
            elif level == "W":
                self.log.info("llama_server_output", stream=name, line=line)
            else:
                self.log.debug("llama_server_output", stream=name, line=line)

    async def _await_ready(self) -> None:
        """Poll /health: 503 means still loading; exiting while loading is a hard error."""
        assert self.proc is not None and self._probe is not None
        proc = self.proc
        started = time.monotonic()
        deadline = started + self.config.load_timeout
        delay = 0.02
        while True:
            if proc.returncode is not None:
                await self._drain_output()
                raise ServerFailed(
                    f"llama-server exited with code {proc.returncode} while loading "
                    f"{str(self.config.model)!r}",
                    output=list(self.output),
                    killed_by=-proc.returncode if proc.returncode < 0 else None,
                )
            status = await self._health()
            if status == 200:
                self.state = ServerState.READY
                self._ready.set()
                self.log.info(
                    "llama_server_ready",
                    pid=proc.pid,
                    port=self.port,
                    load_seconds=round(time.monotonic() - started, 3),
                )
                return
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"llama-server still not healthy after load_timeout="
                    f"{self.config.load_timeout:g}s (last /health: {status})",
                    output=list(self.output),
                    permanent=False,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), delay)
            delay = min(delay * 2, 0.25)

    async def _health(self) -> int | None:
        """/health status code, or None when nothing answered in time."""
        assert self._probe is not None
        try:
            async with self._probe.get(f"{self.base_url}/health") as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _drain_output(self) -> None:
        """Let the readers catch the dying process's last lines for the error message."""
        if self._readers:
            await asyncio.wait(self._readers, timeout=1.0)

    async def _kill(self) -> None:
        """SIGTERM the process group, wait, then SIGKILL; reap the child."""
        proc, self.proc = self.proc, None
        self._ps = None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the child leads its own group
        if proc.returncode is None and signal_group(pgid, signal.SIGTERM):
            try:
                await asyncio.wait_for(proc.wait(), self.config.stop_timeout)
            except TimeoutError:
                self.log.warning("llama_server_sigkill", pid=pgid)
        signal_group(pgid, signal.SIGKILL)  # stragglers in the group, if any
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
        await self._drain_output()
        for task in self._readers:
            task.cancel()
        self._readers = []

    # --- supervision ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Probe while running; restart on exit or hang; give up when flapping."""
        failures = 0
        while self.state is not ServerState.CLOSED:
            proc = self.proc
            assert proc is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self.config.health_interval)
            if proc.returncode is not None:
                reason = f"exited with code {proc.returncode}"
            else:
                status = await self._health()
                if status == 200:
                    failures = 0
                    continue
                failures += 1
                self.log.warning("llama_server_unhealthy", status=status, failures=failures)
                if failures < self.config.health_failures:
                    continue
                reason = f"unhealthy ({failures} failed probes, last status {status})"
            failures = 0
            if not await self._restart(reason):
                return

    async def _restart(self, reason: str) -> bool:
        self._ready.clear()
        self.state = ServerState.RESTARTING
        await self._drain_output()
        self.log.warning("llama_server_exited", reason=reason, last_output=list(self.output)[-5:])
        await self._kill()
        budget = self._budget
        while True:
            now = time.monotonic()
            if budget.flapping(now):
                return self._give_up(
                    f"llama-server restarted {budget.recent(now)} times within "
                    f"{budget.window:g}s; giving up (last: {reason})"
                )
            budget.record(now)
            self.restarts += 1
            delay = budget.delay(budget.recent(now))
            self.log.warning("llama_server_restarting", delay=delay, restarts=self.restarts)
            await asyncio.sleep(delay)
            try:
                self._check_model()
                await self._launch_until_ready()
                return True
            except ServerFailed as exc:
                await self._kill()
                if exc.permanent:
                    return self._give_up(str(exc))
                reason = str(exc)

    def _give_up(self, message: str) -> bool:
        self.state = ServerState.FAILED
        self.error = message
        self._ready.set()  # wake waiters so they fail fast
        self.log.error("llama_server_gave_up", error=message)
        return False
