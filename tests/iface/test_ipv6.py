"""The interface's IPv6 half, sans-I/O: frames built with scapy go in through the test
device, what comes out is checked with scapy (checksums included). Time is an argument."""

from __future__ import annotations

from ipaddress import IPv6Address

from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    defragment6,
    fragment6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from netstack.iface import Interface, InterfaceConfig
from netstack.iface.ndisc import State
from netstack.socket import SocketSet
from netstack.socket.set import Socket
from netstack.socket.udp import UdpSocket
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv6 import Ipv6Cidr
from tests.iface.test_interface import Dev

MAC = EthernetAddress.parse("02:00:00:00:00:01")
LL = "fe80::ff:fe00:1"  # EUI-64 of MAC
GLOBAL = "fd00:10:0:2::2"
PEER_MAC = "02:00:00:00:00:02"
PEER = "fd00:10:0:2::15"
PEER_LL = "fe80::ff:fe00:2"
ROUTER_MAC = "02:00:00:00:00:fe"
ROUTER_LL = "fe80::1"


def make(now: float = 0.0, mtu: int = 1500, **kw):
    cfg = InterfaceConfig(MAC, [], ipv6_addrs=[Ipv6Cidr.parse(GLOBAL + "/64")], **kw)
    iface = Interface(cfg, now)
    dev = Dev(mtu=mtu)
    sockets = SocketSet()
    iface.poll(now, dev, sockets)
    return iface, dev, sockets


def settled(**kw):
    """An interface whose duplicate address detection is over (its addresses announced)."""
    iface, dev, sockets = make(**kw)
    iface.poll(1.5, dev, sockets)
    dev.take()
    return iface, dev, sockets


def feed(iface, dev, sockets, *frames, now: float = 0.0) -> list[Ether]:
    for f in frames:
        dev.rx.append(raw(f) if not isinstance(f, bytes | bytearray) else bytes(f))
    iface.poll(now, dev, sockets)
    return dev.take()


def from_peer(payload, src=PEER, dst=GLOBAL, hlim=64, mac_dst=None):
    return Ether(src=PEER_MAC, dst=mac_dst or str(MAC)) / IPv6(src=src, dst=dst, hlim=hlim) \
        / payload


def checksums_ok(frame: Ether) -> bool:
    """Rebuild with scapy computing the checksums: the bytes must not change."""
    rebuilt = frame.copy()
    for layer in (ICMPv6EchoReply, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6DestUnreach,
                  ICMPv6ParamProblem, ICMPv6TimeExceeded):
        if layer in rebuilt:
            del rebuilt[layer].cksum
    return raw(Ether(raw(rebuilt))) == raw(frame)


def test_link_local_from_mac_and_dad_on_first_poll():
    cfg = InterfaceConfig(MAC, [], ipv6_addrs=[Ipv6Cidr.parse(GLOBAL + "/64")])
    iface = Interface(cfg)
    dev = Dev()
    iface.poll(0.0, dev, SocketSet())
    frames = dev.take()
    assert [str(c.address) for c in iface.ipv6_addrs] == [LL, GLOBAL]
    ns = [f for f in frames if ICMPv6ND_NS in f]
    assert {f[ICMPv6ND_NS].tgt for f in ns} == {LL, GLOBAL}
    for f in ns:  # DAD: from ::, to the solicited-node group, no source link-layer option
        assert f[IPv6].src == "::" and f[IPv6].dst.startswith("ff02::1:ff")
        assert f[IPv6].hlim == 255 and ICMPv6NDOptSrcLLAddr not in f
        assert f.dst.startswith("33:33:ff") and checksums_ok(f)
    assert [f for f in frames if ICMPv6ND_NA in f] == []  # optimistic: no NA (RFC 4429)
    iface.poll(1.0, dev, SocketSet())  # DAD over: nothing either (RFC 4861 §7.2.6: MAY)
    assert dev.take() == []
    iface.dad_enabled = False  # without DAD the addresses are announced at once
    iface.set_ipv6_addrs([Ipv6Cidr.parse("fd00:10:0:2::9/64")])
    iface.poll(1.1, dev, SocketSet())
    na = [f for f in dev.take() if ICMPv6ND_NA in f]
    assert {f[ICMPv6ND_NA].tgt for f in na} == {LL, "fd00:10:0:2::9"}
    assert all(f[IPv6].dst == "ff02::1" and f[ICMPv6ND_NA].S == 0 for f in na)
    assert all(f[ICMPv6ND_NA].O == 1 for f in na)


