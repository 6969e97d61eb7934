"""netstack.phy.loopback: the in-memory loopback and the joined pair."""

from __future__ import annotations

import pytest

from netstack.phy import Device, DeviceCapabilities
from netstack.phy.loopback import Loopback, loopback_pair


def send(dev, data: bytes, now: float = 0.0) -> None:
    tx = dev.transmit(now)
    assert tx is not None
    tx.consume(len(data), lambda buf: buf.__setitem__(slice(None), data))


def recv(dev, now: float = 0.0) -> bytes | None:
    tokens = dev.receive(now)
    if tokens is None:
        return None
    return tokens[0].consume(bytes)


def test_is_a_device():
    assert isinstance(Loopback(), Device)
    assert Loopback(mtu=9000).capabilities() == DeviceCapabilities(mtu=9000)


def test_frames_come_back_in_order():
    dev = Loopback()
    assert dev.receive(0.0) is None
    for i in range(5):
        send(dev, bytes([i]) * (i + 1))
    assert [recv(dev) for _ in range(5)] == [bytes([i]) * (i + 1) for i in range(5)]
    assert dev.receive(0.0) is None
    assert dev.stats.tx_frames == dev.stats.rx_frames == 5


def test_tx_token_gives_exactly_length_bytes_and_returns_fn_result():
    dev = Loopback()
    seen = []

    def fill(buf):
        seen.append((len(buf), buf.readonly))
        buf[:] = b"\xa5" * len(buf)
        return "ok"

    assert dev.transmit(0.0).consume(60, fill) == "ok"
    assert seen == [(60, False)]
    assert recv(dev) == b"\xa5" * 60


def test_rx_token_returns_fn_result_and_paired_tx_answers():
    dev = Loopback()
    send(dev, b"ping")
    rx, tx = dev.receive(0.0)
    assert rx.consume(lambda f: bytes(f).upper()) == b"PING"
    tx.consume(4, lambda buf: buf.__setitem__(slice(None), b"pong"))
    assert recv(dev) == b"pong"


def test_oversize_and_negative_lengths_rejected():
    dev = Loopback(mtu=100)
    dev.transmit(0.0).consume(114, lambda buf: None)  # mtu + Ethernet header is fine
    with pytest.raises(ValueError):
        dev.transmit(0.0).consume(115, lambda buf: None)
    with pytest.raises(ValueError):
        dev.transmit(0.0).consume(-1, lambda buf: None)
    with pytest.raises(ValueError):
        Loopback(mtu=0)
    with pytest.raises(ValueError):
        Loopback(max_queue=0)


def test_bounded_queue_backpressure_and_drop_count():
    dev = Loopback(max_queue=3)
    tokens = [dev.transmit(0.0) for _ in range(4)]  # taken while there was room
    assert dev.transmit(0.0) is not None
    for i, tok in enumerate(tokens):
        tok.consume(1, lambda buf, i=i: buf.__setitem__(0, i))
    assert dev.transmit(0.0) is None
    assert len(dev.queue) == 3
    assert dev.stats.dropped == 1
    assert [recv(dev) for _ in range(3)] == [b"\x00", b"\x01", b"\x02"]
    assert dev.transmit(0.0) is not None


def test_poll_at():
    dev = Loopback()
    assert dev.poll_at() is None
    send(dev, b"x")
    assert dev.poll_at() <= 0.0


def test_pair_crosses_over():
    a, b = loopback_pair(mtu=1280)
    assert a.capabilities().mtu == b.capabilities().mtu == 1280
    send(a, b"to b")
    send(b, b"to a")
    assert recv(a) == b"to a"
    assert recv(b) == b"to b"
    assert recv(a) is None and recv(b) is None


def test_pair_backpressure_follows_the_peer_queue():
    a, b = loopback_pair(max_queue=2)
    send(a, b"1")
    send(a, b"2")
    assert a.transmit(0.0) is None  # b's queue is full
    assert b.transmit(0.0) is not None  # a's queue is empty
    assert recv(b) == b"1"
    assert a.transmit(0.0) is not None


def test_pair_ping_pong_many():
    a, b = loopback_pair()
    for i in range(100):
        send(a, i.to_bytes(2, "big"))
        rx, tx = b.receive(float(i))
        n = rx.consume(lambda f: int.from_bytes(f, "big"))
        tx.consume(2, lambda buf, n=n: buf.__setitem__(slice(None), (n + 1).to_bytes(2, "big")))
        assert recv(a) == (i + 1).to_bytes(2, "big")


@pytest.mark.parametrize(
    "module",
    ["netstack.phy", "netstack.phy.loopback", "netstack.phy.tracer", "netstack.phy.fault"],
)
def test_docstring_examples(module):
    """The examples in the phy docstrings run (they cannot drift from the code)."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.attempted > 0 and result.failed == 0
