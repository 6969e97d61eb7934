"""Fuzz targets for the wire formats and for one live TCP connection (see targets.py).

- `wire`: byte 0 picks a format of `netstack/wire` (low nibble) and how checksums are
  treated (top two bits: not verified / filled in first, then verified / verified as
  sent); byte 1 picks the addresses a checksum or a validity rule needs; the rest is
  parsed. A parse succeeds or raises `wire.Error` (the one error the wire contract
  declares); what parsed must emit and parse back equal, and emit the very bytes it came
  from where the format has one encoding.
- `tcp`: a `TcpSocket` opened by a real handshake (passive or active), then a peer the
  input scripts in 8-byte steps: segments near and far from both windows, holes and their
  repair, duplicate ACKs, SACK, timestamps (PAWS), RST/SYN/FIN/URG at random, time jumps
  that fire every timer, the application writing, reading, closing. Both byte streams are a
  function of their sequence offset, so every byte either side delivers is checked. After
  each step: buffers within capacity, SND.UNA <= SND.NXT <= SND.MAX, our window's right
  edge never moves left (socket.py promises no shrinking), every segment we send parses
  and carries only what the application wrote, and a deadline from `poll_at` after a
  full dispatch is never in the past.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar

from netstack.socket.errors import SocketError
from netstack.socket.tcp.seq import seq_add, seq_gt, seq_le, seq_lt, seq_sub
from netstack.socket.tcp.socket import TcpSocket
from netstack.socket.tcp.state import SYNCHRONIZED, State
from netstack.wire import (
    Error,
    arp,
    dhcpv4,
    dhcpv6,
    dns,
    ethernet,
    icmpv4,
    icmpv6,
    ipv4,
    ipv6,
    mld,
    ndisc,
    udp,
)
from netstack.wire import tcp as wtcp

T = TypeVar("T")
MASK = 0xFFFFFFFF


# -- wire ---------------------------------------------------------------------------------
class _Ctx:
    """What a format's check needs besides the bytes: checksum handling and addresses."""

    __slots__ = ("verify", "fill", "src4", "dst4", "src6", "dst6", "v6", "hop_limit")

    def __init__(self, sel: int, addr: int) -> None:
        mode = sel >> 6
        self.verify = mode != 0  # 0: not verified (offload); 1, 3: filled in; 2: as sent
        self.fill = mode in (1, 3)
        self.src4 = _SRC4[addr & 3]
        self.dst4 = _DST4[(addr >> 2) & 3]
        self.src6 = _SRC6[addr & 3]
        self.dst6 = _DST6[(addr >> 2) & 3]
        self.v6 = bool(addr & 0x10)  # UDP and TCP over IPv6
        self.hop_limit = 64 if addr & 0x20 else 255  # NDP wants 255

    @property
    def src(self) -> IPv4Address | IPv6Address:
        return self.src6 if self.v6 else self.src4

    @property
    def dst(self) -> IPv4Address | IPv6Address:
        return self.dst6 if self.v6 else self.dst4


_SRC4 = tuple(IPv4Address(a) for a in ("10.0.2.15", "10.0.2.2", "0.0.0.0", "192.0.2.1"))
_DST4 = tuple(IPv4Address(a) for a in ("10.0.2.2", "10.0.2.15", "255.255.255.255",
                                         "224.0.0.1"))
# link-local, unspecified, global, link-local EUI-64: what NDP and MLD judge sources by
_SRC6 = tuple(IPv6Address(a) for a in ("fe80::1", "::", "2001:db8::1",
                                         "fe80::5054:ff:fe12:3456"))
# all-nodes, unicast, solicited-node, all-MLDv2-routers
_DST6 = tuple(IPv6Address(a) for a in ("ff02::1", "fe80::2", "ff02::1:ff12:3456", "ff02::16"))


