"""Child-process plumbing shared by the broker's supervisor and the llama.cpp worker:
die-with-parent, process-group kill, free ports, exit-code conventions.

Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)` makes the kernel kill llama-server when the thread
that forked it dies, even if the worker itself was SIGKILLed and ran no cleanup. The death
signal is tied to the forking *thread*, so children must be launched from a thread that lives
as long as the worker (the worker's event loop thread, normally the main thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

PR_SET_PDEATHSIG = 1
CONFIG_ERROR = 2  # a worker's exit code meaning "restarting cannot help" (bad config)

# Resolved in the parent: loading a library after fork() in a threaded process can deadlock.
_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _prctl = None


def pdeathsig_supported() -> bool:
    return _prctl is not None


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A preexec_fn that arms PR_SET_PDEATHSIG in the child (None where unsupported)."""
    prctl = _prctl
    if prctl is None:
        return None
    parent = os.getpid()

    def _arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork() and prctl(): then nobody would signal us.
        if os.getppid() != parent:
            os._exit(1)

    return _arm


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the server may still lose the race; we retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to a whole process group; False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


def kill_group_sync(pgid: int, grace: float = 3.0) -> None:
    """SIGTERM the group, wait up to `grace`, then SIGKILL (for atexit and test cleanup)."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.02)
    signal_group(pgid, signal.SIGKILL)


@dataclass(slots=True)
class RestartBudget:
    """Restart with exponential backoff; give up when restarts come too often (flapping).

    One rule for both supervisors: the broker's (worker processes) and the llama.cpp
    worker's (llama-server). Times are the caller's clock readings.
    """

    backoff: float  # delay before the first restart of a run of failures
    backoff_max: float
    limit: int  # this many restarts within `window` seconds means flapping
    window: float
    times: deque[float] = field(default_factory=deque)  # recent restarts, oldest first

    def recent(self, now: float) -> int:
        """Restarts within the window (older ones are forgotten)."""
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        return len(self.times)

    def flapping(self, now: float) -> bool:
        return self.recent(now) >= self.limit

    def delay(self, failures: int) -> float:
        """Seconds to wait before restarting after the `failures`-th failure in a row."""
        step: float = self.backoff * 2.0 ** max(0, failures - 1)
        return min(step, self.backoff_max)

    def record(self, now: float) -> None:
        self.times.append(now)
