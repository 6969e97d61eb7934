"""TCP sequence-number arithmetic modulo 2^32 (RFC 9293 §3.4), on plain ints.

Comparisons are by the signed 32-bit difference (RFC 1982 serial-number style): `a` is
before `b` when `b - a` mod 2^32 lies in (0, 2^31). Two numbers exactly 2^31 apart compare
as `a > b` both ways round — no window ever spans that far. Everything takes and returns
ints already reduced to [0, 2^32) (except `seq_sub`, which is signed).

    >>> seq_add(0xFFFFFFFF, 2)
    1
    >>> seq_sub(1, 0xFFFFFFFF)
    2
    >>> seq_lt(0xFFFFFFF0, 5)
    True
    >>> seq_in_window(3, 0xFFFFFFFE, 10)
    True
"""

from __future__ import annotations

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    """`a + n` mod 2^32 (`n` may be negative)."""
    return (a + n) & MASK


def seq_sub(a: int, b: int) -> int:
    """The signed distance from `b` to `a`, in (-2^31, 2^31]."""
    d = (a - b) & MASK
    return d - MOD if d > HALF else d


def seq_lt(a: int, b: int) -> bool:
    """`a` comes before `b`."""
    return (a - b) & MASK > HALF


def seq_le(a: int, b: int) -> bool:
    return a == b or (a - b) & MASK > HALF


def seq_gt(a: int, b: int) -> bool:
    """`a` comes after `b`."""
    return 0 < (a - b) & MASK <= HALF


def seq_ge(a: int, b: int) -> bool:
    return (a - b) & MASK <= HALF


def seq_in_window(x: int, start: int, length: int) -> bool:
    """start ≤ x < start + length, mod 2^32. Just the range: a zero-length window contains
    nothing here; RFC 9293's acceptability table for zero windows is the socket's job."""
    return (x - start) & MASK < length


def seq_max(a: int, b: int) -> int:
    return a if (a - b) & MASK <= HALF else b


def seq_min(a: int, b: int) -> int:
    return b if (a - b) & MASK <= HALF else a
