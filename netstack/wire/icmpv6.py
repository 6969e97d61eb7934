"""ICMPv6 (RFC 4443): echo request/reply and the four error messages.

`Icmpv6Packet` is a view over any ICMPv6 message (NDP and MLD included: their bodies are
parsed by `wire.ndisc` and `wire.mld`). `Icmpv6Repr.parse` handles only echo and the errors
(destination unreachable, packet too big, time exceeded, parameter problem) and raises
`Error` for every other type, for echo with a non-zero code and for codes not defined for
the type (packet too big's code is ignored on receive, RFC 4443 §3.2, and reads as 0).

The checksum covers the IPv6 pseudo-header (next header 58, upper-layer length = the whole
message, RFC 4443 §2.3 / RFC 8200 §8.1), so verify/fill take the source and destination
addresses of the enclosing IPv6 header.

Error messages quote the invoking packet: as much of it as fits without the error exceeding
the minimum IPv6 MTU (RFC 4443 §2.4(c)), i.e. `QUOTE_MAX_LEN` = 1280 - 40 - 8 bytes;
`quote_offending()` cuts it so. On receive the quote must hold a whole fixed IPv6 header
(40 bytes, version 6), else `Error`: without it the stack could not match the error to a
socket, so it drops the message.

After `parse`, `data` is a copy (`bytes`), safe to keep past the buffer's life.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv6Address

from netstack.wire import Error
from netstack.wire.checksum import finish, partial, pseudo_header_v6

TYPE = 0
CODE = 1
CHECKSUM = slice(2, 4)
ECHO_IDENT = slice(4, 6)
ECHO_SEQ_NO = slice(6, 8)
MTU = slice(4, 8)
POINTER = slice(4, 8)
UNUSED = slice(4, 8)
HEADER_LEN = 8
NEXT_HEADER = 58
MIN_MTU = 1280
IPV6_HEADER_LEN = 40
# RFC 4443 §2.4(c): the error (IPv6 header + ICMPv6 header + quote) must fit the minimum MTU.
QUOTE_MAX_LEN = MIN_MTU - IPV6_HEADER_LEN - HEADER_LEN

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_HEADER = struct.Struct("!BBHI")


class Icmpv6Message(IntEnum):
    DST_UNREACHABLE = 1
    PKT_TOO_BIG = 2
    TIME_EXCEEDED = 3
    PARAM_PROBLEM = 4
    ECHO_REQUEST = 128
    ECHO_REPLY = 129
    MLD_QUERY = 130
    MLD_REPORT = 131
    MLD_DONE = 132
    ROUTER_SOLICIT = 133
    ROUTER_ADVERT = 134
    NEIGHBOR_SOLICIT = 135
    NEIGHBOR_ADVERT = 136
    REDIRECT = 137
    MLDV2_REPORT = 143


class DstUnreachable(IntEnum):
    NO_ROUTE = 0
    ADMIN_PROHIBITED = 1
    BEYOND_SCOPE = 2
    ADDR_UNREACHABLE = 3
    PORT_UNREACHABLE = 4
    SRC_POLICY_FAILED = 5
    REJECT_ROUTE = 6


class TimeExceeded(IntEnum):
    HOP_LIMIT = 0
    FRAG_REASSEMBLY = 1


class ParamProblem(IntEnum):
    ERRONEOUS_HEADER = 0
    UNRECOGNIZED_NEXT_HEADER = 1
    UNRECOGNIZED_OPTION = 2


_CODES: dict[int, type[IntEnum]] = {
    Icmpv6Message.DST_UNREACHABLE: DstUnreachable,
    Icmpv6Message.TIME_EXCEEDED: TimeExceeded,
    Icmpv6Message.PARAM_PROBLEM: ParamProblem,
}
_ERRORS = frozenset(
    (
        Icmpv6Message.DST_UNREACHABLE,
        Icmpv6Message.PKT_TOO_BIG,
        Icmpv6Message.TIME_EXCEEDED,
        Icmpv6Message.PARAM_PROBLEM,
    )
)
_ECHO = frozenset((Icmpv6Message.ECHO_REQUEST, Icmpv6Message.ECHO_REPLY))


def _pseudo(src: IPv6Address, dst: IPv6Address, length: int) -> int:
    return pseudo_header_v6(src.packed, dst.packed, NEXT_HEADER, length)


def checksum_ok(buf, src: IPv6Address, dst: IPv6Address) -> bool:
    """Whether the ICMPv6 message `buf` (the whole upper-layer payload) checksums to zero."""
    return finish(partial(buf, _pseudo(src, dst, len(buf)))) == 0


def fill_checksum(buf, src: IPv6Address, dst: IPv6Address) -> None:
    """Compute and store the checksum of the whole ICMPv6 message `buf` (writable)."""
    buf[2] = 0
    buf[3] = 0
    _U16.pack_into(buf, 2, finish(partial(buf, _pseudo(src, dst, len(buf)))))


class Icmpv6Packet:
    """A view over an ICMPv6 message: the whole IPv6 upper-layer payload (the checksum covers
    it all, so the buffer must end where the message ends)."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        mv = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        self.buffer = mv if mv.format == "B" else mv.cast("B")

    @classmethod
    def new_checked(cls, buffer) -> Icmpv6Packet:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        if len(self.buffer) < HEADER_LEN:
            raise Error("icmpv6: buffer shorter than the header")

    @property
    def msg_type(self) -> int:
        return self.buffer[TYPE]

    @msg_type.setter
    def msg_type(self, value: int) -> None:
        self.buffer[TYPE] = value

    @property
    def code(self) -> int:
        return self.buffer[CODE]

    @code.setter
    def code(self, value: int) -> None:
        self.buffer[CODE] = value

    @property
    def checksum(self) -> int:
        return _U16.unpack_from(self.buffer, 2)[0]

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buffer, 2, value)

    @property
    def ident(self) -> int:
        """Echo identifier."""
        return _U16.unpack_from(self.buffer, 4)[0]

    @ident.setter
    def ident(self, value: int) -> None:
        _U16.pack_into(self.buffer, 4, value)

    @property
    def seq_no(self) -> int:
        """Echo sequence number."""
        return _U16.unpack_from(self.buffer, 6)[0]

    @seq_no.setter
    def seq_no(self, value: int) -> None:
        _U16.pack_into(self.buffer, 6, value)

    @property
    def mtu(self) -> int:
        """Packet too big: the MTU of the next-hop link."""
        return _U32.unpack_from(self.buffer, 4)[0]

    @mtu.setter
    def mtu(self, value: int) -> None:
        _U32.pack_into(self.buffer, 4, value)

    @property
    def pointer(self) -> int:
        """Parameter problem: offset of the error in the invoking packet."""
        return _U32.unpack_from(self.buffer, 4)[0]

    @pointer.setter
    def pointer(self, value: int) -> None:
        _U32.pack_into(self.buffer, 4, value)

    @property
    def payload(self) -> memoryview:
        """The bytes after the 8-byte header: echo data, an error's quote, or an NDP/MLD
        body past its first word."""
        return self.buffer[HEADER_LEN:]

    def verify_checksum(self, src: IPv6Address, dst: IPv6Address) -> bool:
        return checksum_ok(self.buffer, src, dst)

    def fill_checksum(self, src: IPv6Address, dst: IPv6Address) -> None:
        fill_checksum(self.buffer, src, dst)


