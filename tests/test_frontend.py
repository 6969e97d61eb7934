"""vhostuser.frontend against a tiny fake device written here.

`FakeBackend` is the least a vhost-user back-end can be: it answers the session over the
other end of a socketpair (in a thread), records every message, maps the memory table and
works the rings the way a device does (read avail, walk chains, write used, call). The
ring code here is written from the spec apart from the front-end's, so the two check
each other.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import threading
import time

import pytest

from vhostuser.features import (
    NET_HDR_LEN,
    NET_HDR_LEN_LEGACY,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
    Feature,
    bit,
    bits,
)
from vhostuser.frontend import (
    DEFAULT_FEATURES,
    FrontendError,
    GuestMemoryArea,
    NetFrontend,
    RingFull,
    Virtqueue,
    vring_need_event,
)
from vhostuser.protocol import (
    CONFIG_HEADER,
    FLAG_NEED_REPLY,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    Message,
    MessageDecoder,
    ProtocolFeature,
    Request,
    VringAddr,
    reply_to,
    state_payload,
    u64_payload,
    unpack_mem_table,
    unpack_single_region,
)

MiB = 1 << 20
NET_FEATURES = bits(
    Feature.F_VERSION_1,
    Feature.NET_F_MRG_RXBUF,
    Feature.RING_F_EVENT_IDX,
    Feature.RING_F_INDIRECT_DESC,
    Feature.NET_F_MTU,
    Feature.NET_F_MQ,
    Feature.PROTOCOL_FEATURES,
    Feature.NET_F_CSUM,  # offered, not asked for by default
)
ALL_PROTO = bits(
    ProtocolFeature.MQ,
    ProtocolFeature.REPLY_ACK,
    ProtocolFeature.MTU,
    ProtocolFeature.CONFIG,
    ProtocolFeature.RESET_DEVICE,
    ProtocolFeature.CONFIGURE_MEM_SLOTS,
    ProtocolFeature.STATUS,
    ProtocolFeature.BACKEND_REQ,  # offered, never asked for
)
OWN_REPLY = {
    Request.GET_FEATURES,
    Request.GET_PROTOCOL_FEATURES,
    Request.GET_QUEUE_NUM,
    Request.GET_MAX_MEM_SLOTS,
    Request.GET_VRING_BASE,
    Request.GET_CONFIG,
    Request.GET_STATUS,
}
U16 = struct.Struct("<H")
DESC = struct.Struct("<QIHH")


def frame_of(n: int, seed: int = 0) -> bytes:
    dst, src = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    return dst + src + b"\x08\x00" + bytes((seed + i) & 0xFF for i in range(n - 14))


# ---------------------------------------------------------------------------------------
# The fake device


class DeviceRing:
    """Device side of a split virtqueue, written from virtio 1.2 §2.7."""

    def __init__(self, dev: FakeBackend, index: int) -> None:
        self.dev = dev
        self.index = index
        self.num = 0
        self.last_avail = 0
        self.used_idx = 0
        self.addr: VringAddr | None = None
        self.kick = -1
        self.call = -1
        self.enabled = False
        self.calls = 0

    def _u16(self, uaddr: int, off: int) -> int:
        mm, o = self.dev.uva(uaddr + off)
        return U16.unpack_from(mm, o)[0]

    def _put16(self, uaddr: int, off: int, v: int) -> None:
        mm, o = self.dev.uva(uaddr + off)
        U16.pack_into(mm, o, v & 0xFFFF)

    @property
    def event_idx(self) -> bool:
        return bool(self.dev.acked >> Feature.RING_F_EVENT_IDX & 1)

    def pop(self) -> int | None:
        assert self.addr is not None
        avail_idx = self._u16(self.addr.avail, 2)
        if avail_idx == self.last_avail:
            return None
        head = self._u16(self.addr.avail, 4 + 2 * (self.last_avail % self.num))
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:
            self._put16(self.addr.used, 4 + 8 * self.num, self.last_avail)
        return head

    def chain(self, head: int) -> list[tuple[int, int, bool]]:
        """[(gpa, len, writable)] of the chain at `head`, through an indirect table."""
        out = []
        mm, o = self.dev.uva(self.addr.desc)
        addr, length, flags, nxt = DESC.unpack_from(mm, o + 16 * head)
        if flags & VIRTQ_DESC_F_INDIRECT:
            assert not flags & VIRTQ_DESC_F_NEXT and length % 16 == 0
            table = self.dev.read(addr, length)
            i = 0
            while True:
                a, n, f, nx = DESC.unpack_from(table, 16 * i)
                assert not f & VIRTQ_DESC_F_INDIRECT
                out.append((a, n, bool(f & VIRTQ_DESC_F_WRITE)))
                if not f & VIRTQ_DESC_F_NEXT:
                    return out
                i = nx
        while True:
            out.append((addr, length, bool(flags & VIRTQ_DESC_F_WRITE)))
            if not flags & VIRTQ_DESC_F_NEXT:
                return out
            addr, length, flags, nxt = DESC.unpack_from(mm, o + 16 * nxt)

    def push(self, head: int, written: int) -> None:
        mm, o = self.dev.uva(self.addr.used + 4 + 8 * (self.used_idx % self.num))
        struct.pack_into("<II", mm, o, head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._put16(self.addr.used, 2, self.used_idx)

    def notify(self, old_used: int) -> None:
        if self.event_idx:
            ev = self._u16(self.addr.avail, 4 + 2 * self.num)
            need = (self.used_idx - ev - 1) & 0xFFFF < (self.used_idx - old_used) & 0xFFFF
        else:
            need = not self._u16(self.addr.avail, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT
        if need and self.used_idx != old_used:
            os.eventfd_write(self.call, 1)
            self.calls += 1


class FakeBackend:
    """Answers the session on its end of a socketpair, in a thread; works rings on demand
    (`tx()`, `rx()`, `loopback()`) from the test's thread."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        features: int = NET_FEATURES,
        protocol_features: int = ALL_PROTO,
        queue_num: int = 4,
        config: bytes = bytes(range(32)),
    ) -> None:
        self.sock = sock
        self.features = features
        self.protocol_features = protocol_features
        self.queue_num = queue_num
        self.config = config
        self.acked = 0
        self.acked_proto = 0
        self.status = 0
        self.log: list[tuple[Request, int, int, int]] = []  # request, flags, size, nfds
        self.msgs: list[Message] = []
        self.regions: list[tuple[int, int, int, mmap.mmap, int]] = []  # gpa, size, uaddr, mm, off
        self.rings: dict[int, DeviceRing] = {}
        self.ack_value: dict[int, int] = {}
        self.silent: set[int] = set()  # requests left unanswered
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    # -- memory ---------------------------------------------------------------------------
    def uva(self, addr: int) -> tuple[mmap.mmap, int]:
        for _gpa, size, uaddr, mm, off in self.regions:
            if uaddr <= addr < uaddr + size:
                return mm, off + addr - uaddr
        raise AssertionError(f"uaddr {addr:#x} unmapped")

    def read(self, gpa: int, n: int) -> bytes:
        out = b""
        while n:
            for g, size, _u, mm, off in self.regions:
                if g <= gpa < g + size:
                    k = min(n, g + size - gpa)
                    out += mm[off + gpa - g : off + gpa - g + k]
                    gpa, n = gpa + k, n - k
                    break
            else:
                raise AssertionError(f"gpa {gpa:#x} unmapped")
        return out

    def write(self, gpa: int, data: bytes) -> None:
        while data:
            for g, size, _u, mm, off in self.regions:
                if g <= gpa < g + size:
                    k = min(len(data), g + size - gpa)
                    mm[off + gpa - g : off + gpa - g + k] = data[:k]
                    gpa, data = gpa + k, data[k:]
                    break
            else:
                raise AssertionError(f"gpa {gpa:#x} unmapped")

    def _map(self, region, fd: int) -> None:
        mm = mmap.mmap(fd, region.mmap_offset + region.memory_size, mmap.MAP_SHARED)
        os.close(fd)
        self.regions.append(
            (
                region.guest_phys_addr,
                region.memory_size,
                region.userspace_addr,
                mm,
                region.mmap_offset,
            )
        )

    # -- session --------------------------------------------------------------------------
    def _serve(self) -> None:
        dec = MessageDecoder()
        try:
            while True:
                # Exact reads (header, then payload): a larger read can take the next
                # message's fds along with this message's bytes.
                data, fds, _, _ = socket.recv_fds(self.sock, dec.pending, 8)
                if not data:
                    return
                for msg in dec.feed(data, fds):
                    self._handle(msg)
        except BaseException as e:  # reported by the test through .error
            self.error = e

    def ring(self, i: int) -> DeviceRing:
        return self.rings.setdefault(i, DeviceRing(self, i))

    def _handle(self, msg: Message) -> None:
        req = Request(msg.request)
        self.log.append((req, msg.flags, len(msg.payload), len(msg.fds)))
        self.msgs.append(msg)
        fds = msg.take_fds()
        reply = None
        if req is Request.GET_FEATURES:
            reply = u64_payload(self.features)
        elif req is Request.GET_PROTOCOL_FEATURES:
            reply = u64_payload(self.protocol_features)
        elif req is Request.SET_PROTOCOL_FEATURES:
            self.acked_proto = msg.u64()
        elif req is Request.SET_FEATURES:
            self.acked = msg.u64()
        elif req is Request.GET_QUEUE_NUM:
            reply = u64_payload(self.queue_num)
        elif req is Request.GET_MAX_MEM_SLOTS:
            reply = u64_payload(32)
        elif req is Request.GET_STATUS:
            reply = u64_payload(self.status)
        elif req is Request.SET_STATUS:
            self.status = msg.u64()
        elif req is Request.SET_MEM_TABLE:
            self.regions = []  # old mappings close when garbage
            for r, fd in zip(unpack_mem_table(msg.payload), fds, strict=True):
                self._map(r, fd)
            fds = []
        elif req is Request.ADD_MEM_REG:
            self._map(unpack_single_region(msg.payload), fds.pop())
        elif req is Request.REM_MEM_REG:
            r = unpack_single_region(msg.payload)
            self.regions = [x for x in self.regions if x[0] != r.guest_phys_addr]
        elif req is Request.SET_VRING_NUM:
            i, n = msg.vring_state()
            self.ring(i).num = n
        elif req is Request.SET_VRING_BASE:
            i, n = msg.vring_state()
            self.ring(i).last_avail = self.ring(i).used_idx = n
        elif req is Request.SET_VRING_ADDR:
            a = VringAddr.unpack(msg.payload)
            self.ring(a.index).addr = a
        elif req in (Request.SET_VRING_KICK, Request.SET_VRING_CALL):
            v = msg.u64()
            ring, attr = self.ring(v & VRING_IDX_MASK), req.name[-4:].lower()
            if getattr(ring, attr) >= 0:
                os.close(getattr(ring, attr))
            setattr(ring, attr, -1 if v & VRING_NOFD_MASK else fds.pop())
        elif req is Request.SET_VRING_ENABLE:
            i, on = msg.vring_state()
            self.ring(i).enabled = bool(on)
        elif req is Request.GET_VRING_BASE:
            i, _ = msg.vring_state()
            reply = state_payload(i, self.ring(i).last_avail)
        elif req is Request.GET_CONFIG:
            off, size, _flags = CONFIG_HEADER.unpack_from(msg.payload)
            data = self.config[off : off + size]
            reply = CONFIG_HEADER.pack(off, size, 0) + data if len(data) == size else b""
        for fd in fds:
            os.close(fd)
        if req in self.silent:
            return
        if req in OWN_REPLY:
            self._send(reply_to(msg, reply or b""))
        elif msg.need_reply and self.acked_proto >> ProtocolFeature.REPLY_ACK & 1:
            self._send(reply_to(msg, u64_payload(self.ack_value.get(req, 0))))

    def _send(self, msg: Message) -> None:
        self.sock.sendall(msg.encode())

    # -- device work ----------------------------------------------------------------------
    def tx(self, qp: int = 0) -> list[tuple[bytes, list[tuple[int, int, bool]]]]:
        """Consume the TX ring: [(bytes read, chain)] per chain; notifies."""
        ring = self.ring(2 * qp + 1)
        old, out = ring.used_idx, []
        while (head := ring.pop()) is not None:
            chain = ring.chain(head)
            assert not any(w for _, _, w in chain)
            out.append((b"".join(self.read(a, n) for a, n, _ in chain), chain))
            ring.push(head, 0)
        ring.notify(old)
        return out

    def rx(self, packet: bytes, qp: int = 0, *, mrg: bool = False) -> int:
        """Write `packet` (header included) into RX buffers; with `mrg` across as many as
        it takes, num_buffers patched in. Returns buffers used."""
        ring = self.ring(2 * qp)
        old = ring.used_idx
        heads, pos = [], 0
        while pos < len(packet) or not heads:
            head = ring.pop()
            assert head is not None, "RX ring ran dry"
            ((a, n, w),) = ring.chain(head)
            assert w
            piece = packet[pos : pos + n]
            heads.append((head, a, len(piece)))
            pos += len(piece)
            if not mrg:
                assert pos == len(packet), "packet larger than a buffer"
        if mrg:
            packet = packet[:10] + U16.pack(len(heads)) + packet[12:]
        pos = 0
        for head, a, n in heads:
            self.write(a, packet[pos : pos + n])
            pos += n
            ring.push(head, n)
        ring.notify(old)
        return len(heads)

    def loopback(self, qp: int = 0) -> int:
        """TX chains copied to RX (header and all) with MRG_RXBUF as negotiated."""
        mrg = bool(self.acked >> Feature.NET_F_MRG_RXBUF & 1)
        n = 0
        for data, _ in self.tx(qp):
            self.rx(data, qp, mrg=mrg)
            n += 1
        return n

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # the thread sees EOF and ends
        self.thread.join(2)
        self.sock.close()
        for r in self.rings.values():
            for fd in (r.kick, r.call):
                if fd >= 0:
                    os.close(fd)
        for *_, mm, _off in self.regions:
            mm.close()


