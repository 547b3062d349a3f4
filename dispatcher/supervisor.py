"""Starts the local workers the config names and keeps them running.

Each worker runs in its own process group, which is what the supervisor signals; children a
worker starts in sessions of their own (llama-server) die with it through PDEATHSIG on Linux.
Restarts back off exponentially; a worker that keeps dying within `flap_window` is given up on
(flapping guard) instead of burning CPU forever, and so is one that exits with CONFIG_ERROR.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import psutil
import structlog

from protocol.constants import SPEC_ENV
from workers.procutil import CONFIG_ERROR, RestartBudget, die_with_parent_preexec, signal_group
from workers.spec import ProviderSpec

log = structlog.get_logger("llmrelay.supervisor")


CONFIG = "config_error"  # why a child is given up on: it exited with CONFIG_ERROR
FLAPPING = "flapping"  # or it kept dying


@dataclass(slots=True)
class RestartState:
    """One supervised child's restarts: the rule both of the broker's supervisors follow when
    a child exits (the workers here, the gateway in dispatcher/gateway_process.py)."""

    budget: RestartBudget
    max_failures: int | None = None  # this many exits without `healthy()` also mean flapping
    failures: int = 0  # exits since the child last proved healthy
    next_start: float = 0.0
    delay: float = 0.0  # the backoff before the pending restart (0 once healthy)
    gave_up: bool = False

    def exited(self, code: int, now: float) -> str | None:
        """Count one exit and schedule the restart; or why the child is given up on."""
        if code == CONFIG_ERROR:  # restarting would only repeat it
            self.gave_up = True
            return CONFIG
        self.failures += 1
        # Fast loops trip the window; slow ones (a server that fails after a long load) trip
        # the count of exits without ever becoming healthy in between.
        if self.budget.flapping(now) or (
            self.max_failures is not None and self.failures > self.max_failures
        ):
            self.gave_up = True
            return FLAPPING
        self.delay = self.budget.delay(self.failures)
        self.next_start = now + self.delay
        return None

    def start_due(self, now: float) -> bool:
        """True, and the restart counted, when the child (not running) should start now."""
        if self.gave_up or now < self.next_start:
            return False
        self.budget.record(now)
        return True

    def healthy(self) -> None:
        self.failures = 0
        self.delay = 0.0


@dataclass(slots=True)
class Managed:
    spec: ProviderSpec
    replica: int
    restarts: RestartState  # its failures: exits since the worker last registered
    proc: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        return f"{self.spec.name}#{self.replica}"


class Supervisor:
    def __init__(
        self,
        specs: list[ProviderSpec],
        endpoint: str,
        *,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        flap_restarts: int = 5,
        flap_window: float = 60.0,
        heartbeat_interval: float = 1.0,
        private_env: frozenset[str] = frozenset(),
        child_env: dict[str, str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.private_env = private_env  # e.g. the broker's CURVE secret: workers never see it
        self.child_env = dict(child_env or {})  # added for every worker (e.g. its CURVE keys)
        self.flap_restarts = flap_restarts
        self.flap_window = flap_window
        self.heartbeat_interval = heartbeat_interval
        self.managed = [
            Managed(
                spec,
                replica,
                RestartState(
                    RestartBudget(backoff, backoff_max, flap_restarts, flap_window),
                    max_failures=2 * flap_restarts,
                ),
            )
            for spec in specs
            if spec.spawn
            for replica in range(spec.replicas)
        ]

    def _start(self, item: Managed) -> None:
        env = {k: v for k, v in os.environ.items() if k not in self.private_env}
        env.update(self.child_env)
        env[SPEC_ENV] = json.dumps(asdict(item.spec))
        argv = [
            sys.executable,
            "-m",
            "dispatcher.cli",
            "worker",
            "--provider",
            item.spec.name,
            "--connect",
            self.endpoint,
            "--heartbeat-interval",
            str(self.heartbeat_interval),
        ]
        item.proc = subprocess.Popen(
            argv, env=env, start_new_session=True, preexec_fn=die_with_parent_preexec()
        )
        log.info("worker_started", worker=item.label, provider=item.spec.name, pid=item.proc.pid)

    def start_all(self) -> None:
        for item in self.managed:
            self._start(item)

    def poll(self, now: float) -> list[int]:
        """Called from the broker loop: notice exits, restart with backoff, guard flapping.

        Returns the pids that exited, so the broker can re-dispatch their jobs at once
        instead of waiting for the heartbeat timeout.
        """
        exited: list[int] = []
        for item in self.managed:
            restarts = item.restarts
            if restarts.gave_up:
                continue
            if item.proc is not None:
                code = item.proc.poll()
                if code is None:
                    continue
                signal_group(item.proc.pid, signal.SIGKILL)  # its own group goes with it
                log.warning("worker_exited", worker=item.label, pid=item.proc.pid, returncode=code)
                exited.append(item.proc.pid)
                item.proc = None
                why = restarts.exited(code, now)
                if why == CONFIG:
                    log.error("worker_config_error", worker=item.label, returncode=code)
                    continue
                if why == FLAPPING:
                    log.error(
                        "worker_flapping",
                        worker=item.label,
                        restarts=restarts.budget.recent(now),
                        window=self.flap_window,
                    )
                    continue
            if restarts.start_due(now):
                self._start(item)
                log.info("worker_restarted", worker=item.label, backoff=restarts.delay)
        return exited

    def mark_healthy(self, pid: int) -> None:
        """A worker that registered is no longer in a crash loop: reset its backoff."""
        for item in self.managed:
            if item.proc is not None and item.proc.pid == pid:
                item.restarts.healthy()

    def kill(self, pid: int) -> bool:
        """Kill a hung managed worker (and its group); poll() then restarts it."""
        for item in self.managed:
            if item.proc is not None and item.proc.pid == pid:
                signal_group(pid, signal.SIGKILL)
                return True
        return False

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {
                "worker": item.label,
                "pid": item.proc.pid if item.proc else None,
                "restarts": len(item.restarts.budget.times),
                "gave_up": item.restarts.gave_up,
            }
            for item in self.managed
        ]

    def stop_all(self, grace: float = 5.0) -> None:
        procs = [item.proc for item in self.managed if item.proc is not None]
        for proc in procs:
            signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                psutil.Process(proc.pid).kill()
        for item in self.managed:
            item.proc = None
