"""Job deadlines in a heap that stays as small as the set of live jobs.

Finished jobs are not searched out of the heap (that would cost O(n) per job); their entries
are skipped when they reach the top, and the heap is rebuilt without them once they are more
than half of it, so its size stays within twice the live jobs (plus a small floor) and the
rebuilds cost O(1) per job amortized. An entry also names the deadline it was pushed with, so a
stale entry never expires a later job that reuses the same id.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator

MIN_COMPACT = 1024  # below this many entries a rebuild is not worth its cost


class DeadlineHeap:
    def __init__(self, deadline_of: Callable[[str], float | None]) -> None:
        """`deadline_of(job_id)`: the live job's current deadline, None once it finished."""
        self.deadline_of = deadline_of
        self.entries: list[tuple[float, int, str]] = []
        self.counter = itertools.count()
        self.live = 0  # jobs pushed and not yet reported finished

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, deadline: float, job_id: str) -> None:
        heapq.heappush(self.entries, (deadline, next(self.counter), job_id))
        self.live += 1

    def finished(self) -> None:
        """A pushed job ended (any way): its entry, if still here, is now garbage."""
        self.live = max(0, self.live - 1)
        if len(self.entries) > max(MIN_COMPACT, 2 * self.live):
            self.compact()

    def compact(self) -> None:
        self.entries = [e for e in self.entries if self.deadline_of(e[2]) == e[0]]
        heapq.heapify(self.entries)
        self.live = len(self.entries)

    def expired(self, now: float) -> Iterator[str]:
        """Ids of live jobs whose deadline is at or before `now` (each popped once).

        The caller ends each one, and reports it through `finished` like any other end.
        """
        while self.entries and self.entries[0][0] <= now:
            deadline, _, job_id = heapq.heappop(self.entries)
            if self.deadline_of(job_id) == deadline:
                yield job_id
