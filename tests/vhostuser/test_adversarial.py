"""ADVERSARIAL.md cases 1–15: a hostile front-end (1–7) and a hostile guest driver (8–15).

Connection cases run over a real unix socket against the server fixture; descriptor cases
write descriptors and avail entries by hand into the front-end's guest memory. Every
case checks: the process keeps serving (a fresh front-end connects and moves frames both
ways), nothing escapes, a counter (and a log line) says what happened, and nothing outside
guest memory is touched.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time
import tracemalloc

import pytest

from tests.vhostuser.conftest import ServerThread, make_frontend
from tests.vhostuser.test_protocol import frame_of, new_eventfd, nfds
from vhostuser.backend import VhostUserBackend
from vhostuser.features import (
    STATUS_DEVICE_NEEDS_RESET,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    Feature,
    bit,
)
from vhostuser.frontend import (
    DEFAULT_FEATURES,
    DEFAULT_PROTOCOL_FEATURES,
    FrontendError,
    GuestMemoryArea,
    NetFrontend,
    Virtqueue,
)
from vhostuser.protocol import (
    FLAG_NEED_REPLY,
    HEADER,
    LOG,
    VERSION,
    VRING_NOFD_MASK,
    MemRegion,
    Message,
    ProtocolFeature,
    Request,
    VringAddr,
    pack_mem_table,
    state_payload,
    u64_payload,
)

# every case runs with the C chain walker and with the pure-Python one
pytestmark = pytest.mark.usefixtures("walker")

R = Request
MiB = 1 << 20
HDR = 12  # VERSION_1: the 12-byte virtio_net_hdr


# ---------------------------------------------------------------------------------------
# Helpers


def backend_of(server: ServerThread) -> VhostUserBackend:
    deadline = time.monotonic() + 2
    while server.server.conn is None:
        assert time.monotonic() < deadline, "no connection adopted"
        time.sleep(0.005)
    return server.server.conn.backend


def ack(fe: NetFrontend, req: int, payload: bytes = b"", fds=()) -> int:
    """Send with need_reply; the REPLY_ACK value (0 = success)."""
    reply = fe.request(Message(int(req), VERSION | FLAG_NEED_REPLY, payload), fds)
    assert len(reply.payload) == 8, f"{reply.name}: {len(reply.payload)}-byte ack"
    return reply.u64()


def sync(fe: NetFrontend) -> None:
    """A request with a reply: the back-end has handled everything sent before it."""
    fe.get_features()


def wait_for(pred, timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def closed_by_peer(sock: socket.socket, timeout: float = 3.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


def assert_serving(server: ServerThread, sock_path: str) -> None:
    """A fresh front-end connects and frames move both ways."""
    fe = make_frontend(sock_path)
    try:
        fe.post_rx_buffers(8)
        marker = frame_of(333, int(time.monotonic() * 1000) & 0xFF)
        fe.send_frame(marker)
        deadline = time.monotonic() + 5
        while True:
            got = server.app.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == marker:
                break
        back = frame_of(222, 5)
        server.inject(back)
        assert fe.recv_frames(timeout=3) == [back]
        fe.wait_tx_done(timeout=2)
    finally:
        fe.close()


def raw_chain(vq: Virtqueue, descs) -> int:
    """Write (addr, len, flags) descriptors into free table slots, linked by NEXT in
    order; returns the head. The front-end's bookkeeping does not know the chain."""
    ids = [vq.free_heads.pop() for _ in descs]
    for k, (a, n, f) in enumerate(descs):
        last = k == len(descs) - 1
        vq._write_desc(ids[k], a, n, f | (0 if last else VIRTQ_DESC_F_NEXT),
                       0 if last else ids[k + 1])
    return ids[0]


def raw_avail(vq: Virtqueue, head: int, *, idx: int | None = None, kick: bool = True) -> None:
    """Put `head` in the next avail slot and publish (or publish `idx` as given)."""
    vq._put16(vq._avail_p, 4 + 2 * (vq.avail_idx % vq.size), head)
    vq.avail_idx = (vq.avail_idx + 1) & 0xFFFF
    vq._put16(vq._avail_p, 2, vq.avail_idx if idx is None else idx)
    if kick:
        vq.kick()


def tx_data(frame: bytes) -> bytes:
    return bytes(HDR) + frame


def put(fe: NetFrontend, data: bytes, gpa: int | None = None) -> int:
    gpa = fe.mem.alloc(len(data), 8) if gpa is None else fe.mem.alloc_at(gpa, len(data))
    fe.mem.write(gpa, data)
    return gpa


def wait_eventfd(fd: int, timeout: float = 3.0) -> int:
    r, _, _ = select.select([fd], [], [], timeout)
    assert r, "eventfd not signalled"
    return os.eventfd_read(fd)


def assert_broken(fe: NetFrontend, be: VhostUserBackend, index: int, err_fd: int) -> None:
    """The device asked for a reset: the queue stopped, the err eventfd was signalled and
    GET_STATUS carries DEVICE_NEEDS_RESET (STATUS is negotiated)."""
    wait_for(lambda: be.queues[index].broken, what=f"queue {index} broken")
    assert wait_eventfd(err_fd) >= 1
    assert be.queues[index].stats.errors >= 1
    assert be.counters["ring_errors"] >= 1
    assert be.net.drops["ring_error"] >= 1
    assert fe.get_status() & STATUS_DEVICE_NEEDS_RESET


@pytest.fixture
def err_fd():
    fd = new_eventfd()
    yield fd
    os.close(fd)