def _again(what: str, parse: Callable[[], T]) -> T:
    """Parse what we emitted: a `wire.Error` here is our emitter's bug, not bad input."""
    try:
        return parse()
    except Error as e:
        raise AssertionError(f"{what}: emitted bytes do not parse back: {e}") from e


def _same(what: str, a: object, b: object) -> None:
    if a != b:
        raise AssertionError(f"{what}: round trip changed {a!r} into {b!r}")


def _arp(b: bytearray, c: _Ctx) -> None:
    try:
        r = arp.ArpRepr.parse(arp.ArpPacket.new_checked(b))
    except Error:
        return
    out = bytearray(r.buffer_len())
    r.emit(arp.ArpPacket(out))
    # canonical: parse accepts only the one Ethernet/IPv4 layout, every byte is a field
    _same("arp bytes", bytes(b[:arp.HEADER_LEN]), bytes(out))
    _same("arp", r, _again("arp", lambda: arp.ArpRepr.parse(arp.ArpPacket.new_checked(out))))


def _ethernet(b: bytearray, c: _Ctx) -> None:
    try:
        frame = ethernet.EthernetFrame.new_checked(b)
        r = ethernet.EthernetRepr.parse(frame)
    except Error:
        return
    out = bytearray(r.buffer_len())
    r.emit(ethernet.EthernetFrame(out))
    out += frame.payload
    if frame.vlan_id is None:  # emit writes untagged frames: canonical only for those
        _same("ethernet bytes", bytes(b), bytes(out))
    if r.ethertype == ethernet.VLAN_TPID:
        return  # an inner 0x8100 (Q-in-Q) written untagged reads as a tag: no round trip
    _same("ethernet", r, _again("ethernet", lambda: ethernet.EthernetRepr.parse(
        ethernet.EthernetFrame.new_checked(out))))


def _ipv4(b: bytearray, c: _Ctx) -> None:
    try:
        pkt = ipv4.Ipv4Packet.new_checked(b)
        if c.fill:
            pkt.fill_checksum()
        r = ipv4.Ipv4Repr.parse(pkt, verify_checksum=c.verify, length_checked=True)
    except Error:
        return
    out = bytearray(r.buffer_len())
    r.emit(ipv4.Ipv4Packet(out))
    out += pkt.payload
    back = _again("ipv4", lambda: ipv4.Ipv4Packet.new_checked(out))
    _same("ipv4", r, _again("ipv4", lambda: ipv4.Ipv4Repr.parse(back)))
    _same("ipv4 payload", bytes(pkt.payload), bytes(back.payload))
    # canonical without options and reserved flag, with a good checksum
    if c.verify and pkt.header_len == ipv4.HEADER_LEN and not b[6] & 0x80:
        _same("ipv4 bytes", bytes(b[:pkt.total_len]), bytes(out))


def _ipv6(b: bytearray, c: _Ctx) -> None:
    try:
        pkt = ipv6.Ipv6Packet.new_checked(b)
        r = ipv6.Ipv6Repr.parse(pkt)
    except Error:
        return
    payload = pkt.payload
    out = bytearray(r.buffer_len())
    r.emit(ipv6.Ipv6Packet(out))
    out += payload
    _same("ipv6 bytes", bytes(b[:ipv6.HEADER_LEN + len(payload)]), bytes(out))  # canonical
    _same("ipv6", r, _again("ipv6", lambda: ipv6.Ipv6Repr.parse(ipv6.Ipv6Packet(out))))
    # the extension header chain: walk_headers judges it, upper_layer never raises
    quick = ipv6.upper_layer(payload, r.next_header)
    if quick is not None and not 0 <= quick[1] <= len(payload):
        raise AssertionError(f"ipv6: upper_layer points past the payload: {quick}")
    try:
        walk = ipv6.walk_headers(payload, r.next_header)
    except Error:
        return
    if not 0 <= walk.offset <= len(payload):
        raise AssertionError(f"ipv6: walk_headers points past the payload: {walk}")
    if walk.problem is None and (walk.fragment is None or walk.fragment.is_atomic):
        want = (walk.protocol, walk.offset, walk.fragment is not None)
        _same("ipv6 upper_layer vs walk_headers", want, quick)


