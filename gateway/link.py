"""The gateway's connections to the broker: one AsyncClient per client name, a status cache.

Each API key maps to a client name, and the broker queues fairly by that name, so each name
gets its own `AsyncClient` (its own DEALER socket and heartbeats).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from protocol.client import AsyncClient
from protocol.errors import ProviderError

ANONYMOUS = "gateway"  # the client name of requests when no keys are configured


class BrokerLink:
    def __init__(self, endpoint: str, status_cache: float = 1.0) -> None:
        self.endpoint = endpoint
        self.status_cache = status_cache
        self.clients: dict[str, AsyncClient] = {}
        self._status: dict[str, Any] | None = None
        self._status_at = 0.0
        self._status_lock: asyncio.Lock | None = None

    def client(self, name: str = ANONYMOUS) -> AsyncClient:
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = AsyncClient(self.endpoint, name=name)
        return client

    async def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The broker's status reply, at most `status_cache` seconds old; None if unreachable."""
        if self._status_lock is None:
            self._status_lock = asyncio.Lock()
        async with self._status_lock:
            if self._status is not None and time.monotonic() - self._status_at < self.status_cache:
                return self._status
            try:
                self._status = await self.client().status(timeout=timeout)
            except ProviderError:
                self._status = None
            self._status_at = time.monotonic()
            return self._status

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        self.clients.clear()
