"""IPv4 fragment reassembly (RFC 791 §3.2, RFC 815), bounded and sans-I/O.

Theory of operation. Fragments are keyed by (source, destination, protocol, ident). Each
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
  expires too). `poll_at()` says when to call next.
- Too many datagrams or bytes in progress: the oldest datagrams are evicted.

Time is an argument (`now`, seconds on a monotonic clock); nothing here reads a clock.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from dataclasses import dataclass

from netstack.wire import Error
from netstack.wire.checksum import checksum
from netstack.wire.ipv4 import MAX_TOTAL_LEN, Ipv4Packet

FRAGMENT_OVERHEAD = 64  # bytes charged per fragment held, beyond its payload
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
    __slots__ = ("deadline", "starts", "ends", "datas", "header", "total", "held", "charge")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.datas: list[bytes] = []
        self.header: bytes | None = None  # the header of the offset-0 fragment
        self.total: int | None = None  # payload length, known once MF=0 arrives
        self.held = 0  # payload bytes held
        self.charge = DATAGRAM_OVERHEAD  # bytes charged against max_bytes


class Ipv4Reassembler:
    """Collects IPv4 fragments and returns whole datagrams.

    Call `add(now, packet)` for every fragment (a checked `Ipv4Packet` whose header
    checksum was verified); it returns the reassembled datagram as bytes (header from the
    first fragment, total length and flags fixed, checksum refilled) when the last hole
    closes, else None. Call `expire(now)` at `poll_at()`.
    """

    __slots__ = ("max_bytes", "max_packets", "timeout", "stats", "_datagrams", "_bytes")

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
            if datagrams[key].deadline > now:
                break
            self._drop(key)
            dropped += 1
        self.stats.timeouts += dropped
        return dropped

    def _drop(self, key: tuple) -> None:
        dgram = self._datagrams.pop(key)
        self._bytes -= dgram.charge

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
        size = total_len - header_len
        if not more and offset == 0:  # not a fragment at all
            return bytes(b[:total_len])
        if more and (size == 0 or size % 8):
            stats.malformed += 1
            return None
        end = offset + size
        key = (bytes(b[12:20]), b[9], _U16.unpack_from(b, 4)[0])
        dgram = self._datagrams.get(key)

        if end + _MIN_HEADER > MAX_TOTAL_LEN:
            stats.oversize += 1
            if dgram is not None:
                self._drop(key)
            return None

        charge = size + FRAGMENT_OVERHEAD
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
            if dgram.datas[i] == b[header_len:total_len]:
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
        dgram.datas.insert(i, bytes(b[header_len:total_len]))
        dgram.held += size
        dgram.charge += charge
        self._bytes += charge
        if offset == 0:
            dgram.header = bytes(b[:header_len])

        if dgram.total is None or dgram.held != dgram.total:
            return None
        return self._finish(key, dgram)

    def _overlap(self, key: tuple) -> None:
        self.stats.overlaps += 1
        self._drop(key)
        return None

    def _evict_oldest(self) -> None:
        self.stats.evicted += 1
        self._drop(next(iter(self._datagrams)))

    def _finish(self, key: tuple, dgram: _Datagram) -> bytes | None:
        self._drop(key)
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
