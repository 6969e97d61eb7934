"""IPv4 headers (RFC 791): a Packet view, a Repr without options, protocol numbers, CIDRs.

Options are skipped (their bytes stay reachable through `Ipv4Packet.options`); `payload` is
bounded by the total length field, never by the buffer, so Ethernet padding is not payload.
`Ipv4Repr.parse` refuses fragments: the interface feeds those to
`netstack.iface.reassembly.Ipv4Reassembler` first and parses the datagram it returns.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from netstack.wire import Error
from netstack.wire.checksum import checksum as _checksum

VER_IHL = 0
DSCP_ECN = 1
LENGTH = slice(2, 4)
IDENT = slice(4, 6)
FLG_OFF = slice(6, 8)
TTL = 8
PROTOCOL = 9
CHECKSUM = slice(10, 12)
SRC_ADDR = slice(12, 16)
DST_ADDR = slice(16, 20)
HEADER_LEN = 20
MAX_HEADER_LEN = 60
MAX_TOTAL_LEN = 0xFFFF

FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class _Addr4(IPv4Address):
    """An IPv4Address that hashes once: a segment's addresses are hashed a dozen times on
    their way (demux index, listener tables, schedules) and `IPv4Address.__hash__` builds
    a hex string each time. Equal to, and hashing as, the plain IPv4Address."""

    __slots__ = ("_hash", "_packed")

    @property
    def packed(self) -> bytes:
        return self._packed  # (set by addr4: the bytes it was made from)

    def __hash__(self) -> int:
        try:
            return self._hash
        except AttributeError:
            h = self._hash = IPv4Address.__hash__(self)
            return h

    def __repr__(self) -> str:
        return f"IPv4Address({str(self)!r})"

    def __reduce__(self):
        return IPv4Address, (self._ip,)


_ADDRS: dict[bytes, IPv4Address] = {}
_ADDRS_MAX = 65536  # a guest sending from many addresses only cycles it


def addr4(packed: bytes) -> IPv4Address:
    """The address of 4 bytes from the wire: one shared object per address (bounded
    cache), its hash computed once."""
    a = _ADDRS.get(packed)
    if a is None:
        if len(_ADDRS) >= _ADDRS_MAX:
            _ADDRS.clear()
        a = _ADDRS[packed] = _Addr4(packed)
        a._packed = bytes(packed)
    return a
# version/ihl, dscp/ecn, total length, ident, flags/offset, ttl, protocol, checksum, src, dst
_HEADER = struct.Struct("!BBHHHBBH4s4s")


class IpProtocol(IntEnum):
    HOPBYHOP = 0
    ICMP = 1
    IGMP = 2
    TCP = 6
    UDP = 17
    IPV6_ROUTE = 43
    IPV6_FRAG = 44
    ICMPV6 = 58
    IPV6_NONXT = 59
    IPV6_OPTS = 60


_PROTOCOLS = {p.value: p for p in IpProtocol}


class Ipv4Packet:
    """A view over an IPv4 packet. Use `new_checked` for anything that came off the wire."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        mv = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        self.buffer = mv if mv.format == "B" else mv.cast("B")

    @classmethod
    def new_checked(cls, buffer) -> Ipv4Packet:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        """Raise `Error` unless the buffer holds the header (with options) and total length."""
        b = self.buffer
        n = len(b)
        if n < HEADER_LEN:
            raise Error("ipv4: buffer shorter than the fixed header")
        header_len = (b[VER_IHL] & 0x0F) * 4
        if header_len < HEADER_LEN:
            raise Error("ipv4: IHL below 5")
        if n < header_len:
            raise Error("ipv4: buffer shorter than IHL")
        total_len = _U16.unpack_from(b, 2)[0]
        if total_len < header_len:
            raise Error("ipv4: total length shorter than the header")
        if n < total_len:
            raise Error("ipv4: buffer shorter than total length")

    # -- fields -------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self.buffer[VER_IHL] >> 4

    @version.setter
    def version(self, value: int) -> None:
        self.buffer[VER_IHL] = (self.buffer[VER_IHL] & 0x0F) | ((value & 0x0F) << 4)

    @property
    def ihl(self) -> int:
        return self.buffer[VER_IHL] & 0x0F

    @ihl.setter
    def ihl(self, value: int) -> None:
        self.buffer[VER_IHL] = (self.buffer[VER_IHL] & 0xF0) | (value & 0x0F)

    @property
    def header_len(self) -> int:
        """Header length in bytes (IHL × 4)."""
        return (self.buffer[VER_IHL] & 0x0F) * 4

    @header_len.setter
    def header_len(self, value: int) -> None:
        self.ihl = value // 4

    @property
    def dscp(self) -> int:
        return self.buffer[DSCP_ECN] >> 2

    @dscp.setter
    def dscp(self, value: int) -> None:
        self.buffer[DSCP_ECN] = (self.buffer[DSCP_ECN] & 0x03) | ((value & 0x3F) << 2)

    @property
    def ecn(self) -> int:
        return self.buffer[DSCP_ECN] & 0x03

    @ecn.setter
    def ecn(self, value: int) -> None:
        self.buffer[DSCP_ECN] = (self.buffer[DSCP_ECN] & 0xFC) | (value & 0x03)

    @property
    def total_len(self) -> int:
        return _U16.unpack_from(self.buffer, 2)[0]

    @total_len.setter
    def total_len(self, value: int) -> None:
        _U16.pack_into(self.buffer, 2, value)

    @property
    def ident(self) -> int:
        return _U16.unpack_from(self.buffer, 4)[0]

    @ident.setter
    def ident(self, value: int) -> None:
        _U16.pack_into(self.buffer, 4, value)

    @property
    def dont_frag(self) -> bool:
        return bool(self.buffer[6] & 0x40)

    @dont_frag.setter
    def dont_frag(self, value: bool) -> None:
        self.buffer[6] = (self.buffer[6] & ~0x40 & 0xFF) | (0x40 if value else 0)

    @property
    def more_frags(self) -> bool:
        return bool(self.buffer[6] & 0x20)

    @more_frags.setter
    def more_frags(self, value: bool) -> None:
        self.buffer[6] = (self.buffer[6] & ~0x20 & 0xFF) | (0x20 if value else 0)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes (the field × 8)."""
        return (_U16.unpack_from(self.buffer, 6)[0] & OFFSET_MASK) * 8

    @frag_offset.setter
    def frag_offset(self, value: int) -> None:
        """Set the offset in bytes; it must be a multiple of 8."""
        flags = _U16.unpack_from(self.buffer, 6)[0] & ~OFFSET_MASK
        _U16.pack_into(self.buffer, 6, flags | ((value // 8) & OFFSET_MASK))

    @property
    def is_fragment(self) -> bool:
        """True for any fragment (MF set or a non-zero offset)."""
        return bool(_U16.unpack_from(self.buffer, 6)[0] & (FLAG_MF | OFFSET_MASK))

    def clear_flags(self) -> None:
        """Zero the flags and the fragment offset."""
        _U16.pack_into(self.buffer, 6, 0)

    @property
    def ttl(self) -> int:
        return self.buffer[TTL]

    @ttl.setter
    def ttl(self, value: int) -> None:
        self.buffer[TTL] = value

    @property
    def protocol(self) -> int:
        return self.buffer[PROTOCOL]

    @protocol.setter
    def protocol(self, value: int) -> None:
        self.buffer[PROTOCOL] = value

    @property
    def checksum(self) -> int:
        return _U16.unpack_from(self.buffer, 10)[0]

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buffer, 10, value)

    @property
    def src_addr(self) -> IPv4Address:
        return IPv4Address(_U32.unpack_from(self.buffer, 12)[0])

    @src_addr.setter
    def src_addr(self, value: IPv4Address) -> None:
        self.buffer[SRC_ADDR] = value.packed

    @property
    def dst_addr(self) -> IPv4Address:
        return IPv4Address(_U32.unpack_from(self.buffer, 16)[0])

    @dst_addr.setter
    def dst_addr(self, value: IPv4Address) -> None:
        self.buffer[DST_ADDR] = value.packed

    @property
    def options(self) -> memoryview:
        """The raw option bytes (empty when IHL is 5)."""
        return self.buffer[HEADER_LEN : self.header_len]

    @property
    def payload(self) -> memoryview:
        """The bytes after the header, up to the total length (not the buffer's end)."""
        return self.buffer[self.header_len : self.total_len]

    # -- checksum -------------------------------------------------------------------------

    def verify_checksum(self) -> bool:
        return _checksum(self.buffer[: self.header_len]) == 0

    def fill_checksum(self) -> None:
        b = self.buffer
        b[10] = 0
        b[11] = 0
        _U16.pack_into(b, 10, _checksum(b[: self.header_len]))


@dataclass(slots=True, unsafe_hash=True)  # a value (see netstack.wire)
class Ipv4Repr:
    """An IPv4 header without options. `payload_len` excludes the header."""

    src_addr: IPv4Address
    dst_addr: IPv4Address
    protocol: int
    payload_len: int
    ttl: int = 64
    dscp: int = 0
    ident: int = 0
    dont_frag: bool = True
    ecn: int = 0

    @classmethod
    def parse(cls, packet: Ipv4Packet, verify_checksum: bool = True,
              length_checked: bool = False) -> Ipv4Repr:
        """Parse a whole (unfragmented) datagram. Pass `verify_checksum=False` when the
        device has already verified it (checksum offload), `length_checked=True` when the
        packet came from `Ipv4Packet.new_checked` (the interface's path: once per frame)."""
        if not length_checked:
            packet.check_len()
        b = packet.buffer
        vihl, tos, total_len, ident, flg_off, ttl, proto, _csum, src, dst = _HEADER.unpack_from(
            b, 0
        )
        if vihl >> 4 != 4:
            raise Error("ipv4: version is not 4")
        if flg_off & (FLAG_MF | OFFSET_MASK):
            raise Error("ipv4: fragment (reassemble before parsing)")
        header_len = (vihl & 0x0F) * 4
        if verify_checksum and _checksum(b[:header_len]) != 0:
            raise Error("ipv4: bad header checksum")
        return cls(
            src_addr=addr4(src),
            dst_addr=addr4(dst),
            protocol=_PROTOCOLS.get(proto, proto),
            payload_len=total_len - header_len,
            ttl=ttl,
            dscp=tos >> 2,
            ident=ident,
            dont_frag=bool(flg_off & FLAG_DF),
            ecn=tos & 0x03,
        )

    def buffer_len(self) -> int:
        return HEADER_LEN

    def emit(self, packet: Ipv4Packet, fill_checksum: bool = True) -> None:
        """Write the 20-byte header; the payload starts at HEADER_LEN. With
        `fill_checksum=False` the checksum field is written as zero (offload).
        Raises ValueError if the payload cannot fit in one datagram."""
        if not 0 <= self.payload_len <= MAX_TOTAL_LEN - HEADER_LEN:
            raise ValueError(f"ipv4: payload of {self.payload_len} bytes does not fit")
        _HEADER.pack_into(
            packet.buffer,
            0,
            0x45,
            ((self.dscp & 0x3F) << 2) | (self.ecn & 0x03),
            HEADER_LEN + self.payload_len,
            self.ident,
            FLAG_DF if self.dont_frag else 0,
            self.ttl,
            self.protocol,
            0,
            self.src_addr.packed,
            self.dst_addr.packed,
        )
        if fill_checksum:
            _U16.pack_into(packet.buffer, 10, _checksum(packet.buffer[:HEADER_LEN]))


@dataclass(frozen=True, slots=True)
class Ipv4Cidr:
    """An address with a prefix length, as on an interface (`10.0.2.15/24`)."""

    address: IPv4Address
    prefix_len: int

    def __post_init__(self) -> None:
        if not 0 <= self.prefix_len <= 32:
            raise ValueError(f"prefix length {self.prefix_len} is not in 0..32")
        if not isinstance(self.address, IPv4Address):
            object.__setattr__(self, "address", IPv4Address(self.address))

    @classmethod
    def parse(cls, text: str) -> Ipv4Cidr:
        iface = ipaddress.IPv4Interface(text)
        return cls(iface.ip, iface.network.prefixlen)

    @property
    def mask_int(self) -> int:
        return (0xFFFFFFFF << (32 - self.prefix_len)) & 0xFFFFFFFF

    @property
    def netmask(self) -> IPv4Address:
        return IPv4Address(self.mask_int)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self.address) & self.mask_int, self.prefix_len))

    @property
    def broadcast(self) -> IPv4Address | None:
        """The directed broadcast address, or None for /31 and /32 (RFC 3021)."""
        if self.prefix_len >= 31:
            return None
        return IPv4Address(int(self.address) | (~self.mask_int & 0xFFFFFFFF))

    def contains(self, addr: IPv4Address) -> bool:
        mask = self.mask_int
        return (int(addr) & mask) == (int(self.address) & mask)

    def __contains__(self, addr: IPv4Address) -> bool:
        return self.contains(addr)

    def __str__(self) -> str:
        return f"{self.address}/{self.prefix_len}"
