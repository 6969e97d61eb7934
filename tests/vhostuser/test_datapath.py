"""Frames both ways between the Python front-end and our back-end over real rings."""

from __future__ import annotations

import os

import pytest

from tests.vhostuser.conftest import ServerThread, make_frontend, recv_n
from vhostuser.features import Feature, bit, bits
from vhostuser.frontend import DEFAULT_FEATURES, NetFrontend

# every case runs with the C chain walker and with the pure-Python one
pytestmark = pytest.mark.usefixtures("walker")


def frame_of(size: int, seed: int = 0) -> bytes:
    """An Ethernet frame of `size` bytes with a recognisable, seed-dependent body."""
    head = bytes.fromhex("525400123456") + bytes.fromhex("52550a000202") + b"\x88\xb5"
    body = bytes((i * 7 + seed) & 0xFF for i in range(size - len(head)))
    return head + body


SIZES = [60, 61, 1514, 1515, 4000, 9014, 65536]

NO_MRG = DEFAULT_FEATURES & ~bit(Feature.NET_F_MRG_RXBUF)
NO_EVENT_IDX = DEFAULT_FEATURES & ~bit(Feature.RING_F_EVENT_IDX)
# What small guests (rcore's virtio-drivers) negotiate: no VERSION_1, no MRG_RXBUF.
LEGACY = bits(Feature.RING_F_EVENT_IDX, Feature.RING_F_INDIRECT_DESC, Feature.PROTOCOL_FEATURES)


@pytest.mark.parametrize("size", SIZES)
def test_guest_to_backend_sizes(server, sock_path, size):
    fe = make_frontend(sock_path)
    try:
        frame = frame_of(size, size)
        fe.send_frame(frame, split=3 if size > 100 else None)
        assert server.app.received(1) == [frame]
        fe.wait_tx_done(timeout=2)
    finally:
        fe.close()


@pytest.mark.parametrize("features", [DEFAULT_FEATURES, NO_MRG, NO_EVENT_IDX, LEGACY],
                         ids=["default", "no-mrg", "no-event-idx", "legacy-10-byte-hdr"])
