r"""TFTP packets (RFC 1350) with the option extension (RFC 2347) carried in UDP, port 69.

`TftpPacket` is a view over a datagram's payload: the opcode, the block number or error code
of DATA/ACK/ERROR, and the NUL-terminated strings of requests and OACKs. One frozen repr per
opcode: `RequestRepr` (RRQ, WRQ), `DataRepr`, `AckRepr`, `ErrorRepr`, `OackRepr`; `parse`
returns whichever the opcode calls for. Malformed input raises `wire.Error` (see
wire/__init__).

Parsing rules:

- Opcodes 1 RRQ, 2 WRQ, 3 DATA, 4 ACK, 5 ERROR, 6 OACK (RFC 2347); any other is `Error`.
- Strings (file name, mode, option names and values, the error message) are decoded as
  latin-1: every byte maps to one character, so decoding never fails and
  `s.encode("latin-1")` gives the bytes back. RFC 1350 says "netascii", but a client sends
  whatever name it was given (UTF-8 from a shell, for one); the server, not the parser,
  decides what names it serves (it uses the bytes as a POSIX path).
- Requests: file name, mode, then option name/value pairs, each string NUL-terminated. A
  request that ends without its NUL, or an option name without a value, is `Error`. After
  the last pair, bytes that are all NULs are taken for padding and ignored (a request whose
  options are whole is worth answering); anything else after an empty option name is
  `Error`. The same rules hold for the option list of an OACK.
- Modes and option names are case-insensitive (RFC 1350 §5, RFC 2347): both are kept in
  lower case. Option values are kept as sent (strings: the server parses the numbers).
  An option named twice keeps its first value: RFC 2347 does not say, and keeping one keeps
  an OACK from naming an option twice.
- DATA: everything after the block number is data (no length limit here: the block size is
  the session's business). ACK: bytes after the block number are ignored.
- ERROR: the message runs to the first NUL; a missing NUL is tolerated (the message is the
  rest of the packet), because an error ends the transfer whatever it says and dropping it
  would keep a server retransmitting to a client that has gone.

Emit writes exactly `buffer_len()` bytes; strings are encoded as latin-1, and a string that
holds a NUL (or a character beyond latin-1) raises ValueError: a bug of the caller, not a
malformed packet.

>>> parse(b"\x00\x01/pxelinux.0\x00OCTET\x00BlkSize\x001468\x00")
RequestRepr(opcode=<Opcode.RRQ: 1>, filename='/pxelinux.0', mode='octet', options=(('blksize', '1468'),))
>>> OackRepr({"blksize": "1468"}).to_bytes()
b'\x00\x06blksize\x001468\x00'
>>> parse(AckRepr(65535).to_bytes())
AckRepr(block=65535)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from netstack.wire import Error

PORT = 69

OPCODE = slice(0, 2)
BLOCK = slice(2, 4)  # DATA, ACK
ERROR_CODE = slice(2, 4)  # ERROR
STRINGS = 2  # RRQ, WRQ, OACK: NUL-terminated strings from here
DATA = 4  # DATA: the data; ERROR: the message
HEADER_LEN = 4  # DATA, ACK, ERROR

DEFAULT_BLKSIZE = 512  # RFC 1350
MIN_BLKSIZE = 8  # RFC 2348
MAX_BLKSIZE = 65464  # RFC 2348
MIN_TIMEOUT = 1  # RFC 2349, seconds
MAX_TIMEOUT = 255
MIN_WINDOWSIZE = 1  # RFC 7440
MAX_WINDOWSIZE = 65535

_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!HH")


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6  # RFC 2347


class ErrorCode(IntEnum):
    NOT_DEFINED = 0  # see the message
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3  # or allocation exceeded
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5  # unknown transfer ID
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_NEGOTIATION = 8  # RFC 2347: terminate transfer due to option negotiation


class Mode:
    """The transfer modes of RFC 1350 §5, as `RequestRepr.mode` holds them (lower case)."""

    NETASCII = "netascii"
    OCTET = "octet"
    MAIL = "mail"  # obsolete (RFC 1350 §1: "should not be used"); servers refuse it


class TftpPacket:
    """A view over a TFTP message (a UDP payload). Use `new_checked` for anything that came
    off the wire: it guarantees the opcode and, for DATA/ACK/ERROR, the 4-byte header."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        mv = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        self.buffer = mv if mv.format == "B" else mv.cast("B")

    @classmethod
    def new_checked(cls, buffer) -> TftpPacket:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        b = self.buffer
        if len(b) < 2:
            raise Error("tftp: shorter than the opcode")
        op = _U16.unpack_from(b, 0)[0]
        if op in (Opcode.DATA, Opcode.ACK, Opcode.ERROR) and len(b) < HEADER_LEN:
            raise Error(f"tftp: opcode {op} without its 2-byte block number or error code")

    @property
    def opcode(self) -> int:
        return _U16.unpack_from(self.buffer, 0)[0]

    @opcode.setter
    def opcode(self, value: int) -> None:
        _U16.pack_into(self.buffer, 0, value)

    @property
    def block(self) -> int:
        """DATA and ACK: the block number (ERROR: the same two bytes are `error_code`)."""
        return _U16.unpack_from(self.buffer, 2)[0]

    @block.setter
    def block(self, value: int) -> None:
        _U16.pack_into(self.buffer, 2, value)

    error_code = block

    @property
    def payload(self) -> memoryview:
        """DATA: the data; ERROR: the message with its NUL."""
        return self.buffer[DATA:]

    @property
    def strings_buffer(self) -> memoryview:
        """RRQ, WRQ, OACK: the NUL-terminated strings."""
        return self.buffer[STRINGS:]

    def strings(self) -> list[str]:
        """The NUL-terminated strings after the opcode (latin-1). `Error` when the last
        one has no NUL."""
        body = self.buffer[STRINGS:]
        if not len(body):
            return []
        if body[-1] != 0:
            raise Error("tftp: string without its NUL terminator")
        return bytes(body[:-1]).decode("latin-1").split("\0")


