"""ICMPv6 echo and errors: byte vectors checked against scapy both ways, emit coverage, the
quote helper, truncation, fuzzing."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    UDP,
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
)
from scapy.packet import raw

from netstack.wire import Error
from netstack.wire.icmpv6 import (
    HEADER_LEN,
    MIN_MTU,
    QUOTE_MAX_LEN,
    DstUnreachable,
    Icmpv6Message,
    Icmpv6Packet,
    Icmpv6Repr,
    ParamProblem,
    TimeExceeded,
    checksum_ok,
    quote_offending,
)

SRC = IPv6Address("fe80::5054:ff:fe12:3456")
DST = IPv6Address("2001:db8::1")


def icmp(layer, src=SRC, dst=DST) -> bytes:
    """The ICMPv6 message scapy builds inside an IPv6 header (so the checksum is right)."""
    return raw(IPv6(src=str(src), dst=str(dst)) / layer)[40:]


# the offending datagram: IPv6(src=2001:db8::1, dst=2001:db8::2) / UDP(5000 -> 53) / "query"
OFFENDING = raw(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5000, dport=53) / b"query")
ECHO_REQUEST = icmp(ICMPv6EchoRequest(id=0x4D2, seq=7, data=b"ping data 123456"))
PORT_UNREACHABLE = icmp(ICMPv6DestUnreach(code=4) / OFFENDING, src=DST, dst=SRC)
TOO_BIG = icmp(ICMPv6PacketTooBig(mtu=1400) / OFFENDING, src=DST, dst=SRC)
HOP_LIMIT = icmp(ICMPv6TimeExceeded(code=0) / OFFENDING, src=DST, dst=SRC)
PARAM = icmp(ICMPv6ParamProblem(code=1, ptr=6) / OFFENDING, src=DST, dst=SRC)
ERRORS = [PORT_UNREACHABLE, TOO_BIG, HOP_LIMIT, PARAM]
VECTORS = [ECHO_REQUEST, *ERRORS]


def test_vectors_start_as_expected():
    assert ECHO_REQUEST[:2] == b"\x80\x00" and ECHO_REQUEST[4:8] == b"\x04\xd2\x00\x07"
    assert TOO_BIG[:8] == b"\x02\x00" + TOO_BIG[2:4] + (1400).to_bytes(4, "big")
    assert PARAM[:2] == b"\x04\x01" and PARAM[4:8] == b"\0\0\0\x06"
    assert len(OFFENDING) == 40 + 8 + 5


def test_echo_request_fields_match_scapy():
    sp = ICMPv6EchoRequest(ECHO_REQUEST)
    pkt = Icmpv6Packet.new_checked(ECHO_REQUEST)
    assert (pkt.msg_type, pkt.code, pkt.checksum, pkt.ident, pkt.seq_no) == (
        sp.type, sp.code, sp.cksum, sp.id, sp.seq)
    assert bytes(pkt.payload) == b"ping data 123456"
    assert pkt.verify_checksum(SRC, DST)
    assert not pkt.verify_checksum(SRC, IPv6Address("2001:db8::2"))
    assert checksum_ok(ECHO_REQUEST, SRC, DST)
    r = Icmpv6Repr.parse(pkt, SRC, DST)
    assert r == Icmpv6Repr.echo_request(0x4D2, 7, b"ping data 123456")
    assert r.msg_type is Icmpv6Message.ECHO_REQUEST and not r.is_error


def test_errors_parse():
    def parse(v):
        return Icmpv6Repr.parse(Icmpv6Packet.new_checked(v), DST, SRC)

    r = parse(PORT_UNREACHABLE)
    assert r == Icmpv6Repr.dst_unreachable(DstUnreachable.PORT_UNREACHABLE, OFFENDING)
    assert r.code is DstUnreachable.PORT_UNREACHABLE and r.is_error
    r = parse(TOO_BIG)
    assert r == Icmpv6Repr.packet_too_big(1400, OFFENDING) and r.mtu == 1400
    assert Icmpv6Packet(TOO_BIG).mtu == 1400
    r = parse(HOP_LIMIT)
    assert r == Icmpv6Repr.time_exceeded(TimeExceeded.HOP_LIMIT, OFFENDING)
    r = parse(PARAM)
    assert r == Icmpv6Repr.param_problem(ParamProblem.UNRECOGNIZED_NEXT_HEADER, 6, OFFENDING)
    assert r.pointer == 6 == Icmpv6Packet(PARAM).pointer
    assert isinstance(r.data, bytes)


def test_packet_too_big_code_ignored_on_receive():
    r = Icmpv6Repr.parse(Icmpv6Packet(icmp(ICMPv6PacketTooBig(code=9, mtu=1280) / OFFENDING,
                                           src=DST, dst=SRC)), DST, SRC)
    assert r.code == 0 and r.mtu == 1280


def _emit_twice(r: Icmpv6Repr, src=SRC, dst=DST, **kw) -> bytes:
    outs = []
    for fill in (0xA5, 0x5A):
        buf = bytearray([fill]) * (r.buffer_len() + 3)
        r.emit(Icmpv6Packet(buf), src, dst, **kw)
        assert buf[-3:] == bytes([fill]) * 3
        outs.append(bytes(buf[:-3]))
    assert outs[0] == outs[1], "emit left header bytes unwritten"
    return outs[0]


def test_emit_reproduces_vectors():
    assert _emit_twice(Icmpv6Repr.echo_request(0x4D2, 7, b"ping data 123456")) == ECHO_REQUEST
    assert _emit_twice(Icmpv6Repr.dst_unreachable(4, OFFENDING), DST, SRC) == PORT_UNREACHABLE
    assert _emit_twice(Icmpv6Repr.packet_too_big(1400, OFFENDING), DST, SRC) == TOO_BIG
    assert _emit_twice(Icmpv6Repr.time_exceeded(0, OFFENDING), DST, SRC) == HOP_LIMIT
    assert _emit_twice(Icmpv6Repr.param_problem(1, 6, OFFENDING), DST, SRC) == PARAM


def test_emit_without_checksum_leaves_zero():
    out = _emit_twice(Icmpv6Repr.echo_reply(1, 2, b"abc"), fill_checksum=False)
    assert out[2:4] == b"\0\0"
    pkt = Icmpv6Packet(bytearray(out))
    pkt.fill_checksum(SRC, DST)
    assert bytes(pkt.buffer) == icmp(ICMPv6EchoReply(id=1, seq=2, data=b"abc"))


def test_emit_rejects_ndisc_types():
    with pytest.raises(ValueError):
        Icmpv6Repr(Icmpv6Message.NEIGHBOR_SOLICIT).emit(Icmpv6Packet(bytearray(8)), SRC, DST)


def test_unknown_code_in_constructor_is_valueerror():
    with pytest.raises(ValueError):
        Icmpv6Repr.time_exceeded(7, OFFENDING)


def test_quote_offending():
    assert quote_offending(OFFENDING + b"\0" * 10) == OFFENDING  # padding is not quoted
    big = raw(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / (b"z" * 1400))
    quote = quote_offending(memoryview(big))
    assert quote == big[:QUOTE_MAX_LEN] and QUOTE_MAX_LEN == 1232
    r = Icmpv6Repr.packet_too_big(1280, quote)
    assert 40 + r.buffer_len() == MIN_MTU
    assert Icmpv6Repr.dst_unreachable(0, big).data == big[:QUOTE_MAX_LEN]
    assert quote_offending(b"\x60abc") == b"\x60abc"  # too short to read: kept as is
    jumbo = bytearray(big)
    jumbo[4:6] = b"\0\0"
    assert quote_offending(jumbo) == jumbo[:QUOTE_MAX_LEN]


def test_scapy_reads_our_errors():
    out = _emit_twice(Icmpv6Repr.dst_unreachable(DstUnreachable.ADDR_UNREACHABLE, OFFENDING),
                      DST, SRC)
    sp = IPv6(raw(IPv6(src=str(DST), dst=str(SRC)) / ICMPv6DestUnreach(out)))
    assert sp[ICMPv6DestUnreach].code == 3
    assert sp[ICMPv6DestUnreach].payload.src == "2001:db8::1"  # dissected as IPerror6


@pytest.mark.parametrize(
    "data",
    [
        icmp(ICMPv6ND_NS(tgt="fe80::1")),  # NDP: not this parser's
        icmp(ICMPv6EchoRequest(code=1)),
        icmp(ICMPv6DestUnreach(code=7) / OFFENDING),
        icmp(ICMPv6TimeExceeded(code=2) / OFFENDING),
        icmp(ICMPv6ParamProblem(code=3) / OFFENDING),
        icmp(ICMPv6DestUnreach(code=4) / OFFENDING[:39]),  # quote shorter than a header
        icmp(ICMPv6DestUnreach(code=4) / (b"\x40" + OFFENDING[1:])),  # not version 6
        icmp(ICMPv6PacketTooBig(mtu=1280)),  # no quote at all
    ],
)
def test_unsupported_or_malformed_raise_error(data):
    with pytest.raises(Error):
        Icmpv6Repr.parse(Icmpv6Packet.new_checked(data), SRC, DST)


def test_bad_checksum_raises_unless_told():
    bad = bytearray(ECHO_REQUEST)
    bad[-1] ^= 0x10
    with pytest.raises(Error):
        Icmpv6Repr.parse(Icmpv6Packet.new_checked(bad), SRC, DST)
    assert Icmpv6Repr.parse(Icmpv6Packet(bad), SRC, DST, verify_checksum=False).seq_no == 7


def test_setters():
    buf = bytearray(ECHO_REQUEST)
    pkt = Icmpv6Packet(buf)
    pkt.msg_type = 129
    pkt.code = 0
    pkt.ident = 9
    pkt.seq_no = 10
    pkt.fill_checksum(SRC, DST)
    assert bytes(buf) == icmp(ICMPv6EchoReply(id=9, seq=10, data=b"ping data 123456"))
    pkt.mtu = 0x01020304
    assert (pkt.ident, pkt.seq_no) == (0x0102, 0x0304)
    pkt.pointer = 5
    pkt.checksum = 1
    assert pkt.mtu == 5 and pkt.checksum == 1


@pytest.mark.parametrize("vector", VECTORS)
def test_truncation_at_every_length(vector):
    for n in range(HEADER_LEN):
        with pytest.raises(Error):
            Icmpv6Packet.new_checked(vector[:n])
    for n in range(len(vector)):  # the checksum catches every cut
        with pytest.raises(Error):
            Icmpv6Repr.parse(Icmpv6Packet(vector[:n]), SRC, DST)


def _parse_or_error(data: bytes) -> None:
    try:
        pkt = Icmpv6Packet.new_checked(bytearray(data))
        _ = (pkt.msg_type, pkt.code, pkt.ident, pkt.seq_no, pkt.mtu, pkt.pointer)
        pkt.verify_checksum(SRC, DST)
        r = Icmpv6Repr.parse(pkt, SRC, DST, verify_checksum=False)
        assert r.is_error == (r.msg_type < 128)
        if r.is_error:
            assert len(r.data) >= 40
        Icmpv6Repr.parse(pkt, SRC, DST)
    except Error:
        pass


@given(st.binary(max_size=120))
def test_any_bytes_parse_or_raise_error(data):
    _parse_or_error(data)


@given(
    st.sampled_from(VECTORS),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), max_size=5),
    st.integers(0, 70),
    st.booleans(),
)
def test_mutated_packets_parse_or_raise_error(vector, edits, cut, refill):
    buf = bytearray(vector)
    for i, v in edits:
        if i < len(buf):
            buf[i] = v
    buf = buf[: max(0, len(buf) - cut)]
    if refill and len(buf) >= HEADER_LEN:
        Icmpv6Packet(buf).fill_checksum(SRC, DST)
    _parse_or_error(bytes(buf))


@given(st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_echo_round_trip_against_scapy(request, ident, seq, data):
    make = Icmpv6Repr.echo_request if request else Icmpv6Repr.echo_reply
    layer = ICMPv6EchoRequest if request else ICMPv6EchoReply
    r = make(ident, seq, data)
    out = _emit_twice(r)
    assert out == icmp(layer(id=ident, seq=seq, data=data))
    assert Icmpv6Repr.parse(Icmpv6Packet.new_checked(out), SRC, DST) == r
