"""What the broker core wants sent: `(side, identity, frames)` entries the socket layer flushes.

The core never touches a socket; it appends here and the socket layer (dispatcher/broker.py)
sends each entry on the ROUTER socket of that side. Token frames are relayed as the frame
objects the worker sent (zero-copy), so frames are opaque to the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from protocol import messages as m

Side = Literal["client", "worker"]
CLIENT: Side = "client"
WORKER: Side = "worker"
Outgoing = tuple[Side, bytes, Sequence[object]]


class Outbox:
    def __init__(self) -> None:
        self.items: list[Outgoing] = []

    def to_client(self, identity: bytes, msg: m.Message) -> None:
        self.items.append((CLIENT, identity, (msg.encode(),)))

    def to_worker(self, identity: bytes, msg: m.Message) -> None:
        self.items.append((WORKER, identity, (msg.encode(),)))

    def frames_to_client(self, identity: bytes, frames: Sequence[object]) -> None:
        """Already-encoded frames: a relayed token, or a finished job's cached outcome."""
        self.items.append((CLIENT, identity, frames))

    def take(self) -> list[Outgoing]:
        items, self.items = self.items, []
        return items
