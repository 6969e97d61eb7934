"""Fuzz targets for the gateway (NAT through host sockets), beside tests/fuzz/targets.py.

- `gateway`: a fresh stack with the gateway on per input, driven as `vhostnet serve`
  drives it (the interface polled, the gateway's selector stepped when ready, `tick` for
  its timers; time is ours and moves when the input says). The input is a list of steps
  (see `_STEPS`): what the guest sends (Ethernet frames as the `stack` target takes them;
  TCP SYNs and segments whose sequence numbers follow what the gateway answered; UDP,
  fragmented or not; pings; DNS queries to our DNS address) and what "the network" does
  (our peer sockets accept, write, half-close, reset, reply; the fake upstream resolver
  answers with any id, flags, counts and body, from its own address or another). After
  every step: no flow table past `MAX_FLOWS`, every flow's host address on loopback, every
  frame to the guest a valid Ethernet frame whose IP and transport checksums verify. After
  the teardown: the gateway holds no flow and the process no more fds than before.
- `dns_forward`: the `DnsForwarder` alone against a fake upstream, with an oracle: an
  upstream answer reaches the guest (its id restored, the rest unchanged) exactly when it
  has the id of a query in flight, QR set, 12 bytes or more and the right source; SERVFAIL
  answers carry the guest's id.

Nothing leaves this machine, and nothing reaches a socket that is not the target's: every
destination is denied (`deny` 0.0.0.0/0 and ::/0) but the mapped host loopback; TCP and
UDP to it get to the gateway only for ports of sockets the target bound on 127.0.0.1 / ::1
(a guard in front of `Gateway.tcp`/`udp`: others are refused as the policy refuses); the
DNS forwarder's servers are the target's own sockets; pings go to the loopback. A host
address that is not loopback raises before any socket is opened for it.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
from collections import Counter
from ipaddress import IPv4Address, IPv6Address

MAX_FLOWS = 16
SLOTS = 24  # guest TCP connections the input can name (more than MAX_FLOWS)
GUEST_MAC = bytes.fromhex("525400123456")
STACK_MAC = bytes.fromhex("52550a000202")
GUEST4, GUEST6 = IPv4Address("10.0.2.15"), IPv6Address("fd00:10:0:2::15")
DNS4, DNS6 = IPv4Address("10.0.2.3"), IPv6Address("fd00:10:0:2::3")
# map_host_loopback, chosen by the input's first byte ("": 10.0.2.2 and fd00:10:0:2::2,
# which then answers pings itself; the others let pings through the gateway)
MAPS = ("", "10.0.2.99", "fd00:10:0:2::99")
_TCP, _UDP, _ICMP, _ICMP6, _FRAG6 = 6, 17, 1, 58, 44
_SYN = 0x02


def _have_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAVE_V6 = _have_v6()


def _fds() -> list[str]:
    return os.listdir("/proc/self/fd")


class _Input:
    """The fuzzer's bytes as small numbers, zeros once they run out."""

    def __init__(self, data: bytes) -> None:
        self.data, self.off = data, 0

    @property
    def more(self) -> bool:
        return self.off < len(self.data)

    def take(self, n: int) -> bytes:
        b = self.data[self.off:self.off + n]
        self.off += n
        return b

    def u8(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def u16(self) -> int:
        return int.from_bytes(self.take(2).rjust(2, b"\0"), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4).rjust(4, b"\0"), "big")

    def i8(self) -> int:
        b = self.u8()
        return b - 256 if b & 0x80 else b


# -- what the guest sends ---------------------------------------------------------------
def _l4_checksum(src, dst, proto: int, seg: bytearray, at: int) -> bytes:
    from netstack.wire.checksum import finish, partial, pseudo_header_v4, pseudo_header_v6

    pseudo = pseudo_header_v4 if src.version == 4 else pseudo_header_v6
    struct.pack_into("!H", seg, at, finish(partial(seg, pseudo(src.packed, dst.packed, proto,
                                                                   len(seg)))))
    return bytes(seg)


