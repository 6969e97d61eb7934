"""DHCPv6 wire format: byte vectors checked against scapy both ways, malformed options,
truncations, fuzzing."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp6 import (
    DHCP6,
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_InfoRequest,
    DHCP6_RelayForward,
    DHCP6_Reply,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptInfoRefreshTime,
    DHCP6OptOptReq,
    DHCP6OptRapidCommit,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)

from netstack.wire import Error
from netstack.wire.dhcpv6 import (
    ALL_DHCP_RELAY_AGENTS_AND_SERVERS,
    CLIENT_PORT,
    MAX_OPTIONS,
    SERVER_PORT,
    Dhcpv6Packet,
    Dhcpv6Repr,
    MessageType,
    Option,
    StatusCode,
    duid_ll,
)
from netstack.wire.ethernet import EthernetAddress

CLIENT_MAC = EthernetAddress(bytes.fromhex("525400123456"))
SERVER_MAC = EthernetAddress(bytes.fromhex("525400000002"))
CLIENT_DUID = bytes.fromhex("00030001525400123456")
SERVER_DUID = bytes.fromhex("00030001525400000002")

# scapy: DHCP6_InfoRequest(trid=0x123456) / ClientId(DUID_LL) / OptReq([23, 24, 32]) /
# ElapsedTime(5)
INFO_REQUEST = bytes.fromhex(
    "0b123456"
    "0001000a 00030001525400123456"  # CLIENTID, DUID-LL
    "00060006 0017 0018 0020"  # ORO: DNS servers, domain list, information refresh time
    "00080002 0005"  # elapsed time 50 ms
)
INFO_REQUEST_REPR = Dhcpv6Repr(
    msg_type=MessageType.INFORMATION_REQUEST,
    transaction_id=0x123456,
    client_id=CLIENT_DUID,
    requested_options=(23, 24, 32),
    elapsed_time=5,
)

# A REPLY in our emit order.
REPLY = bytes.fromhex(
    "07123456"
    "0001000a 00030001525400123456"  # CLIENTID
    "0002000a 00030001525400000002"  # SERVERID
    "000d0004 0000 6f6b"  # status Success "ok"
    "00170020 fd000000000000000000000000000003 20014860486000000000000000008888"  # DNS
    "00180017 08 76686f73746e6574 00 07 6578616d706c65 03 636f6d 00"  # vhostnet, example.com
    "00200004 00015180"  # information refresh time 86400
)
REPLY_REPR = Dhcpv6Repr(
    msg_type=MessageType.REPLY,
    transaction_id=0x123456,
    client_id=CLIENT_DUID,
    server_id=SERVER_DUID,
    status=(StatusCode.SUCCESS, "ok"),
    dns_servers=(IPv6Address("fd00::3"), IPv6Address("2001:4860:4860::8888")),
    domain_list=("vhostnet", "example.com"),
    information_refresh_time=86400,
)

# A SOLICIT with two IA_NAs, one holding an address hint, and rapid commit.
SOLICIT = bytes.fromhex(
    "01abcdef"
    "0001000a 00030001525400123456"
    "00030028 00000007 00000e10 00001518"  # IA_NA 7, T1 3600, T2 5400
    "00050018 fd000000000000000000000000000015 00001c20 00002a30"  # IAADDR hint
    "0003000c 00000008 00000000 00000000"  # IA_NA 8
    "000e0000"  # rapid commit (kept verbatim)
)

# An ADVERTISE saying "no addresses", as our server sends it.
ADVERTISE_REPR = Dhcpv6Repr(
    msg_type=MessageType.ADVERTISE,
    transaction_id=0xABCDEF,
    client_id=CLIENT_DUID,
    server_id=SERVER_DUID,
    status=(StatusCode.NO_ADDRS_AVAIL, "no addresses"),
    ia_na_iaids=(7, 8),
    ia_na_status=(StatusCode.NO_ADDRS_AVAIL, "no addresses"),
    other_options=((Option.SOL_MAX_RT, (3600).to_bytes(4, "big")),),
)


def parse(data: bytes) -> Dhcpv6Repr:
    return Dhcpv6Repr.parse(Dhcpv6Packet.new_checked(data))


def emit(r: Dhcpv6Repr) -> bytes:
    """Emit into buffers pre-filled with 0xA5 and 0x00: equal results prove every byte of
    `buffer_len()` was written; bytes beyond it must stay untouched."""
    n = r.buffer_len()
    out = []
    for fill in (0xA5, 0x00):
        buf = bytearray([fill]) * (n + 8)
        r.emit(Dhcpv6Packet(buf))
        assert buf[n:] == bytearray([fill]) * 8
        out.append(bytes(buf[:n]))
    assert out[0] == out[1]
    return out[0]


def tlv(code: int, data: bytes) -> bytes:
    return code.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def with_options(*options: bytes, msg_type: int = 11) -> bytes:
    return bytes((msg_type, 0, 0, 1)) + b"".join(options)


# -- constants and DUID ------------------------------------------------------------------------


def test_constants():
    assert (CLIENT_PORT, SERVER_PORT) == (546, 547)
    assert ALL_DHCP_RELAY_AGENTS_AND_SERVERS == IPv6Address("ff02::1:2")
    assert (MessageType.INFORMATION_REQUEST, MessageType.RELAY_REPL) == (11, 13)
    assert (Option.DNS_SERVERS, Option.DOMAIN_LIST, Option.SOL_MAX_RT) == (23, 24, 82)


def test_duid_ll_matches_scapy():
    assert duid_ll(CLIENT_MAC) == CLIENT_DUID == bytes(DUID_LL(lladdr=str(CLIENT_MAC)))


# -- vectors against scapy ---------------------------------------------------------------------


def test_info_request_vector_is_scapys():
    pkt = (DHCP6_InfoRequest(trid=0x123456)
           / DHCP6OptClientId(duid=DUID_LL(lladdr=str(CLIENT_MAC)))
           / DHCP6OptOptReq(reqopts=[23, 24, 32])
           / DHCP6OptElapsedTime(elapsedtime=5))
    assert bytes(pkt) == INFO_REQUEST
    assert parse(INFO_REQUEST) == INFO_REQUEST_REPR
    assert emit(INFO_REQUEST_REPR) == INFO_REQUEST


def test_reply_vector_read_by_scapy():
    assert emit(REPLY_REPR) == REPLY
    assert parse(REPLY) == REPLY_REPR
    pkt = DHCP6_Reply(REPLY)
    assert pkt.trid == 0x123456
    assert pkt[DHCP6OptClientId].duid.lladdr == str(CLIENT_MAC)
    assert pkt[DHCP6OptServerId].duid.lladdr == str(SERVER_MAC)
    assert pkt[DHCP6OptDNSServers].dnsservers == ["fd00::3", "2001:4860:4860::8888"]
    assert pkt[DHCP6OptDNSDomains].dnsdomains == ["vhostnet.", "example.com."]
    assert pkt[DHCP6OptInfoRefreshTime].reftime == 86400
    assert (pkt[DHCP6OptStatusCode].statuscode, pkt[DHCP6OptStatusCode].statusmsg) == (0, b"ok")


def test_reply_built_by_scapy_parses():
    pkt = (DHCP6_Reply(trid=0x123456)
           / DHCP6OptServerId(duid=DUID_LL(lladdr=str(SERVER_MAC)))
           / DHCP6OptDNSServers(dnsservers=["fd00::3"])
           / DHCP6OptDNSDomains(dnsdomains=["vhostnet.", "example.com."])
           / DHCP6OptInfoRefreshTime(reftime=3600))
    r = parse(bytes(pkt))
    assert (r.msg_type, r.server_id, r.client_id) == (MessageType.REPLY, SERVER_DUID, None)
    assert r.dns_servers == (IPv6Address("fd00::3"),)
    assert r.domain_list == ("vhostnet", "example.com")
    assert r.information_refresh_time == 3600


def test_solicit_with_ia_na_and_address_hint():
    pkt = (DHCP6_Solicit(trid=0xABCDEF)
           / DHCP6OptClientId(duid=DUID_LL(lladdr=str(CLIENT_MAC)))
           / DHCP6OptIA_NA(iaid=7, T1=3600, T2=5400, ianaopts=[
               DHCP6OptIAAddress(addr="fd00::15", preflft=7200, validlft=10800)])
           / DHCP6OptIA_NA(iaid=8, T1=0, T2=0)
           / DHCP6OptRapidCommit())
    assert bytes(pkt) == SOLICIT
    r = parse(SOLICIT)
    assert r.msg_type == MessageType.SOLICIT and r.transaction_id == 0xABCDEF
    assert r.client_id == CLIENT_DUID
    assert r.ia_na_iaids == (7, 8) and r.ia_na_status is None
    assert r.other_options == ((Option.RAPID_COMMIT, b""),)


def test_advertise_no_addrs_read_by_scapy():
    data = emit(ADVERTISE_REPR)
    assert parse(data) == ADVERTISE_REPR
    pkt = DHCP6_Advertise(data)
    assert pkt[DHCP6OptServerId].duid.lladdr == str(SERVER_MAC)
    top = pkt.getlayer(DHCP6OptStatusCode, nb=3)  # after the two encapsulated ones
    assert (top.statuscode, top.statusmsg) == (2, b"no addresses")
    ias = [pkt.getlayer(DHCP6OptIA_NA, nb=i) for i in (1, 2)]
    assert [(ia.iaid, ia.T1, ia.T2) for ia in ias] == [(7, 0, 0), (8, 0, 0)]
    for ia in ias:
        inner = ia.ianaopts[0]
        assert isinstance(inner, DHCP6OptStatusCode) and inner.statuscode == 2


def test_unknown_type_and_options_are_kept():
    data = with_options(tlv(0x1234, b"abc"), tlv(0x1234, b""), msg_type=200)
    r = parse(data)
    assert r.msg_type == 200 and r.other_options == ((0x1234, b"abc"), (0x1234, b""))
    assert emit(r) == data


def test_empty_lists_parse():
    r = parse(with_options(tlv(6, b""), tlv(23, b""), tlv(24, b"")))
    assert (r.requested_options, r.dns_servers, r.domain_list) == ((), (), ())


def test_odd_names_round_trip():
    raw = b"\x03a.b\x04x\\ y\x00\x00"  # "a.b" as one label, "x\ y", then the root
    r = parse(with_options(tlv(24, raw)))
    assert r.domain_list == ("a\\.b.x\\\\\\032y", ".")
    assert emit(r) == with_options(tlv(24, raw))


# -- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"", b"\x0b", b"\x0b\x00\x00",  # no whole header
    with_options(b"\x00"),  # option header cut
    with_options(b"\x00\x08\x00"),
    with_options(b"\x00\x08\x00\x02\x00"),  # data cut
    with_options(tlv(1, b"\x00\x03")),  # DUID too short
    with_options(tlv(1, bytes(131))),  # DUID too long
    with_options(tlv(2, b"")),
    with_options(tlv(1, CLIENT_DUID), tlv(1, CLIENT_DUID)),  # CLIENTID twice
    with_options(tlv(8, b"\x00\x01"), tlv(8, b"\x00\x01")),  # elapsed time twice
    with_options(tlv(6, b"\x00\x17\x00")),  # ORO of odd length
    with_options(tlv(8, b"\x00")),  # elapsed time of 1 byte
    with_options(tlv(8, b"\x00\x00\x00")),
    with_options(tlv(32, b"\x00\x00\x00")),
    with_options(tlv(13, b"\x00")),  # status without its code
    with_options(tlv(23, bytes(15))),  # DNS servers not a multiple of 16
    with_options(tlv(24, b"\x03abc")),  # name without its root label
    with_options(tlv(24, b"\x05ab")),  # label past the option end
    with_options(tlv(24, b"\x01a\x00\xc0\x00")),  # compression pointer
    with_options(tlv(24, b"\x41" + bytes(65))),  # extended label type
    with_options(tlv(24, (b"\x3f" + b"a" * 63) * 4 + b"\x00")),  # name of 257 bytes
    with_options(tlv(3, bytes(11))),  # IA_NA shorter than 12
    with_options(tlv(3, bytes(12) + b"\x00\x0d\x00")),  # IA_NA sub-option cut
    with_options(tlv(3, bytes(12) + tlv(13, b"\x00"))),  # bad status inside an IA_NA
    with_options(tlv(3, bytes(12) + tlv(99, b"") * (MAX_OPTIONS + 1))),
    with_options(*[tlv(99, b"")] * (MAX_OPTIONS + 1)),  # too many options
])
def test_malformed_raises_error(data):
    with pytest.raises(Error):
        parse(data)


def test_relay_messages_are_not_supported():
    pkt = DHCP6_RelayForward(linkaddr="fd00::1", peeraddr="fe80::1")
    for msg_type in (12, 13):
        with pytest.raises(Error, match="relay not supported"):
            parse(bytes((msg_type,)) + bytes(pkt)[1:])
    with pytest.raises(ValueError):
        Dhcpv6Repr(MessageType.RELAY_FORW, 1).to_bytes()


def test_limits_accepted():
    r = parse(with_options(*[tlv(99, b"")] * MAX_OPTIONS))
    assert len(r.other_options) == MAX_OPTIONS
    assert parse(with_options(tlv(1, bytes(130)))).client_id == bytes(130)
    name = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"a" * 61 + b"\x00"  # exactly 255 bytes
    assert parse(with_options(tlv(24, name))).domain_list[0].count(".") == 3


def test_every_truncation_parses_or_raises():
    for base in (INFO_REQUEST, REPLY, SOLICIT, emit(ADVERTISE_REPR)):
        for n in range(len(base)):
            try:
                parse(base[:n])
            except Error:
                continue
            # Only cuts at an option boundary parse.
            assert n >= 4


def test_status_message_with_bad_utf8_is_replaced():
    r = parse(with_options(tlv(13, b"\x00\x01\xff")))
    assert r.status == (StatusCode.UNSPEC_FAIL, "\ufffd")


@pytest.mark.parametrize("bad", [
    Dhcpv6Repr(11, 1 << 24),
    Dhcpv6Repr(256, 1),
    Dhcpv6Repr(11, 1, client_id=b"\x00\x03"),
    Dhcpv6Repr(11, 1, server_id=bytes(131)),
    Dhcpv6Repr(11, 1, elapsed_time=0x10000),
    Dhcpv6Repr(11, 1, requested_options=(0x10000,)),
    Dhcpv6Repr(11, 1, ia_na_iaids=(1 << 32,)),
    Dhcpv6Repr(11, 1, information_refresh_time=-1),
    Dhcpv6Repr(11, 1, status=(0x10000, "")),
    Dhcpv6Repr(11, 1, domain_list=("a..b",)),
    Dhcpv6Repr(11, 1, other_options=((Option.CLIENTID, CLIENT_DUID),)),
    Dhcpv6Repr(11, 1, other_options=((0x10000, b""),)),
    Dhcpv6Repr(11, 1, other_options=((99, bytes(0x10000)),)),
])
def test_emit_rejects_what_does_not_fit(bad):
    with pytest.raises(ValueError):
        bad.buffer_len()


def test_emit_into_short_buffer():
    with pytest.raises(ValueError):
        REPLY_REPR.emit(Dhcpv6Packet(bytearray(len(REPLY) - 1)))


def test_scapy_reads_generic_dhcp6():
    assert DHCP6(emit(INFO_REQUEST_REPR)).msgtype == 11


# -- Hypothesis ---------------------------------------------------------------------------------


def parse_or_error(data: bytes) -> None:
    try:
        parse(data)
    except Error:
        pass


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_error(data):
    parse_or_error(data)


@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 6, 8, 13, 23, 24, 32, 99]),
                          st.binary(max_size=40)), max_size=6))
def test_any_option_data_parses_or_errors(options):
    parse_or_error(with_options(*[tlv(c, d) for c, d in options]))


@given(
    st.sampled_from([INFO_REQUEST, REPLY, SOLICIT]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 200),
)
def test_mutated_vectors_parse_or_error(base, flips, cut):
    data = bytearray(base)
    for offset, value in flips:
        data[offset % len(data)] = value
    parse_or_error(bytes(data[: len(data) - cut % 40]))
    parse_or_error(bytes(data[:cut]))


label = st.binary(min_size=1, max_size=20)
names = st.lists(label, min_size=1, max_size=4).map(lambda ls: ".".join(
    "".join(f"\\{c:03d}" for c in lab) for lab in ls))
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
statuses = st.none() | st.tuples(u16, st.text(max_size=20))


@st.composite
def dhcpv6_reprs(draw):
    iaids = tuple(draw(st.lists(u32, max_size=3)))
    return Dhcpv6Repr(
        msg_type=draw(st.integers(0, 255).filter(lambda t: t not in (12, 13))),
        transaction_id=draw(st.integers(0, 0xFFFFFF)),
        client_id=draw(st.none() | st.binary(min_size=3, max_size=130)),
        server_id=draw(st.none() | st.binary(min_size=3, max_size=130)),
        requested_options=tuple(draw(st.lists(u16, max_size=6))),
        elapsed_time=draw(st.none() | u16),
        dns_servers=tuple(draw(st.lists(st.builds(IPv6Address, st.integers(0, 2**128 - 1)),
                                        max_size=3))),
        domain_list=tuple(draw(st.lists(names, max_size=3))),
        information_refresh_time=draw(st.none() | u32),
        status=draw(statuses),
        ia_na_iaids=iaids,
        ia_na_status=draw(statuses) if iaids else None,
        other_options=tuple(draw(st.lists(st.tuples(
            u16.filter(lambda c: c not in {1, 2, 3, 6, 8, 13, 23, 24, 32}),
            st.binary(max_size=20)), max_size=4))),
    )


def _normal(r: Dhcpv6Repr) -> Dhcpv6Repr:
    """What parse gives back: escaped names in canonical form."""
    from netstack.wire.dns import labels_to_name, name_to_labels
    return Dhcpv6Repr(**{**{f: getattr(r, f) for f in Dhcpv6Repr.__slots__},
                         "domain_list": tuple(labels_to_name(name_to_labels(n))
                                              for n in r.domain_list)})


@settings(max_examples=300)
@given(dhcpv6_reprs())
def test_emit_parse_round_trip(r):
    data = emit(r)
    back = parse(data)
    assert back == _normal(r)
    assert emit(back) == data
    DHCP6(data)  # scapy takes it too
