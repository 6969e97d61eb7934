"""DNS messages (RFC 1035, AAAA from RFC 3596) carried in UDP on port 53.

`DnsPacket` is a view over the 12-byte header; `DnsRepr` is the whole message: header flags,
questions, answers, authorities and additionals. Malformed input raises `wire.Error`.

Names:

- Parsed with compression pointers. A pointer must point strictly before the start of the
  label run that contains it (so every jump goes further back and loops are impossible), at
  most `MAX_POINTERS` jumps and `MAX_LABELS` labels per name, each label ≤ 63 bytes, the whole
  name ≤ 255 bytes in wire form. The 0b01/0b10 label types (RFC 6891 extended labels) raise
  `Error`.
- Returned as `str` in presentation form without the trailing dot ("www.example.com"), the
  root as "."; case is preserved. Label bytes that are not printable ASCII, and '.', '\\' and
  space, are escaped RFC 1035-style ("\\." / "\\\\" / "\\DDD"), so every wire name has exactly
  one text form and emit reads the escapes back: parse → emit is lossless.
- `emit` accepts names with or without the trailing dot ("" and "." are both the root),
  and compresses repeated suffixes (case-sensitive match, so case is preserved).

Record data (`Record.data`): `IPv4Address` for A, `IPv6Address` for AAAA, a name (`str`) for
CNAME, PTR and NS; raw `bytes` for every other type. For MX, SRV and SOA the names inside the
raw data are decompressed on parse (written out in full), so the bytes can be emitted into
another message; emit copies raw data as is, uncompressed.

Counts are checked against the body length before any list is built: each question needs at
least 5 bytes and each record 11, so a header claiming 65535 records in an empty body is
rejected at once. Trailing bytes after the last record are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address

from netstack.wire import Error

PORT = 53

ID = slice(0, 2)
FLAGS = slice(2, 4)
QDCOUNT = slice(4, 6)
ANCOUNT = slice(6, 8)
NSCOUNT = slice(8, 10)
ARCOUNT = slice(10, 12)
HEADER_LEN = 12

FLAG_QR = 0x8000
OPCODE_SHIFT = 11
OPCODE_MASK = 0x7800
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_AD = 0x0020
FLAG_CD = 0x0010
RCODE_MASK = 0x000F

MAX_LABEL_LEN = 63
MAX_NAME_LEN = 255
MAX_POINTERS = 64
MAX_LABELS = 127
MIN_QUESTION_LEN = 5  # root name + type + class
MIN_RECORD_LEN = 11  # root name + type + class + ttl + rdlength
POINTER_LIMIT = 0x4000  # compression offsets are 14 bits


class Type(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    ANY = 255


class Class(IntEnum):
    IN = 1
    CH = 3
    HS = 4
    NONE = 254
    ANY = 255


class Opcode(IntEnum):
    QUERY = 0
    IQUERY = 1
    STATUS = 2
    NOTIFY = 4
    UPDATE = 5


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


def _enum(enum, value: int):
    """The enum member for `value` when it is known, the plain int otherwise."""
    try:
        return enum(value)
    except ValueError:
        return value


# -- names ---------------------------------------------------------------------------------------

_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("."), ord("\\")}


def _label_to_text(label: bytes) -> str:
    out = []
    for c in label:
        if c in _PLAIN:
            out.append(chr(c))
        elif c in (ord("."), ord("\\")):
            out.append("\\" + chr(c))
        else:
            out.append(f"\\{c:03d}")
    return "".join(out)


def name_to_labels(name: str) -> tuple[bytes, ...]:
    """Split a presentation-form name into wire labels (escapes decoded).

    Raises `ValueError` for empty labels, labels over 63 bytes, names over 255 bytes, bad
    escapes or non-ASCII characters: these are local mistakes, not malformed packets.
    """
    if name in ("", "."):
        return ()
    labels: list[bytes] = []
    cur = bytearray()
    i = 0
    n = len(name)
    while i < n:
        ch = name[i]
        if ch == ".":
            if not cur:
                raise ValueError(f"dns: empty label in {name!r}")
            labels.append(bytes(cur))
            cur = bytearray()
            i += 1
            continue
        if ch == "\\":
            digits = name[i + 1 : i + 4]
            if len(digits) == 3 and digits.isascii() and digits.isdigit():
                value = int(digits)
                if value > 255:
                    raise ValueError(f"dns: bad escape in {name!r}")
                cur.append(value)
                i += 4
                continue
            if i + 1 < n and not name[i + 1].isdigit() and ord(name[i + 1]) <= 0x7F:
                cur.append(ord(name[i + 1]))
                i += 2
                continue
            raise ValueError(f"dns: bad escape in {name!r}")
        if ord(ch) > 0x7F:
            raise ValueError(f"dns: non-ASCII character in {name!r} (use IDNA/punycode)")
        cur.append(ord(ch))
        i += 1
    if cur:
        labels.append(bytes(cur))
    for label in labels:
        if len(label) > MAX_LABEL_LEN:
            raise ValueError(f"dns: label longer than 63 bytes in {name!r}")
    if sum(len(label) + 1 for label in labels) + 1 > MAX_NAME_LEN:
        raise ValueError(f"dns: name longer than 255 bytes: {name!r}")
    return tuple(labels)


def labels_to_name(labels) -> str:
    return ".".join(_label_to_text(label) for label in labels) if labels else "."


def read_name(buffer: memoryview, offset: int) -> tuple[str, int]:
    """Read the (possibly compressed) name at `offset` in the message `buffer`.

    Returns the name and the offset just past it where it sits (after the first pointer, if
    any). Raises `Error` on truncation, loops, forward pointers or over-long names.
    """
    labels, end = _read_labels(buffer, offset)
    return labels_to_name(labels), end


def _read_labels(buf: memoryview, offset: int) -> tuple[list[bytes], int]:
    labels: list[bytes] = []
    end = len(buf)
    pos = offset
    run_start = offset  # start of the label run being read; pointers must go before it
    after: int | None = None  # where the name ends in place (after the first pointer)
    wire_len = 1
    jumps = 0
    while True:
        if pos >= end:
            raise Error("dns: name runs past the end of the message")
        length = buf[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                raise Error("dns: truncated compression pointer")
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if after is None:
                after = pos + 2
            if target >= run_start:
                raise Error("dns: compression pointer does not point backwards")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise Error("dns: too many compression pointers")
            pos = run_start = target
            continue
        if kind:
            raise Error(f"dns: unsupported label type {kind >> 6:#04b}")
        if length == 0:
            return labels, (pos + 1 if after is None else after)
        start = pos + 1
        if start + length > end:
            raise Error("dns: label runs past the end of the message")
        wire_len += length + 1
        if wire_len > MAX_NAME_LEN:
            raise Error("dns: name longer than 255 bytes")
        labels.append(bytes(buf[start : start + length]))
        if len(labels) > MAX_LABELS:
            raise Error("dns: too many labels")
        pos = start + length


class _Writer:
    """Accumulates a message, compressing name suffixes against earlier names."""

    __slots__ = ("out", "suffixes")

    def __init__(self) -> None:
        self.out = bytearray()
        self.suffixes: dict[tuple[bytes, ...], int] = {}

    def name(self, name: str) -> None:
        labels = name_to_labels(name)
        for i in range(len(labels)):
            suffix = labels[i:]
            offset = self.suffixes.get(suffix)
            if offset is not None:
                self.out += struct.pack("!H", 0xC000 | offset)
                return
            if len(self.out) < POINTER_LIMIT:
                self.suffixes[suffix] = len(self.out)
            self.out.append(len(labels[i]))
            self.out += labels[i]
        self.out.append(0)


# -- packet view ---------------------------------------------------------------------------------


class DnsPacket:
    """A view over a DNS message: the header fields; the body is `payload`."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        self.buffer = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) else buffer

    @classmethod
    def new_checked(cls, buffer) -> DnsPacket:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        if len(self.buffer) < HEADER_LEN:
            raise Error("dns: message shorter than its header")

    def _u16(self, s: slice) -> int:
        return int.from_bytes(self.buffer[s], "big")

    def _set_u16(self, s: slice, value: int) -> None:
        self.buffer[s] = value.to_bytes(2, "big")

    def _flag(self, bit: int) -> bool:
        return bool(self.flags & bit)

    def _set_flag(self, bit: int, on: bool) -> None:
        self.flags = (self.flags | bit) if on else (self.flags & ~bit)

    @property
    def id(self) -> int:
        return self._u16(ID)

    @id.setter
    def id(self, value: int) -> None:
        self._set_u16(ID, value)

    @property
    def flags(self) -> int:
        return self._u16(FLAGS)

    @flags.setter
    def flags(self, value: int) -> None:
        self._set_u16(FLAGS, value)

    @property
    def is_response(self) -> bool:
        return self._flag(FLAG_QR)

    @is_response.setter
    def is_response(self, value: bool) -> None:
        self._set_flag(FLAG_QR, value)

    @property
    def opcode(self) -> int:
        return _enum(Opcode, (self.flags & OPCODE_MASK) >> OPCODE_SHIFT)

    @opcode.setter
    def opcode(self, value: int) -> None:
        self.flags = (self.flags & ~OPCODE_MASK) | ((value << OPCODE_SHIFT) & OPCODE_MASK)

    @property
    def authoritative(self) -> bool:
        return self._flag(FLAG_AA)

    @authoritative.setter
    def authoritative(self, value: bool) -> None:
        self._set_flag(FLAG_AA, value)

    @property
    def truncated(self) -> bool:
        return self._flag(FLAG_TC)

    @truncated.setter
    def truncated(self, value: bool) -> None:
        self._set_flag(FLAG_TC, value)

    @property
    def recursion_desired(self) -> bool:
        return self._flag(FLAG_RD)

    @recursion_desired.setter
    def recursion_desired(self, value: bool) -> None:
        self._set_flag(FLAG_RD, value)

    @property
    def recursion_available(self) -> bool:
        return self._flag(FLAG_RA)

    @recursion_available.setter
    def recursion_available(self, value: bool) -> None:
        self._set_flag(FLAG_RA, value)

    @property
    def authentic_data(self) -> bool:
        return self._flag(FLAG_AD)

    @property
    def checking_disabled(self) -> bool:
        return self._flag(FLAG_CD)

    @property
    def rcode(self) -> int:
        return _enum(Rcode, self.flags & RCODE_MASK)

    @rcode.setter
    def rcode(self, value: int) -> None:
        self.flags = (self.flags & ~RCODE_MASK) | (value & RCODE_MASK)

    @property
    def question_count(self) -> int:
        return self._u16(QDCOUNT)

    @question_count.setter
    def question_count(self, value: int) -> None:
        self._set_u16(QDCOUNT, value)

    @property
    def answer_count(self) -> int:
        return self._u16(ANCOUNT)

    @answer_count.setter
    def answer_count(self, value: int) -> None:
        self._set_u16(ANCOUNT, value)

    @property
    def authority_count(self) -> int:
        return self._u16(NSCOUNT)

    @authority_count.setter
    def authority_count(self, value: int) -> None:
        self._set_u16(NSCOUNT, value)

    @property
    def additional_count(self) -> int:
        return self._u16(ARCOUNT)

    @additional_count.setter
    def additional_count(self, value: int) -> None:
        self._set_u16(ARCOUNT, value)

    @property
    def payload(self) -> memoryview:
        return self.buffer[HEADER_LEN:]