@pytest.fixture
def pair():
    """(make(**frontend_kw, backend=dict(...)) -> (fe, dev)); everything closed after."""
    made = []

    def make(*, backend: dict | None = None, **kw):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        dev = FakeBackend(b, **(backend or {}))
        kw.setdefault("timeout", 0.5)
        kw.setdefault("queue_size", 16)
        fe = NetFrontend(sock=a, **kw)
        made.append((fe, dev))
        return fe, dev

    yield make
    for fe, dev in made:
        fe.close()
        dev.close()
        assert dev.error is None, dev.error


def started(make, **kw):
    fe, dev = make(**kw)
    fe.connect()
    fe.start()
    fe.get_features()  # a request with a reply: the back-end has handled all before it
    return fe, dev


# ---------------------------------------------------------------------------------------
# vring_need_event


@pytest.mark.parametrize(
    "event, new, old, want",
    [
        (0, 1, 0, True),  # the one entry published is the one asked for
        (0, 2, 1, False),  # event already passed
        (1, 2, 0, True),
        (2, 2, 0, False),  # event not reached yet
        (5, 10, 5, True),
        (4, 10, 5, False),
        (9, 10, 5, True),
        (0xFFFF, 1, 0xFFFE, True),  # across the u16 wrap
        (0, 1, 0xFFFE, True),
        (1, 1, 0xFFFE, False),
        (7, 7, 7, False),  # nothing published
    ],
)
def test_vring_need_event(event, new, old, want):
    assert vring_need_event(event, new, old) is want


