"""What a worker sends to the broker, in the order it is produced.

A message is sent at once when nothing is queued before it; only while a send waits for room
(the broker is slow) do messages queue for the sender task, and text of one job that queues
then is merged into one frame. So streaming stays token by token, and a job's token frames
always precede its done/failed message.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from protocol import messages as m
from protocol.job import Job
from protocol.peer import PeerLink


@dataclass(slots=True)
class RunningJob:
    """One attempt the worker runs, and where its token stream stands."""

    job: Job
    attempt: int
    task: asyncio.Task[None] | None = None
    buffer: list[str] = field(default_factory=list)  # text queued behind a blocked send
    seq: int = 0  # token frames sent so far
    started: float = field(default_factory=time.monotonic)
    # Set when the broker forgot us (WorkerRuntime._drop_all): the attempt is no longer ours
    # to report, so nothing of it (token, done, failed) is sent, even if its task ends later.
    dropped: bool = False


class Outgoing:
    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.queue: deque[tuple[str, Any]] = deque()  # ("msg", frames) or ("tokens", run)
        self.ready = asyncio.Event()

    def clear(self) -> None:
        self.queue.clear()

    def _send_now(self, frames: list[bytes]) -> bool:
        """Send at once if nothing is queued before it and the socket has room."""
        return not self.queue and self.link.try_send(frames)

    def post(self, msg: m.Message) -> None:
        frames = [msg.encode()]
        if not self._send_now(frames):
            self.queue.append(("msg", frames))
            self.ready.set()

    def push_text(self, run: RunningJob, text: str) -> None:
        if run.dropped:
            return
        if run.buffer:  # a frame of this job is queued behind a blocked send: merge into it
            run.buffer.append(text)
            return
        if self._send_now(self._token_frames(run, text)):
            run.seq += 1
            return
        self.queue.append(("tokens", run))
        self.ready.set()
        run.buffer.append(text)

    @staticmethod
    def _token_frames(run: RunningJob, text: str) -> list[bytes]:
        """The next token frame of `run` (the caller counts it in `run.seq` once it is sent)."""
        header = m.Tokens(job_id=run.job.id, attempt=run.attempt, seq=run.seq)
        return [header.encode(), text.encode("utf-8", "surrogatepass")]

    async def sender(self) -> None:
        """Sends what queued while the socket had no room, in order, merging text per job."""
        while True:
            if not self.queue:
                self.ready.clear()
                await self.ready.wait()
                continue
            kind, item = self.queue[0]
            if kind == "tokens":
                run: RunningJob = item
                if run.dropped:  # (the queue is cleared on registering; this is a guard)
                    self.queue.popleft()
                    continue
                frames = self._token_frames(run, "".join(run.buffer))
                run.seq += 1  # counted now: text arriving during the send goes in the next frame
                run.buffer.clear()
            else:
                frames = item
            await self.link.send(frames)
            # Popped only now so nothing is sent directly past a message still waiting here.
            if self.queue and self.queue[0][1] is item:
                self.queue.popleft()
