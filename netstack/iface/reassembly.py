"""IPv4 and IPv6 fragment reassembly (RFC 791 §3.2, RFC 815, RFC 8200 §4.5), bounded and
sans-I/O.

Theory of operation. Fragments are keyed by (source, destination, protocol, ident) for IPv4
and (source, destination, ident) for IPv6. Each
datagram in progress keeps its fragments' payloads as separate byte strings, sorted by
offset; nothing is ever allocated from a size a fragment claims, only from bytes that
arrived, and every byte held is charged against `max_bytes` (plus a fixed overhead per
fragment and per datagram, so a flood of tiny fragments is bounded too). Because overlaps
are refused, the datagram is complete exactly when the last fragment (MF = 0) has fixed its
length and the bytes held add up to it.

Hostile input (ADVERSARIAL.md case 21) and what happens to it:

- Overlapping fragments: the whole datagram is dropped (as RFC 5722 requires for IPv6; the
  same defence against overlap attacks serves IPv4). An exact duplicate (same offset, same
  bytes) is ignored and counted, since the network duplicates packets.
- A datagram whose fragments reach beyond 65535 bytes ("ping of death"), or a second last
  fragment that disagrees on the length, or data past the known end: dropped.
- A non-last fragment whose length is not a multiple of 8, or is empty: the fragment is
  malformed and dropped.
- Never completed: dropped `timeout` seconds after its first fragment (`expire(now)`; `add`
  expires too). `poll_at()` says when to call next. For IPv6, when the offset-0 fragment
  had arrived, the start of that fragment (at most `QUOTE_MAX_LEN` bytes, charged like
  the rest) is kept for the ICMPv6 Time Exceeded code 1 RFC 8200 §4.5 asks for:
  `take_expired()` hands those quotes over (at most `MAX_EXPIRED_QUOTES` wait).
- Too many datagrams or bytes in progress: the oldest datagrams are evicted.

Time is an argument (`now`, seconds on a monotonic clock); nothing here reads a clock.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from dataclasses import dataclass

from netstack.wire import Error
from netstack.wire.checksum import checksum
from netstack.wire.icmpv6 import QUOTE_MAX_LEN
from netstack.wire.ipv4 import MAX_TOTAL_LEN, Ipv4Packet
from netstack.wire.ipv6 import HEADER_LEN as IPV6_HEADER_LEN
from netstack.wire.ipv6 import FragmentInfo

FRAGMENT_OVERHEAD = 64  # bytes charged per fragment held, beyond its payload
MAX_EXPIRED_QUOTES = 16  # timed-out first fragments waiting for `take_expired()`
DATAGRAM_OVERHEAD = 256  # bytes charged per datagram in progress (state + first header)
_MIN_HEADER = 20

_U16 = struct.Struct("!H")


@dataclass(slots=True)
class ReassemblyStats:
    fragments: int = 0  # fragments handed to add()
    reassembled: int = 0  # datagrams completed
    duplicates: int = 0  # exact duplicate fragments ignored
    overlaps: int = 0  # datagrams dropped for overlapping or inconsistent fragments
    oversize: int = 0  # datagrams dropped for exceeding 65535 bytes
    malformed: int = 0  # fragments dropped as malformed
    timeouts: int = 0  # datagrams dropped by expire()
    evicted: int = 0  # datagrams dropped to respect max_packets / max_bytes
    too_big: int = 0  # fragments dropped because alone they exceed max_bytes


class _Datagram:
    __slots__ = ("deadline", "starts", "ends", "datas", "header", "total", "held", "charge",
                 "quote")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.datas: list[bytes] = []
        self.header: bytes | None = None  # the header of the offset-0 fragment
        self.total: int | None = None  # payload length, known once MF=0 arrives
        self.held = 0  # payload bytes held
        self.charge = DATAGRAM_OVERHEAD  # bytes charged against max_bytes
        self.quote: bytes | None = None  # IPv6: the offset-0 fragment as received, cut


class _Reassembler:
    """The bookkeeping both families share: datagrams keyed by the caller, their pieces
    sorted by offset, every byte charged against `max_bytes`."""

    __slots__ = ("max_bytes", "max_packets", "timeout", "stats", "_datagrams", "_bytes",
                 "_expired")

    def __init__(
        self, max_bytes: int = 256 * 1024, max_packets: int = 64, timeout: float = 30.0
    ) -> None:
        self.max_bytes = max_bytes
        self.max_packets = max_packets
        self.timeout = timeout
        self.stats = ReassemblyStats()
        # insertion order is creation order, hence deadline order and eviction order
        self._datagrams: dict[tuple, _Datagram] = {}
        self._bytes = 0
        self._expired: list[bytes] = []

    def __len__(self) -> int:
        """Datagrams in progress."""
        return len(self._datagrams)

    @property
    def bytes_in_use(self) -> int:
        """Bytes charged against `max_bytes` (payloads plus fixed overheads)."""
        return self._bytes

    def poll_at(self) -> float | None:
        """When the oldest datagram in progress expires, or None if there is none."""
        for dgram in self._datagrams.values():
            return dgram.deadline
        return None

    def expire(self, now: float) -> int:
        """Drop every datagram whose deadline has passed; return how many."""
        dropped = 0
        datagrams = self._datagrams
        while datagrams:
            key = next(iter(datagrams))
            dgram = datagrams[key]
            if dgram.deadline > now:
                break
            self._drop(key)
            dropped += 1
            if dgram.quote is not None and len(self._expired) < MAX_EXPIRED_QUOTES:
                self._expired.append(dgram.quote)
        self.stats.timeouts += dropped
        return dropped

    def take_expired(self) -> list[bytes]:
        """The quotes of timed-out datagrams whose first fragment had arrived (IPv6 only),
        oldest first; each is handed over once."""
        out, self._expired = self._expired, []
        return out

    def _drop(self, key: tuple) -> None:
        dgram = self._datagrams.pop(key)
        self._bytes -= dgram.charge

    def _overlap(self, key: tuple) -> None:
        self.stats.overlaps += 1
        self._drop(key)
        return None

    def _evict_oldest(self) -> None:
        self.stats.evicted += 1
        self._drop(next(iter(self._datagrams)))

    def _piece(self, now: float, key: tuple, offset: int, more: bool, data,
               header: bytes | None, max_end: int,
               quote: bytes | None = None) -> _Datagram | None:
        """Hold `data` at `offset` of datagram `key` (`header` is kept when offset is 0);
        the datagram when it is now complete (already forgotten here), else None."""
        stats = self.stats
        size = len(data)
        if more and (size == 0 or size % 8):
            stats.malformed += 1
            return None
        end = offset + size
        dgram = self._datagrams.get(key)

        if end > max_end:
            stats.oversize += 1
            if dgram is not None:
                self._drop(key)
            return None

        charge = size + FRAGMENT_OVERHEAD + (len(quote) if quote is not None else 0)
        if charge + DATAGRAM_OVERHEAD > self.max_bytes:
            stats.too_big += 1
            return None

        if dgram is None:
            while len(self._datagrams) >= self.max_packets:
                self._evict_oldest()
            dgram = _Datagram(now + self.timeout)
            self._datagrams[key] = dgram
            self._bytes += dgram.charge

        # Where it goes, and whether it collides with what is there.
        starts, ends = dgram.starts, dgram.ends
        i = bisect_left(starts, offset)
        if i < len(starts) and starts[i] == offset and ends[i] == end:
            if dgram.datas[i] == data:
                stats.duplicates += 1
                return None
            return self._overlap(key)
        if (i > 0 and ends[i - 1] > offset) or (i < len(starts) and starts[i] < end):
            return self._overlap(key)
        if dgram.total is not None and end > dgram.total:
            return self._overlap(key)
        if not more:
            if dgram.total is not None or (ends and ends[-1] > end):
                return self._overlap(key)
            dgram.total = end

        # Make room (never by evicting this datagram: if it alone is too big, drop it).
        while self._bytes + charge > self.max_bytes:
            victim = next((k for k in self._datagrams if k != key), None)
            stats.evicted += 1
            if victim is None:
                self._drop(key)
                return None
            self._drop(victim)

        starts.insert(i, offset)
        ends.insert(i, end)
        dgram.datas.insert(i, bytes(data))
        dgram.held += size
        dgram.charge += charge
        self._bytes += charge
        if offset == 0:
            dgram.header = header
            dgram.quote = quote

        if dgram.total is None or dgram.held != dgram.total:
            return None
        self._drop(key)
        return dgram

class Ipv4Reassembler(_Reassembler):
    """Collects IPv4 fragments and returns whole datagrams.

    Call `add(now, packet)` for every fragment (a checked `Ipv4Packet` whose header
    checksum was verified); it returns the reassembled datagram as bytes (header from the
    first fragment, total length and flags fixed, checksum refilled) when the last hole
    closes, else None. Call `expire(now)` at `poll_at()`.
    """

    __slots__ = ()

    def add(self, now: float, packet: Ipv4Packet) -> bytes | None:
        stats = self.stats
        stats.fragments += 1
        if self._datagrams:
            self.expire(now)
        b = packet.buffer
        try:
            packet.check_len()
        except Error:
            stats.malformed += 1
            return None
        header_len = packet.header_len
        total_len = packet.total_len
        flg_off = _U16.unpack_from(b, 6)[0]
        more = bool(flg_off & 0x2000)
        offset = (flg_off & 0x1FFF) * 8
        if not more and offset == 0:  # not a fragment at all
            return bytes(b[:total_len])
        key = (bytes(b[12:20]), b[9], _U16.unpack_from(b, 4)[0])
        header = bytes(b[:header_len]) if offset == 0 else None
        dgram = self._piece(now, key, offset, more, b[header_len:total_len], header,
                            MAX_TOTAL_LEN - _MIN_HEADER)
        if dgram is None:
            return None
        return self._finish(dgram)

    def _finish(self, dgram: _Datagram) -> bytes | None:
        header = bytearray(dgram.header)  # complete coverage implies offset 0 arrived
        total_len = len(header) + dgram.total
        if total_len > MAX_TOTAL_LEN:
            self.stats.oversize += 1
            return None
        _U16.pack_into(header, 2, total_len)
        header[6] &= 0x40  # keep DF, clear MF and the offset
        header[7] = 0
        header[10] = 0
        header[11] = 0
        _U16.pack_into(header, 10, checksum(header))
        self.stats.reassembled += 1
        return b"".join([header, *dgram.datas])


class Ipv6Reassembler(_Reassembler):
    """Collects IPv6 fragments (RFC 8200 §4.5) and returns whole datagrams.

    `add(now, datagram, frag)` takes a whole received fragment (fixed header included,
    bounded by its payload length) and the `FragmentInfo` `walk_headers` found in it. The
    reassembled datagram keeps the unfragmentable part of the offset-0 fragment, drops the
    Fragment header, points the preceding Next Header field at what followed it and fixes
    the payload length. Overlaps drop the datagram (RFC 5722); the default timeout is RFC
    8200's 60 s. Atomic fragments (RFC 6946) never come here: the interface processes them
    as they are. After `expire` (or an `add` that expired something), `take_expired()`
    gives the quotes for ICMPv6 Time Exceeded.
    """

    __slots__ = ()

    def __init__(self, max_bytes: int = 256 * 1024, max_packets: int = 64,
                 timeout: float = 60.0) -> None:
        super().__init__(max_bytes, max_packets, timeout)

    def add(self, now: float, datagram, frag: FragmentInfo) -> bytes | None:
        stats = self.stats
        stats.fragments += 1
        if self._datagrams:
            self.expire(now)
        b = memoryview(datagram)
        unfrag_end = IPV6_HEADER_LEN + frag.header_offset
        data_start = unfrag_end + 8
        if data_start > len(b):
            stats.malformed += 1
            return None
        key = (bytes(b[8:40]), frag.ident)
        header = quote = None
        if frag.offset == 0:
            header = bytearray(b[:unfrag_end])
            header[IPV6_HEADER_LEN + frag.prev_next_header_offset] = frag.next_header
            quote = bytes(b[:QUOTE_MAX_LEN])
        dgram = self._piece(now, key, frag.offset, frag.more, b[data_start:], header,
                            0xFFFF - frag.header_offset, quote)
        if dgram is None:
            return None
        header = dgram.header
        payload_len = len(header) - IPV6_HEADER_LEN + dgram.total
        if payload_len > 0xFFFF:
            stats.oversize += 1
            return None
        _U16.pack_into(header, 4, payload_len)
        stats.reassembled += 1
        return b"".join([bytes(header), *dgram.datas])
