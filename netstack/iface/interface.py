"""The interface: Ethernet, ARP, IPv4 (reassembly, fragmentation), ICMP and routing.

`Interface.poll(now, device, sockets)` does one bounded round of work: at most `rx_budget`
received frames, then each socket's `dispatch` with at most `tx_budget` packets per socket.
`poll_at(now, sockets)` says when it must be called next (a time <= now: at once), so a
runtime sleeps exactly `poll_delay`. Time is an argument; nothing here reads a clock or
touches a file descriptor.

Receive path, per frame (every drop is counted in `stats`, a Counter, under its reason):

1. Ethernet: accept our MAC, broadcast and the multicast groups we joined; drop the rest,
   frames from our own MAC, VLAN-tagged frames and other EtherTypes.
2. ARP (RFC 826): answer requests for our addresses; learn the sender from requests and
   replies addressed to us, and refresh entries we already have from any ARP packet.
   Senders claiming our own address, or with a multicast MAC, are ignored.
3. IPv4: header checksum (unless the device verified it), fragments to the reassembler,
   martian sources (multicast, broadcast) dropped; accept our unicast addresses, the
   limited and subnet broadcasts, joined groups, everything with `any_ip`. A unicast
   datagram in a link-layer broadcast is dropped (RFC 1122 §3.3.6). Raw sockets of the
   protocol get a copy, then the protocol handler (`protocol_handlers[proto]`) runs.
4. UDP: the first UDP socket that `accepts` it gets it; none → ICMP port unreachable
   (token bucket, never for broadcast/multicast, never to 0.0.0.0). While we have no
   address (a DHCP client), UDP to port 68 sent to our MAC is accepted whatever its IP
   destination.
5. ICMP: echo requests to our unicast addresses are answered; echo replies and errors go
   to ICMP sockets that accept them.

Transmit path (`emit`, handed to every socket's `dispatch`): route (on-link subnet, then
`routes`, then the default gateway; no route → drop), choose the source address, resolve
the next hop in the `NeighborCache` (miss → the datagram waits in a bounded queue while
ARP asks, at most once a second, three times), fragment datagrams larger than the MTU
unless DF is set, and write Ethernet + IPv4 + payload straight into the device's buffer.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from netstack.iface.ipv6 import Ipv6Layer
from netstack.iface.reassembly import Ipv4Reassembler
from netstack.socket.tcp.socket import rst_reply as _tcp_rst_reply
from netstack.wire import Error
from netstack.wire.arp import ArpOperation, ArpPacket, ArpRepr
from netstack.wire.checksum import checksum
from netstack.wire.ethernet import BROADCAST, EthernetAddress
from netstack.wire.icmpv4 import (
    DstUnreachable,
    Icmpv4Message,
    Icmpv4Packet,
    Icmpv4Repr,
    quote_offending,
)
from netstack.wire.ipv4 import IpProtocol, Ipv4Cidr, Ipv4Packet, Ipv4Repr
from netstack.wire.ipv6 import Ipv6Cidr, Ipv6Repr
from netstack.wire.tcp import TcpPacket, TcpRepr
from netstack.wire.udp import UdpPacket, UdpRepr

if TYPE_CHECKING:  # pragma: no cover
    from netstack.socket.set import SocketSet

LIMITED_BROADCAST = IPv4Address("255.255.255.255")
UNSPECIFIED = IPv4Address(0)
ZERO_MAC = EthernetAddress(b"\x00" * 6)
DHCP_CLIENT_PORT = 68

ETH_HEADER_LEN = 14
IP_HEADER_LEN = 20
SWEEP_PER_POLL = 16  # sockets visited in turn beyond those with work ...
SWEEP_INTERVAL = 0.01  # ... at most this often (1,600 a second), on a poll that took no
SWEEP_OVERDUE = 0.1  # frame (a reply waits for the poll to end), or on any poll once a
# poll with frames has put it off this long (the first frame after an idle spell is answered
# first: the sweep comes on a later poll)
ARP_FRAME_LEN = ETH_HEADER_LEN + 28
_ETHERTYPE_IPV4 = b"\x08\x00"
_ETHERTYPE_ARP = b"\x08\x06"
_UDP = int(IpProtocol.UDP)
_ICMP = int(IpProtocol.ICMP)
_TCP = int(IpProtocol.TCP)
# version/ihl, tos, total length, ident, flags/offset, ttl, protocol, checksum, src, dst
_IP_HDR = struct.Struct("!BBHHHBBH4s4s")
_U16 = struct.Struct("!H")

# emit(dst, protocol, payload_len, fill, src=None, *, ttl, dont_frag, dst_hw) -> bool
Fill = Callable[[memoryview, IPv4Address, bool], object]


def multicast_mac(group: IPv4Address) -> EthernetAddress:
    """The Ethernet address of an IPv4 multicast group (RFC 1112 §6.4)."""
    low = int(group) & 0x7FFFFF
    return EthernetAddress(b"\x01\x00\x5e" + low.to_bytes(3, "big"))


@dataclass
class InterfaceConfig:
    """How an interface starts. `routes` are (destination CIDR, gateway) pairs, longest
    prefix first wins; `default_gateway` catches everything else."""

    hardware_addr: EthernetAddress
    ip_addrs: list[Ipv4Cidr] = field(default_factory=list)
    default_gateway: IPv4Address | None = None
    routes: list[tuple[Ipv4Cidr, IPv4Address]] = field(default_factory=list)
    any_ip: bool = False  # accept datagrams to any destination address
    rx_budget: int = 64  # frames received per poll
    tx_budget: int = 64  # packets dispatched per socket per poll
    icmp_error_rate: float = 100.0  # ICMP errors per second (token bucket)
    icmp_error_burst: int = 10
    # IPv6: a link-local address from the MAC is always there while `ipv6` is on
    ipv6: bool = True
    ipv6_addrs: list[Ipv6Cidr] = field(default_factory=list)
    ipv6_default_router: IPv6Address | None = None
    ipv6_routes: list[tuple[Ipv6Cidr, IPv6Address]] = field(default_factory=list)
    ipv6_router: bool = False  # we are the link's router (join ff02::2, NA with R set)
    accept_ra: bool = True  # learn default router/prefixes/MTU from RAs (hosts only)
    dad: bool = True  # duplicate address detection (optimistic, RFC 4429)


class _Pending:
    __slots__ = ("queue", "sent", "next_at")

    def __init__(self, now: float) -> None:
        self.queue: deque[bytes] = deque()
        self.sent = 0
        self.next_at = now


class NeighborCache:
    """IPv4 → Ethernet address, with expiry, LRU eviction and bounded resolution queues.

    - Entries live `expiry` seconds from the last time they were filled; at most
      `capacity` of them, the least recently used evicted first.
    - A datagram to an unresolved address waits in that address's queue (at most
      `queue_per_dest` datagrams), and all queues together hold at most `queue_total`
      datagrams and `queue_bytes` bytes; beyond that new datagrams are dropped.
    - `due(now)` lists the addresses to send an ARP request for now: once per
      `retry_interval` per address, `max_requests` times; after that the address's queue
      is dropped (counted as `neighbor_unreachable`).
    """

    __slots__ = ("capacity", "expiry", "retry_interval", "max_requests", "queue_per_dest",
                 "queue_total", "queue_bytes", "stats", "_entries", "_pending", "_queued",
                 "_queued_bytes")

    def __init__(self, capacity: int = 1024, expiry: float = 60.0, retry_interval: float = 1.0,
                 max_requests: int = 3, queue_per_dest: int = 16, queue_total: int = 256,
                 queue_bytes: int = 1 << 20, stats: Counter | None = None) -> None:
        self.capacity = capacity
        self.expiry = expiry
        self.retry_interval = retry_interval
        self.max_requests = max_requests
        self.queue_per_dest = queue_per_dest
        self.queue_total = queue_total
        self.queue_bytes = queue_bytes
        self.stats = stats if stats is not None else Counter()
        self._entries: OrderedDict[IPv4Address, tuple[EthernetAddress, float]] = OrderedDict()
        self._pending: dict[IPv4Address, _Pending] = {}
        self._queued = 0
        self._queued_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, addr: object) -> bool:
        return addr in self._entries

    @property
    def queued(self) -> int:
        """Datagrams waiting for resolution, over all addresses."""
        return self._queued

    def lookup(self, addr: IPv4Address, now: float) -> EthernetAddress | None:
        entry = self._entries.get(addr)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[addr]
            self.stats["neighbor_expired"] += 1
            return None
        self._entries.move_to_end(addr)
        return entry[0]

    def fill(self, addr: IPv4Address, mac: EthernetAddress, now: float) -> list[bytes]:
        """Learn `addr` is at `mac`; return the datagrams that were waiting for it."""
        entries = self._entries
        entries[addr] = (mac, now + self.expiry)
        entries.move_to_end(addr)
        while len(entries) > self.capacity:
            entries.popitem(last=False)
            self.stats["neighbor_evicted"] += 1
        pending = self._pending.pop(addr, None)
        if pending is None:
            return []
        self._forget(pending)
        return list(pending.queue)

    def _forget(self, pending: _Pending) -> None:
        self._queued -= len(pending.queue)
        self._queued_bytes -= sum(len(d) for d in pending.queue)

    def enqueue(self, addr: IPv4Address, datagram: bytes, now: float) -> bool:
        """Hold `datagram` until `addr` resolves; False (and counted) if it was dropped."""
        pending = self._pending.get(addr)
        if self._queued >= self.queue_total or \
                self._queued_bytes + len(datagram) > self.queue_bytes:
            self.stats["neighbor_queue_full"] += 1
            return False
        if pending is None:
            pending = self._pending[addr] = _Pending(now)
        elif len(pending.queue) >= self.queue_per_dest:
            self.stats["neighbor_queue_full"] += 1
            return False
        pending.queue.append(datagram)
        self._queued += 1
        self._queued_bytes += len(datagram)
        return True

    def due(self, now: float) -> list[IPv4Address]:
        """Addresses to send an ARP request for now; gives up on those asked enough."""
        if not self._pending:
            return []
        out = []
        for addr, p in list(self._pending.items()):
            if now < p.next_at:
                continue
            if p.sent >= self.max_requests:
                del self._pending[addr]
                self._forget(p)
                self.stats["neighbor_unreachable"] += len(p.queue)
                continue
            p.sent += 1
            p.next_at = now + self.retry_interval
            out.append(addr)
        return out

    def poll_at(self) -> float | None:
        if not self._pending:
            return None
        return min(p.next_at for p in self._pending.values())

    def entries(self) -> list[tuple[IPv4Address, EthernetAddress, float]]:
        """(address, MAC, expiry time) of every entry, least recently used first."""
        return [(a, mac, exp) for a, (mac, exp) in self._entries.items()]

    def clear(self) -> None:
        self._entries.clear()
        self._pending.clear()
        self._queued = self._queued_bytes = 0


class Interface(Ipv6Layer):
    """One Ethernet interface with IPv4 and IPv6 addresses. See the module docstring
    (and `netstack.iface.ipv6` for the IPv6 half).

    Not thread-safe: one thread polls it (the runtime holds a lock around every use)."""

    def __init__(self, config: InterfaceConfig, now: float = 0.0) -> None:
        self.hardware_addr = EthernetAddress(config.hardware_addr)
        self.stats: Counter = Counter()
        self.neighbors = NeighborCache(stats=self.stats)
        self.reassembler = Ipv4Reassembler()
        self.any_ip = config.any_ip
        # NAT (the `gateway` package): asked about what no socket takes; it makes us
        # accept unicast to any address
        self.gateway = None
        self.rx_budget = config.rx_budget
        self.tx_budget = config.tx_budget
        self.icmp_error_rate = config.icmp_error_rate
        self.icmp_error_burst = config.icmp_error_burst
        self._tokens = float(config.icmp_error_burst)
        self._tokens_at = now
        self._default_gateway: IPv4Address | None = None
        self._routes: list[tuple[int, int, IPv4Address]] = []
        self._cidrs: list[Ipv4Cidr] = []
        self._nets: list[tuple[int, int, IPv4Address]] = []  # (network, mask, our address)
        self._addr_set: frozenset[IPv4Address] = frozenset()
        self._bcast_set: frozenset[IPv4Address] = frozenset()
        self._addr_ints: frozenset[int] = frozenset()  # the same, as ints: cheap to hash
        self._bcast_ints: frozenset[int] = frozenset({0xFFFFFFFF})
        self._groups: set[IPv4Address] = set()
        self._group_macs: set[bytes] = set()
        self._ident = 0
        self._announce = False
        self._rx_more = False
        self._tx_blocked = False
        self._budget = 0
        self._emitted = 0
        self._last_src_hw = EthernetAddress()  # the last frame's sender, made once
        # per-poll state
        self._now = now
        self._device = None
        self._sockets: SocketSet | None = None
        self._mtu = 1500
        self._rx_csum_ip = self._rx_csum_udp = self._rx_csum_icmp = True
        self._rx_csum_tcp = True
        self._tx_csum_ip = True
        self._tx_csum: dict[int, bool] = {}
        # protocol number → handler(ip_repr, packet, payload, cast, raw_taken, src_hw);
        # TCP registers itself here.
        self.protocol_handlers: dict[int, Callable] = {_UDP: self._rx_udp, _ICMP: self._rx_icmp,
                                                       _TCP: self._rx_tcp}
        self._tcp_sig: tuple = ()
        self._tso_max: int | None = None
        self._ipv6_offload = False
        self._next_sweep = 0.0
        self._sweep_owed: float | None = None  # when a poll with frames first put it off
        self.set_ip_addrs(config.ip_addrs)
        self.set_default_gateway(config.default_gateway)
        for cidr, via in config.routes:
            self.add_route(cidr, via)
        self._init_ipv6(config, now)

    # -- configuration ------------------------------------------------------------------
    @property
    def ip_addrs(self) -> list[Ipv4Cidr]:
        return list(self._cidrs)

    def set_ip_addrs(self, cidrs) -> None:
        """Replace every address (the DHCP client on a new lease). Announces them with
        gratuitous ARP on the next poll."""
        self._cidrs = [c if isinstance(c, Ipv4Cidr) else Ipv4Cidr.parse(str(c)) for c in cidrs]
        self._nets = [(int(c.address) & c.mask_int, c.mask_int, c.address) for c in self._cidrs]
        self._addr_set = frozenset(c.address for c in self._cidrs)
        self._bcast_set = frozenset(c.broadcast for c in self._cidrs if c.broadcast is not None)
        self._addr_ints = frozenset(int(a) for a in self._addr_set)
        self._bcast_ints = frozenset({0xFFFFFFFF, *(int(a) for a in self._bcast_set)})
        self._announce = bool(self._cidrs)

    def add_ip_addr(self, cidr: Ipv4Cidr) -> None:
        if cidr not in self._cidrs:
            self.set_ip_addrs([*self._cidrs, cidr])

    def remove_ip_addr(self, addr: IPv4Address) -> None:
        self.set_ip_addrs([c for c in self._cidrs if c.address != addr])

    def has_ip_addr(self, addr: IPv4Address | IPv6Address) -> bool:
        if isinstance(addr, IPv6Address):
            return int(addr) in self._addr6
        return addr in self._addr_set

    @property
    def default_gateway(self) -> IPv4Address | None:
        return self._default_gateway

    def set_default_gateway(self, gateway: IPv4Address | None) -> None:
        self._default_gateway = None if gateway is None else IPv4Address(gateway)

    def add_route(self, cidr: Ipv4Cidr, via: IPv4Address) -> None:
        self._routes.append((int(cidr.address) & cidr.mask_int, cidr.mask_int, IPv4Address(via)))
        self._routes.sort(key=lambda r: -r[1])

    def clear_routes(self) -> None:
        self._routes.clear()

    def join_multicast_group(self, group: IPv4Address | IPv6Address) -> None:
        """Receive datagrams sent to `group` (IPv6: announced with an MLDv2 report; IPv4: no
        IGMP report is sent)."""
        if isinstance(group, IPv6Address):
            self.join_ipv6_group(group)
            return
        group = IPv4Address(group)
        if not group.is_multicast:
            raise ValueError(f"{group} is not a multicast address")
        self._groups.add(group)
        self._refresh_group_macs()

    def leave_multicast_group(self, group: IPv4Address | IPv6Address) -> None:
        if isinstance(group, IPv6Address):
            self.leave_ipv6_group(group)
            return
        group = IPv4Address(group)
        self._groups.discard(group)
        self._refresh_group_macs()

    def _refresh_group_macs(self) -> None:
        self._group_macs = {bytes(multicast_mac(g)) for g in self._groups} | \
            self._group_macs6()

    @property
    def now(self) -> float:
        """The time of the last poll: the clock the interface's timers count in."""
        return self._now

    # -- polling ------------------------------------------------------------------------
    def poll(self, now: float, device, sockets: SocketSet) -> bool:
        """One bounded round of work. True if anything was received or sent (socket
        readiness may have changed)."""
        self._begin(now, device, sockets)
        emitted = self._emitted
        if self._announce:
            self._announce = False
            for cidr in self._cidrs:
                self._send_arp(ArpOperation.REQUEST, BROADCAST, cidr.address, ZERO_MAC,
                               cidr.address)
        self._poll6(now)
        reassembler = self.reassembler
        if len(reassembler):
            at = reassembler.poll_at()
            if at is not None and at <= now:
                reassembler.expire(now)
        self._arp_requests(now)

        budget = self.rx_budget
        received = 0
        on_frame = self._on_frame
        while received < budget:
            tokens = device.receive(now)
            if tokens is None:
                break
            received += 1
            tokens[0].consume(on_frame)
        self.stats["rx_frames"] += received
        self._rx_more = received >= budget

        self._tx_blocked = False
        emit = self._socket_emit
        # a few more sockets in turn, every SWEEP_INTERVAL: a bounded safety net for a
        # change nobody announced (it was a visit of every socket every 50 ms)
        sweep = 0
        if now >= self._next_sweep:
            owed = self._sweep_owed
            if not received or (owed is not None and now >= owed + SWEEP_OVERDUE):
                sweep = SWEEP_PER_POLL
                self._next_sweep = now + SWEEP_INTERVAL
                self._sweep_owed = None
            elif owed is None:
                self._sweep_owed = now
        due = sockets.due(now, sweep)
        dirty, schedule = sockets.dirty, sockets.schedule
        budget = self.tx_budget
        for i, sock in enumerate(due):
            self._budget = budget
            sock.dispatch(now, emit)
            if self._tx_blocked:
                dirty.update(due[i:])  # the device is full: they go first next time
                break
            dirty.discard(sock)
            schedule(sock, sock.poll_at(now))
        self._device = None
        return received > 0 or self._emitted != emitted

    def _begin(self, now: float, device, sockets) -> None:
        self._now = now
        self._device = device
        self._sockets = sockets
        caps = device.capabilities()
        self._mtu = caps.mtu
        cs = getattr(caps, "checksum", None)
        if cs is None:
            self._rx_csum_ip = self._rx_csum_udp = self._rx_csum_icmp = True
            self._tx_csum_ip = True
            self._tx_csum = {}
        else:
            self._rx_csum_ip = self._tx_csum_ip = not cs.ipv4
            self._rx_csum_udp = not cs.udp
            self._rx_csum_icmp = not cs.icmp
            self._tx_csum = {_UDP: cs.udp, _ICMP: cs.icmp, _TCP: cs.tcp}
        self._rx_csum_tcp = cs is None or not cs.tcp
        self._ipv6_offload = bool(getattr(caps, "ipv6_offload", False))
        # TCP segments up to tso_max cross the device whole (the guest segments them)
        self._tso_max = getattr(caps, "tso_max", None)
        sig = (self._mtu, self._tso_max, self._ipv6_offload)
        fresh = sockets.fresh
        if sig != self._tcp_sig:  # the MTU or TSO changed: tell every TCP socket
            self._tcp_sig = sig
            sockets.touch_all()
            fresh = list(sockets.of_kind("tcp"))
        if fresh:  # (and each new TCP socket once; new sockets are dirty already)
            mtu, tso, v6 = sig
            for sock in fresh:
                if sock._set is sockets:
                    sock.set_link(mtu, tso, v6)
            sockets.fresh = []

    def poll_at(self, now: float, sockets: SocketSet) -> float | None:
        """When `poll` must run next (<= now: at once), or None for "when a frame comes"."""
        if self._rx_more or self._announce:
            return now
        at = self.neighbors.poll_at()
        a6 = self._poll_at6()
        if a6 is not None and (at is None or a6 < at):
            at = a6
        r = self.reassembler.poll_at()
        if r is not None and (at is None or r < at):
            at = r
        # The schedule the last poll left (see SocketSet): no socket is asked here.
        if sockets.all_dirty or sockets.dirty:
            s = now + 0.001 if self._tx_blocked else now  # device full: back off, not spin
            return s if at is None or s < at else at
        s = sockets.next_at()
        if s is not None:
            if self._tx_blocked and s <= now:
                s = now + 0.001  # the device was full: back off instead of spinning
            if at is None or s < at:
                at = s
        return at

    def poll_delay(self, now: float, sockets: SocketSet) -> float | None:
        """How long to sleep before the next `poll` (0 = do not sleep), or None."""
        at = self.poll_at(now, sockets)
        if at is None:
            return None
        return max(0.0, at - now)

    # -- receive ------------------------------------------------------------------------
    def _on_frame(self, frame: memoryview) -> None:
        stats = self.stats
        if len(frame) < ETH_HEADER_LEN:
            stats["eth_truncated"] += 1
            return
        dst = frame[0:6]
        if dst == self.hardware_addr:
            l2_cast = False
        elif frame[0] & 1 and (dst == BROADCAST or bytes(dst) in self._group_macs):
            l2_cast = True
        else:
            stats["eth_not_for_us"] += 1
            return
        if frame[6:12] == self.hardware_addr:
            stats["eth_own_source"] += 1
            return
        if frame[12] == 0x08 and frame[13] == 0x00:
            self._rx_ipv4(frame, l2_cast)
        elif frame[12] == 0x86 and frame[13] == 0xDD:
            self._rx_ipv6(frame, l2_cast)
        elif frame[12] == 0x08 and frame[13] == 0x06:
            self._rx_arp(frame)
        elif frame[12] == 0x81 and frame[13] == 0x00:
            stats["eth_vlan"] += 1
        else:
            stats["eth_unknown_type"] += 1

    def _sender_mac(self, frame: memoryview) -> EthernetAddress:
        """The frame's source MAC, made once per run of frames from one sender (nearly
        every frame comes from one peer: the guest)."""
        mac = self._last_src_hw
        if frame[6:12] != mac:
            mac = self._last_src_hw = EthernetAddress(frame[6:12])
        return mac

    def _on_link(self, addr: IPv4Address) -> bool:
        a = int(addr)
        for net, mask, _ in self._nets:
            if a & mask == net:
                return True
        return False

    def _rx_arp(self, frame: memoryview) -> None:
        stats = self.stats
        try:
            arp = ArpRepr.parse(ArpPacket(frame[ETH_HEADER_LEN:]))
        except Error:
            stats["arp_malformed"] += 1
            return
        sha, spa, tpa = arp.source_hardware_addr, arp.source_protocol_addr, arp.target_protocol_addr
        if sha[0] & 1 or sha == self.hardware_addr:
            stats["arp_bad_source"] += 1
            return
        if spa in self._addr_set:
            stats["arp_conflict"] += 1
            return
        for_us = tpa in self._addr_set
        if spa != UNSPECIFIED and self._on_link(spa) and (for_us or spa in self.neighbors):
            self._learn(spa, sha)
        if arp.operation == ArpOperation.REQUEST and for_us:
            self._send_arp(ArpOperation.REPLY, sha, tpa, sha, spa)
            stats["arp_replies_sent"] += 1
        elif not for_us:
            stats["arp_not_for_us"] += 1

    def _learn(self, addr: IPv4Address, mac: EthernetAddress) -> None:
        for datagram in self.neighbors.fill(addr, mac, self._now):
            self._send_datagram(mac, datagram)

    def _rx_ipv4(self, frame: memoryview, l2_cast: bool) -> None:
        stats = self.stats
        now = self._now
        try:
            pkt = Ipv4Packet.new_checked(frame[ETH_HEADER_LEN:])
        except Error:
            stats["ipv4_truncated"] += 1
            return
        b = pkt.buffer
        if b[0] >> 4 != 4:
            stats["ipv4_bad_version"] += 1
            return
        if self._rx_csum_ip and not pkt.verify_checksum():
            stats["ipv4_bad_checksum"] += 1
            return
        checked = True  # (new_checked did)
        if pkt.is_fragment:
            stats["ipv4_fragments"] += 1
            datagram = self.reassembler.add(now, pkt)
            if datagram is None:
                return
            pkt = Ipv4Packet(datagram)
            checked = False
        try:
            ip = Ipv4Repr.parse(pkt, verify_checksum=False, length_checked=checked)
        except Error:
            stats["ipv4_malformed"] += 1
            return
        src, dst = ip.src_addr, ip.dst_addr
        s, d = int(src), int(dst)
        if s >> 28 == 0xE or s in self._bcast_ints:
            stats["ipv4_martian_source"] += 1
            return
        foreign = False
        if d in self._addr_ints:
            if l2_cast:
                stats["ipv4_unicast_in_l2_broadcast"] += 1
                return
            cast = False
        elif d in self._bcast_ints:
            cast = True
        elif d >> 28 == 0xE:
            if dst not in self._groups:
                stats["ipv4_not_for_us"] += 1
                return
            cast = True
        elif self.any_ip:
            cast = l2_cast
        elif self.gateway is not None and not l2_cast:
            cast = False  # to elsewhere: the gateway's, if no socket of ours takes it
        elif ip.protocol == _UDP and not l2_cast and not self._cidrs:
            foreign = True  # perhaps a DHCP offer to the address we do not have yet
            cast = False
        else:
            stats["ipv4_not_for_us"] += 1
            return
        src_hw = self._sender_mac(frame)
        if not cast and s and src not in self.neighbors and self._on_link(src):
            self.neighbors.fill(src, src_hw, now)  # what we would learn by asking
        payload = pkt.payload
        raw_taken = False
        sockets = self._sockets
        for sock in sockets.of_kind("raw"):
            if sock.accepts(ip, None):
                sock.process(now, ip, None, payload, src_hw)
                sockets.dirty.add(sock)
                raw_taken = True
        if foreign:
            self._rx_udp(ip, pkt, payload, cast, raw_taken, src_hw, foreign=True)
            return
        handler = self.protocol_handlers.get(ip.protocol)
        if handler is not None:
            handler(ip, pkt, payload, cast, raw_taken, src_hw)
        elif not raw_taken:
            stats["ipv4_unknown_protocol"] += 1

    def _rx_udp(self, ip: Ipv4Repr, pkt: Ipv4Packet, payload: memoryview, cast: bool,
                raw_taken: bool, src_hw: EthernetAddress, foreign: bool = False) -> None:
        stats = self.stats
        try:
            udp = UdpPacket.new_checked(payload)
            udp_repr = UdpRepr.parse(udp, ip.src_addr, ip.dst_addr, self._rx_csum_udp)
        except Error:
            stats["udp_malformed"] += 1
            return
        if foreign and udp_repr.dst_port != DHCP_CLIENT_PORT:
            stats["ipv4_not_for_us"] += 1
            return
        for sock in self._sockets.of_kind("udp"):
            if sock.accepts(ip, udp_repr):
                sock.process(self._now, ip, udp_repr, udp.payload, src_hw)
                self._sockets.dirty.add(sock)
                return
        gw = self.gateway
        if gw is not None and not cast and not foreign and \
                gw.udp(self._now, ip, udp_repr, udp.payload):
            return
        if foreign:
            stats["ipv4_not_for_us"] += 1
        elif raw_taken:
            pass
        elif cast:
            stats["udp_no_socket_broadcast"] += 1
        else:
            stats["udp_port_unreachable"] += 1
            if isinstance(ip, Ipv6Repr):
                self._icmp6_port_unreachable(pkt)
            else:
                self._icmp_error(ip, pkt, DstUnreachable.PORT_UNREACHABLE)

    def _rx_tcp(self, ip: Ipv4Repr, pkt: Ipv4Packet, payload: memoryview, cast: bool,
                raw_taken: bool, src_hw: EthernetAddress) -> None:
        """Demux a segment to the first TCP socket (connection or listener) that accepts
        it; answer segments nobody takes with a RST (RFC 9293 §3.10.7.1), never to a
        broadcast or multicast."""
        stats = self.stats
        if cast:
            stats["tcp_broadcast_dropped"] += 1
            return
        try:
            # (parse checks the length: no new_checked first)
            seg = TcpRepr.parse(TcpPacket(payload), ip.src_addr, ip.dst_addr,
                                self._rx_csum_tcp)
        except Error:
            stats["tcp_malformed"] += 1
            return
        if seg.options_malformed:
            stats["tcp_options_malformed"] += 1
        sockets = self._sockets
        # O(1) whatever the table's size: the connection by 4-tuple, else the listeners
        # on the port (SocketSet.tcp_index); `accepts` has the last word
        conns, listeners = sockets.tcp_lookup(seg.dst_port, ip.src_addr, seg.src_port)
        for group in (conns, listeners):
            for sock in group:
                if sock.accepts(ip, seg):
                    sock.process(self._now, ip, seg, seg.payload, src_hw)
                    sockets.dirty.add(sock)
                    return
        gw = self.gateway
        if gw is not None and gw.tcp(self._now, ip, seg):
            return
        if raw_taken:
            return
        reply = _tcp_rst_reply(ip, seg)
        if reply is None:
            return
        stats["tcp_rst_sent"] += 1
        peer = ip.src_addr

        def fill(buf, src, csum):
            reply.emit(TcpPacket(buf), src, peer, csum)

        self.emit(peer, _TCP, reply.buffer_len(), fill, ip.dst_addr, dont_frag=True)

    def _rx_icmp(self, ip: Ipv4Repr, pkt: Ipv4Packet, payload: memoryview, cast: bool,
                 raw_taken: bool, src_hw: EthernetAddress) -> None:
        stats = self.stats
        try:
            icmp = Icmpv4Repr.parse(Icmpv4Packet.new_checked(payload), self._rx_csum_icmp)
        except Error:
            stats["icmp_malformed"] += 1
            return
        for sock in self._sockets.of_kind("icmp"):
            if sock.accepts(ip, icmp):
                sock.process(self._now, ip, icmp, payload, src_hw)
                self._sockets.dirty.add(sock)
        if icmp.msg_type == Icmpv4Message.ECHO_REQUEST:
            if cast:
                stats["icmp_echo_broadcast_ignored"] += 1
                return
            gw = self.gateway
            if gw is not None and int(ip.dst_addr) not in self._addr_ints:
                if not gw.icmp_echo(self._now, ip, icmp):
                    stats["icmp_echo_elsewhere_dropped"] += 1  # never answered in its name
                return
            reply = Icmpv4Repr.echo_reply(icmp.ident, icmp.seq_no, icmp.data)

            def fill(buf, _src, csum):
                reply.emit(Icmpv4Packet(buf), csum)

            self.emit(ip.src_addr, _ICMP, reply.buffer_len(), fill, ip.dst_addr)
            stats["icmp_echo_replies"] += 1

    def _icmp_error(self, ip: Ipv4Repr, pkt: Ipv4Packet, code: int) -> None:
        """Send a destination unreachable about `pkt` to its sender, rate-limited."""
        src = ip.src_addr
        if src == UNSPECIFIED or src.is_multicast:
            self.stats["icmp_error_suppressed"] += 1
            return
        if not self._take_icmp_token():
            return
        message = Icmpv4Repr.dst_unreachable(code, quote_offending(pkt))

        def fill(buf, _src, csum):
            message.emit(Icmpv4Packet(buf), csum)

        self.emit(src, _ICMP, message.buffer_len(), fill, ip.dst_addr)
        self.stats["icmp_errors_sent"] += 1

    def _take_icmp_token(self) -> bool:
        """One ICMP error may go out now (token bucket shared by both families)."""
        now = self._now
        tokens = self._tokens + max(0.0, now - self._tokens_at) * self.icmp_error_rate
        self._tokens = min(float(self.icmp_error_burst), tokens)
        self._tokens_at = now
        if self._tokens < 1.0:
            self.stats["icmp_error_rate_limited"] += 1
            return False
        self._tokens -= 1.0
        return True

    # -- transmit -----------------------------------------------------------------------
    def _socket_emit(self, dst, protocol, payload_len, fill, src=None, *, ttl=64,
                     dont_frag=False, dst_hw=None, gso_size=None) -> bool:
        if self._budget <= 0:
            return False
        self._budget -= 1
        return self.emit(dst, protocol, payload_len, fill, src, ttl=ttl, dont_frag=dont_frag,
                         dst_hw=dst_hw)

    def _route(self, dst: IPv4Address) -> IPv4Address | None:
        """The next hop towards `dst`, or None."""
        a = int(dst)
        for net, mask, _ in self._nets:
            if a & mask == net:
                return dst
        for net, mask, via in self._routes:
            if a & mask == net:
                return via
        return self._default_gateway

    def _source_for(self, dst: IPv4Address) -> IPv4Address | None:
        nets = self._nets
        if not nets:
            return UNSPECIFIED if dst == LIMITED_BROADCAST else None
        a = int(dst)
        for net, mask, ours in nets:
            if a & mask == net:
                return ours
        return nets[0][2]

    def emit(self, dst: IPv4Address, protocol: int, payload_len: int, fill: Fill,
             src: IPv4Address | None = None, *, ttl: int = 64, dont_frag: bool = False,
             dst_hw: EthernetAddress | None = None) -> bool:
        """Send one IPv4 datagram; only valid during `poll` (sockets get it in dispatch).

        `fill(buf, src_addr, fill_checksum)` writes exactly `payload_len` payload bytes
        into `buf` (for UDP/TCP the checksum needs the chosen source address;
        `fill_checksum` is False when the device computes it). `src` None picks the
        address facing `dst`. `dst_hw` skips routing and ARP (sent straight to that MAC).

        Returns False only when the device has no room (keep the packet, try later);
        True when the datagram was sent, queued for ARP, or dropped for good (no route,
        queue full: counted in `stats`)."""
        if dst.__class__ is IPv6Address:
            return self._emit6(dst, protocol, payload_len, fill, src, ttl, dst_hw)
        stats = self.stats
        now = self._now
        hop = None
        d = int(dst)
        if dst_hw is not None:
            mac = dst_hw
        elif d in self._bcast_ints:
            mac = BROADCAST
        elif d >> 28 == 0xE:
            mac = multicast_mac(dst)
        else:
            if d == 0:
                stats["tx_unspecified_destination"] += 1
                return True
            if d in self._addr_ints:
                stats["tx_to_self"] += 1
                return True
            hop = self._route(dst)
            if hop is None:
                stats["tx_no_route"] += 1
                return True
            mac = self.neighbors.lookup(hop, now)
        if src is None:
            src = self._source_for(dst)
            if src is None:
                stats["tx_no_source_address"] += 1
                return True
        total = IP_HEADER_LEN + payload_len
        if total > 0xFFFF:
            stats["tx_too_large"] += 1
            return True
        csum = not self._tx_csum.get(protocol, False)
        ident = self._ident = (self._ident + 1) & 0xFFFF
        flags = 0x4000 if dont_frag else 0
        if mac is not None and (total <= self._mtu or (
                protocol == _TCP and self._tso_max and payload_len <= self._tso_max + 60)):
            tx = self._device.transmit(now)
            if tx is None:
                stats["tx_device_busy"] += 1
                self._tx_blocked = True
                return False
            hw = self.hardware_addr
            ip_csum = self._tx_csum_ip

            def write(buf: memoryview) -> None:
                buf[0:6] = mac
                buf[6:12] = hw
                buf[12:14] = _ETHERTYPE_IPV4
                _IP_HDR.pack_into(buf, 14, 0x45, 0, total, ident, flags, ttl, protocol, 0,
                                  src.packed, dst.packed)
                if ip_csum:
                    _U16.pack_into(buf, 24, checksum(buf[14:34]))
                fill(buf[34:], src, csum)

            tx.consume(ETH_HEADER_LEN + total, write)
            self._emitted += 1
            return True
        # Slow path: the datagram is built whole first (ARP queue or fragmentation).
        datagram = bytearray(total)
        _IP_HDR.pack_into(datagram, 0, 0x45, 0, total, ident, flags, ttl, protocol, 0,
                          src.packed, dst.packed)
        _U16.pack_into(datagram, 10, checksum(memoryview(datagram)[:IP_HEADER_LEN]))
        fill(memoryview(datagram)[IP_HEADER_LEN:], src, csum)
        if mac is None:
            if self.neighbors.enqueue(hop, bytes(datagram), now):
                self._arp_requests(now)
            return True
        self._send_datagram(mac, datagram)
        return True

    def _send_datagram(self, mac: EthernetAddress, datagram) -> None:
        """Send a whole IPv4 datagram (header included) to `mac`, fragmenting it when it
        exceeds the MTU and DF is clear."""
        stats = self.stats
        now = self._now
        device = self._device
        hw = self.hardware_addr
        total = len(datagram)
        if total <= self._mtu or (datagram[9] == _TCP and self._tso_max
                                  and total - IP_HEADER_LEN <= self._tso_max + 60):
            self._send_whole(mac, _ETHERTYPE_IPV4, datagram)
            return
        if datagram[6] & 0x40:
            stats["tx_too_big_dont_fragment"] += 1
            return
        chunk = (self._mtu - IP_HEADER_LEN) // 8 * 8
        if chunk <= 0:
            stats["tx_mtu_too_small"] += 1
            return
        header = bytes(datagram[:IP_HEADER_LEN])
        body = memoryview(datagram)[IP_HEADER_LEN:]
        n = len(body)
        for off in range(0, n, chunk):
            piece = body[off : off + chunk]
            more = off + chunk < n
            tx = device.transmit(now)
            if tx is None:
                stats["tx_device_busy_dropped"] += 1
                return

            def frag(buf: memoryview, piece=piece, more=more, off=off) -> None:
                buf[0:6] = mac
                buf[6:12] = hw
                buf[12:14] = _ETHERTYPE_IPV4
                buf[14:34] = header
                _U16.pack_into(buf, 16, IP_HEADER_LEN + len(piece))
                _U16.pack_into(buf, 20, (0x2000 if more else 0) | (off // 8))
                buf[24] = buf[25] = 0
                _U16.pack_into(buf, 24, checksum(buf[14:34]))
                buf[34:] = piece

            tx.consume(ETH_HEADER_LEN + IP_HEADER_LEN + len(piece), frag)
            self._emitted += 1
            stats["tx_fragments"] += 1

    def _send_whole(self, mac: EthernetAddress, ethertype: bytes, datagram) -> None:
        """One frame: Ethernet header + a whole datagram (IPv4 or IPv6) to `mac`."""
        tx = self._device.transmit(self._now)
        if tx is None:
            self.stats["tx_device_busy_dropped"] += 1
            return
        hw = self.hardware_addr

        def whole(buf: memoryview) -> None:
            buf[0:6] = mac
            buf[6:12] = hw
            buf[12:14] = ethertype
            buf[14:] = datagram

        tx.consume(ETH_HEADER_LEN + len(datagram), whole)
        self._emitted += 1

    def _arp_requests(self, now: float) -> None:
        for addr in self.neighbors.due(now):
            spa = self._source_for(addr) or UNSPECIFIED
            self._send_arp(ArpOperation.REQUEST, BROADCAST, spa, ZERO_MAC, addr)
            self.stats["arp_requests_sent"] += 1

    def _send_arp(self, op: ArpOperation, dst_mac: EthernetAddress, spa: IPv4Address,
                  tha: EthernetAddress, tpa: IPv4Address) -> None:
        tx = self._device.transmit(self._now)
        if tx is None:
            self.stats["tx_device_busy_dropped"] += 1
            return
        arp = ArpRepr(op, self.hardware_addr, spa, tha, tpa)
        hw = self.hardware_addr

        def write(buf: memoryview) -> None:
            buf[0:6] = dst_mac
            buf[6:12] = hw
            buf[12:14] = _ETHERTYPE_ARP
            arp.emit(ArpPacket(buf[ETH_HEADER_LEN:]))

        tx.consume(ARP_FRAME_LEN, write)
        self._emitted += 1