@pytest.fixture
def fe(server, sock_path):
    f = make_frontend(sock_path)
    yield f
    f.close()


# ---------------------------------------------------------------------------------------
# 1. Sizes and truncation


@pytest.mark.parametrize("data", [
    HEADER.pack(R.GET_FEATURES, VERSION, 8192),  # size over any payload we know
    HEADER.pack(R.GET_FEATURES, VERSION, 0xFFFF_FFFF),
    HEADER.pack(R.GET_FEATURES, 0, 0),  # version 0
    HEADER.pack(R.GET_FEATURES, VERSION, 4) + bytes(4),  # wrong size for the type
    HEADER.pack(R.SET_VRING_NUM, VERSION, 4) + bytes(4),
    HEADER.pack(R.SET_VRING_ADDR, VERSION, 8) + bytes(8),
    HEADER.pack(R.SET_MEM_TABLE, VERSION, 4) + bytes(4),
    HEADER.pack(R.SET_MEM_TABLE, VERSION, 8 + 31) + struct.pack("<II", 1, 0) + bytes(31),
    HEADER.pack(R.GET_CONFIG, VERSION, 12) + struct.pack("<III", 0, 8, 0),
], ids=["size-8k", "size-4g", "version0", "get-features-4", "vring-num-4", "vring-addr-8",
        "mem-table-4", "mem-table-short-region", "config-size-lies"])
def test_01_bad_size_closes_that_connection_only(server, sock_path, caplog, data):
    fe = make_frontend(sock_path)
    try:
        fe.send_raw(data, [new_fd := new_eventfd()])
        os.close(new_fd)
        assert closed_by_peer(fe.sock), "connection left open after a malformed message"
    finally:
        fe.close()
    wait_for(lambda: server.server.counters["protocol_errors"] == 1, what="protocol error count")
    assert "protocol violation" in caplog.text
    assert_serving(server, sock_path)


@pytest.mark.parametrize("data", [
    HEADER.pack(R.SET_VRING_ADDR, VERSION, 40) + bytes(10),  # size larger than payload
    HEADER.pack(R.GET_FEATURES, VERSION, 0)[:7],  # truncated header
], ids=["size-past-payload", "truncated-header"])
def test_01_truncated_then_hang_up(server, sock_path, caplog, data):
    with caplog.at_level(logging.INFO, logger="vhostuser.server"):
        fe = make_frontend(sock_path)
        be = backend_of(server)
        before = nfds()
        fe.send_raw(data, [fd := new_eventfd()])
        os.close(fd)
        time.sleep(0.1)  # the back-end waits for the rest: nothing to answer yet
        assert server.server.conn is not None and server.server.conn.backend is be
        fe.close()
        wait_for(lambda: "middle of a message" in caplog.text, what="log line")
    wait_for(lambda: server.server.conn is None, what="teardown")
    assert nfds() <= before  # the fd of the half message was closed too
    assert_serving(server, sock_path)


# ---------------------------------------------------------------------------------------
# 2. Wrong fd counts, 10,000 times


def test_02_wrong_fd_counts_10000_times_fd_count_flat(server, sock_path):
    fe = make_frontend(sock_path)
    try:
        be = backend_of(server)
        sync(fe)
        efd = new_eventfd()
        mem_table = pack_mem_table([r.describe() for r in fe.mem.regions])
        cases = [
            (Message(R.GET_FEATURES), [efd]),  # reply, fd closed
            (Message(R.SET_OWNER), [efd, efd]),
            (Message(R.SET_MEM_TABLE, payload=mem_table), []),  # needs one fd
            (Message(R.SET_MEM_TABLE, payload=mem_table), [efd, efd, efd]),
            (Message(R.SET_VRING_NUM, payload=state_payload(0, 256)), [efd]),
            (Message(R.SET_VRING_KICK, payload=u64_payload(0)), [efd, efd]),
            (Message(R.SET_VRING_CALL, payload=u64_payload(0 | VRING_NOFD_MASK)), [efd]),
            (Message(R.SET_VRING_ERR, payload=u64_payload(0)), []),
            (Message(R.SET_LOG_FD), [efd, efd]),
            (Message(R.GET_VRING_BASE, payload=state_payload(5, 0)), [efd] * 8),
            (Message(777, payload=bytes(8)), [efd]),
        ]
        with_reply = {R.GET_FEATURES, R.GET_VRING_BASE}

        def send(k: int) -> None:
            msg, fds = cases[k % len(cases)]
            fe.send(msg, fds)
            if msg.request in with_reply:
                fe.recv_reply(msg.request).close_fds()

        for k in range(len(cases)):  # once round: fds the back-end kept are replaced
            send(k)
        sync(fe)
        before = nfds()
        for k in range(10_000):
            send(k)
        sync(fe)
        assert nfds() == before  # flat
        os.close(efd)
        assert be.counters["wrong_fd_count"] >= 10_000 * 8 // 11
        assert be.counters["messages"] >= 10_000
        # the connection still works: the front-end's own start sequence ran on it
        fe.post_rx_buffers(4)
        fe.send_frame(frame_of(100, 42))
        assert server.app.received(1) == [frame_of(100, 42)]
    finally:
        fe.close()
    assert_serving(server, sock_path)


# ---------------------------------------------------------------------------------------
# 3. Vring indices out of range