def test_neighbor_solicitation_answered_and_sender_learned():
    iface, dev, sockets = settled()
    ns = from_peer(ICMPv6ND_NS(tgt=GLOBAL) / ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC),
                   dst="ff02::1:ff00:2", hlim=255, mac_dst="33:33:ff:00:00:02")
    (na,) = feed(iface, dev, sockets, ns, now=2.0)
    assert na.dst == PEER_MAC and na[IPv6].src == GLOBAL and na[IPv6].dst == PEER
    assert na[ICMPv6ND_NA].tgt == GLOBAL and na[ICMPv6ND_NA].S == 1 and na[ICMPv6ND_NA].O == 1
    assert na[ICMPv6NDOptDstLLAddr].lladdr == str(MAC) and checksums_ok(na)
    assert iface.neighbors6.state(IPv6Address(PEER)) is State.STALE


def test_ns_with_wrong_hop_limit_or_zero_length_option_is_dropped():
    iface, dev, sockets = make()
    dev.take()
    bad_hlim = from_peer(ICMPv6ND_NS(tgt=GLOBAL), hlim=64)
    zero_opt = from_peer(ICMPv6ND_NS(tgt=GLOBAL) / ICMPv6NDOptSrcLLAddr(len=0, lladdr=PEER_MAC),
                         hlim=255)
    assert feed(iface, dev, sockets, bad_hlim, zero_opt) == []
    assert iface.stats["ndisc_malformed"] == 2


def test_echo_to_global_link_local_and_all_nodes():
    iface, dev, sockets = make()
    dev.take()
    reqs = [from_peer(ICMPv6EchoRequest(id=7, seq=1, data=b"hello")),
            from_peer(ICMPv6EchoRequest(id=7, seq=2, data=b"ll"), src=PEER_LL, dst=LL),
            from_peer(ICMPv6EchoRequest(id=7, seq=3), src=PEER_LL, dst="ff02::1",
                      mac_dst="33:33:00:00:00:01")]
    out = feed(iface, dev, sockets, *reqs)
    replies = [f for f in out if ICMPv6EchoReply in f]
    assert [f[ICMPv6EchoReply].seq for f in replies] == [1, 2, 3]
    assert replies[0][IPv6].src == GLOBAL and replies[0][ICMPv6EchoReply].data == b"hello"
    assert replies[1][IPv6].src == LL and replies[2][IPv6].src == LL
    assert all(f.dst == PEER_MAC and checksums_ok(f) for f in replies)


def test_fragmented_echo_is_reassembled_and_the_reply_fragmented():
    iface, dev, sockets = make()
    dev.take()
    big = IPv6(src=PEER, dst=GLOBAL) / IPv6ExtHdrFragment(id=99) / \
        ICMPv6EchoRequest(id=1, seq=1, data=bytes(range(256)) * 16)
    frags = [Ether(src=PEER_MAC, dst=str(MAC)) / f for f in fragment6(big, 1280)]
    assert len(frags) == 4
    out = feed(iface, dev, sockets, *frags)
    assert len(out) == 3 and all(len(f) <= 1514 for f in out)  # link MTU 1500
    whole = IPv6(raw(defragment6([f[IPv6] for f in out])))
    assert whole[ICMPv6EchoReply].data == bytes(range(256)) * 16
    assert iface.reassembler6.stats.reassembled == 1


