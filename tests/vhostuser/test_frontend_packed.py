"""Our Python front-end on packed rings (vhostuser.frontend.PackedQueue) against our
backend's packed ring over a real socket and shared memory: frames both ways through many
wraps, chains split over descriptors, indirect tables, merged RX buffers, event
suppression, and a stop/start at the vhost-user bases. (The packed rings' real drivers —
Linux on QEMU, DPDK's virtio-user — are tested in tests/e2e/test_packed.py and
tests/vhostuser/test_dpdk.py; this is the front-end `bench ring --ring packed` uses.)"""

from __future__ import annotations

import pytest

from tests.vhostuser.conftest import make_frontend, recv_n
from tests.vhostuser.test_datapath import frame_of
from vhostuser.features import Feature, bit
from vhostuser.frontend import DEFAULT_FEATURES, FrontendError, PackedQueue
from vhostuser.packed import PackedVirtqueue

PACKED = DEFAULT_FEATURES | bit(Feature.F_RING_PACKED)


@pytest.fixture
def fe(server, sock_path):
    f = make_frontend(sock_path, features=PACKED, queue_size=64)
    yield f
    f.close()


def test_negotiated_and_both_sides_packed(fe, server):
    assert fe.has_feature(Feature.F_RING_PACKED)
    assert all(isinstance(q, PackedQueue) for q in fe.vqs)
    assert all(isinstance(q, PackedVirtqueue) for q in server.server.conn.backend.queues)
    with pytest.raises(FrontendError, match="split rings only"):
        fe.tx_batch()


def test_frames_both_ways_through_many_wraps(fe, server):
    out = [frame_of(60 + (37 * i) % 1400, i) for i in range(500)]  # 64-entry rings: ~8 wraps
    for k in range(0, 500, 20):
        fe.send_frames(out[k:k + 20])
        fe.wait_tx_done(3)
    assert server.app.received(500) == out
    fe.post_rx_buffers(48)
    back = [frame_of(60 + (53 * i) % 1450, 1000 + i) for i in range(500)]
    got: list[bytes] = []
    for k in range(0, 500, 25):
        for f in back[k:k + 25]:
            server.inject(f)
        got.extend(recv_n(fe, 25))  # (recv reposts the buffers)
    assert got == back


def test_chains_indirect_tables_and_merged_buffers(fe, server):
    frames = [frame_of(1200, i) for i in range(30)]
    for i, f in enumerate(frames):
        fe.send_frame(f, split=3 if i % 2 else None, indirect=i % 3 == 0)
    assert server.app.received(30) == frames
    fe.wait_tx_done(3)
    fe.post_rx_buffers(40, size=256, indirect=True)  # a 1500-byte frame takes 6
    big = [frame_of(1500, 100 + i) for i in range(12)]
    for f in big:
        server.inject(f)
    assert recv_n(fe, 12) == big


def test_event_suppression_both_ways(fe, server):
    import time

    tx, be_tx = fe.tx_vq(), server.server.conn.backend.queues[1]
    fe.send_frame(frame_of(100, 1))  # the idle device asks for kicks (ENABLE): we kick
    assert server.app.received(1) == [frame_of(100, 1)]
    fe.wait_tx_done(3)
    kicks = fe.counters.kicks
    # the device's structure says DISABLE: no kick (it finds the frame when it looks)
    fe.mem.write(tx.device_gpa + 2, (1).to_bytes(2, "little"))
    fe.send_frame(frame_of(100, 2))
    assert fe.counters.kicks == kicks and fe.counters.kicks_suppressed == 1
    server.server.wake()
    assert server.app.received(1) == [frame_of(100, 2)]
    fe.wait_tx_done(3)
    # ours says DISABLE: the device uses our buffers without an interrupt
    tx.set_interrupts(False)
    fe.get_features()  # a round trip: the device's pass that used frame 2 is over (its
    # interrupt decision included: one loop thread serves the socket and the rings)
    notified, used = be_tx.stats.notified, be_tx.stats.used
    fe.send_frames([frame_of(100, 10 + i) for i in range(5)])
    server.server.wake()
    assert server.app.received(5) == [frame_of(100, 10 + i) for i in range(5)]
    deadline = time.monotonic() + 3
    while be_tx.stats.used < used + 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.05)
    assert be_tx.stats.notified == notified
    tx.set_interrupts(True)
    fe.wait_tx_done(3)


def test_stop_and_start_again_at_the_bases(fe, server):
    fe.post_rx_buffers(16)
    for k in range(7):  # past the 64-entry ring's end: wrap counters flipped
        fe.send_frames([frame_of(80, 10 * k + i) for i in range(10)])
        fe.wait_tx_done(3)
    server.app.received(70)
    for i in range(10):
        server.inject(frame_of(90, i))
    assert recv_n(fe, 10) == [frame_of(90, i) for i in range(10)]
    bases = fe.stop()
    tx = fe.tx_vq()
    assert bases[1] == tx.base()  # the device stopped where we are
    assert bases[1] >> 15 & 1 == 0  # (70 descriptors into 64: the counter flipped)
    fe.start()
    more = [frame_of(120, 200 + i) for i in range(20)]
    fe.send_frames(more)
    assert server.app.received(20) == more
    server.inject(frame_of(130, 7))
    assert recv_n(fe, 1) == [frame_of(130, 7)]
