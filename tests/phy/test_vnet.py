"""netstack.phy.vnet: the virtio_net_hdr of TAP frames, checked against scapy's checksums."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import Ether

from netstack.phy import vnet
from netstack.phy.vnet import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    HEADER,
    NO_OFFLOAD,
    VnetError,
    rx_frame,
    tx_header,
)

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = IP(src="10.0.0.1", dst="10.0.0.2")
V6 = IPv6(src="fd00::1", dst="fd00::2")
TCP_SEG = TCP(sport=1234, dport=80, seq=1, ack=2, flags="PA",
              options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])


def frame_of(pkt) -> bytes:
    return bytes(pkt)


def with_csum(raw: bytes, at: int, value: int) -> bytearray:
    data = bytearray(raw)
    struct.pack_into("!H", data, at, value)
    return data


def test_header_layout_is_linux_virtio_net_hdr():
    assert vnet.HEADER_LEN == 10
    assert HEADER.pack(1, 4, 0x1234, 0x5678, 34, 16) == bytes.fromhex("0104341278562200" "1000")


@pytest.mark.parametrize("ip", [V4, V6], ids=["ipv4", "ipv6"])
def test_tx_small_tcp_gets_pseudo_sum_and_needs_csum(ip):
    good = frame_of(ETH / ip / TCP_SEG / (b"x" * 100))
    start = 14 + (20 if ip is V4 else 40)
    frame = with_csum(good, start + 16, 0)  # as the stack leaves it
    hdr = tx_header(frame, 1500)
    flags, gso, hdr_len, gso_size, csum_start, csum_offset = HEADER.unpack(hdr)
    assert (flags, gso, hdr_len, gso_size, csum_start, csum_offset) == (
        F_NEEDS_CSUM, GSO_NONE, 0, 0, start, 16)
    # what the kernel does with it: the sum from csum_start, complemented, into the field
    assert _complete(frame, start, 16) == good


def _complete(frame, start: int, offset: int) -> bytes:
    from netstack.wire.checksum import partial

    data = bytearray(frame)
    struct.pack_into("!H", data, start + offset, ~partial(bytes(data[start:])) & 0xFFFF)
    return bytes(data)


@pytest.mark.parametrize("ip,gso,ihl", [(V4, GSO_TCPV4, 20), (V6, GSO_TCPV6, 40)],
                         ids=["ipv4", "ipv6"])
def test_tx_large_tcp_is_gso_at_the_mtu(ip, gso, ihl):
    good = frame_of(ETH / ip / TCP_SEG / (b"y" * 60000))
    frame = with_csum(good, 14 + ihl + 16, 0)
    hdr = tx_header(frame, 1500)
    assert HEADER.unpack(hdr) == (F_NEEDS_CSUM, gso, 14 + ihl + 32, 1500 - ihl - 32,
                                  14 + ihl, 16)
    assert _complete(frame, 14 + ihl, 16) == good


def test_tx_tcp_checksum_field_is_overwritten_whatever_it_held():
    good = frame_of(ETH / V4 / TCP_SEG / b"z")
    frame = bytearray(good)  # a checksum the stack did compute
    tx_header(frame, 1500)
    assert _complete(frame, 34, 16) == good


@pytest.mark.parametrize("pkt", [
    ETH / V4 / UDP(sport=1, dport=2) / b"udp",
    ETH / V4 / ICMP() / b"ping",
    ETH / V6 / UDP(sport=1, dport=2) / b"udp6",
    ETH / V6 / IPv6ExtHdrDestOpt() / TCP_SEG / b"ext",  # extension header: no offload
    ETH / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP_SEG / b"frag",
], ids=["udp4", "icmp4", "udp6", "tcp6-ext", "tcp4-fragment"])
def test_tx_everything_else_gets_zeros_and_is_untouched(pkt):
    good = frame_of(pkt)
    frame = bytearray(good)
    assert tx_header(frame, 1500) == NO_OFFLOAD
    assert frame == good


@pytest.mark.parametrize("ip,ihl", [(V4, 20), (V6, 40)], ids=["ipv4", "ipv6"])
def test_rx_partial_udp_is_completed_like_scapy(ip, ihl):
    good = frame_of(ETH / ip / UDP(sport=53, dport=5353) / (b"q" * 333))
    start = 14 + ihl
    # the kernel's partial checksum: the (uncomplemented) pseudo-header sum in the field
    from netstack.wire.checksum import partial

    if ihl == 20:
        pseudo = partial(good[26:34], 17 + len(good) - start)
    else:
        pseudo = partial(good[22:54], 17 + len(good) - start)
    frame = with_csum(good, start + 6, pseudo)
    hdr = HEADER.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, start, 6)
    done = rx_frame(hdr, bytes(frame))
    assert bytes(done) == good


@pytest.mark.parametrize("ip,ihl,gso", [(V4, 20, GSO_TCPV4), (V6, 40, GSO_TCPV6)],
                         ids=["ipv4", "ipv6"])
def test_rx_partial_tcp_is_handed_on_unchanged(ip, ihl, gso):
    raw = frame_of(ETH / ip / TCP_SEG / (b"g" * 30000))
    frame = bytes(with_csum(raw, 14 + ihl + 16, 0x1234))
    hdr = HEADER.pack(F_NEEDS_CSUM, gso, 14 + ihl + 32, 1448, 14 + ihl, 16)
    assert rx_frame(hdr, frame) is frame


def test_rx_partial_checksum_not_at_the_tcp_header_is_completed():
    good = frame_of(ETH / V4 / TCP_SEG / b"odd")
    # csum_start at the IP header, offset to the TCP checksum: not the TCP shape we pass
    # on, so completed here like any partial checksum (a sum over IP header + segment)
    from netstack.wire.checksum import partial

    frame = with_csum(good, 50, 0)
    frame = with_csum(frame, 50, partial(bytes(frame[14:34])))
    hdr = HEADER.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, 14, 20 + 16)
    done = rx_frame(hdr, bytes(frame))
    assert isinstance(done, bytearray)
    assert ~partial(bytes(done[14:])) & 0xFFFF == 0


@pytest.mark.parametrize("start,offset", [(0, 16), (13, 6), (34, 1000), (60000, 0),
                                          (65535, 65535)])
def test_rx_csum_outside_the_frame_is_refused(start, offset):
    frame = frame_of(ETH / V4 / UDP(sport=1, dport=2) / b"x")
    hdr = HEADER.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, start, offset)
    with pytest.raises(VnetError):
        rx_frame(hdr, frame)


def test_rx_data_valid_and_plain_frames():
    good = frame_of(ETH / V4 / TCP_SEG / b"ok")
    bad = bytes(with_csum(good, 50, 0xDEAD))
    assert rx_frame(HEADER.pack(F_DATA_VALID, 0, 0, 0, 0, 0), bad) is bad
    assert rx_frame(NO_OFFLOAD, good) is good
    with pytest.raises(VnetError, match="bad TCP checksum"):
        rx_frame(NO_OFFLOAD, bad)
    good6 = frame_of(ETH / V6 / TCP_SEG / b"ok6")
    assert rx_frame(NO_OFFLOAD, good6) is good6
    with pytest.raises(VnetError):
        rx_frame(NO_OFFLOAD, bytes(with_csum(good6, 70, 0xBEEF)))
    udp = bytes(with_csum(frame_of(ETH / V4 / UDP() / b"u"), 40, 0xBAD))
    assert rx_frame(NO_OFFLOAD, udp) is udp  # the interface verifies UDP itself


def test_shapes_never_index_out_of_range():
    good = frame_of(ETH / V4 / TCP_SEG / b"abc")
    for n in range(len(good)):
        cut = bytes(good[:n])
        assert tx_header(bytearray(cut), 1500) == NO_OFFLOAD  # shorter than its IP header says
        assert rx_frame(NO_OFFLOAD, cut) is cut  # unrecognised shapes go on unverified