def test_overlapping_fragments_drop_the_datagram():
    iface, dev, sockets = make()
    dev.take()
    body = raw(ICMPv6EchoRequest(id=1, seq=1, data=b"x" * 64))

    def frag(off, data, m):
        return from_peer(IPv6ExtHdrFragment(id=5, offset=off // 8, m=m, nh=58) / Raw(data))

    out = feed(iface, dev, sockets, frag(0, body[:48], 1), frag(40, body[40:], 0))
    assert out == [] and iface.reassembler6.stats.overlaps == 1


def test_atomic_fragment_is_processed_as_is():
    iface, dev, sockets = make()
    dev.take()
    pkt = from_peer(IPv6ExtHdrFragment(id=5, offset=0, m=0) / ICMPv6EchoRequest(seq=9))
    (reply,) = feed(iface, dev, sockets, pkt)
    assert reply[ICMPv6EchoReply].seq == 9


def test_extension_header_chain_of_100_is_dropped():
    iface, dev, sockets = make()
    dev.take()
    chain = IPv6ExtHdrDestOpt()
    for _ in range(99):
        chain = chain / IPv6ExtHdrDestOpt()
    out = feed(iface, dev, sockets, from_peer(chain / ICMPv6EchoRequest()))
    assert out == [] and iface.stats["ipv6_bad_extension_headers"] == 1


def test_unknown_option_with_icmp_action_gets_parameter_problem():
    iface, dev, sockets = make()
    dev.take()
    pkt = from_peer(IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0xC2, optdata=b"ab")])
                    / ICMPv6EchoRequest())
    (err,) = feed(iface, dev, sockets, pkt)
    pp = err[ICMPv6ParamProblem]
    assert pp.code == 2 and pp.ptr == 42 and err[IPv6].dst == PEER and checksums_ok(err)


def test_unknown_upper_layer_gets_parameter_problem_code_1():
    iface, dev, sockets = make()
    dev.take()
    pkt = Ether(src=PEER_MAC, dst=str(MAC)) / IPv6(src=PEER, dst=GLOBAL, nh=253) / b"xyz"
    (err,) = feed(iface, dev, sockets, pkt)
    assert err[ICMPv6ParamProblem].code == 1 and err[ICMPv6ParamProblem].ptr == 6


def test_send_resolves_with_ns_then_na_releases_the_queue():
    iface, dev, sockets = make()
    dev.take()
    iface._now, iface._device, iface._sockets = 0.0, dev, sockets
    sent = iface.emit(IPv6Address(PEER), 58, len(raw(ICMPv6EchoRequest(seq=4))),
                      lambda buf, src, csum: buf.__setitem__(slice(None), raw(
                          IPv6(src=str(src), dst=PEER) / ICMPv6EchoRequest(seq=4))[40:]))
    assert sent
    (ns,) = dev.take()
    assert ns[ICMPv6ND_NS].tgt == PEER and ns[IPv6].dst == "ff02::1:ff00:15"
    assert ns[ICMPv6NDOptSrcLLAddr].lladdr == str(MAC) and ns[IPv6].src == GLOBAL
    na = from_peer(ICMPv6ND_NA(tgt=PEER, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=PEER_MAC),
                   hlim=255)
    (echo,) = feed(iface, dev, sockets, na)
    assert echo.dst == PEER_MAC and echo[ICMPv6EchoRequest].seq == 4
    assert iface.neighbors6.state(IPv6Address(PEER)) is State.REACHABLE


def test_unresolved_neighbor_gives_up_after_three_solicitations():
    iface, dev, sockets = make()
    dev.take()
    iface._now, iface._device, iface._sockets = 0.0, dev, sockets
    iface.emit(IPv6Address(PEER), 59, 0, lambda *a: None)
    for t in (1.0, 2.0, 3.0):
        iface.poll(t, dev, sockets)
    ns = [f for f in dev.take() if ICMPv6ND_NS in f and f[ICMPv6ND_NS].tgt == PEER]
    assert len(ns) == 3
    assert iface.neighbors6.queued == 0 and iface.stats["neighbor_unreachable"] == 1


