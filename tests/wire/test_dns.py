"""DNS wire format: byte vectors checked against scapy, compression, loops, fuzzing."""

from __future__ import annotations

import struct
import time
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR

from netstack.wire import Error
from netstack.wire.dns import (
    HEADER_LEN,
    MAX_POINTERS,
    Class,
    DnsPacket,
    DnsRepr,
    Opcode,
    Question,
    Rcode,
    Record,
    Type,
    labels_to_name,
    name_to_labels,
    parse_reverse_name,
    read_name,
    reverse_pointer_name,
)

# scapy: DNS(id=0x1a2b, rd=1, qd=DNSQR(qname="guest.vhostnet.test", qtype="A"))
QUERY = bytes.fromhex(
    "1a2b 0100 0001 0000 0000 0000"
    "05 6775657374 08 76686f73746e6574 04 74657374 00 0001 0001"
)

# A compressed response: guest.vhostnet.test CNAME host.vhostnet.test, host A and AAAA.
RESPONSE = bytes.fromhex(
    "1a2b 8580 0001 0003 0000 0000"
    # question at 12: guest.vhostnet.test A IN
    "05 6775657374 08 76686f73746e6574 04 74657374 00 0001 0001"
    # answer: ptr→12 CNAME, ttl 300, rdata "host" + ptr→18 ("vhostnet.test"); "host" is at 49
    "c00c 0005 0001 0000012c 0007 04 686f7374 c012"
    # answer: ptr→49 A 10.0.2.15, ttl 60
    "c031 0001 0001 0000003c 0004 0a00020f"
    # answer: ptr→49 AAAA fd00::f, ttl 60
    "c031 001c 0001 0000003c 0010 fd00000000000000000000000000000f"
)

RESPONSE_REPR = DnsRepr(
    id=0x1A2B,
    is_response=True,
    authoritative=True,
    recursion_desired=True,
    recursion_available=True,
    questions=(Question("guest.vhostnet.test", Type.A, Class.IN),),
    answers=(
        Record("guest.vhostnet.test", Type.CNAME, Class.IN, 300, "host.vhostnet.test"),
        Record("host.vhostnet.test", Type.A, Class.IN, 60, IPv4Address("10.0.2.15")),
        Record("host.vhostnet.test", Type.AAAA, Class.IN, 60, IPv6Address("fd00::f")),
    ),
)


def parse(data: bytes) -> DnsRepr:
    return DnsRepr.parse(DnsPacket.new_checked(data))


def emit(r: DnsRepr) -> bytes:
    """Emit into buffers pre-filled with 0xA5 and 0x00; equal results prove every byte of
    `buffer_len()` was written, and nothing past it."""
    n = r.buffer_len()
    out = []
    for fill in (0xA5, 0x00):
        buf = bytearray([fill]) * (n + 8)
        r.emit(DnsPacket(buf))
        assert buf[n:] == bytearray([fill]) * 8
        out.append(bytes(buf[:n]))
    assert out[0] == out[1]
    return out[0]


def header(qd=0, an=0, ns=0, ar=0, flags=0, id=0x1234) -> bytes:
    return struct.pack("!HHHHHH", id, flags, qd, an, ns, ar)


# -- vectors against scapy ---------------------------------------------------------------------


def test_query_vector_matches_scapy_build():
    assert bytes(DNS(id=0x1A2B, rd=1, qd=DNSQR(qname="guest.vhostnet.test", qtype="A"))) == QUERY


def test_packet_fields():
    p = DnsPacket.new_checked(RESPONSE)
    assert p.id == 0x1A2B and p.flags == 0x8580
    assert p.is_response and p.authoritative and not p.truncated
    assert p.recursion_desired and p.recursion_available
    assert p.opcode == Opcode.QUERY and p.rcode == Rcode.NOERROR
    assert (p.question_count, p.answer_count, p.authority_count, p.additional_count) == (1, 3, 0, 0)
    assert bytes(p.payload) == RESPONSE[HEADER_LEN:]