# ---------------------------------------------------------------------------------------
# Guest memory


def test_memory_addresses_and_allocator():
    mem = GuestMemoryArea()
    try:
        (r,) = mem.mem_table()
        assert (r.guest_phys_addr, r.memory_size, r.mmap_offset) == (0, 16 * MiB, 0)
        assert r.userspace_addr == 0x7F0000000000 != r.guest_phys_addr
        a = mem.alloc(100, 64)
        b = mem.alloc(100, 64)
        assert a % 64 == 0 and b % 64 == 0 and b >= a + 100
        before = mem.free_bytes
        mem.free(a)
        assert mem.free_bytes == before + 100
        assert mem.alloc(100, 64) == a  # first fit reuses the hole
        with pytest.raises(FrontendError, match="exhausted"):
            mem.alloc(32 * MiB)
    finally:
        mem.close()


def test_memory_regions_straddle_and_mmap_offset():
    mem = GuestMemoryArea([(0, 1 * MiB), (1 * MiB, 1 * MiB), (4 * MiB, 1 * MiB)], mmap_offset=4096)
    try:
        assert [r.mmap_offset for r in mem.mem_table()] == [4096] * 3
        edge = 1 * MiB
        gpa = mem.alloc_at(edge - 100, 200)
        data = bytes(range(200))
        mem.write(gpa, data)
        assert mem.read(gpa, 200) == data
        # The bytes sit at mmap_offset + (gpa - region gpa) of each region's memfd.
        assert os.pread(mem.regions[0].fd, 100, 4096 + edge - 100) == data[:100]
        assert os.pread(mem.regions[1].fd, 100, 4096) == data[100:]
        with pytest.raises(FrontendError, match="leave region"):
            mem.locate(gpa, 200)
        with pytest.raises(FrontendError, match="no memory region"):
            mem.read(2 * MiB + 10, 4)  # the hole between 2 MiB and 4 MiB
        # one_region allocations never cross an edge; others may.
        mem.free(gpa)
        x = mem.alloc(edge - 64, 16)
        y = mem.alloc(128, 16)
        assert y >= edge
        mem.free(y)
        z = mem.alloc(128, 16, one_region=False)
        assert z == x + edge - 64 and z + 128 > edge
    finally:
        mem.close()


