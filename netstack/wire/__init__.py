"""Wire formats: zero-copy packet views and reprs, one module per format.

The contract every module follows (modelled on smoltcp's `wire`):

- Offset constants at the top of the module.
- A `…Packet` class wrapping a `memoryview` (`Packet(buf)`; `Packet.new_checked(buf)` for
  untrusted input, which runs `check_len()` and raises `Error` when the buffer cannot hold
  what the header claims). One property per field (setters write into the buffer),
  `payload` returns a memoryview slice (no copy), and `verify_checksum()`/`fill_checksum()`
  where the format has one.
- A slotted `…Repr` dataclass: `Repr.parse(packet, ...) -> Repr` (raises `Error` on
  anything malformed), `buffer_len()` (header bytes it emits) and `emit(packet, ...)` that
  writes every header byte (tests emit into buffers pre-filled with 0xA5 to catch holes).
  Reprs are values: equal by fields, hashable, never changed once built. The ones built
  for every packet (IPv4, IPv6, UDP, TCP) are not `frozen`, because a frozen dataclass's
  `__init__` costs four times a plain one's (it sets each field through
  `object.__setattr__`), and that was 10 % of a TCP handshake; the others are frozen.
- Malformed input raises `wire.Error` and nothing else: never IndexError, struct.error or
  ValueError from a parser. Fuzz tests hold every format to that.
"""

from __future__ import annotations


class Error(Exception):
    """A packet is malformed, truncated or unsupported. The one error parsers raise."""