def test_packet_setters():
    p = DnsPacket(bytearray(HEADER_LEN))
    p.id = 0xBEEF
    p.is_response = True
    p.opcode = Opcode.UPDATE
    p.authoritative = p.truncated = p.recursion_desired = p.recursion_available = True
    p.rcode = Rcode.REFUSED
    p.question_count, p.answer_count, p.authority_count, p.additional_count = 1, 2, 3, 4
    d = DNS(bytes(p.buffer))
    assert (d.id, d.qr, d.opcode, d.aa, d.tc, d.rd, d.ra, d.rcode) == (0xBEEF, 1, 5, 1, 1, 1, 1, 5)
    assert (d.qdcount, d.ancount, d.nscount, d.arcount) == (1, 2, 3, 4)
    p.truncated = False
    assert not p.truncated and p.rcode == Rcode.REFUSED


def test_parse_query():
    r = parse(QUERY)
    assert r == DnsRepr(
        id=0x1A2B, recursion_desired=True, questions=(Question("guest.vhostnet.test", Type.A),)
    )


def test_scapy_dissects_response_vector_like_us():
    d = DNS(RESPONSE)
    r = parse(RESPONSE)
    assert r == RESPONSE_REPR
    assert (d.id, d.qr, d.aa, d.rd, d.ra, d.rcode) == (r.id, 1, 1, 1, 1, 0)
    assert d.qd[0].qname == b"guest.vhostnet.test."
    assert [a.rrname for a in d.an] == [b"guest.vhostnet.test.", b"host.vhostnet.test.", b"host.vhostnet.test."]
    assert d.an[0].rdata == b"host.vhostnet.test."
    assert d.an[1].rdata == "10.0.2.15" and d.an[2].rdata == "fd00::f"
    assert [a.ttl for a in d.an] == [300, 60, 60]


def test_emit_response_compresses_like_the_vector():
    assert emit(RESPONSE_REPR) == RESPONSE


def test_emit_scapy_agrees():
    r = DnsRepr(
        id=7,
        is_response=True,
        opcode=Opcode.QUERY,
        rcode=Rcode.NXDOMAIN,
        questions=(Question("15.2.0.10.in-addr.arpa", Type.PTR),),
        answers=(Record("15.2.0.10.in-addr.arpa", Type.PTR, Class.IN, 10, "Guest.example"),),
        authorities=(Record("example", Type.NS, Class.IN, 3600, "ns.example"),),
        additionals=(
            Record("ns.example", Type.A, Class.IN, 3600, IPv4Address("192.0.2.53")),
            Record("txt.example", Type.TXT, Class.IN, 1, b"\x05hello"),
            Record(".", Type.OPT, 1232, 0, b""),
        ),
    )
    data = emit(r)
    d = DNS(data)
    assert (d.id, d.qr, d.opcode, d.rcode) == (7, 1, 0, 3)
    assert (d.qdcount, d.ancount, d.nscount, d.arcount) == (1, 1, 1, 3)
    assert d.qd[0].qname == b"15.2.0.10.in-addr.arpa." and d.qd[0].qtype == 12
    assert d.an[0].rdata == b"Guest.example." and d.an[0].ttl == 10
    assert d.ns[0].rrname == b"example." and d.ns[0].rdata == b"ns.example."
    assert d.ar[0].rrname == b"ns.example." and d.ar[0].rdata == "192.0.2.53"
    assert d.ar[1].rdata == [b"hello"]
    assert d.ar[2].type == 41 and d.ar[2].rclass == 1232
    assert parse(data) == r


