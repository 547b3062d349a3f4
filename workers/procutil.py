"""Child-process helpers shared by the broker's supervisor and the llama.cpp worker."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the child when the thread that spawned it exits.

    This is what keeps a `kill -9` of a worker (or the broker) from leaving orphans behind.
    Linux only; elsewhere the supervisor's own process-group kill has to do.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