def _options(strings: list[str]) -> tuple[tuple[str, str], ...]:
    """Name/value pairs from a string list (names in lower case, first of each name kept);
    an empty name starts the NUL padding, which must run to the end."""
    out: dict[str, str] = {}
    i, n = 0, len(strings)
    while i < n:
        name = strings[i]
        if not name:
            if any(strings[i:]):
                raise Error("tftp: empty option name")
            break
        if i + 1 >= n:
            raise Error(f"tftp: option {name!r} without a value")
        out.setdefault(name.lower(), strings[i + 1])
        i += 2
    return tuple(out.items())


def _option(options: tuple[tuple[str, str], ...], name: str) -> str | None:
    """The value of option `name` (any case) in normalized `options`, or None."""
    name = name.lower()
    for n, v in options:
        if n == name:
            return v
    return None


def _normalize(options) -> tuple[tuple[str, str], ...]:
    pairs = options.items() if isinstance(options, Mapping) else options
    out: dict[str, str] = {}
    for name, value in pairs:
        out.setdefault(str(name).lower(), str(value))
    return tuple(out.items())


def _encode(s: str, what: str) -> bytes:
    if "\0" in s:
        raise ValueError(f"tftp: {what} {s!r} holds a NUL")
    return s.encode("latin-1")


def _strings_len(strings: Iterable[str]) -> int:
    return sum(len(s) + 1 for s in strings)


def _emit_strings(b: memoryview, at: int, strings: Iterable[tuple[str, str]]) -> int:
    for s, what in strings:
        data = _encode(s, what)
        b[at : at + len(data)] = data
        b[at + len(data)] = 0
        at += len(data) + 1
    return at


