"""The dirty-page log (live migration): every page of guest memory we write while the
front-end logs is marked, by the C batch path and the per-frame Python path alike; no
mark when logging is off; a hostile or short log costs a refusal or a counter, never the
device. QEMU migrating a real guest is tests/e2e/test_migration.py."""

from __future__ import annotations

import mmap
import os
import time

import pytest

from tests.vhostuser.conftest import make_frontend, recv_n
from tests.vhostuser.test_datapath import frame_of
from vhostuser.features import Feature, bit
from vhostuser.frontend import (
    DEFAULT_PROTOCOL_FEATURES,
    FrontendError,
    GuestMemoryArea,
)
from vhostuser.protocol import Message, ProtocolFeature, Request

MiB = 1 << 20
PAGE = 4096
MEM = 16 * MiB


class Log:
    """A log as QEMU makes one: a memfd, a bit per 4 KiB page of guest memory."""

    def __init__(self, nbytes: int = MEM // PAGE // 8) -> None:
        self.fd = os.memfd_create("vhost-log", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, nbytes)
        self.map = mmap.mmap(self.fd, nbytes)
        self.nbytes = nbytes

    def clear(self) -> None:
        self.map[:] = bytes(self.nbytes)

    def pages(self) -> set[int]:
        out = set()
        for i, b in enumerate(self.map[:]):
            for k in range(8):
                if b >> k & 1:
                    out.add(8 * i + k)
        return out

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def changed_pages(before: bytes, after: bytes) -> set[int]:
    return {p for p in range(len(before) // PAGE)
            if before[p * PAGE:(p + 1) * PAGE] != after[p * PAGE:(p + 1) * PAGE]}


def wait_for(pred, timeout: float = 5.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def logged(server, sock_path):
    mem = GuestMemoryArea([(0, MEM)])
    fe = make_frontend(sock_path, memory=mem, protocol_features=DEFAULT_PROTOCOL_FEATURES
                       | bit(ProtocolFeature.LOG_SHMFD))
    log = Log()
    yield fe, mem, log, server
    fe.close()
    mem.close()
    log.close()


def test_log_all_and_shmfd_are_offered(server, sock_path):
    with make_frontend(sock_path) as fe:
        assert fe.backend_features & bit(Feature.LOG_ALL)
        assert fe.backend_protocol_features >> ProtocolFeature.LOG_SHMFD & 1


@pytest.mark.parametrize("buffer", [2048, 512], ids=["one-buffer", "merged-buffers"])
def test_every_page_we_write_while_logging_is_marked(logged, walker, buffer):
    """Guest memory is snapshotted while the driver is still; then only we write (RX
    buffers, used rings): every page that differs afterwards must carry its bit."""
    fe, mem, log, server = logged
    be = server.server.conn.backend
    fe.set_log_base(log.fd, log.nbytes)
    fe.set_logging(True)
    assert be.logging and be.memory.log is be.dirty_log
    rx, tx = fe.rx_vq(), fe.tx_vq()
    fe.post_rx_buffers(96, size=buffer)
    time.sleep(0.05)  # the kick's avail_event write is behind us
    log.clear()
    before = mem.read(0, MEM)
    frames = [frame_of(60 + 97 * i % 1455, i) for i in range(40)]
    for f in frames:
        server.inject(f)
    wait_for(lambda: be.net.stats["guest_rx_frames"] >= 40, what="40 frames written")
    wait_for(lambda: rx.used_idx == be.queues[0].used_idx, what="used idx published")
    time.sleep(0.05)
    after = mem.read(0, MEM)
    changed = changed_pages(before, after)
    assert len(changed) >= 3  # buffers over several pages, and the used ring
    assert changed <= log.pages(), f"written but not logged: {sorted(changed - log.pages())}"
    assert rx.used_gpa // PAGE in log.pages()
    assert recv_n(fe, 40) == frames

    # TX: the device writes only the used ring (the frames it reads are the driver's)
    log.clear()
    out = [frame_of(200 + i, 100 + i) for i in range(20)]
    fe.send_frames(out)
    assert server.app.received(20) == out
    fe.wait_tx_done(3)
    assert tx.used_gpa // PAGE in log.pages()


def test_nothing_is_marked_once_logging_stops(logged):
    fe, _, log, server = logged
    be = server.server.conn.backend
    fe.set_log_base(log.fd, log.nbytes)
    fe.set_logging(True)
    fe.set_logging(False)
    assert not be.logging and be.memory.log is None
    fe.post_rx_buffers(16)
    log.clear()
    for i in range(8):
        server.inject(frame_of(900, i))
    recv_n(fe, 8)
    assert not log.pages()
    assert be.counters["log_starts"] == 1 and be.counters["log_stops"] == 1


def test_a_log_too_small_for_guest_memory_is_marked_where_it_reaches(logged):
    """A log covering 64 KiB of 16 MiB: marks beyond it are counted and skipped; the
    device keeps delivering."""
    fe, mem, _, server = logged
    be = server.server.conn.backend
    small = Log(nbytes=2)
    try:
        fe.set_log_base(small.fd, small.nbytes)
        fe.set_logging(True)
        fe.post_rx_buffers(96)  # 192 KiB of buffers: most lie past the log's 64 KiB
        for i in range(60):
            server.inject(frame_of(1000, i))
        assert recv_n(fe, 60) == [frame_of(1000, i) for i in range(60)]
        assert be.dirty_log.outside > 0
    finally:
        small.close()


def test_hostile_log_bases_are_refused_and_the_device_serves(logged):
    fe, _, log, server = logged
    be = server.server.conn.backend
    # larger than its file (touching the end would SIGBUS us)
    with pytest.raises(FrontendError, match="refused"):
        fe.set_log_base(log.fd, log.nbytes * 64)
    # offset past the file
    with pytest.raises(FrontendError, match="refused"):
        fe.set_log_base(log.fd, log.nbytes, offset=1 << 40)
    # no fd
    reply = fe.request(Message(int(Request.SET_LOG_BASE), payload=bytes(16)))
    assert reply.u64() == 1
    # size 0
    with pytest.raises(FrontendError, match="refused"):
        fe.set_log_base(log.fd, 0)
    assert be.dirty_log is None
    fe.set_logging(True)  # LOG_ALL with no log: nothing to mark, nothing breaks
    fe.post_rx_buffers(4)
    server.inject(frame_of(300, 1))
    assert fe.recv_frames(timeout=3) == [frame_of(300, 1)]
    fe.set_log_base(log.fd, log.nbytes)  # a good one afterwards works
    log.clear()
    server.inject(frame_of(300, 2))
    assert fe.recv_frames(timeout=3) == [frame_of(300, 2)]
    assert log.pages()
