"""Checksum/segmentation offload across the virtio_net_hdr, checked against scapy."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from vhostuser.features import (
    NET_HDR_F_NEEDS_CSUM,
    NET_HDR_GSO_NONE,
    NET_HDR_GSO_TCPV4,
    NET_HDR_GSO_TCPV6,
    Feature,
    bits,
)
from vhostuser.net import VirtioNetDevice
from vhostuser.offload import NET_HDR, BadOffload, _sum, from_guest, header_for_guest

V6_SRC, V6_DST = "fd00:10:0:2::2", "fd00:10:0:2:5054:ff:fe12:3456"
ETH = Ether(src="52:55:0a:00:02:02", dst="52:54:00:12:34:56")  # scapy would look up an IPv6 MAC


def tcp_frame(payload_len: int) -> bytearray:
    pkt = Ether() / IP(src="10.0.2.2", dst="10.0.2.15") / TCP(sport=80, dport=40000,
                                                              flags="PA") / (b"z" * payload_len)
    raw = bytearray(bytes(pkt))
    struct.pack_into("!H", raw, 14 + 20 + 16, 0)  # what the stack leaves with offload
    return raw


def complete(frame: bytearray, start: int, offset: int) -> None:
    """What the guest does with NEEDS_CSUM."""
    struct.pack_into("!H", frame, start + offset, (~_sum(memoryview(frame)[start:])) & 0xFFFF)


@pytest.mark.parametrize("size", [0, 1, 1460, 9000, 65000])
def test_partial_checksum_completed_by_guest_equals_scapy(size):
    frame = tcp_frame(size)
    hdr = header_for_guest(frame, 1500, guest_csum=True, guest_tso=True)
    flags, gso, hdr_len, gso_size, start, offset = NET_HDR.unpack(hdr)
    assert flags == NET_HDR_F_NEEDS_CSUM and (start, offset) == (34, 16)
    if size + 40 > 1500:
        assert (gso, gso_size, hdr_len) == (NET_HDR_GSO_TCPV4, 1460, 54)
    else:
        assert gso == NET_HDR_GSO_NONE
    complete(frame, start, offset)
    want = Ether(bytes(tcp_frame(size)))
    del want[TCP].chksum
    assert Ether(bytes(frame))[TCP].chksum == Ether(bytes(want))[TCP].chksum


def test_full_checksum_for_a_guest_without_guest_csum():
    frame = tcp_frame(3000)
    assert header_for_guest(frame, 1500, guest_csum=False, guest_tso=False) == bytes(10)
    want = Ether(bytes(tcp_frame(3000)))
    del want[TCP].chksum
    assert Ether(bytes(frame))[TCP].chksum == Ether(bytes(want))[TCP].chksum


def test_non_tcp_frames_pass_untouched():
    udp = bytearray(bytes(Ether() / IP() / UDP() / b"x"))
    before = bytes(udp)
    assert header_for_guest(udp, 1500, guest_csum=True, guest_tso=True) == bytes(10)
    assert bytes(udp) == before


def test_guest_partial_udp_checksum_is_completed():
    pkt = Ether() / IP(src="10.0.2.15", dst="10.0.2.3") / UDP(sport=5000, dport=53) / (b"q" * 33)
    good = Ether(bytes(pkt))[UDP].chksum
    raw = bytearray(bytes(pkt))
    # the guest's partial: the pseudo-header sum in the field
    src_dst = raw[26:34]
    struct.pack_into("!H", raw, 34 + 6, _sum(src_dst, 17 + 8 + 33))
    hdr = NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6)
    out = from_guest(memoryview(raw), hdr)
    assert Ether(bytes(out))[UDP].chksum == good


def test_guest_tcp_partial_is_passed_on_unverified():
    raw = tcp_frame(100)
    hdr = NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16)
    assert from_guest(raw, hdr) is raw


@pytest.mark.parametrize("start,offset", [(0, 16), (200, 16), (34, 400), (65535, 65535)])
def test_csum_start_outside_the_frame_is_refused(start, offset):
    """DPDK CVE-2024-11614: an unchecked csum_start wrote outside the packet."""
    raw = tcp_frame(100)
    hdr = NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, 0, 0, 0, start, offset)
    with pytest.raises(BadOffload):
        from_guest(raw, hdr)


# -- IPv6 ------------------------------------------------------------------------------

def tcp6_frame(payload_len: int, *ext) -> bytearray:
    """An IPv6/TCP frame as the stack leaves it with offload (checksum field 0); `ext`:
    extension headers between IPv6 and TCP."""
    l3 = IPv6(src=V6_SRC, dst=V6_DST)
    for h in ext:
        l3 = l3 / h
    pkt = ETH / l3 / TCP(sport=80, dport=40000, flags="PA",
                             options=[("NOP", None), ("NOP", None),
                                      ("Timestamp", (1, 2))]) / (b"z" * payload_len)
    raw = bytearray(bytes(pkt))
    at = len(raw) - payload_len - 32 + 16  # TCP header: 32 bytes with the timestamp
    struct.pack_into("!H", raw, at, 0)
    return raw


def scapy_tcp_checksum(frame) -> int:
    want = Ether(bytes(frame))
    del want[TCP].chksum
    return Ether(bytes(want))[TCP].chksum


@pytest.mark.parametrize("size", [0, 1, 1428, 1429, 9000, 65000])
def test_ipv6_partial_checksum_completed_by_guest_equals_scapy(size):
    frame = tcp6_frame(size)
    hdr = header_for_guest(frame, 1500, guest_csum=True, guest_tso=True, guest_tso6=True)
    flags, gso, hdr_len, gso_size, start, offset = NET_HDR.unpack(hdr)
    assert flags == NET_HDR_F_NEEDS_CSUM and (start, offset) == (54, 16)
    # pseudo-header sum: src, dst, upper-layer length (32 bits), next header 6
    ip = bytes(frame[22:54])
    assert struct.unpack_from("!H", frame, 70)[0] == _sum(ip, 6 + 32 + size)
    if 40 + 32 + size > 1500:
        assert (gso, gso_size, hdr_len) == (NET_HDR_GSO_TCPV6, 1500 - 40 - 32, 54 + 32)
    else:
        assert (gso, gso_size, hdr_len) == (NET_HDR_GSO_NONE, 0, 0)
    complete(frame, start, offset)
    assert Ether(bytes(frame))[TCP].chksum == scapy_tcp_checksum(tcp6_frame(size))


def test_ipv6_large_frame_without_guest_tso6_gets_no_gso():
    """GSO type follows the family: GUEST_TSO4 alone does not cover an IPv6 frame."""
    frame = tcp6_frame(9000)
    hdr = header_for_guest(frame, 1500, guest_csum=True, guest_tso=True, guest_tso6=False)
    assert NET_HDR.unpack(hdr)[1] == NET_HDR_GSO_NONE
    v4 = tcp_frame(9000)
    hdr = header_for_guest(v4, 1500, guest_csum=True, guest_tso=False, guest_tso6=True)
    assert NET_HDR.unpack(hdr)[1] == NET_HDR_GSO_NONE


def test_ipv6_full_checksum_for_a_guest_without_guest_csum():
    frame = tcp6_frame(3000)
    assert header_for_guest(frame, 1500, guest_csum=False, guest_tso=False) == bytes(10)
    assert Ether(bytes(frame))[TCP].chksum == scapy_tcp_checksum(tcp6_frame(3000))


@pytest.mark.parametrize("ext", [IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(m=0, offset=0, id=7)])
def test_ipv6_with_extension_headers_keeps_its_software_checksum(ext):
    """No offload past extension headers: the stack's own checksum goes out untouched."""
    pkt = ETH / IPv6(src=V6_SRC, dst=V6_DST) / ext / TCP(sport=80, dport=1) / (b"y" * 500)
    frame = bytearray(bytes(pkt))
    before = bytes(frame)
    assert header_for_guest(frame, 1500, guest_csum=True, guest_tso=True,
                            guest_tso6=True) == bytes(10)
    assert bytes(frame) == before