@pytest.mark.parametrize("size", [60, 1514, 9014, 65536])
def test_backend_to_guest_sizes(server, sock_path, features, size):
    fe = make_frontend(sock_path, features=features)
    try:
        mergeable = fe.has_feature(Feature.NET_F_MRG_RXBUF)
        assert fe.hdr_len == (10 if features == LEGACY else 12)
        if mergeable:
            fe.post_rx_buffers(64)
        else:
            fe.post_rx_buffers(4, size=fe.hdr_len + 65536 + 18)
        frame = frame_of(size, 3)
        server.inject(frame)
        packets = fe.recv_packets(timeout=3)
        assert [p.frame for p in packets] == [frame]
        hdr = packets[0].hdr
        assert hdr[:10] == bytes(10)
        if fe.hdr_len == 12:
            expect = -(-(12 + size) // 2048) if mergeable else 1
            assert packets[0].num_buffers == expect
    finally:
        fe.close()


@pytest.mark.parametrize("features", [DEFAULT_FEATURES, NO_EVENT_IDX, LEGACY],
                         ids=["default", "no-event-idx", "legacy"])
def test_echo_many_frames_in_order(echo_server, sock_path, features):
    fe = make_frontend(sock_path, features=features)
    try:
        fe.post_rx_buffers(128, size=2048)
        sent = [frame_of(60 + (i * 37) % 1400, i) for i in range(500)]
        got: list[bytes] = []
        for i in range(0, len(sent), 50):
            fe.send_frames(sent[i:i + 50])
            got.extend(recv_n(fe, i + 50 - len(got)))
            fe.reap_tx()
        assert got == sent
    finally:
        fe.close()


def test_indirect_descriptors_both_ways(echo_server, sock_path):
    fe = make_frontend(sock_path)
    try:
        assert fe.has_feature(Feature.RING_F_INDIRECT_DESC)
        fe.post_rx_buffers(16, indirect=True)
        frame = frame_of(3000, 9)
        fe.send_frame(frame, split=5, indirect=True)
        assert echo_server.app.received(1) == [frame]
        assert fe.recv_frames(timeout=3) == [frame]
    finally:
        fe.close()


def test_header_split_from_frame(server, sock_path):
    """Linux puts the header in its own descriptor when it cannot push it in front."""
    fe = make_frontend(sock_path)
    try:
        frame = frame_of(1000, 1)
        fe.send_frame(frame, split=[12])
        fe.send_frame(frame, split=[5, 7])  # header itself split over two descriptors
        assert server.app.received(2) == [frame, frame]
    finally:
        fe.close()


def test_event_idx_suppresses_interrupts(echo_server, sock_path):
    fe = make_frontend(sock_path)
    try:
        assert fe.has_feature(Feature.RING_F_EVENT_IDX)
        fe.post_rx_buffers(256, size=2048)
        frames = [frame_of(100, i) for i in range(200)]
        fe.send_frames(frames)
        assert recv_n(fe, 200) == frames
        # one batch of 200 frames must not cost 200 interrupts or 200 kicks
        assert fe.counters.calls < 100
    finally:
        fe.close()


def test_no_rx_buffers_bounded_backlog_then_delivery(server, sock_path):
    fe = make_frontend(sock_path)
    try:
        frames = [frame_of(200, i) for i in range(300)]
        for f in frames:
            server.inject(f)
        server.inject(frame_of(200, 999))
        # the guest posts nothing for a while: the backend keeps a bounded backlog
        import time

        time.sleep(0.3)
        dev = server.app.device
        assert dev is not None
        assert dev.drops["rx_no_buffer"] >= 300 + 1 - 256
        fe.post_rx_buffers(256)
        got = []
        while True:
            more = fe.recv_frames(timeout=1)
            if not more:
                break
            got.extend(more)
        assert len(got) == 256
        assert got[-1] == frame_of(200, 999)  # the newest survive, the oldest were dropped
    finally:
        fe.close()


def test_multiqueue_pairs(sock_path):
    from vhostuser.backend import BackendConfig

    s = ServerThread(sock_path, BackendConfig(queue_pairs=2), echo=True)
    try:
        fe = NetFrontend(sock_path, queue_pairs=2)
        fe.connect()
        assert fe.queue_num == 2
        fe.start()
        fe.post_rx_buffers(32)
        frame = frame_of(500, 5)
        fe.send_frame(frame, queue_pair=1)  # a TX on the second pair reaches us
        assert s.app.received(1) == [frame]
        assert fe.recv_frames(timeout=3) == [frame]
        fe.close()
    finally:
        s.stop()


def test_reconnect_mid_traffic_no_loss_no_duplicates(sock_path):
    """A front-end disconnects mid-traffic; a new one connects and traffic resumes with
    every frame sent after both sides were up delivered exactly once."""
    s = ServerThread(sock_path, echo=True)
    try:
        for round_ in range(3):
            fe = make_frontend(sock_path)
            fe.post_rx_buffers(64)
            frames = [frame_of(300, round_ * 1000 + i) for i in range(40)]
            fe.send_frames(frames)
            assert recv_n(fe, len(frames), what=f"round {round_}: ") == frames
            fe.send_frames([frame_of(300, 77)] * 5)  # in flight as we vanish
            fe.sock.close()  # abrupt: no GET_VRING_BASE
            fe.close()
            s.app.attached.wait(0)  # the server notices on its own
        assert s.server.connections_served == 3
    finally:
        s.stop()


def test_fd_count_flat_over_sessions(sock_path):
    def nfds() -> int:
        return len(os.listdir("/proc/self/fd"))

    s = ServerThread(sock_path)
    try:
        fe = make_frontend(sock_path)
        fe.close()
        import time

        time.sleep(0.2)
        before = nfds()
        for _ in range(20):
            fe = make_frontend(sock_path)
            fe.post_rx_buffers(8)
            fe.send_frame(frame_of(100))
            s.app.received(1)
            fe.close()
        time.sleep(0.3)
        assert nfds() <= before + 2
    finally:
        s.stop()


def test_large_frame_waits_for_buffers_posted_a_few_at_a_time(server, sock_path):
    """A 64 KiB frame needs ~33 merged 2 KiB buffers; the guest posts 4 at a time. Each
    post must kick us (EVENT_IDX: avail_event = the avail index we saw, not the one we
    consumed up to), or the frame would wait forever."""
    fe = make_frontend(sock_path)
    try:
        assert fe.has_feature(Feature.RING_F_EVENT_IDX)
        frame = frame_of(65536, 4)
        fe.post_rx_buffers(4)
        server.inject(frame)
        got = []
        for _ in range(20):
            got = fe.recv_frames(timeout=0.2)
            if got:
                break
            fe.post_rx_buffers(4)
        assert got == [frame]
        assert fe.counters.kicks >= 8  # the posts kicked us; nothing polled it through
    finally:
        fe.close()
