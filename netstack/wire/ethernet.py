"""Ethernet II frames (IEEE 802.3 with EtherType), an 802.1Q tag tolerated on receive.

The model for every wire module: offsets, a Packet view, a frozen Repr. See wire/__init__.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from netstack.wire import Error

DST = slice(0, 6)
SRC = slice(6, 12)
ETHERTYPE = slice(12, 14)
HEADER_LEN = 14
VLAN_TPID = 0x8100
VLAN_HEADER_LEN = 4


class EtherType(IntEnum):
    IPV4 = 0x0800
    ARP = 0x0806
    VLAN = 0x8100
    IPV6 = 0x86DD


class EthernetAddress(bytes):
    """A 6-byte MAC address; `str()` gives the colon form, `parse()` reads it back."""

    __slots__ = ()

    def __new__(cls, value: bytes | bytearray | memoryview = b"\x00" * 6):
        value = bytes(value)
        if len(value) != 6:
            raise ValueError(f"an Ethernet address has 6 bytes, not {len(value)}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> EthernetAddress:
        parts = text.replace("-", ":").split(":")
        if len(parts) != 6:
            raise ValueError(f"not a MAC address: {text!r}")
        try:
            return cls(bytes(int(p, 16) for p in parts))
        except ValueError:
            raise ValueError(f"not a MAC address: {text!r}") from None

    @property
    def is_broadcast(self) -> bool:
        return self == BROADCAST

    @property
    def is_multicast(self) -> bool:
        return bool(self[0] & 1)

    @property
    def is_unicast(self) -> bool:
        return not self[0] & 1

    def __str__(self) -> str:
        return ":".join(f"{b:02x}" for b in self)

    def __repr__(self) -> str:
        return f"EthernetAddress('{self}')"


BROADCAST = EthernetAddress(b"\xff" * 6)


class EthernetFrame:
    """A view over an Ethernet II frame. An 802.1Q tag, if present, is skipped by
    `ethertype`/`payload` (the VLAN id is kept in `vlan_id`)."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        self.buffer = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) else buffer

    @classmethod
    def new_checked(cls, buffer) -> EthernetFrame:
        frame = cls(buffer)
        frame.check_len()
        return frame

    def check_len(self) -> None:
        n = len(self.buffer)
        if n < HEADER_LEN:
            raise Error("ethernet: frame shorter than its header")
        if self._tagged and n < HEADER_LEN + VLAN_HEADER_LEN:
            raise Error("ethernet: truncated 802.1Q tag")

    @property
    def _tagged(self) -> bool:
        b = self.buffer
        return b[12] == 0x81 and b[13] == 0x00

    @property
    def header_len(self) -> int:
        return HEADER_LEN + (VLAN_HEADER_LEN if self._tagged else 0)

    @property
    def dst_addr(self) -> EthernetAddress:
        return EthernetAddress(self.buffer[DST])

    @dst_addr.setter
    def dst_addr(self, value: bytes) -> None:
        self.buffer[DST] = value

    @property
    def src_addr(self) -> EthernetAddress:
        return EthernetAddress(self.buffer[SRC])

    @src_addr.setter
    def src_addr(self, value: bytes) -> None:
        self.buffer[SRC] = value

    @property
    def ethertype(self) -> int:
        off = 16 if self._tagged else 12
        return struct.unpack_from("!H", self.buffer, off)[0]

    @ethertype.setter
    def ethertype(self, value: int) -> None:
        struct.pack_into("!H", self.buffer, 12, value)

    @property
    def vlan_id(self) -> int | None:
        if not self._tagged:
            return None
        return struct.unpack_from("!H", self.buffer, 14)[0] & 0x0FFF

    @property
    def payload(self) -> memoryview:
        return self.buffer[self.header_len :]


@dataclass(frozen=True, slots=True)
class EthernetRepr:
    src_addr: EthernetAddress
    dst_addr: EthernetAddress
    ethertype: int

    @classmethod
    def parse(cls, frame: EthernetFrame) -> EthernetRepr:
        frame.check_len()
        return cls(frame.src_addr, frame.dst_addr, frame.ethertype)

    def buffer_len(self) -> int:
        return HEADER_LEN

    def emit(self, frame: EthernetFrame) -> None:
        """Write the untagged 14-byte header; the payload starts at HEADER_LEN."""
        b = frame.buffer
        b[DST] = self.dst_addr
        b[SRC] = self.src_addr
        struct.pack_into("!H", b, 12, self.ethertype)
