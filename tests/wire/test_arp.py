"""ARP: byte vectors checked against scapy both ways, emit coverage, truncation, fuzzing."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.l2 import ARP
from scapy.packet import raw

from netstack.wire import Error
from netstack.wire.arp import HEADER_LEN, ArpOperation, ArpPacket, ArpRepr
from netstack.wire.ethernet import EthernetAddress

# ARP(op=1, hwsrc=52:54:00:12:34:56, psrc=10.0.2.15, hwdst=00:..:00, pdst=10.0.2.2)
ARP_REQUEST = (
    b"\x00\x01\x08\x00\x06\x04\x00\x01\x52\x54\x00\x12\x34\x56\x0a\x00"
    b"\x02\x0f\x00\x00\x00\x00\x00\x00\x0a\x00\x02\x02"
)
# ARP(op=2, hwsrc=52:55:0a:00:02:02, psrc=10.0.2.2, hwdst=52:54:00:12:34:56, pdst=10.0.2.15)
ARP_REPLY = (
    b"\x00\x01\x08\x00\x06\x04\x00\x02\x52\x55\x0a\x00\x02\x02\x0a\x00"
    b"\x02\x02\x52\x54\x00\x12\x34\x56\x0a\x00\x02\x0f"
)
VECTORS = [ARP_REQUEST, ARP_REPLY]

GUEST_MAC = EthernetAddress.parse("52:54:00:12:34:56")
GW_MAC = EthernetAddress.parse("52:55:0a:00:02:02")


def test_vectors_are_what_scapy_builds():
    assert raw(ARP(op=1, hwsrc=str(GUEST_MAC), psrc="10.0.2.15", hwdst="00:00:00:00:00:00",
                   pdst="10.0.2.2")) == ARP_REQUEST
    assert raw(ARP(op=2, hwsrc=str(GW_MAC), psrc="10.0.2.2", hwdst=str(GUEST_MAC),
                   pdst="10.0.2.15")) == ARP_REPLY


@pytest.mark.parametrize("vector", VECTORS)
def test_packet_and_repr_match_scapy(vector):
    sp = ARP(vector)
    pkt = ArpPacket.new_checked(vector)
    assert pkt.hardware_type == sp.hwtype
    assert pkt.protocol_type == sp.ptype
    assert pkt.hardware_len == sp.hwlen
    assert pkt.protocol_len == sp.plen
    assert pkt.operation == sp.op
    assert pkt.header_len == HEADER_LEN
    assert EthernetAddress(pkt.source_hardware_addr) == EthernetAddress.parse(sp.hwsrc)
    assert IPv4Address(pkt.source_protocol_addr) == IPv4Address(sp.psrc)
    assert EthernetAddress(pkt.target_hardware_addr) == EthernetAddress.parse(sp.hwdst)
    assert IPv4Address(pkt.target_protocol_addr) == IPv4Address(sp.pdst)
    r = ArpRepr.parse(pkt)
    assert r.operation == sp.op and isinstance(r.operation, ArpOperation)
    assert r.source_hardware_addr == EthernetAddress.parse(sp.hwsrc)
    assert r.source_protocol_addr == IPv4Address(sp.psrc)
    assert r.target_hardware_addr == EthernetAddress.parse(sp.hwdst)
    assert r.target_protocol_addr == IPv4Address(sp.pdst)
    assert isinstance(r.source_hardware_addr, EthernetAddress)


def _emit_twice(r: ArpRepr) -> bytes:
    outs = []
    for fill in (0xA5, 0x5A):
        buf = bytearray([fill]) * (r.buffer_len() + 4)
        r.emit(ArpPacket(buf))
        assert buf[HEADER_LEN:] == bytes([fill]) * 4
        outs.append(bytes(buf[:HEADER_LEN]))
    assert outs[0] == outs[1], "emit left header bytes unwritten"
    return outs[0]


def test_emit_reproduces_vectors_and_scapy_agrees():
    reply = ArpRepr(ArpOperation.REPLY, GW_MAC, IPv4Address("10.0.2.2"), GUEST_MAC,
                    IPv4Address("10.0.2.15"))
    out = _emit_twice(reply)
    assert out == ARP_REPLY
    sp = ARP(out)
    assert (sp.hwtype, sp.ptype, sp.hwlen, sp.plen, sp.op) == (1, 0x0800, 6, 4, 2)
    assert (sp.hwsrc, sp.psrc, sp.hwdst, sp.pdst) == (
        str(GW_MAC), "10.0.2.2", str(GUEST_MAC), "10.0.2.15")
    request = ArpRepr.parse(ArpPacket.new_checked(ARP_REQUEST))
    assert _emit_twice(request) == ARP_REQUEST


def test_padding_is_ignored():
    r = ArpRepr.parse(ArpPacket.new_checked(ARP_REQUEST + b"\x00" * 18))
    assert r.operation is ArpOperation.REQUEST


def test_setters():
    buf = bytearray(ARP_REQUEST)
    pkt = ArpPacket(buf)
    pkt.operation = 2
    pkt.source_hardware_addr = GW_MAC
    pkt.source_protocol_addr = IPv4Address("10.0.2.2").packed
    pkt.target_hardware_addr = GUEST_MAC
    pkt.target_protocol_addr = IPv4Address("10.0.2.15").packed
    assert bytes(buf) == ARP_REPLY
    pkt.hardware_type = 6
    pkt.protocol_type = 0x86DD
    pkt.hardware_len = 8
    pkt.protocol_len = 16
    assert bytes(buf[:6]) == b"\x00\x06\x86\xdd\x08\x10"
    with pytest.raises(Error):
        ArpPacket.new_checked(buf)  # now claims 8 + 2 × 24 bytes


@pytest.mark.parametrize(
    "offset,value",
    [(1, 6), (0, 1), (2, 0x86), (4, 8), (5, 16), (7, 3), (7, 0), (6, 1)],
)
def test_unsupported_fields_raise_error(offset, value):
    buf = bytearray(ARP_REQUEST + b"\x00" * 40)
    buf[offset] = value
    with pytest.raises(Error):
        ArpRepr.parse(ArpPacket.new_checked(buf))


@pytest.mark.parametrize("vector", VECTORS)
def test_truncation_at_every_length(vector):
    for n in range(len(vector)):
        with pytest.raises(Error):
            ArpPacket.new_checked(vector[:n])
        with pytest.raises(Error):
            ArpRepr.parse(ArpPacket(vector[:n]))


def _parse_or_error(data: bytes) -> None:
    try:
        pkt = ArpPacket.new_checked(bytearray(data))
        _ = (pkt.source_hardware_addr, pkt.source_protocol_addr, pkt.target_hardware_addr,
             pkt.target_protocol_addr, pkt.operation)
        ArpRepr.parse(pkt)
    except Error:
        pass


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_error(data):
    _parse_or_error(data)


@given(
    st.sampled_from(VECTORS),
    st.lists(st.tuples(st.integers(0, 27), st.integers(0, 255)), max_size=4),
    st.integers(0, 28),
)
def test_mutated_packets_parse_or_raise_error(vector, edits, cut):
    buf = bytearray(vector)
    for i, v in edits:
        buf[i] = v
    _parse_or_error(bytes(buf[: len(buf) - cut]))


@given(st.sampled_from(list(ArpOperation)), st.binary(min_size=6, max_size=6),
       st.integers(0, 2**32 - 1), st.binary(min_size=6, max_size=6), st.integers(0, 2**32 - 1))
def test_emit_parse_round_trip(op, sha, spa, tha, tpa):
    r = ArpRepr(op, EthernetAddress(sha), IPv4Address(spa), EthernetAddress(tha), IPv4Address(tpa))
    out = _emit_twice(r)
    assert ArpRepr.parse(ArpPacket.new_checked(out)) == r
    assert ARP(out).op == op


def test_packet_reads_any_address_sizes():
    # hardware 8 bytes, protocol 16 bytes (as for an IPv6-over-something ARP): 8 + 2 × 24
    sha, spa, tha, tpa = b"S" * 8, b"s" * 16, b"T" * 8, b"t" * 16
    data = b"\x00\x06\x86\xdd\x08\x10\x00\x01" + sha + spa + tha + tpa
    pkt = ArpPacket.new_checked(data)
    assert pkt.header_len == 56
    assert (pkt.source_hardware_addr, pkt.source_protocol_addr) == (sha, spa)
    assert (pkt.target_hardware_addr, pkt.target_protocol_addr) == (tha, tpa)
    with pytest.raises(Error):
        ArpRepr.parse(pkt)  # readable, but not Ethernet/IPv4
    with pytest.raises(Error):
        ArpPacket.new_checked(data[:-1])
