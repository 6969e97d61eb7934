"""The vhost-user codec, the stream decoder, and the sans-I/O back-end driven directly.

No socket here: `Harness` hands `Message`s to `VhostUserBackend.handle` the way the runtime
does, with real memfd guest memory (the front-end's `GuestMemoryArea`) and the front-end's
driver-side `Virtqueue` to post buffers and reap used entries.
"""

from __future__ import annotations

import logging
import os
import random
import struct

import pytest

from vhostuser.backend import DEFAULT_FEATURES as BACKEND_FEATURES
from vhostuser.backend import NET_CONFIG, BackendConfig, VhostUserBackend
from vhostuser.errors import ProtocolError
from vhostuser.features import (
    STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    Feature,
    bit,
    has,
)
from vhostuser.frontend import DEFAULT_FEATURES, GuestMemoryArea
from vhostuser.frontend import Virtqueue as DriverQueue
from vhostuser.memory import MAX_SLOTS
from vhostuser.protocol import (
    CONFIG_HEADER,
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER_SIZE,
    MAX_PAYLOAD,
    VERSION,
    VRING_NOFD_MASK,
    MemRegion,
    Message,
    MessageDecoder,
    ProtocolFeature,
    Request,
    VringAddr,
    pack_mem_table,
    pack_single_region,
    state_payload,
    u64_payload,
    unpack_mem_table,
    unpack_single_region,
)

R = Request
MiB = 1 << 20
ALL_PROTOCOL = sum(1 << int(f) for f in ProtocolFeature)


def frame_of(size: int, seed: int = 0) -> bytes:
    head = bytes.fromhex("525400123456") + bytes.fromhex("52550a000202") + b"\x88\xb5"
    return head + bytes((i * 7 + seed) & 0xFF for i in range(size - len(head)))


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


def new_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


# ---------------------------------------------------------------------------------------
# A front-end without a socket


