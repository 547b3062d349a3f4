"""Run the gateway: `serve` blocks (the `llmrelay gateway` command); `start_in_thread` is for
scripts and benchmarks that want a gateway inside their own process."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn

from gateway.app import Catalog, Gateway
from gateway.coalesce import StepHttpProtocol
from gateway.settings import GatewaySettings


def _server(gateway: Gateway, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        gateway.app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # request lines would carry nothing useful; keys are never logged
        lifespan="on",
        http=StepHttpProtocol,
        interface="asgi3",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=gateway.settings.idle_connection_timeout,
    )
    return uvicorn.Server(config)


def serve(settings: GatewaySettings, endpoint: str, catalog: Catalog | None = None) -> None:
    """Serve until SIGINT/SIGTERM."""
    gateway = Gateway(settings, endpoint, catalog)
    _server(gateway, settings.host, settings.port).run()


@dataclass(slots=True)
class RunningGateway:
    gateway: Gateway
    server: uvicorn.Server
    thread: threading.Thread
    url: str  # e.g. http://127.0.0.1:8080 (the SDKs' base_url is url + "/v1")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_in_thread(
    settings: GatewaySettings,
    endpoint: str,
    catalog: Catalog | None = None,
    timeout: float = 10.0,
) -> RunningGateway:
    """Start a gateway on a background thread; returns once it accepts connections."""
    gateway = Gateway(settings, endpoint, catalog)
    server = _server(gateway, settings.host, settings.port)
    thread = threading.Thread(target=server.run, name="llmrelay-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"gateway did not start on {settings.host}:{settings.port}")
        time.sleep(0.02)
    return RunningGateway(gateway, server, thread, f"http://{settings.host}:{settings.port}")