def test_ipv6_payload_length_not_matching_the_frame_gets_no_offload():
    frame = tcp6_frame(100)
    struct.pack_into("!H", frame, 18, 40)
    before = bytes(frame)
    assert header_for_guest(frame, 1500, guest_csum=True, guest_tso=True,
                            guest_tso6=True) == bytes(10)
    assert bytes(frame) == before


def test_ipv4_fragment_is_left_alone():
    frame = tcp_frame(100)
    struct.pack_into("!H", frame, 20, 0x2000)  # MF
    before = bytes(frame)
    assert header_for_guest(frame, 1500, guest_csum=True, guest_tso=True) == bytes(10)
    assert bytes(frame) == before


def udp6_partial(payload: bytes, *ext) -> tuple[bytearray, int, int]:
    """A guest's IPv6/UDP frame with NEEDS_CSUM: (frame, good checksum, csum_start)."""
    l3 = IPv6(src=V6_DST, dst="fd00:10:0:2::3")
    for h in ext:
        l3 = l3 / h
    pkt = ETH / l3 / UDP(sport=5000, dport=53) / payload
    good = Ether(bytes(pkt))[UDP].chksum
    raw = bytearray(bytes(pkt))
    start = len(raw) - len(payload) - 8
    struct.pack_into("!H", raw, start + 6, _sum(raw[22:54], 17 + 8 + len(payload)))
    return raw, good, start