BAD_INDEX_CASES = [
    (R.SET_VRING_NUM, lambda i: state_payload(i, 256), 0),
    (R.SET_VRING_BASE, lambda i: state_payload(i, 0), 0),
    (R.SET_VRING_ADDR, lambda i: VringAddr(i, 0, 0, 0, 0, 0).pack(), 0),
    (R.SET_VRING_KICK, lambda i: u64_payload(i), 1),
    (R.SET_VRING_CALL, lambda i: u64_payload(i), 1),
    (R.SET_VRING_ERR, lambda i: u64_payload(i), 1),
    (R.SET_VRING_ENABLE, lambda i: state_payload(i, 1), 0),
]


@pytest.mark.parametrize("index", [2, 0xFF, 0x10000, 0xFFFF_FFFF])
def test_03_vring_index_out_of_range(fe, server, sock_path, index):
    be = backend_of(server)
    sync(fe)
    refused = be.counters["invalid_requests"]
    fd = new_eventfd()
    try:
        for req, payload, nfd in BAD_INDEX_CASES:
            if req in (R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR) and index > 0xFFFF_FFFF:
                continue
            before = nfds()
            value = ack(fe, req, payload(index), [fd] * nfd)
            assert value != 0, f"{req.name} index {index:#x} accepted"
            assert nfds() == before
        reply = fe.request(Message(R.GET_VRING_BASE, payload=state_payload(index, 0)))
        assert reply.vring_state()[0] == index
    finally:
        os.close(fd)
    assert be.counters["invalid_requests"] - refused >= len(BAD_INDEX_CASES)
    # the device's own rings are untouched and work
    fe.post_rx_buffers(2)
    fe.send_frame(frame_of(70))
    assert server.app.received(1) == [frame_of(70)]
    assert len(be.queues) == 2 and all(q.size == 256 for q in be.queues)


# ---------------------------------------------------------------------------------------
# 4. Bad queue sizes, repeated


def test_04_bad_vring_num_rejected_no_growth(fe, server, sock_path):
    be = backend_of(server)
    sync(fe)
    for num in (0, 3, 65536, 32769, 0xFFFF_FFFF):
        assert ack(fe, R.SET_VRING_NUM, state_payload(1, num)) != 0
    assert be.queues[1].size == 256
    logging.getLogger("vhostuser.backend").setLevel(logging.ERROR)  # no 3000 log records
    try:
        tracemalloc.start(1)
        ours = [tracemalloc.Filter(True, "*vhostuser*")]
        snap0 = tracemalloc.take_snapshot().filter_traces(ours)
        for k in range(3000):
            assert ack(fe, R.SET_VRING_NUM, state_payload(k & 1, (0, 3, 65536)[k % 3])) != 0
        snap1 = tracemalloc.take_snapshot().filter_traces(ours)
        tracemalloc.stop()
    finally:
        logging.getLogger("vhostuser.backend").setLevel(logging.NOTSET)
    growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    assert growth < 64 * 1024, f"vhostuser allocations grew by {growth} bytes"
    assert be.counters["invalid_requests"] >= 3005
    assert all(q.size == 256 and q.ready for q in be.queues)
    fe.post_rx_buffers(2)
    fe.send_frame(frame_of(80))
    assert server.app.received(1) == [frame_of(80)]


# ---------------------------------------------------------------------------------------
# 5. Bad memory tables


