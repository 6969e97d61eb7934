"""The IPv6 half of the interface: addresses, neighbor discovery, ICMPv6, fragments, PMTU.

`Ipv6Layer` is mixed into `netstack.iface.Interface`, which owns the per-poll state
(`_now`, `_device`, `_sockets`, `stats`, the ICMP error token bucket) and hands it frames
with EtherType 0x86DD. Its jobs, in receive order:

1. IPv6 (RFC 8200): version and lengths checked, multicast sources dropped; accepted
   destinations are our addresses, ff02::1, the solicited-node groups of our addresses and
   the groups joined. Extension headers are walked with a bound (`walk_headers`), the
   Parameter Problem RFC 8200 asks for is sent (rate-limited), fragments go to the
   reassembler (overlaps drop the datagram, RFC 5722; atomic fragments, RFC 6946, are
   processed as they are; a first fragment without its whole header chain is dropped with
   Parameter Problem code 3, RFC 7112; a datagram that times out after its first fragment
   came gets Time Exceeded code 1, RFC 8200 §4.5). ICMPv6 errors (RFC 4443 §2.4) are never sent
   about an error (found behind extension headers too) or to a multicast or unspecified
   source, and share the interface's token bucket.
2. ICMPv6 (RFC 4443): echo requests answered (also to multicast groups we are in), echo
   replies and errors handed to ICMP sockets, Packet Too Big recorded as the path MTU of
   the quoted destination (RFC 8201; at most `MAX_PMTU_ENTRIES` destinations) and passed
   to TCP connections it names.
3. Neighbor discovery (RFC 4861): NS for our addresses answered with an NA, NS/NA feed
   the `NeighborCache6` state machine, RS handed to the router advertisement socket (kind
   "ndisc"), RA accepted from routers when we are not one (default router, on-link
   prefixes, MTU). NDP in fragmented packets is ignored (RFC 6980). Duplicate address
   detection is optimistic (RFC 4429): an address is usable at once and removed, logged
   and counted if another node claims it; while Optimistic it is never announced and
   answered only with Override clear. Neighbors are learned from the Ethernet source of
   unicast datagrams from on-link addresses (never a group MAC), as IPv4 learns.
4. MLD (RFC 3810), as a listener: an MLDv2 report (CHANGE_TO_EXCLUDE for every group we
   are in but ff02::1, CHANGE_TO_INCLUDE for groups left) to ff02::16 whenever the set of
   groups changes (addresses come and go with their solicited-node groups; joins; the
   first poll, before DAD); queries (link-local source, hop limit 1, Router Alert) are
   answered with MODE_IS_EXCLUDE records for the groups asked about (MLDv1 reports to an
   MLDv1 querier), at once, at most once per `MLD_ANSWER_INTERVAL`. No random delay, no
   robustness retransmissions, no compatibility-mode timer. Other nodes' reports are
   not for us (ff02::16 is not joined).
5. UDP and TCP: the same handlers as IPv4 (they read `src_addr`/`dst_addr`/`protocol`
   from the `Ipv6Repr`).

Transmit (`emit` with an `IPv6Address` destination): on-link (link-local, our prefixes,
RA prefixes), routes, default router; source by scope and longest matching prefix (RFC
6724 in short); neighbor resolution queues; datagrams larger than the path MTU are
fragmented at the source (RFC 8200 §4.5), except TCP segments the device segments (TSO).
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Callable
from ipaddress import IPv6Address

from netstack.iface.ndisc import NeighborCache6
from netstack.iface.reassembly import Ipv6Reassembler
from netstack.wire import Error
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.icmpv6 import (
    DstUnreachable as Dst6,
)
from netstack.wire.icmpv6 import (
    Icmpv6Message,
    Icmpv6Packet,
    Icmpv6Repr,
    quote_offending,
)
from netstack.wire.ipv6 import (
    ALL_MLDV2_ROUTERS,
    ALL_NODES,
    ALL_ROUTERS,
    FRAGMENT,
    HEADER_LEN,
    HOPBYHOP,
    MIN_MTU,
    NO_NEXT,
    Ipv6Cidr,
    Ipv6Packet,
    Ipv6Repr,
    link_local,
    multicast_mac,
    pack_header,
    solicited_node,
    upper_layer,
    walk_headers,
)
from netstack.wire.mld import (
    CHANGE_TO_EXCLUDE,
    CHANGE_TO_INCLUDE,
    MODE_IS_EXCLUDE,
    RECORD_HEADER_LEN,
    REPORT_HEADER_LEN,
    AddressRecord,
    MldQuery,
    Mldv1Report,
    Mldv2Report,
)
from netstack.wire.ndisc import (
    NeighborAdvert,
    NeighborSolicit,
    RouterAdvert,
    RouterSolicit,
    parse_ndisc,
)

log = logging.getLogger("netstack.ipv6")

ETH_HEADER_LEN = 14
_ETHERTYPE_IPV6 = b"\x86\xdd"
_ICMPV6 = 58
_TCP = 6
_UDP = 17
_U16 = struct.Struct("!H")
_FRAG = struct.Struct("!BBHI")
_UNSPEC = IPv6Address(0)
PMTU_EXPIRY = 600.0  # RFC 8201 §4: retry a larger PMTU after at least 5 minutes
_ECHO_REQUEST = int(Icmpv6Message.ECHO_REQUEST)
MAX_ONLINK_PREFIXES = 16  # prefixes learned from RAs (an RA flood cannot grow the table)
MAX_PMTU_ENTRIES = 1024  # destinations with a lowered path MTU (forged PTBs cannot grow it)
# RFC 7112: how much of the upper-layer header a first fragment must hold (as Linux does)
_UPPER_HEADER_LEN = {_TCP: 20, _UDP: 8, _ICMPV6: 8}
_PP_INCOMPLETE_CHAIN = 3  # Parameter Problem code 3 (RFC 7112 §5)
# MLD (RFC 3810 §5.1.14, §5.2.13, RFC 2711): hop limit 1, a Hop-by-Hop header with Router
# Alert (value 0: MLD) then PadN to 8 bytes
_HBH_ROUTER_ALERT = bytes([_ICMPV6, 0, 5, 2, 0, 0, 1, 0])
MLD_ANSWER_INTERVAL = 1.0  # answers to queries: at most one burst a second (query floods)


def _is_multicast(addr: IPv6Address) -> bool:
    return addr.packed[0] == 0xFF


_V4MAPPED = b"\x00" * 10 + b"\xff\xff"


def _mld_reportable(group: IPv6Address) -> bool:
    """RFC 3810 §6: never a report for ff02::1, nor for scopes 0 and 1 (interface-local)."""
    return group != ALL_NODES and group.packed[1] & 0x0F > 1


def _martian(src) -> bool:
    """A source no packet from the wire may carry: multicast is checked by the caller;
    here the loopback ::1 (RFC 4291 §2.5.3) and IPv4-mapped ::ffff:0:0/96 (RFC 4942
    §2.1.4; a dual-stack socket would take it for an IPv4 peer)."""
    return src[:12] == _V4MAPPED or int.from_bytes(src, "big") == 1


class Ipv6Layer:
    """Mixin: see the module docstring. Attributes it relies on from `Interface`:
    `hardware_addr`, `stats`, `_now`, `_device`, `_sockets`, `_mtu`, `_emitted`,
    `_tx_blocked`, `protocol_handlers`, `_take_icmp_token()`, `_refresh_group_macs()`,
    `_sender_mac()`."""

    # -- configuration ------------------------------------------------------------------
    def _init_ipv6(self, config, now: float) -> None:
        self.ipv6_enabled: bool = config.ipv6
        self.ipv6_router: bool = config.ipv6_router
        self.accept_ra: bool = config.accept_ra and not config.ipv6_router
        self.neighbors6 = NeighborCache6(stats=self.stats)
        self.reassembler6 = Ipv6Reassembler()
        self.link_local6 = link_local(self.hardware_addr)
        self._cidrs6: list[Ipv6Cidr] = []
        self._addr6: dict[int, IPv6Address] = {}
        self._optimistic: dict[IPv6Address, float] = {}  # DAD running: when it ends
        self._dad_due: list[IPv6Address] = []
        self._groups6: set[IPv6Address] = set()
        self._accept6: frozenset[int] = frozenset()
        self._routes6: list[tuple[int, int, IPv6Address]] = []
        self._onlink6: dict[tuple[int, int], float] = {}  # RA prefixes: (net, mask) → expiry
        self._default_router6: IPv6Address | None = None
        self._router_expiry = float("inf")
        self._ra_mtu: int | None = None
        self._pmtu: dict[IPv6Address, tuple[int, float]] = {}
        self._frag_ident6 = 0
        self.dad_enabled: bool = config.dad
        self._announce6 = False
        self._mld_reported: frozenset[IPv6Address] = frozenset()  # groups last reported
        self._mld_left: set[IPv6Address] = set()  # left since the last report
        self._mld_change = False  # a state-change report is due
        self._mld_pending: set[IPv6Address] = set()  # MLDv2 query answers due
        self._mld_pending_v1: set[IPv6Address] = set()  # MLDv1 query answers due
        self._mld_next = 0.0  # no query answer before this
        self.set_ipv6_default_router(config.ipv6_default_router)
        for cidr, via in config.ipv6_routes:
            self.add_ipv6_route(cidr, via)
        self.set_ipv6_addrs(config.ipv6_addrs, now)

    @property
    def ipv6_addrs(self) -> list[Ipv6Cidr]:
        """Our IPv6 addresses, the link-local one first."""
        return list(self._cidrs6)

    def set_ipv6_addrs(self, cidrs, now: float | None = None) -> None:
        """Replace the global/ULA addresses (the link-local one stays while IPv6 is on).
        New addresses are usable at once and checked for duplicates (optimistic DAD)."""
        if not self.ipv6_enabled:
            self._cidrs6 = []
        else:
            wanted = [Ipv6Cidr(self.link_local6, 64)]
            for c in cidrs:
                c = c if isinstance(c, Ipv6Cidr) else Ipv6Cidr.parse(str(c))
                if c.address not in (w.address for w in wanted):
                    wanted.append(c)
            old = set(self._addr6.values())
            self._cidrs6 = wanted
            for c in wanted:
                if c.address not in old and self.dad_enabled:
                    self._dad_due.append(c.address)
        self._addr6 = {int(c.address): c.address for c in self._cidrs6}
        self._recompute_accept6()
        self._announce6 = bool(self._cidrs6)

    def add_ipv6_addr(self, cidr) -> None:
        cidr = cidr if isinstance(cidr, Ipv6Cidr) else Ipv6Cidr.parse(str(cidr))
        if cidr not in self._cidrs6:
            self.set_ipv6_addrs([*self._cidrs6[1:], cidr])

    def remove_ipv6_addr(self, addr: IPv6Address) -> None:
        addr = IPv6Address(addr)
        self.set_ipv6_addrs([c for c in self._cidrs6[1:] if c.address != addr])

    def _recompute_accept6(self) -> None:
        groups = {ALL_NODES, *self._groups6}
        if self.ipv6_router:
            groups.add(ALL_ROUTERS)
        for a in self._addr6.values():
            groups.add(solicited_node(a))
        if not self.ipv6_enabled:
            groups = set()
        self._accept6 = frozenset(int(g) for g in groups)
        self._mcast6 = groups
        self._refresh_group_macs()
        reportable = frozenset(g for g in groups if _mld_reportable(g))
        if reportable != self._mld_reported:
            # RFC 3810 §6.1: a state-change report (sent by the next poll)
            self._mld_left = (self._mld_left | (self._mld_reported - reportable)) - reportable
            self._mld_reported = reportable
            self._mld_change = True

    def _group_macs6(self) -> set[bytes]:
        return {bytes(multicast_mac(g)) for g in getattr(self, "_mcast6", ())}

    def join_ipv6_group(self, group: IPv6Address) -> None:
        group = IPv6Address(group)
        if not _is_multicast(group):
            raise ValueError(f"{group} is not a multicast address")
        self._groups6.add(group)
        self._recompute_accept6()

    def leave_ipv6_group(self, group: IPv6Address) -> None:
        self._groups6.discard(IPv6Address(group))
        self._recompute_accept6()

    @property
    def ipv6_default_router(self) -> IPv6Address | None:
        return self._default_router6

    def set_ipv6_default_router(self, router: IPv6Address | None) -> None:
        self._default_router6 = None if router is None else IPv6Address(router)
        self._router_expiry = float("inf")

    def add_ipv6_route(self, cidr, via: IPv6Address) -> None:
        cidr = cidr if isinstance(cidr, Ipv6Cidr) else Ipv6Cidr.parse(str(cidr))
        self._routes6.append((int(cidr.address) & cidr.mask_int, cidr.mask_int,
                              IPv6Address(via)))
        self._routes6.sort(key=lambda r: -r[1])

    def path_mtus(self) -> list[tuple[IPv6Address, int, float]]:
        """(destination, MTU, expiry time) learnt from Packet Too Big."""
        return [(d, mtu, exp) for d, (mtu, exp) in self._pmtu.items()]

    def path_mtu(self, dst: IPv6Address) -> int:
        """The MTU towards `dst`: the link's (or the RA's), lowered by Packet Too Big."""
        mtu = self._mtu if self._ra_mtu is None else min(self._mtu, self._ra_mtu)
        entry = self._pmtu.get(dst)
        if entry is not None:
            if entry[1] > self._now:
                return min(mtu, entry[0])
            del self._pmtu[dst]
        return mtu

    # -- timers ---------------------------------------------------------------------------
    def _poll6(self, now: float) -> None:
        if not self.ipv6_enabled:
            return
        if self._mld_change:  # first: RFC 4862 §5.4.2 joins the groups before DAD
            self._mld_change = False
            self._send_mld_state_change()
        if (self._mld_pending or self._mld_pending_v1) and now >= self._mld_next:
            self._answer_mld_queries()
        if self._dad_due:
            for addr in self._dad_due:
                self._send_ns(addr, _UNSPEC, None, dad=True)
                self._optimistic[addr] = now + self.neighbors6.retrans_timer
            self._dad_due = []
        if self._optimistic:
            for addr, until in list(self._optimistic.items()):
                if until <= now:
                    del self._optimistic[addr]
        if self._announce6:
            self._announce6 = False
            for c in self._cidrs6:  # unsolicited NA: peers with a stale entry update it
                # RFC 4429 §3.3: none for an Optimistic address. (None when its DAD ends
                # either: RFC 4861 §7.2.6 makes them optional, and a new address has no
                # stale entries to fix.)
                if c.address not in self._optimistic:
                    self._send_na(c.address, ALL_NODES, None, solicited=False)
        r = self.reassembler6
        if len(r):
            at = r.poll_at()
            if at is not None and at <= now:
                r.expire(now)
                self._reassembly_timeouts()
        nd = self.neighbors6
        if len(nd):
            at = nd.poll_at()
            if at is not None and at <= now:
                for target, mac in nd.due(now):
                    self._send_ns(target, self._source6_for(target) or self.link_local6, mac)
        if self._router_expiry <= now:
            log.info("default router %s expired", self._default_router6)
            self._default_router6 = None
            self._router_expiry = float("inf")
        if self._onlink6:
            for key, until in list(self._onlink6.items()):
                if until <= now:
                    del self._onlink6[key]

    def _poll_at6(self) -> float | None:
        if not self.ipv6_enabled:
            return None
        if self._dad_due or self._announce6 or self._mld_change:
            return self._now
        cands = [self.neighbors6.poll_at(), self.reassembler6.poll_at()]
        if self._mld_pending or self._mld_pending_v1:
            cands.append(self._mld_next)
        if self._optimistic:
            cands.append(min(self._optimistic.values()))
        if self._router_expiry != float("inf"):
            cands.append(self._router_expiry)
        cands = [c for c in cands if c is not None]
        return min(cands) if cands else None

    # -- receive --------------------------------------------------------------------------
    def _rx_ipv6(self, frame: memoryview, l2_cast: bool) -> None:
        stats = self.stats
        if not self.ipv6_enabled:
            stats["ipv6_disabled"] += 1
            return
        try:
            pkt = Ipv6Packet.new_checked(frame[ETH_HEADER_LEN:])
        except Error:
            stats["ipv6_malformed"] += 1
            return
        b = pkt.buffer
        if b[8] == 0xFF or (b[8] == 0 and _martian(b[8:24])):
            stats["ipv6_martian_source"] += 1
            return
        d = int.from_bytes(b[24:40], "big")
        if d == 1 or d >> 32 == 0xFFFF:  # ::1, ::ffff:a.b.c.d: never from the wire
            stats["ipv6_not_for_us"] += 1
            return
        if d in self._addr6:
            if l2_cast:
                stats["ipv6_unicast_in_l2_multicast"] += 1
                return
            cast = False
        elif d in self._accept6:
            cast = True
        elif self.any_ip and b[24] != 0xFF:
            cast = l2_cast
        elif self.gateway is not None and b[24] != 0xFF and b[24] & 0xFE != 0xFE \
                and not l2_cast:
            cast = False  # to elsewhere (not multicast, not link-local): the gateway's
        else:
            stats["ipv6_not_for_us"] += 1
            return
        src_hw = self._sender_mac(frame)
        if not cast and b[8] != 0 and not frame[6] & 1:  # never learn a group MAC
            src = IPv6Address(bytes(b[8:24]))
            if src not in self.neighbors6 and self._route6(src) == src:
                # What we would learn by asking (as IPv4 does): replies need no NS first.
                self._release6(self.neighbors6.learn(src, src_hw, self._now))
        self._rx_ipv6_packet(pkt, cast, src_hw, False)

    def _rx_ipv6_packet(self, pkt: Ipv6Packet, cast: bool, src_hw: EthernetAddress,
                        reassembled: bool) -> None:
        stats = self.stats
        payload = pkt.payload
        try:
            walk = walk_headers(payload, pkt.next_header)
        except Error:
            stats["ipv6_bad_extension_headers"] += 1
            return
        if walk.problem is not None:
            code, pointer, to_mcast = walk.problem
            stats["ipv6_parameter_problem"] += 1
            if code >= 0 and (not cast or to_mcast):
                self._icmp6_error(pkt, Icmpv6Repr.param_problem(
                    code, pointer, quote_offending(pkt.buffer[:HEADER_LEN + len(payload)])))
            return
        frag = walk.fragment
        if frag is not None and not frag.is_atomic:
            if reassembled:
                stats["ipv6_malformed"] += 1
                return
            stats["ipv6_fragments"] += 1
            data_len = len(payload) - frag.header_offset - 8
            if (frag.more and data_len % 8) or \
                    frag.header_offset + frag.offset + data_len > 0xFFFF:
                # RFC 8200 §4.5: Parameter Problem code 0 pointing at the Payload Length
                # (not a multiple of 8) or at the Fragment Offset (past 65535 bytes)
                stats["ipv6_bad_fragment"] += 1
                if not cast:
                    ptr = 4 if frag.more and data_len % 8 else \
                        HEADER_LEN + frag.header_offset + 2
                    self._icmp6_error(pkt, Icmpv6Repr.param_problem(
                        0, ptr, quote_offending(pkt.buffer[:HEADER_LEN + len(payload)])))
                return
            if frag.offset == 0 and not self._header_chain_whole(payload, frag):
                # RFC 8200 §4.5 / RFC 7112 §5: the first fragment must hold every
                # header through the upper-layer one; drop it, Parameter Problem code 3.
                stats["ipv6_incomplete_header_chain"] += 1
                if not cast:
                    self._icmp6_error(pkt, Icmpv6Repr(
                        Icmpv6Message.PARAM_PROBLEM, _PP_INCOMPLETE_CHAIN, pointer=0,
                        data=quote_offending(pkt.buffer[:HEADER_LEN + len(payload)])))
                return
            whole = self.reassembler6.add(self._now, pkt.buffer[:HEADER_LEN + len(payload)],
                                          frag)
            self._reassembly_timeouts()  # `add` expires old datagrams too
            if whole is None:
                return
            try:
                pkt = Ipv6Packet.new_checked(whole)
            except Error:
                stats["ipv6_malformed"] += 1
                return
            self._rx_ipv6_packet(pkt, cast, src_hw, True)
            return
        proto = walk.protocol
        if proto == NO_NEXT:
            stats["ipv6_no_next_header"] += 1
            return
        upper = payload[walk.offset:]
        b = pkt.buffer
        ip = Ipv6Repr(IPv6Address(bytes(b[8:24])), IPv6Address(bytes(b[24:40])), b[6],
                      len(upper), b[7], proto)
        raw_taken = False
        now = self._now
        for sock in self._sockets.of_kind("raw"):
            if sock.accepts(ip, None):
                sock.process(now, ip, None, upper, src_hw)
                self._sockets.dirty.add(sock)
                raw_taken = True
        if proto == _ICMPV6:
            self._rx_icmpv6(ip, pkt, upper, cast, src_hw, reassembled or frag is not None,
                            walk.router_alert)
            return
        if proto == _UDP or proto == _TCP:
            self.protocol_handlers[proto](ip, pkt, upper, cast, raw_taken, src_hw)
            return
        if raw_taken:
            return
        stats["ipv6_unknown_protocol"] += 1
        if not cast:
            self._icmp6_error(pkt, Icmpv6Repr.param_problem(
                1, walk.nh_pointer, quote_offending(b[:HEADER_LEN + len(payload)])))

    @staticmethod
    def _header_chain_whole(payload: memoryview, frag) -> bool:
        """Whether a first fragment holds its whole header chain (RFC 7112)."""
        data = payload[frag.header_offset + 8:]
        found = upper_layer(data, frag.next_header)
        if found is None:
            return False
        proto, offset, _ = found
        return offset + _UPPER_HEADER_LEN.get(proto, 0) <= len(data)

    def _rx_icmpv6(self, ip: Ipv6Repr, pkt: Ipv6Packet, payload: memoryview, cast: bool,
                   src_hw: EthernetAddress, fragmented: bool = False,
                   router_alert: bool = False) -> None:
        stats = self.stats
        if len(payload) < 4:
            stats["icmpv6_malformed"] += 1
            return
        t = payload[0]
        if 133 <= t <= 137:
            if fragmented:  # RFC 6980 §5: fragmented NDP (atomic fragments too) ignored
                stats["ndisc_fragmented"] += 1
                return
            self._rx_ndisc(ip, payload, src_hw)
            return
        if t == Icmpv6Message.MLD_QUERY:
            self._rx_mld_query(ip, payload, router_alert)
            return
        if t in (131, 132, 143):  # other listeners' reports: we are not a multicast router
            stats["mld_ignored"] += 1
            return
        try:
            icmp = Icmpv6Repr.parse(Icmpv6Packet.new_checked(payload), ip.src_addr,
                                    ip.dst_addr)
        except Error:
            stats["icmpv6_malformed"] += 1
            return
        now = self._now
        for sock in self._sockets.of_kind("icmp"):
            if sock.accepts(ip, icmp):
                sock.process(now, ip, icmp, payload, src_hw)
                self._sockets.dirty.add(sock)
        if t == _ECHO_REQUEST:
            gw = self.gateway
            if gw is not None and not cast and \
                    int.from_bytes(ip.dst_addr.packed, "big") not in self._addr6:
                if not gw.icmp_echo(now, ip, icmp):
                    stats["icmpv6_echo_elsewhere_dropped"] += 1
                return
            src = ip.dst_addr if not cast else self._source6_for(ip.src_addr)
            if src is None or ip.src_addr == _UNSPEC:
                stats["icmpv6_echo_dropped"] += 1
                return
            reply = Icmpv6Repr.echo_reply(icmp.ident, icmp.seq_no, icmp.data)
            peer = ip.src_addr

            def fill(buf, s, csum):
                reply.emit(Icmpv6Packet(buf), s, peer, True)

            self.emit(peer, _ICMPV6, reply.buffer_len(), fill, src)
            stats["icmpv6_echo_replies"] += 1
        elif t == Icmpv6Message.PKT_TOO_BIG:
            self._rx_packet_too_big(icmp)

    def _rx_packet_too_big(self, icmp: Icmpv6Repr) -> None:
        """RFC 8201: lower the path MTU of the quoted destination (never below 1280) and
        tell TCP connections to it."""
        stats = self.stats
        quote = icmp.data
        if len(quote) < HEADER_LEN:
            stats["icmpv6_ptb_malformed"] += 1
            return
        dst = IPv6Address(bytes(quote[24:40]))
        src = IPv6Address(bytes(quote[8:24]))
        if int(src) not in self._addr6:
            stats["icmpv6_ptb_not_ours"] += 1
            return
        mtu = max(MIN_MTU, icmp.mtu)
        if mtu >= self.path_mtu(dst):
            return
        pmtu = self._pmtu
        if dst not in pmtu and len(pmtu) >= MAX_PMTU_ENTRIES:
            now = self._now
            for key in [k for k, (_m, until) in pmtu.items() if until <= now]:
                del pmtu[key]
            if len(pmtu) >= MAX_PMTU_ENTRIES:  # all live: the oldest goes
                del pmtu[next(iter(pmtu))]
                stats["icmpv6_ptb_table_full"] += 1
        pmtu[dst] = (mtu, self._now + PMTU_EXPIRY)
        stats["icmpv6_ptb_applied"] += 1
        log.info("path MTU to %s is now %d (Packet Too Big)", dst, mtu)
        ports = None
        if quote[6] == _TCP and len(quote) >= HEADER_LEN + 4:
            ports = struct.unpack_from("!HH", quote, HEADER_LEN)
        for sock in self._sockets.of_kind("tcp"):
            fn = getattr(sock, "set_path_mtu", None)
            if fn is None:
                continue
            remote = getattr(sock, "remote_endpoint", None)
            local = getattr(sock, "local_endpoint", None)
            if remote is None or local is None or remote[0] != dst:
                continue
            if ports is not None and (local[1], remote[1]) != ports:
                continue
            fn(mtu)
            self._sockets.dirty.add(sock)

    def _rx_ndisc(self, ip: Ipv6Repr, payload: memoryview, src_hw: EthernetAddress) -> None:
        stats = self.stats
        try:
            msg = parse_ndisc(payload, ip.src_addr, ip.dst_addr, ip.hop_limit)
        except Error:
            stats["ndisc_malformed"] += 1
            return
        lladdr = msg.lladdr
        if lladdr is not None and (lladdr[0] & 1 or lladdr == self.hardware_addr):
            # a group MAC or ours is nobody's address: read as no option at all
            stats["ndisc_bad_lladdr"] += 1
            msg = dataclasses.replace(msg, lladdr=None)
        now = self._now
        if isinstance(msg, NeighborSolicit):
            self._rx_ns(ip, msg)
        elif isinstance(msg, NeighborAdvert):
            self._rx_na(ip, msg)
        elif isinstance(msg, RouterSolicit):
            if msg.lladdr is not None and ip.src_addr != _UNSPEC:
                self._release6(self.neighbors6.learn(ip.src_addr, msg.lladdr, now))
            taken = False
            for sock in self._sockets.of_kind("ndisc"):
                if sock.accepts(ip, msg):
                    sock.process(now, ip, msg, payload, src_hw)
                    self._sockets.dirty.add(sock)
                    taken = True
            stats["ndisc_rs_received" if taken else "ndisc_rs_ignored"] += 1
        elif isinstance(msg, RouterAdvert):
            for sock in self._sockets.of_kind("ndisc"):
                if sock.accepts(ip, msg):
                    sock.process(now, ip, msg, payload, src_hw)
                    self._sockets.dirty.add(sock)
            self._rx_ra(ip, msg)
        else:
            stats["ndisc_redirect_ignored"] += 1

    def _rx_ns(self, ip: Ipv6Repr, ns: NeighborSolicit) -> None:
        stats = self.stats
        target = ns.target
        if int(target) not in self._addr6:
            stats["ndisc_ns_not_for_us"] += 1
            return
        if ip.src_addr == _UNSPEC:
            if target in self._optimistic:
                self._duplicate(target, "another node is checking it (DAD)")
                return
            self._send_na(target, ALL_NODES, None, solicited=False)  # defend (§7.2.4)
            return
        if ns.lladdr is not None:
            self._release6(self.neighbors6.learn(ip.src_addr, ns.lladdr, self._now))
        mac = ns.lladdr
        if mac is None:
            mac = self.neighbors6.lookup(ip.src_addr, self._now)
        # RFC 4429 §3.3: an Optimistic address must not override other nodes' entries
        self._send_na(target, ip.src_addr, mac, solicited=True,
                      override=target not in self._optimistic)
        stats["ndisc_na_sent"] += 1

    def _rx_na(self, ip: Ipv6Repr, na: NeighborAdvert) -> None:
        target = na.target
        if int(target) in self._addr6:
            if target in self._optimistic:
                self._duplicate(target, f"{ip.src_addr} advertises it")
            else:
                self.stats["ndisc_address_conflict"] += 1
                log.warning("%s (ours) is advertised by %s from %s", target, ip.src_addr,
                            na.lladdr)
            return
        if not na.router and target == self._default_router6 and target in self.neighbors6:
            # RFC 4861 §7.2.5: no longer a router, so no longer our default router
            log.info("default router %s says it is not a router", target)
            self._default_router6 = None
            self._router_expiry = float("inf")
        self._release6(self.neighbors6.advert(target, na.lladdr, self._now,
                                              solicited=na.solicited, override=na.override,
                                              router=na.router))

    def _rx_ra(self, ip: Ipv6Repr, ra: RouterAdvert) -> None:
        stats = self.stats
        if not self.accept_ra:
            stats["ndisc_ra_ignored"] += 1
            return
        now = self._now
        src = ip.src_addr
        if ra.lladdr is not None:
            self._release6(self.neighbors6.learn(src, ra.lladdr, now))
        if ra.router_lifetime:
            if self._default_router6 != src:
                log.info("default router %s (router advertisement)", src)
            self._default_router6 = src
            self._router_expiry = now + ra.router_lifetime
        elif self._default_router6 == src:
            self._default_router6 = None
            self._router_expiry = float("inf")
        if ra.mtu is not None and MIN_MTU <= ra.mtu:
            self._ra_mtu = ra.mtu
        for p in ra.prefixes[:16]:
            if not p.on_link or p.prefix.is_link_local:
                continue
            mask = int(p.prefix.netmask)
            key = (int(p.prefix.network_address), mask)
            if p.valid_lifetime:
                if key not in self._onlink6 and len(self._onlink6) >= MAX_ONLINK_PREFIXES:
                    stats["ndisc_prefix_table_full"] += 1
                    continue
                self._onlink6[key] = now + p.valid_lifetime
            else:
                self._onlink6.pop(key, None)
        stats["ndisc_ra_accepted"] += 1

    def _duplicate(self, addr: IPv6Address, why: str) -> None:
        self.stats["ipv6_dad_failed"] += 1
        self._optimistic.pop(addr, None)
        if addr == self.link_local6:
            log.error("duplicate address %s: %s; IPv6 link-local address kept", addr, why)
            return
        log.error("duplicate address %s: %s; address removed", addr, why)
        self._cidrs6 = [c for c in self._cidrs6 if c.address != addr]
        self._addr6 = {int(c.address): c.address for c in self._cidrs6}
        self._recompute_accept6()

    def _release6(self, datagrams: list[bytes]) -> None:
        for d in datagrams:
            dst = IPv6Address(bytes(d[24:40]))
            mac = self.neighbors6.lookup(self._route6(dst) or dst, self._now)
            if mac is not None:
                self._send_datagram6(mac, d)

    def _reassembly_timeouts(self) -> None:
        """RFC 8200 §4.5: Time Exceeded code 1 (rate-limited) to the source of each
        timed-out datagram whose first fragment had come, unless it was sent to a
        multicast group (RFC 4443 §2.4(e.3))."""
        for quote in self.reassembler6.take_expired():
            if quote[24] == 0xFF:
                continue
            self._icmp6_error(Ipv6Packet(quote), Icmpv6Repr.time_exceeded(1, quote))

    # -- MLD (RFC 3810) -------------------------------------------------------------------
    def _rx_mld_query(self, ip: Ipv6Repr, payload: memoryview, router_alert: bool) -> None:
        """RFC 3810 §6.2: a query from a link-local source with hop limit 1 and a Router
        Alert is answered for the groups it asks about that we are in: at once (no random
        delay: we are one listener, not a crowd to spread out) unless we answered less than
        `MLD_ANSWER_INTERVAL` ago, then when that interval ends, merged."""
        stats = self.stats
        if ip.hop_limit != 1 or not router_alert:
            stats["mld_query_dropped"] += 1
            return
        try:
            query = MldQuery.parse(payload, ip.src_addr, ip.dst_addr)
        except Error:  # checksum, length, non-link-local source
            stats["mld_malformed"] += 1
            return
        groups = self._mld_reported
        if query.group == _UNSPEC:
            asked = set(groups)
        elif query.group in groups:
            asked = {query.group}
        else:
            stats["mld_query_not_ours"] += 1
            return
        stats["mld_queries"] += 1
        (self._mld_pending_v1 if query.mldv1 else self._mld_pending).update(asked)
        if self._now >= self._mld_next:
            self._answer_mld_queries()

    def _answer_mld_queries(self) -> None:
        """Current-state records (MODE_IS_EXCLUDE, no sources: we want every source) for
        the groups queried; a group-and-source-specific query gets the same answer, our
        whole state. MLDv1 queriers get MLDv1 reports (RFC 3810 §8.2, without the
        compatibility-mode timer)."""
        groups = self._mld_reported
        v2 = sorted(self._mld_pending & groups)
        v1 = sorted(self._mld_pending_v1 & groups)
        self._mld_pending.clear()
        self._mld_pending_v1.clear()
        self._mld_next = self._now + MLD_ANSWER_INTERVAL
        if v2:
            self._send_mld_report([AddressRecord(MODE_IS_EXCLUDE, g) for g in v2])
        for g in v1:
            self._send_mld(g, Mldv1Report(g))
        self.stats["mld_reports_sent"] += bool(v2) + len(v1)

    def _send_mld_state_change(self) -> None:
        """RFC 3810 §6.1: CHANGE_TO_EXCLUDE for every group we listen on, CHANGE_TO_INCLUDE
        (no sources) for the groups left (sent once: no robustness retransmissions)."""
        records = [AddressRecord(CHANGE_TO_EXCLUDE, g) for g in sorted(self._mld_reported)]
        records += [AddressRecord(CHANGE_TO_INCLUDE, g) for g in sorted(self._mld_left)]
        self._mld_left = set()
        if records:
            self._send_mld_report(records)
            self.stats["mld_reports_sent"] += 1

    def _send_mld_report(self, records: list[AddressRecord]) -> None:
        per = max(1, (self._mtu - HEADER_LEN - 8 - REPORT_HEADER_LEN) // RECORD_HEADER_LEN)
        for i in range(0, len(records), per):
            self._send_mld(ALL_MLDV2_ROUTERS, Mldv2Report(tuple(records[i:i + per])))

    def _send_mld(self, dst: IPv6Address, message) -> None:
        """One MLD message from our link-local address, hop limit 1, Router Alert."""
        tx = self._device.transmit(self._now)
        if tx is None:
            self.stats["tx_device_busy_dropped"] += 1
            return
        length = message.buffer_len()
        hw = self.hardware_addr
        mac = multicast_mac(dst)
        src = self.link_local6
        s, d = src.packed, dst.packed

        def write(buf: memoryview) -> None:
            buf[0:6] = mac
            buf[6:12] = hw
            buf[12:14] = _ETHERTYPE_IPV6
            pack_header(buf, 14, s, d, HOPBYHOP, 8 + length, 1)
            buf[54:62] = _HBH_ROUTER_ALERT
            message.emit(buf[62:], src, dst, True)

        tx.consume(ETH_HEADER_LEN + HEADER_LEN + 8 + length, write)
        self._emitted += 1

    # -- errors ---------------------------------------------------------------------------
    def _icmp6_error(self, pkt: Ipv6Packet, message: Icmpv6Repr) -> None:
        """Send an ICMPv6 error about `pkt` to its source (RFC 4443 §2.4), rate-limited;
        never about an ICMPv6 error, never to an unspecified or multicast source."""
        b = pkt.buffer
        src = IPv6Address(bytes(b[8:24]))
        if src == _UNSPEC or _is_multicast(src):
            self.stats["icmp_error_suppressed"] += 1
            return
        # RFC 4443 §2.4(e.1): never about an error, wherever the ICMPv6 header is (behind
        # extension headers too). As Linux does, an ICMPv6 header cut off counts as an
        # error unless a fragment cut it (the first fragment of RFC 7112).
        found = upper_layer(b[HEADER_LEN:], b[6])
        if found is not None and found[0] == _ICMPV6:
            at = HEADER_LEN + found[1]
            if b[at] < 128 if at < len(b) else not found[2]:
                self.stats["icmp_error_suppressed"] += 1
                return
        if not self._take_icmp_token():
            return
        dst = IPv6Address(bytes(b[24:40]))
        ours = dst if int(dst) in self._addr6 else None

        def fill(buf, s, csum):
            message.emit(Icmpv6Packet(buf), s, src, True)

        self.emit(src, _ICMPV6, message.buffer_len(), fill, ours)
        self.stats["icmp_errors_sent"] += 1

    def _icmp6_port_unreachable(self, pkt: Ipv6Packet) -> None:
        b = pkt.buffer
        self._icmp6_error(pkt, Icmpv6Repr.dst_unreachable(
            Dst6.PORT_UNREACHABLE, quote_offending(b[:HEADER_LEN + pkt.payload_len])))

    # -- transmit -------------------------------------------------------------------------
    def _route6(self, dst: IPv6Address) -> IPv6Address | None:
        a = int(dst)
        if a >> 118 == 0x3FA:  # link-local
            return dst
        for c in self._cidrs6:
            m = c.mask_int
            if a & m == int(c.address) & m:
                return dst
        for net, mask in self._onlink6:
            if a & mask == net:
                return dst
        for net, mask, via in self._routes6:
            if a & mask == net:
                return via
        return self._default_router6

    def _source6_for(self, dst: IPv6Address) -> IPv6Address | None:
        cidrs = self._cidrs6
        if not cidrs:
            return None
        p = dst.packed
        if (p[0] == 0xFE and p[1] & 0xC0 == 0x80) or (p[0] == 0xFF and p[1] & 0x0F <= 2):
            return self.link_local6
        best, best_len = None, -1
        a = int(dst)
        for c in cidrs[1:]:
            common = 128 - (int(c.address) ^ a).bit_length()
            if common > best_len:
                best, best_len = c.address, common
        return best if best is not None else self.link_local6

    def _emit6(self, dst: IPv6Address, protocol: int, payload_len: int, fill: Callable,
               src: IPv6Address | None, hop_limit: int,
               dst_hw: EthernetAddress | None) -> bool:
        stats = self.stats
        now = self._now
        if not self.ipv6_enabled:
            stats["tx_ipv6_disabled"] += 1
            return True
        hop = None
        if dst_hw is not None:
            mac = dst_hw
        elif dst.packed[0] == 0xFF:
            mac = multicast_mac(dst)
        else:
            a = int(dst)
            if a == 0:
                stats["tx_unspecified_destination"] += 1
                return True
            if a in self._addr6:
                stats["tx_to_self"] += 1
                return True
            hop = self._route6(dst)
            if hop is None:
                stats["tx_no_route"] += 1
                return True
            mac = self.neighbors6.lookup(hop, now)
        if src is None:
            src = self._source6_for(dst)
            if src is None:
                stats["tx_no_source_address"] += 1
                return True
        if payload_len > 0xFFFF:
            stats["tx_too_large"] += 1
            return True
        csum = not (self._ipv6_offload and self._tx_csum.get(protocol, False))
        mtu = self.path_mtu(dst)
        total = HEADER_LEN + payload_len
        tso = protocol == _TCP and self._ipv6_offload and self._tso_max and \
            payload_len <= self._tso_max + 60
        if mac is not None and (total <= mtu or tso):
            tx = self._device.transmit(now)
            if tx is None:
                stats["tx_device_busy"] += 1
                self._tx_blocked = True
                return False
            hw = self.hardware_addr
            s, d = src.packed, dst.packed

            def write(buf: memoryview) -> None:
                buf[0:6] = mac
                buf[6:12] = hw
                buf[12:14] = _ETHERTYPE_IPV6
                pack_header(buf, 14, s, d, protocol, payload_len, hop_limit)
                fill(buf[54:], src, csum)

            tx.consume(ETH_HEADER_LEN + total, write)
            self._emitted += 1
            return True
        datagram = bytearray(total)
        pack_header(datagram, 0, src.packed, dst.packed, protocol, payload_len, hop_limit)
        fill(memoryview(datagram)[HEADER_LEN:], src, True)
        if mac is None:
            if self.neighbors6.enqueue(hop, bytes(datagram), now):
                at = self.neighbors6.poll_at()
                if at is not None and at <= now:
                    for target, m in self.neighbors6.due(now):
                        self._send_ns(target, self._source6_for(target) or self.link_local6,
                                      m)
            return True
        self._send_datagram6(mac, datagram)
        return True

    def _send_datagram6(self, mac: EthernetAddress, datagram) -> None:
        """Send a whole IPv6 datagram to `mac`, fragmenting it (RFC 8200 §4.5) when it
        exceeds the path MTU of its destination."""
        stats = self.stats
        now = self._now
        device = self._device
        hw = self.hardware_addr
        total = len(datagram)
        mtu = self.path_mtu(IPv6Address(bytes(datagram[24:40])))
        if total <= mtu or (datagram[6] == _TCP and self._ipv6_offload and self._tso_max
                            and total - HEADER_LEN - 60 <= self._tso_max):
            self._send_whole(mac, _ETHERTYPE_IPV6, datagram)
            return
        chunk = (mtu - HEADER_LEN - 8) // 8 * 8
        if chunk <= 0:
            stats["tx_mtu_too_small"] += 1
            return
        header = bytes(datagram[:HEADER_LEN])
        nxt = datagram[6]
        body = memoryview(datagram)[HEADER_LEN:]
        n = len(body)
        self._frag_ident6 = ident = (self._frag_ident6 + 1) & 0xFFFFFFFF
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
                buf[12:14] = _ETHERTYPE_IPV6
                buf[14:54] = header
                _U16.pack_into(buf, 18, 8 + len(piece))
                buf[20] = FRAGMENT
                _FRAG.pack_into(buf, 54, nxt, 0, off | int(more), ident)
                buf[62:] = piece

            tx.consume(ETH_HEADER_LEN + HEADER_LEN + 8 + len(piece), frag)
            self._emitted += 1
            stats["tx_fragments"] += 1

    def _send_icmp6(self, dst: IPv6Address, dst_mac: EthernetAddress, src: IPv6Address,
                    message) -> None:
        """Send a neighbor discovery message (hop limit 255) straight to `dst_mac`."""
        tx = self._device.transmit(self._now)
        if tx is None:
            self.stats["tx_device_busy_dropped"] += 1
            return
        length = message.buffer_len()
        hw = self.hardware_addr
        s, d = src.packed, dst.packed

        def write(buf: memoryview) -> None:
            buf[0:6] = dst_mac
            buf[6:12] = hw
            buf[12:14] = _ETHERTYPE_IPV6
            pack_header(buf, 14, s, d, _ICMPV6, length, 255)
            message.emit(buf[54:], src, dst, True)

        tx.consume(ETH_HEADER_LEN + HEADER_LEN + length, write)
        self._emitted += 1

    def _send_ns(self, target: IPv6Address, src: IPv6Address,
                 mac: EthernetAddress | None, dad: bool = False) -> None:
        if mac is None:
            dst = solicited_node(target)
            mac = multicast_mac(dst)
        else:
            dst = target
        lladdr = None if dad else self.hardware_addr
        self._send_icmp6(dst, mac, src, NeighborSolicit(target, lladdr))
        self.stats["ndisc_ns_sent"] += 1

    def _send_na(self, target: IPv6Address, dst: IPv6Address, mac: EthernetAddress | None,
                 solicited: bool, override: bool = True) -> None:
        if mac is None:
            if dst.packed[0] != 0xFF:
                # No link-layer address for the solicitor: RFC 4861 §7.2.4 lets us
                # resolve it first; answering to all-nodes is simpler and still works.
                dst = ALL_NODES
                solicited = False
            mac = multicast_mac(dst)
        na = NeighborAdvert(target, router=self.ipv6_router, solicited=solicited,
                            override=override, lladdr=self.hardware_addr)
        self._send_icmp6(dst, mac, target, na)
