"""The broker starts and supervises the HTTP gateway when the config has an `[http]` table.

The gateway is a separate process (a client of the broker, so the broker loop stays free of
HTTP): `llmrelay gateway --config <the broker's file> --broker <the bound client endpoint>`.
It restarts with the same backoff and flapping rule as the workers (`RestartBudget`); a
gateway that exits with CONFIG_ERROR (bad [http] table, empty key variable) is not retried.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import structlog

from dispatcher.supervisor import RestartState
from workers.procutil import RestartBudget, die_with_parent_preexec, signal_group

log = structlog.get_logger("llmrelay.gateway_process")


class GatewayProcess:
    def __init__(self, config_path: str, broker_endpoint: str, budget: RestartBudget) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "dispatcher.cli",
            "gateway",
            "--config",
            config_path,
            "--broker",
            broker_endpoint.replace("0.0.0.0", "127.0.0.1"),
        ]
        self.restarts = RestartState(budget)  # never healthy(): every exit counts
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, start_new_session=True, preexec_fn=die_with_parent_preexec()
        )
        log.info("gateway_process_started", pid=self.proc.pid)

    def poll(self, now: float) -> None:
        """From the broker's tick: notice an exit, restart after the backoff."""
        if self.restarts.gave_up:
            return
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return
            signal_group(self.proc.pid, signal.SIGKILL)
            log.warning("gateway_process_exited", pid=self.proc.pid, returncode=code)
            self.proc = None
            why = self.restarts.exited(code, now)
            if why is not None:
                log.error("gateway_process_given_up", returncode=code, reason=why)
                return
        if self.restarts.start_due(now):
            self.start()

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None:
            return
        signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=2)
        self.proc = None