def _memfds(n: int, size: int = MiB) -> list[int]:
    fds = []
    for _ in range(n):
        fd = os.memfd_create("adv", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        fds.append(fd)
    return fds


U64_MAX = (1 << 64) - 1
BAD_TABLES = {
    "too-many-regions": [MemRegion(i * MiB, MiB, 0x1000_0000 + i * MiB, 0) for i in range(9)],
    "gpa-overflow": [MemRegion(U64_MAX - 4095, 8192, 0x1000_0000, 0)],
    "uaddr-overflow": [MemRegion(0x4000_0000, MiB, U64_MAX - 4095, 0)],
    "offset-overflow": [MemRegion(0x4000_0000, MiB, 0x1000_0000, U64_MAX - 4095)],
    "offset-past-file": [MemRegion(0x4000_0000, MiB, 0x1000_0000, MiB)],
    "overlapping-gpa": [MemRegion(0, MiB, 0x1000_0000, 0), MemRegion(MiB // 2, MiB, 0x2000_0000, 0)],
    "overlapping-uaddr": [MemRegion(0, MiB, 0x1000_0000, 0), MemRegion(MiB, MiB, 0x1008_0000, 0)],
    "zero-size": [MemRegion(0, 0, 0x1000_0000, 0)],
    "size-4g-small-file": [MemRegion(0, 1 << 32, 0x1000_0000, 0)],
}


@pytest.mark.parametrize("name", list(BAD_TABLES))
def test_05_bad_mem_table_keeps_previous(fe, server, sock_path, name):
    be = backend_of(server)
    sync(fe)
    old = list(be.memory.regions)
    regions = BAD_TABLES[name]
    fds = _memfds(len(regions))
    try:
        payload = pack_mem_table(regions) if len(regions) <= 8 else (
            struct.pack("<II", len(regions), 0) + b"".join(r.pack() for r in regions))
        before = nfds()
        assert ack(fe, R.SET_MEM_TABLE, payload, fds[:8]) != 0
        assert nfds() == before
    finally:
        for fd in fds:
            os.close(fd)
    assert be.memory.regions == old
    assert be.counters["invalid_requests"] >= 1
    fe.post_rx_buffers(2)
    fe.send_frame(frame_of(90))
    assert server.app.received(1) == [frame_of(90)]
    server.inject(frame_of(91))
    assert fe.recv_frames(timeout=3) == [frame_of(91)]


@pytest.mark.parametrize("size,offset", [(U64_MAX, U64_MAX), (4096, U64_MAX - 100),
                                         (1 << 31, 0), (0, 0)],
                         ids=["both-max", "offset-wraps", "past-file", "empty"])
def test_05_set_log_base_overflow_refused(server, sock_path, size, offset):
    fe = make_frontend(sock_path, protocol_features=DEFAULT_PROTOCOL_FEATURES
                       | bit(ProtocolFeature.LOG_SHMFD))
    try:
        be = backend_of(server)
        sync(fe)
        old = list(be.memory.regions)
        (fd,) = _memfds(1)
        try:
            before = nfds()
            assert ack(fe, R.SET_LOG_BASE, LOG.pack(size, offset), [fd]) != 0
            assert nfds() == before
        finally:
            os.close(fd)
        assert be.memory.regions == old
        assert be.dirty_log is None
        assert be.counters["invalid_requests"] == 1
        fe.post_rx_buffers(2)
        server.inject(frame_of(91))
        assert fe.recv_frames(timeout=3) == [frame_of(91)]
        fe.send_frame(frame_of(92))
        assert server.app.received(1) == [frame_of(92)]
    finally:
        fe.close()


# ---------------------------------------------------------------------------------------
# 6. Ring addresses outside guest memory


def _bad_addrs(fe: NetFrontend) -> dict[str, VringAddr]:
    vq = fe.tx_vq()
    good = vq.addr()
    end = fe.mem.regions[-1].uaddr + fe.mem.regions[-1].size
    return {
        "desc-nowhere": VringAddr(1, 0, 0x10_0000_0000, good.used, good.avail, 0),
        "used-gpa-not-uaddr": VringAddr(1, 0, good.desc, vq.used_gpa, good.avail, 0),
        "avail-straddles-end": VringAddr(1, 0, good.desc, good.used, end - 64, 0),
        "desc-straddles-end": VringAddr(1, 0, end - 16 * 16, good.used, good.avail, 0),
        "used-overflows": VringAddr(1, 0, good.desc, U64_MAX - 7, good.avail, 0),
        "misaligned": VringAddr(1, 0, good.desc + 8, good.used, good.avail, 0),
    }


@pytest.mark.parametrize("name", ["desc-nowhere", "used-gpa-not-uaddr", "avail-straddles-end",
                                  "desc-straddles-end", "used-overflows", "misaligned"])
def test_06_ring_outside_memory_does_not_start(server, sock_path, name):
    fe = NetFrontend(sock_path)
    try:
        fe.connect()
        fe.start()
        be = backend_of(server)
        fe.stop()  # GET_VRING_BASE: rings stopped
        assert ack(fe, R.SET_VRING_ADDR, _bad_addrs(fe)[name].pack()) != 0
        assert ack(fe, R.SET_VRING_KICK, u64_payload(1), [fe.tx_vq().kick_fd]) == 0
        fe.send_frame(frame_of(100))
        sync(fe)
        q = be.queues[1]
        assert not q.ready and not q.mapped
        time.sleep(0.05)
        assert server.app.frames.empty()
        assert fe.tx_vq().used_idx == 0
        assert be.counters["invalid_requests"] >= 1
    finally:
        fe.close()
    assert_serving(server, sock_path)


# ---------------------------------------------------------------------------------------
# 7. Messages out of order


def test_07_out_of_order_messages(server, sock_path):
    fe = NetFrontend(sock_path)
    try:
        fe.connect()
        be = backend_of(server)
        # GET_VRING_BASE on a queue never configured: a sensible answer
        reply = fe.request(Message(R.GET_VRING_BASE, payload=state_payload(0, 0)))
        assert reply.vring_state() == (0, 0)
        fe._create_vqs()
        vq = fe.tx_vq()
        # kick, enable, in-band kick and base before any memory table or ring size
        assert ack(fe, R.SET_VRING_KICK, u64_payload(1), [vq.kick_fd]) == 0
        assert ack(fe, R.SET_VRING_ENABLE, state_payload(1, 1)) == 0
        assert ack(fe, R.VRING_KICK, state_payload(1, 0)) == 0
        assert ack(fe, R.SET_VRING_BASE, state_payload(1, 0)) == 0
        # addresses before the size, and before the memory table
        assert ack(fe, R.SET_VRING_ADDR, vq.addr().pack()) != 0
        assert ack(fe, R.SET_VRING_NUM, state_payload(1, vq.size)) == 0
        assert ack(fe, R.SET_VRING_ADDR, vq.addr().pack()) != 0
        assert not be.queues[1].started
        # RESET_DEVICE and SET_STATUS 0 in the middle: no harm
        assert ack(fe, R.RESET_DEVICE) == 0
        assert ack(fe, R.SET_STATUS, u64_payload(0)) == 0
        vq.kick()
        time.sleep(0.05)
        fe.get_features()
        # now the proper sequence on the same connection, with the same rings
        fe.start()
        fe.post_rx_buffers(2)
        fe.send_frame(frame_of(120))
        assert server.app.received(1) == [frame_of(120)]
        # messages after the rings stopped
        fe.stop()
        assert ack(fe, R.VRING_KICK, state_payload(1, 0)) == 0
        assert fe.stop() == fe.stop()
    finally:
        fe.close()
    assert_serving(server, sock_path)


# ---------------------------------------------------------------------------------------
# 8. Bad heads and avail index running ahead


@pytest.mark.parametrize("ring", [1, 0], ids=["tx", "rx"])
@pytest.mark.parametrize("how", ["head-past-size", "head-0xffff", "avail-ahead",
                                 "avail-ahead-wrapped"])
def test_08_bad_head_or_avail_idx_breaks_device(fe, server, sock_path, err_fd, ring, how):
    be = backend_of(server)
    fe.set_vring_err(ring, err_fd)
    vq = fe.vq(ring)
    if how == "head-past-size":
        raw_avail(vq, vq.size)
    elif how == "head-0xffff":
        raw_avail(vq, 0xFFFF)
    elif how == "avail-ahead":
        raw_avail(vq, 0, idx=vq.size + 1)
    else:
        raw_avail(vq, 0, idx=0x8000)
    if ring == 0:
        server.inject(frame_of(100))
    assert_broken(fe, be, ring, err_fd)
    assert vq.used_idx == 0  # nothing was used
    assert server.app.frames.empty()
    # the other direction still works until the reset
    if ring == 1:
        fe.post_rx_buffers(2)
        server.inject(frame_of(101))
        assert fe.recv_frames(timeout=3) == [frame_of(101)]
    else:
        fe.send_frame(frame_of(102))
        assert server.app.received(1) == [frame_of(102)]
    fe.close()
    assert_serving(server, sock_path)


# ---------------------------------------------------------------------------------------
# 9. Loops


@pytest.mark.parametrize("shape", ["self-loop-len0", "two-cycle", "long-cycle", "indirect-loop"])
def test_09_looped_chains_stop_within_bound(fe, server, sock_path, err_fd, shape):
    be = backend_of(server)
    fe.set_vring_err(1, err_fd)
    vq = fe.tx_vq()
    buf = put(fe, tx_data(frame_of(100)))
    if shape == "self-loop-len0":
        head = vq.free_heads.pop()
        vq._write_desc(head, buf, 0, VIRTQ_DESC_F_NEXT, head)
    elif shape == "two-cycle":
        a, b = vq.free_heads.pop(), vq.free_heads.pop()
        vq._write_desc(a, buf, 56, VIRTQ_DESC_F_NEXT, b)
        vq._write_desc(b, buf + 56, 56, VIRTQ_DESC_F_NEXT, a)
        head = a
    elif shape == "long-cycle":
        ids = [vq.free_heads.pop() for _ in range(vq.size)]
        for k, i in enumerate(ids):
            vq._write_desc(i, buf, 1, VIRTQ_DESC_F_NEXT, ids[(k + 1) % len(ids)])
        head = ids[0]
    else:
        table = fe.mem.alloc(16 * 4, 16)
        for k in range(4):
            fe.mem.write(table + 16 * k, struct.pack("<QIHH", buf, 10, VIRTQ_DESC_F_NEXT,
                                                     (k + 1) % 4))
        head = raw_chain(vq, [(table, 64, VIRTQ_DESC_F_INDIRECT)])
    t0 = time.monotonic()
    raw_avail(vq, head)
    assert_broken(fe, be, 1, err_fd)
    assert time.monotonic() - t0 < 2
    assert server.app.frames.empty()
    assert vq.used_idx == 0
    fe.close()
    assert_serving(server, sock_path)


def test_09_chain_of_exactly_queue_size_is_fine(server, sock_path):
    fe = make_frontend(sock_path, queue_size=16)
    try:
        frame = frame_of(16 * 8 - HDR, 3)
        fe.send_frame(frame, split=16)  # 16 descriptors: the whole table, legal
        assert server.app.received(1) == [frame]
        fe.wait_tx_done(2)
    finally:
        fe.close()


# ---------------------------------------------------------------------------------------
# 10. Bad indirect tables


@pytest.mark.parametrize("shape", ["len-24", "len-0", "len-8", "len-over-16n", "nested",
                                   "indirect-with-next", "indirect-mid-chain",
                                   "table-outside-memory"])
def test_10_bad_indirect_tables(fe, server, sock_path, err_fd, shape):
    be = backend_of(server)
    fe.set_vring_err(1, err_fd)
    vq = fe.tx_vq()
    buf = put(fe, tx_data(frame_of(100)))
    n = vq.size
    table = fe.mem.alloc(16 * (n + 1), 16)
    entry = struct.pack("<QIHH", buf, HDR + 100, 0, 0)
    for k in range(n + 1):
        fe.mem.write(table + 16 * k, entry)
    if shape == "len-24":
        descs = [(table, 24, VIRTQ_DESC_F_INDIRECT)]
    elif shape == "len-0":
        descs = [(table, 0, VIRTQ_DESC_F_INDIRECT)]
    elif shape == "len-8":
        descs = [(table, 8, VIRTQ_DESC_F_INDIRECT)]
    elif shape == "len-over-16n":
        descs = [(table, 16 * (n + 1), VIRTQ_DESC_F_INDIRECT)]
    elif shape == "nested":
        inner = fe.mem.alloc(16, 16)
        fe.mem.write(inner, entry)
        fe.mem.write(table, struct.pack("<QIHH", inner, 16, VIRTQ_DESC_F_INDIRECT, 0))
        descs = [(table, 16, VIRTQ_DESC_F_INDIRECT)]
    elif shape == "indirect-with-next":
        descs = [(table, 16, VIRTQ_DESC_F_INDIRECT), (buf, HDR + 100, 0)]
    elif shape == "indirect-mid-chain":
        descs = [(buf, HDR, 0), (table, 16, VIRTQ_DESC_F_INDIRECT)]
    else:
        descs = [(0x40_0000_0000, 16, VIRTQ_DESC_F_INDIRECT)]
    raw_avail(vq, raw_chain(vq, descs))
    assert_broken(fe, be, 1, err_fd)
    assert server.app.frames.empty()
    fe.close()
    assert_serving(server, sock_path)


def test_10_indirect_without_the_feature(server, sock_path, err_fd):
    fe = make_frontend(sock_path, features=DEFAULT_FEATURES & ~bit(Feature.RING_F_INDIRECT_DESC))
    try:
        be = backend_of(server)
        fe.set_vring_err(1, err_fd)
        vq = fe.tx_vq()
        buf = put(fe, tx_data(frame_of(100)))
        table = put(fe, struct.pack("<QIHH", buf, HDR + 100, 0, 0))
        raw_avail(vq, raw_chain(vq, [(table, 16, VIRTQ_DESC_F_INDIRECT)]))
        assert_broken(fe, be, 1, err_fd)
        assert server.app.frames.empty()
    finally:
        fe.close()
    assert_serving(server, sock_path)


# ---------------------------------------------------------------------------------------
# 11. Buffers outside guest memory

GAP_LAYOUT = [(0, 8 * MiB), (16 * MiB, 8 * MiB)]


def _bad_buffers(mem: GuestMemoryArea) -> dict[str, tuple[int, int]]:
    end = mem.regions[-1].end
    return {
        "crosses-last-end": (end - 40, HDR + 100),
        "crosses-into-gap": (8 * MiB - 40, HDR + 100),
        "in-gap": (12 * MiB, HDR + 100),
        "past-all": (1 << 40, HDR + 100),
        "overflows-2^64": (U64_MAX - 40, HDR + 100),
        "top-of-space": (U64_MAX, 0xFFFF_FFFF),
    }


@pytest.mark.parametrize("name", ["crosses-last-end", "crosses-into-gap", "in-gap", "past-all",
                                  "overflows-2^64", "top-of-space"])
def test_11_tx_buffer_outside_memory_dropped(server, sock_path, name):
    mem = GuestMemoryArea(GAP_LAYOUT)
    fe = make_frontend(sock_path, memory=mem)
    try:
        be = backend_of(server)
        vq = fe.tx_vq()
        addr, n = _bad_buffers(mem)[name]
        hdr = put(fe, bytes(HDR))
        # header in guest memory, the frame where it must not be read from
        raw_avail(vq, raw_chain(vq, [(hdr, HDR, 0), (addr, n - HDR, 0)]))
        wait_for(lambda: vq.used_idx == 1, what="the chain given back")
        drops = be.net.drops
        assert drops["tx_bad_address"] + drops["tx_too_long"] == 1
        assert server.app.frames.empty()
        assert not be.queues[1].broken  # a bad buffer drops the frame, not the queue
        fe.send_frame(frame_of(130))
        assert server.app.received(1) == [frame_of(130)]
    finally:
        fe.close()
        mem.close()
    assert_serving(server, sock_path)


@pytest.mark.parametrize("name", ["crosses-last-end", "crosses-into-gap", "in-gap", "past-all",
                                  "overflows-2^64", "top-of-space"])
@pytest.mark.parametrize("mrg", [True, False], ids=["mrg", "no-mrg"])
def test_11_rx_buffer_outside_memory_not_written(server, sock_path, name, mrg):
    mem = GuestMemoryArea(GAP_LAYOUT)
    features = DEFAULT_FEATURES if mrg else DEFAULT_FEATURES & ~bit(Feature.NET_F_MRG_RXBUF)
    fe = make_frontend(sock_path, memory=mem, features=features)
    try:
        be = backend_of(server)
        vq = fe.rx_vq()
        addr, n = _bad_buffers(mem)[name]
        raw_avail(vq, raw_chain(vq, [(addr, max(n, 2048), VIRTQ_DESC_F_WRITE)]))
        server.inject(frame_of(200))
        wait_for(lambda: be.net.drops["rx_bad_address"] == 1, what="rx_bad_address")
        wait_for(lambda: vq.used_idx == 1, what="the buffer given back")
        assert not be.queues[0].broken
        # guest memory at the region edges is as it was (zero): nothing spilled over
        assert mem.read(8 * MiB - 40, 40) == bytes(40)
        assert mem.read(mem.regions[-1].end - 40, 40) == bytes(40)
    finally:
        fe.close()
        mem.close()
    assert_serving(server, sock_path)


# ---------------------------------------------------------------------------------------
# 12. Straddling two adjacent regions: gathered correctly

ADJACENT = [(0, 8 * MiB), (8 * MiB, 8 * MiB)]
EDGE = 8 * MiB


def test_12_tx_frame_straddling_adjacent_regions(server, sock_path):
    mem = GuestMemoryArea(ADJACENT, mmap_offset=4096)
    fe = make_frontend(sock_path, memory=mem)
    try:
        vq = fe.tx_vq()
        for k, before_edge in enumerate((1, 7, HDR, HDR + 1, 700)):
            frame = frame_of(1400, k)
            data = tx_data(frame)
            gpa = put(fe, data, EDGE - before_edge)
            vq.add_chain([(gpa, len(data))], token=[gpa])
            vq.publish_and_kick()
            assert server.app.received(1) == [frame]
            fe.wait_tx_done(2)  # frees the buffer for the next placement
    finally:
        fe.close()
        mem.close()


def test_12_indirect_table_straddling_adjacent_regions(server, sock_path):
    mem = GuestMemoryArea(ADJACENT)
    fe = make_frontend(sock_path, memory=mem)
    try:
        vq = fe.tx_vq()
        frame = frame_of(900, 4)
        data = tx_data(frame)
        pieces = [data[:5], data[5:300], data[300:]]
        gpas = [put(fe, p) for p in pieces]
        # a 3-entry table: entry 0 and half of entry 1 in region 0, the rest in region 1
        table = fe.mem.alloc_at(EDGE - 24, 48)
        raw = b"".join(struct.pack("<QIHH", g, len(p), VIRTQ_DESC_F_NEXT if k < 2 else 0, k + 1)
                       for k, (g, p) in enumerate(zip(gpas, pieces, strict=True)))
        fe.mem.write(table, raw)
        head = raw_chain(vq, [(table, 48, VIRTQ_DESC_F_INDIRECT)])
        raw_avail(vq, head)
        assert server.app.received(1) == [frame]
        wait_for(lambda: vq.used_idx == 1, what="used")
        assert not backend_of(server).queues[1].broken
    finally:
        fe.close()
        mem.close()


@pytest.mark.parametrize("mrg", [True, False], ids=["mrg", "no-mrg"])
def test_12_rx_buffer_straddling_adjacent_regions(server, sock_path, mrg):
    mem = GuestMemoryArea(ADJACENT)
    features = DEFAULT_FEATURES if mrg else DEFAULT_FEATURES & ~bit(Feature.NET_F_MRG_RXBUF)
    fe = make_frontend(sock_path, memory=mem, features=features)
    try:
        be = backend_of(server)
        vq = fe.rx_vq()
        gpa = mem.alloc_at(EDGE - 100, 2048)
        vq.add_chain([], [(gpa, 2048)], token=(gpa, 2048))
        vq.publish_and_kick()
        frame = frame_of(1000, 6)
        server.inject(frame)
        assert fe.recv_frames(timeout=3) == [frame]
        assert be.net.drops["rx_bad_address"] == 0
    finally:
        fe.close()
        mem.close()


# ---------------------------------------------------------------------------------------
# 13. Runts, split headers, 4 GiB lengths


def test_13_tx_chain_no_longer_than_header_dropped(fe, server, sock_path):
    be = backend_of(server)
    vq = fe.tx_vq()
    h = put(fe, bytes(HDR))
    raw_avail(vq, raw_chain(vq, [(h, HDR, 0)]))  # header only
    raw_avail(vq, raw_chain(vq, [(h, 5, 0), (h + 5, 7, 0)]))  # header split, nothing after
    raw_avail(vq, raw_chain(vq, [(h, 5, 0), (h + 5, 7, 0), (h, 13, 0)]))  # 13-byte "frame"
    raw_avail(vq, raw_chain(vq, [(h, 0, 0)]))
    wait_for(lambda: vq.used_idx == 4, what="all four given back")
    assert be.net.drops["tx_runt"] == 4
    assert server.app.frames.empty()
    # a header legally split over descriptors (ANY_LAYOUT / VERSION_1) followed by a frame
    fe.send_frame(frame_of(300, 1), split=[3, 4, 5])
    assert server.app.received(1) == [frame_of(300, 1)]


@pytest.mark.parametrize("where", ["one-descriptor", "second-descriptor", "rx-buffer"])
def test_13_four_gib_length_nothing_allocated(fe, server, sock_path, where):
    be = backend_of(server)
    sync(fe)
    tracemalloc.start(1)
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        if where == "rx-buffer":
            vq = fe.rx_vq()
            gpa = fe.mem.alloc(4096, 16)
            raw_avail(vq, raw_chain(vq, [(gpa, 0xFFFF_FFFF, VIRTQ_DESC_F_WRITE)]))
            frame = frame_of(1000, 2)
            server.inject(frame)
            wait_for(lambda: vq.used_idx == 1, what="rx used")
            # written: the frame only, however large the guest said its buffer was
            assert fe.mem.read(gpa, HDR + 1000)[HDR:] == frame
            assert fe.mem.read(gpa + HDR + 1000, 1024) == bytes(1024)
            used_len = struct.unpack_from("<I", fe.mem.read(vq.used_gpa + 8, 4))[0]
            assert used_len == HDR + 1000
        else:
            vq = fe.tx_vq()
            buf = put(fe, tx_data(frame_of(100)))
            descs = ([(buf, 0xFFFF_FFFF, 0)] if where == "one-descriptor"
                     else [(buf, HDR + 100, 0), (buf, 0xFFFF_FFFF, 0)])
            raw_avail(vq, raw_chain(vq, descs))
            wait_for(lambda: vq.used_idx == 1, what="tx used")
            assert be.net.drops["tx_too_long"] == 1
            assert server.app.frames.empty()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, f"{peak} bytes allocated for a guest-supplied length"
    assert not any(q.broken for q in be.queues)


# ---------------------------------------------------------------------------------------
# 14. The guest rewrites a descriptor between our check and our use


class Rewriter:
    """Wraps one back-end queue's `pop` and `pop_tx_batch` (which validate chains into a
    local snapshot): the moment one returns, the "guest" rewrites everything the chain
    came from. A back-end that read the descriptor, the avail entry or an indirect table
    again after the check would see the rewritten values. `fill_rx` (vu_rx_batch) walks
    and writes within one C call, from its one copy of each descriptor; the rewrite then
    comes after it, and the test checks that nothing is written afterwards."""

    def __init__(self, q, rewrite) -> None:
        self.q = q
        self.rewrite = rewrite
        self.orig = q.pop
        self.orig_batch = q.pop_tx_batch
        self.orig_fill = q.fill_rx
        self.fired = threading.Event()
        q.pop = self.pop
        q.pop_tx_batch = self.pop_tx_batch
        q.fill_rx = self.fill_rx

    def _fire(self) -> None:
        if not self.fired.is_set():
            self.rewrite()
            self.fired.set()

    def pop(self):
        chain = self.orig()
        if chain is not None:
            self._fire()
        return chain

    def pop_tx_batch(self, *args):
        got = self.orig_batch(*args)
        if got[0]:
            self._fire()
        return got

    def fill_rx(self, *args):
        got = self.orig_fill(*args)
        if got[0]:
            self._fire()
        return got

    def remove(self) -> None:
        del self.q.pop
        del self.q.pop_tx_batch
        del self.q.fill_rx


@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect"])
def test_14_tx_descriptor_rewritten_after_check(fe, server, sock_path, indirect):
    be = backend_of(server)
    vq = fe.tx_vq()
    frame = frame_of(500, 1)
    evil = frame_of(500, 99)
    good_gpa = put(fe, tx_data(frame))
    evil_gpa = put(fe, tx_data(evil))
    n = HDR + len(frame)
    if indirect:
        table = put(fe, struct.pack("<QIHH", good_gpa, n, 0, 0))
        head = raw_chain(vq, [(table, 16, VIRTQ_DESC_F_INDIRECT)])
    else:
        head = raw_chain(vq, [(good_gpa, n, 0)])
    other = raw_chain(vq, [(evil_gpa, n, 0)])

    def rewrite():
        entry = struct.pack("<QIHH", evil_gpa, 0xFFFF_0000, VIRTQ_DESC_F_NEXT, head)
        if indirect:
            fe.mem.write(table, entry)
        else:
            vq._write_desc(head, evil_gpa, 0xFFFF_0000, VIRTQ_DESC_F_NEXT, head)
        vq._put16(vq._avail_p, 4, other)  # and the avail entry

    rw = Rewriter(be.queues[1], rewrite)
    try:
        raw_avail(vq, head)
        assert server.app.received(1) == [frame]
        assert rw.fired.is_set()
        wait_for(lambda: vq.used_idx == 1, what="used")
        used_id = struct.unpack_from("<I", fe.mem.read(vq.used_gpa + 4, 4))[0]
        assert used_id == head  # the head we checked, not the one written afterwards
    finally:
        rw.remove()
    assert not be.queues[1].broken
    assert be.net.drops["tx_too_long"] == 0


def test_14_rx_descriptor_rewritten_after_check(fe, server, sock_path):
    be = backend_of(server)
    vq = fe.rx_vq()
    good = fe.mem.alloc(2048, 16)
    canary = fe.mem.alloc(2048, 16)
    fe.mem.write(canary, b"\xa5" * 2048)
    head = raw_chain(vq, [(good, 2048, VIRTQ_DESC_F_WRITE)])

    def rewrite():
        vq._write_desc(head, canary, 2048, VIRTQ_DESC_F_WRITE, 0)

    rw = Rewriter(be.queues[0], rewrite)
    try:
        raw_avail(vq, head)
        frame = frame_of(700, 3)
        server.inject(frame)
        wait_for(lambda: vq.used_idx == 1, what="used")
        assert rw.fired.is_set()
    finally:
        rw.remove()
    assert fe.mem.read(good + HDR, 700) == frame
    assert fe.mem.read(canary, 2048) == b"\xa5" * 2048


# ---------------------------------------------------------------------------------------
# 15. A guest that never refills RX or never reads the used ring


def test_15_never_refilled_rx_bounded_backlog(fe, server, sock_path):
    be = backend_of(server)
    for i in range(2000):
        server.inject(frame_of(1500, i))
    wait_for(lambda: be.net.drops["rx_no_buffer"] >= 2000 - 256, what="drops counted")
    assert be.net.backlog_frames <= 256
    assert be.net._backlog_bytes <= 4 << 20
    # everything else keeps working: TX, control messages
    fe.send_frame(frame_of(140))
    assert server.app.received(1) == [frame_of(140)]
    assert fe.get_status()
    fe.close()
    assert_serving(server, sock_path)


def test_15_never_reads_used_ring(fe, server, sock_path):
    be = backend_of(server)
    rx, tx = fe.rx_vq(), fe.tx_vq()
    fe.post_rx_buffers(16)
    for i in range(300):
        server.inject(frame_of(200, i))
    wait_for(lambda: rx.used_idx == 16, what="the 16 posted buffers used")
    # TX: fill the whole ring and never reap
    sent = 0
    while tx.num_free:
        fe.send_frame(frame_of(100, sent), kick=True)
        sent += 1
    got = [server.app.frames.get(timeout=3) for _ in range(sent)]
    assert len(got) == sent == tx.size
    wait_for(lambda: tx.used_idx == sent, what="tx used")
    with pytest.raises(FrontendError):
        tx.add_chain([(fe.mem.alloc(64), 64)])
    time.sleep(0.1)
    assert rx.used_idx == 16  # never more used entries than buffers posted
    wait_for(lambda: be.net.drops["rx_no_buffer"] >= 300 - 16 - 256, what="drops")
    assert not any(q.broken for q in be.queues)
    fe.close()
    assert_serving(server, sock_path)
