"""DHCPv4 wire format: byte vectors checked against scapy, emit holes, fuzzing."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from netstack.wire import Error
from netstack.wire.dhcpv4 import (
    BOOTP_MIN_LEN,
    CLIENT_PORT,
    HEADER_LEN,
    MAGIC_COOKIE,
    OPTIONS,
    SERVER_PORT,
    DhcpPacket,
    DhcpRepr,
    MessageType,
    OpCode,
)
from netstack.wire.ethernet import EthernetAddress

MAC = EthernetAddress(bytes.fromhex("525400123456"))


def _bootp(op_to_flags: str, addrs: str) -> str:
    """op htype hlen hops / xid / secs flags, ciaddr yiaddr siaddr giaddr, chaddr, sname+file."""
    return op_to_flags + addrs + "525400123456" + "00" * 10 + "00" * 192 + "63825363"


# A client DISCOVER (scapy: BOOTP(op=1, xid=0x3903F326, secs=3, flags="B", chaddr=MAC)/DHCP(...)).
DISCOVER_OPTIONS = (
    "350101"  # message type DISCOVER
    "3d07 01525400123456"  # client identifier
    "3204 0a00020f"  # requested 10.0.2.15
    "0c05 6775657374"  # hostname "guest"
    "3706 0103060f3336"  # parameter request list
    "3902 05dc"  # max size 1500
    "3c05 6c696e7578"  # vendor class "linux" (kept verbatim)
    "ff"
)
DISCOVER = bytes.fromhex(
    _bootp("01010600 3903f326 0003 8000", "00000000 00000000 00000000 00000000") + DISCOVER_OPTIONS
)

# A server OFFER.
OFFER_OPTIONS = (
    "350102"  # message type OFFER
    "3604 0a000202"  # server identifier
    "3304 00015180"  # lease 86400
    "3a04 0000a8c0"  # renew 43200
    "3b04 00012750"  # rebind 75600
    "0104 ffffff00"  # subnet mask
    "0304 0a000202"  # router
    "0608 0a000203 01010101"  # DNS servers
    "0f0d 76686f73746e65742e74657374"  # domain name "vhostnet.test"
    "ff"
)
OFFER = bytes.fromhex(
    _bootp("02010600 3903f326 0000 0000", "00000000 0a00020f 0a000202 00000000") + OFFER_OPTIONS
)

OFFER_REPR = DhcpRepr(
    message_type=MessageType.OFFER,
    transaction_id=0x3903F326,
    client_hardware_address=MAC,
    your_ip=IPv4Address("10.0.2.15"),
    server_ip=IPv4Address("10.0.2.2"),
    server_identifier=IPv4Address("10.0.2.2"),
    lease_duration=86400,
    renew_duration=43200,
    rebind_duration=75600,
    subnet_mask=IPv4Address("255.255.255.0"),
    router=IPv4Address("10.0.2.2"),
    dns_servers=(IPv4Address("10.0.2.3"), IPv4Address("1.1.1.1")),
    domain_name="vhostnet.test",
)


def emit(r: DhcpRepr) -> bytes:
    """Emit into buffers pre-filled with 0xA5 and 0x00: equal results prove every byte of
    `buffer_len()` was written; bytes beyond it must stay untouched."""
    n = r.buffer_len()
    out = []
    for fill in (0xA5, 0x00):
        buf = bytearray([fill]) * (n + 8)
        r.emit(DhcpPacket(buf))
        assert buf[n:] == bytearray([fill]) * 8
        out.append(bytes(buf[:n]))
    assert out[0] == out[1]
    return out[0]


def parse(data: bytes) -> DhcpRepr:
    return DhcpRepr.parse(DhcpPacket.new_checked(data))


def scapy_options(data: bytes) -> dict:
    pkt = BOOTP(data)
    return {o[0]: o[1:] for o in pkt[DHCP].options if isinstance(o, tuple)}


# -- vectors against scapy ---------------------------------------------------------------------


def test_ports():
    assert (SERVER_PORT, CLIENT_PORT) == (67, 68)


def test_vectors_match_scapy_build():
    discover = BOOTP(op=1, xid=0x3903F326, secs=3, flags="B", chaddr=bytes(MAC)) / DHCP(
        options=[
            ("message-type", "discover"),
            ("client_id", b"\x01" + bytes(MAC)),
            ("requested_addr", "10.0.2.15"),
            ("hostname", b"guest"),
            ("param_req_list", [1, 3, 6, 15, 51, 54]),
            ("max_dhcp_size", 1500),
            ("vendor_class_id", b"linux"),
            "end",
        ]
    )
    offer = BOOTP(
        op=2, xid=0x3903F326, yiaddr="10.0.2.15", siaddr="10.0.2.2", chaddr=bytes(MAC)
    ) / DHCP(
        options=[
            ("message-type", "offer"),
            ("server_id", "10.0.2.2"),
            ("lease_time", 86400),
            ("renewal_time", 43200),
            ("rebinding_time", 75600),
            ("subnet_mask", "255.255.255.0"),
            ("router", "10.0.2.2"),
            ("name_server", "10.0.2.3", "1.1.1.1"),
            ("domain", b"vhostnet.test"),
            "end",
        ]
    )
    assert bytes(discover) == DISCOVER
    assert bytes(offer) == OFFER


def test_packet_fields_discover():
    p = DhcpPacket.new_checked(DISCOVER)
    assert (p.op, p.htype, p.hlen, p.hops) == (1, 1, 6, 0)
    assert p.xid == 0x3903F326
    assert p.secs == 3
    assert p.flags == 0x8000 and p.broadcast
    assert p.ciaddr == p.yiaddr == p.siaddr == p.giaddr == IPv4Address(0)
    assert bytes(p.chaddr) == bytes(MAC) + bytes(10)
    assert p.client_hardware_address == MAC
    assert p.magic_number == MAGIC_COOKIE
    assert [c for c, _ in p.options()] == [53, 61, 50, 12, 55, 57, 60]


def test_parse_discover():
    r = parse(DISCOVER)
    assert r == DhcpRepr(
        message_type=MessageType.DISCOVER,
        transaction_id=0x3903F326,
        client_hardware_address=MAC,
        secs=3,
        broadcast=True,
        requested_ip=IPv4Address("10.0.2.15"),
        client_identifier=b"\x01" + bytes(MAC),
        hostname="guest",
        parameter_request_list=bytes([1, 3, 6, 15, 51, 54]),
        max_size=1500,
        additional_options=((60, b"linux"),),
    )
    assert r.message_type.opcode == OpCode.REQUEST


def test_parse_offer():
    assert parse(OFFER) == OFFER_REPR
    assert OFFER_REPR.message_type.opcode == OpCode.REPLY


def test_emit_offer_scapy_agrees():
    data = emit(OFFER_REPR)
    assert data == OFFER  # same options in the same order as the vector
    pkt = BOOTP(data)
    assert pkt.op == 2 and pkt.htype == 1 and pkt.hlen == 6 and pkt.hops == 0
    assert pkt.xid == 0x3903F326 and pkt.secs == 0 and int(pkt.flags) == 0
    assert (pkt.ciaddr, pkt.yiaddr, pkt.siaddr, pkt.giaddr) == (
        "0.0.0.0", "10.0.2.15", "10.0.2.2", "0.0.0.0",
    )
    assert pkt.chaddr == bytes(MAC) + bytes(10)
    assert pkt.sname == bytes(64) and pkt.file == bytes(128)
    opts = scapy_options(data)
    assert opts["message-type"] == (2,)
    assert opts["server_id"] == ("10.0.2.2",)
    assert opts["lease_time"] == (86400,)
    assert opts["renewal_time"] == (43200,)
    assert opts["rebinding_time"] == (75600,)
    assert opts["subnet_mask"] == ("255.255.255.0",)
    assert opts["router"] == ("10.0.2.2",)
    assert opts["name_server"] == ("10.0.2.3", "1.1.1.1")
    assert opts["domain"] == (b"vhostnet.test",)
    # END then zero padding to the BOOTP minimum.
    assert "end" in BOOTP(data)[DHCP].options


def test_emit_discover_scapy_agrees():
    r = parse(DISCOVER)
    data = emit(r)
    pkt = BOOTP(data)
    assert pkt.op == 1 and pkt.xid == 0x3903F326 and pkt.secs == 3 and int(pkt.flags) == 0x8000
    opts = scapy_options(data)
    assert opts["message-type"] == (1,)
    assert opts["client_id"] == (b"\x01" + bytes(MAC),)
    assert opts["requested_addr"] == ("10.0.2.15",)
    assert opts["hostname"] == (b"guest",)
    assert opts["param_req_list"] == ([1, 3, 6, 15, 51, 54],)
    assert opts["max_dhcp_size"] == (1500,)
    assert opts["vendor_class_id"] == (b"linux",)
    assert parse(data) == r


def test_emit_message_type_first_and_end_present():
    data = emit(OFFER_REPR)
    assert data[OPTIONS : OPTIONS + 3] == b"\x35\x01\x02"
    p = DhcpPacket(data)
    assert [c for c, _ in p.options()][0] == 53


def test_buffer_len_exact_beyond_minimum():
    r = DhcpRepr(
        MessageType.ACK, 1, MAC, additional_options=((43, bytes(range(200))), (77, b"x" * 100))
    )
    data = emit(r)
    assert len(data) == r.buffer_len() == HEADER_LEN + 3 + 202 + 102 + 1
    assert data[-1] == 0xFF
    assert parse(data) == r


def test_long_option_split_and_concatenated():
    """RFC 3396: an option over 255 bytes is split into several TLVs and joined on parse."""
    r = DhcpRepr(MessageType.ACK, 7, MAC, client_identifier=bytes(range(256)) * 2)
    data = emit(r)
    codes = [c for c, _ in DhcpPacket(data).options()]
    assert codes.count(61) == 3
    assert parse(data) == r


def test_empty_text_option_round_trip():
    r = DhcpRepr(MessageType.REQUEST, 7, MAC, hostname="", message="")
    assert parse(emit(r)) == r


# -- malformed input ----------------------------------------------------------------------------


def _with_options(options: bytes, base: bytes = DISCOVER) -> bytes:
    return base[:OPTIONS] + options


def test_short_header():
    for n in range(HEADER_LEN):
        with pytest.raises(Error):
            parse(DISCOVER[:n])


def test_bad_hardware_type_length_and_op():
    for offset, value in ((1, 6), (2, 16), (0, 0), (0, 3)):
        data = bytearray(DISCOVER)
        data[offset] = value
        with pytest.raises(Error):
            parse(bytes(data))


def test_no_cookie_is_plain_bootp_and_its_vendor_area_is_not_options():
    for offset, value in ((236, 0), (239, 0x62)):
        data = bytearray(DISCOVER)
        data[offset] = value
        r = parse(bytes(data))
        assert r.message_type is None and r.opcode == OpCode.REQUEST
        assert r.additional_options == () and r.client_identifier is None
        assert r.transaction_id == 0x3903F326


def test_bootp_with_rfc1497_vendor_extensions_round_trips_through_scapy():
    """A BOOTP reply as a server sends it: no message type, the cookie and RFC 1497
    options (subnet mask, router), the boot file in `file` and in option 67."""
    reply = DhcpRepr(None, 0x1234, MAC, op=OpCode.REPLY, your_ip=IPv4Address("10.0.2.15"),
                     server_ip=IPv4Address("10.0.2.2"), subnet_mask=IPv4Address("255.255.255.0"),
                     router=IPv4Address("10.0.2.2"), server_name="10.0.2.2",
                     boot_file="pxelinux.0", additional_options=((67, b"pxelinux.0"),))
    buf = bytearray(reply.buffer_len())
    reply.emit(DhcpPacket(buf))
    pkt = BOOTP(bytes(buf))
    assert pkt.op == 2 and pkt.file.rstrip(b"\0") == b"pxelinux.0"
    assert pkt.sname.rstrip(b"\0") == b"10.0.2.2" and pkt.siaddr == "10.0.2.2"
    opts = dict(o for o in pkt[DHCP].options if isinstance(o, tuple))
    assert "message-type" not in opts and opts["router"] == "10.0.2.2"
    assert parse(bytes(buf)) == reply
    with pytest.raises(ValueError):
        DhcpRepr(None, 1, MAC)  # BOOTP without its op
    with pytest.raises(ValueError):
        DhcpRepr(MessageType.OFFER, 1, MAC, boot_file="x" * 128)  # past the file field


def test_header_text_fields_never_fail():
    data = bytearray(DISCOVER)
    data[108:112] = b"\xff\xfeab"
    data[44:108] = b"s" * 64  # no NUL at all
    r = parse(bytes(data))
    assert r.boot_file == "??ab" and r.server_name == "s" * 63


@pytest.mark.parametrize(
    "options",
    [
        "3501 00ff",  # message type 0
        "3501 09ff",  # message type 9
        "3502 0101ff",  # message type of 2 bytes
        "3501 01 3203 0a0002ff",  # requested address of 3 bytes
        "3501 01 3605 0a00020201ff",  # server identifier of 5 bytes
        "3501 01 0300ff",  # empty router list
        "3501 01 0606 0a0002030101ff",  # DNS list not a multiple of 4
        "3501 01 3303 000151ff",  # lease of 3 bytes
        "3501 01 3901 05ff",  # max size of 1 byte
        "3501 01 32",  # option without its length byte
        "3501 01 3204 0a00",  # option running past the end
    ],
)
def test_malformed_options(options):
    with pytest.raises(Error):
        parse(_with_options(bytes.fromhex(options)))


def test_options_truncated_at_every_length():
    """Cut inside a TLV → Error; cut at a TLV boundary → a valid, shorter option list
    (cut before the message type: plain BOOTP)."""
    options = bytes.fromhex(DISCOVER_OPTIONS)
    boundaries = {0}
    i = 0
    while options[i] != 0xFF:
        i += 2 + options[i + 1]
        boundaries.add(i)
    for cut in range(len(options)):
        data = _with_options(options[:cut])
        if cut in boundaries:
            r = parse(data)
            assert r.message_type == (MessageType.DISCOVER if cut >= 3 else None)
        else:
            with pytest.raises(Error):
                parse(data)


def test_pad_skipped_missing_end_tolerated_and_trailing_bytes_ignored():
    r = parse(_with_options(bytes.fromhex("00 00 3501 03 00 3204 0a00020f")))
    assert r.message_type == MessageType.REQUEST and r.requested_ip == IPv4Address("10.0.2.15")
    r = parse(_with_options(bytes.fromhex("3501 03 ff 32")))  # junk after END
    assert r.requested_ip is None


def test_hostname_invalid_utf8_and_nul_terminator():
    r = parse(_with_options(bytes.fromhex("3501 01 0c04 ff fe 41 00 ff")))
    assert r.hostname == "\ufffd\ufffdA"


def test_overload_option_dropped():
    r = parse(_with_options(bytes.fromhex("3501 01 3401 03 ff")))
    assert r.additional_options == ()


def test_emit_rejects_pad_and_end_codes():
    for code in (0, 255, 256):
        with pytest.raises(ValueError):
            DhcpRepr(MessageType.ACK, 1, MAC, additional_options=((code, b""),)).buffer_len()


def test_emit_into_short_buffer():
    with pytest.raises(ValueError):
        OFFER_REPR.emit(DhcpPacket(bytearray(BOOTP_MIN_LEN - 1)))


# -- Hypothesis ---------------------------------------------------------------------------------


def parse_or_error(data: bytes) -> None:
    try:
        parse(data)
    except Error:
        pass


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_error(data):
    parse_or_error(data)


@given(st.binary(max_size=120))
def test_any_options_parse_or_error(options):
    parse_or_error(_with_options(options))


@given(
    st.sampled_from([DISCOVER, OFFER]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 400),
)
def test_mutated_vectors_parse_or_error(base, flips, cut):
    data = bytearray(base)
    for offset, value in flips:
        data[offset % len(data)] = value
    parse_or_error(bytes(data[: len(data) - cut % 80]))
    parse_or_error(bytes(data[:cut]))


ips = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
text = st.text(st.characters(min_codepoint=1, max_codepoint=0x7E), max_size=40)
u32 = st.integers(0, 2**32 - 1)


@st.composite
def dhcp_reprs(draw):
    return DhcpRepr(
        message_type=draw(st.sampled_from(MessageType)),
        transaction_id=draw(u32),
        client_hardware_address=EthernetAddress(draw(st.binary(min_size=6, max_size=6))),
        secs=draw(st.integers(0, 0xFFFF)),
        broadcast=draw(st.booleans()),
        client_ip=draw(ips),
        your_ip=draw(ips),
        server_ip=draw(ips),
        relay_agent_ip=draw(ips),
        requested_ip=draw(st.none() | ips),
        server_identifier=draw(st.none() | ips),
        subnet_mask=draw(st.none() | ips),
        router=draw(st.none() | ips),
        dns_servers=tuple(draw(st.lists(ips, min_size=0, max_size=4))),
        lease_duration=draw(st.none() | u32),
        renew_duration=draw(st.none() | u32),
        rebind_duration=draw(st.none() | u32),
        parameter_request_list=draw(st.none() | st.binary(max_size=20)),
        client_identifier=draw(st.none() | st.binary(max_size=300)),
        hostname=draw(st.none() | text),
        domain_name=draw(st.none() | text),
        max_size=draw(st.none() | st.integers(0, 0xFFFF)),
        message=draw(st.none() | text),
        additional_options=tuple(
            draw(
                st.dictionaries(
                    st.integers(1, 254).filter(
                        lambda c: c not in {1, 3, 6, 12, 15, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 61}
                    ),
                    st.binary(max_size=40),
                    max_size=4,
                )
            ).items()
        ),
    )


@settings(max_examples=200)
@given(dhcp_reprs())
def test_emit_parse_round_trip(r):
    data = emit(r)
    assert len(data) >= BOOTP_MIN_LEN
    assert parse(data) == r
