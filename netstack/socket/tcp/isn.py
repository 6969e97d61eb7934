"""Initial sequence numbers per RFC 6528: ISN = M + F(4-tuple, secret key).

M is a clock ticking every 4 µs taken from `now` (the caller's time, in seconds); F is a
keyed hash (BLAKE2s with a random 32-byte key) of the local and remote addresses and ports,
so ISNs of different connections are unrelated and an off-path attacker cannot guess them,
while a new incarnation of the same 4-tuple starts above the old one's (the clock).

>>> from ipaddress import IPv4Address as A
>>> gen = IsnGenerator(key=bytes(32))
>>> a = gen.isn(0.0, (A("10.0.0.1"), 80), (A("10.0.0.2"), 5000))
>>> b = gen.isn(1.0, (A("10.0.0.1"), 80), (A("10.0.0.2"), 5000))
>>> (b - a) % 2**32
250000
"""

from __future__ import annotations

import os
from hashlib import blake2s

_MASK = 0xFFFFFFFF
TICKS_PER_SECOND = 250_000  # one tick every 4 µs


def _tuple_bytes(local, remote) -> bytes:
    (laddr, lport), (raddr, rport) = local, remote
    return laddr.packed + lport.to_bytes(2, "big") + raddr.packed + rport.to_bytes(2, "big")


class IsnGenerator:
    """ISNs for one stack; `key` defaults to 32 random bytes (never logged)."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes | None = None) -> None:
        # keyed once: copying a keyed state costs less than keying a new one
        self._keyed = blake2s(key=key if key is not None else os.urandom(32), digest_size=4)

    def isn(self, now: float, local, remote) -> int:
        """The ISN for the connection `local` → `remote` (`(address, port)` pairs)."""
        h = self._keyed.copy()
        h.update(_tuple_bytes(local, remote))
        return (int(now * TICKS_PER_SECOND) + int.from_bytes(h.digest(), "big")) & _MASK


_default = IsnGenerator()


def generate_isn(now: float, local, remote) -> int:
    """An ISN from the process-wide generator (random key chosen at import)."""
    return _default.isn(now, local, remote)
