"""The event loop llmrelay's processes run on (protocol/eventloop.py) and its clean-up."""

from __future__ import annotations

import asyncio
import os

import pytest
import uvloop

from protocol import eventloop
from protocol.sync_client import Client


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_uvloop_by_default_and_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.LOOP_ENV, raising=False)
    assert eventloop.run(_loop_type()) is uvloop.Loop
    monkeypatch.setenv(eventloop.LOOP_ENV, "asyncio")
    assert eventloop.run(_loop_type()) is not uvloop.Loop


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_closed_clients_leave_no_file_descriptors_behind() -> None:
    Client("tcp://127.0.0.1:1").close()  # first use: imports, ZeroMQ context
    before = open_fds()
    for _ in range(20):
        Client("tcp://127.0.0.1:1").close()
    # An unclosed uvloop keeps ~5 descriptors each (100 here); a few may come and go.
    assert open_fds() - before < 10
