"""send_parts / recv_parts (protocol/transport.py): what send_multipart / recv_multipart did on
every hot path, including the errors the broker relies on."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from protocol.transport import recv_parts, send_parts

CTX: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()


Pair = tuple[zmq.Socket[bytes], zmq.Socket[bytes]]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A mandatory ROUTER and a DEALER named w1 connected to it, closed after the test."""
    router: zmq.Socket[bytes] = CTX.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer: zmq.Socket[bytes] = CTX.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, b"w1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield router, dealer
    finally:
        router.close()
        dealer.close()


def wait_readable(sock: zmq.Socket[bytes]) -> None:
    assert sock.poll(5000, zmq.POLLIN), "nothing arrived"


def test_parts_round_trip_and_frames_are_relayed_as_received(pair: Pair) -> None:
    router, dealer = pair
    send_parts(dealer, [b"header", b"", b"tekst"])
    wait_readable(router)
    frames = recv_parts(router)
    assert [f.bytes for f in frames] == [b"w1", b"header", b"", b"tekst"]
    send_parts(router, [frames[0].bytes, *frames[1:]])  # received frames, sent as they are
    wait_readable(dealer)
    assert [f.bytes for f in recv_parts(dealer)] == [b"header", b"", b"tekst"]
    assert not dealer.poll(0)  # one message, nothing more


def test_nothing_queued_raises_again(pair: Pair) -> None:
    router, _ = pair
    with pytest.raises(zmq.Again):
        recv_parts(router)


def test_unknown_peer_on_a_mandatory_router_raises_ehostunreach(pair: Pair) -> None:
    """The broker's _flush reports such a worker lost at once; nothing is sent."""
    router, dealer = pair
    send_parts(dealer, [b"hello"])
    wait_readable(router)
    recv_parts(router)
    with pytest.raises(zmq.ZMQError) as raised:
        send_parts(router, [b"nobody", b"x"])
    assert raised.value.errno == zmq.EHOSTUNREACH
    time.sleep(0.05)
    assert not dealer.poll(0)


def test_full_queue_raises_again_instead_of_blocking() -> None:
    dealer: zmq.Socket[bytes] = CTX.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.SNDHWM, 1)
    dealer.connect("tcp://127.0.0.1:1")  # never answers: messages stay queued
    try:
        with pytest.raises(zmq.Again):
            for _ in range(10):
                send_parts(dealer, [b"x"])
    finally:
        dealer.close()
