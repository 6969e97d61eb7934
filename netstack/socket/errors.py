"""Small per-operation socket errors, smoltcp style: each says what went wrong, nothing more.

They derive from `SocketError` so callers can catch the family; the std::net-style layer
(`netstack.net`) turns them into the OSErrors Python programmers expect.
"""

from __future__ import annotations


class SocketError(Exception):
    """Base of the errors sans-I/O sockets raise."""


class BufferFull(SocketError):
    """The transmit buffer has no room for this datagram (packets or bytes)."""


class Exhausted(SocketError):
    """The receive buffer is empty."""


class Unaddressable(SocketError):
    """The endpoint is invalid: socket not bound, port 0, unspecified destination."""


class AddrInUse(SocketError):
    """Another socket in the set is bound to this port already."""


class TooLarge(SocketError):
    """The datagram can never fit (bigger than the buffer or than one IPv4 datagram)."""


class TableFull(SocketError):
    """The socket table holds `Limits.max_sockets` sockets already (EMFILE)."""