def _icmpv4(b: bytearray, c: _Ctx) -> None:
    try:
        pkt = icmpv4.Icmpv4Packet.new_checked(b)
        if c.fill:
            pkt.fill_checksum()
        r = icmpv4.Icmpv4Repr.parse(pkt, verify_checksum=c.verify)
    except Error:
        return
    out = bytearray(r.buffer_len())
    r.emit(icmpv4.Icmpv4Packet(out))
    _same("icmpv4", r, _again("icmpv4", lambda: icmpv4.Icmpv4Repr.parse(
        icmpv4.Icmpv4Packet.new_checked(out))))
    if c.verify and r.msg_type in icmpv4._ECHO:  # errors drop unused words: not canonical
        _same("icmpv4 bytes", bytes(b), bytes(out))


def _icmpv6(b: bytearray, c: _Ctx) -> None:
    src, dst = c.src6, c.dst6
    try:
        pkt = icmpv6.Icmpv6Packet.new_checked(b)
        if c.fill:
            pkt.fill_checksum(src, dst)
        r = icmpv6.Icmpv6Repr.parse(pkt, src, dst, verify_checksum=c.verify)
    except Error:
        return
    out = bytearray(r.buffer_len())
    r.emit(icmpv6.Icmpv6Packet(out), src, dst)
    _same("icmpv6", r, _again("icmpv6", lambda: icmpv6.Icmpv6Repr.parse(
        icmpv6.Icmpv6Packet.new_checked(out), src, dst)))
    if c.verify and r.msg_type in icmpv6._ECHO:  # errors drop unused words: not canonical
        _same("icmpv6 bytes", bytes(b), bytes(out))


def _ndisc(b: bytearray, c: _Ctx) -> None:
    src, dst = c.src6, c.dst6
    if c.fill and len(b) >= icmpv6.HEADER_LEN:
        icmpv6.fill_checksum(b, src, dst)
    try:
        r = ndisc.parse_ndisc(b, src, dst, c.hop_limit, verify_checksum=c.verify)
    except Error:
        return
    if isinstance(r, ndisc.RouterAdvert) and len(r.rdnss) > 127:
        return  # several RDNSS options merged: emit writes one, of at most 127 addresses
    out = bytearray(r.buffer_len())
    r.emit(out, src, dst)
    # not canonical: unknown options, duplicates and the redirected header are dropped
    _same("ndisc", r, _again("ndisc", lambda: ndisc.parse_ndisc(out, src, dst, 255)))


_MLD = {130: mld.MldQuery, 131: mld.Mldv1Report, 132: mld.Mldv1Report}


def _mld(b: bytearray, c: _Ctx) -> None:
    src, dst = c.src6, c.dst6
    cls = _MLD.get(b[0], mld.Mldv2Report) if b else mld.Mldv2Report
    if c.fill and len(b) >= icmpv6.HEADER_LEN:
        icmpv6.fill_checksum(b, src, dst)
    try:
        r = cls.parse(b, src, dst, verify_checksum=c.verify)
    except Error:
        return
    out = bytearray(r.buffer_len())
    r.emit(out, src, dst)
    # not canonical: auxiliary data, trailing bytes and the code field are dropped
    _same("mld", r, _again("mld", lambda: cls.parse(out, src, dst)))