def test_dad_conflict_removes_the_address():
    iface, dev, sockets = make()
    dev.take()
    na = from_peer(ICMPv6ND_NA(tgt=GLOBAL, O=1) / ICMPv6NDOptDstLLAddr(lladdr=PEER_MAC),
                   src=PEER_LL, dst="ff02::1", hlim=255, mac_dst="33:33:00:00:00:01")
    feed(iface, dev, sockets, na, now=0.5)
    assert [str(c.address) for c in iface.ipv6_addrs] == [LL]
    assert iface.stats["ipv6_dad_failed"] == 1


def test_dad_probe_from_another_node_is_defended_after_dad():
    iface, dev, sockets = settled()
    probe = from_peer(ICMPv6ND_NS(tgt=GLOBAL), src="::", dst="ff02::1:ff00:2", hlim=255,
                      mac_dst="33:33:ff:00:00:02")
    (na,) = feed(iface, dev, sockets, probe, now=2.0)
    assert na[IPv6].dst == "ff02::1" and na[ICMPv6ND_NA].tgt == GLOBAL
    assert na[ICMPv6ND_NA].S == 0
    assert [str(c.address) for c in iface.ipv6_addrs] == [LL, GLOBAL]


def test_router_advertisement_gives_a_default_router_and_mtu():
    iface, dev, sockets = make()
    dev.take()
    ra = Ether(src=ROUTER_MAC, dst="33:33:00:00:00:01") / \
        IPv6(src=ROUTER_LL, dst="ff02::1", hlim=255) / ICMPv6ND_RA(routerlifetime=600) / \
        ICMPv6NDOptSrcLLAddr(lladdr=ROUTER_MAC) / ICMPv6NDOptMTU(mtu=1400) / \
        ICMPv6NDOptPrefixInfo(prefix="2001:db8:1::", prefixlen=64)
    feed(iface, dev, sockets, ra)
    assert iface.ipv6_default_router == IPv6Address(ROUTER_LL)
    assert iface.path_mtu(IPv6Address("2001:db8:9::1")) == 1400
    iface._now, iface._device, iface._sockets = 0.0, dev, sockets
    iface.emit(IPv6Address("2001:db8:9::1"), 59, 0, lambda *a: None)
    (f,) = dev.take()  # off-link: straight to the router, whose address the RA gave
    assert f.dst == ROUTER_MAC and f[IPv6].dst == "2001:db8:9::1"
    iface.emit(IPv6Address("2001:db8:1::7"), 59, 0, lambda *a: None)
    (ns,) = dev.take()  # on-link prefix: resolved directly
    assert ns[ICMPv6ND_NS].tgt == "2001:db8:1::7"
    feed(iface, dev, sockets, ra.copy(), now=1.0)
    dev.take()
    iface.poll(700.0, dev, sockets)
    assert iface.ipv6_default_router is None