def _tcp(src, dst, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
         options: bytes = b"", payload: bytes = b"") -> bytes:
    options += b"\0" * (-len(options) % 4)
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF,
                                ack & 0xFFFFFFFF, (5 + len(options) // 4) << 4, flags,
                                window, 0, 0) + options + payload)
    return _l4_checksum(src, dst, _TCP, seg, 16)


def _udp(src, dst, sport: int, dport: int, payload: bytes) -> bytes:
    seg = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    return _l4_checksum(src, dst, _UDP, seg, 6)


def _echo(src, dst, ident: int, seq: int, data: bytes) -> bytes:
    from netstack.wire.checksum import checksum

    msg = bytearray(struct.pack("!BBHHH", 8 if src.version == 4 else 128, 0, 0, ident, seq)
                    + data)
    if src.version == 6:
        return _l4_checksum(src, dst, _ICMP6, msg, 2)
    struct.pack_into("!H", msg, 2, checksum(msg))
    return bytes(msg)


def _frames(src, dst, proto: int, payload: bytes, frag: int = 0, ident: int = 0) -> list:
    """Ethernet frames carrying `payload`, in fragments of (frag % 32 + 1) * 8 bytes when
    `frag` is not 0 (bit 5: in reverse order, bit 6: the first one twice)."""
    from netstack.wire.checksum import checksum

    eth = STACK_MAC + GUEST_MAC + (b"\x08\x00" if src.version == 4 else b"\x86\xdd")
    size = (frag % 32 + 1) * 8 if frag else 1 << 20
    pieces = [(off, payload[off:off + size]) for off in range(0, max(len(payload), 1), size)]
    out = []
    for off, piece in pieces:
        more = frag and off + size < len(payload)
        if src.version == 4:
            hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(piece), ident,
                                        (more << 13) | (off >> 3) if frag else 0, 64, proto,
                                        0, src.packed, dst.packed))
            struct.pack_into("!H", hdr, 10, checksum(hdr))
            out.append(eth + bytes(hdr) + piece)
        elif frag:
            fh = struct.pack("!BBHI", proto, 0, off | bool(more), ident)
            out.append(eth + struct.pack("!IHBB", 6 << 28, 8 + len(piece), _FRAG6, 64)
                       + src.packed + dst.packed + fh + piece)
        else:
            out.append(eth + struct.pack("!IHBB", 6 << 28, len(piece), proto, 64)
                       + src.packed + dst.packed + piece)
    if frag & 0x20:
        out.reverse()
    if frag & 0x40:
        out.insert(0, out[0])
    return out


def _dns_query(qid: int, flags: int, qtype: int, name: bytes) -> bytes:
    labels = [label[:63] for label in name.split(b".") if label][:8]
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


# -- the gateway target ---------------------------------------------------------------
class _Slot:
    """A guest TCP connection: what it sent and what the gateway sent it."""

    __slots__ = ("src", "dst", "sport", "dport", "snd_nxt", "rcv_nxt")

    def __init__(self, src, dst, sport: int, dport: int, isn: int) -> None:
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.snd_nxt = isn + 1
        self.rcv_nxt = 0