# ---------------------------------------------------------------------------------------
# Virtqueue, checked against the spec's layout


@pytest.fixture
def mem():
    m = GuestMemoryArea([(0, 1 * MiB)])
    yield m
    m.close()


def test_virtqueue_layout_and_chain(mem):
    vq = Virtqueue(mem, 3, 8)
    assert vq.desc_gpa % 16 == 0 and vq.avail_gpa % 2 == 0 and vq.used_gpa % 4 == 0
    a = vq.addr()
    assert a.index == 3 and a.desc == mem.uaddr(vq.desc_gpa) and a.avail == mem.uaddr(vq.avail_gpa)
    head = vq.add_chain([(0x1000, 10), (0x2000, 20)], [(0x3000, 30)])
    d0 = vq.read_desc(head)
    assert d0[:3] == (0x1000, 10, VIRTQ_DESC_F_NEXT)
    d1 = vq.read_desc(d0[3])
    assert d1[:3] == (0x2000, 20, VIRTQ_DESC_F_NEXT)
    d2 = vq.read_desc(d1[3])
    assert d2[:3] == (0x3000, 30, VIRTQ_DESC_F_WRITE)
    assert vq.num_free == 5
    # Nothing visible before publish; entries then idx after.
    assert mem.read(vq.avail_gpa + 2, 2) == b"\0\0"
    assert vq.publish() is True
    assert U16.unpack(mem.read(vq.avail_gpa + 2, 2))[0] == 1
    assert U16.unpack(mem.read(vq.avail_gpa + 4, 2))[0] == head
    # The device suppresses kicks with used.flags NO_NOTIFY (no EVENT_IDX).
    mem.write(vq.used_gpa, U16.pack(VIRTQ_USED_F_NO_NOTIFY))
    vq.add_chain([(0x1000, 1)])
    assert vq.publish() is False
    # The device uses the first chain.
    mem.write(vq.used_gpa + 4, struct.pack("<II", head, 30))
    mem.write(vq.used_gpa + 2, U16.pack(1))
    assert vq.reap() == [(head, 30)]
    assert vq.num_free == 7 and vq.reap() == []


