"""IPv6 headers (RFC 8200): a Packet view, a Repr, CIDRs and the extension header walk.

`Ipv6Packet.payload` is bounded by the payload length field, never by the buffer, so
Ethernet padding is not payload (a zero payload length, the jumbogram marker, is refused:
no link we serve carries jumbograms). `walk_headers` steps over the extension headers a
host must understand (hop-by-hop, destination options, routing, fragment) with a bound on
how many it looks at, and says where the upper-layer header starts, whether the datagram
is a fragment, and which ICMPv6 Parameter Problem RFC 8200 §4 wants for what it could not
process. `Ipv6Repr` is the fixed header plus that upper-layer protocol: `protocol` and
`src_addr`/`dst_addr` have the same names as on `Ipv4Repr`, so sockets serve both families.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from netstack.wire import Error
from netstack.wire.ethernet import EthernetAddress

VER_TC_FL = slice(0, 4)
PAYLOAD_LEN = slice(4, 6)
NEXT_HEADER = 6
HOP_LIMIT = 7
SRC_ADDR = slice(8, 24)
DST_ADDR = slice(24, 40)
HEADER_LEN = 40
MIN_MTU = 1280

HOPBYHOP = 0
TCP = 6
UDP = 17
ROUTING = 43
FRAGMENT = 44
ESP = 50
AH = 51
ICMPV6 = 58
NO_NEXT = 59
DSTOPTS = 60
MOBILITY = 135
FRAGMENT_HEADER_LEN = 8

# Extension headers we walk (everything else is an upper layer or unknown).
_OPTION_HEADERS = (HOPBYHOP, DSTOPTS)
MAX_EXTENSION_HEADERS = 16  # RFC 8200 allows any number; we look at no more than this

UNSPECIFIED = IPv6Address(0)
ALL_NODES = IPv6Address("ff02::1")
ALL_ROUTERS = IPv6Address("ff02::2")
ALL_MLDV2_ROUTERS = IPv6Address("ff02::16")
LINK_LOCAL_PREFIX = ipaddress.IPv6Network("fe80::/64")

_HEADER = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")
_FRAG = struct.Struct("!BBHI")

# Parameter Problem codes (RFC 4443 §3.4)
PP_ERRONEOUS_HEADER = 0
PP_UNRECOGNIZED_NEXT_HEADER = 1
PP_UNRECOGNIZED_OPTION = 2


def solicited_node(addr: IPv6Address) -> IPv6Address:
    """The solicited-node multicast group of `addr` (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX."""
    return IPv6Address((0xFF0200000000000000000001FF << 24) | (int(addr) & 0xFFFFFF))


def multicast_mac(group: IPv6Address) -> EthernetAddress:
    """The Ethernet address of an IPv6 multicast group (RFC 2464 §7): 33:33 + low 32 bits."""
    return EthernetAddress(b"\x33\x33" + group.packed[12:16])


def interface_id(mac: EthernetAddress) -> int:
    """The modified EUI-64 interface identifier of a MAC (RFC 4291 appendix A)."""
    b = bytes(mac)
    return int.from_bytes(bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]]), "big")


def link_local(mac: EthernetAddress) -> IPv6Address:
    """fe80::/64 plus the modified EUI-64 of `mac`."""
    return IPv6Address((0xFE80 << 112) | interface_id(mac))


def is_link_local(addr: IPv6Address) -> bool:
    return int(addr) >> 118 == 0x3FA  # fe80::/10


class Ipv6Packet:
    """A view over an IPv6 datagram. `new_checked` for untrusted input."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        self.buffer = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) \
            else buffer

    @classmethod
    def new_checked(cls, buffer) -> Ipv6Packet:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        """Raise Error unless the fixed header and the payload it announces fit."""
        b = self.buffer
        if len(b) < HEADER_LEN:
            raise Error("ipv6: truncated header")
        if b[0] >> 4 != 6:
            raise Error("ipv6: version is not 6")
        length = _U16.unpack_from(b, 4)[0]
        if length == 0:
            raise Error("ipv6: zero payload length (jumbograms are not supported)")
        if HEADER_LEN + length > len(b):
            raise Error("ipv6: payload length exceeds the buffer")

    @property
    def version(self) -> int:
        return self.buffer[0] >> 4

    @property
    def traffic_class(self) -> int:
        return (struct.unpack_from("!I", self.buffer, 0)[0] >> 20) & 0xFF

    @property
    def flow_label(self) -> int:
        return struct.unpack_from("!I", self.buffer, 0)[0] & 0xFFFFF

    @property
    def payload_len(self) -> int:
        return _U16.unpack_from(self.buffer, 4)[0]

    @payload_len.setter
    def payload_len(self, value: int) -> None:
        _U16.pack_into(self.buffer, 4, value)

    @property
    def next_header(self) -> int:
        return self.buffer[NEXT_HEADER]

    @property
    def hop_limit(self) -> int:
        return self.buffer[HOP_LIMIT]

    @property
    def src_addr(self) -> IPv6Address:
        return IPv6Address(bytes(self.buffer[SRC_ADDR]))

    @property
    def dst_addr(self) -> IPv6Address:
        return IPv6Address(bytes(self.buffer[DST_ADDR]))

    @property
    def payload(self) -> memoryview:
        """Everything after the fixed header (extension headers included)."""
        return self.buffer[HEADER_LEN : HEADER_LEN + self.payload_len]


@dataclass(slots=True, unsafe_hash=True)  # a value (see netstack.wire)
class Ipv6Repr:
    """The fixed header, with `next_header` the header that follows it. For received
    datagrams the interface sets `protocol` to the upper layer found by `walk_headers`;
    on emit `next_header` is written (extension headers are the caller's business)."""

    src_addr: IPv6Address
    dst_addr: IPv6Address
    next_header: int
    payload_len: int
    hop_limit: int = 64
    protocol: int = -1  # upper-layer protocol; -1: same as next_header
    traffic_class: int = 0
    flow_label: int = 0

    def __post_init__(self) -> None:
        if self.protocol == -1:
            self.protocol = self.next_header

    version = 6

    @property
    def ttl(self) -> int:
        """The hop limit, under the IPv4 name sockets use."""
        return self.hop_limit

    @classmethod
    def parse(cls, packet: Ipv6Packet) -> Ipv6Repr:
        packet.check_len()
        b = packet.buffer
        vtf, length, nh, hl, src, dst = _HEADER.unpack_from(b, 0)
        return cls(IPv6Address(src), IPv6Address(dst), nh, length, hl,
                   traffic_class=(vtf >> 20) & 0xFF, flow_label=vtf & 0xFFFFF)

    def buffer_len(self) -> int:
        return HEADER_LEN

    def emit(self, packet: Ipv6Packet) -> None:
        vtf = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        _HEADER.pack_into(packet.buffer, 0, vtf, self.payload_len, self.next_header,
                          self.hop_limit, self.src_addr.packed, self.dst_addr.packed)


def pack_header(buf, offset: int, src: bytes, dst: bytes, next_header: int, payload_len: int,
                hop_limit: int) -> None:
    """Write a fixed header (no traffic class, no flow label): the transmit fast path."""
    _HEADER.pack_into(buf, offset, 0x60000000, payload_len, next_header, hop_limit, src, dst)


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    """The Fragment header found by `walk_headers` (RFC 8200 §4.5). `header_offset` is where
    it starts and `unfragmentable_len` where the fragmentable part starts, both counted
    from the start of the IPv6 payload; `next_header` is its Next Header field."""

    offset: int  # in bytes
    more: bool
    ident: int
    next_header: int
    header_offset: int
    prev_next_header_offset: int  # where the Next Header field pointing at it is

    @property
    def unfragmentable_len(self) -> int:
        return self.header_offset

    @property
    def is_atomic(self) -> bool:
        """RFC 6946: offset 0 and no more fragments — process as a whole datagram."""
        return self.offset == 0 and not self.more


@dataclass(frozen=True, slots=True)
class HeaderWalk:
    """What `walk_headers` found. `protocol` is the upper-layer protocol (or the first
    header it did not walk), `offset` where it starts in the IPv6 payload. `problem`, when
    set, is `(code, pointer, icmp_to_multicast)` for an ICMPv6 Parameter Problem
    (pointer counted from the start of the IPv6 header): the datagram must be dropped."""

    protocol: int
    offset: int
    fragment: FragmentInfo | None = None
    router_alert: bool = False
    problem: tuple[int, int, bool] | None = None
    nh_pointer: int = NEXT_HEADER  # where the Next Header field naming `protocol` is


def _options(payload, start: int, end: int) -> tuple[tuple[int, int, bool] | None, bool]:
    """Walk the TLV options of a hop-by-hop or destination options header.

    Returns (problem or None, router alert seen). RFC 8200 §4.2: the two high bits of an
    unknown option's type say what to do."""
    pos = start
    alert = False
    while pos < end:
        otype = payload[pos]
        if otype == 0:  # Pad1
            pos += 1
            continue
        if pos + 2 > end:
            raise Error("ipv6: option runs past its header")
        olen = payload[pos + 1]
        if pos + 2 + olen > end:
            raise Error("ipv6: option runs past its header")
        if otype == 1:  # PadN
            pass
        elif otype == 5 and olen == 2:  # Router Alert (RFC 2711)
            alert = True
        else:
            action = otype >> 6
            if action == 1:
                return (-1, pos, False), alert  # discard silently
            if action == 2:
                return (PP_UNRECOGNIZED_OPTION, HEADER_LEN + pos, True), alert
            if action == 3:
                return (PP_UNRECOGNIZED_OPTION, HEADER_LEN + pos, False), alert
        pos += 2 + olen
    return None, alert


def walk_headers(payload, next_header: int,
                 max_headers: int = MAX_EXTENSION_HEADERS) -> HeaderWalk:
    """Step over the extension headers at the start of `payload` (an IPv6 payload).

    Raises Error for a header that runs past the payload, a hop-by-hop header that is not
    first, more than `max_headers` extension headers or more than one Fragment header; a
    problem RFC 8200 answers with ICMPv6 Parameter Problem comes back in `problem` (code
    -1 there means "discard silently")."""
    nh = next_header
    pos = 0
    nh_field = NEXT_HEADER - HEADER_LEN  # offset of the Next Header field pointing at nh
    fragment = None
    alert = False
    n = len(payload)
    count = 0
    while True:
        if nh in (TCP, UDP, ICMPV6, NO_NEXT):
            return HeaderWalk(nh, pos, fragment, alert, None, HEADER_LEN + nh_field)
        if nh == HOPBYHOP and count:
            return HeaderWalk(nh, pos, fragment, alert,
                              (PP_UNRECOGNIZED_NEXT_HEADER, HEADER_LEN + nh_field, False))
        if nh not in (HOPBYHOP, DSTOPTS, ROUTING, FRAGMENT):
            # An upper layer we may or may not handle: the interface decides.
            return HeaderWalk(nh, pos, fragment, alert, None, HEADER_LEN + nh_field)
        count += 1
        if count > max_headers:
            raise Error("ipv6: too many extension headers")
        if fragment is not None and fragment.more | bool(fragment.offset):
            # Everything after the Fragment header of a real fragment is fragment data.
            return HeaderWalk(nh, pos, fragment, alert, None, HEADER_LEN + nh_field)
        if pos + 8 > n:
            raise Error("ipv6: truncated extension header")
        if nh == FRAGMENT:
            if fragment is not None:
                raise Error("ipv6: more than one fragment header")
            nxt, _res, off_m, ident = _FRAG.unpack_from(payload, pos)
            fragment = FragmentInfo(off_m & 0xFFF8, bool(off_m & 1), ident, nxt, pos, nh_field)
            nh_field = pos
            pos += FRAGMENT_HEADER_LEN
            nh = nxt
            continue
        hlen = (payload[pos + 1] + 1) * 8
        if pos + hlen > n:
            raise Error("ipv6: extension header runs past the payload")
        if nh in _OPTION_HEADERS:
            problem, a = _options(payload, pos + 2, pos + hlen)
            alert = alert or a
            if problem is not None:
                return HeaderWalk(nh, pos, fragment, alert, problem)
        else:  # ROUTING
            segments_left = payload[pos + 3]
            if segments_left:
                # We are a host, not a router: a routing header still naming hops for us
                # to forward to is an erroneous header (RFC 8200 §4.4; type 0: RFC 5095).
                return HeaderWalk(nh, pos, fragment, alert,
                                  (PP_ERRONEOUS_HEADER, HEADER_LEN + pos + 2, False))
        nh_field = pos
        nh = payload[pos]
        pos += hlen


def upper_layer(payload, next_header: int,
                max_headers: int = MAX_EXTENSION_HEADERS) -> tuple[int, int, bool] | None:
    """Where the upper-layer header of an IPv6 payload starts, as (protocol, offset,
    whether a Fragment header was stepped over),
    stepping over hop-by-hop, destination options and routing headers without judging
    their contents, and over the Fragment header of a first (or atomic) fragment. None
    when the chain runs past `payload`, is longer than `max_headers`, or what follows is
    a later fragment's data (no upper-layer header there). Never raises: for deciding
    about a packet we are not going to process (ICMPv6 error eligibility, RFC 4443
    §2.4(e); RFC 7112 header chain checks)."""
    nh = next_header
    pos = 0
    n = len(payload)
    fragment = False
    for _ in range(max_headers + 1):
        if nh == FRAGMENT:
            if pos + FRAGMENT_HEADER_LEN > n:
                return None
            if _U16.unpack_from(payload, pos + 2)[0] & 0xFFF8:
                return None
            nh = payload[pos]
            pos += FRAGMENT_HEADER_LEN
            fragment = True
        elif nh in (HOPBYHOP, DSTOPTS, ROUTING):
            if pos + 2 > n:
                return None
            nh, pos = payload[pos], pos + (payload[pos + 1] + 1) * 8
            if pos > n:
                return None
        else:
            return nh, pos, fragment
    return None


@dataclass(frozen=True, slots=True)
class Ipv6Cidr:
    """An address with its prefix length (fd00:10:0:2::2/64)."""

    address: IPv6Address
    prefix_len: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", IPv6Address(self.address))
        if not 0 <= self.prefix_len <= 128:
            raise ValueError(f"prefix length {self.prefix_len} out of range")

    @classmethod
    def parse(cls, text: str) -> Ipv6Cidr:
        iface = ipaddress.IPv6Interface(text)
        return cls(iface.ip, iface.network.prefixlen)

    @property
    def mask_int(self) -> int:
        return ((1 << 128) - 1) ^ ((1 << (128 - self.prefix_len)) - 1)

    @property
    def network(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network((self.address, self.prefix_len), strict=False)

    def contains(self, addr: IPv6Address) -> bool:
        return int(addr) & self.mask_int == int(self.address) & self.mask_int

    def __contains__(self, addr: IPv6Address) -> bool:
        return self.contains(addr)

    def __str__(self) -> str:
        return f"{self.address}/{self.prefix_len}"
