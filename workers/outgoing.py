"""What a worker sends to the broker, in the order it is produced.

Text of a job is sent at the end of the event-loop turn that produced it, so the tokens of one
HTTP read (a provider's burst, which httpcore hands over without a pause) go out as one frame,
and text never waits for anything that has not already arrived. The exception is an attempt's
first text when no other text is pending in the turn: it is sent at once (time to first token).
A message is sent at once when nothing is queued before it; only while a send waits for room
(the broker is slow) do messages queue for the sender task, and text of one job that queues
then is merged into one frame too.
A job's token frames always precede its done/failed message.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Sized
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
    turn: list[str] = field(default_factory=list)  # text of this event-loop turn, not yet sent
    seq: int = 0  # token frames sent so far
    started: float = field(default_factory=time.monotonic)
    # Set when the broker forgot us (WorkerRuntime._drop_all): the attempt is no longer ours
    # to report, so nothing of it (token, done, failed) is sent, even if its task ends later.
    dropped: bool = False


class Outgoing:
    def __init__(self, link: PeerLink, running: Sized = ()) -> None:
        self.link = link
        self.running = running  # the worker's attempts in flight (see push_text)
        self.queue: deque[tuple[str, Any]] = deque()  # ("msg", frames) or ("tokens", run)
        self.ready = asyncio.Event()
        self.turn: list[RunningJob] = []  # jobs with text from this loop turn (see push_text)

    def clear(self) -> None:
        self.queue.clear()
        for run in self.turn:
            run.turn.clear()
        self.turn.clear()

    def _send_now(self, frames: list[bytes]) -> bool:
        """Send at once if nothing is queued before it and the socket has room."""
        return not self.queue and self.link.try_send(frames)

    def post(self, msg: m.Message) -> None:
        self.end_turn()  # text produced before this message goes before it
        frames = [msg.encode()]
        if not self._send_now(frames):
            self.queue.append(("msg", frames))
            self.ready.set()

    def push_text(self, run: RunningJob, text: str) -> None:
        """Send `text` at the end of this loop turn, merged with the job's other text of it.

        One call_soon per turn, not per token: a backend that yields several deltas without
        awaiting anything (all parsed from one read) fills one frame; one that awaits between
        deltas (a real pause, or the mock) gets a frame per delta, as before.
        """
        if run.dropped:
            return
        if run.seq == 0 and not self.turn and not run.buffer:
            # An attempt's first text, first of its loop turn, goes out at once: the rest of
            # the read it came in (often a whole short answer) is parsed after it, not before
            # the first token (-0.45 ms TTFT at concurrency 1). Under load other jobs' text
            # is already pending in the turn, so no extra frame is spent there.
            self._send_text(run, text)
            if len(self.running) <= 1:
                # ZeroMQ writes the frame from its I/O thread. Where that thread shares a core
                # with this one (client, broker and worker on one core of two here), the
                # scheduler lets this thread parse the rest of the read first: the frame left
                # 0.81 ms after this call at concurrency 1, 0.19 ms with this yield. Only for a
                # lone attempt: under load the yield hands the core to other processes in the
                # middle of other jobs' work (-9% jobs/s at 64 in one A/B of two).
                os.sched_yield()
            return
        if not self.turn:
            asyncio.get_running_loop().call_soon(self.end_turn)
        if not run.turn:
            self.turn.append(run)
        run.turn.append(text)

    def end_turn(self) -> None:
        """Send (or queue) the text of this loop turn; callers about to count frames call it."""
        turn, self.turn = self.turn, []
        for run in turn:
            text = "".join(run.turn)
            run.turn.clear()
            self._send_text(run, text)

    def _send_text(self, run: RunningJob, text: str) -> None:
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