def test_virtqueue_event_idx(mem):
    vq = Virtqueue(mem, 0, 8, event_idx=True)
    avail_event = vq.used_gpa + 4 + 8 * 8
    used_event = vq.avail_gpa + 4 + 2 * 8
    mem.write(avail_event, U16.pack(0))
    vq.add_chain([(0x1000, 1)])
    assert vq.publish() is True  # 0 in [0, 1)
    vq.add_chain([(0x1000, 1)])
    assert vq.publish() is False  # device has not caught up: avail_event still 0
    mem.write(avail_event, U16.pack(2))
    vq.add_chain([(0x1000, 1)])
    vq.add_chain([(0x1000, 1)])
    assert vq.publish() is True  # 2 in [2, 4)
    # Reaping re-arms the call: used_event = last seen used index.
    mem.write(vq.used_gpa + 4, struct.pack("<II", 0, 0))
    mem.write(vq.used_gpa + 2, U16.pack(1))
    vq.reap()
    assert U16.unpack(mem.read(used_event, 2))[0] == 1


def test_virtqueue_indirect_layout(mem):
    vq = Virtqueue(mem, 0, 4, indirect=True)
    free = mem.free_bytes
    head = vq.add_chain([(0x1000, 10), (0x2000, 20)], [(0x3000, 30)], indirect=True)
    table, length, flags, _ = vq.read_desc(head)
    assert (length, flags) == (48, VIRTQ_DESC_F_INDIRECT)
    assert table % 16 == 0 and vq.num_free == 3
    entries = [DESC.unpack_from(mem.read(table, 48), 16 * i) for i in range(3)]
    assert entries == [
        (0x1000, 10, VIRTQ_DESC_F_NEXT, 1),
        (0x2000, 20, VIRTQ_DESC_F_NEXT, 2),
        (0x3000, 30, VIRTQ_DESC_F_WRITE, 0),
    ]
    vq.publish()
    mem.write(vq.used_gpa + 4, struct.pack("<II", head, 30))
    mem.write(vq.used_gpa + 2, U16.pack(1))
    assert vq.reap() == [(head, 30)]
    assert mem.free_bytes == free and vq.num_free == 4  # table freed


def test_virtqueue_full_and_bad_used(mem):
    vq = Virtqueue(mem, 0, 2)
    with pytest.raises(RingFull):
        vq.add_chain([(0, 1)] * 3)
    head = vq.add_chain([(0, 1)])
    vq.publish()
    mem.write(vq.used_gpa + 4, struct.pack("<II", head + 1, 0))  # not an outstanding head
    mem.write(vq.used_gpa + 2, U16.pack(1))
    with pytest.raises(FrontendError, match="not the head"):
        vq.reap()
    mem.write(vq.used_gpa + 2, U16.pack(5))  # further than the ring is long
    with pytest.raises(FrontendError, match="more than 2 past"):
        vq.reap()


# ---------------------------------------------------------------------------------------
# The session


def test_connect_start_sequence_with_reply_ack(pair):
    fe, dev = started(pair, queue_pairs=2)
    # Negotiation: intersection of offers and wants.
    assert fe.features == NET_FEATURES & DEFAULT_FEATURES and not fe.has_feature(Feature.NET_F_CSUM)
    assert dev.acked == fe.features and fe.features >> 30 & 1
    assert dev.acked_proto == ALL_PROTO & ~bit(ProtocolFeature.BACKEND_REQ)
    assert fe.queue_num == 4 and fe.max_mem_slots == 32
    R = Request
    ring_msgs = [
        R.SET_VRING_NUM,
        R.SET_VRING_BASE,
        R.SET_VRING_ADDR,
        R.SET_VRING_KICK,
        R.SET_VRING_CALL,
    ]
    expected = (
        [
            R.GET_FEATURES,
            R.GET_PROTOCOL_FEATURES,
            R.SET_PROTOCOL_FEATURES,
            R.GET_QUEUE_NUM,
            R.GET_MAX_MEM_SLOTS,
            R.SET_OWNER,
            R.SET_FEATURES,
            R.GET_STATUS,
            R.SET_STATUS,
            R.SET_MEM_TABLE,
        ]
        + ring_msgs * 4
        + [R.SET_VRING_ENABLE] * 4
        + [R.GET_STATUS, R.SET_STATUS, R.GET_FEATURES]
    )
    assert [m[0] for m in dev.log] == expected
    sizes = {
        R.GET_FEATURES: 0,
        R.GET_PROTOCOL_FEATURES: 0,
        R.SET_PROTOCOL_FEATURES: 8,
        R.GET_QUEUE_NUM: 0,
        R.GET_MAX_MEM_SLOTS: 0,
        R.SET_OWNER: 0,
        R.SET_FEATURES: 8,
        R.GET_STATUS: 0,
        R.SET_STATUS: 8,
        R.SET_MEM_TABLE: 8 + 32,
        R.SET_VRING_NUM: 8,
        R.SET_VRING_BASE: 8,
        R.SET_VRING_ADDR: 40,
        R.SET_VRING_KICK: 8,
        R.SET_VRING_CALL: 8,
        R.SET_VRING_ENABLE: 8,
    }
    for req, flags, size, nfds in dev.log:
        assert size == sizes[req], req
        assert nfds == (1 if req in (R.SET_MEM_TABLE, R.SET_VRING_KICK, R.SET_VRING_CALL) else 0)
        # need_reply on what has no reply of its own, once REPLY_ACK is agreed.
        want_ack = req not in OWN_REPLY and req is not R.SET_PROTOCOL_FEATURES
        assert bool(flags & FLAG_NEED_REPLY) == want_ack, req
    assert dev.status == 0xF  # ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK
    # Ring addresses are front-end virtual addresses, in order 0..3.
    for i in range(4):
        ring = dev.rings[i]
        assert (ring.num, ring.last_avail, ring.enabled) == (16, 0, True)
        assert ring.addr.desc == fe.mem.uaddr(fe.vq(i).desc_gpa) >= 0x7F0000000000
        assert ring.kick >= 0 and ring.call >= 0


