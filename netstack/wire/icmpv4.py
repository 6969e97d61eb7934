"""ICMPv4 (RFC 792): echo request/reply, destination unreachable, time exceeded.

`Icmpv4Repr.parse` raises `Error` for every other type (redirect, parameter problem,
timestamps, router discovery...) and for codes not defined for the type: the stack does not
act on them, so the interface drops them as unsupported.

Error messages quote the offending datagram: its IP header and at least the first 8 bytes
of its payload (RFC 792); RFC 1812 §4.3.2.3 allows more, as long as the ICMP datagram stays
within 576 bytes. `quote_offending()` cuts the quote that way. On receive the quote must hold
a whole IPv4 header (version 4, IHL ≥ 5); the 8 payload bytes are not required, since a
datagram may carry fewer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from netstack.wire import Error
from netstack.wire.checksum import checksum as _checksum
from netstack.wire.ipv4 import HEADER_LEN as IPV4_HEADER_LEN
from netstack.wire.ipv4 import Ipv4Packet

TYPE = 0
CODE = 1
CHECKSUM = slice(2, 4)
ECHO_IDENT = slice(4, 6)
ECHO_SEQ_NO = slice(6, 8)
UNUSED = slice(4, 8)
NEXT_HOP_MTU = slice(6, 8)
HEADER_LEN = 8
# RFC 1812: the whole ICMP error datagram (IP header 20 + ICMP header 8 + quote) ≤ 576.
QUOTE_MAX_LEN = 576 - IPV4_HEADER_LEN - HEADER_LEN

_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!BBHHH")


class Icmpv4Message(IntEnum):
    ECHO_REPLY = 0
    DST_UNREACHABLE = 3
    SOURCE_QUENCH = 4
    REDIRECT = 5
    ECHO_REQUEST = 8
    ROUTER_ADVERT = 9
    ROUTER_SOLICIT = 10
    TIME_EXCEEDED = 11
    PARAM_PROBLEM = 12
    TIMESTAMP = 13
    TIMESTAMP_REPLY = 14


class DstUnreachable(IntEnum):
    NET_UNREACHABLE = 0
    HOST_UNREACHABLE = 1
    PROTO_UNREACHABLE = 2
    PORT_UNREACHABLE = 3
    FRAG_REQUIRED = 4
    SRC_ROUTE_FAILED = 5
    DST_NET_UNKNOWN = 6
    DST_HOST_UNKNOWN = 7
    SRC_HOST_ISOLATED = 8
    NET_PROHIBITED = 9
    HOST_PROHIBITED = 10
    NET_UNREACH_TOS = 11
    HOST_UNREACH_TOS = 12
    COMM_PROHIBITED = 13
    HOST_PRECEDENCE_VIOL = 14
    PRECEDENCE_CUTOFF = 15


class TimeExceeded(IntEnum):
    TTL_EXPIRED = 0
    FRAG_EXPIRED = 1


class Icmpv4Packet:
    """A view over an ICMPv4 message (the whole IPv4 payload: the checksum covers it all)."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        mv = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        self.buffer = mv if mv.format == "B" else mv.cast("B")

    @classmethod
    def new_checked(cls, buffer) -> Icmpv4Packet:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        if len(self.buffer) < HEADER_LEN:
            raise Error("icmpv4: buffer shorter than the header")

    @property
    def msg_type(self) -> int:
        return self.buffer[TYPE]

    @msg_type.setter
    def msg_type(self, value: int) -> None:
        self.buffer[TYPE] = value

    @property
    def msg_code(self) -> int:
        return self.buffer[CODE]

    @msg_code.setter
    def msg_code(self, value: int) -> None:
        self.buffer[CODE] = value

    @property
    def checksum(self) -> int:
        return _U16.unpack_from(self.buffer, 2)[0]

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buffer, 2, value)

    @property
    def echo_ident(self) -> int:
        return _U16.unpack_from(self.buffer, 4)[0]

    @echo_ident.setter
    def echo_ident(self, value: int) -> None:
        _U16.pack_into(self.buffer, 4, value)

    @property
    def echo_seq_no(self) -> int:
        return _U16.unpack_from(self.buffer, 6)[0]

    @echo_seq_no.setter
    def echo_seq_no(self, value: int) -> None:
        _U16.pack_into(self.buffer, 6, value)

    @property
    def next_hop_mtu(self) -> int:
        """Destination unreachable, code 4 (RFC 1191)."""
        return _U16.unpack_from(self.buffer, 6)[0]

    @next_hop_mtu.setter
    def next_hop_mtu(self, value: int) -> None:
        _U16.pack_into(self.buffer, 6, value)

    @property
    def data(self) -> memoryview:
        """Echo data, or the quoted datagram of an error message."""
        return self.buffer[HEADER_LEN:]

    payload = data

    def verify_checksum(self) -> bool:
        return _checksum(self.buffer) == 0

    def fill_checksum(self) -> None:
        b = self.buffer
        b[2] = 0
        b[3] = 0
        _U16.pack_into(b, 2, _checksum(b))


_ECHO = (Icmpv4Message.ECHO_REQUEST, Icmpv4Message.ECHO_REPLY)