def test_mx_srv_soa_names_decompressed():
    body = header(qd=1, an=3, flags=0x8000) + bytes.fromhex(
        "07 6578616d706c65 00 000f 0001"  # question at 12: example MX
        "c00c 000f 0001 00000000 0007 000a 026d78 c00c"  # MX 10 mx.example
        "c00c 0021 0001 00000000 000a 0000 0001 0035 01 73 c00c"  # SRV 0 1 53 s.example
        "c00c 0006 0001 00000000 001b 026e73 c00c c00c"  # SOA ns.example example
        "00000001 00000002 00000003 00000004 00000005"
    )
    r = parse(body)
    mx, srv, soa = r.answers
    assert mx.data == bytes.fromhex("000a 026d78 076578616d706c65 00")
    assert srv.data == bytes.fromhex("0000 0001 0035 0173 076578616d706c65 00")
    assert soa.data[:21] == bytes.fromhex("026e73 076578616d706c65 00 076578616d706c65 00")
    d = DNS(emit(r))  # self-contained data: scapy reads the names from our emitted message
    assert d.an[0].exchange == b"mx.example." and d.an[1].target == b"s.example."
    assert d.an[2].mname == b"ns.example." and d.an[2].rname == b"example."
    assert d.an[2].expire == 4


def test_case_preserved_and_root_name():
    r = DnsRepr(1, questions=(Question("WwW.ExAmple.COM", Type.AAAA), Question(".", Type.NS)))
    assert parse(emit(r)) == r
    assert Question("example.com.", Type.A) != Question("example.com", Type.A)
    assert parse(emit(DnsRepr(1, questions=(Question("example.com."),)))).questions[0].name == (
        "example.com"
    )


def test_odd_label_bytes_escaped_round_trip():
    raw = header(qd=1) + b"\x04a.b\\\x03\x00\xff " + b"\x00" + b"\x00\x01\x00\x01"
    r = parse(raw)
    assert r.questions[0].name == "a\\.b\\\\.\\000\\255\\032"
    assert emit(r) == raw
    assert name_to_labels(r.questions[0].name) == (b"a.b\\", b"\x00\xff ")


def test_unknown_type_class_opcode_rcode_kept_as_int():
    data = header(qd=1, flags=(3 << 11) | 9) + b"\x00" + struct.pack("!HH", 999, 77)
    r = parse(data)
    assert r.questions[0] == Question(".", 999, 77)
    assert (r.opcode, r.rcode) == (3, 9)
    assert emit(r) == data


# -- names: compression loops and limits --------------------------------------------------------


def test_pointer_to_itself():
    with pytest.raises(Error):
        parse(header(qd=1) + b"\xc0\x0c" + b"\x00\x01\x00\x01")


def test_pointers_to_each_other():
    # name at 12 points to 14, which points back to 12.
    with pytest.raises(Error):
        parse(header(qd=1) + b"\xc0\x0e\xc0\x0c" + b"\x00\x01\x00\x01")
    # the answer's name points to 12, whose labels lead to a pointer back to 12
    data = header(qd=1) + b"\x01a\xc0\x0c" + b"\x00\x01\x00\x01"
    with pytest.raises(Error):
        parse(data)


def test_forward_pointer():
    with pytest.raises(Error):
        parse(header(qd=1) + b"\xc0\x10\x00\x00" + b"\x01a\x00" + b"\x00\x01\x00\x01")


def test_pointer_into_the_run_being_read():
    # "a" at 12, then a pointer to 12 in the same name: target not before the run start.
    with pytest.raises(Error):
        read_name(memoryview(header() + b"\x01a\xc0\x0c"), 12)


def test_pointer_chain_limit():
    def chain(jumps: int) -> tuple[bytes, int]:
        body = bytearray(header() + b"\x00")  # root at 12
        target = 12
        for _ in range(jumps):
            at = len(body)
            body += struct.pack("!H", 0xC000 | target)
            target = at
        return bytes(body), target

    data, start = chain(MAX_POINTERS)
    assert read_name(memoryview(data), start) == (".", start + 2)
    data, start = chain(MAX_POINTERS + 1)
    with pytest.raises(Error):
        read_name(memoryview(data), start)