class _Emit:
    """What every repr shares: `to_bytes()` on top of `buffer_len()` and `emit()`."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        buf = bytearray(self.buffer_len())
        self.emit(TftpPacket(buf))
        return bytes(buf)

    def _check_room(self, packet: TftpPacket) -> memoryview:
        b = packet.buffer
        if len(b) < self.buffer_len():
            raise ValueError(f"tftp: buffer of {len(b)} bytes cannot hold {self.buffer_len()}")
        return b


@dataclass(frozen=True, slots=True)
class RequestRepr(_Emit):
    """A read (RRQ) or write (WRQ) request. `options` are (name, value) pairs, names in lower
    case, one per name: a mapping or pairs given to the constructor are normalised so."""

    opcode: Opcode
    filename: str
    mode: str = Mode.OCTET
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.opcode not in (Opcode.RRQ, Opcode.WRQ):
            raise ValueError(f"tftp: a request is RRQ or WRQ, not {self.opcode!r}")
        object.__setattr__(self, "opcode", Opcode(self.opcode))
        object.__setattr__(self, "mode", self.mode.lower())
        object.__setattr__(self, "options", _normalize(self.options))

    def option(self, name: str) -> str | None:
        """The value of option `name` (any case), or None."""
        return _option(self.options, name)

    @classmethod
    def parse(cls, packet: TftpPacket) -> RequestRepr:
        packet.check_len()
        op = packet.opcode
        if op not in (Opcode.RRQ, Opcode.WRQ):
            raise Error(f"tftp: opcode {op} is not a request")
        strings = packet.strings()
        if len(strings) < 2:
            raise Error("tftp: request without a file name and a mode")
        return cls(Opcode(op), strings[0], strings[1], _options(strings[2:]))

    def _strings(self):
        yield self.filename, "file name"
        yield self.mode, "mode"
        for name, value in self.options:
            yield name, "option name"
            yield value, "option value"

    def buffer_len(self) -> int:
        return STRINGS + _strings_len(s for s, _ in self._strings())

    def emit(self, packet: TftpPacket) -> None:
        b = self._check_room(packet)
        _U16.pack_into(b, 0, self.opcode)
        _emit_strings(b, STRINGS, self._strings())


@dataclass(frozen=True, slots=True)
class DataRepr(_Emit):
    block: int
    data: bytes = b""

    @classmethod
    def parse(cls, packet: TftpPacket) -> DataRepr:
        packet.check_len()
        if packet.opcode != Opcode.DATA:
            raise Error(f"tftp: opcode {packet.opcode} is not DATA")
        return cls(packet.block, bytes(packet.payload))

    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.data)

    def emit(self, packet: TftpPacket) -> None:
        b = self._check_room(packet)
        _HEADER.pack_into(b, 0, Opcode.DATA, self.block)
        b[HEADER_LEN : HEADER_LEN + len(self.data)] = self.data


@dataclass(frozen=True, slots=True)
class AckRepr(_Emit):
    block: int

    @classmethod
    def parse(cls, packet: TftpPacket) -> AckRepr:
        packet.check_len()
        if packet.opcode != Opcode.ACK:
            raise Error(f"tftp: opcode {packet.opcode} is not ACK")
        return cls(packet.block)

    def buffer_len(self) -> int:
        return HEADER_LEN

    def emit(self, packet: TftpPacket) -> None:
        _HEADER.pack_into(self._check_room(packet), 0, Opcode.ACK, self.block)


@dataclass(frozen=True, slots=True)
class ErrorRepr(_Emit):
    """An ERROR. `code` is an `ErrorCode` when it is one of the nine defined, else the int."""

    code: int
    message: str = ""

    def __post_init__(self) -> None:
        if self.code in ErrorCode._value2member_map_:
            object.__setattr__(self, "code", ErrorCode(self.code))

    @classmethod
    def parse(cls, packet: TftpPacket) -> ErrorRepr:
        packet.check_len()
        if packet.opcode != Opcode.ERROR:
            raise Error(f"tftp: opcode {packet.opcode} is not ERROR")
        message = bytes(packet.payload).split(b"\0", 1)[0].decode("latin-1")
        return cls(packet.error_code, message)

    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.message) + 1

    def emit(self, packet: TftpPacket) -> None:
        b = self._check_room(packet)
        _HEADER.pack_into(b, 0, Opcode.ERROR, self.code)
        _emit_strings(b, HEADER_LEN, [(self.message, "error message")])


@dataclass(frozen=True, slots=True)
class OackRepr(_Emit):
    """An option acknowledgment (RFC 2347): the options the server accepted, with the
    values it chose."""

    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _normalize(self.options))

    def option(self, name: str) -> str | None:
        """The value of option `name` (any case), or None."""
        return _option(self.options, name)

    @classmethod
    def parse(cls, packet: TftpPacket) -> OackRepr:
        packet.check_len()
        if packet.opcode != Opcode.OACK:
            raise Error(f"tftp: opcode {packet.opcode} is not OACK")
        return cls(_options(packet.strings()))

    def _strings(self):
        for name, value in self.options:
            yield name, "option name"
            yield value, "option value"

    def buffer_len(self) -> int:
        return STRINGS + _strings_len(s for s, _ in self._strings())

    def emit(self, packet: TftpPacket) -> None:
        b = self._check_room(packet)
        _U16.pack_into(b, 0, Opcode.OACK)
        _emit_strings(b, STRINGS, self._strings())


TftpRepr = RequestRepr | DataRepr | AckRepr | ErrorRepr | OackRepr

_BY_OPCODE = {
    Opcode.RRQ: RequestRepr,
    Opcode.WRQ: RequestRepr,
    Opcode.DATA: DataRepr,
    Opcode.ACK: AckRepr,
    Opcode.ERROR: ErrorRepr,
    Opcode.OACK: OackRepr,
}


def parse(buffer) -> TftpRepr:
    """Any TFTP message: the repr its opcode calls for. `Error` on anything malformed,
    unknown opcodes included."""
    packet = TftpPacket.new_checked(buffer)
    cls = _BY_OPCODE.get(packet.opcode)
    if cls is None:
        raise Error(f"tftp: unknown opcode {packet.opcode}")
    return cls.parse(packet)
