"""Checksum/segmentation offload across the virtio_net_hdr, checked against scapy."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from vhostuser.features import NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_NONE, NET_HDR_GSO_TCPV4
from vhostuser.offload import NET_HDR, BadOffload, _sum, from_guest, header_for_guest


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
