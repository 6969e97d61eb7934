"""Fuzz targets: one function per attack surface, taking bytes, raising only on a bug.

Each target turns its input into what a hostile guest (or network) controls and drives our
code with it; the errors our code declares for bad input (ProtocolError, RingError, ...)
are caught here, anything else escapes and is a finding. `python -m tests.fuzz` runs them
under atheris (coverage-guided libFuzzer); tests/fuzz/test_corpus.py replays the corpus
in CI.

- `message`: a vhost-user byte stream, cut where the input says, into the decoder and
  the backend's state machine (messages that take fds get small memfds).
- `split_ring`: a descriptor table, indirect tables across two adjacent regions and a
  gap, a head: the C walker and the Python walker must agree (chain or error text).
- `packed_ring`: two packed rings drained (TX) and filled (RX) by the net device, on the
  C batch path and the per-frame Python path: both must leave the same state.
- `checksum`: both C checksums at any alignment against RFC 1071 in Python.
- `stack`: Ethernet frames into the whole stack (ARP, IPv4/IPv6 with reassembly, ICMP,
  UDP, TCP, DHCPv4/v6, DNS, RA) with time moving; the gateway is off (it would open host
  sockets to whatever the input names).
- `wire`, `tcp` (targets_wire.py): every wire format parsed, emitted and parsed again;
  our TCP socket in a live connection fed scripted segments, its invariants checked.
- `gateway`, `dns_forward` (targets_gateway.py): the gateway on, confined to loopback
  peers and a fake resolver the target owns (flow cap, fds, frames to the guest checked);
  the DNS forwarder alone against hostile upstream answers.
- `tftp` (targets_tftp.py): the TFTP server's engine over a directory with traversal bait
  (symlinks out, a FIFO, names with "..", backslashes, NULs), fed scripted requests, ACKs,
  errors and clock moves from several clients; every reply checked against a model of its
  contract (file bytes per block, window, refusals, ports, fds).
"""

from __future__ import annotations

import os
import struct

from tests.fuzz import targets_gateway, targets_tftp
from vhostuser.errors import ProtocolError

U16 = struct.Struct("<H")


# -- message -----------------------------------------------------------------------------


def _fd_count(req: int, payload: bytes) -> int:
    from vhostuser.protocol import Request as R

    if req == R.SET_MEM_TABLE and len(payload) >= 8:
        return min(U16.unpack_from(payload)[0] if len(payload) >= 2 else 0, 8)
    if req in (R.ADD_MEM_REG, R.SET_LOG_BASE, R.SET_LOG_FD, R.SET_VRING_KICK,
               R.SET_VRING_CALL, R.SET_VRING_ERR, R.SET_BACKEND_REQ_FD, R.SET_INFLIGHT_FD):
        return 1
    return 0


def message(data: bytes) -> None:
    from vhostuser.backend import VhostUserBackend
    from vhostuser.protocol import MessageDecoder

    if not data:
        return
    step = data[0] % 32 + 1  # bytes per feed
    stream = data[1:]
    dec = MessageDecoder()
    be = VhostUserBackend()
    try:
        for off in range(0, len(stream), step):
            try:
                msgs = list(dec.feed(stream[off:off + step], []))
            except ProtocolError:
                return
            for msg in msgs:
                n = _fd_count(msg.request, msg.payload)
                for _ in range(n):
                    fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
                    os.ftruncate(fd, 1 << 16)
                    msg.fds.append(fd)
                try:
                    be.handle(msg)
                except ProtocolError:
                    msg.close_fds()
                    return
                msg.close_fds()
    finally:
        dec.close()
        be.close()


# -- split_ring --------------------------------------------------------------------------
_SPLIT = None


def split_ring(data: bytes) -> None:
    """tests/vhostuser/test_walker.py's differential check, on the fuzzer's tables."""
    global _SPLIT
    from tests.vhostuser import test_walker as tw

    if not tw.virtqueue.HAVE_C or len(data) < 3:
        return
    if _SPLIT is None:
        mem, _ = tw._memory()
        _SPLIT = (mem, tw._queue(mem))
    mem, q = _SPLIT
    q.indirect = bool(data[0] & 1)
    head = U16.unpack_from(data, 1)[0] % 20  # mostly in range, sometimes not
    body = data[3:3 + 16 * 16 + 16 * 8].ljust(16 * 16 + 16 * 8, b"\0")
    tw._write(mem, tw.RING, body[:256])  # the table
    tw._write(mem, 0x3fc0, body[256:])  # an indirect table across the region boundary
    py, c = tw._walk(q, head, False), tw._walk(q, head, True)
    if py != c:
        raise AssertionError(f"walkers disagree at head {head}: C {c} vs Python {py}")


