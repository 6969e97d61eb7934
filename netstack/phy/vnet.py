"""The virtio_net_hdr in front of each TAP frame (IFF_VNET_HDR): checksum and TCP offloads.

With IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6), every frame
crossing the TAP starts with a 10-byte header (virtio 1.2 §5.1.6, struct virtio_net_hdr in
linux/virtio_net.h, little-endian): flags, gso_type, hdr_len, gso_size, csum_start,
csum_offset. It lets a TCP segment cross whole, up to 64 KiB, with its checksum unfinished.
This module holds the small, pure pieces; `tap.TapDevice(offload=True)` uses them.

- `tx_header(frame, mtu)`: the header of a frame we send to the kernel. For TCP (untagged
  IPv4 that is not a fragment, IPv6 without extension headers) the pseudo-header sum goes
  into the checksum field (patched in place, whatever the stack left there) with NEEDS_CSUM,
  csum_start and csum_offset; a segment larger than the MTU also gets gso_type TCPV4/TCPV6,
  gso_size = MTU - IP header - TCP header and hdr_len (the kernel cuts it). Everything else
  gets a header of zeros: the stack computed its checksums.
- `rx_frame(hdr, frame)`: a frame the kernel sent us. NEEDS_CSUM with csum_start/offset
  checked against the frame length first (the kernel is trusted more than a guest, but
  nothing is indexed out of range; `VnetError` otherwise). A partial TCP checksum is handed
  on as is: the device reports `checksum.tcp`, so the interface does not verify TCP
  checksums. Any other partial checksum (UDP) is completed here, on a copy. DATA_VALID
  frames go on as they are. A TCP frame with neither flag (one the kernel forwarded without
  checking) has its checksum verified here, since the interface will not (`VnetError`).
  GSO/GRO frames need nothing more: the stack takes TCP segments of any size.

The same logic, for the guest's side of the vhost-user device, lives in
`vhostuser/offload.py`. The duplication is deliberate: netstack does not import vhostuser
(the layers do not know each other), and the two differ in whom they trust and in what
the peer negotiated.
"""

from __future__ import annotations

import struct

from netstack.wire.checksum import partial

HEADER = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
HEADER_LEN = HEADER.size  # 10: the header without num_buffers (TUNSETVNETHDRSZ 10)

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80

ETH_HLEN = 14
IPV6_HLEN = 40
IPPROTO_TCP = 6
TCP_CSUM_OFFSET = 16
NO_OFFLOAD = bytes(HEADER_LEN)

_U16 = struct.Struct("!H")


class VnetError(ValueError):
    """A frame from the kernel whose header cannot be honoured (csum_start/csum_offset
    outside the frame) or whose TCP checksum is wrong."""


def ipv4_tcp(frame) -> tuple[int, int] | None:
    """(IP header length, TCP header length) of an untagged, unfragmented IPv4/TCP frame
    whose IP total length fits the frame, else None."""
    ip = ETH_HLEN
    if len(frame) < ip + 40 or frame[12] != 0x08 or frame[13] != 0x00:
        return None
    if frame[ip] >> 4 != 4 or frame[ip + 9] != IPPROTO_TCP:
        return None
    if frame[ip + 6] & 0x3F or frame[ip + 7]:  # MF or a fragment offset
        return None
    ihl = (frame[ip] & 0x0F) * 4
    total = frame[ip + 2] << 8 | frame[ip + 3]
    if ihl < 20 or total > len(frame) - ip or ihl + 20 > total:
        return None
    thl = (frame[ip + ihl + 12] >> 4) * 4
    if thl < 20 or ihl + thl > total:
        return None
    return ihl, thl


def ipv6_tcp(frame) -> int | None:
    """TCP header length of an untagged IPv6/TCP frame without extension headers whose
    payload length fits the frame, else None."""
    ip = ETH_HLEN
    if len(frame) < ip + IPV6_HLEN + 20 or frame[12] != 0x86 or frame[13] != 0xDD:
        return None
    if frame[ip] >> 4 != 6 or frame[ip + 6] != IPPROTO_TCP:
        return None
    plen = frame[ip + 4] << 8 | frame[ip + 5]
    if plen > len(frame) - ip - IPV6_HLEN:
        return None
    thl = (frame[ip + IPV6_HLEN + 12] >> 4) * 4
    if thl < 20 or thl > plen:
        return None
    return thl