def test_router_solicitation_goes_to_ndisc_sockets_and_ra_flood_is_bounded():
    class Taker(Socket):
        KIND = "ndisc"

        def __init__(self):
            super().__init__()
            self.got = []

        def accepts(self, ip, msg):
            return True

        def process(self, now, ip, msg, payload, src_hw):
            self.got.append(msg)

        def dispatch(self, now, emit):
            pass

        def poll_at(self, now):
            return None

    iface, dev, sockets = make()
    dev.take()
    taker = Taker()
    sockets.add(taker)
    rs = from_peer(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC), src=PEER_LL,
                   dst="ff02::2", hlim=255, mac_dst="33:33:00:00:00:02")
    feed(iface, dev, sockets, rs)
    assert taker.got == []  # not a router: ff02::2 is not ours
    iface.ipv6_router = True
    iface._recompute_accept6()
    feed(iface, dev, sockets, rs)
    assert len(taker.got) == 1 and iface.neighbors6.state(IPv6Address(PEER_LL)) is State.STALE
    iface.ipv6_router = False
    flood = [Ether(src=f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", dst="33:33:00:00:00:01")
             / IPv6(src=f"fe80::{i + 1:x}", dst="ff02::1", hlim=255)
             / ICMPv6ND_RA(routerlifetime=1800)
             / ICMPv6NDOptSrcLLAddr(lladdr=f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}")
             / ICMPv6NDOptPrefixInfo(prefix=f"2001:db8:{i:x}::", prefixlen=64)
             for i in range(2000)]
    for i in range(0, 2000, 64):
        feed(iface, dev, sockets, *flood[i:i + 64])
    assert len(iface._onlink6) <= 16 and len(iface.neighbors6) <= 1024


def test_packet_too_big_lowers_path_mtu_and_later_sends_fragment():
    iface, dev, sockets = make()
    dev.take()
    na = from_peer(ICMPv6ND_NA(tgt=PEER, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=PEER_MAC),
                   hlim=255)
    feed(iface, dev, sockets, na)
    quote = raw(IPv6(src=GLOBAL, dst=PEER, plen=1460, nh=17))[:40] + bytes(1200)
    ptb = from_peer(ICMPv6PacketTooBig(mtu=1280) / Raw(quote))
    feed(iface, dev, sockets, ptb)
    assert iface.path_mtu(IPv6Address(PEER)) == 1280
    assert iface.stats["icmpv6_ptb_applied"] == 1
    iface._now, iface._device, iface._sockets = 0.0, dev, sockets
    iface.neighbors6.learn(IPv6Address(PEER), EthernetAddress.parse(PEER_MAC), 0.0)
    payload = bytes(range(200)) * 7
    iface.emit(IPv6Address(PEER), 59, len(payload),
               lambda buf, src, csum: buf.__setitem__(slice(None), payload))
    out = dev.take()
    assert len(out) == 2 and all(len(f) - 14 <= 1280 for f in out)
    whole = defragment6([f[IPv6] for f in out])
    assert raw(whole)[40:] == payload


def test_packet_too_big_below_1280_is_clamped_and_foreign_quotes_ignored():
    iface, dev, sockets = make()
    dev.take()
    quote = raw(IPv6(src=GLOBAL, dst=PEER, plen=1460, nh=17))[:40] + bytes(100)
    feed(iface, dev, sockets, from_peer(ICMPv6PacketTooBig(mtu=500) / Raw(quote)))
    assert iface.path_mtu(IPv6Address(PEER)) == 1280
    other = raw(IPv6(src="fd00::99", dst=PEER, plen=1460, nh=17))[:40] + bytes(100)
    feed(iface, dev, sockets, from_peer(ICMPv6PacketTooBig(mtu=1300) / Raw(other)))
    assert iface.stats["icmpv6_ptb_not_ours"] == 1


def test_not_for_us_and_multicast_source_dropped():
    iface, dev, sockets = make()
    dev.take()
    out = feed(iface, dev, sockets,
               from_peer(ICMPv6EchoRequest(), dst="fd00:10:0:2::99"),
               from_peer(ICMPv6EchoRequest(), src="ff02::1"),
               from_peer(ICMPv6EchoRequest(), dst="ff02::1:2", mac_dst="33:33:00:01:00:02"))
    assert out == []
    assert iface.stats["ipv6_not_for_us"] == 1 and iface.stats["ipv6_martian_source"] == 1


def test_ipv6_off():
    iface, dev, sockets = make(ipv6=False)
    assert dev.take() == [] and iface.ipv6_addrs == []
    assert feed(iface, dev, sockets, from_peer(ICMPv6EchoRequest())) == []


# -- review regressions: each was a bug, the hostile input is in the test ------------------


def test_packet_too_big_flood_with_distinct_destinations_is_bounded():
    # Each PTB quoting another destination made a path MTU entry: the table grew without
    # bound (one entry per forged quote, kept 10 minutes).
    iface, dev, sockets = make()
    dev.take()
    for i in range(0, 3000, 50):
        ptbs = [from_peer(ICMPv6PacketTooBig(mtu=1280) / Raw(
            raw(IPv6(src=GLOBAL, dst=f"2001:db8::{i + j:x}", plen=1460, nh=17))[:40]
            + bytes(64))) for j in range(50)]
        feed(iface, dev, sockets, *ptbs)
    assert len(iface._pmtu) <= 1024
    assert iface.path_mtu(IPv6Address("2001:db8::bb7")) == 1280  # the newest are kept


def test_no_parameter_problem_about_an_icmpv6_error_behind_extension_headers():
    # RFC 4443 §2.4(e.1): never an error about an error. The check only looked at the
    # fixed header's Next Header, so an error behind a Destination Options header with an
    # unknown 11xxxxxx option was answered with a Parameter Problem.
    iface, dev, sockets = make()
    dev.take()
    quote = raw(IPv6(src=GLOBAL, dst=PEER) / ICMPv6EchoRequest())
    pkt = from_peer(IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0xC2, optdata=b"ab")])
                    / ICMPv6DestUnreach(code=4) / Raw(quote))
    assert feed(iface, dev, sockets, pkt) == []
    assert iface.stats["icmp_error_suppressed"] == 1
    echo = from_peer(IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0xC2, optdata=b"ab")])
                     / ICMPv6EchoRequest())
    (err,) = feed(iface, dev, sockets, echo)  # an informational message still gets one
    assert err[ICMPv6ParamProblem].code == 2


