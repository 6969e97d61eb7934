"""The internet checksum (RFC 1071), through the cffi C helper when it is built.

`partial(buf, acc)` returns a running 16-bit-folded sum so callers chain pseudo-header,
header and payload without copying; `finish(acc)` complements it. A pure-Python fallback
exists only so a source checkout without the build still works (slowly).
"""

from __future__ import annotations

import struct

try:  # the build step of setup.py makes this; see netstack/_fast_build.py
    from netstack._fast import ffi as _ffi
    from netstack._fast import lib as _lib
except ImportError:  # pragma: no cover - exercised only without the C build
    _lib = None

HAVE_C = _lib is not None


def _partial_py(buf, acc: int = 0) -> int:
    mv = memoryview(buf).cast("B")
    n = len(mv)
    total = 0
    even = n & ~1
    if even:
        total = sum(struct.unpack_from(f"!{even // 2}H", mv, 0))
    if n & 1:
        total += mv[n - 1] << 8
    total += acc
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


if _lib is not None:
    _csum = _lib.ns_csum_partial
    _from_buffer = _ffi.from_buffer

    def partial(buf, acc: int = 0) -> int:
        """Ones-complement sum of `buf` (bytes-like) added to `acc`, folded to 16 bits."""
        if not isinstance(buf, bytes | bytearray | memoryview):
            buf = bytes(buf)
        if len(buf) == 0:
            return acc
        return _csum(_from_buffer(buf), len(buf), acc)
else:  # pragma: no cover
    partial = _partial_py


def finish(acc: int) -> int:
    """Complement a folded sum into the value stored in a header."""
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return (~acc) & 0xFFFF


def checksum(buf) -> int:
    """The internet checksum of `buf`."""
    return finish(partial(buf))


def pseudo_header_v4(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo-header (RFC 768/793)."""
    return partial(src + dst + struct.pack("!BBH", 0, proto, length))


def pseudo_header_v6(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv6 pseudo-header (RFC 8200 §8.1)."""
    return partial(src + dst + struct.pack("!IxxxB", length, proto))