def _tcp_pseudo(frame) -> tuple[int, int, int, int, int] | None:
    """For a recognised TCP frame: (pseudo-header sum, csum_start, end of the TCP segment,
    IP header length, TCP header length), else None."""
    ip = ETH_HLEN
    shape = ipv4_tcp(frame)
    if shape is not None:
        ihl, thl = shape
        start = ip + ihl
        end = ip + (frame[ip + 2] << 8 | frame[ip + 3])
        return partial(frame[ip + 12:ip + 20], IPPROTO_TCP + end - start), start, end, ihl, thl
    thl = ipv6_tcp(frame)
    if thl is None:
        return None
    start = ip + IPV6_HLEN
    end = start + (frame[ip + 4] << 8 | frame[ip + 5])
    # RFC 8200 §8.1: source, destination, upper-layer length (32 bits), next header
    return partial(frame[ip + 8:ip + 40], IPPROTO_TCP + end - start), start, end, IPV6_HLEN, thl


def tx_header(frame, mtu: int) -> bytes:
    """The virtio_net_hdr for a frame we send (`frame` writable: a TCP frame's checksum
    field is set to the pseudo-header sum). `mtu` is the IP MTU of the TAP."""
    found = _tcp_pseudo(frame)
    if found is None:
        return NO_OFFLOAD
    pseudo, start, end, ihl, thl = found
    if end != len(frame):  # trailing bytes the checksum must not cover: do it here
        _U16.pack_into(frame, start + TCP_CSUM_OFFSET, 0)
        _U16.pack_into(frame, start + TCP_CSUM_OFFSET,
                       ~partial(frame[start:end], pseudo) & 0xFFFF)
        return NO_OFFLOAD
    _U16.pack_into(frame, start + TCP_CSUM_OFFSET, pseudo)
    if len(frame) - ETH_HLEN > mtu:
        gso = GSO_TCPV4 if frame[12] == 0x08 else GSO_TCPV6
        return HEADER.pack(F_NEEDS_CSUM, gso, start + thl, mtu - ihl - thl, start,
                           TCP_CSUM_OFFSET)
    return HEADER.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, start, TCP_CSUM_OFFSET)


def rx_frame(hdr, frame):
    """Check and finish a frame from the kernel with its header `hdr` (>= 10 bytes).
    Returns the frame to hand on: `frame` itself, or a completed copy (a bytearray)."""
    flags = hdr[0]
    if flags & F_NEEDS_CSUM:
        _, _, _, _, start, offset = HEADER.unpack_from(hdr)
        at = start + offset
        if start < ETH_HLEN or at + 2 > len(frame):
            raise VnetError(f"csum_start {start} + csum_offset {offset} outside a "
                            f"{len(frame)}-byte frame")
        if offset == TCP_CSUM_OFFSET and _tcp_start(frame) == start:
            return frame  # the interface takes TCP with the checksum unverified
        data = bytearray(frame)
        # the field holds the pseudo-header sum: the sum covers everything from csum_start
        _U16.pack_into(data, at, ~partial(memoryview(data)[start:]) & 0xFFFF)
        return data
    if flags & F_DATA_VALID:
        return frame
    found = _tcp_pseudo(frame)
    if found is not None:
        pseudo, start, end, _, _ = found
        if ~partial(frame[start:end], pseudo) & 0xFFFF:
            raise VnetError("bad TCP checksum on a frame the kernel did not check")
    return frame


def _tcp_start(frame) -> int | None:
    """Where the TCP header of a recognised TCP frame starts, else None."""
    shape = ipv4_tcp(frame)
    if shape is not None:
        return ETH_HLEN + shape[0]
    if ipv6_tcp(frame) is not None:
        return ETH_HLEN + IPV6_HLEN
    return None
