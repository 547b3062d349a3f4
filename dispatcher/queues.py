"""Per-client queues served round-robin, priority first within a client.

One client's batch of 50,000 jobs cannot starve another client's interactive job: each
dispatch round visits every client with waiting work once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        # client -> priority -> jobs (FIFO); clients rotate in `order`
        self.queues: dict[bytes, dict[int, deque[T]]] = {}
        self.order: deque[bytes] = deque()
        self.sizes: dict[bytes, int] = {}
        self.total = 0

    def __len__(self) -> int:
        return self.total

    def size_of(self, client: bytes) -> int:
        return self.sizes.get(client, 0)

    def push(self, client: bytes, priority: int, item: T, *, front: bool = False) -> None:
        levels = self.queues.get(client)
        if levels is None:
            levels = self.queues[client] = {}
            self.order.append(client)
        queue = levels.setdefault(priority, deque())
        if front:
            queue.appendleft(item)
        else:
            queue.append(item)
        self.sizes[client] = self.sizes.get(client, 0) + 1
        self.total += 1

    def remove(self, client: bytes, priority: int, item: T) -> bool:
        queue = self.queues.get(client, {}).get(priority)
        if not queue:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        self._shrink(client, priority)
        return True

    def _shrink(self, client: bytes, priority: int) -> None:
        self.total -= 1
        self.sizes[client] -= 1
        levels = self.queues[client]
        if not levels[priority]:
            del levels[priority]
        if not levels:
            del self.queues[client]
            del self.sizes[client]
            self.order.remove(client)

    def rounds(self, take: Callable[[T], bool], lookahead: int = 16) -> Iterator[T]:
        """Yield and remove items `take` accepts, visiting clients round-robin.

        Within a client, up to `lookahead` waiting items are considered so a head job
        blocked on a busy provider does not hold back jobs for an idle one.
        """
        idle_rounds = 0
        while self.order and idle_rounds < len(self.order):
            client = self.order[0]
            self.order.rotate(-1)
            picked = self._pick(client, take, lookahead)
            if picked is None:
                idle_rounds += 1
                continue
            idle_rounds = 0
            yield picked

    def _pick(self, client: bytes, take: Callable[[T], bool], lookahead: int) -> T | None:
        seen = 0
        levels = self.queues[client]
        for priority in sorted(levels, reverse=True):
            queue = levels[priority]
            for index, item in enumerate(queue):
                if seen >= lookahead:
                    return None
                seen += 1
                if take(item):
                    del queue[index]
                    self._shrink(client, priority)
                    return item
        return None

    def items(self) -> Iterator[T]:
        for levels in self.queues.values():
            for queue in levels.values():
                yield from queue
