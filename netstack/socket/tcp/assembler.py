"""Out-of-order reassembly of a TCP receive stream, bounded in bytes and in ranges.

Offsets are relative to the in-order point (RCV.NXT): the socket converts sequence numbers
with `seq_sub(seg.seq, rcv_nxt)` and feeds every segment's data, in-order ones included,
through `add()`. `pop_contiguous()` then hands back the bytes starting at offset 0 and moves
the in-order point past them; the socket advances RCV.NXT by exactly `len()` of what it got.

    >>> a = Assembler(max_bytes=100)
    >>> a.add(3, b"def"), a.pop_contiguous()
    (True, b'')
    >>> a.add(0, b"abc"), a.pop_contiguous()
    (True, b'abcdef')

Bounds (ADVERSARIAL.md cases 20 and 23):
- Data at or beyond `max_bytes` past the in-order point is trimmed (the receive window).
- At most `max_segments` disjoint ranges are held; a further disjoint range is refused
  (`add` returns False) unless it starts at offset 0 — in-order data is always taken, or the
  connection could stall behind its own holes. Data that touches a held range is merged.
- Where new data overlaps held data the held bytes win (first copy kept).

Held ranges are deques of immutable chunks, so appending, prepending or joining two ranges
never copies what is already held; tiny chunks are coalesced to bound their number.
"""

from __future__ import annotations

from collections import deque

_SMALL = 1024  # chunks joined with a neighbour when both are smaller than this


class _Range:
    __slots__ = ("start", "end", "chunks", "stamp")

    def __init__(self, start: int, end: int, chunks: deque, stamp: int) -> None:
        self.start = start  # absolute offsets (since the assembler was made)
        self.end = end
        self.chunks = chunks
        self.stamp = stamp  # when it last grew, for SACK order


def _append(chunks: deque, data: bytes) -> None:
    if chunks and len(data) < _SMALL and len(chunks[-1]) < _SMALL:
        chunks[-1] = chunks[-1] + data
    else:
        chunks.append(data)


def _prepend(chunks: deque, data: bytes) -> None:
    if chunks and len(data) < _SMALL and len(chunks[0]) < _SMALL:
        chunks[0] = data + chunks[0]
    else:
        chunks.appendleft(data)


class Assembler:
    """Holds received data out of order until the gap before it is filled."""

    __slots__ = ("max_bytes", "max_segments", "_ranges", "_base", "_held", "_tick")

    def __init__(self, max_bytes: int, max_segments: int = 64) -> None:
        self.max_bytes = max_bytes
        self.max_segments = max_segments
        self._ranges: list[_Range] = []  # sorted, disjoint and not touching
        self._base = 0  # absolute offset of the in-order point
        self._held = 0
        self._tick = 0

    @property
    def is_empty(self) -> bool:
        return not self._ranges

    @property
    def held_bytes(self) -> int:
        return self._held

    @property
    def contiguous_len(self) -> int:
        """Bytes ready at offset 0 (what `pop_contiguous()` would return)."""
        ranges = self._ranges
        if ranges and ranges[0].start == self._base:
            return ranges[0].end - self._base
        return 0

    def add(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """Store `data` at `offset` bytes past the in-order point.

        A negative offset drops the part already delivered. Returns False when nothing
        could be stored (entirely beyond `max_bytes`, or a new disjoint range while
        `max_segments` are held); True otherwise, duplicates and empty data included.
        """
        n = len(data)
        if offset < 0:
            if offset + n <= 0:
                return True
            data = data[-offset:]
            n += offset
            offset = 0
        if n == 0:
            return True
        if offset + n > self.max_bytes:
            n = self.max_bytes - offset
            if n <= 0:
                return False
            data = data[:n]
        base = self._base
        s = base + offset
        e = s + n
        ranges = self._ranges
        # ranges[i:j] are the ones that overlap or touch [s, e)
        i = 0
        count = len(ranges)
        while i < count and ranges[i].end < s:
            i += 1
        j = i
        while j < count and ranges[j].start <= e:
            j += 1
        self._tick += 1
        if i == j:
            if count >= self.max_segments and offset != 0:
                return False
            ranges.insert(i, _Range(s, e, deque((bytes(data),)), self._tick))
            self._held += n
            return True
        first = ranges[i]
        chunks = first.chunks
        added = 0
        if s < first.start:
            _prepend(chunks, bytes(data[: first.start - s]))
            added += first.start - s
            first.start = s
        cur = first.end
        for k in range(i + 1, j):
            nxt = ranges[k]
            gap = nxt.start - cur  # > 0: ranges never touch
            _append(chunks, bytes(data[cur - s : nxt.start - s]))
            added += gap
            if nxt.chunks:
                _append(chunks, nxt.chunks.popleft())
                chunks.extend(nxt.chunks)
            cur = nxt.end
        if e > cur:
            _append(chunks, bytes(data[cur - s :]))
            added += e - cur
            cur = e
        first.end = cur
        if j - i > 1:
            del ranges[i + 1 : j]
        if added:
            first.stamp = self._tick
            self._held += added
        return True

    def pop_contiguous(self, max_n: int | None = None) -> bytes:
        """Remove and return up to `max_n` (default: all) bytes in order from offset 0, and
        move the in-order point past them. b"" while there is a hole at offset 0."""
        ranges = self._ranges
        if not ranges or ranges[0].start != self._base:
            return b""
        first = ranges[0]
        avail = first.end - first.start
        if max_n is None or max_n >= avail:
            out = b"".join(first.chunks)
            del ranges[0]
        else:
            if max_n <= 0:
                return b""
            chunks = first.chunks
            parts = []
            need = max_n
            while need:
                c = chunks.popleft()
                if len(c) > need:
                    chunks.appendleft(c[need:])
                    c = c[:need]
                parts.append(c)
                need -= len(c)
            out = b"".join(parts)
            first.start += max_n
        self._base += len(out)
        self._held -= len(out)
        return out

    def sack_blocks(self, max_blocks: int = 4) -> list[tuple[int, int]]:
        """Held ranges past a hole as (start_offset, end_offset), most recently grown first
        (RFC 2018 §4). A range at offset 0 is not a SACK block (it is ready to pop)."""
        base = self._base
        held = [r for r in self._ranges if r.start != base]
        held.sort(key=lambda r: r.stamp, reverse=True)
        return [(r.start - base, r.end - base) for r in held[:max_blocks]]

    def __repr__(self) -> str:
        base = self._base
        spans = ", ".join(f"{r.start - base}..{r.end - base}" for r in self._ranges)
        return f"Assembler([{spans}], held={self._held})"


# The empty reassembly state every connection starts with, shared: an Assembler per
# connection is one more object for the garbage collector to walk, 100,000 times over,
# and most connections never see a segment out of order. Never add to it (the socket
# replaces it with its own Assembler first).
NO_GAPS = Assembler(0)
