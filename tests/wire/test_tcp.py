"""TCP: byte vectors checked against scapy both ways (IPv4 and IPv6 checksums), option
layout and limits, emit coverage, tolerant option parsing, fuzzing."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import raw

from netstack.wire import Error
from netstack.wire.tcp import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    TcpOptions,
    TcpPacket,
    TcpRepr,
    parse_options,
)

SRC4, DST4 = IPv4Address("192.168.1.10"), IPv4Address("192.168.1.1")
SRC6, DST6 = IPv6Address("fe80::1"), IPv6Address("2001:db8::53")

# TCP(sport=1234, dport=80, seq=1, flags="S", window=64240, options=[("MSS", 1460),
#     ("SAckOK", b""), ("Timestamp", (1, 2)), ("NOP", None), ("WScale", 7)]) — Linux's SYN
# layout, inside IP(src="10.0.0.1", dst="10.0.0.2")
SYN_LINUX = bytes.fromhex(
    "04d200500000000100000000a002faf033e70000020405b40402080a000000010000000201030307"
)
# the same SYN in our emit order: MSS, NOP WScale, SAckOK Timestamp
SYN_OURS = bytes.fromhex(
    "04d200500000000100000000a002faf033e70000020405b4010303070402080a0000000100000002"
)
SYN_SRC, SYN_DST = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
# TCP(sport=40000, dport=443, seq=0xfffffff0, ack=0x12345678, flags="PA", window=501,
#     options=[NOP, NOP, ("Timestamp", (100, 200)), NOP, NOP, ("SAck", (1000, 2000, 3000,
#     4000))]) / b"hello" inside IP(src=SRC4, dst=DST4)
DATA_V4 = bytes.fromhex(
    "9c4001bbfffffff012345678d01801f5289100000101080a00000064000000c801010512000003e8"
    "000007d000000bb800000fa068656c6c6f"
)
# TCP(sport=22, dport=51000, seq=7, ack=9, flags="FA", window=65535) / b"bye" over IPv6
FIN_V6 = bytes.fromhex("0016c73800000007000000095011fffff46a0000627965")


def scapy_v4(tcp, src=SRC4, dst=DST4) -> bytes:
    return raw(IP(src=str(src), dst=str(dst)) / tcp)[20:]


def scapy_v6(tcp, src=SRC6, dst=DST6) -> bytes:
    return raw(IPv6(src=str(src), dst=str(dst)) / tcp)[40:]


def test_vectors_are_what_scapy_builds():
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 2)), ("NOP", None), ("WScale", 7)]
    syn = TCP(sport=1234, dport=80, seq=1, flags="S", window=64240, options=opts)
    assert scapy_v4(syn, SYN_SRC, SYN_DST) == SYN_LINUX
    ours = [("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (1, 2))]
    syn = TCP(sport=1234, dport=80, seq=1, flags="S", window=64240, options=ours)
    assert scapy_v4(syn, SYN_SRC, SYN_DST) == SYN_OURS
    data = TCP(sport=40000, dport=443, seq=0xFFFFFFF0, ack=0x12345678, flags="PA", window=501,
               options=[("NOP", None), ("NOP", None), ("Timestamp", (100, 200)), ("NOP", None),
                        ("NOP", None), ("SAck", (1000, 2000, 3000, 4000))]) / b"hello"
    assert scapy_v4(data) == DATA_V4
    fin = TCP(sport=22, dport=51000, seq=7, ack=9, flags="FA", window=65535) / b"bye"
    assert scapy_v6(fin) == FIN_V6


def test_packet_fields_match_scapy():
    pkt = TcpPacket.new_checked(DATA_V4)
    sp = TCP(DATA_V4)
    assert (pkt.src_port, pkt.dst_port, pkt.seq_number, pkt.ack_number) == (
        sp.sport, sp.dport, sp.seq, sp.ack)
    assert (pkt.header_len, pkt.flags, pkt.window_len, pkt.checksum, pkt.urgent_at) == (
        sp.dataofs * 4, int(sp.flags), sp.window, sp.chksum, sp.urgptr)
    assert bytes(pkt.payload) == b"hello"
    assert len(pkt.options) == 32
    assert pkt.segment_len == 5
    assert pkt.verify_checksum(SRC4, DST4)
    assert not pkt.verify_checksum(SRC4, IPv4Address("192.168.1.2"))


def test_syn_from_linux_layout_parses():
    r = TcpRepr.parse(TcpPacket.new_checked(SYN_LINUX), SYN_SRC, SYN_DST)
    assert r == TcpRepr(1234, 80, 1, None, SYN, 64240, max_seg_size=1460, window_scale=7,
                        sack_permitted=True, timestamp=(1, 2))
    assert r.syn and not (r.ack or r.fin or r.rst or r.psh)
    assert r.segment_len == 1
    assert not r.options_malformed


def test_syn_emits_our_vector_and_scapy_reads_it():
    r = TcpRepr(1234, 80, 1, None, SYN, 64240, max_seg_size=1460, window_scale=7,
                sack_permitted=True, timestamp=(1, 2))
    assert r.header_len() == 40 and r.buffer_len() == 40
    out = _emit_twice(r, SYN_SRC, SYN_DST)
    assert out == SYN_OURS
    sp = TCP(out)
    assert dict(sp.options) == {"MSS": 1460, "NOP": None, "WScale": 7, "SAckOK": b"",
                                "Timestamp": (1, 2)}


def test_data_segment_parses_and_roundtrips():
    pkt = TcpPacket.new_checked(DATA_V4)
    r = TcpRepr.parse(pkt, SRC4, DST4)
    assert r == TcpRepr(40000, 443, 0xFFFFFFF0, 0x12345678, PSH | ACK, 501,
                        sack_ranges=((1000, 2000), (3000, 4000)), timestamp=(100, 200),
                        payload=b"hello")
    assert isinstance(r.payload, memoryview)
    assert r.payload.obj is pkt.buffer.obj  # zero copy
    assert r.ack and r.psh
    assert _emit_twice(r, SRC4, DST4) == DATA_V4


def test_ipv6_checksum_matches_scapy():
    pkt = TcpPacket.new_checked(FIN_V6)
    assert pkt.verify_checksum(SRC6, DST6)
    assert not pkt.verify_checksum(SRC4, DST4)
    r = TcpRepr.parse(pkt, SRC6, DST6)
    assert r == TcpRepr(22, 51000, 7, 9, FIN | ACK, 65535, payload=b"bye")
    assert r.segment_len == 4
    assert _emit_twice(r, SRC6, DST6) == FIN_V6
    buf = bytearray(FIN_V6)
    buf[16:18] = b"\0\0"
    TcpPacket(buf).fill_checksum(SRC6, DST6)
    assert bytes(buf) == FIN_V6


def _emit_twice(r: TcpRepr, src, dst, **kw) -> bytes:
    outs = []
    for fill in (0xA5, 0x5A):
        buf = bytearray([fill]) * (r.buffer_len() + 3)
        r.emit(TcpPacket(buf), src, dst, **kw)
        assert buf[-3:] == bytes([fill]) * 3  # nothing written past the segment
        outs.append(bytes(buf[:-3]))
    assert outs[0] == outs[1], "emit left header bytes unwritten"
    return outs[0]


@pytest.mark.parametrize("kw", [
    {},
    {"max_seg_size": 536},
    {"window_scale": 0},
    {"sack_permitted": True},
    {"timestamp": (0xFFFFFFFF, 0)},
    {"sack_ranges": ((1, 2),)},
    {"sack_permitted": True, "sack_ranges": ((1, 2), (3, 4), (5, 6), (7, 8))},
    {"max_seg_size": 1460, "window_scale": 14, "sack_permitted": True, "timestamp": (5, 6)},
])
def test_emit_matches_scapy_for_each_option(kw):
    r = TcpRepr(5000, 6000, 123, 456, ACK, 1000, payload=b"xyz", **kw)
    out = _emit_twice(r, SRC4, DST4)
    assert len(out) % 4 == 3 and r.header_len() % 4 == 0
    sp = TCP(out)
    assert (sp.sport, sp.dport, sp.seq, sp.ack, sp.window, sp.dataofs * 4) == (
        5000, 6000, 123, 456, 1000, r.header_len())
    assert bytes(sp.payload) == b"xyz"
    # scapy recomputes the checksum of what we wrote: it must agree
    again = TCP(out)
    again.chksum = None
    assert scapy_v4(again) == out
    back = TcpRepr.parse(TcpPacket.new_checked(out), SRC4, DST4)
    assert back == r and not back.options_malformed


def test_sack_blocks_that_do_not_fit_are_dropped():
    ranges = tuple((i, i + 1) for i in range(0, 40, 10))
    r = TcpRepr(1, 2, 3, 4, ACK, 5, timestamp=(1, 1), sack_ranges=ranges)
    assert r.header_len() == 20 + 12 + 4 + 8 * 3  # 3 blocks beside timestamps
    back = TcpRepr.parse(TcpPacket.new_checked(_emit_twice(r, SRC4, DST4)), SRC4, DST4)
    assert back.sack_ranges == ranges[:3]
    full = TcpRepr(1, 2, 3, 4, ACK, 5, max_seg_size=1, window_scale=1, timestamp=(1, 1),
                   sack_ranges=ranges)
    assert full.header_len() == 60
    back = TcpRepr.parse(TcpPacket.new_checked(_emit_twice(full, SRC4, DST4)), SRC4, DST4)
    assert back.sack_ranges == ranges[:2]
    five = tuple((i, i + 1) for i in range(5))
    r = TcpRepr(1, 2, 3, 4, ACK, 5, sack_ranges=five)
    assert r.header_len() == 20 + 4 + 32


def test_ack_flag_follows_ack_number():
    assert TcpRepr(1, 2, 3, 4, PSH, 5).flags == PSH | ACK
    assert TcpRepr(1, 2, 3, None, SYN | ACK, 5).flags == SYN
    r = TcpRepr(1, 2, 3, None, RST, 0)
    out = _emit_twice(r, SRC4, DST4)
    assert out[13] == RST and out[8:12] == b"\0\0\0\0"


def test_emit_without_checksum_leaves_zero():
    r = TcpRepr(1, 2, 3, 4, ACK, 5, payload=b"abc")
    assert _emit_twice(r, SRC4, DST4, fill_checksum=False)[16:18] == b"\0\0"


def test_urgent_pointer_only_with_urg():
    seg = scapy_v4(TCP(sport=1, dport=2, flags="A", urgptr=999) / b"ab")
    assert TcpRepr.parse(TcpPacket.new_checked(seg), SRC4, DST4).urgent_at == 0
    seg = scapy_v4(TCP(sport=1, dport=2, flags="AU", urgptr=999) / b"ab")
    r = TcpRepr.parse(TcpPacket.new_checked(seg), SRC4, DST4)
    assert r.urgent_at == 999 and r.flags & URG  # beyond the data: just a number, no read


def test_packet_setters_write_the_buffer():
    buf = bytearray(24)
    p = TcpPacket(buf)
    p.src_port, p.dst_port, p.seq_number, p.ack_number = 1, 2, 3, 4
    p.header_len, p.flags, p.window_len, p.urgent_at, p.checksum = 24, SYN, 7, 8, 9
    assert (p.src_port, p.dst_port, p.seq_number, p.ack_number, p.header_len, p.flags,
            p.window_len, p.urgent_at, p.checksum) == (1, 2, 3, 4, 24, SYN, 7, 8, 9)
    assert len(p.options) == 4 and len(p.payload) == 0 and p.segment_len == 1


# --- malformed input -----------------------------------------------------------------------

def _with_options(options: bytes, flags: str = "A") -> bytes:
    assert len(options) % 4 == 0
    seg = bytearray(scapy_v4(TCP(sport=1, dport=2, flags=flags) / b"data"))
    seg[12] = ((20 + len(options)) // 4) << 4
    seg[20:20] = options
    TcpPacket(seg).fill_checksum(SRC4, DST4)
    return bytes(seg)


@pytest.mark.parametrize("options, expect", [
    # length 0: parsing stops, nothing after it is read
    (b"\x02\x00\x05\xb4", TcpOptions(malformed=True)),
    # length 1 after a good MSS
    (b"\x02\x04\x05\xb4\x08\x01\x00\x00", TcpOptions(max_seg_size=1460, malformed=True)),
    # length past the end of the header
    (b"\x01\x01\x08\x0a\x00\x00\x00\x01", TcpOptions(malformed=True)),
    # MSS 0 is ignored
    (b"\x02\x04\x00\x00", TcpOptions(malformed=True)),
    # MSS with the wrong length is skipped by its length; the next option still counts
    (b"\x02\x03\x05\x04\x02\x01\x01\x01", TcpOptions(sack_permitted=True, malformed=True)),
    # window scale 200 is used as 14
    (b"\x01\x03\x03\xc8", TcpOptions(window_scale=14, malformed=True)),
    # SACK whose length is not 2 + 8n, and one with no blocks
    (b"\x01\x01\x05\x05\x00\x00\x00\x00", TcpOptions(malformed=True)),
    (b"\x01\x01\x05\x02", TcpOptions(malformed=True)),
    # unknown kinds are skipped by their length, EOL ends the list
    (b"\xfe\x04\xaa\xbb\x02\x04\x02\x18\x00\x02\x04\x05", TcpOptions(max_seg_size=536)),
    # a lone kind byte at the end, with no length
    (b"\x01\x01\x01\x13", TcpOptions(malformed=True)),
])
def test_malformed_options_never_raise_and_are_reported(options, expect):
    assert parse_options(options) == expect
    seg = _with_options(options)
    r = TcpRepr.parse(TcpPacket.new_checked(seg), SRC4, DST4)
    assert bytes(r.payload) == b"data"
    assert r.options_malformed == expect.malformed
    assert (r.max_seg_size, r.window_scale, r.sack_permitted, r.sack_ranges, r.timestamp) == (
        expect.max_seg_size, expect.window_scale, expect.sack_permitted, expect.sack_ranges,
        expect.timestamp)


@pytest.mark.parametrize("mutate", [
    lambda b: b[:19],  # shorter than a header
    lambda b: b[:12] + b"\x40" + b[13:],  # data offset 4 words
    lambda b: b[:12] + b"\xf0" + b[13:],  # data offset 60 > buffer
    lambda b: b"\0\0" + b[2:],  # source port 0
    lambda b: b[:2] + b"\0\0" + b[4:],  # destination port 0
    lambda b: b[:13] + bytes([SYN | FIN]) + b[14:],
    lambda b: b[:13] + bytes([SYN | RST | ACK]) + b[14:],
    lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # checksum
])
def test_malformed_segments_raise_error(mutate):
    bad = mutate(DATA_V4)
    with pytest.raises(Error):
        TcpRepr.parse(TcpPacket.new_checked(bad) if len(bad) >= 20 else TcpPacket(bad),
                      SRC4, DST4)


def test_checksum_can_be_skipped():
    bad = bytearray(DATA_V4)
    bad[-1] ^= 1
    assert TcpRepr.parse(TcpPacket.new_checked(bad), SRC4, DST4, verify_checksum=False)


@given(st.binary(max_size=80))
def test_any_bytes_parse_or_raise_error(data):
    try:
        pkt = TcpPacket.new_checked(data)
        r = TcpRepr.parse(pkt, SRC4, DST4, verify_checksum=False)
    except Error:
        return
    assert r.buffer_len() >= 20
    pkt.segment_len  # noqa: B018


@given(st.binary(max_size=40))
def test_any_option_bytes_parse(data):
    opts = parse_options(data)
    assert opts.window_scale is None or 0 <= opts.window_scale <= 14
    assert opts.max_seg_size != 0
    assert len(opts.sack_ranges) <= 4


@given(
    st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.integers(0, 2**32 - 1),
    st.none() | st.integers(0, 2**32 - 1), st.sampled_from([0, SYN, FIN, RST, PSH, URG]),
    st.integers(0, 0xFFFF), st.none() | st.integers(1, 0xFFFF), st.none() | st.integers(0, 14),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=4),
    st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.binary(max_size=64),
)
def test_emit_parse_roundtrip(sport, dport, seq, ack, flags, win, mss, ws, sack_ok, sacks,
                              ts, payload):
    r = TcpRepr(sport, dport, seq, ack, flags, win, mss, ws, sack_ok, tuple(sacks), ts,
                123 if flags & URG else 0, payload)
    buf = bytearray(r.buffer_len())
    r.emit(TcpPacket(buf), SRC6, DST6)
    back = TcpRepr.parse(TcpPacket.new_checked(buf), SRC6, DST6)
    used = (mss is not None) * 4 + (ws is not None) * 4 + (12 if ts else 4 if sack_ok else 0)
    assert back.sack_ranges == tuple(sacks)[: max(0, min(len(sacks), (40 - used - 4) // 8))]
    assert r.header_len() <= 60
    assert back == TcpRepr(sport, dport, seq, ack, flags, win, mss, ws, sack_ok,
                           back.sack_ranges, ts, r.urgent_at, payload)
    assert not back.options_malformed