class _World:
    """A stack with the gateway on, our peer sockets on loopback and the guest's side."""

    def __init__(self, config_byte: int) -> None:
        self.now = 1000.0
        self.socks: list[socket.socket] = []  # every socket of ours, closed at the end
        self.port: dict[socket.socket, int] = {}  # (still known once closed)
        self.allowed: set[tuple] = set()  # (host address version, proto, port)
        self.listeners = {4: [self._listen("127.0.0.1", 64), self._listen("127.0.0.1", 1)]}
        self.udp_peers = {4: [self._udp("127.0.0.1"), self._udp("127.0.0.1")]}
        self.upstream = [self._udp("127.0.0.1", allow=False)]  # the DNS servers
        if HAVE_V6:
            self.listeners[6] = [self._listen("::1", 64)]
            self.udp_peers[6] = [self._udp("::1")]
            self.upstream.append(self._udp("::1", allow=False))
        self.conns: list[socket.socket] = []
        self.senders: list[tuple] = []  # where the gateway's UDP flows sent from
        self.queries: list[tuple] = []  # (upstream socket, query, from)
        self.slots: dict[int, _Slot] = {}
        self.answers: list[bytes] = []  # the guest's ARP and NDP answers, sent next turn
        self.stalled = False  # the guest takes no frames
        self._build(MAPS[config_byte % len(MAPS)])

    def _own(self, s: socket.socket) -> socket.socket:
        s.setblocking(False)
        self.socks.append(s)
        return s

    def _bound(self, kind: int, addr: str) -> socket.socket:
        s = self._own(socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, kind))
        s.bind((addr, 0))
        self.port[s] = s.getsockname()[1]
        return s

    def _listen(self, addr: str, backlog: int) -> socket.socket:
        s = self._bound(socket.SOCK_STREAM, addr)
        s.listen(backlog)  # (a backlog of 1: later connects hang, the gateway times out)
        self.allowed.add((6 if ":" in addr else 4, "tcp", self.port[s]))
        return s

    def _udp(self, addr: str, allow: bool = True) -> socket.socket:
        s = self._bound(socket.SOCK_DGRAM, addr)
        if allow:
            self.allowed.add((6 if ":" in addr else 4, "udp", self.port[s]))
        return s

    def _build(self, mapping: str) -> None:
        from apps.stack import StackConfig, build_stack
        from gateway import Gateway, GatewayConfig
        from netstack.phy.loopback import loopback_pair
        from netstack.socket.services import DnsServerSocket

        # as build_stack(gateway_thread=False) does, without the DNS-over-TCP thread
        st = build_stack(StackConfig(apps=False, gateway=GatewayConfig(enabled=False)),
                         gateway_thread=False)
        servers = [f"127.0.0.1:{self.port[self.upstream[0]]}"]
        if HAVE_V6:
            servers.append(f"[::1]:{self.port[self.upstream[1]]}")
        cfg = GatewayConfig(map_host_loopback=mapping, deny=["0.0.0.0/0", "::/0"],
                            max_flows=MAX_FLOWS, udp_timeout=30.0, connect_timeout=5.0,
                            dns_forward=servers)
        gw = Gateway(st.runtime, cfg, gateway4=st.config.interface.ip,
                     gateway6=st.config.ipv6_address,
                     tcp_options={"tx_buffer_size": 16384, "rx_buffer_size": 16384})
        st.gateway = gw
        for sock in st.sockets.of_kind("udp"):
            if isinstance(sock, DnsServerSocket):
                sock.forwarder = gw.dns
        if not isinstance(gw.policy.target("tcp", IPv4Address("192.0.2.1")), str) or \
                not isinstance(gw.policy.target("udp", IPv6Address("2001:db8::1")), str):
            raise AssertionError("the policy lets the guest out: the target would too")
        self._guard(gw)
        self.st, self.gw = st, gw
        st.runtime.clock = lambda: self.now
        self.guest, self.dev = loopback_pair()
        st.runtime.attach(self.dev)

    def _guard(self, gw) -> None:
        """Only our own ports on the loopback; a host address elsewhere is a finding."""
        target, tcp, udp, loop = gw._target, gw.tcp, gw.udp, gw.policy.loopback
        allowed = self.allowed

        def guarded_target(proto, dst):
            host = target(proto, dst)
            if host is not None and not host.is_loopback:
                raise AssertionError(f"policy sends {proto} for {dst} to {host}")
            return host

        def guarded_tcp(now, ip, seg):
            host = loop.get(ip.dst_addr)
            if host is not None and (host.version, "tcp", seg.dst_port) not in allowed:
                return False
            return tcp(now, ip, seg)

        def guarded_udp(now, ip, udp_repr, payload):
            host = loop.get(ip.dst_addr)
            if host is not None and (host.version, "udp", udp_repr.dst_port) not in allowed:
                return False
            return udp(now, ip, udp_repr, payload)

        gw._target, gw.tcp, gw.udp = guarded_target, guarded_tcp, guarded_udp

    def mapped(self, v6: bool) -> IPv4Address | IPv6Address:
        """The guest-visible address standing for the host's loopback of that family (or
        the other one, when this mapping has none)."""
        addrs = sorted(self.gw.policy.loopback, key=lambda a: a.version != (6 if v6 else 4))
        return addrs[0]

    # -- the loop ---------------------------------------------------------------------
    def send(self, frames: list) -> None:
        self._put(frames)
        self.turn()

    def _put(self, frames: list) -> None:
        for f in frames:
            tok = self.guest.transmit(self.now)
            if tok is not None and 14 <= len(f) <= 1514:
                tok.consume(len(f), lambda buf, f=f: buf.__setitem__(slice(None), f))

    def turn(self) -> None:
        """What `vhostnet serve`'s loop does, until nothing moves (bounded)."""
        st, gw, rt = self.st, self.gw, self.st.runtime
        for _ in range(8):
            answers, self.answers = self.answers, []
            self._put(answers)
            with rt.lock:  # (as rt.poll, but a bug raises here instead of being counted)
                st.iface.poll(self.now, self.dev, st.sockets)
            rt.poll(self.now)  # and reaps the sockets the gateway released
            if rt.stats["poll_errors"]:
                raise AssertionError("the runtime's poll failed (an exception it caught)")
            events = gw.selector.select(0)
            if events:  # what run_ready does, at our time, letting a bug raise
                with rt.lock:
                    gw._step(self.now, events)
            gw.tick(self.now)
            frames = self.drain()
            self.check()
            if not events and not frames and not self.answers:
                break

    def drain(self) -> int:
        if self.stalled:  # its RX ring is full: frames wait, then the outbox fills
            return 0
        n = 0
        while (got := self.guest.receive(self.now)) is not None:
            self.observe(got[0].consume(bytes))
            n += 1
        return n

    def observe(self, frame: bytes) -> None:
        """Every frame to the guest parses, its checksums verify; the TCP ones move the
        guest's view of its connections."""
        from netstack.wire import Error
        from netstack.wire.ethernet import EthernetFrame
        from netstack.wire.icmpv4 import Icmpv4Packet
        from netstack.wire.icmpv6 import Icmpv6Packet
        from netstack.wire.ipv4 import Ipv4Packet, Ipv4Repr
        from netstack.wire.ipv6 import Ipv6Packet, Ipv6Repr
        from netstack.wire.tcp import TcpPacket, TcpRepr
        from netstack.wire.udp import UdpPacket, UdpRepr

        try:
            eth = EthernetFrame.new_checked(frame)
            if eth.ethertype == 0x0800:
                pkt = Ipv4Packet.new_checked(eth.payload)
                if pkt.more_frags or pkt.frag_offset:  # (a datagram larger than the MTU)
                    if not pkt.verify_checksum():
                        raise Error("ipv4: bad checksum")
                    return
                ip = Ipv4Repr.parse(pkt)
                body = pkt.payload
            elif eth.ethertype == 0x86DD:
                pkt6 = Ipv6Packet.new_checked(eth.payload)
                ip = Ipv6Repr.parse(pkt6)
                body = pkt6.payload
            elif eth.ethertype == 0x0806:
                return self._answer_arp(bytes(eth.payload))
            else:
                return
            proto = ip.protocol
            if proto == _TCP:
                seg = TcpRepr.parse(TcpPacket(body), ip.src_addr, ip.dst_addr)
                self._track(ip, seg)
            elif proto == _UDP:
                UdpRepr.parse(UdpPacket.new_checked(body), ip.src_addr, ip.dst_addr)
            elif proto == _ICMP and not Icmpv4Packet.new_checked(body).verify_checksum():
                raise Error("icmp: bad checksum")
            elif proto == _ICMP6:
                if not Icmpv6Packet.new_checked(body).verify_checksum(ip.src_addr, ip.dst_addr):
                    raise Error("icmpv6: bad checksum")
                if body[0] == 135 and bytes(body[8:24]) == GUEST6.packed:  # NS for us
                    self._answer_ns(ip.src_addr)
        except Error as e:
            raise AssertionError(f"the stack sent the guest a bad frame ({e}): "
                                 f"{frame.hex()}") from e

    def _answer_arp(self, arp: bytes) -> None:
        if len(arp) >= 28 and arp[6:8] == b"\0\1" and arp[24:28] == GUEST4.packed:
            self.answers.append(STACK_MAC + GUEST_MAC + b"\x08\x06" + arp[:6] + b"\0\2"
                                + GUEST_MAC + GUEST4.packed + arp[8:14] + arp[14:18])

    def _answer_ns(self, asker) -> None:
        dst = asker if not asker.is_unspecified else IPv6Address("ff02::1")
        na = bytearray(struct.pack("!BBHI", 136, 0, 0, 0x60000000 if dst == asker else 0x20000000)
                       + GUEST6.packed + b"\x02\x01" + GUEST_MAC)
        na = _l4_checksum(GUEST6, dst, _ICMP6, na, 2)
        self.answers.append(STACK_MAC + GUEST_MAC + b"\x86\xdd" + struct.pack(
            "!IHBB", 6 << 28, len(na), _ICMP6, 255) + GUEST6.packed + dst.packed + na)

    def _track(self, ip, seg) -> None:
        slot = self.slots.get(seg.dst_port - 40000)
        if slot is None or (slot.dst, slot.dport) != (ip.src_addr, seg.src_port):
            return
        end = (seg.seq_number + seg.segment_len) & 0xFFFFFFFF
        if seg.syn or (end - slot.rcv_nxt) & 0xFFFFFFFF < 1 << 31:
            slot.rcv_nxt = end

    def check(self) -> None:
        gw = self.gw
        for what, n in (("tcp", len(gw.tcp_flows)), ("udp", len(gw.udp_flows)),
                        ("icmp", len(gw.icmp.flows))):
            if n > MAX_FLOWS:
                raise AssertionError(f"{n} {what} flows, past --max-flows {MAX_FLOWS}")
        for flow in gw.tcp_flows.values():
            if not flow.host_addr.is_loopback:
                raise AssertionError(f"a TCP flow to {flow.host_addr}")
        for flow in gw.udp_flows.values():
            if any(not host.is_loopback for _a, _p, host in flow.peers):
                raise AssertionError(f"a UDP flow sent to {flow.peers}")

    # -- the network's side -----------------------------------------------------------
    def accept(self) -> None:
        for ls in self.listeners.values():
            for s in ls:
                while len(self.conns) < 64:
                    try:
                        conn, _ = s.accept()
                    except OSError:  # (BlockingIOError, or closed by a step)
                        break
                    self.conns.append(self._own(conn))

    def recv_udp(self) -> None:
        for ps in self.udp_peers.values():
            for s in ps:
                while True:
                    try:
                        _data, peer = s.recvfrom(65536)
                    except OSError:
                        break
                    if peer not in self.senders and len(self.senders) < 32:
                        self.senders.append(peer)
        for s in self.upstream:
            while True:
                try:
                    query, peer = s.recvfrom(65536)
                except OSError:
                    break
                self.queries.append((s, query, peer))
        del self.queries[:-32]

    def close(self) -> None:
        """Tear down as `vhostnet serve` does when it stops; what the gateway held must
        be gone with it."""
        gw = self.gw
        gw.close()
        self.st.runtime.detach()
        for s in self.socks:
            s.close()
        if gw.tcp_flows or gw.udp_flows or gw.icmp.flows or (gw.dns and gw.dns.socks):
            raise AssertionError("the gateway kept flows or sockets after close()")