# -- reprs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    qtype: int = Type.A
    qclass: int = Class.IN

    @classmethod
    def _parse(cls, buf: memoryview, offset: int) -> tuple[Question, int]:
        name, pos = read_name(buf, offset)
        if pos + 4 > len(buf):
            raise Error("dns: truncated question")
        qtype, qclass = struct.unpack_from("!HH", buf, pos)
        return cls(name, _enum(Type, qtype), _enum(Class, qclass)), pos + 4

    def _emit(self, w: _Writer) -> None:
        w.name(self.name)
        w.out += struct.pack("!HH", self.qtype, self.qclass)


RecordData = IPv4Address | IPv6Address | str | bytes

_NAME_TYPES = (Type.CNAME, Type.PTR, Type.NS)


# Types whose raw data embeds names: (bytes before the names, number of names, bytes after).
_EMBEDDED_NAMES = {Type.MX: (2, 1, 0), Type.SRV: (6, 1, 0), Type.SOA: (0, 2, 20)}


def _labels_to_wire(labels: list[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def _decompress_rdata(buf: memoryview, start: int, layout: tuple[int, int, int]) -> bytes:
    """The record data from `start` to the end of `buf` with its embedded names written out
    in full, so the bytes stay valid outside the message they came from."""
    before, names, after = layout
    end = len(buf)
    pos = start + before
    if pos > end:
        raise Error("dns: record data too short")
    out = bytearray(buf[start:pos])
    for _ in range(names):
        labels, pos = _read_labels(buf, pos)
        out += _labels_to_wire(labels)
    if pos + after != end:
        raise Error("dns: record data length does not match its contents")
    out += buf[pos:end]
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Record:
    """A resource record. `data` depends on `rtype` (see the module docstring)."""

    name: str
    rtype: int
    rclass: int = Class.IN
    ttl: int = 0
    data: RecordData = b""

    @classmethod
    def _parse(cls, buf: memoryview, offset: int) -> tuple[Record, int]:
        name, pos = read_name(buf, offset)
        if pos + 10 > len(buf):
            raise Error("dns: truncated resource record header")
        rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", buf, pos)
        start = pos + 10
        end = start + rdlength
        if end > len(buf):
            raise Error("dns: resource record data runs past the end of the message")
        data: RecordData
        if rtype == Type.A:
            if rdlength != 4:
                raise Error("dns: A record data is not 4 bytes")
            data = IPv4Address(bytes(buf[start:end]))
        elif rtype == Type.AAAA:
            if rdlength != 16:
                raise Error("dns: AAAA record data is not 16 bytes")
            data = IPv6Address(bytes(buf[start:end]))
        elif rtype in _NAME_TYPES:
            # Pointers may reach anywhere earlier in the message, but the name must end
            # exactly at the end of the record data.
            data, name_end = read_name(buf[:end], start)
            if name_end != end:
                raise Error("dns: name in record data does not fill it")
        elif rtype in _EMBEDDED_NAMES:
            data = _decompress_rdata(buf[:end], start, _EMBEDDED_NAMES[rtype])
        else:
            data = bytes(buf[start:end])
        return cls(name, _enum(Type, rtype), _enum(Class, rclass), ttl, data), end

    def _emit(self, w: _Writer) -> None:
        w.name(self.name)
        w.out += struct.pack("!HHI", self.rtype, self.rclass, self.ttl)
        length_at = len(w.out)
        w.out += b"\x00\x00"
        data = self.data
        if self.rtype == Type.A or self.rtype == Type.AAAA:
            want = IPv4Address if self.rtype == Type.A else IPv6Address
            if not isinstance(data, want):
                raise ValueError(f"dns: {Type(self.rtype).name} record needs an {want.__name__}")
            w.out += data.packed
        elif self.rtype in _NAME_TYPES:
            if not isinstance(data, str):
                raise ValueError(f"dns: {Type(self.rtype).name} record needs a name (str)")
            w.name(data)
        else:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise ValueError(f"dns: type {self.rtype} record needs raw bytes")
            w.out += data
        rdlength = len(w.out) - length_at - 2
        if rdlength > 0xFFFF:
            raise ValueError("dns: record data longer than 65535 bytes")
        struct.pack_into("!H", w.out, length_at, rdlength)


@dataclass(frozen=True, slots=True)
class DnsRepr:
    """A whole DNS message."""

    id: int
    is_response: bool = False
    opcode: int = Opcode.QUERY
    authoritative: bool = False
    truncated: bool = False
    recursion_desired: bool = False
    recursion_available: bool = False
    authentic_data: bool = False
    checking_disabled: bool = False
    rcode: int = Rcode.NOERROR
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = field(default=())

    @classmethod
    def parse(cls, packet: DnsPacket) -> DnsRepr:
        packet.check_len()
        buf = packet.buffer
        qd = packet.question_count
        records = (packet.answer_count, packet.authority_count, packet.additional_count)
        body = len(buf) - HEADER_LEN
        if qd * MIN_QUESTION_LEN + sum(records) * MIN_RECORD_LEN > body:
            raise Error("dns: counts claim more entries than the message can hold")
        pos = HEADER_LEN
        questions = []
        for _ in range(qd):
            q, pos = Question._parse(buf, pos)
            questions.append(q)
        sections: list[tuple[Record, ...]] = []
        for count in records:
            section = []
            for _ in range(count):
                r, pos = Record._parse(buf, pos)
                section.append(r)
            sections.append(tuple(section))
        return cls(
            id=packet.id,
            is_response=packet.is_response,
            opcode=packet.opcode,
            authoritative=packet.authoritative,
            truncated=packet.truncated,
            recursion_desired=packet.recursion_desired,
            recursion_available=packet.recursion_available,
            authentic_data=packet.authentic_data,
            checking_disabled=packet.checking_disabled,
            rcode=packet.rcode,
            questions=tuple(questions),
            answers=sections[0],
            authorities=sections[1],
            additionals=sections[2],
        )

    @property
    def flags(self) -> int:
        return (
            (FLAG_QR if self.is_response else 0)
            | ((self.opcode << OPCODE_SHIFT) & OPCODE_MASK)
            | (FLAG_AA if self.authoritative else 0)
            | (FLAG_TC if self.truncated else 0)
            | (FLAG_RD if self.recursion_desired else 0)
            | (FLAG_RA if self.recursion_available else 0)
            | (FLAG_AD if self.authentic_data else 0)
            | (FLAG_CD if self.checking_disabled else 0)
            | (self.rcode & RCODE_MASK)
        )

    def to_bytes(self) -> bytes:
        """The whole message, compressed. `emit` copies exactly these bytes."""
        for section in (self.questions, self.answers, self.authorities, self.additionals):
            if len(section) > 0xFFFF:
                raise ValueError("dns: more than 65535 entries in a section")
        w = _Writer()
        w.out += struct.pack(
            "!HHHHHH", self.id, self.flags, len(self.questions), len(self.answers),
            len(self.authorities), len(self.additionals),
        )
        for q in self.questions:
            q._emit(w)
        for section in (self.answers, self.authorities, self.additionals):
            for r in section:
                r._emit(w)
        return bytes(w.out)

    def buffer_len(self) -> int:
        return len(self.to_bytes())

    def emit(self, packet: DnsPacket) -> None:
        data = self.to_bytes()
        if len(packet.buffer) < len(data):
            raise ValueError(f"dns: buffer of {len(packet.buffer)} bytes cannot hold {len(data)}")
        packet.buffer[: len(data)] = data


# -- reverse lookups -----------------------------------------------------------------------------


def reverse_pointer_name(ip: IPv4Address | IPv6Address | str) -> str:
    """The PTR query name for an address: "4.3.2.1.in-addr.arpa" or the 32-nibble ip6.arpa."""
    return ip_address(ip).reverse_pointer


def parse_reverse_name(name: str) -> IPv4Address | IPv6Address | None:
    """The address a full in-addr.arpa / ip6.arpa name stands for, None for anything else
    (partial names such as "2.10.in-addr.arpa", non-canonical octets like "010", junk).
    Case-insensitive; a trailing dot is accepted."""
    labels = name.lower().rstrip(".").split(".")
    if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
        octets = labels[3::-1]
        for o in octets:
            if not (o.isascii() and o.isdigit()) or len(o) > 3 or (len(o) > 1 and o[0] == "0"):
                return None
            if int(o) > 255:
                return None
        return IPv4Address(".".join(octets))
    if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
        nibbles = labels[31::-1]
        hexdigits = "0123456789abcdef"
        if not all(len(x) == 1 and x in hexdigits for x in nibbles):
            return None
        return IPv6Address(int("".join(nibbles), 16))
    return None