class Harness:
    """Drives a `VhostUserBackend` with messages built here, over memfd guest memory.

    Every fd passed to `send` is dup'ed first: the back-end owns (and must close) the copy,
    the test keeps the original. `sent_fds` lists every copy handed over, so a test can
    check they were all closed.
    """

    def __init__(self, *, queue_pairs: int = 1, layout=((0, 16 * MiB),), queue_size: int = 64,
                 config: BackendConfig | None = None) -> None:
        self.be = VhostUserBackend(config or BackendConfig(queue_pairs=queue_pairs))
        self.mem = GuestMemoryArea(layout)
        self.queue_size = queue_size
        self.vqs: list[DriverQueue] = []
        self.sent_fds: list[int] = []
        self.features = 0
        self.protocol = 0

    @property
    def net(self):
        return self.be.net

    def close(self) -> None:
        self.be.close()
        for vq in self.vqs:
            vq.close()
        self.mem.close()

    # -- messages --------------------------------------------------------------------
    def send(self, req: int, payload: bytes = b"", fds=(), *, need_reply: bool = True
             ) -> Message | None:
        copies = [os.dup(f) for f in fds]
        self.sent_fds.extend(copies)
        flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        return self.be.handle(Message(int(req), flags, payload, copies))

    def ack(self, req: int, payload: bytes = b"", fds=()) -> int:
        """Send with need_reply; return the REPLY_ACK value (REPLY_ACK must be on)."""
        reply = self.send(req, payload, fds)
        assert reply is not None, f"{Request(req).name}: need_reply without an answer"
        assert reply.request == req and reply.flags == VERSION | FLAG_REPLY
        assert len(reply.payload) == 8
        return reply.u64()

    def ok(self, req: int, payload: bytes = b"", fds=()) -> None:
        value = self.ack(req, payload, fds)
        assert value == 0, f"{Request(req).name} failed (ack {value})"

    def u64(self, req: int, payload: bytes = b"") -> int:
        reply = self.send(req, payload, need_reply=False)
        assert reply is not None and reply.flags & FLAG_REPLY and len(reply.payload) == 8
        return reply.u64()

    # -- QEMU's sequence -------------------------------------------------------------
    def connect(self, protocol: int | None = ALL_PROTOCOL) -> None:
        offered = self.u64(R.GET_FEATURES)
        assert has(offered, Feature.PROTOCOL_FEATURES)
        if protocol is not None:
            self.protocol = self.u64(R.GET_PROTOCOL_FEATURES) & protocol
            assert self.send(R.SET_PROTOCOL_FEATURES, u64_payload(self.protocol),
                             need_reply=False) is None
        if self.protocol >> ProtocolFeature.MQ & 1:
            assert self.u64(R.GET_QUEUE_NUM) == len(self.be.queues) // 2
        if self.protocol >> ProtocolFeature.CONFIGURE_MEM_SLOTS & 1:
            assert self.u64(R.GET_MAX_MEM_SLOTS) == MAX_SLOTS
        self.msg(R.SET_OWNER)

    def msg(self, req: int, payload: bytes = b"", fds=()) -> None:
        """A request without a reply of its own: acked when REPLY_ACK is on."""
        if self.protocol >> ProtocolFeature.REPLY_ACK & 1:
            self.ok(req, payload, fds)
        else:
            assert self.send(req, payload, fds, need_reply=False) is None

    def start(self, features: int = DEFAULT_FEATURES, *, bases: dict[int, int] | None = None,
              enable: bool = True, kick: bool = True) -> None:
        offered = self.u64(R.GET_FEATURES)
        if self.protocol == 0:
            features &= ~bit(Feature.PROTOCOL_FEATURES)
        self.features = features & offered
        self.msg(R.SET_FEATURES, u64_payload(self.features))
        if self.protocol >> ProtocolFeature.STATUS & 1:
            self.msg(R.SET_STATUS, u64_payload(self.u64(R.GET_STATUS) | STATUS_FEATURES_OK))
        self.set_mem_table()
        if not self.vqs:
            ev = has(self.features, Feature.RING_F_EVENT_IDX)
            ind = has(self.features, Feature.RING_F_INDIRECT_DESC)
            for i in range(len(self.be.queues)):
                vq = DriverQueue(self.mem, i, self.queue_size, event_idx=ev, indirect=ind)
                vq.kick_fd, vq.call_fd = new_eventfd(), new_eventfd()
                self.vqs.append(vq)
        for vq in self.vqs:
            i = vq.index
            self.msg(R.SET_VRING_NUM, state_payload(i, vq.size))
            self.msg(R.SET_VRING_BASE, state_payload(i, (bases or {}).get(i, vq.avail_idx)))
            self.msg(R.SET_VRING_ADDR, vq.addr().pack())
            if kick:
                self.msg(R.SET_VRING_KICK, u64_payload(i), [vq.kick_fd])
            self.msg(R.SET_VRING_CALL, u64_payload(i), [vq.call_fd])
        if enable and has(self.features, Feature.PROTOCOL_FEATURES):
            for vq in self.vqs:
                self.msg(R.SET_VRING_ENABLE, state_payload(vq.index, 1))
        if self.protocol >> ProtocolFeature.STATUS & 1:
            self.msg(R.SET_STATUS, u64_payload(self.u64(R.GET_STATUS) | STATUS_ACKNOWLEDGE
                                               | STATUS_DRIVER | STATUS_DRIVER_OK))

    def set_mem_table(self, regions=None) -> None:
        regions = self.mem.regions if regions is None else regions
        self.msg(R.SET_MEM_TABLE, pack_mem_table([r.describe() for r in regions]),
                 [r.fd for r in regions])

    def get_vring_base(self, index: int) -> int:
        reply = self.send(R.GET_VRING_BASE, state_payload(index, 0), need_reply=False)
        assert reply is not None and len(reply.payload) == 8
        ring, num = reply.vring_state()
        assert ring == index
        return num

    # -- frames ----------------------------------------------------------------------
    @property
    def hdr_len(self) -> int:
        return self.be.net.hdr_len

    def tx(self, frame: bytes, qp: int = 0, *, split: int = 1, publish: bool = True) -> int:
        """Put hdr + frame on TX ring 2qp+1 (in `split` descriptors)."""
        data = bytes(self.hdr_len) + frame
        step = -(-len(data) // split)
        bufs = []
        for k in range(0, len(data), step):
            piece = data[k:k + step]
            gpa = self.mem.alloc(len(piece), 8)
            self.mem.write(gpa, piece)
            bufs.append((gpa, len(piece)))
        vq = self.vqs[2 * qp + 1]
        head = vq.add_chain(bufs, [], token=[g for g, _ in bufs])
        if publish:
            vq.publish()
        return head

    def post_rx(self, count: int, size: int = 2048, qp: int = 0) -> None:
        vq = self.vqs[2 * qp]
        for _ in range(count):
            gpa = self.mem.alloc(size, 16)
            vq.add_chain([], [(gpa, size)], token=(gpa, size))
        vq.publish()

    def drain(self) -> list[bytes]:
        """Every frame the guest sent, as the stack would take them."""
        got: list[bytes] = []
        self.net.drain_tx(lambda f: got.append(bytes(f)))
        self.net.flush()
        return got

    def reap_rx(self, qp: int = 0) -> list[bytes]:
        """Frames written into RX buffers (one buffer each), header stripped."""
        out = []
        for _head, length, (gpa, _size) in self.vqs[2 * qp].reap_tokens():
            data = self.mem.read(gpa, length)
            out.append(data[self.hdr_len:])
            self.mem.free(gpa)
        return out


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


@pytest.fixture
def running(h):
    h.connect()
    h.start()
    return h


# ---------------------------------------------------------------------------------------
# Codec


def test_u64_round_trip():
    for v in (0, 1, 0x1234_5678_9ABC_DEF0, (1 << 64) - 1):
        payload = u64_payload(v)
        assert payload == struct.pack("<Q", v)
        assert Message(R.SET_FEATURES, payload=payload).u64() == v
    assert u64_payload(1 << 64) == u64_payload(0)  # masked, never an OverflowError
    with pytest.raises(ValueError):
        Message(R.SET_FEATURES, payload=b"\0" * 7).u64()


def test_vring_state_round_trip():
    payload = state_payload(3, 0xFFFF)
    assert payload == bytes.fromhex("03000000ffff0000")
    assert Message(R.SET_VRING_BASE, payload=payload).vring_state() == (3, 0xFFFF)
    with pytest.raises(ValueError):
        Message(R.SET_VRING_BASE, payload=b"\0" * 4).vring_state()


def test_vring_addr_round_trip():
    a = VringAddr(1, 0, 0x7F00_0000_1000, 0x7F00_0000_3000, 0x7F00_0000_2000, 0xDEAD)
    raw = a.pack()
    assert len(raw) == 40
    assert raw[:8] == bytes.fromhex("0100000000000000")
    assert raw[8:16] == struct.pack("<Q", 0x7F00_0000_1000)  # desc, used, avail, log
    assert raw[16:24] == struct.pack("<Q", 0x7F00_0000_3000)
    assert VringAddr.unpack(raw) == a


def test_mem_table_round_trip():
    regions = [MemRegion(i * 0x10_0000, 0x10_0000, 0x7F00_0000_0000 + i * 0x10_0000, i * 4096)
               for i in range(8)]
    raw = pack_mem_table(regions)
    assert len(raw) == 8 + 32 * 8
    assert raw[:8] == bytes.fromhex("0800000000000000")
    assert unpack_mem_table(raw) == regions
    assert unpack_mem_table(pack_mem_table([])) == []
    with pytest.raises(ValueError):
        unpack_mem_table(raw[:-1])
    with pytest.raises(ValueError):
        unpack_mem_table(pack_mem_table(regions + regions[:1]))  # 9 regions
    with pytest.raises(ValueError):
        unpack_mem_table(b"\1\0\0")


def test_single_region_round_trip():
    r = MemRegion(0x1000, 0x2000, 0x7F00_0000_1000, 0x40)
    raw = pack_single_region(r)
    assert len(raw) == 40 and raw[:8] == bytes(8)
    assert unpack_single_region(raw) == r
    with pytest.raises(ValueError):
        unpack_single_region(raw[:39])


def test_config_round_trip():
    data = bytes(range(17))
    raw = CONFIG_HEADER.pack(4, len(data), 0) + data
    assert CONFIG_HEADER.unpack_from(raw) == (4, 17, 0)
    assert raw[CONFIG_HEADER.size:] == data


def test_message_encode_and_flags():
    m = Message(R.GET_VRING_BASE, VERSION | FLAG_NEED_REPLY, state_payload(1, 0))
    raw = m.encode()
    assert raw[:HEADER_SIZE] == struct.pack("<III", 11, 0x9, 8)
    assert m.need_reply and not m.is_reply and m.name == "GET_VRING_BASE"
    assert Message(99).name == "UNKNOWN(99)"


# ---------------------------------------------------------------------------------------
# Decoder


def _stream() -> list[tuple[Message, int]]:
    """(message, number of fds it carries) covering every payload shape."""
    out = [
        (Message(R.GET_FEATURES), 0),
        (Message(R.SET_FEATURES, payload=u64_payload(DEFAULT_FEATURES)), 0),
        (Message(R.SET_MEM_TABLE, payload=pack_mem_table(
            [MemRegion(0, MiB, 0x7F00_0000_0000, 0), MemRegion(MiB, MiB, 0x7F00_0010_0000, 0)]
        )), 2),
        (Message(R.SET_VRING_NUM, VERSION | FLAG_NEED_REPLY, state_payload(0, 256)), 0),
        (Message(R.SET_VRING_ADDR, payload=VringAddr(0, 0, 1, 2, 3, 4).pack()), 0),
        (Message(R.SET_VRING_KICK, payload=u64_payload(0)), 1),
        (Message(R.SET_VRING_CALL, payload=u64_payload(1 | VRING_NOFD_MASK)), 0),
        (Message(R.ADD_MEM_REG, payload=pack_single_region(MemRegion(0, 1, 2, 3))), 1),
        (Message(R.GET_CONFIG, payload=CONFIG_HEADER.pack(0, 12, 0) + bytes(12)), 0),
        (Message(R.RESET_DEVICE), 0),
        (Message(R.SET_VRING_CALL, payload=u64_payload(0)), 1),
        (Message(R.GET_STATUS), 0),
    ]
    return out * 4


def _check_decoded(got: list[Message], msgs, fd_lists) -> None:
    assert [(m.request, m.flags, m.payload) for m in got] == [
        (m.request, m.flags, m.payload) for m, _ in msgs]
    for m, fds in zip(got, fd_lists, strict=True):
        assert m.fds == fds, f"{m.name}: fds {m.fds}, expected {fds}"


@pytest.fixture
def stream_with_fds():
    msgs = _stream()
    fd_lists, opened = [], []
    for _, n in msgs:
        fds = [new_eventfd() for _ in range(n)]
        opened.extend(fds)
        fd_lists.append(fds)
    yield msgs, fd_lists
    for fd in opened:
        if fd_is_open(fd):
            os.close(fd)


def test_decoder_whole_stream():
    msgs = _stream()
    data = b"".join(m.encode() for m, _ in msgs)
    dec = MessageDecoder()
    got = list(dec.feed(data))
    _check_decoded(got, msgs, [[] for _ in msgs])
    assert not dec.mid_message and dec.pending == HEADER_SIZE


def test_decoder_message_at_a_time_with_fds(stream_with_fds):
    msgs, fd_lists = stream_with_fds
    dec = MessageDecoder()
    got = []
    for (m, _), fds in zip(msgs, fd_lists, strict=True):
        got.extend(dec.feed(m.encode(), fds))
    _check_decoded(got, msgs, fd_lists)


def test_decoder_one_byte_at_a_time_with_fds(stream_with_fds):
    msgs, fd_lists = stream_with_fds
    dec = MessageDecoder()
    got = []
    for (m, _), fds in zip(msgs, fd_lists, strict=True):
        raw = m.encode()
        for k in range(len(raw)):
            got.extend(dec.feed(raw[k:k + 1], fds if k == 0 else ()))
            if k < len(raw) - 1:
                assert dec.mid_message
    _check_decoded(got, msgs, fd_lists)


@pytest.mark.parametrize("seed", range(5))
def test_decoder_random_splits_with_fds(stream_with_fds, seed):
    """Chunks split anywhere, fds arriving with the chunk holding the message's first byte
    (what the socket delivers: SCM_RIGHTS travels with the bytes it was sent with)."""
    msgs, fd_lists = stream_with_fds
    rng = random.Random(seed)
    dec = MessageDecoder()
    got = []
    for (m, _), fds in zip(msgs, fd_lists, strict=True):
        raw = m.encode()
        cuts = sorted(rng.sample(range(1, len(raw)), min(3, len(raw) - 1)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        for k, piece in enumerate(pieces):
            got.extend(dec.feed(piece, fds if k == 0 else ()))
    _check_decoded(got, msgs, fd_lists)


def test_decoder_pending_is_exact():
    dec = MessageDecoder()
    raw = Message(R.SET_VRING_ADDR, payload=bytes(40)).encode()
    assert dec.pending == HEADER_SIZE
    assert list(dec.feed(raw[:5])) == []
    assert dec.pending == HEADER_SIZE - 5
    assert list(dec.feed(raw[5:12])) == []
    assert dec.pending == 40
    assert len(list(dec.feed(raw[12:]))) == 1
    assert dec.pending == HEADER_SIZE


@pytest.mark.parametrize("header", [
    struct.pack("<III", 1, 0, 0),  # version 0
    struct.pack("<III", 1, 2, 0),  # version 2
    struct.pack("<III", 5, 1, MAX_PAYLOAD + 1),
    struct.pack("<III", 5, 1, 0xFFFF_FFFF),
], ids=["version0", "version2", "size-over-max", "size-4g"])
def test_decoder_rejects_bad_headers_and_closes_fds(header):
    dec = MessageDecoder()
    fd = new_eventfd()
    with pytest.raises(ProtocolError):
        list(dec.feed(header, [fd]))
    assert not fd_is_open(fd)
    assert not dec.mid_message
    # the decoder is usable again (the caller closes the connection anyway)
    assert len(list(dec.feed(Message(R.GET_FEATURES).encode()))) == 1


def test_decoder_close_drops_half_message_fds():
    dec = MessageDecoder()
    fds = [new_eventfd(), new_eventfd()]
    assert list(dec.feed(Message(R.SET_MEM_TABLE, payload=bytes(72)).encode()[:20], fds)) == []
    dec.close()
    assert not any(fd_is_open(fd) for fd in fds)


def test_decoder_too_many_fds_closes_them():
    dec = MessageDecoder()
    fds = [new_eventfd() for _ in range(33)]
    with pytest.raises(ProtocolError):
        list(dec.feed(b"\x01", fds))
    assert not any(fd_is_open(fd) for fd in fds)


# ---------------------------------------------------------------------------------------
# The back-end through QEMU's sequence


def test_qemu_sequence(h):
    h.connect()
    assert h.be.owner
    assert h.be.acked_protocol == h.protocol
    for q in h.be.queues:  # rings start stopped and disabled
        assert not q.started and not q.enabled
    h.start()
    assert h.be.acked_features == h.features
    assert h.be.net.hdr_len == 12
    assert h.be.memory.regions and h.be.memory.regions[0].size == 16 * MiB
    for q in h.be.queues:
        assert q.started and q.enabled and q.mapped and q.size == 64
    assert h.u64(R.GET_STATUS) == (STATUS_FEATURES_OK | STATUS_ACKNOWLEDGE | STATUS_DRIVER
                                   | STATUS_DRIVER_OK)
    # frames both ways
    frames = [frame_of(60 + i, i) for i in range(5)]
    for f in frames:
        h.tx(f)
    assert h.drain() == frames
    assert len(h.vqs[1].reap()) == 5
    h.post_rx(8)
    for f in frames:
        h.net.send(f)
    assert h.net.flush() >= 1
    assert h.vqs[0].drain_call() >= 1
    assert h.reap_rx() == frames


def test_kept_fds_are_closed_on_close(h):
    h.connect()
    h.start()
    # Kick and call of every ring are kept, the memfd copies closed (fd numbers are
    # reused, so count them).
    kept = [fd for q in h.be.queues for fd in (q.kick_fd, q.call_fd)]
    assert None not in kept and all(fd in h.sent_fds for fd in kept)
    before = nfds()
    h.be.close()
    # CPython's mmap holds a dup of its fd: one per mapped region goes with the unmap
    assert nfds() == before - len(kept) - 1
    assert not h.be.memory.regions


def test_get_config_mac_and_mtu(h):
    h.connect()
    reply = h.send(R.GET_CONFIG, CONFIG_HEADER.pack(0, NET_CONFIG.size, 0)
                   + bytes(NET_CONFIG.size))
    assert reply is not None and len(reply.payload) == CONFIG_HEADER.size + NET_CONFIG.size
    mac, status, pairs, mtu, _speed, _duplex = NET_CONFIG.unpack(reply.payload[12:])
    assert mac == h.be.config.mac and status & 1 and pairs == 1 and mtu == 1500
    h.ok(R.NET_SET_MTU, u64_payload(9000))
    reply = h.send(R.GET_CONFIG, CONFIG_HEADER.pack(10, 2, 0) + bytes(2))
    assert reply is not None and reply.payload[12:] == struct.pack("<H", 9000)
    assert h.be.net.capabilities().mtu == 9000
    # out of range: refused, old value kept
    assert h.ack(R.NET_SET_MTU, u64_payload(67)) != 0
    assert h.ack(R.NET_SET_MTU, u64_payload(65536)) != 0
    assert h.be.mtu == 9000
    # a read past the config space: an empty (failed) reply, the connection goes on
    reply = h.send(R.GET_CONFIG, CONFIG_HEADER.pack(16, 4, 0) + bytes(4))
    assert reply is not None and reply.payload == b""
    assert h.ack(R.SET_CONFIG, CONFIG_HEADER.pack(0, 6, 0) + bytes(6)) != 0


def test_send_rarp_frame_comes_out_of_receive(running):
    h = running
    mac = bytes.fromhex("525400abcdef")
    h.ok(R.SEND_RARP, mac + b"\0\0")
    tokens = h.net.receive()
    assert tokens is not None
    frame = tokens[0].consume(bytes)
    assert len(frame) == 60
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac
    assert frame[12:14] == b"\x80\x35"  # RARP
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 3)
    assert frame[22:28] == mac and frame[32:38] == mac
    assert h.be.counters["rarp"] == 1
    assert h.net.receive() is None
    assert h.vqs[1].used_idx == 0  # nothing on the guest's rings


def test_get_vring_base_returns_next_avail_and_stops(running):
    h = running
    for i in range(3):
        h.tx(frame_of(100, i))
    assert len(h.drain()) == 3
    h.tx(frame_of(100, 9))  # posted, never taken: the base says where to resume
    base = h.get_vring_base(1)
    assert base == 3
    q = h.be.queues[1]
    assert not q.started and not q.ready and q.kick_fd is None
    assert h.drain() == []
    assert h.vqs[1].used_idx == 3
    assert h.get_vring_base(0) == 0


def test_reset_device_forgets_rings_keeps_memory(running):
    h = running
    before = nfds()
    h.ok(R.RESET_DEVICE)
    assert nfds() == before - 2 * len(h.be.queues)  # kick and call fds closed
    for q in h.be.queues:
        assert not q.started and not q.enabled and not q.configured
        assert q.kick_fd is None and q.call_fd is None
    assert h.be.memory.regions
    assert h.be.status == 0
    # and it starts again
    for vq in h.vqs:
        vq.close()
    h.vqs = []
    h.start()
    h.tx(frame_of(80))
    assert h.drain() == [frame_of(80)]


def test_set_status_zero_keeps_the_rings_until_get_vring_base(running):
    """QEMU 7.2 stops a device with SET_STATUS 0 *before* GET_VRING_BASE: the bases it
    then gets (and saves with a migrating guest) must be where the rings really are."""
    h = running
    for i in range(3):
        h.tx(frame_of(70 + i))
    assert len(h.drain()) == 3
    h.ok(R.SET_STATUS, u64_payload(0))
    assert h.u64(R.GET_STATUS) == 0
    assert all(q.configured for q in h.be.queues)
    reply = h.send(R.GET_VRING_BASE, state_payload(1, 0), need_reply=False)
    assert reply.vring_state() == (1, 3)
    assert not h.be.queues[1].started
    assert h.ack(R.SET_STATUS, u64_payload(0x100)) != 0


def test_reset_owner_disables_rings_and_keeps_going(running):
    h = running
    h.ok(R.RESET_OWNER)
    assert not any(q.enabled for q in h.be.queues)
    h.tx(frame_of(70))
    assert h.drain() == []  # disabled TX: drained and discarded
    assert h.be.net.drops["tx_queue_disabled"] == 1
    assert h.u64(R.GET_FEATURES)  # still answering
    h.ok(R.SET_VRING_ENABLE, state_payload(1, 1))
    h.tx(frame_of(71))
    assert h.drain() == [frame_of(71)]


def test_log_base_that_cannot_be_mapped_refused_fd_closed(h, caplog):
    """An eventfd for a log: refused with a reply (QEMU waits for one), the fd closed."""
    h.connect()
    fd = new_eventfd()
    try:
        with caplog.at_level(logging.WARNING, logger="vhostuser.backend"):
            assert h.ack(R.SET_LOG_BASE, struct.pack("<QQ", 4096, 0), [fd]) != 0
        assert not fd_is_open(h.sent_fds[-1])
        assert h.be.counters["invalid_requests"] == 1
        assert "dirty log" in caplog.text and "SET_LOG_BASE" in caplog.text
    finally:
        os.close(fd)


def test_log_fd_taken_and_closed(h):
    h.connect()
    fd = new_eventfd()
    try:
        assert h.ack(R.SET_LOG_FD, b"", [fd]) == 0
        assert not fd_is_open(h.sent_fds[-1])
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# REPLY_ACK


REPLY_ACK_CASES = [
    # (request, payload, fds, ok)
    (R.SET_OWNER, b"", 0, True),
    (R.SET_FEATURES, u64_payload(BACKEND_FEATURES), 0, True),
    (R.SET_FEATURES, u64_payload(1 << 63), 0, False),
    (R.SET_VRING_NUM, state_payload(0, 256), 0, True),
    (R.SET_VRING_NUM, state_payload(0, 3), 0, False),
    (R.SET_VRING_NUM, state_payload(7, 256), 0, False),
    (R.SET_VRING_BASE, state_payload(0, 5), 0, True),
    (R.SET_VRING_BASE, state_payload(0, 0x10000), 0, False),
    (R.SET_VRING_ADDR, VringAddr(0, 0, 0, 0, 0, 0).pack(), 0, False),  # no memory
    (R.SET_VRING_KICK, u64_payload(0), 1, True),
    (R.SET_VRING_KICK, u64_payload(0), 0, False),
    (R.SET_VRING_CALL, u64_payload(1 | VRING_NOFD_MASK), 0, True),
    (R.SET_VRING_ERR, u64_payload(0), 1, True),
    (R.SET_VRING_ERR, u64_payload(0x10000), 1, False),
    (R.SET_VRING_ENABLE, state_payload(0, 1), 0, True),
    (R.SET_VRING_ENABLE, state_payload(0, 2), 0, False),
    (R.SET_VRING_ENDIAN, state_payload(0, 1), 0, False),
    (R.SET_MEM_TABLE, pack_mem_table([]), 0, True),
    (R.SET_MEM_TABLE, pack_mem_table([MemRegion(0, 4096, 0, 0)]), 0, False),
    (R.ADD_MEM_REG, pack_single_region(MemRegion(0, 4096, 0, 0)), 0, False),
    (R.REM_MEM_REG, pack_single_region(MemRegion(0, 4096, 0, 0)), 0, False),
    (R.NET_SET_MTU, u64_payload(1500), 0, True),
    (R.SEND_RARP, bytes(8), 0, True),
    (R.SET_STATUS, u64_payload(STATUS_ACKNOWLEDGE), 0, True),
    (R.RESET_DEVICE, b"", 0, True),
    (R.RESET_OWNER, b"", 0, True),
    (R.SET_CONFIG, CONFIG_HEADER.pack(0, 1, 0) + b"\0", 0, False),
    (R.SET_LOG_BASE, bytes(16), 1, False),
    (R.SET_LOG_FD, b"", 1, True),
    (R.SET_BACKEND_REQ_FD, b"", 1, False),
    (R.IOTLB_MSG, bytes(8), 0, False),
    (R.POSTCOPY_END, b"", 0, False),
    (R.SET_INFLIGHT_FD, bytes(8), 1, False),
    (R.VRING_KICK, state_payload(0, 0), 0, True),
    (99, bytes(8), 0, False),
    (1000, b"", 1, False),
]


@pytest.mark.parametrize("req,payload,n_fds,ok", REPLY_ACK_CASES,
                         ids=[f"{Request(c[0]).name if c[0] in Request._value2member_map_ else c[0]}"
                              f"-{'ok' if c[3] else 'fail'}-{i}"
                              for i, c in enumerate(REPLY_ACK_CASES)])
def test_reply_ack_for_every_need_reply(h, req, payload, n_fds, ok):
    h.connect()
    fds = [new_eventfd() for _ in range(n_fds)]
    try:
        before = nfds()
        value = h.ack(req, payload, fds)
        assert (value == 0) == ok, f"ack {value}"
        kept = sum(fd is not None for q in h.be.queues
                   for fd in (q.kick_fd, q.call_fd, q.err_fd))
        assert nfds() == before + kept  # nothing the back-end did not keep stays open
    finally:
        for fd in fds:
            os.close(fd)
    assert h.u64(R.GET_FEATURES)  # and it keeps answering


def test_no_reply_without_need_reply_or_reply_ack(h):
    h.connect(protocol=ALL_PROTOCOL & ~(1 << ProtocolFeature.REPLY_ACK))
    assert h.send(R.SET_OWNER) is None  # need_reply set, REPLY_ACK not negotiated
    assert h.send(R.SET_VRING_NUM, state_payload(0, 3)) is None
    h2 = Harness()
    try:
        h2.connect()
        assert h2.send(R.SET_OWNER, need_reply=False) is None
        assert h2.send(R.SET_VRING_NUM, state_payload(0, 3), need_reply=False) is None
    finally:
        h2.close()


def test_requests_with_replies_answer_even_when_refused(h):
    h.connect()
    reply = h.send(R.GET_VRING_BASE, state_payload(9, 0))
    assert reply is not None and reply.vring_state() == (9, 0)
    reply = h.send(R.GET_INFLIGHT_FD, bytes(24))
    assert reply is not None and reply.payload


# ---------------------------------------------------------------------------------------
# Ring states


def test_without_protocol_features_set_features_enables_all():
    h = Harness()
    try:
        h.connect(protocol=None)
        assert not any(q.enabled for q in h.be.queues)
        h.start()
        assert not has(h.features, Feature.PROTOCOL_FEATURES)
        assert all(q.enabled and q.started for q in h.be.queues)
        h.tx(frame_of(90))
        assert h.drain() == [frame_of(90)]
    finally:
        h.close()


def test_with_protocol_features_rings_wait_for_enable(h):
    h.connect()
    h.start(enable=False)
    assert all(q.started and not q.enabled for q in h.be.queues)
    # before its first enable a TX ring is left alone: what the guest queued while we were
    # away must survive QEMU's SET_VRING_KICK ... SET_VRING_ENABLE window
    h.tx(frame_of(100, 9))
    assert h.drain() == []
    assert h.net.drops["tx_queue_disabled"] == 0
    h.ok(R.SET_VRING_ENABLE, state_payload(1, 1))
    assert h.drain() == [frame_of(100, 9)]
    # a ring disabled by SET_VRING_ENABLE 0 is drained and its frames discarded
    h.ok(R.SET_VRING_ENABLE, state_payload(1, 0))
    for i in range(4):
        h.tx(frame_of(100, i))
    assert h.drain() == []
    assert h.net.drops["tx_queue_disabled"] == 4
    assert len(h.vqs[1].reap()) == 5  # buffers given back to the guest
    # a disabled RX ring gets nothing
    h.post_rx(4)
    h.net.send(frame_of(100, 7))
    h.net.flush()
    assert h.vqs[0].used_idx == 0
    assert h.mem.read(h.vqs[0].read_desc(0)[0], 64) == bytes(64)
    # enabling delivers what waited
    h.ok(R.SET_VRING_ENABLE, state_payload(0, 1))
    h.net.flush_backlog()
    h.net.flush()
    assert h.reap_rx() == [frame_of(100, 7)]


def test_rings_start_on_kick_and_stop_on_get_vring_base(h):
    h.connect()
    h.start(kick=False)
    assert not any(q.started for q in h.be.queues)
    h.tx(frame_of(64))
    assert h.drain() == []
    h.msg(R.SET_VRING_KICK, u64_payload(1), [h.vqs[1].kick_fd])
    assert h.be.queues[1].started
    assert h.drain() == [frame_of(64)]
    h.get_vring_base(1)
    assert not h.be.queues[1].started


def test_polling_mode_kick_without_fd(h):
    h.connect()
    h.start(kick=False)
    h.msg(R.SET_VRING_KICK, u64_payload(1 | VRING_NOFD_MASK))
    q = h.be.queues[1]
    assert q.started and q.polling and q.kick_fd is None
    assert h.be.polled_queues() == [q]


def test_device_needs_reset_visible_in_status(running):
    h = running
    # a head index past the queue: the TX ring breaks, the device asks for a reset
    vq = h.vqs[1]
    h.mem.write(vq.avail_gpa + 4, struct.pack("<H", 1000))
    h.mem.write(vq.avail_gpa + 2, struct.pack("<H", 1))
    assert h.drain() == []
    assert h.u64(R.GET_STATUS) & STATUS_DEVICE_NEEDS_RESET
    assert h.be.queues[1].broken


def test_mem_slots_add_and_remove(h):
    h.connect()
    h.start()
    extra = h.mem.add_region(64 * MiB, MiB)
    before = nfds()
    h.ok(R.ADD_MEM_REG, pack_single_region(extra.describe()), [extra.fd])
    assert len(h.be.memory.regions) == 2
    h.ok(R.REM_MEM_REG, pack_single_region(extra.describe()), [extra.fd])
    assert len(h.be.memory.regions) == 1
    assert all(q.mapped for q in h.be.queues)
    assert nfds() == before


def test_mem_slots_the_same_region_from_each_queue_pair(h):
    """QEMU runs a vhost device per queue pair over one connection and each sends every
    region with ADD_MEM_REG: the same region (same file) again is one more holder, and
    goes with the last REM_MEM_REG. The same addresses backed by another file, or an
    overlapping region, are still refused."""
    h.connect()
    h.start()
    extra = h.mem.add_region(64 * MiB, MiB)
    desc = pack_single_region(extra.describe())
    for _ in range(3):
        h.ok(R.ADD_MEM_REG, desc, [extra.fd])
    assert len(h.be.memory.regions) == 2
    other = os.memfd_create("other")
    try:
        os.ftruncate(other, MiB)
        assert h.ack(R.ADD_MEM_REG, desc, [other]) != 0
        bigger = MemRegion(64 * MiB, 2 * MiB, extra.describe().userspace_addr, 0)
        assert h.ack(R.ADD_MEM_REG, pack_single_region(bigger), [extra.fd]) != 0
    finally:
        os.close(other)
    for left in (2, 2, 1):
        h.ok(R.REM_MEM_REG, desc)
        assert len(h.be.memory.regions) == left
    assert all(q.mapped for q in h.be.queues)
    h.tx(frame_of(100, 1))
    assert h.drain() == [frame_of(100, 1)]


@pytest.mark.parametrize("req", ["set-mem-table", "rem-mem-reg"])
def test_memory_change_publishes_used_entries_first(running, req):
    """A frame taken but its used entry not yet published (the stack holds the batch)
    when the memory table changes: the entry must still reach the guest, once."""
    h = running
    extra = h.mem.add_region(64 * MiB, MiB)
    h.ok(R.ADD_MEM_REG, pack_single_region(extra.describe()), [extra.fd])
    h.tx(frame_of(100, 1))
    tokens = h.net.receive()
    assert tokens is not None and tokens[0].consume(bytes) == frame_of(100, 1)
    if req == "set-mem-table":
        h.set_mem_table()
    else:
        h.ok(R.REM_MEM_REG, pack_single_region(extra.describe()))
    h.net.flush()
    assert h.vqs[1].used_idx == 1
    assert len(h.vqs[1].reap()) == 1
    h.tx(frame_of(100, 2))
    assert h.drain() == [frame_of(100, 2)]
    assert h.vqs[1].used_idx == 2