def test_name_length_limits():
    ok = b"".join(b"\x3f" + b"x" * 63 for _ in range(3)) + b"\x3d" + b"y" * 61 + b"\x00"
    assert len(ok) == 255
    name, end = read_name(memoryview(header() + ok), 12)
    assert len(name) == 253 and end == 12 + 255
    too_long = b"".join(b"\x3f" + b"x" * 63 for _ in range(3)) + b"\x3e" + b"y" * 62 + b"\x00"
    with pytest.raises(Error):
        read_name(memoryview(header() + too_long), 12)
    # over-long through compression: a long suffix reused by a long prefix
    suffix = b"\x3f" + b"x" * 63 + b"\x3f" + b"x" * 63 + b"\x00"
    data = header() + suffix + b"\x3f" + b"y" * 63 + b"\x3f" + b"y" * 63 + b"\xc0\x0c"
    with pytest.raises(Error):
        read_name(memoryview(data), 12 + len(suffix))


def test_label_type_bits_rejected():
    for first in (0x40, 0x80, 0x7F):
        with pytest.raises(Error):
            read_name(memoryview(header() + bytes([first]) + b"x" * 130 + b"\x00"), 12)


def test_name_to_labels_rejects_local_mistakes():
    for bad in ("a..b", ".a", "x" * 64, ".".join(["x" * 63] * 4) + "x", "a\\", "a\\25", "a\\256", "é"):
        with pytest.raises(ValueError):
            name_to_labels(bad)
    assert name_to_labels("") == name_to_labels(".") == ()
    assert name_to_labels("a.b.") == (b"a", b"b")


# -- counts and truncation ----------------------------------------------------------------------


@pytest.mark.parametrize("counts", [(0xFFFF, 0, 0, 0), (0, 0xFFFF, 0, 0), (0, 0, 0, 0xFFFF),
                                    (0xFFFF,) * 4])
def test_huge_counts_empty_body_fast(counts):
    start = time.perf_counter()
    with pytest.raises(Error):
        parse(header(*counts))
    with pytest.raises(Error):
        parse(header(*counts) + bytes(200))
    assert time.perf_counter() - start < 0.05


def test_every_truncation_of_vectors():
    for base in (QUERY, RESPONSE):
        for n in range(len(base)):
            with pytest.raises(Error):
                parse(base[:n])


def test_record_data_length_checks():
    q = header(an=1)
    for rtype, rdata in ((Type.A, b"\x01\x02\x03"), (Type.AAAA, bytes(15)),
                         (Type.CNAME, b"\x01a\x00\x00"), (Type.PTR, b"\x01a")):
        rr = b"\x00" + struct.pack("!HHIH", rtype, 1, 0, len(rdata)) + rdata
        with pytest.raises(Error):
            parse(q + rr)
    rr = b"\x00" + struct.pack("!HHIH", Type.TXT, 1, 0, 50) + b"x" * 10
    with pytest.raises(Error):
        parse(q + rr)


def test_emit_rejects_wrong_data_types():
    for rec in (Record("a", Type.A, data=IPv6Address("::1")), Record("a", Type.AAAA, data=b""),
                Record("a", Type.CNAME, data=b"x"), Record("a", Type.TXT, data="x")):
        with pytest.raises(ValueError):
            DnsRepr(1, answers=(rec,)).buffer_len()


def test_emit_into_short_buffer():
    with pytest.raises(ValueError):
        RESPONSE_REPR.emit(DnsPacket(bytearray(len(RESPONSE) - 1)))


# -- reverse names ------------------------------------------------------------------------------


def test_reverse_names():
    assert reverse_pointer_name(IPv4Address("10.0.2.15")) == "15.2.0.10.in-addr.arpa"
    v6 = reverse_pointer_name(IPv6Address("fd00::f"))
    assert v6 == "f." + "0." * 29 + "d.f.ip6.arpa"
    assert parse_reverse_name("15.2.0.10.in-addr.arpa") == IPv4Address("10.0.2.15")
    assert parse_reverse_name("15.2.0.10.IN-ADDR.ARPA.") == IPv4Address("10.0.2.15")
    assert parse_reverse_name(v6.upper()) == IPv6Address("fd00::f")
    for bad in ("2.0.10.in-addr.arpa", "1.15.2.0.10.in-addr.arpa", "256.2.0.10.in-addr.arpa",
                "015.2.0.10.in-addr.arpa", "a.2.0.10.in-addr.arpa", "\u0661.2.0.10.in-addr.arpa",
                "example.com", "", ".", "in-addr.arpa", "0." * 31 + "ip6.arpa",
                "00." + "0." * 31 + "ip6.arpa", "g." + "0." * 31 + "ip6.arpa"):
        assert parse_reverse_name(bad) is None, bad


