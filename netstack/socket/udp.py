"""UDP sockets (sans-I/O): bind to a port, queue datagrams both ways in bounded buffers.

Endpoints are `(IPv4Address | IPv6Address, port)` tuples (`Endpoint`); `bind`/`send_to`
also take the address as a string. A socket bound to the unspecified address (0.0.0.0)
receives on every IPv4 address the interface accepts, broadcasts included (so a DHCP server
on port 67 and a DHCP client on port 68 are ordinary UDP sockets). Sending to
255.255.255.255 or a subnet's broadcast address is allowed.

Dual stack (`netstack.socket.addr`, as Linux): bound to `::` a socket receives IPv6 and,
unless `v6only`, IPv4 datagrams too, and may send to both; a destination given as an
IPv4-mapped address (::ffff:a.b.c.d) is sent as IPv4. Senders are reported with their real
address (an IPv4Address for IPv4): mapping them for an AF_INET6 API is the caller's choice.

>>> s = UdpSocket()
>>> s.bind(("0.0.0.0", 5353))
>>> s.send_to(b"hi", ("10.0.2.2", 53))
>>> s.can_recv()
False
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from netstack.socket.addr import (
    IpAddress,
    endpoint,
    local_matches,
    overlaps,
    source_for,
    unmap,
)
from netstack.socket.errors import AddrInUse, BufferFull, TooLarge, Unaddressable
from netstack.socket.set import PacketBuffer, Socket, SocketSet, touches
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import IpProtocol
from netstack.wire.udp import HEADER_LEN, UdpPacket, UdpRepr

Endpoint = tuple[IPv4Address | IPv6Address, int]
UNSPECIFIED = IPv4Address(0)
EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535
MAX_PAYLOAD = 65535 - 20 - HEADER_LEN  # one IPv4 datagram without options
MAX_PAYLOAD_V6 = 65535 - HEADER_LEN  # the IPv6 payload length excludes the fixed header

_UDP = int(IpProtocol.UDP)
_rng = random.Random()


@dataclass(frozen=True, slots=True)
class UdpMetadata:
    """Everything known about a received datagram: the sender, the address it was sent to
    (ours, a broadcast, or a group) and the sender's MAC (None if not Ethernet)."""

    src: Endpoint
    dst_addr: IPv4Address | IPv6Address
    src_hw: EthernetAddress | None = None