def test_optimistic_addresses_get_no_override_and_no_unsolicited_na():
    # RFC 4429 §3.3: a node must not override other nodes' cache entries for an address
    # that is still Optimistic: no unsolicited NA for it and O=0 in solicited ones. The
    # unsolicited NA (O=1) went out on the first poll, DAD still running.
    iface, dev, sockets = make()
    first = dev.take()
    assert [f for f in first if ICMPv6ND_NA in f] == []
    assert len([f for f in first if ICMPv6ND_NS in f]) == 2  # DAD for LL and GLOBAL
    ns = from_peer(ICMPv6ND_NS(tgt=GLOBAL) / ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC), hlim=255)
    (na,) = feed(iface, dev, sockets, ns, now=0.5)
    assert na[ICMPv6ND_NA].O == 0 and na[ICMPv6ND_NA].S == 1 and checksums_ok(na)
    (na,) = feed(iface, dev, sockets, ns, now=2.0)  # DAD over: Override
    assert na[ICMPv6ND_NA].O == 1


def _ns_frags(frag_size):
    pkt = IPv6(src=PEER, dst=GLOBAL, hlim=255) / IPv6ExtHdrFragment(id=7) / \
        ICMPv6ND_NS(tgt=GLOBAL) / ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC)
    return [Ether(src=PEER_MAC, dst=str(MAC)) / f for f in fragment6(pkt, frag_size)]


def test_fragmented_neighbor_discovery_is_ignored():
    # RFC 6980 §5: NDP messages in fragmented packets (atomic fragments included) are
    # ignored. A fragmented NS was reassembled and answered (and taught us a MAC).
    iface, dev, sockets = settled()
    frags = _ns_frags(64)
    assert len(frags) == 2
    assert feed(iface, dev, sockets, *frags, now=2.0) == []
    atomic = from_peer(IPv6ExtHdrFragment(id=8, offset=0, m=0) / ICMPv6ND_NS(tgt=GLOBAL)
                       / ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC), hlim=255)
    assert feed(iface, dev, sockets, atomic, now=2.0) == []
    assert iface.stats["ndisc_fragmented"] == 2


