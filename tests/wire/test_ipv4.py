"""IPv4: byte vectors checked against scapy both ways, emit coverage, truncation, fuzzing."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw, raw

from netstack.wire import Error
from netstack.wire.ipv4 import HEADER_LEN, IpProtocol, Ipv4Cidr, Ipv4Packet, Ipv4Repr

# IP(src=192.168.1.10, dst=192.168.1.1, id=0x1234, ttl=64, flags=DF, tos=0xb9)
#   / UDP(sport=40000, dport=53) / b"hello, world"
IPV4_UDP = (
    b"\x45\xb9\x00\x28\x12\x34\x40\x00\x40\x11\xa4\x7c\xc0\xa8\x01\x0a"
    b"\xc0\xa8\x01\x01\x9c\x40\x00\x35\x00\x14\x9f\xa8\x68\x65\x6c\x6c"
    b"\x6f\x2c\x20\x77\x6f\x72\x6c\x64"
)
# IP(src=10.0.2.15, dst=10.0.2.2, id=0xbeef, ttl=3, proto=253,
#    options=[IPOption_RR(routers=["1.2.3.4"])]) / b"opt!"   (IHL 7)
IPV4_OPTS = (
    b"\x47\x00\x00\x20\xbe\xef\x00\x00\x03\xfd\xcc\xd6\x0a\x00\x02\x0f"
    b"\x0a\x00\x02\x02\x07\x07\x04\x01\x02\x03\x04\x00\x6f\x70\x74\x21"
)
VECTORS = [IPV4_UDP, IPV4_OPTS]


def scapy_fields(p: IP) -> dict:
    return {
        "version": p.version,
        "ihl": p.ihl,
        "dscp": p.tos >> 2,
        "ecn": p.tos & 3,
        "total_len": p.len,
        "ident": p.id,
        "dont_frag": bool(p.flags.DF),
        "more_frags": bool(p.flags.MF),
        "frag_offset": p.frag * 8,
        "ttl": p.ttl,
        "protocol": p.proto,
        "checksum": p.chksum,
        "src_addr": IPv4Address(p.src),
        "dst_addr": IPv4Address(p.dst),
    }


def our_fields(pkt: Ipv4Packet) -> dict:
    return {name: getattr(pkt, name) for name in scapy_fields(IP(IPV4_UDP))}


# -- vectors against scapy ---------------------------------------------------------------


def test_vectors_are_what_scapy_builds():
    built = IP(
        src="192.168.1.10", dst="192.168.1.1", id=0x1234, ttl=64, flags="DF", tos=0xB9
    ) / UDP(sport=40000, dport=53) / b"hello, world"
    assert raw(built) == IPV4_UDP
    from scapy.layers.inet import IPOption_RR

    built = IP(
        src="10.0.2.15", dst="10.0.2.2", id=0xBEEF, ttl=3, proto=253,
        options=[IPOption_RR(routers=["1.2.3.4"])],
    ) / b"opt!"
    assert raw(built) == IPV4_OPTS


@pytest.mark.parametrize("vector", VECTORS)
def test_packet_fields_match_scapy(vector):
    pkt = Ipv4Packet.new_checked(vector)
    sp = IP(vector)
    assert our_fields(pkt) == scapy_fields(sp)
    assert pkt.header_len == sp.ihl * 4
    assert bytes(pkt.payload) == raw(sp.payload)
    assert pkt.verify_checksum()


def test_repr_parse_vector():
    r = Ipv4Repr.parse(Ipv4Packet.new_checked(IPV4_UDP))
    assert r == Ipv4Repr(
        src_addr=IPv4Address("192.168.1.10"),
        dst_addr=IPv4Address("192.168.1.1"),
        protocol=IpProtocol.UDP,
        payload_len=20,
        ttl=64,
        dscp=0xB9 >> 2,
        ident=0x1234,
        dont_frag=True,
        ecn=1,
    )
    assert r.protocol is IpProtocol.UDP


def test_options_are_skipped():
    pkt = Ipv4Packet.new_checked(IPV4_OPTS)
    assert pkt.header_len == 28
    assert bytes(pkt.options) == IPV4_OPTS[20:28]
    assert bytes(pkt.payload) == b"opt!"
    r = Ipv4Repr.parse(pkt)
    assert r.payload_len == 4
    assert r.protocol == 253  # unknown protocols stay plain ints
    assert r.dont_frag is False


def test_payload_bounded_by_total_len_not_buffer():
    padded = IPV4_UDP + b"\x00" * 18  # Ethernet minimum-frame padding
    pkt = Ipv4Packet.new_checked(padded)
    assert bytes(pkt.payload) == IPV4_UDP[20:]
    assert Ipv4Repr.parse(pkt).payload_len == 20


def _emit_twice(repr_: Ipv4Repr, payload: bytes, **kw) -> bytes:
    """Emit into buffers pre-filled with 0xA5 and 0x5A: equal header bytes were written."""
    outs = []
    for fill in (0xA5, 0x5A):
        buf = bytearray([fill]) * (HEADER_LEN + len(payload))
        repr_.emit(Ipv4Packet(buf), **kw)
        assert buf[HEADER_LEN:] == bytes([fill]) * len(payload)  # payload untouched
        buf[HEADER_LEN:] = payload
        outs.append(bytes(buf))
    assert outs[0] == outs[1], "emit left header bytes unwritten"
    return outs[0]


def test_emit_every_header_byte_and_scapy_agrees():
    r = Ipv4Repr(
        IPv4Address("10.1.2.3"), IPv4Address("172.16.0.9"), IpProtocol.TCP, 11,
        ttl=17, dscp=10, ident=0xCAFE, dont_frag=False, ecn=2,
    )
    payload = b"tcp-ish pay"
    out = _emit_twice(r, payload)
    sp = IP(out)
    assert sp.version == 4 and sp.ihl == 5
    assert sp.src == "10.1.2.3" and sp.dst == "172.16.0.9"
    assert sp.proto == 6 and sp.ttl == 17 and sp.tos == (10 << 2) | 2
    assert sp.id == 0xCAFE and int(sp.flags) == 0 and sp.frag == 0
    assert sp.len == HEADER_LEN + len(payload)
    ref = sp.copy()
    del ref.chksum
    assert IP(raw(ref)).chksum == sp.chksum  # scapy recomputes the same checksum
    assert Ipv4Repr.parse(Ipv4Packet(out)) == r


def test_emit_reproduces_vector():
    r = Ipv4Repr.parse(Ipv4Packet.new_checked(IPV4_UDP))
    assert _emit_twice(r, IPV4_UDP[20:]) == IPV4_UDP


def test_emit_without_checksum_leaves_zero():
    r = Ipv4Repr.parse(Ipv4Packet.new_checked(IPV4_UDP))
    out = _emit_twice(r, IPV4_UDP[20:], fill_checksum=False)
    assert out[10:12] == b"\x00\x00"
    assert out[:10] + out[12:] == IPV4_UDP[:10] + IPV4_UDP[12:]


def test_setters_round_trip_through_scapy():
    buf = bytearray(IPV4_UDP)
    pkt = Ipv4Packet(buf)
    pkt.dscp = 46
    pkt.ecn = 3
    pkt.ttl = 1
    pkt.ident = 0xFFFF
    pkt.dont_frag = False
    pkt.more_frags = True
    pkt.frag_offset = 1480
    pkt.protocol = IpProtocol.ICMP
    pkt.src_addr = IPv4Address("1.1.1.1")
    pkt.dst_addr = IPv4Address("255.255.255.255")
    pkt.fill_checksum()
    sp = IP(bytes(buf))
    assert scapy_fields(sp) == our_fields(pkt)
    assert sp.tos == (46 << 2) | 3 and sp.frag == 185 and str(sp.flags) == "MF"
    assert pkt.verify_checksum() and pkt.is_fragment
    pkt.clear_flags()
    assert not pkt.is_fragment and pkt.frag_offset == 0
    pkt.version = 6
    pkt.ihl = 6
    assert buf[0] == 0x66
    pkt.header_len = 20
    pkt.total_len = 99
    assert buf[0] == 0x65 and pkt.total_len == 99


# -- malformed input ---------------------------------------------------------------------


def _mutate(data: bytes, **fields) -> bytes:
    buf = bytearray(data)
    pkt = Ipv4Packet(buf)
    for k, v in fields.items():
        setattr(pkt, k, v)
    if 20 <= pkt.header_len <= len(buf):
        pkt.fill_checksum()
    return bytes(buf)


@pytest.mark.parametrize(
    "fields",
    [
        {"version": 6},
        {"version": 0},
        {"ihl": 4},
        {"ihl": 0},
        {"ihl": 15},  # claims 60 bytes, buffer has 40 but total_len says 40 < 60
        {"total_len": 19},
        {"total_len": 41},
        {"total_len": 0xFFFF},
        {"more_frags": True},
        {"frag_offset": 8},
    ],
)
def test_malformed_headers_raise_error(fields):
    with pytest.raises(Error):
        Ipv4Repr.parse(Ipv4Packet.new_checked(_mutate(IPV4_UDP, **fields)))


def test_bad_checksum_raises_unless_offloaded():
    bad = bytearray(IPV4_UDP)
    bad[10] ^= 0xFF
    pkt = Ipv4Packet.new_checked(bad)
    assert not pkt.verify_checksum()
    with pytest.raises(Error):
        Ipv4Repr.parse(pkt)
    assert Ipv4Repr.parse(pkt, verify_checksum=False).ident == 0x1234


@pytest.mark.parametrize("vector", VECTORS)
def test_truncation_at_every_length(vector):
    for n in range(len(vector)):
        with pytest.raises(Error):
            Ipv4Packet.new_checked(vector[:n])
        with pytest.raises(Error):
            Ipv4Repr.parse(Ipv4Packet(vector[:n]))


def _parse_or_error(data: bytes) -> None:
    try:
        pkt = Ipv4Packet.new_checked(bytearray(data))
        bytes(pkt.payload)
        bytes(pkt.options)
        _ = (pkt.src_addr, pkt.dst_addr, pkt.frag_offset, pkt.verify_checksum())
        Ipv4Repr.parse(pkt, verify_checksum=False)
        Ipv4Repr.parse(pkt)
    except Error:
        pass


@given(st.binary(max_size=100))
def test_any_bytes_parse_or_raise_error(data):
    _parse_or_error(data)


@given(
    st.sampled_from(VECTORS),
    st.lists(st.tuples(st.integers(0, 39), st.integers(0, 255)), max_size=6),
    st.integers(0, 40),
)
def test_mutated_packets_parse_or_raise_error(vector, edits, cut):
    buf = bytearray(vector)
    for i, v in edits:
        if i < len(buf):
            buf[i] = v
    _parse_or_error(bytes(buf[: len(buf) - cut % (len(buf) + 1)]))
    _parse_or_error(_mutate(bytes(buf)) if len(buf) >= 20 else bytes(buf))


@given(
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255),
    st.binary(max_size=64), st.integers(0, 255), st.integers(0, 63), st.integers(0, 0xFFFF),
    st.booleans(), st.integers(0, 3),
)
@example(0, 0, 2, bytes(8), 0, 0, 0, False, 0)  # an IGMP query scapy re-serializes
def test_emit_parse_round_trip_and_scapy(src, dst, proto, payload, ttl, dscp, ident, df, ecn):
    r = Ipv4Repr(IPv4Address(src), IPv4Address(dst), proto, len(payload), ttl, dscp, ident, df, ecn)
    buf = bytearray(r.buffer_len() + len(payload))
    r.emit(Ipv4Packet(buf))
    buf[HEADER_LEN:] = payload
    assert Ipv4Repr.parse(Ipv4Packet.new_checked(buf)) == r
    sp = IP(bytes(buf))
    assert (sp.src, sp.dst, sp.proto, sp.id) == (str(r.src_addr), str(r.dst_addr), proto, ident)
    # the payload scapy dissected after our header (not re-serialized: scapy rebuilds
    # some upper layers, e.g. an IGMP query with checksum 0 comes back with one)
    assert bytes(sp.payload.original or b"") == payload
    # scapy's own header checksum, over our header with the payload as raw bytes: an
    # upper layer it dissects may change the IP layer (once scapy.all has bound IGMP, the
    # IGMP dissector adds a Router Alert option to it)
    ref = IP(bytes(buf[:HEADER_LEN]))
    del ref.chksum
    assert IP(raw(ref / Raw(payload))).chksum == sp.chksum


# -- CIDR ----------------------------------------------------------------------------------


def test_cidr():
    c = Ipv4Cidr.parse("10.0.2.15/24")
    assert c.address == IPv4Address("10.0.2.15") and c.prefix_len == 24
    assert str(c) == "10.0.2.15/24"
    assert str(c.network) == "10.0.2.0/24"
    assert c.netmask == IPv4Address("255.255.255.0")
    assert c.broadcast == IPv4Address("10.0.2.255")
    assert c.contains(IPv4Address("10.0.2.2")) and IPv4Address("10.0.2.254") in c
    assert not c.contains(IPv4Address("10.0.3.1"))
    assert Ipv4Cidr(IPv4Address("10.0.0.1"), 31).broadcast is None
    assert Ipv4Cidr(IPv4Address("10.0.0.1"), 32).contains(IPv4Address("10.0.0.1"))
    assert Ipv4Cidr(IPv4Address("10.0.0.1"), 0).contains(IPv4Address("200.1.1.1"))
    with pytest.raises(ValueError):
        Ipv4Cidr(IPv4Address("10.0.0.1"), 33)


def test_emit_refuses_a_payload_that_cannot_fit():
    r = Ipv4Repr(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), IpProtocol.UDP, 65516)
    with pytest.raises(ValueError):
        r.emit(Ipv4Packet(bytearray(HEADER_LEN)))


def test_wire_addresses_are_plain_ipv4addresses_hashed_once():
    """`parse` gives shared address objects that hash once; they must stay
    indistinguishable from IPv4Address in dicts, sets, repr and pickles."""
    import pickle

    from netstack.wire import ipv4 as mod

    a = mod.addr4(b"\x0a\x00\x02\x0f")
    plain = IPv4Address("10.0.2.15")
    assert a == plain and hash(a) == hash(plain) and {plain: 1}[a] == 1
    assert repr(a) == repr(plain) and str(a) == "10.0.2.15"
    assert mod.addr4(bytes([10, 0, 2, 15])) is a
    assert type(pickle.loads(pickle.dumps(a))) is IPv4Address
    assert a + 1 == IPv4Address("10.0.2.16")
    for i in range(mod._ADDRS_MAX + 10):  # a flood of sources cycles the cache
        mod.addr4(i.to_bytes(4, "big"))
    assert len(mod._ADDRS) <= mod._ADDRS_MAX