# -- packed_ring -------------------------------------------------------------------------
def _packed_run(data: bytes, use_c: bool) -> tuple:
    """Guest memory from the input (two packed rings of 16 at 0x1000 and 0x1200, the
    rest buffers and indirect tables), drained as TX and filled as RX by the net device;
    what the guest and the stack can see afterwards."""
    import vhostuser.virtqueue as vq
    from vhostuser.features import Feature, bits
    from vhostuser.memory import GuestMemory, Region
    from vhostuser.net import VirtioNetDevice
    from vhostuser.packed import PackedVirtqueue
    from vhostuser.protocol import VringAddr

    vq.USE_C = use_c
    try:
        raw = bytearray(0x8000)
        raw[0x1000:0x1000 + min(len(data), 0x7000)] = data[:0x7000]
        mem = GuestMemory()
        mem.regions.append(Region(0, len(raw), 0, 0, None, memoryview(raw)))
        queues = []
        for i, base in enumerate((0x1000, 0x1200)):
            q = PackedVirtqueue(i)
            q.size = 16
            q.addr = VringAddr(i, 0, base, base + 0x140, base + 0x100, 0)
            q.indirect = bool(data[:1]) and data[0] & 1 == 1
            q.map(mem)
            q.set_base(0x8000 | (data[1] % 16 if len(data) > 1 else 0))
            q.start()
            q.enabled = True
            queues.append(q)
        dev = VirtioNetDevice(mem, queues)
        feats = bits(Feature.F_VERSION_1, Feature.F_RING_PACKED)
        if len(data) > 2 and data[2] & 1:
            feats |= bits(Feature.NET_F_MRG_RXBUF)
        dev.set_features(feats)
        frames: list = []
        # a frame per call: the C path then returns each chain before it takes the next,
        # as the per-frame path does (a hostile chain may run on into descriptors already
        # used, and would otherwise read them before or after we wrote them)
        for _ in range(64):
            if not dev.drain_tx(lambda f: frames.append(bytes(f)), limit=1):
                break
        sent = dev.send_frames([b"\x11" * 60, b"\x22" * 1514, b"\x33" * 9000])
        dev.flush_backlog()
        dev.flush()
        state = [(q.last_avail_idx, q.avail_wrap, q.used_idx, q.used_wrap, q.broken,
                  q.stats.popped, q.stats.used) for q in queues]
        out = (frames, sent, bytes(raw), state,
               {k: v for k, v in dev.drops.items() if v},
               {k: v for k, v in dev.stats.items() if v})
        for q in queues:
            q.unmap()
        return out
    finally:
        vq.USE_C = vq.HAVE_C


def packed_ring(data: bytes) -> None:
    """The packed ring on the C batch path and on the per-frame Python path must leave
    the same frames, guest memory, queue state and counters (a differential target)."""
    import vhostuser.virtqueue as vq

    py = _packed_run(data, False)
    if vq.HAVE_C:
        c = _packed_run(data, True)
        if c != py:
            diff = [k for k, (a, b) in enumerate(zip(c, py, strict=True)) if a != b]
            raise AssertionError(f"C and Python packed paths disagree in parts {diff}")


# -- checksum ----------------------------------------------------------------------------
def checksum(data: bytes) -> None:
    """Both C checksums (netstack's and vhostuser's, one source in csrc/csum.h) on a slice
    of the input at every alignment the input picks, against RFC 1071 in Python."""
    if len(data) < 3:
        return
    start, seed = data[0] % 8, U16.unpack_from(data, 1)[0]
    body = memoryview(data)[3 + start:]
    words = bytes(body) + b"\0" * (len(body) % 2)
    want = seed + sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, len(words), 2))
    while want >> 16:
        want = (want & 0xFFFF) + (want >> 16)
    from netstack import _fast as ns
    from vhostuser import _fast as vu

    for mod, fn in ((ns, "ns_csum_partial"), (vu, "vu_csum_partial")):
        got = getattr(mod.lib, fn)(mod.ffi.from_buffer(body), len(body), seed)
        if got != want:
            raise AssertionError(f"{fn}: {got:#x}, RFC 1071 says {want:#x}")


# -- stack -------------------------------------------------------------------------------
_STACK = None


def _stack_setup(fresh: bool = False):
    global _STACK
    if _STACK is None or fresh or _STACK[3] > 500:
        from apps.stack import StackConfig, build_stack
        from gateway.policy import GatewayConfig
        from netstack.phy.loopback import loopback_pair

        st = build_stack(StackConfig(gateway=GatewayConfig(enabled=False)),
                         gateway_thread=False)
        guest, dev = loopback_pair()
        _STACK = [st, guest, dev, 0, 1000.0]
    return _STACK


def stack(data: bytes, fresh: bool = False) -> None:
    s = _stack_setup(fresh)
    st, guest, dev = s[0], s[1], s[2]
    s[3] += 1
    off = 0
    while off + 2 <= len(data):
        n = U16.unpack_from(data, off)[0] % 1515  # (up to a full frame without FCS)
        frame = data[off + 2:off + 2 + n]
        off += 2 + n
        if len(frame) < 14:
            continue
        tok = guest.transmit(s[4])
        if tok is not None:
            tok.consume(len(frame), lambda buf, f=frame: buf.__setitem__(slice(None), f))
        s[4] += 0.05 + (frame[0] & 3)  # time moves: timers, reassembly, TCP retransmits
        for _ in range(4):
            st.iface.poll(s[4], dev, st.sockets)
        while (got := guest.receive(s[4])) is not None:
            got[0].consume(bytes)


# -- wire, tcp (tests/fuzz/targets_wire.py) ----------------------------------------------
def _wire(data: bytes) -> None:
    from tests.fuzz.targets_wire import wire

    wire(data)


def _tcp(data: bytes) -> None:
    from tests.fuzz.targets_wire import tcp

    tcp(data)


TARGETS = {"message": message, "split_ring": split_ring, "packed_ring": packed_ring,
           "checksum": checksum,
           "stack": stack,
           "wire": _wire, "tcp": _tcp,
           "gateway": targets_gateway.gateway, "dns_forward": targets_gateway.dns_forward,
           "tftp": targets_tftp.tftp}