# -- the steps --------------------------------------------------------------------------
def _frame(w: _World, inp: _Input) -> None:
    n = inp.u16() % 1515
    w.send([inp.take(n)])


def _syn(w: _World, inp: _Input) -> None:
    b = inp.u8()
    dst = w.mapped(bool(b & 0x80))
    ports = w.listeners.get(dst.version) or w.listeners[4]
    dport = w.port[ports[inp.u8() % len(ports)]]
    src = GUEST4 if dst.version == 4 else GUEST6
    n = (b & 0x7F) % SLOTS
    slot = w.slots[n] = _Slot(src, dst, 40000 + n, dport, inp.u32())
    opts, window = inp.u8(), inp.u16()
    options = b""
    if opts & 1:
        options += b"\x02\x04" + inp.u16().to_bytes(2, "big")
    if opts & 2:
        options += b"\x01\x03\x03" + bytes([inp.u8()])
    if opts & 4:
        options += b"\x04\x02"
    if opts & 8:
        options += b"\x08\x0a" + inp.take(8).ljust(8, b"\0")
    w.send(_frames(src, dst, _TCP, _tcp(src, dst, slot.sport, dport, slot.snd_nxt - 1, 0,
                                        _SYN, window, options)))


def _segment(w: _World, inp: _Input) -> None:
    slot = w.slots.get(inp.u8() % SLOTS)
    flags, seq_off, ack_off, window = inp.u8(), inp.i8(), inp.i8(), inp.u16()
    data = inp.take(inp.u8())
    if slot is None:
        return
    seg = _tcp(slot.src, slot.dst, slot.sport, slot.dport, slot.snd_nxt + seq_off,
               slot.rcv_nxt + ack_off, flags, window, payload=data)
    if seq_off == 0:
        slot.snd_nxt += len(data) + (flags & 1) + (flags >> 1 & 1)
    w.send(_frames(slot.src, slot.dst, _TCP, seg))