def test_first_fragment_without_the_whole_header_chain_is_dropped():
    # RFC 8200 §4.5 / RFC 7112: the first fragment must hold every header up to and
    # including the upper-layer header; else drop it and send Parameter Problem code 3,
    # pointer 0. Such a first fragment was reassembled and its datagram processed.
    iface, dev, sockets = settled()
    body = raw(IPv6(src=PEER, dst=GLOBAL) / IPv6ExtHdrDestOpt(nh=58)
               / ICMPv6EchoRequest(id=1, seq=1, data=b"x" * 32))[40:]
    first = from_peer(IPv6ExtHdrFragment(nh=60, id=11, offset=0, m=1) / Raw(body[:8]))
    rest = from_peer(IPv6ExtHdrFragment(nh=60, id=11, offset=1, m=0) / Raw(body[8:]))
    (err,) = feed(iface, dev, sockets, first, rest, now=2.0)
    pp = err[ICMPv6ParamProblem]
    assert pp.code == 3 and pp.ptr == 0 and err[IPv6].dst == PEER and checksums_ok(err)
    assert iface.reassembler6.stats.reassembled == 0
    # A first fragment with the ICMPv6 header whole but not its body is fine.
    short = raw(IPv6(src=PEER, dst=GLOBAL) / ICMPv6EchoRequest(id=1, seq=2, data=b"y" * 32))[40:]
    a = from_peer(IPv6ExtHdrFragment(nh=58, id=12, offset=0, m=1) / Raw(short[:8]))
    b = from_peer(IPv6ExtHdrFragment(nh=58, id=12, offset=1, m=0) / Raw(short[8:]))
    (reply,) = feed(iface, dev, sockets, a, b, now=2.0)
    assert reply[ICMPv6EchoReply].seq == 2


def test_multicast_ethernet_source_is_not_learned():
    # A frame with a group MAC as its source taught the neighbor cache that address:
    # unicast replies then went to every listener of that group.
    iface, dev, sockets = settled()
    pkt = Ether(src="33:33:00:00:00:01", dst=str(MAC)) / IPv6(src=PEER, dst=GLOBAL) / \
        ICMPv6EchoRequest()
    out = feed(iface, dev, sockets, pkt, now=2.0)
    assert all(not (f.dst.startswith("33:33:00:00:00:01")) for f in out)
    assert IPv6Address(PEER) not in iface.neighbors6


def test_loopback_and_ipv4_mapped_sources_are_martians():
    # RFC 4291 §2.5.3, RFC 4942 §2.1.4: ::1 and ::ffff:0:0/96 never come from the wire.
    # A datagram from ::ffff:10.0.2.99 reached a dual-stack UDP socket as if an IPv4 peer
    # had sent it (its reply would have gone out over IPv4 to 10.0.2.99).
    iface, dev, sockets = settled()
    s = UdpSocket()
    s.bind(("::", 5000))
    sockets.add(s)
    out = feed(iface, dev, sockets,
               from_peer(UDP(sport=53, dport=5000) / b"spoof", src="::ffff:10.0.2.99"),
               from_peer(UDP(sport=53, dport=5000) / b"spoof", src="::1"),
               from_peer(ICMPv6EchoRequest(), src="::1"), now=2.0)
    assert out == [] and not s.can_recv()
    assert iface.stats["ipv6_martian_source"] == 3


def test_reassembly_timeout_sends_time_exceeded_when_the_first_fragment_came():
    # RFC 8200 §4.5: Time Exceeded code 1 to the source of the first fragment, quoting it;
    # nothing when only later fragments came, nor for datagrams to a multicast group.
    iface, dev, sockets = settled()
    body = raw(IPv6(src=PEER, dst=GLOBAL) / ICMPv6EchoRequest(id=1, seq=1, data=b"z" * 64))
    first = from_peer(IPv6ExtHdrFragment(nh=58, id=21, offset=0, m=1) / Raw(body[40:64]))
    later = from_peer(IPv6ExtHdrFragment(nh=58, id=22, offset=3, m=1) / Raw(body[64:80]))
    to_group = from_peer(IPv6ExtHdrFragment(nh=58, id=23, offset=0, m=1) / Raw(body[40:64]),
                         dst="ff02::1", mac_dst="33:33:00:00:00:01")
    assert feed(iface, dev, sockets, first, later, to_group, now=2.0) == []
    assert feed(iface, dev, sockets, now=61.0) == []  # 60 s from the first fragment
    (err,) = feed(iface, dev, sockets, now=62.0)
    te = err[ICMPv6TimeExceeded]
    assert te.code == 1 and err[IPv6].dst == PEER and err[IPv6].src == GLOBAL
    assert raw(te.payload) == raw(first[IPv6]) and checksums_ok(err)
    assert iface.reassembler6.stats.timeouts == 3 and len(iface.reassembler6) == 0