@touches("close", "send_to")
class UdpSocket(Socket):
    """A UDP socket. Not thread-safe by itself: the runtime's lock guards it."""

    __slots__ = ("rx", "tx", "_addr", "_port", "ttl", "rx_dropped", "v6only")
    KIND = "udp"

    def __init__(self, rx_buffer: PacketBuffer | None = None,
                 tx_buffer: PacketBuffer | None = None) -> None:
        super().__init__()
        self.rx = rx_buffer if rx_buffer is not None else PacketBuffer(64, 256 * 1024)
        self.tx = tx_buffer if tx_buffer is not None else PacketBuffer(64, 256 * 1024)
        self._addr: IpAddress = UNSPECIFIED
        self._port = 0
        self.ttl = 64  # the hop limit over IPv6
        self.v6only = False  # bound to ::, take IPv6 only (IPV6_V6ONLY); set before bind
        self.rx_dropped = 0  # datagrams that arrived while the receive buffer was full

    # -- binding ------------------------------------------------------------------------
    def bind(self, local, *, v6only: bool | None = None) -> None:
        """Bind to `port` or `(addr, port)` (`::` for both families, see the module
        docstring); port 0 picks a free ephemeral port (49152-65535; free among the sockets
        of the set this socket is in). `v6only` sets the attribute of that name.
        Raises Unaddressable if bound already, AddrInUse on a clash within the set."""
        if self._port:
            raise Unaddressable("socket is bound already")
        addr, port = endpoint((None, local)) if isinstance(local, int) else endpoint(local)
        if v6only is not None:
            self.v6only = v6only
        if addr.version == 6 and addr.ipv4_mapped is not None:
            if self.v6only:
                raise Unaddressable(f"a v6-only socket cannot bind to {addr}")
            addr = addr.ipv4_mapped
        if port == 0:
            port = self._ephemeral(addr)
        elif self._set is not None and self._clashes(self._set, addr, port):
            raise AddrInUse(f"UDP port {port} is in use")
        self._addr, self._port = addr, port

    def _clashes(self, sockets: SocketSet, addr: IpAddress, port: int) -> bool:
        for other in sockets.of_kind(self.KIND):
            if other is self or other._port != port:
                continue
            if overlaps(other._addr, other.v6only, addr, self.v6only):
                return True
        return False

    def _check_unique(self, sockets: SocketSet) -> None:
        if self._port and self._clashes(sockets, self._addr, self._port):
            raise AddrInUse(f"UDP port {self._port} is in use")

    def _ephemeral(self, addr: IpAddress) -> int:
        span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
        start = _rng.randrange(span)
        for i in range(span):
            port = EPHEMERAL_FIRST + (start + i) % span
            if self._set is None or not self._clashes(self._set, addr, port):
                return port
        raise AddrInUse("no free ephemeral UDP port")

    @property
    def endpoint(self) -> Endpoint | None:
        """The local endpoint, or None if not bound."""
        return (self._addr, self._port) if self._port else None

    @property
    def is_open(self) -> bool:
        return self._port != 0

    def close(self) -> None:
        """Unbind and drop everything queued both ways."""
        self._port = 0
        self._addr = UNSPECIFIED
        self.rx.clear()
        self.tx.clear()

    # -- sending ------------------------------------------------------------------------
    def can_send(self) -> bool:
        return not self.tx.is_full()

    def send_to(self, data, dst, dst_hw: EthernetAddress | None = None) -> None:
        """Queue one datagram to `dst` = (addr, port). `dst_hw` sends straight to that MAC
        without ARP (a DHCP server answering a client that has no address yet).
        Raises Unaddressable, TooLarge or BufferFull; nothing is queued then."""
        if not self._port:
            raise Unaddressable("socket is not bound")
        addr, port = endpoint(dst)
        addr = unmap(addr)
        if port == 0 or addr.is_unspecified:
            raise Unaddressable(f"cannot send to {addr}:{port}")
        source_for(self._addr, self.v6only, addr)  # raises if our binding cannot reach it
        if len(data) > (MAX_PAYLOAD if addr.version == 4 else MAX_PAYLOAD_V6):
            raise TooLarge(f"{len(data)} bytes do not fit in one UDP datagram")
        self.tx.push((addr, port, dst_hw), bytes(data))

    send_slice = send_to

    def dispatch(self, now: float, emit) -> None:
        tx = self.tx
        if not tx:
            return
        sent = False
        sport = self._port
        bound, v6only = self._addr, self.v6only
        while tx:
            (addr, port, dst_hw), data = tx.peek()
            src = source_for(bound, v6only, addr)
            n = len(data)

            def fill(buf, src_addr, csum, port=port, addr=addr, data=data, n=n):
                UdpRepr(sport, port).emit(UdpPacket(buf), src_addr, addr, n, data, csum)

            if not emit(addr, _UDP, HEADER_LEN + n, fill, src, ttl=self.ttl, dst_hw=dst_hw):
                break
            tx.pop()
            sent = True
        if sent:
            self._wake()

    def poll_at(self, now: float) -> float | None:
        return now if self.tx else None

    # -- receiving ----------------------------------------------------------------------
    def accepts(self, ip_repr, udp_repr: UdpRepr) -> bool:
        return (
            udp_repr.dst_port == self._port
            and self._port != 0
            and local_matches(self._addr, self.v6only, ip_repr.dst_addr)
        )

    def process(self, now: float, ip_repr, udp_repr: UdpRepr, payload: memoryview,
                src_hw=None) -> None:
        meta = ((ip_repr.src_addr, udp_repr.src_port), ip_repr.dst_addr, src_hw)
        try:
            self.rx.push(meta, bytes(payload))
        except (BufferFull, TooLarge):
            self.rx_dropped += 1
            return
        self._wake()

    def can_recv(self) -> bool:
        return bool(self.rx)

    def recv_from(self, max_len: int | None = None) -> tuple[bytes, Endpoint, bool]:
        """Dequeue one datagram: (data, sender, truncated). With `max_len` the data is cut
        to that many bytes and `truncated` says whether anything was cut (the rest is
        lost, as with a BSD socket). Raises Exhausted when empty."""
        (src, _dst, _hw), data = self.rx.pop()
        if max_len is not None and len(data) > max_len:
            return data[:max_len], src, True
        return data, src, False

    def recv_into(self, buf) -> tuple[int, Endpoint, bool]:
        """Copy one datagram into `buf`: (bytes written, sender, truncated)."""
        mv = memoryview(buf).cast("B")
        (src, _dst, _hw), data = self.rx.pop()
        n = min(len(mv), len(data))
        mv[:n] = data[:n]
        return n, src, n < len(data)

    def recv_meta(self) -> tuple[bytes, UdpMetadata]:
        """Dequeue one datagram with its full metadata (sender, destination, sender MAC)."""
        (src, dst, hw), data = self.rx.pop()
        return data, UdpMetadata(src, dst, hw)

    def peek_from(self) -> tuple[bytes, Endpoint]:
        (src, _dst, _hw), data = self.rx.peek()
        return data, src