@dataclass(frozen=True, slots=True)
class Icmpv4Repr:
    """One supported ICMPv4 message.

    - echo request/reply: `ident`, `seq_no`, `data` (code 0);
    - destination unreachable: `code` (a `DstUnreachable`), `data` = the quote, `mtu` for
      code 4 (FRAG_REQUIRED), else 0;
    - time exceeded: `code` (a `TimeExceeded`), `data` = the quote.

    After `parse`, `data` is a memoryview into the packet (no copy): copy it with `bytes()`
    to keep it past the buffer's life. The class-method constructors below are the easy way
    to build one.
    """

    msg_type: Icmpv4Message
    code: int = 0
    ident: int = 0
    seq_no: int = 0
    mtu: int = 0
    data: bytes | bytearray | memoryview = b""

    @classmethod
    def echo_request(cls, ident: int, seq_no: int, data=b"") -> Icmpv4Repr:
        return cls(Icmpv4Message.ECHO_REQUEST, 0, ident, seq_no, 0, data)

    @classmethod
    def echo_reply(cls, ident: int, seq_no: int, data=b"") -> Icmpv4Repr:
        return cls(Icmpv4Message.ECHO_REPLY, 0, ident, seq_no, 0, data)

    @classmethod
    def dst_unreachable(cls, code: int, quote, mtu: int = 0) -> Icmpv4Repr:
        return cls(Icmpv4Message.DST_UNREACHABLE, DstUnreachable(code), 0, 0, mtu, quote)

    @classmethod
    def time_exceeded(cls, code: int, quote) -> Icmpv4Repr:
        return cls(Icmpv4Message.TIME_EXCEEDED, TimeExceeded(code), 0, 0, 0, quote)

    @classmethod
    def parse(cls, packet: Icmpv4Packet, verify_checksum: bool = True) -> Icmpv4Repr:
        packet.check_len()
        b = packet.buffer
        if verify_checksum and _checksum(b) != 0:
            raise Error("icmpv4: bad checksum")
        msg_type, code, _csum, word1, word2 = _HEADER.unpack_from(b, 0)
        data = b[HEADER_LEN:]
        if msg_type == 8 or msg_type == 0:
            if code != 0:
                raise Error(f"icmpv4: echo with code {code}")
            return cls(Icmpv4Message(msg_type), 0, word1, word2, 0, data)
        if msg_type == 3:
            if code > 15:
                raise Error(f"icmpv4: unknown destination unreachable code {code}")
            _check_quote(data)
            mtu = word2 if code == 4 else 0
            return cls(Icmpv4Message.DST_UNREACHABLE, DstUnreachable(code), 0, 0, mtu, data)
        if msg_type == 11:
            if code > 1:
                raise Error(f"icmpv4: unknown time exceeded code {code}")
            _check_quote(data)
            return cls(Icmpv4Message.TIME_EXCEEDED, TimeExceeded(code), 0, 0, 0, data)
        raise Error(f"icmpv4: unsupported message type {msg_type}")

    def buffer_len(self) -> int:
        """Header plus data: the whole message."""
        return HEADER_LEN + len(self.data)

    def emit(self, packet: Icmpv4Packet, fill_checksum: bool = True) -> None:
        t = self.msg_type
        if t in _ECHO:
            word1, word2 = self.ident, self.seq_no
        elif t == Icmpv4Message.DST_UNREACHABLE:
            word1, word2 = 0, (self.mtu if self.code == DstUnreachable.FRAG_REQUIRED else 0)
        elif t == Icmpv4Message.TIME_EXCEEDED:
            word1, word2 = 0, 0
        else:
            raise ValueError(f"icmpv4: cannot emit message type {t}")
        b = packet.buffer
        _HEADER.pack_into(b, 0, t, self.code, 0, word1, word2)
        end = HEADER_LEN + len(self.data)
        b[HEADER_LEN:end] = self.data
        if fill_checksum:
            _U16.pack_into(b, 2, _checksum(b[:end]))

    @property
    def quoted_packet(self) -> Ipv4Packet:
        """The quoted datagram of an error message, as an unchecked view: its header fields
        are readable (the parse checked the header is whole); its payload is truncated."""
        return Ipv4Packet(self.data)


def _check_quote(data: memoryview) -> None:
    if len(data) < IPV4_HEADER_LEN:
        raise Error("icmpv4: quoted datagram shorter than an IPv4 header")
    if data[0] >> 4 != 4:
        raise Error("icmpv4: quoted datagram is not IPv4")
    header_len = (data[0] & 0x0F) * 4
    if header_len < IPV4_HEADER_LEN or len(data) < header_len:
        raise Error("icmpv4: quoted IPv4 header truncated")


def quote_offending(packet: Ipv4Packet, max_len: int = QUOTE_MAX_LEN) -> memoryview:
    """The part of `packet` (a checked datagram) an ICMP error quotes: its header and as
    much payload as fits in `max_len` bytes, never less than header + 8 bytes (RFC 792)
    unless the datagram itself is shorter. A view into the packet, not a copy."""
    total = min(packet.total_len, len(packet.buffer))
    keep = max(max_len, packet.header_len + 8)
    return packet.buffer[: min(total, keep)]

