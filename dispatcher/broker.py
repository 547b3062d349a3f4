"""The broker process: sockets, the poll loop, decoding, sending, signals and shutdown.

One process, one thread, a non-blocking ZeroMQ poll loop. Clients talk to one ROUTER socket,
workers to another. What arrives is decoded here and handed to the core
(dispatcher/core.py), which answers through its outbox; this layer flushes the outbox once
per loop turn (and every FLUSH_EVERY messages of a burst), workers' messages first. Token
frames are relayed as the raw frames the worker sent (only the small header is decoded, never
the text). Nothing is logged per token.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import psutil
import zmq

from dispatcher import status
from dispatcher.auth import start_authenticator
from dispatcher.config import Config
from dispatcher.core import BrokerCore
from dispatcher.gateway_process import GatewayProcess
from dispatcher.outbox import CLIENT, WORKER, Outgoing, Side
from dispatcher.supervisor import Supervisor
from protocol import messages as m
from protocol.errors import ProtocolViolation
from protocol.io_threads import IO_THREADS
from protocol.transport import apply_server_curve, recv_parts, send_parts, tune_socket
from workers.procutil import RestartBudget

MAX_BATCH = 2000  # messages handled per socket per loop turn, so neither side starves
# What the handled messages queued is sent after this many of them (and at the end of the
# loop turn, after dispatching): a burst of sends lets libzmq's I/O thread take many messages
# per wake-up instead of being signalled for each, and the first reply waits at most
# ~FLUSH_EVERY handlings.
FLUSH_EVERY = 32
# How often the loop asks the supervisor whether a worker process died (a non-blocking
# waitpid per child). The core stops dispatching to a dead worker from then on, instead of
# after its heartbeat timeout: a kill -9 storm would otherwise feed jobs to dead workers.
EXIT_CHECK = 0.02


def _clients_last(item: Outgoing) -> bool:
    return item[0] == CLIENT


class Broker:
    def __init__(self, config: Config, *, spawn: bool = True) -> None:
        self.config = config
        bc = self.bc = config.broker
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.opts = bc.socket_options()
        self.authenticator, worker_env = start_authenticator(
            self.ctx, self.opts, bc.curve_allowed_clients
        )
        self.clients = self._router(bc.client_endpoint)
        self.workers_sock = self._router(bc.worker_endpoint)
        self.client_endpoint = self.clients.getsockopt_string(zmq.LAST_ENDPOINT)
        self.worker_endpoint = self.workers_sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sockets: dict[Side, zmq.Socket[bytes]] = {
            CLIENT: self.clients,
            WORKER: self.workers_sock,
        }
        self.supervisor = Supervisor(
            [s for s in config.providers.values() if spawn and s.spawn],
            bc.worker_connect or self.worker_endpoint.replace("0.0.0.0", "127.0.0.1"),
            backoff=bc.restart_backoff,
            backoff_max=bc.restart_backoff_max,
            flap_restarts=bc.flap_restarts,
            flap_window=bc.flap_window,
            heartbeat_interval=bc.heartbeat_interval,
            private_env=frozenset(filter(None, [bc.curve_secret_key_env])),
            child_env=worker_env,
        )
        self.gateway = self._gateway(config, spawn)
        now = time.monotonic()
        self.core = BrokerCore(
            config,
            self.supervisor,
            now,
            endpoints={
                "client_endpoint": self.client_endpoint,
                "worker_endpoint": self.worker_endpoint,
            },
        )
        self.core.status_extra = self._io_status
        self.log = self.core.log
        self.stop_event = threading.Event()
        self.next_stats = now + bc.stats_interval
        self.process = psutil.Process()

    def _router(self, endpoint: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        tune_socket(sock, self.opts)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        apply_server_curve(sock, self.opts)
        sock.bind(endpoint)
        return sock

    # --- sending ------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send what the core queued. A peer that is gone or too slow loses the message.

        A worker the ROUTER has no connection for (EHOSTUNREACH: its TCP connection closed,
        because the process died or a ZMTP heartbeat timed out) is reported to the core,
        which declares it lost now rather than after the heartbeat timeout.
        """
        while True:
            gone: list[bytes] = []
            # Workers' messages first (a stable sort: each peer is on one side, so its messages
            # keep their order): a dispatch is not held behind the client replies of the same
            # turn, whose sends wake the client, on a shared core perhaps before it leaves.
            for side, identity, frames in sorted(self.core.outbox.take(), key=_clients_last):
                parts: list[Any] = [identity, *frames]  # bytes, or zmq.Frame as received
                try:
                    send_parts(self.sockets[side], parts)
                except zmq.Again:
                    pass
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    if side == WORKER:
                        gone.append(identity)
            if not gone:
                return
            # Their jobs are re-dispatched (new sends); a worker already forgotten adds none.
            self.core.workers_unreachable(gone, time.monotonic())

    # --- receiving ----------------------------------------------------------------------

    def _on_message(self, side: Side, frames: list[zmq.Frame], now: float) -> None:
        identity = frames[0].bytes
        try:
            if len(frames) < 2:
                raise ProtocolViolation("empty message")
            # The header is decoded in place: a huge garbage frame is measured and parsed
            # from ZeroMQ's own buffer, never copied into a bytes object first.
            msg = m.decode(frames[1].buffer)
        except ProtocolViolation as exc:
            self.core.bad_message(side, identity, str(exc), now)
            return
        if side == WORKER:
            self.core.worker_message(identity, msg, frames[1:], now)
        else:
            self.core.client_message(identity, msg, now)

    def _drain(self, side: Side) -> None:
        """Handle what is queued on `side`; the loop flushes the rest after dispatching."""
        sock = self.sockets[side]
        for n in range(1, MAX_BATCH + 1):
            try:
                frames = recv_parts(sock)
            except zmq.Again:
                return
            try:
                self._on_message(side, frames, time.monotonic())
            except Exception:  # one bad message must never take the broker down
                self.log.exception("message_handler_failed")
            if not n % FLUSH_EVERY:
                self._flush()

    # --- periodic work ------------------------------------------------------------------

    def _gateway(self, config: Config, spawn: bool) -> GatewayProcess | None:
        """The supervised HTTP gateway, when [http] asks for one and the config is a file."""
        if not (spawn and config.http is not None and config.http.spawn and config.path):
            return None
        bc = config.broker
        budget = RestartBudget(
            bc.restart_backoff, bc.restart_backoff_max, bc.flap_restarts, bc.flap_window
        )
        return GatewayProcess(config.path, self.client_endpoint, budget)

    def _tick(self, now: float) -> None:
        if now >= self.next_stats:
            self.next_stats = now + self.bc.stats_interval
            status.log_stats(self.core, self.process)
        self.core.tick(now)
        self._reap(now)
        if self.gateway is not None:
            self.gateway.poll(now)
        self._flush()

    def _reap(self, now: float) -> None:
        """Tell the core at once about worker processes that exited (and restart them)."""
        exited = self.supervisor.poll(now)
        if exited:
            self.core.processes_exited(exited, now)
            self._flush()

    def status(self) -> dict[str, Any]:
        return status.build(self.core, time.monotonic())

    @staticmethod
    def _io_status() -> dict[str, Any]:
        return {"io_threads": {"batch": IO_THREADS.batch, "switches": IO_THREADS.switches}}

    # --- main loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.log.info(
            "broker_started",
            client_endpoint=self.client_endpoint,
            worker_endpoint=self.worker_endpoint,
            providers=sorted(self.config.providers),
        )
        self.supervisor.start_all()
        if self.gateway is not None:
            self.gateway.start()
        self.core.catalog.start()  # live discovery, on its own thread
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.workers_sock, zmq.POLLIN)
        tick_every = self.bc.heartbeat_interval / 2
        next_tick = next_exit_check = time.monotonic()
        # With local workers to watch, wake often enough to notice an exit within ~EXIT_CHECK.
        max_wait = 50 if self.supervisor.managed else 200
        core = self.core
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                wait = min(next_tick, core.wake_at) - now
                events = dict(poller.poll(max(0, min(int(wait * 1000) + 1, max_wait))))
                if self.workers_sock in events:
                    self._drain(WORKER)
                    self._flush()  # relays and results go before the clients' work is read
                if self.clients in events:
                    self._drain(CLIENT)
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + tick_every
                if now >= next_exit_check:
                    next_exit_check = now + EXIT_CHECK
                    self._reap(now)
                if core.needs_dispatch or now >= core.wake_at:
                    core.dispatch_pending(now)
                self._flush()  # one send burst per turn: replies, relays and dispatches
                IO_THREADS.report(self, len(core.jobs))
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.log.info("broker_stopping", jobs=len(self.core.jobs))
        if self.gateway is not None:
            self.gateway.stop()
        self.supervisor.stop_all()
        self.clients.close(linger=0)
        self.workers_sock.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.log.info("broker_stopped")

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