@pytest.mark.parametrize("ext", [(), (IPv6ExtHdrDestOpt(),)])
def test_guest_partial_ipv6_udp_checksum_is_completed(ext):
    raw, good, start = udp6_partial(b"q" * 33, *ext)
    before = bytes(raw)
    out = from_guest(memoryview(raw), NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, 0, 0, 0, start, 6))
    assert Ether(bytes(out))[UDP].chksum == good
    assert bytes(raw) == before  # completed on a copy, guest memory untouched


def test_guest_ipv6_tcp_partial_is_passed_on_unverified():
    raw = tcp6_frame(100)
    hdr = NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 54, 16)
    assert from_guest(raw, hdr) is raw
    big = tcp6_frame(65000)  # a HOST_TSO6 segment: taken whole like a TCPV4 one
    hdr = NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_TCPV6, 86, 1428, 54, 16)
    assert from_guest(big, hdr) is big


def test_guest_ipv6_tcp_partial_past_extension_headers_is_completed():
    pkt = ETH / IPv6(src=V6_DST, dst=V6_SRC) / IPv6ExtHdrDestOpt() / \
        TCP(sport=1, dport=80) / (b"w" * 77)
    good = Ether(bytes(pkt))[TCP].chksum
    raw = bytearray(bytes(pkt))
    start = 14 + 40 + 8
    struct.pack_into("!H", raw, start + 16, _sum(raw[22:54], 6 + 20 + 77))
    out = from_guest(raw, NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, 0, 0, 0, start, 16))
    assert out is not raw and Ether(bytes(out))[TCP].chksum == good


@pytest.mark.parametrize("start,offset", [(0, 6), (13, 6), (200, 6), (62, 40), (65535, 65535)])
def test_ipv6_csum_start_outside_the_frame_is_refused(start, offset):
    raw, _, _ = udp6_partial(b"q" * 33)
    with pytest.raises(BadOffload):
        from_guest(raw, NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, 0, 0, 0, start, offset))


def _device(*features: Feature) -> VirtioNetDevice:
    dev = VirtioNetDevice(None, [None, None])  # type: ignore[arg-type]
    dev.set_features(bits(Feature.F_VERSION_1, *features))
    return dev


def test_capabilities_report_ipv6_offload_when_it_can_be_delivered():
    full = _device(Feature.NET_F_CSUM, Feature.NET_F_GUEST_CSUM, Feature.NET_F_GUEST_TSO4,
                   Feature.NET_F_GUEST_TSO6, Feature.NET_F_HOST_TSO4, Feature.NET_F_HOST_TSO6)
    caps = full.capabilities()
    assert caps.ipv6_offload and caps.tso_max and caps.checksum.tcp and caps.lro
    # GUEST_TSO4 without GUEST_TSO6: a 64 KiB IPv6 segment could not reach the guest
    v4_only = _device(Feature.NET_F_CSUM, Feature.NET_F_GUEST_CSUM, Feature.NET_F_GUEST_TSO4)
    assert not v4_only.capabilities().ipv6_offload
    csum_only = _device(Feature.NET_F_CSUM, Feature.NET_F_GUEST_CSUM)
    assert csum_only.capabilities().ipv6_offload and csum_only.capabilities().tso_max is None
    assert not _device().capabilities().ipv6_offload


def test_device_gives_guest_tso6_frames_gso_tcpv6():
    dev = _device(Feature.NET_F_GUEST_CSUM, Feature.NET_F_GUEST_TSO4, Feature.NET_F_GUEST_TSO6)
    frame = tcp6_frame(9000)
    assert NET_HDR.unpack(dev._guest_header(frame))[1] == NET_HDR_GSO_TCPV6


def test_rx_frame_gives_up_after_a_ring_of_empty_buffers():
    """A guest re-posting empty RX buffers as fast as we pop them must not keep one frame's
    buffer gathering going forever: after queue-size buffers it is a ring error."""
    from vhostuser.net import VirtioNetDevice

    class Chain:
        writable_len = 0
        head = 0
        writable = []

    class EndlessQueue:
        size = 8
        pops = 0

        def pop(self):
            self.pops += 1
            assert self.pops < 1000, "still popping"
            return Chain()

        def unpop(self, n):
            raise AssertionError("the ring is never empty here")

    dev = VirtioNetDevice(None, [None, None])  # type: ignore[arg-type]
    dev.mergeable = True
    errors = []
    dev.on_error = lambda q, msg: errors.append(msg)
    q = EndlessQueue()
    assert dev._write_rx(q, b"\0" * 12, b"x" * 100) is None
    assert q.pops == 8 and dev.drops["ring_error"] == 1 and "still short" in errors[0]
