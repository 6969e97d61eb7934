"""MLD (RFC 3810) on the interface: the unsolicited MLDv2 report when our groups change and
the answers to queries, parsed back with scapy (checksum, Hop-by-Hop Router Alert, hop
limit, records)."""

from __future__ import annotations

from ipaddress import IPv6Address

from scapy.layers.inet6 import (
    ICMPv6MLDMultAddrRec,
    ICMPv6MLQuery,
    ICMPv6MLQuery2,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import Ether
from scapy.packet import raw

from netstack.iface import Interface, InterfaceConfig
from netstack.socket import SocketSet
from netstack.wire.ipv6 import Ipv6Cidr
from tests.iface.test_interface import Dev
from tests.iface.test_ipv6 import GLOBAL, LL, MAC, PEER_MAC, feed, settled

QUERIER = "fe80::1"
SOL_LL = "ff02::1:ff00:1"  # solicited-node group of LL
SOL_GLOBAL = "ff02::1:ff00:2"  # ... of GLOBAL


def checksum_ok(frame: Ether) -> bool:
    rebuilt = frame.copy()
    for layer in (ICMPv6MLReport2, ICMPv6MLReport):
        if layer in rebuilt:
            del rebuilt[layer].cksum
    return raw(Ether(raw(rebuilt))) == raw(frame)


def is_mld_frame(f: Ether, dst: str = "ff02::16") -> bool:
    """Hop limit 1, from our link-local address, a Hop-by-Hop header carrying a Router
    Alert for MLD (value 0), Ethernet destination the group's."""
    if IPv6ExtHdrHopByHop not in f:
        return False
    hbh = f[IPv6ExtHdrHopByHop]
    alerts = [o for o in hbh.options if isinstance(o, RouterAlert)]
    return (f[IPv6].hlim == 1 and f[IPv6].src == LL and f[IPv6].dst == dst
            and f[IPv6].nh == 0 and hbh.nh == 58 and len(alerts) == 1
            and alerts[0].value == 0 and f.dst == "33:33:" + ":".join(
                f"{b:02x}" for b in IPv6Address(dst).packed[12:]))


def records(f: Ether) -> dict[str, int]:
    """group → record type (scapy chains the records as payloads of the first one)."""
    out = {}
    for r in f[ICMPv6MLReport2].records:
        while isinstance(r, ICMPv6MLDMultAddrRec):
            assert r.sources_number == 0 and r.auxdata_len == 0
            out[r.dst] = r.rtype
            r = r.payload
    assert len(out) == f[ICMPv6MLReport2].records_number
    return out


def query(q, dst="ff02::1", src=QUERIER, hlim=1, alert=True) -> Ether:
    ip = IPv6(src=src, dst=dst, hlim=hlim)
    mac = "33:33:" + ":".join(f"{b:02x}" for b in IPv6Address(dst).packed[12:])
    if alert:
        return Ether(src=PEER_MAC, dst=mac) / ip / \
            IPv6ExtHdrHopByHop(options=[RouterAlert()]) / q
    return Ether(src=PEER_MAC, dst=mac) / ip / q


def test_first_poll_reports_our_groups_before_dad():
    cfg = InterfaceConfig(MAC, [], ipv6_addrs=[Ipv6Cidr.parse(GLOBAL + "/64")])
    iface = Interface(cfg)
    dev = Dev()
    iface.poll(0.0, dev, SocketSet())
    frames = dev.take()
    mld = [f for f in frames if ICMPv6MLReport2 in f]
    assert len(mld) == 1 and frames[0] is mld[0]  # RFC 4862 §5.4.2: join, then DAD
    (rep,) = mld
    assert is_mld_frame(rep) and checksum_ok(rep)
    assert records(rep) == {SOL_LL: 4, SOL_GLOBAL: 4}  # CHANGE_TO_EXCLUDE, no ff02::1
    assert any(ICMPv6ND_NS in f for f in frames)
    iface.poll(5.0, dev, SocketSet())  # nothing changed: nothing more
    assert [f for f in dev.take() if ICMPv6MLReport2 in f] == []


def test_join_and_leave_are_reported():
    iface, dev, sockets = settled()
    iface.join_multicast_group(IPv6Address("ff05::1:3"))
    iface.join_multicast_group(IPv6Address("ff01::5"))  # interface-local: never reported
    (rep,) = feed(iface, dev, sockets, now=2.0)
    assert is_mld_frame(rep) and checksum_ok(rep)
    assert records(rep) == {SOL_LL: 4, SOL_GLOBAL: 4, "ff05::1:3": 4}
    iface.leave_multicast_group(IPv6Address("ff05::1:3"))
    (rep,) = feed(iface, dev, sockets, now=3.0)
    assert records(rep) == {SOL_LL: 4, SOL_GLOBAL: 4, "ff05::1:3": 3}  # TO_IN {}
    iface.set_ipv6_addrs([Ipv6Cidr.parse(GLOBAL + "/64")])  # same groups: nothing
    assert [f for f in feed(iface, dev, sockets, now=4.0) if ICMPv6MLReport2 in f] == []


def test_general_query_answered_at_once_then_rate_limited():
    iface, dev, sockets = settled()
    (rep,) = feed(iface, dev, sockets, query(ICMPv6MLQuery2()), now=2.0)
    assert is_mld_frame(rep) and checksum_ok(rep)
    assert records(rep) == {SOL_LL: 2, SOL_GLOBAL: 2}  # MODE_IS_EXCLUDE
    flood = [query(ICMPv6MLQuery2()) for _ in range(50)]
    assert feed(iface, dev, sockets, *flood, now=2.1) == []  # merged, due at 3.0
    assert iface.poll_at(2.1, sockets) == 3.0
    (rep,) = feed(iface, dev, sockets, now=3.0)
    assert records(rep) == {SOL_LL: 2, SOL_GLOBAL: 2}
    assert iface.stats["mld_queries"] == 51
    assert iface.stats["mld_reports_sent"] == 3  # the first poll's, then two answers


def test_group_specific_query_answered_for_our_groups_only():
    iface, dev, sockets = settled()
    (rep,) = feed(iface, dev, sockets, query(ICMPv6MLQuery2(mladdr=SOL_GLOBAL),
                                             dst=SOL_GLOBAL), now=2.0)
    assert records(rep) == {SOL_GLOBAL: 2} and checksum_ok(rep)
    other = query(ICMPv6MLQuery2(mladdr="ff05::99"))  # to ff02::1, for a group not ours
    assert feed(iface, dev, sockets, other, now=5.0) == []
    assert iface.stats["mld_query_not_ours"] == 1


def test_queries_without_hop_limit_1_router_alert_or_link_local_source_are_dropped():
    iface, dev, sockets = settled()
    bad = [query(ICMPv6MLQuery2(), hlim=2), query(ICMPv6MLQuery2(), alert=False),
           query(ICMPv6MLQuery2(), src="fd00:10:0:2::1")]
    assert feed(iface, dev, sockets, *bad, now=2.0) == []
    assert iface.stats["mld_query_dropped"] == 2 and iface.stats["mld_malformed"] == 1


def test_mldv1_query_gets_mldv1_reports():
    iface, dev, sockets = settled()
    out = feed(iface, dev, sockets, query(ICMPv6MLQuery()), now=2.0)
    assert sorted(f[ICMPv6MLReport].mladdr for f in out) == [SOL_LL, SOL_GLOBAL]
    for f in out:
        assert is_mld_frame(f, dst=f[ICMPv6MLReport].mladdr) and checksum_ok(f)


def test_other_listeners_reports_do_not_pass_our_ethernet_filter():
    iface, dev, sockets = settled()
    rec = ICMPv6MLDMultAddrRec(rtype=4, dst="ff05::1:3")
    rep = query(ICMPv6MLReport2(records=[rec], records_number=1), dst="ff02::16",
                src="fe80::99")
    assert feed(iface, dev, sockets, rep, now=2.0) == []
    assert iface.stats["eth_not_for_us"] == 1


def test_reports_split_to_fit_the_mtu():
    iface, dev, sockets = settled()
    for i in range(200):
        iface.join_multicast_group(IPv6Address(f"ff05::1:{i:x}"))
    out = feed(iface, dev, sockets, now=2.0)
    assert len(out) == 3 and all(len(f) <= 1514 and checksum_ok(f) for f in out)
    assert sum(len(records(f)) for f in out) == 202