def test_start_sequence_legacy_backend(pair):
    """No PROTOCOL_FEATURES: no protocol negotiation, no acks, no SET_VRING_ENABLE, and
    the 10-byte header without VERSION_1/MRG_RXBUF."""
    fe, dev = started(pair, backend=dict(features=bits(Feature.RING_F_INDIRECT_DESC)))
    assert [m[0] for m in dev.log] == [
        Request.GET_FEATURES,
        Request.SET_OWNER,
        Request.SET_FEATURES,
        Request.SET_MEM_TABLE,
        Request.SET_VRING_NUM,
        Request.SET_VRING_BASE,
        Request.SET_VRING_ADDR,
        Request.SET_VRING_KICK,
        Request.SET_VRING_CALL,
        Request.SET_VRING_NUM,
        Request.SET_VRING_BASE,
        Request.SET_VRING_ADDR,
        Request.SET_VRING_KICK,
        Request.SET_VRING_CALL,
        Request.GET_FEATURES,
    ]
    assert not any(flags & FLAG_NEED_REPLY for _, flags, _, _ in dev.log)
    assert fe.hdr_len == NET_HDR_LEN_LEGACY


def test_mem_table_payload_and_fds(pair):
    mem = GuestMemoryArea([(0, 1 * MiB), (1 * MiB, 1 * MiB)], mmap_offset=8192)
    try:
        fe, dev = started(pair, memory=mem)
        msg = next(m for m in dev.msgs if m.request == Request.SET_MEM_TABLE)
        table = unpack_mem_table(msg.payload)
        assert [
            (r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset) for r in table
        ] == [(0, MiB, 0x7F0000000000, 8192), (MiB, MiB, 0x7F0000100000, 8192)]
        # The device sees the front-end's bytes through its own mapping of the fds.
        gpa = mem.alloc_at(MiB - 8, 16)
        mem.write(gpa, b"0123456789abcdef")
        assert dev.read(gpa, 16) == b"0123456789abcdef"
    finally:
        mem.close()


def test_add_and_remove_region(pair):
    fe, dev = started(pair)
    region = fe.mem.add_region(64 * MiB, MiB)
    fe.add_mem_reg(region)
    fe.rem_mem_reg(region)
    log = [(m[0], m[2], m[3]) for m in dev.log[-2:]]
    assert log == [(Request.ADD_MEM_REG, 40, 1), (Request.REM_MEM_REG, 40, 0)]
    fe.mem.remove_region(region)


def test_stop_returns_ring_bases(pair):
    fe, dev = started(pair)
    fe.post_rx_buffers(3)
    fe.get_features()
    dev.ring(0).pop()
    dev.ring(0).pop()
    assert fe.stop() == [2, 0]
    assert [m[0] for m in dev.log[-2:]] == [Request.GET_VRING_BASE] * 2
    assert fe.vring_bases == {0: 2, 1: 0}


def test_get_config_and_failures(pair):
    fe, dev = started(pair)
    assert fe.get_config(4, 6) == bytes(range(4, 10))
    with pytest.raises(FrontendError, match="GET_CONFIG .* failed"):
        fe.get_config(30, 6)  # past the device's config: empty reply
    dev.ack_value[Request.SET_VRING_ENABLE] = 1
    with pytest.raises(FrontendError, match="SET_VRING_ENABLE failed: back-end acked 0x1"):
        fe.set_vring_enable(0, False)
    dev.silent.add(Request.GET_STATUS)
    with pytest.raises(FrontendError, match="no reply to GET_STATUS within"):
        fe.get_status()