def _udp(b: bytearray, c: _Ctx) -> None:
    src, dst = c.src, c.dst
    try:
        pkt = udp.UdpPacket.new_checked(b)
        if c.fill:
            pkt.fill_checksum(src, dst)
        r = udp.UdpRepr.parse(pkt, src, dst, verify_checksum=c.verify)
    except Error:
        return
    payload = bytes(pkt.payload)
    out = bytearray(udp.HEADER_LEN + len(payload))
    r.emit(udp.UdpPacket(out), src, dst, len(payload), payload)
    back = _again("udp", lambda: udp.UdpPacket.new_checked(out))
    _same("udp", r, _again("udp", lambda: udp.UdpRepr.parse(back, src, dst)))
    _same("udp payload", payload, bytes(back.payload))
    if c.verify and pkt.checksum:  # (a zero checksum over IPv4: none sent, we compute one)
        _same("udp bytes", bytes(b[:pkt.length]), bytes(out))


def _tcp_wire(b: bytearray, c: _Ctx) -> None:
    src, dst = c.src, c.dst
    try:
        pkt = wtcp.TcpPacket.new_checked(b)
        if c.fill:
            pkt.fill_checksum(src, dst)
        r = wtcp.TcpRepr.parse(pkt, src, dst, verify_checksum=c.verify)
    except Error:
        return
    out = bytearray(r.buffer_len())
    r.emit(wtcp.TcpPacket(out), src, dst)
    r2 = _again("tcp", lambda: wtcp.TcpRepr.parse(wtcp.TcpPacket.new_checked(out), src, dst))
    # not canonical (options are reordered and padded); SACK blocks that do not fit in the
    # 40 option bytes after the others are dropped, the first ones kept (module docstring)
    used = 4 * (r.max_seg_size is not None) + 4 * (r.window_scale is not None) + \
        (12 if r.timestamp is not None else 4 if r.sack_permitted else 0)
    keep = max(0, min(len(r.sack_ranges), wtcp.MAX_SACK_BLOCKS,
                      (wtcp.MAX_OPTIONS_LEN - used - 4) // 8))
    _same("tcp", dataclasses.replace(r, sack_ranges=r.sack_ranges[:keep]), r2)
    out2 = bytearray(r2.buffer_len())
    r2.emit(wtcp.TcpPacket(out2), src, dst)
    _same("tcp bytes (emit of a re-parse)", bytes(out), bytes(out2))


def _reparsed(name: str, b: bytearray, repr_cls, packet_cls) -> None:
    """A format emitted our way, not canonically: parse, emit, and the re-parse equals."""
    try:
        r = repr_cls.parse(packet_cls.new_checked(b))
    except Error:
        return
    out = bytearray(r.buffer_len())
    r.emit(packet_cls(out))
    _same(name, r, _again(name, lambda: repr_cls.parse(packet_cls.new_checked(out))))


def _dhcpv4(b: bytearray, c: _Ctx) -> None:
    # options are reordered, merged and split again, sname/file zeroed
    _reparsed("dhcpv4", b, dhcpv4.DhcpRepr, dhcpv4.DhcpPacket)


def _dhcpv6(b: bytearray, c: _Ctx) -> None:
    # options are reordered, IA_NA keeps only its IAID and status
    _reparsed("dhcpv6", b, dhcpv6.Dhcpv6Repr, dhcpv6.Dhcpv6Packet)


def _dns(b: bytearray, c: _Ctx) -> None:
    # names are compressed our way, trailing bytes dropped
    _reparsed("dns", b, dns.DnsRepr, dns.DnsPacket)


FORMATS: tuple[tuple[str, Callable[[bytearray, _Ctx], None]], ...] = (
    ("arp", _arp), ("ethernet", _ethernet), ("ipv4", _ipv4), ("ipv6", _ipv6),
    ("icmpv4", _icmpv4), ("icmpv6", _icmpv6), ("ndisc", _ndisc), ("mld", _mld),
    ("udp", _udp), ("tcp", _tcp_wire), ("dhcpv4", _dhcpv4), ("dhcpv6", _dhcpv6),
    ("dns", _dns),
)


def wire(data: bytes) -> None:
    if len(data) < 2:
        return
    _name, fn = FORMATS[(data[0] & 0x0F) % len(FORMATS)]
    fn(bytearray(data[2:]), _Ctx(data[0], data[1]))


# -- tcp ----------------------------------------------------------------------------------
_PERIOD = 251
_PAT = bytes(range(_PERIOD)) * (70_000 // _PERIOD + 2)  # covers a TSO segment
_RX_SIZES = (1024, 8192, 65536, 1 << 20)  # the largest needs window scaling
_TX_SIZES = (2048, 8192, 32768, 65536)
_PEER_MSS = (536, 100, 1460, 8960)
_L4 = (IPv4Address("10.0.2.15"), 80)
_R4 = (IPv4Address("10.0.2.2"), 40000)
_L6 = (IPv6Address("fd00::15"), 80)
_R6 = (IPv6Address("fd00::2"), 40000)
MAX_STEPS = 96
MAX_SEGMENTS = 4000  # per input: what our socket may send before we call it a runaway
CONFIG_LEN = 14
STEP_LEN = 8


def _pattern(k: int, n: int) -> bytes:
    """Bytes k..k+n of a stream (k counted mod 2^32 from its first byte): every copy of a
    byte, retransmitted, overlapping or out of order, is the same."""
    if k + n > MASK + 1:
        head = MASK + 1 - k
        return _pattern(k, head) + _pattern(0, n - head)
    s = k % _PERIOD
    return _PAT[s:s + n]


def _sx(v: int) -> int:
    return v - 256 if v & 0x80 else v


class _Peer:
    """The scripted peer: what it has sent, what it has seen of us, and our socket."""

    def __init__(self, data: bytes) -> None:
        c = data[:CONFIG_LEN]
        self.v6 = bool(c[0] & 2)
        self.local, self.remote = (_L6, _R6) if self.v6 else (_L4, _R4)
        self.iss, self.irs = struct.unpack_from("!II", c, 4)
        self.now = 1000.0
        s = TcpSocket(_RX_SIZES[(c[2] >> 2) & 3], _TX_SIZES[(c[2] >> 4) & 3],
                      congestion="reno" if c[3] & 1 else "cubic",
                      timestamps=bool(c[0] & 4), sack=bool(c[0] & 8),
                      window_scaling=bool(c[0] & 16), nagle=bool(c[0] & 32),
                      delayed_ack=0.04 if c[0] & 64 else None,
                      keep_alive=5.0 if c[0] & 128 else None,
                      timeout=30.0 if c[2] & 128 else None,
                      time_wait=1.0 if c[3] & 2 else 60.0)
        s.isn_fn = lambda now, local, remote: self.iss
        if c[2] & 64:
            s.set_max_segment_size(65535)  # device TSO: segments of several MSS
        self.sock = s
        # what the peer offers in its SYN
        self.mss = _PEER_MSS[(c[1] >> 1) & 3] if c[1] & 1 else None
        self.wscale = min(c[1] >> 4, 14) if c[1] & 8 else None  # (parse clamps to 14)
        self.sack = bool(c[2] & 1)
        self.ts = bool(c[2] & 2)
        self.window = struct.unpack_from("!H", c, 12)[0]
        self.seq = seq_add(self.irs, 1)  # the peer's next byte
        self.last_ack = seq_add(self.iss, 1)  # the last ACK it sent
        self.our_max = self.iss  # one past the highest sequence number we sent
        self.ts_echo = 0  # our last TSval
        self.shift = 0  # our window scale, as the peer reads it
        self.max_edge: int | None = None  # the right edge of our window, as advertised
        self.rcv_adv: int | None = None
        self.written = 0  # bytes the application queued
        self.read = 0  # bytes it read
        self.closed = False  # it called close()
        self.read_shut = False
        self.sent: list[wtcp.TcpRepr] = []
        self.room: int | None = None  # segments the device still takes (None: any)

    # -- the device our socket sends through
    def emit(self, dst, protocol: int, payload_len: int, fill, src=None, **kw) -> bool:
        if protocol != 6 or dst != self.remote[0]:
            raise AssertionError(f"segment to {dst} protocol {protocol}")
        if self.room is not None:
            if self.room == 0:
                return False
            self.room -= 1
        if len(self.sent) >= MAX_SEGMENTS:
            raise AssertionError("runaway: our socket keeps sending")
        buf = bytearray(b"\xa5" * payload_len)
        src = src or self.local[0]
        fill(memoryview(buf), src, True)
        try:
            seg = wtcp.TcpRepr.parse(wtcp.TcpPacket.new_checked(buf), src, dst)
        except Error as e:
            raise AssertionError(f"we sent a malformed segment: {e}") from e
        self._check_sent(seg)
        self.sent.append(seg)
        return True

    def _check_sent(self, seg: wtcp.TcpRepr) -> None:
        """What a segment of ours may carry: the application's bytes, in place, a FIN
        only after close(), a window edge that never moves left."""
        flags = seg.flags
        if seg.timestamp is not None:
            self.ts_echo = seg.timestamp[0]
        if flags & wtcp.RST:
            return
        if flags & wtcp.SYN:
            if seg.seq_number != self.iss or seg.payload:
                raise AssertionError(f"our SYN at {seg.seq_number}, ISS {self.iss}")
        else:
            k = seq_sub(seg.seq_number, seq_add(self.iss, 1))
            n = len(seg.payload)
            if n and (k < 0 or k + n > self.written
                      or bytes(seg.payload) != _pattern(k, n)):
                raise AssertionError(f"we sent bytes {k}..{k + n} of {self.written} wrong")
            if flags & wtcp.FIN and (not self.closed or k + n != self.written):
                raise AssertionError(f"our FIN at {k + n}: written {self.written}, "
                                     f"closed {self.closed}")
        end = seq_add(seg.seq_number, seg.segment_len)
        if seq_gt(end, self.our_max):
            self.our_max = end
        if seg.ack_number is not None:
            shift = 0 if flags & wtcp.SYN else self.shift
            edge = seq_add(seg.ack_number, seg.window_len << shift)
            if self.max_edge is not None and seq_lt(edge, self.max_edge):
                raise AssertionError(f"our window shrank: edge {edge} after {self.max_edge}")
            self.max_edge = edge

    # -- driving the socket
    def feed(self, seq: int, ack: int | None, flags: int, window: int, payload: bytes = b"",
             *, syn_opts: bool = False, ts: tuple[int, int] | None = None,
             sacks: tuple[tuple[int, int], ...] = (), urgent: int = 0) -> None:
        """A segment from the peer, through the wire as the interface would hand it over."""
        if ts is None and self.ts:
            ts = ((int(self.now * 1000) + 12345) & MASK, self.ts_echo)
        r = wtcp.TcpRepr(self.remote[1], self.local[1], seq & MASK,
                         None if ack is None else ack & MASK, flags & 0xFF, window & 0xFFFF,
                         max_seg_size=self.mss if syn_opts else None,
                         window_scale=self.wscale if syn_opts else None,
                         sack_permitted=self.sack and syn_opts, sack_ranges=sacks,
                         timestamp=ts, urgent_at=urgent, payload=payload)
        buf = bytearray(r.buffer_len())
        r.emit(wtcp.TcpPacket(buf), self.remote[0], self.local[0], fill_checksum=False)
        try:
            seg = wtcp.TcpRepr.parse(wtcp.TcpPacket.new_checked(buf), self.remote[0],
                                     self.local[0], verify_checksum=False)
        except Error:
            return  # (SYN with FIN or RST: the interface drops it)
        ip = (ipv6.Ipv6Repr(self.remote[0], self.local[0], 6, len(buf)) if self.v6 else
              ipv4.Ipv4Repr(self.remote[0], self.local[0], 6, len(buf)))
        if self.sock.accepts(ip, seg):
            self.sock.process(self.now, ip, seg, seg.payload, None)

    def dispatch(self, full: bool = True) -> None:
        self.room = None if full else 0
        self.sock.dispatch(self.now, self.emit)
        self.room = None
        if not full:
            return
        at = self.sock.poll_at(self.now)
        if at is not None and at < self.now:
            raise AssertionError(f"poll_at {at} is in the past after dispatch at {self.now}")
        if at is not None and at == self.now:
            n = len(self.sent)
            self.sock.dispatch(self.now, self.emit)
            if self.sock.poll_at(self.now) == self.now and len(self.sent) == n:
                raise AssertionError(f"poll_at says now and dispatch does nothing: {self.sock}")

    def handshake(self, active: bool) -> None:
        s = self.sock
        if active:
            s.connect(self.now, self.local, self.remote)
            self.dispatch()
            syn = next((x for x in self.sent if x.flags & wtcp.SYN), None)
            if syn is None:
                raise AssertionError("connect sent no SYN")
            self.feed(self.irs, seq_add(self.iss, 1), wtcp.SYN | wtcp.ACK, self.window,
                      syn_opts=True,
                      ts=((int(self.now * 1000) + 12345) & MASK, self.ts_echo)
                      if self.ts else None)
        else:
            s.listen(self.local)
            self.feed(self.irs, None, wtcp.SYN, self.window, syn_opts=True,
                      ts=((int(self.now * 1000) + 12345) & MASK, 0) if self.ts else None)
            self.dispatch()
            syn = next((x for x in self.sent if x.flags & wtcp.SYN), None)
            if syn is None or syn.ack_number != seq_add(self.irs, 1):
                raise AssertionError(f"no SYN-ACK for the peer's SYN: {self.sent}")
        if syn.window_scale is not None and self.wscale is not None:
            self.shift = syn.window_scale
        if not active:
            self.feed(self.seq, seq_add(self.iss, 1), wtcp.ACK, self.window)
        if s.state is not State.ESTABLISHED:
            raise AssertionError(f"handshake ended in {s.state}")
        self.dispatch()
        self.rcv_adv = s.rcv_adv

    def check(self) -> None:
        s = self.sock
        if s.recv_queue > s.rx_capacity or s.send_queue > s.tx_capacity:
            raise AssertionError(f"buffers over capacity: rx {s.recv_queue}/{s.rx_capacity}"
                                 f" tx {s.send_queue}/{s.tx_capacity}")
        asm = s._asm
        if asm is not None and asm.held_bytes > s.rx_capacity:
            raise AssertionError(f"out-of-order bytes over capacity: {asm}")
        if not (seq_le(s.snd_una, s.snd_nxt) and seq_le(s.snd_nxt, s.snd_max)):
            raise AssertionError(f"una {s.snd_una} nxt {s.snd_nxt} max {s.snd_max}")
        if s.state in SYNCHRONIZED:
            if self.rcv_adv is not None and seq_lt(s.rcv_adv, self.rcv_adv):
                raise AssertionError(f"RCV.ADV moved left: {self.rcv_adv} -> {s.rcv_adv}")
            self.rcv_adv = s.rcv_adv

    # -- the script
    def step(self, op: int, fl: int, a: int, b: int, w: int, n: int, x: int) -> None:
        kind = op & 7
        length = n if n < 128 else (n - 128) * 64
        ack = self.last_ack if op & 8 else self.our_max
        sacks: tuple[tuple[int, int], ...] = ()
        if op & 16:
            left = seq_add(ack, (x & 15) * 256)
            sacks = ((left, seq_add(left, 256 * ((x >> 4) + 1))),)
        if kind == 0:  # near both windows, any flags
            scale = 1 << (4 * ((x >> 5) & 3))
            seq = seq_add(self.seq, _sx(a) * scale)
            ack = seq_add(self.our_max, _sx(b) * scale)
            ts = None
            if self.ts and x & 1:  # an old timestamp: PAWS
                ts = ((int(self.now * 1000) + 12345 - (1 << 30)) & MASK, self.ts_echo)
            self.feed(seq, ack if fl & wtcp.ACK else None, fl, w,
                      _pattern(seq_sub(seq, seq_add(self.irs, 1)) & MASK, length),
                      ts=ts, sacks=sacks, urgent=w if fl & wtcp.URG else 0)
        elif kind == 1:  # far from both
            seq = seq_add(self.seq, (a << 24) | (b << 16))
            ack = seq_add(self.our_max, (x << 24) | (n << 16))
            self.feed(seq, ack if fl & wtcp.ACK else None, fl, w,
                      _pattern(seq_sub(seq, seq_add(self.irs, 1)) & MASK, n & 63))
        elif kind == 2:  # the application
            self.app(fl, a, b, w)
        elif kind == 3:  # time passes
            self.now += ((a << 8) | b) / 1000.0 * (4 ** (x & 3))
        elif kind == 4:  # an ACK (a duplicate with op & 8)
            self.last_ack = ack
            self.feed(self.seq, ack, wtcp.ACK | (fl & wtcp.PSH), w, sacks=sacks)
        elif kind == 5:  # in-order data, a FIN with it
            k = seq_sub(self.seq, seq_add(self.irs, 1)) & MASK
            self.last_ack = ack
            fin = fl & wtcp.FIN
            self.feed(self.seq, ack, wtcp.ACK | wtcp.PSH | fin, w, _pattern(k, length),
                      sacks=sacks)
            self.seq = seq_add(self.seq, length + (1 if fin else 0))
        elif kind == 6:  # a segment lost on the way: a hole before what follows
            self.seq = seq_add(self.seq, length)
        else:  # a hole repaired: data from before the peer's next byte
            seq = seq_add(self.seq, -((a << 8) | b))
            self.last_ack = ack
            self.feed(seq, ack, wtcp.ACK | (fl & wtcp.FIN), w,
                      _pattern(seq_sub(seq, seq_add(self.irs, 1)) & MASK, length),
                      sacks=sacks)

    def app(self, fl: int, a: int, b: int, w: int) -> None:
        s = self.sock
        if a:
            try:
                n = s.send(_pattern(self.written, a * 128))
            except SocketError:  # (InvalidState: not in a state to send)
                n = 0
            if not 0 <= n <= a * 128:
                raise AssertionError(f"send took {n} of {a * 128}")
            self.written += n
        if b:
            got = s.recv(1 << 30 if b == 255 else b * 64)
            if got and self.read_shut:
                raise AssertionError(f"{len(got)} bytes read after shutdown_read")
            if got != _pattern(self.read, len(got)):
                raise AssertionError(f"we received bytes {self.read}..+{len(got)} wrong")
            self.read += len(got)
        if fl & 1:
            s.close()
            self.closed = True
        if fl & 2:
            s.shutdown_read()
            self.read_shut = True
        if fl & 4:
            s.orphan(self.now)
            self.read_shut = True
        if fl & 8:
            s.set_path_mtu(1280 + w % 9000)
        if fl == 0xFF:
            s.abort()


def tcp(data: bytes) -> None:
    if len(data) < CONFIG_LEN:
        return
    peer = _Peer(data)
    peer.handshake(active=bool(data[0] & 1))
    peer.check()
    end = min(len(data), CONFIG_LEN + MAX_STEPS * STEP_LEN)
    for off in range(CONFIG_LEN, end - STEP_LEN + 1, STEP_LEN):
        op, fl, a, b, w1, w0, n, x = data[off:off + STEP_LEN]
        peer.step(op, fl, a, b, (w1 << 8) | w0, n, x)
        if not op & 0x40:
            peer.dispatch(full=not op & 0x20)
        peer.check()
        if peer.sock.state is State.CLOSED:
            peer.dispatch()  # (a RST owed goes out)
            return
