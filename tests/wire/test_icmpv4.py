"""ICMPv4: byte vectors checked against scapy both ways, emit coverage, the quote helper,
truncation, fuzzing."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import raw

from netstack.wire import Error
from netstack.wire.icmpv4 import (
    HEADER_LEN,
    QUOTE_MAX_LEN,
    DstUnreachable,
    Icmpv4Message,
    Icmpv4Packet,
    Icmpv4Repr,
    TimeExceeded,
    quote_offending,
)
from netstack.wire.ipv4 import Ipv4Packet

# ICMP(type=8, id=0x4d2, seq=7) / b"ping data 123456"
ECHO_REQUEST = b"\x08\x00\x97\xc0\x04\xd2\x00\x07ping data 123456"
# the offending datagram: IP(src=10.0.2.15, dst=8.8.8.8, id=3, flags=DF)
#   / UDP(sport=5000, dport=53) / b"query"
OFFENDING = (
    b"\x45\x00\x00\x21\x00\x03\x40\x00\x40\x11\x1e\xab\x0a\x00\x02\x0f\x08\x08\x08\x08"
    b"\x13\x88\x00\x35\x00\x0d\x80\x10query"
)
# ICMP(type=3, code=4, nexthopmtu=1400) / OFFENDING[:28]
FRAG_NEEDED = b"\x03\x04\x63\xa9\x00\x00\x05\x78" + OFFENDING[:28]
# ICMP(type=11, code=0) / OFFENDING[:28]
TTL_EXPIRED = raw(ICMP(type=11, code=0) / OFFENDING[:28])
VECTORS = [ECHO_REQUEST, FRAG_NEEDED, TTL_EXPIRED]


def test_vectors_are_what_scapy_builds():
    assert raw(ICMP(type=8, id=0x4D2, seq=7) / b"ping data 123456") == ECHO_REQUEST
    assert raw(
        IP(src="10.0.2.15", dst="8.8.8.8", id=3, flags="DF") / UDP(sport=5000, dport=53) / b"query"
    ) == OFFENDING
    assert raw(ICMP(type=3, code=4, nexthopmtu=1400) / OFFENDING[:28]) == FRAG_NEEDED
    assert TTL_EXPIRED[:4] == b"\x0b\x00" + TTL_EXPIRED[2:4] and TTL_EXPIRED[4:8] == b"\0" * 4


def test_echo_request_fields_match_scapy():
    sp = ICMP(ECHO_REQUEST)
    pkt = Icmpv4Packet.new_checked(ECHO_REQUEST)
    assert (pkt.msg_type, pkt.msg_code, pkt.checksum, pkt.echo_ident, pkt.echo_seq_no) == (
        sp.type, sp.code, sp.chksum, sp.id, sp.seq)
    assert bytes(pkt.data) == bytes(sp.payload)
    assert pkt.verify_checksum()
    r = Icmpv4Repr.parse(pkt)
    assert r == Icmpv4Repr.echo_request(0x4D2, 7, b"ping data 123456")
    assert r.msg_type is Icmpv4Message.ECHO_REQUEST


def test_dst_unreachable_fields_match_scapy():
    sp = ICMP(FRAG_NEEDED)
    pkt = Icmpv4Packet.new_checked(FRAG_NEEDED)
    assert (pkt.msg_type, pkt.msg_code, pkt.checksum, pkt.next_hop_mtu) == (
        sp.type, sp.code, sp.chksum, sp.nexthopmtu)
    r = Icmpv4Repr.parse(pkt)
    assert r.msg_type is Icmpv4Message.DST_UNREACHABLE
    assert r.code is DstUnreachable.FRAG_REQUIRED
    assert r.mtu == 1400
    assert bytes(r.data) == OFFENDING[:28]
    quoted = r.quoted_packet
    assert quoted.src_addr == IPv4Address("10.0.2.15") and quoted.dst_addr == IPv4Address("8.8.8.8")
    assert quoted.protocol == 17 and bytes(quoted.buffer[20:22]) == b"\x13\x88"


def test_time_exceeded_fields_match_scapy():
    r = Icmpv4Repr.parse(Icmpv4Packet.new_checked(TTL_EXPIRED))
    assert r == Icmpv4Repr.time_exceeded(TimeExceeded.TTL_EXPIRED, OFFENDING[:28])


def _emit_twice(r: Icmpv4Repr, **kw) -> bytes:
    outs = []
    for fill in (0xA5, 0x5A):
        buf = bytearray([fill]) * (r.buffer_len() + 3)
        r.emit(Icmpv4Packet(buf), **kw)
        assert buf[-3:] == bytes([fill]) * 3
        outs.append(bytes(buf[:-3]))
    assert outs[0] == outs[1], "emit left header bytes unwritten"
    return outs[0]


def test_emit_reproduces_vectors():
    assert _emit_twice(Icmpv4Repr.echo_request(0x4D2, 7, b"ping data 123456")) == ECHO_REQUEST
    assert _emit_twice(Icmpv4Repr.dst_unreachable(4, OFFENDING[:28], mtu=1400)) == FRAG_NEEDED
    assert _emit_twice(Icmpv4Repr.time_exceeded(0, OFFENDING[:28])) == TTL_EXPIRED


def test_emit_echo_reply_scapy_agrees():
    r = Icmpv4Repr.echo_reply(0xFFFF, 0x1234, b"x" * 33)
    out = _emit_twice(r)
    sp = ICMP(out)
    assert (sp.type, sp.code, sp.id, sp.seq, bytes(sp.payload)) == (0, 0, 0xFFFF, 0x1234, b"x" * 33)
    ref = ICMP(out)
    del ref.chksum
    assert ICMP(raw(ref)).chksum == sp.chksum
    assert _emit_twice(r, fill_checksum=False)[2:4] == b"\0\0"


def test_emit_unreachable_mtu_only_for_code_4():
    out = _emit_twice(Icmpv4Repr.dst_unreachable(DstUnreachable.PORT_UNREACHABLE, OFFENDING[:28],
                                                 mtu=1400))
    assert out[4:8] == b"\0\0\0\0"
    sp = IP(raw(IP(src="10.0.2.2", dst="10.0.2.15") / ICMP(out)))
    assert sp[ICMP].type == 3 and sp[ICMP].code == 3
    assert sp[ICMP].payload.src == "10.0.2.15"  # scapy dissects the quote as IPerror


def test_emit_rejects_unsupported_type():
    with pytest.raises(ValueError):
        Icmpv4Repr(Icmpv4Message.REDIRECT).emit(Icmpv4Packet(bytearray(8)))


def test_quote_offending():
    pkt = Ipv4Packet.new_checked(OFFENDING + b"\0" * 10)  # padding is not quoted
    assert bytes(quote_offending(pkt)) == OFFENDING
    assert bytes(quote_offending(pkt, max_len=0)) == OFFENDING[:28]  # RFC 792 minimum
    big = raw(IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2) / (b"z" * 1400))
    quote = quote_offending(Ipv4Packet.new_checked(big))
    assert len(quote) == QUOTE_MAX_LEN == 548
    assert 20 + HEADER_LEN + len(quote) == 576
    r = Icmpv4Repr.dst_unreachable(DstUnreachable.PORT_UNREACHABLE, quote)
    assert Icmpv4Repr.parse(Icmpv4Packet(_emit_twice(r))).data == big[:548]


@pytest.mark.parametrize(
    "data",
    [
        raw(ICMP(type=5, code=0) / OFFENDING[:28]),  # redirect: unsupported
        raw(ICMP(type=12) / OFFENDING[:28]),  # parameter problem: unsupported
        raw(ICMP(type=13)),  # timestamp
        raw(ICMP(type=8, code=1)),  # echo with a code
        raw(ICMP(type=3, code=16) / OFFENDING[:28]),
        raw(ICMP(type=11, code=2) / OFFENDING[:28]),
        raw(ICMP(type=3, code=3) / OFFENDING[:19]),  # quote shorter than an IP header
        raw(ICMP(type=3, code=3) / (b"\x65" + OFFENDING[1:28])),  # wrong version
        raw(ICMP(type=3, code=3) / (b"\x44" + OFFENDING[1:28])),  # IHL 4
        raw(ICMP(type=11, code=0) / (b"\x46" + OFFENDING[1:23])),  # IHL 6, 23 bytes
    ],
)
def test_unsupported_or_malformed_raise_error(data):
    with pytest.raises(Error):
        Icmpv4Repr.parse(Icmpv4Packet.new_checked(data))


def test_bad_checksum_raises_unless_told():
    bad = bytearray(ECHO_REQUEST)
    bad[-1] ^= 0x10
    with pytest.raises(Error):
        Icmpv4Repr.parse(Icmpv4Packet.new_checked(bad))
    assert Icmpv4Repr.parse(Icmpv4Packet(bad), verify_checksum=False).seq_no == 7
    Icmpv4Packet(bad).fill_checksum()
    assert Icmpv4Packet(bad).verify_checksum()


def test_setters():
    buf = bytearray(ECHO_REQUEST)
    pkt = Icmpv4Packet(buf)
    pkt.msg_type = 0
    pkt.msg_code = 0
    pkt.echo_ident = 9
    pkt.echo_seq_no = 10
    pkt.fill_checksum()
    sp = ICMP(bytes(buf))
    assert (sp.type, sp.id, sp.seq) == (0, 9, 10)
    pkt.next_hop_mtu = 576
    pkt.checksum = 1
    assert pkt.echo_seq_no == 576 and pkt.checksum == 1


@pytest.mark.parametrize("vector", VECTORS)
def test_truncation_at_every_length(vector):
    for n in range(HEADER_LEN):
        with pytest.raises(Error):
            Icmpv4Packet.new_checked(vector[:n])
    for n in range(len(vector)):  # the checksum or the quote check catches the rest
        with pytest.raises(Error):
            Icmpv4Repr.parse(Icmpv4Packet(vector[:n]))


def _parse_or_error(data: bytes) -> None:
    try:
        pkt = Icmpv4Packet.new_checked(bytearray(data))
        pkt.verify_checksum()
        r = Icmpv4Repr.parse(pkt, verify_checksum=False)
        if r.msg_type not in (Icmpv4Message.ECHO_REQUEST, Icmpv4Message.ECHO_REPLY):
            q = r.quoted_packet
            _ = (q.src_addr, q.dst_addr, q.protocol, q.header_len)
        Icmpv4Repr.parse(pkt)
    except Error:
        pass


@given(st.binary(max_size=80))
def test_any_bytes_parse_or_raise_error(data):
    _parse_or_error(data)


@given(
    st.sampled_from(VECTORS),
    st.lists(st.tuples(st.integers(0, 35), st.integers(0, 255)), max_size=5),
    st.integers(0, 36),
    st.booleans(),
)
def test_mutated_packets_parse_or_raise_error(vector, edits, cut, refill):
    buf = bytearray(vector)
    for i, v in edits:
        if i < len(buf):
            buf[i] = v
    buf = buf[: max(0, len(buf) - cut)]
    if refill and len(buf) >= HEADER_LEN:
        Icmpv4Packet(buf).fill_checksum()
    _parse_or_error(bytes(buf))


@given(st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_echo_round_trip_against_scapy(request, ident, seq, data):
    make = Icmpv4Repr.echo_request if request else Icmpv4Repr.echo_reply
    r = make(ident, seq, data)
    out = _emit_twice(r)
    assert out == raw(ICMP(type=8 if request else 0, id=ident, seq=seq) / data)
    assert Icmpv4Repr.parse(Icmpv4Packet.new_checked(out)) == r