def test_wrong_reply_is_named(pair):
    fe, dev = pair()
    dev.features = 0
    dev.silent.add(Request.GET_FEATURES)
    # A reply of the wrong type, sent by hand before the request.
    dev._send(reply_to(Message(Request.GET_QUEUE_NUM), u64_payload(1)))
    with pytest.raises(FrontendError, match="reply to GET_FEATURES expected, got GET_QUEUE_NUM"):
        fe.get_features()


def test_send_raw_and_nofd(pair):
    fe, dev = started(pair)
    fe.set_vring_call(0, nofd=True)
    fe.send_raw(Message(Request.SET_OWNER, 1 | FLAG_NEED_REPLY).encode())
    assert fe.recv_reply(Request.SET_OWNER).u64() == 0
    fe.get_features()
    assert dev.log[-3][:4] == (Request.SET_VRING_CALL, 1 | FLAG_NEED_REPLY, 8, 0)
    assert dev.msgs[-3].u64() == VRING_NOFD_MASK


# ---------------------------------------------------------------------------------------
# virtio-net over the fake device


def test_tx_frame_seen_by_device_with_header(pair):
    fe, dev = started(pair)
    assert fe.hdr_len == NET_HDR_LEN
    hdr = bytes([1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0])  # NEEDS_CSUM, csum_start 34, offset 16
    frame = frame_of(60)
    head = fe.send_frame(frame, hdr=hdr)
    ((data, chain),) = dev.tx()
    assert data == hdr + frame and len(chain) == 1 and chain[0][1] == 72
    assert fe.counters.kicks == 1 and os.eventfd_read(dev.ring(1).kick) == 1
    fe.wait_tx_done(0.5)
    assert fe.counters.tx_completed == 1 and fe.tx_vq().num_free == 16
    assert head == 0


@pytest.mark.parametrize("split, indirect", [(3, False), ([12], False), (4, True)])
def test_tx_gather_and_indirect(pair, split, indirect):
    fe, dev = started(pair)
    free = fe.mem.free_bytes
    frame = frame_of(200, seed=7)
    fe.send_frame(frame, split=split, indirect=indirect)
    ((data, chain),) = dev.tx()
    assert data == bytes(12) + frame
    assert len(chain) == (split if isinstance(split, int) else 2)
    if split == [12]:
        assert chain[0][1] == 12  # header in its own descriptor
    assert fe.tx_vq().num_free == 16 - (1 if indirect else len(chain))
    fe.wait_tx_done(0.5)
    assert fe.mem.free_bytes == free  # buffers and indirect table given back


def test_send_frames_one_kick_and_event_idx_suppression(pair):
    fe, dev = started(pair)
    fe.send_frames([frame_of(60, i) for i in range(5)])
    assert fe.counters.kicks == 1 and fe.counters.tx_frames == 5
    assert os.eventfd_read(dev.ring(1).kick) == 1
    # The device has not consumed anything: avail_event is still 0, so no new kick.
    fe.send_frame(frame_of(60))
    assert fe.counters.kicks == 1 and fe.counters.kicks_suppressed == 1
    assert len(dev.tx()) == 6  # the device catches up, avail_event = 6
    fe.send_frame(frame_of(60))
    assert fe.counters.kicks == 2


def test_no_event_idx_kicks_follow_no_notify(pair):
    fe, dev = started(pair, features=DEFAULT_FEATURES & ~bit(Feature.RING_F_EVENT_IDX))
    fe.send_frame(frame_of(60))
    assert fe.counters.kicks == 1
    ring = dev.ring(1)
    ring._put16(ring.addr.used, 0, VIRTQ_USED_F_NO_NOTIFY)
    fe.send_frame(frame_of(60))
    assert fe.counters.kicks == 1 and fe.counters.kicks_suppressed == 1


def test_rx_single_buffer_without_mrg(pair):
    fe, dev = started(pair, features=bits(Feature.F_VERSION_1, Feature.PROTOCOL_FEATURES))
    fe.post_rx_buffers(4, size=256)
    fe.get_features()
    frame = frame_of(100)
    hdr = bytes([2]) + bytes(9) + U16.pack(1)  # DATA_VALID, num_buffers 1
    dev.rx(hdr + frame)
    (pkt,) = fe.recv_packets(0.5)
    assert (pkt.hdr, pkt.frame, pkt.num_buffers) == (hdr, frame, 1)
    assert dev.ring(0).calls == 1 and fe.counters.calls == 1
    assert fe.rx_vq().num_free == 16 - 4  # the buffer went straight back
    assert fe.recv_frames(0.01) == []


def test_rx_mergeable_buffers(pair):
    fe, dev = started(pair)
    fe.post_rx_buffers(8, size=64)
    fe.get_features()
    frames = [frame_of(150, 1), frame_of(40, 2)]
    assert dev.rx(bytes(12) + frames[0], mrg=True) == 3  # 162 bytes over 64-byte buffers
    assert dev.rx(bytes(12) + frames[1], mrg=True) == 1
    pkts = fe.recv_packets(0.5)
    assert [p.frame for p in pkts] == frames and [p.num_buffers for p in pkts] == [3, 1]
    assert fe.counters.rx_buffers == 4 and fe.counters.rx_posted == 12


