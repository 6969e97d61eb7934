"""Sockets driven by the interface: UDP, ICMP, raw, and the DHCP/DNS gateway engines.

`set` holds the socket protocol (`accepts`/`process`/`dispatch`/`poll_at`, wakers), the
`SocketSet` and the bounded `PacketBuffer`; `errors` the small per-operation errors.
"""

from netstack.socket.errors import (
    AddrInUse,
    BufferFull,
    Exhausted,
    SocketError,
    TooLarge,
    Unaddressable,
)
from netstack.socket.icmp import IcmpSocket
from netstack.socket.raw import RawSocket
from netstack.socket.set import PacketBuffer, Socket, SocketSet
from netstack.socket.udp import Endpoint, UdpMetadata, UdpSocket

__all__ = [
    "AddrInUse",
    "BufferFull",
    "Endpoint",
    "Exhausted",
    "IcmpSocket",
    "PacketBuffer",
    "RawSocket",
    "Socket",
    "SocketError",
    "SocketSet",
    "TooLarge",
    "Unaddressable",
    "UdpMetadata",
    "UdpSocket",
]
