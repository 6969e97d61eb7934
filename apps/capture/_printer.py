"""The printer's side of the decoder (apps/capture/decode.py): one frame's output being
written, and the bounds-checked reads every protocol printer goes through.

Shaped after tcpdump's netdissect: a `Printer` holds the frame's captured bytes, the end of
what the current layer may read (`end`: the capture, cut to the IP datagram's length as
`nd_push_snaplen` does), the pieces written so far and the name of the protocol being
printed. A read past `end` raises `Truncated` (tcpdump's GET_ macros, which longjmp out of
every printer); `decode` catches it and ends the line with ` [|proto]`, as tcpdump's
`nd_print_trunc` does, so whatever a printer wrote before the bytes ran out stays on the
line. `check` raises `LocalTruncated` where tcpdump's ND_TCHECK makes only that printer give
up (the one caller that prints more after it catches it). Nothing else may escape a
printer: malformed fields are printed as tcpdump prints them, never raised.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
MAX_DEPTH = 16  # IP-in-IP or ICMP-in-ICMP nesting printed; deeper ends with [|ip]


class Truncated(Exception):  # noqa: N818  (control flow: the bytes ran out)
    """The captured bytes ran out before the printer had what it needed."""


class LocalTruncated(Truncated):  # noqa: N818
    """tcpdump's `goto trunc` after an ND_TCHECK: ` [|proto]`, and the printer returns to
    its caller, which may print more (an ICMP error's extensions after the datagram it
    quotes); a plain Truncated (a GET past the end) ends the whole line."""


class Printer:
    """One frame being printed: `buf` its captured bytes, `end` how far the current layer
    may read, `out` the pieces written, `proto` the protocol being printed (for
    ` [|proto]`), `v` the verbosity (tcpdump's -v count) and `dec` the Decoder (its
    state: TCP sequence numbers, TFTP sessions)."""

    __slots__ = ("buf", "end", "out", "proto", "v", "dec", "depth")

    def __init__(self, buf: bytes, v: int, dec) -> None:
        self.depth = 0  # IP headers entered (tunnels, ICMP quotes): bounded by MAX_DEPTH
        self.buf = buf
        self.end = len(buf)
        self.out: list[str] = []
        self.proto = ""
        self.v = v
        self.dec = dec

    def w(self, s: str) -> None:
        self.out.append(s)

    def enter(self, proto: str) -> None:
        """A (nested) IP header starts: Truncated past MAX_DEPTH of them, where tcpdump
        would go on (a frame of tunnels in tunnels must not exhaust Python's stack)."""
        self.proto = proto
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Truncated

    # -- bounds-checked reads (tcpdump's GET_ macros) -----------------------------------
    def has(self, off: int, n: int = 1) -> bool:
        """Whether `n` bytes at `off` were captured (ND_TTEST_LEN)."""
        return 0 <= off and off + n <= self.end

    def need(self, off: int, n: int = 1) -> None:
        if off < 0 or off + n > self.end:
            raise Truncated

    def check(self, off: int, n: int = 1) -> None:
        """ND_TCHECK_LEN: LocalTruncated when `n` bytes at `off` were not captured."""
        if off < 0 or off + n > self.end:
            raise LocalTruncated

    def avail(self, off: int) -> int:
        """Captured bytes from `off` on (ND_BYTES_AVAILABLE_AFTER)."""
        return max(0, self.end - off)

    def u8(self, off: int) -> int:
        if off < 0 or off >= self.end:
            raise Truncated
        return self.buf[off]

    def s8(self, off: int) -> int:
        b = self.u8(off)
        return b - 256 if b & 0x80 else b

    def u16(self, off: int) -> int:
        self.need(off, 2)
        return _U16.unpack_from(self.buf, off)[0]

    def u32(self, off: int) -> int:
        self.need(off, 4)
        return _U32.unpack_from(self.buf, off)[0]

    def take(self, off: int, n: int) -> bytes:
        self.need(off, n)
        return self.buf[off:off + n]

    def ip4(self, off: int) -> str:
        self.need(off, 4)
        return ip4_str(self.buf[off:off + 4])

    def ip6(self, off: int) -> str:
        self.need(off, 16)
        return ip6_str(self.buf[off:off + 16])

    def mac(self, off: int) -> str:
        self.need(off, 6)
        return self.buf[off:off + 6].hex(":")

    def limit(self, end: int) -> int:
        """Cut what may be read at `end` (never beyond the capture); returns the old end,
        for the caller to restore (nd_push_snaplen / nd_pop_packet_info)."""
        old = self.end
        if end < old:
            self.end = max(end, 0)
        return old

    # -- strings from the packet (tcpdump's nd_print* family) ----------------------------
    def printn(self, off: int, n: int) -> bool:
        """Print `n` bytes as characters (nd_printn); True when the capture ran out."""
        stop = min(off + n, self.end)
        if off < stop:
            self.w(safe_chars(self.buf[off:stop]))
        return stop < off + n

    def printztn(self, off: int, n: int) -> int:
        """Print a NUL-terminated string of at most `n` bytes (nd_printztn); returns the
        bytes used with the NUL, or 0 when no NUL came before `n` bytes or the capture's
        end."""
        stop = min(off + n, self.end)
        nul = self.buf.find(b"\0", off, stop) if off < stop else -1
        if nul < 0:
            if off < stop:
                self.w(safe_chars(self.buf[off:stop]))
            return 0
        self.w(safe_chars(self.buf[off:nul]))
        return nul - off + 1

    def text(self) -> str:
        return "".join(self.out)


# -- formatting helpers ---------------------------------------------------------------------
def ip4_str(b: bytes) -> str:
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


def ip6_str(b: bytes) -> str:
    """tcpdump's addrtostr6: the longest run of two or more zero words becomes `::`, and
    `::a.b.c.d` / `::ffff:a.b.c.d` keep the IPv4 address dotted."""
    words = [(b[2 * i] << 8) | b[2 * i + 1] for i in range(8)]
    best_base, best_len, cur_base, cur_len = -1, 0, -1, 0
    for i, wd in enumerate(words):
        if wd == 0:
            if cur_base == -1:
                cur_base, cur_len = i, 1
            else:
                cur_len += 1
        elif cur_base != -1:
            if best_base == -1 or cur_len > best_len:
                best_base, best_len = cur_base, cur_len
            cur_base = -1
    if cur_base != -1 and (best_base == -1 or cur_len > best_len):
        best_base, best_len = cur_base, cur_len
    if best_base != -1 and best_len < 2:
        best_base = -1
    out = []
    for i in range(8):
        if best_base != -1 and best_base <= i < best_base + best_len:
            if i == best_base:
                out.append(":")
            continue
        if i:
            out.append(":")
        if i == 6 and best_base == 0 and (best_len == 6 or (best_len == 5
                                                             and words[5] == 0xFFFF)):
            out.append(ip4_str(b[12:16]))
            break
        out.append(f"{words[i]:x}")
    if best_base != -1 and best_base + best_len == 8:
        out.append(":")
    return "".join(out)


def safe_chars(data: bytes) -> str:
    """Bytes as tcpdump's fn_print_char shows them: printable ASCII as is, others as
    `M-` (high bit) and `^X` (control)."""
    if all(0x20 <= c < 0x7F for c in data):
        return data.decode("ascii")
    out = []
    for c in data:
        if c & 0x80:
            out.append("M-")
            c &= 0x7F
        if not 0x20 <= c < 0x7F:
            out.append("^")
            c ^= 0x40
        out.append(chr(c))
    return "".join(out)


def bits(table: tuple[tuple[int, str], ...], value: int, none: str = "none",
         sep: str = ", ") -> str:
    """tcpdump's bittok2str: the names of the bits set, in table order."""
    names = [name for bit, name in table if value & bit]
    return sep.join(names) if names else none


def relts(secs: int) -> str:
    """tcpdump's unsigned_relts_print: 90061 -> 1d1h1m1s."""
    if secs == 0:
        return "0s"
    out = []
    for unit, n in (("y", 31536000), ("w", 604800), ("d", 86400), ("h", 3600), ("m", 60),
                    ("s", 1)):
        if secs >= n:
            out.append(f"{secs // n}{unit}")
            secs %= n
    return "".join(out)


def ones_sum(data, acc: int = 0) -> int:
    """The 16-bit one's complement sum of `data` (odd length padded), folded."""
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\0"
        n += 1
    acc += int.from_bytes(data, "big") % 0xFFFF if n else 0
    # (x mod 0xffff is the end-around-carry sum of its 16-bit words; 0xffff -> 0)
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


def cksum(data, acc: int = 0) -> int:
    """tcpdump's in_cksum as a big-endian value: 0 when the data (checksum field
    included) sums to all ones."""
    s = ones_sum(data, acc)
    if s == 0 and (acc or any(data)):
        s = 0xFFFF  # a sum of words that are not all zero is never +0 in one's complement
    return ~s & 0xFFFF


def shouldbe(field: int, computed: int) -> int:
    """tcpdump's in_cksum_shouldbe: the value the checksum field should have held."""
    v = field + computed  # ~(sum - field) = ~sum + field, in one's complement
    v = (v & 0xFFFF) + (v >> 16)
    return ((v & 0xFFFF) + (v >> 16)) & 0xFFFF


def hex_ascii(data: bytes, indent: str = "\n\t", offset: int = 0) -> str:
    """tcpdump's hex_and_ascii_print (-X): 16 bytes a line, in 2-byte groups, then the
    printable ASCII."""
    out = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        hexes = "".join(f" {chunk[j:j + 2].hex()}" for j in range(0, len(chunk), 2))
        text = "".join(chr(c) if 0x21 <= c < 0x7F else "." for c in chunk)
        out.append(f"{indent}0x{offset + i:04x}: {hexes:<40}  {text}")
    return "".join(out)


def hex_only(data: bytes, indent: str = "\n\t", offset: int = 0) -> str:
    """tcpdump's hex_print (print_unknown_data, -x): 16 bytes a line, no ASCII."""
    out = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        out.append(f"{indent}0x{offset + i:04x}: "
                   + "".join(f" {chunk[j:j + 2].hex()}" for j in range(0, len(chunk), 2)))
    return "".join(out)


class Lru:
    """A bounded mapping that forgets its oldest entries: the decoder's per-flow state
    (TCP's first sequence numbers, TFTP clients) over a capture of any length."""

    __slots__ = ("_d", "size")

    def __init__(self, size: int = 4096) -> None:
        self._d: dict = {}
        self.size = size

    def get(self, key):
        return self._d.get(key)

    def put(self, key, value) -> None:
        d = self._d
        d.pop(key, None)
        d[key] = value
        if len(d) > self.size:
            del d[next(iter(d))]

    def __contains__(self, key) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)
