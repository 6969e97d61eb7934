"""Checksum and segmentation offloads across the virtio_net_hdr (virtio 1.2 §5.1.6.2).

With CSUM/GUEST_CSUM and HOST_TSO4/6, GUEST_TSO4/6 negotiated, neither the guest nor our
stack computes TCP checksums or cuts 64 KiB sends into MSS-sized frames: a TCP segment crosses
the rings whole, its header saying "checksum still to do" (NEEDS_CSUM, csum_start/offset)
and "segment me at gso_size". This module holds the small, pure pieces:

- `header_for_guest(frame, ...)`: the header of a frame we send (the stack left the TCP
  checksum field 0): the pseudo-header sum goes into the field and NEEDS_CSUM is set (the
  guest finishes it), or — a guest without GUEST_CSUM — the checksum is completed here.
  A TCP frame larger than the MTU gets gso_type TCPV4 or TCPV6 (the guest takes it whole).
- `from_guest(frame, hdr)`: a frame the guest sent with NEEDS_CSUM: csum_start/offset are
  validated (DPDK CVE-2024-11614 trusted csum_start) and, for anything but TCP (which our
  stack takes with the checksum unverified), the checksum is completed on a copy.

Recognised TCP frames are untagged Ethernet with IPv4 (any IHL, not a fragment) or IPv6
with its fixed 40-byte header and next header 6 directly. IPv6 frames with extension
headers (a Fragment header included) get no offload either way: to the guest they carry
the checksum the stack computed in software; from the guest, a partial checksum on one is
completed here on a copy like any non-TCP one. A guest's GSO frame (HOST_TSO4/6) needs
nothing more: it is handed on whole, and the stack takes TCP segments of any size.
"""

from __future__ import annotations

import struct

from vhostuser.features import (
    NET_HDR_F_NEEDS_CSUM,
    NET_HDR_GSO_NONE,
    NET_HDR_GSO_TCPV4,
    NET_HDR_GSO_TCPV6,
)

try:
    from vhostuser._fast import ffi as _ffi
    from vhostuser._fast import lib as _lib

    def _sum(buf, acc: int = 0) -> int:
        return _lib.vu_csum_partial(_ffi.from_buffer(buf), len(buf), acc) if len(buf) else acc
except ImportError:  # pragma: no cover - only without the C build
    def _sum(buf, acc: int = 0) -> int:
        mv = memoryview(buf)
        total = acc + sum(struct.unpack_from(f"!{len(mv) // 2}H", mv))
        if len(mv) & 1:
            total += mv[-1] << 8
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return total

NET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
ETH_HLEN = 14
IPV6_HLEN = 40
IPPROTO_TCP = 6
TCP_CSUM_OFFSET = 16
NO_OFFLOAD = bytes(10)


def _fold(acc: int) -> int:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


def _ipv4_tcp(frame) -> tuple[int, int] | None:
    """(IP header length, TCP header length) of an untagged, unfragmented IPv4/TCP frame,
    else None."""
    if len(frame) < ETH_HLEN + 40 or frame[12] != 0x08 or frame[13] != 0x00:
        return None
    if frame[ETH_HLEN] >> 4 != 4 or frame[ETH_HLEN + 9] != IPPROTO_TCP:
        return None
    if frame[ETH_HLEN + 6] & 0x3F or frame[ETH_HLEN + 7]:  # MF or a fragment offset
        return None
    ihl = (frame[ETH_HLEN] & 0x0F) * 4
    if ihl < 20 or ETH_HLEN + ihl + 20 > len(frame):
        return None
    thl = (frame[ETH_HLEN + ihl + 12] >> 4) * 4
    if thl < 20 or ETH_HLEN + ihl + thl > len(frame):
        return None
    return ihl, thl


def _ipv6_tcp(frame) -> int | None:
    """TCP header length of an untagged IPv6/TCP frame without extension headers whose
    payload length matches the frame, else None."""
    ip = ETH_HLEN
    if len(frame) < ip + IPV6_HLEN + 20 or frame[12] != 0x86 or frame[13] != 0xDD:
        return None
    if frame[ip] >> 4 != 6 or frame[ip + 6] != IPPROTO_TCP:
        return None
    if (frame[ip + 4] << 8 | frame[ip + 5]) != len(frame) - ip - IPV6_HLEN:
        return None
    thl = (frame[ip + IPV6_HLEN + 12] >> 4) * 4
    if thl < 20 or ip + IPV6_HLEN + thl > len(frame):
        return None
    return thl


def header_for_guest(frame, mtu: int, *, guest_csum: bool, guest_tso: bool,
                     guest_tso6: bool = False) -> bytes:
    """The 10 leading bytes of the virtio_net_hdr for a frame to the guest whose TCP
    checksum the stack left to the device; patches the frame's checksum field in place.
    `guest_tso`/`guest_tso6`: GUEST_TSO4/GUEST_TSO6 negotiated (frames above the MTU go
    whole with a GSO type); either needs `guest_csum`."""
    ip = ETH_HLEN
    shape = _ipv4_tcp(frame)
    if shape is not None:
        ihl, thl = shape
        start = ip + ihl
        pseudo = _sum(frame[ip + 12:ip + 20], IPPROTO_TCP + len(frame) - start)
        gso, tso = NET_HDR_GSO_TCPV4, guest_tso
    else:
        thl = _ipv6_tcp(frame)
        if thl is None:
            return NO_OFFLOAD
        ihl = IPV6_HLEN
        start = ip + IPV6_HLEN
        # RFC 8200 §8.1: source, destination, upper-layer length (32 bits), next header
        pseudo = _sum(frame[ip + 8:ip + 40], IPPROTO_TCP + len(frame) - start)
        gso, tso = NET_HDR_GSO_TCPV6, guest_tso6
    field = start + TCP_CSUM_OFFSET
    if guest_csum:
        struct.pack_into("!H", frame, field, pseudo)
        if tso and len(frame) - ETH_HLEN > mtu:
            return NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, gso, start + thl, mtu - ihl - thl,
                                start, TCP_CSUM_OFFSET)
        return NET_HDR.pack(NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_NONE, 0, 0, start,
                            TCP_CSUM_OFFSET)
    struct.pack_into("!H", frame, field, 0)
    csum = (~_sum(frame[start:], pseudo)) & 0xFFFF
    struct.pack_into("!H", frame, field, csum)
    return NO_OFFLOAD


class BadOffload(ValueError):
    """csum_start/csum_offset point outside the frame."""


def from_guest(frame, hdr) -> object:
    """Validate the guest's offload request; complete a non-TCP partial checksum on a
    copy. Returns the frame to hand on (the same object when nothing had to change)."""
    flags = hdr[0]
    if not flags & NET_HDR_F_NEEDS_CSUM:
        return frame
    _, _, _, _, start, offset = NET_HDR.unpack_from(hdr)
    if start + offset + 2 > len(frame) or start < ETH_HLEN:
        raise BadOffload(f"csum_start {start} + csum_offset {offset} outside a "
                         f"{len(frame)}-byte frame")
    if offset == TCP_CSUM_OFFSET and (_ipv4_tcp(frame) is not None
                                      or _ipv6_tcp(frame) is not None):
        return frame  # the stack takes TCP (IPv4 and IPv6) with the checksum unverified
    data = bytearray(frame)
    at = start + offset
    # the field holds the pseudo-header sum: sum over everything from csum_start
    struct.pack_into("!H", data, at, (~_sum(memoryview(data)[start:])) & 0xFFFF)
    return data