@given(st.ip_addresses())
def test_reverse_round_trip(ip):
    assert parse_reverse_name(reverse_pointer_name(ip)) == ip


# -- Hypothesis ---------------------------------------------------------------------------------


def parse_or_error(data: bytes) -> None:
    try:
        parse(data)
    except Error:
        pass


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_error(data):
    parse_or_error(data)


@given(st.integers(0, 3), st.integers(0, 3), st.binary(max_size=200))
def test_small_counts_any_body_parse_or_error(qd, an, body):
    parse_or_error(header(qd, an) + body)


@given(
    st.sampled_from([QUERY, RESPONSE]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_mutated_vectors_parse_or_error(base, flips, cut):
    data = bytearray(base)
    for offset, value in flips:
        data[offset % len(data)] = value
    parse_or_error(bytes(data))
    parse_or_error(bytes(data[:cut]))


labels = st.binary(min_size=1, max_size=20)
names = st.lists(labels, max_size=5).map(labels_to_name)


@given(st.lists(labels, max_size=8))
def test_label_text_round_trip(ls):
    assert name_to_labels(labels_to_name(ls)) == tuple(ls)


u16 = st.integers(0, 0xFFFF)
records = st.one_of(
    st.builds(Record, names, st.just(Type.A), u16, st.integers(0, 2**32 - 1),
              st.builds(IPv4Address, st.integers(0, 2**32 - 1))),
    st.builds(Record, names, st.just(Type.AAAA), u16, st.integers(0, 2**32 - 1),
              st.builds(IPv6Address, st.integers(0, 2**128 - 1))),
    st.builds(Record, names, st.sampled_from([Type.CNAME, Type.PTR, Type.NS]), u16,
              st.integers(0, 2**32 - 1), names),
    st.builds(Record, names, st.sampled_from([Type.TXT, Type.OPT, 99]), u16,
              st.integers(0, 2**32 - 1), st.binary(max_size=30)),
)
dns_reprs = st.builds(
    DnsRepr,
    id=u16,
    is_response=st.booleans(),
    opcode=st.sampled_from(list(Opcode) + [3, 15]),
    authoritative=st.booleans(),
    truncated=st.booleans(),
    recursion_desired=st.booleans(),
    recursion_available=st.booleans(),
    authentic_data=st.booleans(),
    checking_disabled=st.booleans(),
    rcode=st.sampled_from(list(Rcode) + [6, 15]),
    questions=st.lists(st.builds(Question, names, u16, u16), max_size=3).map(tuple),
    answers=st.lists(records, max_size=4).map(tuple),
    authorities=st.lists(records, max_size=2).map(tuple),
    additionals=st.lists(records, max_size=2).map(tuple),
)


@settings(max_examples=200)
@given(dns_reprs)
def test_emit_parse_round_trip(r):
    data = emit(r)
    assert parse(data) == r
    d = DNS(data)
    assert (d.id, d.qdcount, d.ancount) == (r.id, len(r.questions), len(r.answers))


@settings(max_examples=100)
@given(dns_reprs, st.integers(0, 1000))
def test_truncated_emitted_messages_error(r, cut):
    data = emit(r)
    if data[HEADER_LEN - 8 :HEADER_LEN] == bytes(8):
        return  # no entries: every prefix ≥ 12 bytes is a valid header-only message
    with pytest.raises(Error):
        parse(data[: cut % len(data)])