def _udp_step(w: _World, inp: _Input) -> None:
    b, which, frag, ident = inp.u8(), inp.u8(), inp.u8(), inp.u16()
    data = inp.take(inp.u16() % 2048)
    dst = w.mapped(bool(b & 0x80))
    ports = w.udp_peers.get(dst.version) or w.udp_peers[4]
    dport = w.port[ports[which % len(ports)]]
    if which & 0x80:  # to our DNS address instead (a query the responder may not parse)
        dst, dport = (DNS4 if dst.version == 4 else DNS6), 53
    src = GUEST4 if dst.version == 4 else GUEST6
    sport = 50000 + (b & 0x7F) % SLOTS
    w.send(_frames(src, dst, _UDP, _udp(src, dst, sport, dport, data), frag, ident))


def _ping(w: _World, inp: _Input) -> None:
    b, ident, seq = inp.u8(), inp.u16(), inp.u16()
    data = inp.take(inp.u8())
    dst = w.mapped(bool(b & 1))
    src = GUEST4 if dst.version == 4 else GUEST6
    w.send(_frames(src, dst, _ICMP if src.version == 4 else _ICMP6,
                   _echo(src, dst, ident, seq, data)))


def _query(w: _World, inp: _Input) -> None:
    b, qid, flags, qtype = inp.u8(), inp.u16(), inp.u16(), inp.u16()
    name = inp.take(inp.u8())
    src, dst = (GUEST6, DNS6) if b & 0x80 else (GUEST4, DNS4)
    if flags & 0x8000:  # (mostly a standard query with RD, which is forwarded)
        flags = 0x0100
    w.send(_frames(src, dst, _UDP, _udp(src, dst, 50000 + b % 8, 53,
                                        _dns_query(qid, flags, qtype, name))))


