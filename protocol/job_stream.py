"""One job as the client sees it: the current attempt's frames put back in seq order.

`AsyncClient` keeps one `JobStream` per unfinished job. It turns the broker's token frames,
resets and final answer into the caller's events (protocol/results.py): each frame of the
current attempt once and in order, and a `Reset` first when a new attempt voids text the
caller already holds. A caller that wants only the outcome (`AsyncClient.result`) asks for no
per-token events: the text is still put in order and counted, but the caller's task wakes once
per job instead of once per frame.

Events wait in a plain list the caller takes whole (`take`), with one future for a caller that
finds it empty: an `asyncio.Queue` cost a put, a get and their bookkeeping per event, and its
getter woke for each.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from protocol.errors import ProviderError
from protocol.job import Job
from protocol.results import Event, Reset, Token


@dataclass(slots=True)
class JobStream:
    job: Job
    ready: list[Event | ProviderError] = field(default_factory=list)  # not yet taken
    attempt: int = 0  # the attempt whose frames are being delivered
    next_seq: int = 0
    held: dict[int, str] = field(default_factory=dict)  # out-of-order frames waiting for a gap
    parts: list[str] = field(default_factory=list)
    resets: int = 0
    finished: bool = False
    accepted_by: str | None = None  # instance id of the broker run that accepted it
    answering: bool = False  # the caller wants an Origin event before each attempt's text
    tokens: bool = True  # Token and Reset events; False: only the final one (Done or error)
    _waiter: asyncio.Future[None] | None = None  # what take() awaits while nothing is ready

    def put(self, item: Event | ProviderError) -> None:
        self.ready.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Event | ProviderError]:
        """Every event ready now, in order; waits for one when there is none."""
        while not self.ready:
            waiter = self._waiter
            if waiter is None or waiter.done():  # shared by every caller waiting now
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(waiter)  # one caller cancelled leaves the others waiting
        items, self.ready = self.ready, []
        return items

    def start_attempt(self, attempt: int, reason: str) -> None:
        if self.parts:
            self.resets += 1
            if self.tokens:
                self.put(Reset(reason=reason, attempt=attempt))
        self.attempt, self.next_seq = attempt, 0
        self.held.clear()
        self.parts.clear()

    def deliver(self, seq: int, text: str) -> None:
        if seq < self.next_seq or seq in self.held:
            return  # duplicate
        self.held[seq] = text
        while self.next_seq in self.held:
            piece = self.held.pop(self.next_seq)
            self.next_seq += 1
            self.parts.append(piece)
            if self.tokens:
                self.put(Token(piece))

    def end(self, item: Event | ProviderError) -> None:
        self.finished = True
        self.put(item)
