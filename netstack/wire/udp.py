"""UDP datagrams (RFC 768) over IPv4 or IPv6, with the pseudo-header checksum.

The length field bounds the datagram: below 8 or beyond the buffer is `Error`; bytes past it
are ignored. The checksum takes the IP addresses as `ipaddress` objects and picks the IPv4
or IPv6 pseudo-header by their type. On receive over IPv4 a zero checksum means "not
computed" and passes; over IPv6 it is invalid (RFC 8200 §8.1). On emit a computed 0 is
sent as 0xFFFF.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from netstack.wire import Error
from netstack.wire.checksum import finish, partial, pseudo_header_v4, pseudo_header_v6

SRC_PORT = slice(0, 2)
DST_PORT = slice(2, 4)
LENGTH = slice(4, 6)
CHECKSUM = slice(6, 8)
HEADER_LEN = 8
PROTOCOL = 17

_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!HHHH")

IpAddress = IPv4Address | IPv6Address


def _pseudo(src: IpAddress, dst: IpAddress, length: int) -> int:
    if isinstance(src, IPv4Address):
        return pseudo_header_v4(src.packed, dst.packed, PROTOCOL, length)
    return pseudo_header_v6(src.packed, dst.packed, PROTOCOL, length)


class UdpPacket:
    """A view over a UDP datagram. Use `new_checked` for anything that came off the wire."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        mv = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        self.buffer = mv if mv.format == "B" else mv.cast("B")

    @classmethod
    def new_checked(cls, buffer) -> UdpPacket:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        b = self.buffer
        if len(b) < HEADER_LEN:
            raise Error("udp: buffer shorter than the header")
        length = _U16.unpack_from(b, 4)[0]
        if length < HEADER_LEN:
            raise Error("udp: length field below 8")
        if length > len(b):
            raise Error("udp: length field beyond the buffer")

    @property
    def src_port(self) -> int:
        return _U16.unpack_from(self.buffer, 0)[0]

    @src_port.setter
    def src_port(self, value: int) -> None:
        _U16.pack_into(self.buffer, 0, value)

    @property
    def dst_port(self) -> int:
        return _U16.unpack_from(self.buffer, 2)[0]

    @dst_port.setter
    def dst_port(self, value: int) -> None:
        _U16.pack_into(self.buffer, 2, value)

    @property
    def length(self) -> int:
        """The length field: header plus payload."""
        return _U16.unpack_from(self.buffer, 4)[0]

    @length.setter
    def length(self, value: int) -> None:
        _U16.pack_into(self.buffer, 4, value)

    @property
    def checksum(self) -> int:
        return _U16.unpack_from(self.buffer, 6)[0]

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buffer, 6, value)

    @property
    def payload(self) -> memoryview:
        return self.buffer[HEADER_LEN : _U16.unpack_from(self.buffer, 4)[0]]

    def verify_checksum(self, src_addr: IpAddress, dst_addr: IpAddress) -> bool:
        b = self.buffer
        length = _U16.unpack_from(b, 4)[0]
        if b[6] == 0 and b[7] == 0:
            return isinstance(src_addr, IPv4Address)
        return finish(partial(b[:length], _pseudo(src_addr, dst_addr, length))) == 0

    def fill_checksum(self, src_addr: IpAddress, dst_addr: IpAddress) -> None:
        b = self.buffer
        length = _U16.unpack_from(b, 4)[0]
        b[6] = 0
        b[7] = 0
        value = finish(partial(b[:length], _pseudo(src_addr, dst_addr, length)))
        _U16.pack_into(b, 6, value or 0xFFFF)


@dataclass(slots=True, unsafe_hash=True)  # a value (see netstack.wire)
class UdpRepr:
    src_port: int
    dst_port: int

    @classmethod
    def parse(
        cls,
        packet: UdpPacket,
        src_addr: IpAddress,
        dst_addr: IpAddress,
        verify_checksum: bool = True,
    ) -> UdpRepr:
        """Parse the header; the payload is `packet.payload`. `verify_checksum=False` when
        the device has verified it (offload)."""
        packet.check_len()
        src_port, dst_port, _length, _csum = _HEADER.unpack_from(packet.buffer, 0)
        if dst_port == 0:
            raise Error("udp: destination port 0")
        if verify_checksum and not packet.verify_checksum(src_addr, dst_addr):
            raise Error("udp: bad checksum")
        return cls(src_port, dst_port)

    def buffer_len(self) -> int:
        return HEADER_LEN

    def emit(
        self,
        packet: UdpPacket,
        src_addr: IpAddress,
        dst_addr: IpAddress,
        payload_len: int,
        emit_payload: Callable[[memoryview], object] | bytes | bytearray | memoryview | None = None,
        fill_checksum: bool = True,
    ) -> None:
        """Write the header and, if given, the payload, then the checksum.

        `emit_payload` is a callable handed the writable payload view (zero copy), bytes to
        copy in, or None when the payload is already in place at HEADER_LEN. With
        `fill_checksum=False` the checksum is left zero (offload, or IPv4 "not computed").
        """
        length = HEADER_LEN + payload_len
        b = packet.buffer
        _HEADER.pack_into(b, 0, self.src_port, self.dst_port, length, 0)
        if emit_payload is not None:
            if callable(emit_payload):
                emit_payload(b[HEADER_LEN:length])
            else:
                b[HEADER_LEN:length] = emit_payload
        if fill_checksum:
            value = finish(partial(b[:length], _pseudo(src_addr, dst_addr, length)))
            _U16.pack_into(b, 6, value or 0xFFFF)