@dataclass(frozen=True, slots=True)
class Icmpv6Repr:
    """One echo or error message.

    - echo request/reply: `ident`, `seq_no`, `data` (code 0);
    - destination unreachable: `code` (a `DstUnreachable`), `data` = the quote;
    - packet too big: `mtu`, `data` = the quote (code 0);
    - time exceeded: `code` (a `TimeExceeded`), `data` = the quote;
    - parameter problem: `code` (a `ParamProblem`), `pointer`, `data` = the quote.

    Fields that do not belong to the type are 0 and are not emitted. Use the class-method
    constructors; they cut a quote to `QUOTE_MAX_LEN`.
    """

    msg_type: int
    code: int = 0
    ident: int = 0
    seq_no: int = 0
    mtu: int = 0
    pointer: int = 0
    data: bytes = b""

    @classmethod
    def echo_request(cls, ident: int, seq_no: int, data=b"") -> Icmpv6Repr:
        return cls(Icmpv6Message.ECHO_REQUEST, 0, ident, seq_no, 0, 0, bytes(data))

    @classmethod
    def echo_reply(cls, ident: int, seq_no: int, data=b"") -> Icmpv6Repr:
        return cls(Icmpv6Message.ECHO_REPLY, 0, ident, seq_no, 0, 0, bytes(data))

    @classmethod
    def dst_unreachable(cls, code: int, quote) -> Icmpv6Repr:
        return cls(Icmpv6Message.DST_UNREACHABLE, DstUnreachable(code), data=_cut(quote))

    @classmethod
    def packet_too_big(cls, mtu: int, quote) -> Icmpv6Repr:
        return cls(Icmpv6Message.PKT_TOO_BIG, 0, mtu=mtu, data=_cut(quote))

    @classmethod
    def time_exceeded(cls, code: int, quote) -> Icmpv6Repr:
        return cls(Icmpv6Message.TIME_EXCEEDED, TimeExceeded(code), data=_cut(quote))

    @classmethod
    def param_problem(cls, code: int, pointer: int, quote) -> Icmpv6Repr:
        return cls(Icmpv6Message.PARAM_PROBLEM, ParamProblem(code), pointer=pointer,
                   data=_cut(quote))

    @property
    def is_error(self) -> bool:
        """An error message (type < 128, RFC 4443 §2.1): never answered with an error."""
        return self.msg_type < 128

    @classmethod
    def parse(cls, packet: Icmpv6Packet, src: IPv6Address, dst: IPv6Address,
              verify_checksum: bool = True) -> Icmpv6Repr:
        packet.check_len()
        b = packet.buffer
        if verify_checksum and not checksum_ok(b, src, dst):
            raise Error("icmpv6: bad checksum")
        msg_type, code, _csum, word = _HEADER.unpack_from(b, 0)
        data = bytes(b[HEADER_LEN:])
        if msg_type in _ECHO:
            if code != 0:
                raise Error(f"icmpv6: echo with code {code}")
            return cls(Icmpv6Message(msg_type), 0, word >> 16, word & 0xFFFF, 0, 0, data)
        if msg_type not in _ERRORS:
            raise Error(f"icmpv6: unsupported message type {msg_type}")
        _check_quote(data)
        if msg_type == Icmpv6Message.PKT_TOO_BIG:
            return cls(Icmpv6Message.PKT_TOO_BIG, 0, mtu=word, data=data)
        codes = _CODES[msg_type]
        try:
            code = codes(code)
        except ValueError:
            raise Error(f"icmpv6: unknown code {code} for type {msg_type}") from None
        pointer = word if msg_type == Icmpv6Message.PARAM_PROBLEM else 0
        return cls(Icmpv6Message(msg_type), code, pointer=pointer, data=data)

    def buffer_len(self) -> int:
        """Header plus data: the whole message."""
        return HEADER_LEN + len(self.data)

    def emit(self, packet: Icmpv6Packet, src: IPv6Address, dst: IPv6Address,
             fill_checksum: bool = True) -> None:
        """Write the whole message into `packet.buffer[:buffer_len()]`. With `fill_checksum`
        False the checksum is left 0 (for checksum offload)."""
        t = self.msg_type
        if t in _ECHO:
            word = (self.ident << 16) | self.seq_no
        elif t == Icmpv6Message.PKT_TOO_BIG:
            word = self.mtu
        elif t == Icmpv6Message.PARAM_PROBLEM:
            word = self.pointer
        elif t in _ERRORS:
            word = 0
        else:
            raise ValueError(f"icmpv6: cannot emit message type {t} with Icmpv6Repr")
        b = packet.buffer
        end = HEADER_LEN + len(self.data)
        _HEADER.pack_into(b, 0, t, self.code, 0, word)
        b[HEADER_LEN:end] = self.data
        if fill_checksum:
            _U16.pack_into(b, 2, finish(partial(b[:end], _pseudo(src, dst, end))))


def _cut(quote) -> bytes:
    return bytes(quote[:QUOTE_MAX_LEN])


def _check_quote(data: bytes) -> None:
    if len(data) < IPV6_HEADER_LEN:
        raise Error("icmpv6: quoted packet shorter than an IPv6 header")
    if data[0] >> 4 != 6:
        raise Error("icmpv6: quoted packet is not IPv6")


def quote_offending(ipv6_datagram) -> bytes:
    """The part of an IPv6 datagram (header included) an ICMPv6 error quotes: the datagram
    up to its payload length (padding past it dropped), cut to `QUOTE_MAX_LEN` bytes."""
    mv = memoryview(ipv6_datagram).cast("B")
    end = len(mv)
    if end >= IPV6_HEADER_LEN and mv[0] >> 4 == 6:
        payload_len = _U16.unpack_from(mv, 4)[0]
        if payload_len:  # 0 means a jumbogram (RFC 2675): keep the buffer's length
            end = min(end, IPV6_HEADER_LEN + payload_len)
    return bytes(mv[: min(end, QUOTE_MAX_LEN)])