def test_rx_mergeable_chain_split_across_calls(pair):
    fe, dev = started(pair)
    fe.post_rx_buffers(4, size=64)
    fe.get_features()
    ring = dev.ring(0)
    packet = bytes(10) + U16.pack(2) + frame_of(100)
    h1, h2 = ring.pop(), ring.pop()
    ((a1, _, _),) = ring.chain(h1)
    ((a2, _, _),) = ring.chain(h2)
    dev.write(a1, packet[:64])
    ring.push(h1, 64)
    assert fe.recv_frames(0.01) == []  # half a packet is kept, not returned
    dev.write(a2, packet[64:])
    ring.push(h2, len(packet) - 64)
    assert fe.recv_frames(0.5) == [packet[12:]]


def test_rx_device_overrun_is_an_error(pair):
    fe, dev = started(pair)
    fe.post_rx_buffers(1, size=64)
    fe.get_features()
    ring = dev.ring(0)
    head = ring.pop()
    ring.push(head, 65)
    with pytest.raises(FrontendError, match="wrote 65 bytes into a 64-byte buffer"):
        fe.recv_frames(0.1)


def test_loopback_thread_multi_queue(pair):
    """A device thread that waits on the kick eventfds, as a real back-end would."""
    fe, dev = started(pair, queue_pairs=2, queue_size=64)
    for qp in range(2):
        fe.post_rx_buffers(32, size=128, queue_pair=qp)  # two per frame at most
    stop = threading.Event()

    def device():
        import select

        kicks = {dev.ring(2 * qp + 1).kick: qp for qp in range(2)}
        while not stop.is_set():
            r, _, _ = select.select(list(kicks), [], [], 0.01)
            for fd in r:
                os.eventfd_read(fd)
                dev.loopback(kicks[fd])

    t = threading.Thread(target=device, daemon=True)
    t.start()
    try:
        sent = {qp: [frame_of(60 + 20 * i, qp) for i in range(10)] for qp in range(2)}
        for qp in range(2):
            for f in sent[qp]:
                fe.send_frame(f, queue_pair=qp)
        for qp in range(2):
            got: list[bytes] = []
            deadline = time.monotonic() + 2
            while len(got) < 10 and time.monotonic() < deadline:
                got += fe.recv_frames(0.2, queue_pair=qp)
            assert got == sent[qp]
        fe.wait_tx_done(1.0)
    finally:
        stop.set()
        t.join(1)


def test_reset_device_then_restart(pair):
    fe, dev = started(pair)
    fe.reset_device()
    assert fe.vqs == []
    fe.start()
    fe.get_features()
    fe.post_rx_buffers(2, size=128)
    fe.send_frame(frame_of(60))
    assert dev.loopback() == 1
    assert fe.recv_frames(0.5) == [frame_of(60)]


def test_reset_and_close_give_memory_back(pair):
    fe, dev = started(pair)
    free = fe.mem.free_bytes
    fe.post_rx_buffers(4)
    fe.send_frame(frame_of(60), indirect=True)
    fe.reset_device()  # rings, RX buffers, TX buffers and the indirect table all freed
    assert fe.mem.free_bytes > free
    fe.start()
    assert fe.mem.free_bytes == free
    fe.wait_tx_done(0.1)  # nothing in flight, nothing to kick
    assert fe.counters.kicks_suppressed == 0


def test_tx_buffer_straddling_regions(pair):
    mem = GuestMemoryArea([(0, 1 * MiB), (1 * MiB, 1 * MiB)], mmap_offset=4096)
    try:
        fe, dev = started(pair, memory=mem)
        data = bytes(12) + frame_of(100)
        gpa = mem.alloc_at(MiB - 50, len(data))
        mem.write(gpa, data)
        vq = fe.tx_vq()
        vq.add_chain([(gpa, len(data))])
        vq.publish_and_kick()
        ((seen, chain),) = dev.tx()
        assert seen == data and chain == [(gpa, len(data), False)]
        assert vq.reap() == [(0, 0)]
        mem.free(gpa)
    finally:
        fe.close()
        mem.close()


def test_connect_by_socket_path(tmp_path):
    path = str(tmp_path / "vhost.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    fe = NetFrontend(path, queue_size=8, timeout=0.5)
    accepted: list[FakeBackend] = []
    t = threading.Thread(target=lambda: accepted.append(FakeBackend(listener.accept()[0])))
    t.start()
    try:
        fe.connect()
        fe.start()
        fe.post_rx_buffers(2)
        fe.send_frame(frame_of(60))
        fe.get_features()
        t.join(1)
        assert accepted[0].loopback() == 1
        assert fe.recv_frames(0.5) == [frame_of(60)]
    finally:
        fe.close()
        t.join(1)
        for dev in accepted:
            dev.close()
        listener.close()
    with pytest.raises(FrontendError, match="cannot connect"):
        NetFrontend(path).connect()
