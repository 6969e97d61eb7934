"""MLD: MLDv2 reports and queries, MLDv1 messages: byte vectors checked against scapy both
ways, hostile lengths and counts, truncation, fuzzing."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6MLDMultAddrRec,
    ICMPv6MLDone,
    ICMPv6MLQuery,
    ICMPv6MLQuery2,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    IPv6,
)
from scapy.packet import raw

from netstack.wire import Error
from netstack.wire.icmpv6 import Icmpv6Packet
from netstack.wire.mld import (
    ALLOW_NEW,
    CHANGE_TO_EXCLUDE,
    MAX_RECORDS,
    MAX_SOURCES,
    MLDV2_ALL_ROUTERS,
    MODE_IS_INCLUDE,
    AddressRecord,
    MldQuery,
    Mldv1Report,
    Mldv2Report,
)

GUEST_LL = IPv6Address("fe80::5054:ff:fe12:3456")
ROUTER_LL = IPv6Address("fe80::2")
ALL_NODES = IPv6Address("ff02::1")
UNSPEC = IPv6Address("::")
SOLICITED = IPv6Address("ff02::1:ff12:3456")
S1 = IPv6Address("2001:db8::1")
S2 = IPv6Address("2001:db8::2")


def icmp(layer, src, dst) -> bytes:
    return raw(IPv6(src=str(src), dst=str(dst), hlim=1) / layer)[40:]


REPORT = icmp(ICMPv6MLReport2(records=[
    ICMPv6MLDMultAddrRec(rtype=4, dst=str(SOLICITED)),
    ICMPv6MLDMultAddrRec(rtype=1, dst="ff05::1:3", sources=[str(S1), str(S2)]),
]), GUEST_LL, MLDV2_ALL_ROUTERS)
REPORT_REPR = Mldv2Report((
    AddressRecord(CHANGE_TO_EXCLUDE, SOLICITED),
    AddressRecord(MODE_IS_INCLUDE, IPv6Address("ff05::1:3"), (S1, S2)),
))
QUERY2 = icmp(ICMPv6MLQuery2(mrd=10000, mladdr="::", S=1, QRV=2, QQIC=125, sources=[str(S1)]),
              ROUTER_LL, ALL_NODES)
QUERY2_REPR = MldQuery(10000, UNSPEC, (S1,), True, 2, 125)
QUERY1 = icmp(ICMPv6MLQuery(mrd=10000, mladdr=str(SOLICITED)), ROUTER_LL, SOLICITED)
QUERY1_REPR = MldQuery(10000, SOLICITED, (), False, 0, 0, mldv1=True)
V1_REPORT = icmp(ICMPv6MLReport(mladdr=str(SOLICITED)), GUEST_LL, SOLICITED)
V1_DONE = icmp(ICMPv6MLDone(mladdr=str(SOLICITED)), GUEST_LL, IPv6Address("ff02::2"))

# (parser class, bytes, src, dst, repr)
CASES = [
    (Mldv2Report, REPORT, GUEST_LL, MLDV2_ALL_ROUTERS, REPORT_REPR),
    (MldQuery, QUERY2, ROUTER_LL, ALL_NODES, QUERY2_REPR),
    (MldQuery, QUERY1, ROUTER_LL, SOLICITED, QUERY1_REPR),
    (Mldv1Report, V1_REPORT, GUEST_LL, SOLICITED, Mldv1Report(SOLICITED)),
    (Mldv1Report, V1_DONE, GUEST_LL, IPv6Address("ff02::2"), Mldv1Report(SOLICITED, done=True)),
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


def _fix(data, src, dst) -> bytes:
    buf = bytearray(data)
    Icmpv6Packet(buf).fill_checksum(src, dst)
    return bytes(buf)


@pytest.mark.parametrize("cls, data, src, dst, expected", CASES)
def test_parse_scapy_vectors(cls, data, src, dst, expected):
    assert cls.parse(data, src, dst) == expected
    assert cls.parse(memoryview(bytearray(data)), src, dst) == expected


@pytest.mark.parametrize("cls, data, src, dst, expected", CASES)
def test_emit_reproduces_scapy_vectors(cls, data, src, dst, expected):
    assert _emit_twice(expected, src, dst) == data
    out = _emit_twice(expected, src, dst, fill_checksum=False)
    assert out[2:4] == b"\0\0" and out[4:] == data[4:]


def test_join_report_from_unspecified_source():
    r = Mldv2Report((AddressRecord(CHANGE_TO_EXCLUDE, SOLICITED),))
    out = _emit_twice(r, UNSPEC, MLDV2_ALL_ROUTERS)
    assert out == icmp(ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(rtype=4, dst=str(SOLICITED))]),
                       UNSPEC, MLDV2_ALL_ROUTERS)
    assert Mldv2Report.parse(out, UNSPEC, MLDV2_ALL_ROUTERS) == r


def test_aux_data_skipped_unknown_record_type_kept_trailing_bytes_ignored():
    data = icmp(ICMPv6MLReport2(records=[
        # scapy would count the aux data length in bytes; RFC 3810 §5.2.6 counts 32-bit words
        ICMPv6MLDMultAddrRec(rtype=9, dst="ff02::fb", auxdata_len=2,
                             auxdata=b"\1\2\3\4\5\6\7\x08"),
        ICMPv6MLDMultAddrRec(rtype=5, dst="ff02::fc", sources=[str(S1)]),
    ]) / b"junk", GUEST_LL, MLDV2_ALL_ROUTERS)
    assert data[9] == 2 and data[28:36] == b"\1\2\3\4\5\6\7\x08"
    assert Mldv2Report.parse(data, GUEST_LL, MLDV2_ALL_ROUTERS) == Mldv2Report((
        AddressRecord(9, IPv6Address("ff02::fb")),
        AddressRecord(ALLOW_NEW, IPv6Address("ff02::fc"), (S1,)),
    ))


def test_query_codes_decode():
    assert MldQuery(max_resp_code=10000).max_resp_delay_ms == 10000
    # 1|exp=1|mant=0x123: (0x123 | 0x1000) << 4
    assert MldQuery(max_resp_code=0x9123).max_resp_delay_ms == 0x1123 << 4
    assert MldQuery(qqic=125).query_interval == 125
    assert MldQuery(qqic=0x80 | (2 << 4) | 5).query_interval == (5 | 0x10) << 5
    assert QUERY1_REPR.max_resp_delay_ms == 10000


def _report(count: int, records: bytes) -> bytes:
    return _fix(struct.pack("!BBHHH", 143, 0, 0, 0, count) + records, GUEST_LL,
                MLDV2_ALL_ROUTERS)


def _record(rtype=4, aux=0, nsrc=0, tail=b"") -> bytes:
    return struct.pack("!BBH", rtype, aux, nsrc) + SOLICITED.packed + tail


@pytest.mark.parametrize(
    "data",
    [
        _report(1, b""),  # record count past the end
        _report(2, _record()),
        _report(1, _record()[:19]),  # record header cut
        _report(1, _record(nsrc=1, tail=S1.packed[:15])),  # source cut
        _report(1, _record(nsrc=0xFFFF)),  # huge source count
        _report(1, _record(aux=1, tail=b"\0\0\0")),  # aux data cut
        _report(1, _record(aux=255)),
        _report(MAX_RECORDS + 1, _record() * (MAX_RECORDS + 1)),  # too many records
        _report(0xFFFF, _record() * 3),
        _report(1, _record(nsrc=MAX_SOURCES + 1, tail=S1.packed * (MAX_SOURCES + 1))),
        _fix(bytes([130]) + REPORT[1:], GUEST_LL, MLDV2_ALL_ROUTERS),  # not a report
        REPORT[:7],
    ],
)
def test_hostile_reports_raise_error(data):
    with pytest.raises(Error):
        Mldv2Report.parse(data, GUEST_LL, MLDV2_ALL_ROUTERS, verify_checksum=False)


def test_report_source_must_be_link_local_or_unspecified():
    with pytest.raises(Error):
        Mldv2Report.parse(_fix(REPORT, S1, MLDV2_ALL_ROUTERS), S1, MLDV2_ALL_ROUTERS)
    with pytest.raises(Error):
        Mldv1Report.parse(_fix(V1_REPORT, S1, SOLICITED), S1, SOLICITED)


def test_record_bounds_accept_the_maximum():
    r = Mldv2Report.parse(_report(MAX_RECORDS, _record() * MAX_RECORDS), GUEST_LL,
                          MLDV2_ALL_ROUTERS)
    assert len(r.records) == MAX_RECORDS


@pytest.mark.parametrize(
    "data, src",
    [
        (_fix(QUERY2, UNSPEC, ALL_NODES), UNSPEC),  # query from ::
        (_fix(QUERY2, S1, ALL_NODES), S1),  # not link-local
        (_fix(QUERY1 + b"\0", ROUTER_LL, SOLICITED), ROUTER_LL),  # 25 bytes
        (_fix(QUERY2[:27], ROUTER_LL, ALL_NODES), ROUTER_LL),  # 27 bytes
        (_fix(QUERY2[:-1], ROUTER_LL, ALL_NODES), ROUTER_LL),  # source cut
        (_fix(QUERY2[:26] + b"\xff\xff" + QUERY2[28:], ROUTER_LL, ALL_NODES), ROUTER_LL),
        (_fix(QUERY1[:23], ROUTER_LL, ALL_NODES), ROUTER_LL),
    ],
)
def test_hostile_queries_raise_error(data, src):
    with pytest.raises(Error):
        MldQuery.parse(data, src, ALL_NODES, verify_checksum=False)


def test_bad_checksum():
    bad = bytearray(REPORT)
    bad[-1] ^= 1
    with pytest.raises(Error):
        Mldv2Report.parse(bad, GUEST_LL, MLDV2_ALL_ROUTERS)
    assert len(Mldv2Report.parse(bad, GUEST_LL, MLDV2_ALL_ROUTERS,
                                 verify_checksum=False).records) == 2
    with pytest.raises(Error):
        MldQuery.parse(QUERY2, ROUTER_LL, SOLICITED)  # wrong pseudo-header


def test_code_ignored():
    data = bytearray(V1_REPORT)
    data[1] = 7
    assert Mldv1Report.parse(_fix(data, GUEST_LL, SOLICITED), GUEST_LL, SOLICITED).group == \
        SOLICITED


@pytest.mark.parametrize("cls, data, src, dst, expected", CASES)
def test_truncation_at_every_length(cls, data, src, dst, expected):
    for n in range(len(data)):
        with pytest.raises(Error):
            cls.parse(data[:n], src, dst)
        try:
            r = cls.parse(_fix(data[:n], src, dst) if n >= 4 else data[:n], src, dst)
        except Error:
            continue
        assert type(r) is cls


_ADDRS = st.sampled_from([GUEST_LL, UNSPEC, S1])


def _parse_or_error(data: bytes, src) -> None:
    for cls in (Mldv2Report, MldQuery, Mldv1Report):
        try:
            r = cls.parse(data, src, MLDV2_ALL_ROUTERS, verify_checksum=False)
        except Error:
            continue
        assert r.buffer_len() <= len(data)
        if isinstance(r, MldQuery):
            _ = (r.max_resp_delay_ms, r.query_interval)


@given(st.binary(max_size=120), _ADDRS)
def test_any_bytes_parse_or_raise_error(data, src):
    _parse_or_error(data, src)


@given(st.sampled_from([143, 130, 131]), st.binary(max_size=200), _ADDRS)
def test_any_body_parse_or_raise_error(msg_type, body, src):
    _parse_or_error(struct.pack("!BBH", msg_type, 0, 0) + body, src)


@given(
    st.sampled_from(CASES),
    st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=6),
    st.integers(0, 90),
)
def test_mutated_packets_parse_or_raise_error(case, edits, cut):
    _cls, data, src, _dst, _ = case
    buf = bytearray(data)
    for i, v in edits:
        if i < len(buf):
            buf[i] = v
    _parse_or_error(bytes(buf[: max(0, len(buf) - cut)]), src)


_GROUPS = st.sampled_from([SOLICITED, IPv6Address("ff05::1:3"), IPv6Address("ff02::fb")])


@given(st.lists(st.tuples(st.integers(1, 6), _GROUPS, st.lists(st.sampled_from([S1, S2]),
                                                                 max_size=3)), max_size=4))
def test_report_round_trip_against_scapy(records):
    r = Mldv2Report(tuple(AddressRecord(t, g, tuple(s)) for t, g, s in records))
    out = _emit_twice(r, GUEST_LL, MLDV2_ALL_ROUTERS)
    ref = icmp(ICMPv6MLReport2(records=[
        ICMPv6MLDMultAddrRec(rtype=t, dst=str(g), sources=[str(x) for x in s])
        for t, g, s in records]), GUEST_LL, MLDV2_ALL_ROUTERS)
    assert out == ref
    assert Mldv2Report.parse(out, GUEST_LL, MLDV2_ALL_ROUTERS) == r