def test_bad_fragment_lengths_get_parameter_problem_code_0():
    # RFC 8200 §4.5: a non-last fragment whose length is not a multiple of 8 (pointer: the
    # Payload Length field), or one reaching past 65535 bytes (pointer: the Fragment
    # Offset field) is dropped with Parameter Problem code 0. Both were dropped silently.
    iface, dev, sockets = settled()
    odd = from_peer(IPv6ExtHdrFragment(nh=58, id=31, offset=0, m=1) / Raw(b"\x80" * 13))
    past = from_peer(IPv6ExtHdrFragment(nh=58, id=32, offset=8190, m=0) / Raw(b"q" * 64))
    e1, e2 = feed(iface, dev, sockets, odd, past, now=2.0)
    assert e1[ICMPv6ParamProblem].code == 0 and e1[ICMPv6ParamProblem].ptr == 4
    assert e2[ICMPv6ParamProblem].code == 0 and e2[ICMPv6ParamProblem].ptr == 42
    assert checksums_ok(e1) and checksums_ok(e2)
    assert len(iface.reassembler6) == 0


def test_group_or_own_mac_in_link_layer_options_is_not_learned():
    # A source/target link-layer option naming a group MAC (or ours) replaced a good
    # entry: unicast traffic then went to a multicast MAC (or back to ourselves).
    iface, dev, sockets = settled()
    for mac in ("33:33:00:00:00:01", str(MAC), "ff:ff:ff:ff:ff:ff"):
        ns = from_peer(ICMPv6ND_NS(tgt=GLOBAL) / ICMPv6NDOptSrcLLAddr(lladdr=mac), hlim=255)
        na = from_peer(ICMPv6ND_NA(tgt=PEER, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac),
                       hlim=255)
        out = feed(iface, dev, sockets, ns, na, now=2.0)
        assert all(f.dst == PEER_MAC for f in out)
    assert iface.neighbors6.lookup(IPv6Address(PEER), 2.0) == EthernetAddress.parse(PEER_MAC)
    assert iface.stats["ndisc_bad_lladdr"] == 6


def test_na_clearing_the_router_flag_removes_the_default_router():
    # RFC 4861 §7.2.5: IsRouter going from TRUE to FALSE removes the router from the
    # Default Router List. Our default router kept being used after saying it was a host.
    iface, dev, sockets = settled()
    ra = Ether(src=ROUTER_MAC, dst="33:33:00:00:00:01") / \
        IPv6(src=ROUTER_LL, dst="ff02::1", hlim=255) / ICMPv6ND_RA(routerlifetime=600) / \
        ICMPv6NDOptSrcLLAddr(lladdr=ROUTER_MAC)
    feed(iface, dev, sockets, ra, now=2.0)
    assert iface.ipv6_default_router == IPv6Address(ROUTER_LL)
    still = Ether(src=ROUTER_MAC, dst=str(MAC)) / IPv6(src=ROUTER_LL, dst=LL, hlim=255) / \
        ICMPv6ND_NA(tgt=ROUTER_LL, R=1, S=0, O=1)
    feed(iface, dev, sockets, still, now=3.0)
    assert iface.ipv6_default_router == IPv6Address(ROUTER_LL)
    host = Ether(src=ROUTER_MAC, dst=str(MAC)) / IPv6(src=ROUTER_LL, dst=LL, hlim=255) / \
        ICMPv6ND_NA(tgt=ROUTER_LL, R=0, S=0, O=1)
    feed(iface, dev, sockets, host, now=4.0)
    assert iface.ipv6_default_router is None
