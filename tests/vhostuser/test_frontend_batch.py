"""The front-end's batched data path (TxBatch, RxBatch: the fe_* C helpers) against our
back-end in a thread, and against the fake device of test_frontend.py for what a real
back-end never does (a used id it was not given, an overrun, num_buffers 0)."""

from __future__ import annotations

from array import array

import pytest

from tests.test_frontend import U16, frame_of, pair, started  # noqa: F401 (fixture)
from tests.vhostuser.conftest import make_frontend
from vhostuser.features import Feature, bits
from vhostuser.frontend import FrontendError, RingFull


def _pack(frames: list[bytes]) -> tuple[bytes, array]:
    return b"".join(frames), array("I", map(len, frames))


def test_tx_batch_frames_reach_the_backend_in_order(server, sock_path):
    fe = make_frontend(sock_path, queue_size=64)
    tx = fe.tx_batch(buf_size=2048, count=32)
    frames = [frame_of(60 + 13 * i, i) for i in range(100)]
    sent = 0
    while sent < len(frames):
        tx.reap()
        n = tx.send(*_pack(frames[sent:]))
        sent += n
        if not n:
            tx.wait(0.05)
    tx.flush(2)
    assert server.app.received(100) == frames
    c = fe.counters
    assert (c.tx_frames, c.tx_completed) == (100, 100)
    assert c.tx_bytes == sum(map(len, frames))
    assert c.kicks >= 1 and tx.in_flight == 0
    fe.close()


def test_tx_batch_64k_frames_and_a_frame_too_big(server, sock_path):
    fe = make_frontend(sock_path, queue_size=16)
    tx = fe.tx_batch(buf_size=65536 + fe.hdr_len, count=4)
    big = frame_of(65536, 7)
    assert tx.send(*_pack([big, big])) == 2
    assert server.app.received(2) == [big, big]
    with pytest.raises(FrontendError, match="frame 1 of 65537 bytes does not fit"):
        tx.send(*_pack([big, frame_of(65537)]))
    assert server.app.received(1) == [big]  # the one before it went out
    tx.flush(2)
    fe.close()


def test_tx_batch_owns_the_queue_until_detached(server, sock_path):
    fe = make_frontend(sock_path, queue_size=16)
    tx = fe.tx_batch(buf_size=256, count=8)
    with pytest.raises(RingFull):
        fe.send_frame(frame_of(60))
    with pytest.raises(FrontendError, match="in use"):
        fe.tx_batch()  # already taken over
    tx.send(*_pack([frame_of(60, 1)]))
    tx.flush(2)
    free = fe.mem.free_bytes
    tx.detach()
    assert fe.mem.free_bytes > free  # the buffers went back
    fe.send_frame(frame_of(61, 2))  # the Python path again, indices carried over
    fe.wait_tx_done(2)
    assert server.app.received(2) == [frame_of(60, 1), frame_of(61, 2)]
    fe.close()


@pytest.mark.parametrize("mrg", [True, False])
def test_rx_batch_receives_merged_and_single_buffer_frames(server, sock_path, mrg):
    features = None if mrg else bits(Feature.F_VERSION_1, Feature.RING_F_EVENT_IDX,
                                     Feature.PROTOCOL_FEATURES)
    fe = make_frontend(sock_path, queue_size=64, features=features)
    rx = fe.rx_batch(buf_size=1024 if mrg else 2048, count=32)
    want = [frame_of(60 + 37 * i, i) for i in range(40)]
    for w in want:
        server.inject(w)
    got: list[bytes] = []
    for _ in range(50):
        got += rx.recv(0.2)
        if len(got) == len(want):
            break
    assert got == want
    c = fe.counters
    assert c.rx_frames == 40 and c.rx_bytes == sum(map(len, want))
    if mrg:
        assert c.rx_buffers > 40  # frames over 1012 bytes took two buffers
    assert c.rx_posted == 32 + c.rx_buffers
    fe.close()


def test_rx_batch_counts_without_copying(server, sock_path):
    fe = make_frontend(sock_path, queue_size=64)
    rx = fe.rx_batch(buf_size=4096, count=64)
    for i in range(10):
        server.inject(frame_of(9000, i))
    frames = 0
    for _ in range(100):
        n, copied = rx.reap()
        frames += n
        assert copied == []
        if frames == 10:
            break
        rx.wait(0.05)
    assert frames == 10 and fe.counters.rx_bytes == 90000
    fe.close()


def test_rx_batch_merge_split_across_calls(pair):  # noqa: F811
    fe, dev = started(pair)
    rx = fe.rx_batch(buf_size=64, count=4)
    ring = dev.ring(0)
    packet = bytes(10) + U16.pack(2) + frame_of(100)
    h1, h2 = ring.pop(), ring.pop()
    ((a1, _, _),) = ring.chain(h1)
    ((a2, _, _),) = ring.chain(h2)
    dev.write(a1, packet[:64])
    ring.push(h1, 64)
    assert rx.reap(4, 4096) == (0, [])  # half a frame: kept, buffer reposted
    dev.write(a2, packet[64:])
    ring.push(h2, len(packet) - 64)
    n, frames = rx.reap(4, 4096)
    assert n == 1 and frames == []  # begun in an earlier call: counted, not copied
    assert fe.counters.rx_bytes == 100 and fe.counters.rx_buffers == 2


@pytest.mark.parametrize("case, match", [
    ("id", "device used id 9, which is not a buffer it was given"),
    ("overrun", "device wrote 65 bytes into a 64-byte buffer"),
    ("runt", "used length 3 is shorter than the virtio-net header"),
    ("num_buffers", "num_buffers is 0"),
])
def test_rx_batch_refuses_a_broken_device(pair, case, match):  # noqa: F811
    fe, dev = started(pair)
    rx = fe.rx_batch(buf_size=64, count=4)
    ring = dev.ring(0)
    head = ring.pop()
    ((addr, _, _),) = ring.chain(head)
    if case == "id":
        ring.push(9, 20)
    elif case == "overrun":
        ring.push(head, 65)
    elif case == "runt":
        ring.push(head, 3)
    else:
        dev.write(addr, bytes(12) + frame_of(20))
        ring.push(head, 32)
    with pytest.raises(FrontendError, match=match):
        rx.reap()


def test_tx_batch_event_idx_suppresses_kicks(pair):  # noqa: F811
    fe, dev = started(pair)
    tx = fe.tx_batch(buf_size=256, count=8)
    tx.send(*_pack([frame_of(60)] * 2))
    tx.send(*_pack([frame_of(60)] * 2))  # the device has not caught up: no second kick
    assert (fe.counters.kicks, fe.counters.kicks_suppressed) == (1, 1)
    assert len(dev.tx()) == 4


def test_bench_ring_takes_either_frontend(monkeypatch):
    """`--ring-frontend python` reaches bench_ring; both paths measure something."""
    import apps.bench
    from apps.bench import main, ring_backend_to_guest, ring_guest_to_backend

    seen = {}
    monkeypatch.setattr(apps.bench, "bench_ring", lambda seconds, sizes, **kw: seen.update(kw)
                        or [])
    assert main(["ring", "--seconds", "0.1", "--ring-frontend", "python"]) == 0
    assert seen == {"frontend": "python"}
    for frontend in ("c", "python"):
        for r in (ring_guest_to_backend(1500, 0.1, frontend),
                  ring_backend_to_guest(1500, 0.1, 2048, frontend)):
            assert r.frames > 0 and r.frontend == frontend
