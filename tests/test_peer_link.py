"""The one DEALER link clients and workers share (protocol/peer.py), over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

from protocol import messages as m
from protocol.peer import PeerLink
from protocol.transport import SocketOptions
from tests.core_harness import CoreHarness
from workers.procutil import CONFIG_ERROR


def test_link_sends_receives_and_reconnects_under_a_new_identity() -> None:
    async def main() -> None:
        ctx = zmq.Context.instance()
        router = ctx.socket(zmq.ROUTER)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        reopened: list[str] = []

        async def on_reopen(reason: str) -> None:
            reopened.append(reason)

        names = iter([b"first", b"second"])
        link = PeerLink(
            f"tcp://127.0.0.1:{port}",
            SocketOptions(),
            lambda: next(names),
            heartbeat_interval=0.05,
            liveness=2,
            on_reopen=on_reopen,
        )
        try:
            assert link.open() == b"first"
            await link.send([m.Ping().encode()])
            assert router.poll(5000)
            identity, body = router.recv_multipart()
            assert identity == b"first" and isinstance(m.decode(body), m.Ping)
            for _ in range(3):  # several queued messages come back in one batch
                router.send_multipart([b"first", m.Pong().encode()])
            batch: list[list[bytes]] = []
            for _ in range(50):
                batch += await link.receive(100)
                if len(batch) == 3:
                    break
            assert [type(m.decode(f[0])) for f in batch] == [m.Pong] * 3
            await asyncio.sleep(0.15)
            loop_now = link.last_heard + 0.15
            assert link.is_silent(loop_now)
            link.request_reconnect("broker silent")
            await link.receive(10)
            assert reopened == ["broker silent"] and link.reconnects == 1
            assert link.routing_id == b"second"
            await link.send([m.Ping().encode()])
            assert router.poll(5000)
            assert router.recv_multipart()[0] == b"second"
        finally:
            link.close()
            router.close(linger=0)

    asyncio.run(main())


def test_core_refuses_an_unknown_provider_with_a_typed_rejection() -> None:
    h = CoreHarness({"p": {"kind": "mock", "models": ["m"]}})
    ready = m.Ready(provider="other", kind="mock", models=[], capacity=1, pid=1)
    h.core.worker_message(b"w-other", ready, (), h.now)
    h.pump()
    [(identity, reply)] = h.strays
    assert identity == b"w-other" and isinstance(reply, m.Rejected)
    assert reply.reason == "unknown provider 'other'"
    assert h.core.workers.get(b"w-other") is None


def test_rejected_worker_process_exits_with_config_error(broker_factory: Any) -> None:
    broker = broker_factory({"p": {"kind": "mock", "models": ["m"], "spawn": False}})
    proc = broker.start_worker("mock")  # a known kind, but not a provider of this broker
    assert proc.wait(timeout=30) == CONFIG_ERROR
    worker_log = (broker.tmp / "worker-mock.log").read_text()
    assert "registration_rejected" in worker_log
    rejected = broker.events("worker_rejected")
    assert [e["provider"] for e in rejected] == ["mock"]
