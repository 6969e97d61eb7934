"""TCP segments (RFC 9293) over IPv4 or IPv6: header view, tolerant option parsing, Repr.

`TcpPacket` is the zero-copy view; `TcpPacket.new_checked` rejects a data offset below 5
words or past the buffer. The segment is the whole buffer: the IP layer hands over exactly
its payload, and the checksum covers it with the IPv4 or IPv6 pseudo-header picked by the
type of the `ipaddress` objects given.

Options are parsed tolerantly (RFC 9293 MUST-6/MUST-7, ADVERSARIAL.md case 17): EOL ends the
list, NOP is skipped, unknown kinds are skipped by their length, and a length below 2 or
running past the header stops parsing and keeps what was read so far. Known kinds with a
wrong length, an MSS of 0 and SACK blocks that are not 1-4 whole pairs are ignored; a window
scale above 14 is used as 14 (RFC 7323 §2.3). All of these set `malformed` so the caller can
count them; none raises, since a bad option must not cost the segment.

`TcpRepr.parse` leaves the payload as a memoryview slice of the packet (no copy; copy it
before the buffer is reused). `TcpRepr.emit` writes options in the order MSS, NOP+window
scale, SACK-permitted, timestamps, SACK blocks, each group NOP-padded to 4 bytes the way
Linux aligns them (so no trailing EOL is needed), at most 40 bytes: SACK blocks that do not
fit are dropped, the first ones (most recent, RFC 2018) kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from netstack.wire import Error
from netstack.wire.checksum import finish, partial, pseudo_header_v4, pseudo_header_v6

SRC_PORT = slice(0, 2)
DST_PORT = slice(2, 4)
SEQ_NUM = slice(4, 8)
ACK_NUM = slice(8, 12)
DATA_OFFSET = 12  # high nibble: header length in 32-bit words
FLAGS = 13
WINDOW = slice(14, 16)
CHECKSUM = slice(16, 18)
URGENT = slice(18, 20)
HEADER_LEN = 20
MAX_HEADER_LEN = 60
MAX_OPTIONS_LEN = 40
PROTOCOL = 6

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

MAX_WINDOW_SCALE = 14  # RFC 7323 §2.3
MAX_SACK_BLOCKS = 4

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
# src port, dst port, seq, ack, data offset byte, flags, window, checksum, urgent
_HEADER = struct.Struct("!HHIIBBHHH")
_II = struct.Struct("!II")

IpAddress = IPv4Address | IPv6Address


class TcpOption(IntEnum):
    """Option kinds we understand (IANA "TCP Option Kind Numbers")."""

    EOL = 0
    NOP = 1
    MSS = 2
    WINDOW_SCALE = 3
    SACK_PERMITTED = 4
    SACK = 5
    TIMESTAMP = 8


def _pseudo(src: IpAddress, dst: IpAddress, length: int) -> int:
    if isinstance(src, IPv4Address):
        return pseudo_header_v4(src.packed, dst.packed, PROTOCOL, length)
    return pseudo_header_v6(src.packed, dst.packed, PROTOCOL, length)


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """What `parse_options` found. `malformed` is True when anything was skipped, clamped
    or cut short (the segment is still good; count it)."""

    max_seg_size: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_ranges: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None
    malformed: bool = False


_NO_OPTIONS = TcpOptions()


def _parse_options(buf) -> tuple:
    """(mss, wscale, sack_permitted, sack_ranges, timestamp, malformed) from option bytes."""
    mss = wscale = timestamp = None
    sack_permitted = malformed = False
    sack_ranges: tuple[tuple[int, int], ...] = ()
    n = len(buf)
    i = 0
    while i < n:
        kind = buf[i]
        if kind == 0:  # EOL
            break
        if kind == 1:  # NOP
            i += 1
            continue
        if i + 1 >= n:
            malformed = True  # a kind byte with no room for its length
            break
        length = buf[i + 1]
        if length < 2 or i + length > n:
            malformed = True  # MUST-7: cannot find the next option; stop here
            break
        if kind == 2:
            if length == 4:
                value = _U16.unpack_from(buf, i + 2)[0]
                if value:
                    mss = value
                else:
                    malformed = True
            else:
                malformed = True
        elif kind == 3:
            if length == 3:
                value = buf[i + 2]
                if value > MAX_WINDOW_SCALE:
                    value = MAX_WINDOW_SCALE
                    malformed = True
                wscale = value
            else:
                malformed = True
        elif kind == 4:
            if length == 2:
                sack_permitted = True
            else:
                malformed = True
        elif kind == 5:
            blocks, rest = divmod(length - 2, 8)
            if rest or not 1 <= blocks <= MAX_SACK_BLOCKS:
                malformed = True
            else:
                sack_ranges = tuple(
                    _II.unpack_from(buf, i + 2 + 8 * k) for k in range(blocks)
                )
        elif kind == 8:
            if length == 10:
                timestamp = _II.unpack_from(buf, i + 2)
            else:
                malformed = True
        i += length
    return mss, wscale, sack_permitted, sack_ranges, timestamp, malformed


def parse_options(buf) -> TcpOptions:
    """Parse the option bytes of a header (`TcpPacket.options`). Never raises."""
    if not len(buf):
        return _NO_OPTIONS
    return TcpOptions(*_parse_options(buf))


class TcpPacket:
    """A view over a TCP segment. Use `new_checked` for anything that came off the wire."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        mv = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        self.buffer = mv if mv.format == "B" else mv.cast("B")

    @classmethod
    def new_checked(cls, buffer) -> TcpPacket:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        b = self.buffer
        if len(b) < HEADER_LEN:
            raise Error("tcp: buffer shorter than the header")
        header_len = (b[DATA_OFFSET] >> 4) * 4
        if header_len < HEADER_LEN:
            raise Error("tcp: data offset below 5 words")
        if header_len > len(b):
            raise Error("tcp: data offset beyond the buffer")

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
    def seq_number(self) -> int:
        return _U32.unpack_from(self.buffer, 4)[0]

    @seq_number.setter
    def seq_number(self, value: int) -> None:
        _U32.pack_into(self.buffer, 4, value)

    @property
    def ack_number(self) -> int:
        """The raw field; meaningful only when the ACK flag is set."""
        return _U32.unpack_from(self.buffer, 8)[0]

    @ack_number.setter
    def ack_number(self, value: int) -> None:
        _U32.pack_into(self.buffer, 8, value)

    @property
    def header_len(self) -> int:
        """Data offset × 4: header plus options, in bytes."""
        return (self.buffer[DATA_OFFSET] >> 4) * 4

    @header_len.setter
    def header_len(self, value: int) -> None:
        b = self.buffer
        b[DATA_OFFSET] = ((value // 4) << 4) | (b[DATA_OFFSET] & 0x0F)

    @property
    def flags(self) -> int:
        return self.buffer[FLAGS]

    @flags.setter
    def flags(self, value: int) -> None:
        self.buffer[FLAGS] = value

    @property
    def window_len(self) -> int:
        """The raw (unscaled) window field."""
        return _U16.unpack_from(self.buffer, 14)[0]

    @window_len.setter
    def window_len(self, value: int) -> None:
        _U16.pack_into(self.buffer, 14, value)

    @property
    def checksum(self) -> int:
        return _U16.unpack_from(self.buffer, 16)[0]

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buffer, 16, value)

    @property
    def urgent_at(self) -> int:
        return _U16.unpack_from(self.buffer, 18)[0]

    @urgent_at.setter
    def urgent_at(self, value: int) -> None:
        _U16.pack_into(self.buffer, 18, value)

    @property
    def options(self) -> memoryview:
        return self.buffer[HEADER_LEN : (self.buffer[DATA_OFFSET] >> 4) * 4]

    @property
    def payload(self) -> memoryview:
        return self.buffer[(self.buffer[DATA_OFFSET] >> 4) * 4 :]

    @property
    def segment_len(self) -> int:
        """Sequence space the segment occupies: payload bytes, plus one each for SYN, FIN."""
        b = self.buffer
        flags = b[FLAGS]
        return (
            len(b) - (b[DATA_OFFSET] >> 4) * 4 + (1 if flags & SYN else 0) + (flags & FIN)
        )

    def verify_checksum(self, src_addr: IpAddress, dst_addr: IpAddress) -> bool:
        b = self.buffer
        return finish(partial(b, _pseudo(src_addr, dst_addr, len(b)))) == 0

    def fill_checksum(self, src_addr: IpAddress, dst_addr: IpAddress) -> None:
        b = self.buffer
        b[16] = 0
        b[17] = 0
        _U16.pack_into(b, 16, finish(partial(b, _pseudo(src_addr, dst_addr, len(b)))))


@dataclass(slots=True, unsafe_hash=True)  # a value (see netstack.wire)
class TcpRepr:
    """A TCP header, high level. The ACK bit of `flags` follows `ack_number` (set iff it is
    not None); `__post_init__` corrects `flags` if they disagree. `window_len` is the raw
    16-bit field (the socket applies the scale). `urgent_at` is 0 unless URG is set.

    `options_malformed` (not part of equality) reports what `parse_options` flagged.
    """

    src_port: int
    dst_port: int
    seq_number: int
    ack_number: int | None
    flags: int
    window_len: int
    max_seg_size: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_ranges: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None
    urgent_at: int = 0
    payload: bytes | memoryview = b""
    options_malformed: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        flags = self.flags
        if self.ack_number is None:
            if flags & ACK:
                self.flags = flags & ~ACK
        elif not flags & ACK:
            self.flags = flags | ACK

    @classmethod
    def parse(
        cls,
        packet: TcpPacket,
        src_addr: IpAddress,
        dst_addr: IpAddress,
        verify_checksum: bool = True,
    ) -> TcpRepr:
        """Parse a segment. `verify_checksum=False` when the device has checked it (offload).

        Raises `Error` for a short buffer, bad data offset, port 0, SYN with FIN or RST,
        or a bad checksum. Options never raise (see the module docstring).
        """
        packet.check_len()
        b = packet.buffer
        src_port, dst_port, seq, ack, offset, flags, window, _csum, urgent = (
            _HEADER.unpack_from(b, 0)
        )
        if src_port == 0 or dst_port == 0:
            raise Error("tcp: port 0")
        if flags & SYN and flags & (FIN | RST):
            raise Error("tcp: SYN with FIN or RST")
        if verify_checksum and not packet.verify_checksum(src_addr, dst_addr):
            raise Error("tcp: bad checksum")
        header_len = (offset >> 4) * 4
        if header_len > HEADER_LEN:
            mss, wscale, sack_ok, sacks, ts, malformed = _parse_options(b[HEADER_LEN:header_len])
        else:
            mss = wscale = ts = None
            sack_ok = malformed = False
            sacks = ()
        return cls(
            src_port,
            dst_port,
            seq,
            ack if flags & ACK else None,
            flags,
            window,
            mss,
            wscale,
            sack_ok,
            sacks,
            ts,
            urgent if flags & URG else 0,
            b[header_len:],
            malformed,
        )

    @property
    def syn(self) -> bool:
        return bool(self.flags & SYN)

    @property
    def fin(self) -> bool:
        return bool(self.flags & FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & RST)

    @property
    def psh(self) -> bool:
        return bool(self.flags & PSH)

    @property
    def ack(self) -> bool:
        return self.ack_number is not None

    @property
    def segment_len(self) -> int:
        flags = self.flags
        return len(self.payload) + (1 if flags & SYN else 0) + (flags & FIN)

    def _sack_blocks_fitting(self, used: int) -> int:
        """How many SACK blocks fit after `used` option bytes (NOP NOP kind len + 8n)."""
        if not self.sack_ranges:
            return 0
        room = (MAX_OPTIONS_LEN - used - 4) // 8
        return max(0, min(len(self.sack_ranges), MAX_SACK_BLOCKS, room))

    def _options_len(self) -> int:
        """Option bytes emitted, padding included (a multiple of 4)."""
        n = 0
        if self.max_seg_size is not None:
            n += 4
        if self.window_scale is not None:
            n += 4
        if self.timestamp is not None:
            n += 12  # SACK-permitted rides in the timestamp's NOP NOP slot
        elif self.sack_permitted:
            n += 4
        blocks = self._sack_blocks_fitting(n)
        if blocks:
            n += 4 + 8 * blocks
        return n

    def header_len(self) -> int:
        """20 bytes plus the options, padded to a multiple of 4."""
        return HEADER_LEN + self._options_len()

    def buffer_len(self) -> int:
        """Header plus payload."""
        return HEADER_LEN + self._options_len() + len(self.payload)

    def emit(
        self,
        packet: TcpPacket,
        src_addr: IpAddress,
        dst_addr: IpAddress,
        fill_checksum: bool = True,
    ) -> None:
        """Write header, options and payload into `packet` (at least `buffer_len()` bytes;
        anything beyond is left alone), then the checksum over exactly those bytes.
        With `fill_checksum=False` the checksum field is left 0 (offload)."""
        b = packet.buffer
        ack = self.ack_number
        flags = self.flags & ~ACK & 0xFF
        if ack is not None:
            flags |= ACK
        # options
        i = HEADER_LEN
        if self.max_seg_size is not None:
            b[i] = 2
            b[i + 1] = 4
            _U16.pack_into(b, i + 2, self.max_seg_size)
            i += 4
        if self.window_scale is not None:
            b[i] = 1
            b[i + 1] = 3
            b[i + 2] = 3
            b[i + 3] = self.window_scale
            i += 4
        ts = self.timestamp
        if ts is not None:
            if self.sack_permitted:
                b[i] = 4
                b[i + 1] = 2
            else:
                b[i] = 1
                b[i + 1] = 1
            b[i + 2] = 8
            b[i + 3] = 10
            _II.pack_into(b, i + 4, ts[0], ts[1])
            i += 12
        elif self.sack_permitted:
            b[i] = 1
            b[i + 1] = 1
            b[i + 2] = 4
            b[i + 3] = 2
            i += 4
        blocks = self._sack_blocks_fitting(i - HEADER_LEN)
        if blocks:
            b[i] = 1
            b[i + 1] = 1
            b[i + 2] = 5
            b[i + 3] = 2 + 8 * blocks
            i += 4
            for left, right in self.sack_ranges[:blocks]:
                _II.pack_into(b, i, left, right)
                i += 8
        header_len = i
        payload = self.payload
        end = header_len + len(payload)
        _HEADER.pack_into(
            b,
            0,
            self.src_port,
            self.dst_port,
            self.seq_number,
            ack if ack is not None else 0,
            (header_len // 4) << 4,
            flags,
            self.window_len,
            0,
            self.urgent_at,
        )
        if payload:
            b[header_len:end] = payload
        if fill_checksum:
            _U16.pack_into(b, 16, finish(partial(b[:end], _pseudo(src_addr, dst_addr, end))))
