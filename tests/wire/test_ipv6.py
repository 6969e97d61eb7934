"""IPv6 fixed header and extension header walk: scapy byte vectors both ways, the RFC 8200
option actions, bounded chains, fuzzing."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    RouterAlert,
)
from scapy.packet import raw

from netstack.wire import Error
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv6 import (
    FRAGMENT,
    HEADER_LEN,
    PP_ERRONEOUS_HEADER,
    PP_UNRECOGNIZED_NEXT_HEADER,
    PP_UNRECOGNIZED_OPTION,
    Ipv6Cidr,
    Ipv6Packet,
    Ipv6Repr,
    interface_id,
    is_link_local,
    link_local,
    multicast_mac,
    solicited_node,
    walk_headers,
)
from netstack.wire.ipv6 import (
    UDP as UDP_PROTO,
)

SRC = IPv6Address("fd00:10:0:2::15")
DST = IPv6Address("fd00:10:0:2::2")


def _datagram(*layers) -> bytes:
    pkt = IPv6(src=str(SRC), dst=str(DST), hlim=64)
    for layer in layers:
        pkt = pkt / layer
    return raw(pkt)


def test_fixed_header_parse_and_emit_match_scapy():
    data = raw(IPv6(src=str(SRC), dst=str(DST), hlim=17, tc=0x2E, fl=0x12345)
               / UDP(sport=1, dport=2) / b"abc")
    pkt = Ipv6Packet.new_checked(data + b"\0\0pad")
    r = Ipv6Repr.parse(pkt)
    assert (r.src_addr, r.dst_addr, r.next_header, r.payload_len, r.hop_limit) == \
        (SRC, DST, 17, 11, 17)
    assert (r.traffic_class, r.flow_label, r.protocol, r.ttl) == (0x2E, 0x12345, 17, 17)
    assert bytes(pkt.payload) == data[HEADER_LEN:]  # padding is not payload
    buf = bytearray(b"\xa5" * HEADER_LEN)
    r.emit(Ipv6Packet(buf))
    assert bytes(buf) == data[:HEADER_LEN]


@pytest.mark.parametrize("data, why", [
    (b"\x60" + b"\0" * 38, "truncated"),
    (b"\x40" + b"\0" * 39 + b"x", "version"),
    (raw(IPv6(plen=0) / b""), "zero"),
    (raw(IPv6(plen=100) / b"short"), "exceeds"),
])
def test_new_checked_refuses(data, why):
    with pytest.raises(Error, match=why):
        Ipv6Packet.new_checked(data)


def test_addresses_derived_from_mac():
    mac = EthernetAddress(bytes.fromhex("525400123456"))
    assert link_local(mac) == IPv6Address("fe80::5054:ff:fe12:3456")
    assert interface_id(mac) == 0x505400FFFE123456
    assert solicited_node(IPv6Address("fd00::1:2:3456")) == IPv6Address("ff02::1:ff02:3456")
    assert bytes(multicast_mac(IPv6Address("ff02::1:ff12:3456"))) == \
        bytes.fromhex("3333ff123456")
    assert is_link_local(IPv6Address("fe80::1")) and is_link_local(IPv6Address("febf::1"))
    assert not is_link_local(IPv6Address("fec0::1"))


def test_cidr():
    c = Ipv6Cidr.parse("fd00:10:0:2::2/64")
    assert c.address == DST and c.prefix_len == 64 and str(c) == "fd00:10:0:2::2/64"
    assert SRC in c and IPv6Address("fd00:10:0:3::2") not in c
    assert str(c.network) == "fd00:10:0:2::/64"
    with pytest.raises(ValueError):
        Ipv6Cidr(DST, 129)


def _walk(data: bytes):
    pkt = Ipv6Packet.new_checked(data)
    return walk_headers(pkt.payload, pkt.next_header)


def test_walk_plain_udp():
    w = _walk(_datagram(UDP(sport=1, dport=2)))
    assert (w.protocol, w.offset, w.fragment, w.problem) == (UDP_PROTO, 0, None, None)


def test_walk_hop_by_hop_router_alert_dest_opts_routing_done():
    data = _datagram(IPv6ExtHdrHopByHop(options=[RouterAlert()]), IPv6ExtHdrDestOpt(),
                     IPv6ExtHdrRouting(segleft=0), UDP(sport=1, dport=2) / b"x")
    w = _walk(data)
    assert w.protocol == UDP_PROTO and w.router_alert and w.problem is None
    assert w.offset == 8 + 8 + 8
    assert data[HEADER_LEN + w.offset:HEADER_LEN + w.offset + 2] == b"\x00\x01"


def test_walk_fragment_header():
    data = _datagram(IPv6ExtHdrFragment(offset=10, m=1, id=0xDEADBEEF), UDP(sport=1, dport=2))
    w = _walk(data)
    f = w.fragment
    assert (f.offset, f.more, f.ident, f.next_header, f.header_offset) == \
        (80, True, 0xDEADBEEF, UDP_PROTO, 0)
    assert w.offset == 8 and not f.is_atomic


def test_walk_atomic_fragment_is_walked_through():
    data = _datagram(IPv6ExtHdrFragment(offset=0, m=0, id=7), IPv6ExtHdrDestOpt(),
                     UDP(sport=1, dport=2))
    w = _walk(data)
    assert w.fragment.is_atomic and w.protocol == UDP_PROTO and w.offset == 16


@pytest.mark.parametrize("otype, code, to_multicast", [
    (0x3E, None, None),  # 00: skip
    (0x7E, -1, False),  # 01: discard silently
    (0xBE, PP_UNRECOGNIZED_OPTION, True),  # 10: discard, ICMP even to multicast
    (0xFE, PP_UNRECOGNIZED_OPTION, False),  # 11: discard, ICMP unless multicast
])
def test_unknown_option_actions(otype, code, to_multicast):
    data = _datagram(IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=otype, optdata=b"ab")]),
                     UDP(sport=1, dport=2))
    w = _walk(data)
    if code is None:
        assert w.problem is None and w.protocol == UDP_PROTO
    else:
        assert w.problem[0] == code and w.problem[2] is to_multicast
        if code != -1:
            assert data[w.problem[1]] == otype  # the pointer names the option type


def test_routing_header_with_segments_left_is_a_problem():
    data = _datagram(IPv6ExtHdrRouting(addresses=["fd00::9"], segleft=1), UDP())
    w = _walk(data)
    assert w.problem[0] == PP_ERRONEOUS_HEADER and w.problem[1] == HEADER_LEN + 2


def test_hop_by_hop_not_first_is_a_problem():
    data = _datagram(IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop(), UDP())
    w = _walk(data)
    assert w.problem[0] == PP_UNRECOGNIZED_NEXT_HEADER
    assert w.problem[1] == HEADER_LEN  # the Next Header field of the destination options


def test_chain_of_100_headers_is_refused():
    layers = [IPv6ExtHdrDestOpt() for _ in range(100)] + [UDP()]
    with pytest.raises(Error, match="too many"):
        _walk(_datagram(*layers))


def test_two_fragment_headers_refused():
    data = _datagram(IPv6ExtHdrFragment(offset=0, m=0), IPv6ExtHdrFragment(offset=0, m=0),
                     UDP())
    with pytest.raises(Error, match="more than one"):
        _walk(data)


def test_truncated_extension_header_raises():
    data = bytearray(_datagram(IPv6ExtHdrDestOpt(len=5), UDP()))
    with pytest.raises(Error):
        _walk(bytes(data))


def test_unknown_upper_layer_is_returned():
    data = raw(IPv6(src=str(SRC), dst=str(DST), nh=253) / b"whatever")
    w = _walk(data)
    assert w.protocol == 253 and w.problem is None
    assert _walk(raw(IPv6(nh=FRAGMENT) / IPv6ExtHdrFragment(nh=59))).protocol == 59


@given(st.binary(max_size=200), st.integers(0, 255))
def test_walk_parses_or_raises(payload, nh):
    try:
        w = walk_headers(memoryview(payload), nh)
    except Error:
        return
    assert 0 <= w.offset <= len(payload)


@given(st.binary(max_size=120))
def test_packet_parses_or_raises(data):
    try:
        Ipv6Repr.parse(Ipv6Packet.new_checked(data))
    except Error:
        pass
