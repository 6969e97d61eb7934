"""UDP: byte vectors checked against scapy both ways (IPv4 and IPv6 checksums), emit
coverage, the length field, truncation, fuzzing."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import raw

from netstack.wire import Error
from netstack.wire.udp import HEADER_LEN, UdpPacket, UdpRepr

SRC4, DST4 = IPv4Address("192.168.1.10"), IPv4Address("192.168.1.1")
SRC6, DST6 = IPv6Address("fe80::1"), IPv6Address("2001:db8::53")

# UDP(sport=40000, dport=53) / b"hello, world" inside IP(src=SRC4, dst=DST4)
UDP_V4 = b"\x9c\x40\x00\x35\x00\x14\x9f\xa8hello, world"
# UDP(sport=68, dport=67) / b"dhcp-ish payload", checksum 0 ("not computed")
UDP_NO_CSUM = (
    b"\x00\x44\x00\x43\x00\x18\x00\x00\x64\x68\x63\x70\x2d\x69\x73\x68"
    b"\x20\x70\x61\x79\x6c\x6f\x61\x64"
)


def scapy_v4(sport, dport, payload, src=SRC4, dst=DST4) -> bytes:
    return raw(IP(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=dport) / payload)[20:]


def scapy_v6(sport, dport, payload, src=SRC6, dst=DST6) -> bytes:
    return raw(IPv6(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=dport) / payload)[40:]


def test_vectors_are_what_scapy_builds():
    assert scapy_v4(40000, 53, b"hello, world") == UDP_V4
    assert raw(UDP(sport=68, dport=67, chksum=0) / b"dhcp-ish payload") == UDP_NO_CSUM


def test_packet_fields_match_scapy():
    pkt = UdpPacket.new_checked(UDP_V4)
    sp = UDP(UDP_V4)
    assert (pkt.src_port, pkt.dst_port, pkt.length, pkt.checksum) == (
        sp.sport, sp.dport, sp.len, sp.chksum)
    assert bytes(pkt.payload) == b"hello, world"
    assert pkt.verify_checksum(SRC4, DST4)
    assert not pkt.verify_checksum(SRC4, IPv4Address("192.168.1.2"))
    assert UdpRepr.parse(pkt, SRC4, DST4) == UdpRepr(40000, 53)


def test_ipv6_checksum_matches_scapy():
    data = scapy_v6(5353, 5353, b"mdns")
    pkt = UdpPacket.new_checked(data)
    assert pkt.verify_checksum(SRC6, DST6)
    assert UdpRepr.parse(pkt, SRC6, DST6) == UdpRepr(5353, 5353)
    buf = bytearray(data)
    UdpPacket(buf).fill_checksum(SRC6, DST6)
    assert bytes(buf) == data


def test_zero_checksum_means_not_computed_on_ipv4_only():
    pkt = UdpPacket.new_checked(UDP_NO_CSUM)
    assert pkt.verify_checksum(SRC4, DST4)
    assert UdpRepr.parse(pkt, SRC4, DST4) == UdpRepr(68, 67)
    assert not pkt.verify_checksum(SRC6, DST6)
    with pytest.raises(Error):
        UdpRepr.parse(pkt, SRC6, DST6)


def _emit_twice(r: UdpRepr, src, dst, payload: bytes, **kw) -> bytes:
    outs = []
    for fill in (0xA5, 0x5A):
        buf = bytearray([fill]) * (r.buffer_len() + len(payload) + 3)
        r.emit(UdpPacket(buf), src, dst, len(payload), payload, **kw)
        assert buf[-3:] == bytes([fill]) * 3  # nothing written past the datagram
        outs.append(bytes(buf[:-3]))
    assert outs[0] == outs[1], "emit left header bytes unwritten"
    return outs[0]


def test_emit_matches_scapy_v4_and_v6():
    r = UdpRepr(40000, 53)
    assert _emit_twice(r, SRC4, DST4, b"hello, world") == UDP_V4
    assert _emit_twice(r, SRC6, DST6, b"hello, world") == scapy_v6(40000, 53, b"hello, world")
    out = _emit_twice(r, SRC4, DST4, b"hello, world", fill_checksum=False)
    assert out[6:8] == b"\x00\x00" and out[:6] == UDP_V4[:6]


def test_emit_payload_by_callable_or_in_place():
    r = UdpRepr(1234, 4321)
    buf = bytearray(HEADER_LEN + 5)

    def fill(view: memoryview) -> None:
        assert len(view) == 5
        view[:] = b"12345"

    r.emit(UdpPacket(buf), SRC4, DST4, 5, fill)
    assert bytes(buf) == scapy_v4(1234, 4321, b"12345")
    buf2 = bytearray(HEADER_LEN) + b"12345"
    r.emit(UdpPacket(buf2), SRC4, DST4, 5)
    assert buf2 == buf


def _find_zero_sum_payload() -> bytes:
    # choose the last two payload bytes so the computed checksum is 0: then 0xFFFF is sent
    base = bytearray(b"\x00\x00")
    r = UdpRepr(1, 2)
    for hi in range(256):
        for lo in range(256):
            base[0], base[1] = hi, lo
            buf = bytearray(HEADER_LEN + 2)
            r.emit(UdpPacket(buf), SRC4, DST4, 2, bytes(base))
            if buf[6:8] == b"\xff\xff":
                return bytes(base)
    raise AssertionError("no payload gives a zero checksum")


def test_computed_zero_checksum_is_sent_as_ffff():
    payload = _find_zero_sum_payload()
    out = _emit_twice(UdpRepr(1, 2), SRC4, DST4, payload)
    assert out[6:8] == b"\xff\xff"
    assert UDP(out).chksum == 0xFFFF
    assert scapy_v4(1, 2, payload) == out  # scapy applies the same rule
    assert UdpPacket.new_checked(out).verify_checksum(SRC4, DST4)


def test_payload_bounded_by_length_field():
    data = bytearray(UDP_V4 + b"trailing")
    pkt = UdpPacket.new_checked(data)
    assert bytes(pkt.payload) == b"hello, world"
    assert UdpRepr.parse(pkt, SRC4, DST4) == UdpRepr(40000, 53)


@pytest.mark.parametrize("length", [0, 1, 7, len(UDP_V4) + 1, 0xFFFF])
def test_bad_length_field_raises_error(length):
    buf = bytearray(UDP_V4)
    UdpPacket(buf).length = length
    with pytest.raises(Error):
        UdpPacket.new_checked(buf)
    with pytest.raises(Error):
        UdpRepr.parse(UdpPacket(buf), SRC4, DST4, verify_checksum=False)


def test_bad_checksum_and_port_zero():
    buf = bytearray(UDP_V4)
    buf[-1] ^= 1
    with pytest.raises(Error):
        UdpRepr.parse(UdpPacket.new_checked(buf), SRC4, DST4)
    assert UdpRepr.parse(UdpPacket(buf), SRC4, DST4, verify_checksum=False).dst_port == 53
    zero = bytearray(UDP_V4)
    pkt = UdpPacket(zero)
    pkt.dst_port = 0
    pkt.fill_checksum(SRC4, DST4)
    with pytest.raises(Error):
        UdpRepr.parse(pkt, SRC4, DST4)


def test_setters():
    buf = bytearray(UDP_V4)
    pkt = UdpPacket(buf)
    pkt.src_port = 1
    pkt.dst_port = 2
    pkt.checksum = 0xBEEF
    sp = UDP(bytes(buf))
    assert (sp.sport, sp.dport, sp.chksum) == (1, 2, 0xBEEF)


def test_truncation_at_every_length():
    for n in range(len(UDP_V4)):
        with pytest.raises(Error):
            UdpPacket.new_checked(UDP_V4[:n])
        with pytest.raises(Error):
            UdpRepr.parse(UdpPacket(UDP_V4[:n]), SRC4, DST4)


def _parse_or_error(data: bytes) -> None:
    for src, dst in ((SRC4, DST4), (SRC6, DST6)):
        try:
            pkt = UdpPacket.new_checked(bytearray(data))
            bytes(pkt.payload)
            pkt.verify_checksum(src, dst)
            UdpRepr.parse(pkt, src, dst)
        except Error:
            pass


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_error(data):
    _parse_or_error(data)


@given(
    st.lists(st.tuples(st.integers(0, len(UDP_V4) - 1), st.integers(0, 255)), max_size=4),
    st.integers(0, len(UDP_V4)),
)
def test_mutated_packets_parse_or_raise_error(edits, cut):
    buf = bytearray(UDP_V4)
    for i, v in edits:
        buf[i] = v
    _parse_or_error(bytes(buf[: len(buf) - cut]))


@given(st.integers(0, 0xFFFF), st.integers(1, 0xFFFF), st.binary(max_size=80), st.booleans())
def test_emit_parse_round_trip_against_scapy(sport, dport, payload, v6):
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    r = UdpRepr(sport, dport)
    out = _emit_twice(r, src, dst, payload)
    assert out == (scapy_v6 if v6 else scapy_v4)(sport, dport, payload)
    assert UdpRepr.parse(UdpPacket.new_checked(out), src, dst) == r