def _peer_tcp(w: _World, inp: _Input) -> None:
    which, action = inp.u8(), inp.u8()
    data = inp.take(inp.u8())
    w.accept()
    if not w.conns:
        return w.turn()
    conn = w.conns[which % len(w.conns)]
    try:
        if action % 6 == 0:
            conn.send(data)
        elif action % 6 == 1:  # a download: as much as the kernel takes
            for _ in range(action // 6 + 1):
                conn.send(b"\xa5" * 65536)
        elif action % 6 == 2:
            conn.shutdown(socket.SHUT_WR)
        elif action % 6 == 3:
            while conn.recv(65536):
                pass
        else:
            if action % 6 == 5:  # a RST
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.conns.remove(conn)
            conn.close()
    except OSError:  # (would block, reset, closed)
        pass
    w.turn()


def _peer_udp(w: _World, inp: _Input) -> None:
    which, to, burst = inp.u8(), inp.u8(), inp.u8()
    data = inp.take(inp.u16() % 2048)
    w.recv_udp()
    peers = [s for ps in w.udp_peers.values() for s in ps if s.fileno() >= 0]
    if w.senders and peers:
        s = peers[which % len(peers)]
        peer = w.senders[to % len(w.senders)]
        if (s.family == socket.AF_INET6) == (":" in peer[0]):
            try:
                for _ in range(burst + 1):  # (a flood fills the outbox of a stalled guest)
                    s.sendto(data, peer)
            except OSError:
                pass
    w.turn()


def _upstream(w: _World, inp: _Input) -> None:
    """An answer from the resolver (or from one of our other sockets, to its address)."""
    which, id_xor, flags, mode = inp.u8(), inp.u16(), inp.u16(), inp.u8()
    counts, body = inp.take(8).ljust(8, b"\0"), inp.take(inp.u16() % 1024)
    w.recv_udp()
    if w.queries:
        s, query, peer = w.queries[which % len(w.queries)]
        qid = int.from_bytes(query[:2], "big") ^ id_xor
        if mode % 3 == 0:  # the question echoed, then the input's records
            answer = qid.to_bytes(2, "big") + (flags | 0x8000).to_bytes(2, "big") + \
                query[4:6] + counts[2:] + query[12:] + body
        else:
            answer = qid.to_bytes(2, "big") + flags.to_bytes(2, "big") + counts + body
        if mode % 3 == 2:
            answer = answer[:mode // 3 % 16]
        if which & 0x80:  # from the wrong source
            others = [p for p in w.udp_peers.get(4 if s.family == socket.AF_INET else 6, ())
                      if p.fileno() >= 0]
            s = others[0] if others else s
        try:
            s.sendto(answer, peer)
        except OSError:
            pass
    w.turn()


def _time(w: _World, inp: _Input) -> None:
    b = inp.u8()
    w.now += b * b / 64  # up to ~17 minutes: retries, SERVFAIL, connect and UDP timeouts
    w.turn()


def _close_peer(w: _World, inp: _Input) -> None:
    """A peer goes away: connects get refused, datagrams an ICMP port unreachable (its
    port stays allowed: the kernel does not hand a port it just freed out again within
    the few milliseconds an input runs, in practice)."""
    b = inp.u8()
    group = w.listeners if b & 1 else w.udp_peers
    socks = [s for ss in group.values() for s in ss]
    socks[b // 2 % len(socks)].close()
    w.turn()


def _stall(w: _World, inp: _Input) -> None:
    w.stalled = not w.stalled
    w.turn()


_STEPS = (_frame, _syn, _segment, _udp_step, _ping, _query, _peer_tcp, _peer_udp,
          _upstream, _time, _close_peer, _stall)


def gateway(data: bytes) -> None:
    """Steps from the input (its first byte picks the loopback mapping); see the module
    docstring for what is checked."""
    if not data:
        return
    before = _fds()
    w = _World(data[0])
    try:
        inp = _Input(data[1:])
        while inp.more:
            _STEPS[inp.u8() % len(_STEPS)](w, inp)
        w.now += 0.25
        w.turn()
    finally:
        w.close()
    after = _fds()
    if len(after) > len(before):
        leaked = {fd: _link(fd) for fd in set(after) - set(before)}
        raise AssertionError(f"fds left open after the stack was torn down: {leaked}")


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


# -- the dns_forward target ---------------------------------------------------------------
class _FakeGateway:
    """What DnsForwarder asks of the gateway: counters and a selector."""

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self.selector = _NoSelector()

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] += n


class _NoSelector:
    def register(self, *args) -> None:
        pass

    def unregister(self, *args) -> None:
        pass


class _ReplySocket:
    """The DnsServerSocket a query came to: what it was asked to send the guest."""

    def __init__(self, responder) -> None:
        self.responder = responder
        self.sent: list[tuple] = []

    def send_to(self, data: bytes, addr) -> None:
        self.sent.append((bytes(data), addr))


def dns_forward(data: bytes) -> None:
    """Queries in, upstream answers (any bytes, right or wrong source) back, time moving:
    what reaches the guest is exactly what the forwarder's contract says."""
    from gateway.dns import MAX_PENDING, DnsForwarder
    from netstack.socket.dns_responder import DnsResponder
    from netstack.socket.services import forwardable
    from netstack.wire.dns import DnsPacket, DnsRepr, Rcode

    before = _fds()
    socks = []
    for addr in ("127.0.0.1", "127.0.0.1"):  # the server, and a socket that is not it
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, 0))
        s.setblocking(False)
        socks.append(s)
    server, other = socks
    gw = _FakeGateway()
    responder = DnsResponder()
    reply = _ReplySocket(responder)
    fw = DnsForwarder(gw, [("127.0.0.1", server.getsockname()[1])])
    inp, now = _Input(data), 1000.0
    guest_ids: dict[int, int] = {}  # our id → the guest's, for queries in flight
    seen: list[tuple] = []  # (query with our id, the forwarder's address)
    try:
        while inp.more:
            op = inp.u8() % 3
            if op == 0:  # a query from the guest
                qid, flags, qtype = inp.u16(), inp.u16(), inp.u16()
                query = _dns_query(qid, flags if flags & 0x8000 else 0x0100, qtype,
                                   inp.take(inp.u8()))
                parsed = forwardable(responder, query)
                if parsed is not None:
                    had = set(fw.pending)
                    fw.submit(query, parsed, reply, (GUEST4, 50000), now)
                    for new in set(fw.pending) - had:
                        guest_ids[new] = qid
            elif op == 1:  # an answer from upstream (or from elsewhere)
                which, id_xor, cut = inp.u8(), inp.u16(), inp.u8()
                body = inp.take(inp.u16() % 1024)
                while True:
                    try:
                        q, peer = server.recvfrom(65536)
                    except BlockingIOError:
                        break
                    seen.append((q, peer))
                del seen[:-32]
                if not seen:
                    continue
                q, peer = seen[which % len(seen)]
                answer = (int.from_bytes(q[:2], "big") ^ id_xor).to_bytes(2, "big") + body
                if cut & 0x80:  # truncated
                    answer = answer[:cut & 15]
                wrong = bool(cut & 0x40)  # from another address than the server's
                (other if wrong else server).sendto(answer, peer)
                qid = int.from_bytes(answer[:2], "big") if len(answer) >= 2 else -1
                ok = (len(answer) >= 12 and qid in fw.pending and answer[2] & 0x80
                      and not wrong)
                n = len(reply.sent)
                fw.on_event(now, selectors.EVENT_READ)
                got = reply.sent[n:]
                want = [(guest_ids[qid].to_bytes(2, "big") + answer[2:], (GUEST4, 50000))] \
                    if ok else []
                if got != want:
                    raise AssertionError(f"answer {answer.hex()} relayed as {got}, "
                                         f"expected {want}")
                if ok:
                    del guest_ids[qid]
            else:  # time passes: retries, SERVFAIL
                now += inp.u8() / 16
                n = len(reply.sent)
                fw.expire(now)
                for answer, _to in reply.sent[n:]:
                    r = DnsRepr.parse(DnsPacket.new_checked(answer))
                    if r.rcode != Rcode.SERVFAIL or r.id not in guest_ids.values():
                        raise AssertionError(f"expiry sent {r}")
                guest_ids = {k: v for k, v in guest_ids.items() if k in fw.pending}
            if len(fw.pending) > MAX_PENDING or set(fw.pending) != set(guest_ids):
                raise AssertionError(f"pending {sorted(fw.pending)} vs {sorted(guest_ids)}")
    finally:
        fw.close()
        for s in socks:
            s.close()
    if len(_fds()) > len(before):
        raise AssertionError("fds left open by the DNS forwarder")
