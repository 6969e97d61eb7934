"""Neighbor Discovery: byte vectors checked against scapy both ways, the RFC 4861 validity
checks, hostile options, truncation, fuzzing."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptRedirectedHdr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.packet import raw

from netstack.wire import Error
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.icmpv6 import Icmpv6Packet
from netstack.wire.ndisc import (
    MAX_OPTIONS,
    NeighborAdvert,
    NeighborSolicit,
    PrefixInfo,
    Redirect,
    RouterAdvert,
    RouterSolicit,
    parse_ndisc,
)

GUEST_LL = IPv6Address("fe80::5054:ff:fe12:3456")
ROUTER_LL = IPv6Address("fe80::2")
GUEST_MAC = EthernetAddress.parse("52:54:00:12:34:56")
ROUTER_MAC = EthernetAddress.parse("52:55:0a:00:02:02")
ALL_NODES = IPv6Address("ff02::1")
ALL_ROUTERS = IPv6Address("ff02::2")
UNSPEC = IPv6Address("::")
GUEST_GLOBAL = IPv6Address("fd00::5054:ff:fe12:3456")
SOLICITED = IPv6Address("ff02::1:ff12:3456")


def icmp(layer, src, dst) -> bytes:
    return raw(IPv6(src=str(src), dst=str(dst), hlim=255) / layer)[40:]


RS = icmp(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=str(GUEST_MAC)), GUEST_LL, ALL_ROUTERS)
RA = icmp(
    ICMPv6ND_RA(chlim=64, M=0, O=1, prf=0, routerlifetime=1800, reachabletime=30000,
                retranstimer=1000)
    / ICMPv6NDOptSrcLLAddr(lladdr=str(ROUTER_MAC))
    / ICMPv6NDOptMTU(mtu=1500)
    / ICMPv6NDOptPrefixInfo(prefix="fd00::", prefixlen=64, L=1, A=1, validlifetime=86400,
                            preferredlifetime=14400)
    / ICMPv6NDOptRDNSS(lifetime=600, dns=["fd00::3", "fd00::4"]),
    ROUTER_LL, ALL_NODES,
)
RA_REPR = RouterAdvert(
    hop_limit=64, other=True, router_lifetime=1800, reachable_time=30000, retrans_time=1000,
    lladdr=ROUTER_MAC, mtu=1500,
    prefixes=(PrefixInfo(IPv6Network("fd00::/64"), True, True, 86400, 14400),),
    rdnss=(IPv6Address("fd00::3"), IPv6Address("fd00::4")), rdnss_lifetime=600,
)
NS = icmp(ICMPv6ND_NS(tgt=str(ROUTER_LL)) / ICMPv6NDOptSrcLLAddr(lladdr=str(GUEST_MAC)),
          GUEST_LL, IPv6Address("ff02::1:ff00:2"))
NS_DAD = icmp(ICMPv6ND_NS(tgt=str(GUEST_GLOBAL)), UNSPEC, SOLICITED)
NA = icmp(ICMPv6ND_NA(R=1, S=1, O=0, tgt=str(ROUTER_LL))
          / ICMPv6NDOptDstLLAddr(lladdr=str(ROUTER_MAC)), ROUTER_LL, GUEST_LL)
REDIRECT = icmp(ICMPv6ND_Redirect(tgt="fe80::3", dst="2001:db8::9")
                / ICMPv6NDOptDstLLAddr(lladdr="52:55:0a:00:02:03"), ROUTER_LL, GUEST_LL)

# (bytes, src, dst, repr)
CASES = [
    (RS, GUEST_LL, ALL_ROUTERS, RouterSolicit(GUEST_MAC)),
    (RA, ROUTER_LL, ALL_NODES, RA_REPR),
    (NS, GUEST_LL, IPv6Address("ff02::1:ff00:2"), NeighborSolicit(ROUTER_LL, GUEST_MAC)),
    (NS_DAD, UNSPEC, SOLICITED, NeighborSolicit(GUEST_GLOBAL)),
    (NA, ROUTER_LL, GUEST_LL, NeighborAdvert(ROUTER_LL, router=True, solicited=True,
                                             lladdr=ROUTER_MAC)),
    (REDIRECT, ROUTER_LL, GUEST_LL, Redirect(IPv6Address("fe80::3"), IPv6Address("2001:db8::9"),
                                              EthernetAddress.parse("52:55:0a:00:02:03"))),
]


def _emit_twice(r, src, dst, **kw) -> bytes:
    outs = []
    for fill in (0xA5, 0x5A):
        buf = bytearray([fill]) * (r.buffer_len() + 3)
        r.emit(memoryview(buf), src, dst, **kw)
        assert buf[-3:] == bytes([fill]) * 3
        outs.append(bytes(buf[:-3]))
    assert outs[0] == outs[1], "emit left bytes unwritten"
    return outs[0]


@pytest.mark.parametrize("data, src, dst, expected", CASES)
def test_parse_scapy_vectors(data, src, dst, expected):
    assert parse_ndisc(data, src, dst, 255) == expected
    assert parse_ndisc(memoryview(bytearray(data)), src, dst, 255) == expected


@pytest.mark.parametrize("data, src, dst, expected", CASES)
def test_emit_reproduces_scapy_vectors(data, src, dst, expected):
    assert _emit_twice(expected, src, dst) == data
    out = _emit_twice(expected, src, dst, fill_checksum=False)
    assert out[2:4] == b"\0\0" and out[4:] == data[4:]


def test_scapy_reads_our_ra():
    r = RouterAdvert(managed=True, router_lifetime=0, lladdr=ROUTER_MAC,
                     prefixes=(PrefixInfo(IPv6Network("2001:db8:1::/48"), on_link=False,
                                          valid_lifetime=0xFFFFFFFF, preferred_lifetime=0),
                               PrefixInfo(IPv6Network("fd00:1::/64"), autonomous=False)),
                     rdnss=(IPv6Address("fd00::53"),), rdnss_lifetime=1200)
    out = _emit_twice(r, ROUTER_LL, ALL_NODES)
    sp = ICMPv6ND_RA(out)
    assert sp[ICMPv6ND_RA].M == 1 and sp[ICMPv6ND_RA].routerlifetime == 0
    assert sp[ICMPv6NDOptSrcLLAddr].lladdr == str(ROUTER_MAC)
    p1, p2 = sp.getlayer(ICMPv6NDOptPrefixInfo, 1), sp.getlayer(ICMPv6NDOptPrefixInfo, 2)
    assert (p1.prefix, p1.prefixlen, p1.L, p1.A) == ("2001:db8:1::", 48, 0, 1)
    assert (p1.validlifetime, p1.preferredlifetime) == (0xFFFFFFFF, 0)
    assert (p2.prefix, p2.prefixlen, p2.L, p2.A) == ("fd00:1::", 64, 1, 0)
    assert sp[ICMPv6NDOptRDNSS].dns == ["fd00::53"] and sp[ICMPv6NDOptRDNSS].lifetime == 1200
    assert Icmpv6Packet(out).verify_checksum(ROUTER_LL, ALL_NODES)
    assert parse_ndisc(out, ROUTER_LL, ALL_NODES, 255) == r


def test_prefix_host_bits_ignored_and_rdnss_merged():
    data = icmp(
        ICMPv6ND_RA(chlim=64, prf=0)
        / ICMPv6NDOptPrefixInfo(prefix="fd00::1234", prefixlen=64)
        / ICMPv6NDOptRDNSS(lifetime=600, dns=["fd00::3"])
        / ICMPv6NDOptRDNSS(lifetime=300, dns=["fd00::4"]),
        ROUTER_LL, ALL_NODES)
    r = parse_ndisc(data, ROUTER_LL, ALL_NODES, 255)
    assert r.prefixes[0].prefix == IPv6Network("fd00::/64")
    assert r.rdnss == (IPv6Address("fd00::3"), IPv6Address("fd00::4")) and r.rdnss_lifetime == 300


def test_unknown_and_redirected_header_options_skipped_duplicates_first_wins():
    data = icmp(
        ICMPv6ND_Redirect(tgt="fe80::3", dst="fe80::3")
        / ICMPv6NDOptRedirectedHdr(pkt=b"\x60" + b"\0" * 39)
        / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:01")
        / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:02")
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:03"),
        ROUTER_LL, GUEST_LL)
    r = parse_ndisc(data, ROUTER_LL, GUEST_LL, 255)
    assert r == Redirect(IPv6Address("fe80::3"), IPv6Address("fe80::3"),
                         EthernetAddress.parse("02:00:00:00:00:01"))
    unknown = _with_options(RS[:8], bytes([200, 2]) + b"\0" * 14 + bytes([1, 1]) + GUEST_MAC)
    assert parse_ndisc(unknown, GUEST_LL, ALL_ROUTERS, 255) == RouterSolicit(GUEST_MAC)


def _with_options(fixed: bytes, options: bytes, src=GUEST_LL, dst=ALL_ROUTERS) -> bytes:
    buf = bytearray(fixed + options)
    Icmpv6Packet(buf).fill_checksum(src, dst)
    return bytes(buf)


def _rs(options: bytes) -> bytes:
    return _with_options(RS[:8], options)


@pytest.mark.parametrize(
    "options",
    [
        bytes([1, 0]) + b"\0" * 6,  # length 0
        bytes([99, 0]) + b"\0" * 6,  # unknown option, length 0
        bytes([1, 2]) + GUEST_MAC + b"\0" * 2,  # runs past the end
        bytes([99, 1]) + b"\0" * 6 + b"\x05",  # a lone byte: truncated option header
        bytes([1, 2]) + GUEST_MAC + b"\0" * 8,  # link-layer option of 2 units
        bytes([5, 2]) + b"\0" * 14,  # MTU option of 2 units
        bytes([3, 3]) + b"\0" * 22,  # prefix information of 3 units
        bytes([3, 4, 129]) + b"\0" * 29,  # prefix length 129
        bytes([25, 2]) + b"\0" * 14,  # RDNSS of even length
        bytes([25, 1]) + b"\0" * 6,  # RDNSS without an address
        (bytes([99, 1]) + b"\0" * 6) * 1000,  # 1000 options
    ],
)
def test_hostile_options_raise_error(options):
    with pytest.raises(Error):
        parse_ndisc(_rs(options), GUEST_LL, ALL_ROUTERS, 255)


def test_option_count_bound():
    one = bytes([99, 1]) + b"\0" * 6
    assert parse_ndisc(_rs(one * MAX_OPTIONS), GUEST_LL, ALL_ROUTERS, 255) == RouterSolicit()
    with pytest.raises(Error):
        parse_ndisc(_rs(one * (MAX_OPTIONS + 1)), GUEST_LL, ALL_ROUTERS, 255)
    with pytest.raises(Error):
        parse_ndisc(_rs(one * 1000), GUEST_LL, ALL_ROUTERS, 255)


def _fix(data: bytes, src, dst, patch: dict[int, int] | None = None) -> bytes:
    buf = bytearray(data)
    for i, v in (patch or {}).items():
        buf[i] = v
    Icmpv6Packet(buf).fill_checksum(src, dst)
    return bytes(buf)


@pytest.mark.parametrize(
    "data, src, dst, hop_limit",
    [
        (RS, GUEST_LL, ALL_ROUTERS, 64),  # forwarded: hop limit not 255
        (RS, GUEST_LL, ALL_ROUTERS, 254),
        (_fix(RS, GUEST_LL, ALL_ROUTERS, {1: 1}), GUEST_LL, ALL_ROUTERS, 255),  # code 1
        (RS, GUEST_LL, ALL_NODES, 255),  # wrong pseudo-header: checksum
        (_fix(RS, UNSPEC, ALL_ROUTERS), UNSPEC, ALL_ROUTERS, 255),  # RS from :: with SLLAO
        (_fix(RA, GUEST_GLOBAL, ALL_NODES), GUEST_GLOBAL, ALL_NODES, 255),  # RA not link-local
        (_fix(NS, UNSPEC, SOLICITED), UNSPEC, SOLICITED, 255),  # DAD NS with SLLAO
        (_fix(NS_DAD, UNSPEC, ALL_NODES), UNSPEC, ALL_NODES, 255),  # DAD NS not to sol.-node
        (icmp(ICMPv6ND_NS(tgt="ff02::1"), GUEST_LL, ALL_NODES), GUEST_LL, ALL_NODES, 255),
        (icmp(ICMPv6ND_NA(tgt="ff02::1", S=0), GUEST_LL, ALL_NODES), GUEST_LL, ALL_NODES, 255),
        (icmp(ICMPv6ND_NA(tgt=str(GUEST_LL), S=1), GUEST_LL, ALL_NODES), GUEST_LL, ALL_NODES,
         255),  # solicited NA to multicast
        (_fix(REDIRECT, GUEST_GLOBAL, GUEST_LL), GUEST_GLOBAL, GUEST_LL, 255),
        (icmp(ICMPv6ND_Redirect(tgt="fe80::3", dst="ff05::1"), ROUTER_LL, GUEST_LL), ROUTER_LL,
         GUEST_LL, 255),  # multicast destination
        (icmp(ICMPv6ND_Redirect(tgt="2001:db8::3", dst="2001:db8::9"), ROUTER_LL, GUEST_LL),
         ROUTER_LL, GUEST_LL, 255),  # target neither link-local nor the destination
        (_fix(RS, GUEST_LL, ALL_ROUTERS, {0: 128}), GUEST_LL, ALL_ROUTERS, 255),  # echo request
    ],
)
def test_invalid_messages_raise_error(data, src, dst, hop_limit):
    with pytest.raises(Error):
        parse_ndisc(data, src, dst, hop_limit)


def test_unsolicited_na_to_all_nodes_is_valid():
    data = icmp(ICMPv6ND_NA(R=0, S=0, O=1, tgt=str(GUEST_LL))
                / ICMPv6NDOptDstLLAddr(lladdr=str(GUEST_MAC)), GUEST_LL, ALL_NODES)
    assert parse_ndisc(data, GUEST_LL, ALL_NODES, 255) == NeighborAdvert(
        GUEST_LL, override=True, lladdr=GUEST_MAC)


def test_bad_checksum_passes_when_not_verified():
    bad = bytearray(NS)
    bad[2] ^= 0xFF
    with pytest.raises(Error):
        parse_ndisc(bad, GUEST_LL, IPv6Address("ff02::1:ff00:2"), 255)
    assert parse_ndisc(bad, GUEST_LL, IPv6Address("ff02::1:ff00:2"), 255,
                       verify_checksum=False).target == ROUTER_LL


@pytest.mark.parametrize("data, src, dst, expected", CASES)
def test_truncation_at_every_length(data, src, dst, expected):
    for n in range(len(data)):
        cut = bytes(data[:n])
        with pytest.raises(Error):  # the checksum catches every cut...
            parse_ndisc(cut, src, dst, 255)
        if n >= 4:  # ...and with it refilled, the lengths do (or a shorter message parses)
            try:
                r = parse_ndisc(_fix(cut, src, dst), src, dst, 255)
            except Error:
                continue
            assert type(r) is type(expected)


def _parse_or_error(data: bytes, src, dst) -> None:
    try:
        r = parse_ndisc(data, src, dst, 255, verify_checksum=False)
    except Error:
        return
    assert r.buffer_len() <= len(data) or isinstance(r, Redirect | RouterAdvert)


_ADDRS = st.sampled_from([GUEST_LL, ROUTER_LL, UNSPEC, SOLICITED, ALL_NODES, GUEST_GLOBAL])


@given(st.binary(max_size=120), _ADDRS, _ADDRS)
def test_any_bytes_parse_or_raise_error(data, src, dst):
    _parse_or_error(data, src, dst)


@given(st.sampled_from([135, 136, 133, 134, 137]), st.binary(max_size=200), _ADDRS, _ADDRS)
def test_any_body_parse_or_raise_error(msg_type, body, src, dst):
    _parse_or_error(struct.pack("!BBH", msg_type, 0, 0) + body, src, dst)


@given(
    st.sampled_from(CASES),
    st.lists(st.tuples(st.integers(0, 140), st.integers(0, 255)), max_size=6),
    st.integers(0, 150),
)
def test_mutated_packets_parse_or_raise_error(case, edits, cut):
    data, src, dst, _ = case
    buf = bytearray(data)
    for i, v in edits:
        if i < len(buf):
            buf[i] = v
    buf = buf[: max(0, len(buf) - cut)]
    if len(buf) >= 4:
        Icmpv6Packet(buf).fill_checksum(src, dst)
    _parse_or_error(bytes(buf), src, dst)


@given(
    st.booleans(), st.booleans(), st.booleans(),
    st.one_of(st.none(), st.binary(min_size=6, max_size=6)),
)
def test_na_round_trip_against_scapy(router, solicited, override, mac):
    lladdr = EthernetAddress(mac) if mac is not None else None
    r = NeighborAdvert(GUEST_LL, router, solicited, override, lladdr)
    out = _emit_twice(r, GUEST_LL, ROUTER_LL)
    layer = ICMPv6ND_NA(R=router, S=solicited, O=override, tgt=str(GUEST_LL))
    if lladdr is not None:
        layer = layer / ICMPv6NDOptDstLLAddr(lladdr=str(lladdr))
    assert out == icmp(layer, GUEST_LL, ROUTER_LL)
    assert parse_ndisc(out, GUEST_LL, ROUTER_LL, 255) == r
