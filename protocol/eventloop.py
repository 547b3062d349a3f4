"""The event loop llmrelay's own processes run on: uvloop when it is installed.

uvloop (libuv) runs the same asyncio code with less Python per wake-up, per callback and per
socket read, which is most of what a worker relaying tokens does. `LLMRELAY_EVENT_LOOP=asyncio`
picks the standard loop instead (to compare, or to rule uvloop out when debugging).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LOOP_ENV = "LLMRELAY_EVENT_LOOP"  # "uvloop" (the default when installed) or "asyncio"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if os.environ.get(LOOP_ENV, "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    return loop_factory()()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory()` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
