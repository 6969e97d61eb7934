"""ARP (RFC 826): a Packet view for any hardware/protocol sizes, a Repr for Ethernet/IPv4.

The Packet reads the address lengths from the header, so it can look at any ARP packet;
`ArpRepr.parse` accepts only hardware type 1 (Ethernet), protocol 0x0800, lengths 6 and 4,
and the Request/Reply operations. Trailing bytes (Ethernet padding) are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from netstack.wire import Error
from netstack.wire.ethernet import EthernetAddress

HTYPE = slice(0, 2)
PTYPE = slice(2, 4)
HLEN = 4
PLEN = 5
OPER = slice(6, 8)
FIXED_LEN = 8  # addresses follow: SHA, SPA, THA, TPA
HEADER_LEN = 28  # Ethernet/IPv4: 8 + 2 × (6 + 4)

HARDWARE_ETHERNET = 1
PROTOCOL_IPV4 = 0x0800

_U16 = struct.Struct("!H")
# the whole Ethernet/IPv4 packet: fixed part then sha, spa, tha, tpa
_ETH_IPV4 = struct.Struct("!HHBBH6s4s6s4s")


class ArpOperation(IntEnum):
    REQUEST = 1
    REPLY = 2


class ArpPacket:
    """A view over an ARP packet; address fields are located by the hlen/plen fields."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        mv = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        self.buffer = mv if mv.format == "B" else mv.cast("B")

    @classmethod
    def new_checked(cls, buffer) -> ArpPacket:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        b = self.buffer
        if len(b) < FIXED_LEN:
            raise Error("arp: buffer shorter than the fixed header")
        if len(b) < FIXED_LEN + 2 * (b[HLEN] + b[PLEN]):
            raise Error("arp: buffer shorter than the addresses")

    @property
    def hardware_type(self) -> int:
        return _U16.unpack_from(self.buffer, 0)[0]

    @hardware_type.setter
    def hardware_type(self, value: int) -> None:
        _U16.pack_into(self.buffer, 0, value)

    @property
    def protocol_type(self) -> int:
        return _U16.unpack_from(self.buffer, 2)[0]

    @protocol_type.setter
    def protocol_type(self, value: int) -> None:
        _U16.pack_into(self.buffer, 2, value)

    @property
    def hardware_len(self) -> int:
        return self.buffer[HLEN]

    @hardware_len.setter
    def hardware_len(self, value: int) -> None:
        self.buffer[HLEN] = value

    @property
    def protocol_len(self) -> int:
        return self.buffer[PLEN]

    @protocol_len.setter
    def protocol_len(self, value: int) -> None:
        self.buffer[PLEN] = value

    @property
    def operation(self) -> int:
        return _U16.unpack_from(self.buffer, 6)[0]

    @operation.setter
    def operation(self, value: int) -> None:
        _U16.pack_into(self.buffer, 6, value)

    # Address fields: raw bytes, sized by hardware_len/protocol_len.

    def _field(self, index: int) -> slice:
        h, p = self.buffer[HLEN], self.buffer[PLEN]
        start = FIXED_LEN + (index // 2) * (h + p) + (h if index % 2 else 0)
        return slice(start, start + (p if index % 2 else h))

    @property
    def source_hardware_addr(self) -> bytes:
        return bytes(self.buffer[self._field(0)])

    @source_hardware_addr.setter
    def source_hardware_addr(self, value: bytes) -> None:
        self.buffer[self._field(0)] = value

    @property
    def source_protocol_addr(self) -> bytes:
        return bytes(self.buffer[self._field(1)])

    @source_protocol_addr.setter
    def source_protocol_addr(self, value: bytes) -> None:
        self.buffer[self._field(1)] = value

    @property
    def target_hardware_addr(self) -> bytes:
        return bytes(self.buffer[self._field(2)])

    @target_hardware_addr.setter
    def target_hardware_addr(self, value: bytes) -> None:
        self.buffer[self._field(2)] = value

    @property
    def target_protocol_addr(self) -> bytes:
        return bytes(self.buffer[self._field(3)])

    @target_protocol_addr.setter
    def target_protocol_addr(self, value: bytes) -> None:
        self.buffer[self._field(3)] = value

    @property
    def header_len(self) -> int:
        return FIXED_LEN + 2 * (self.buffer[HLEN] + self.buffer[PLEN])


@dataclass(frozen=True, slots=True)
class ArpRepr:
    """An Ethernet/IPv4 ARP request or reply."""

    operation: ArpOperation
    source_hardware_addr: EthernetAddress
    source_protocol_addr: IPv4Address
    target_hardware_addr: EthernetAddress
    target_protocol_addr: IPv4Address

    @classmethod
    def parse(cls, packet: ArpPacket) -> ArpRepr:
        b = packet.buffer
        if len(b) < HEADER_LEN:
            raise Error("arp: buffer shorter than an Ethernet/IPv4 ARP packet")
        htype, ptype, hlen, plen, oper, sha, spa, tha, tpa = _ETH_IPV4.unpack_from(b, 0)
        if htype != HARDWARE_ETHERNET or hlen != 6:
            raise Error("arp: hardware is not Ethernet")
        if ptype != PROTOCOL_IPV4 or plen != 4:
            raise Error("arp: protocol is not IPv4")
        if oper == 1:
            operation = ArpOperation.REQUEST
        elif oper == 2:
            operation = ArpOperation.REPLY
        else:
            raise Error(f"arp: unknown operation {oper}")
        return cls(
            operation, EthernetAddress(sha), IPv4Address(spa), EthernetAddress(tha), IPv4Address(tpa)
        )

    def buffer_len(self) -> int:
        return HEADER_LEN

    def emit(self, packet: ArpPacket) -> None:
        _ETH_IPV4.pack_into(
            packet.buffer,
            0,
            HARDWARE_ETHERNET,
            PROTOCOL_IPV4,
            6,
            4,
            self.operation,
            self.source_hardware_addr,
            self.source_protocol_addr.packed,
            self.target_hardware_addr,
            self.target_protocol_addr.packed,
        )
