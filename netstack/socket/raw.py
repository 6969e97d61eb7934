"""Raw IP sockets (sans-I/O): whole IP payloads of one protocol number, both ways.

A raw socket serves one family: IPv4 (the default) or IPv6 (`RawSocket(proto, version=6)`),
whose payloads are the upper layer after the extension headers (`ip_repr.protocol`).

A raw socket sees every datagram of its protocol the interface accepts (after reassembly),
alongside the interface's own handling (echo replies, UDP sockets). A datagram of a
protocol the stack does not implement, taken by a raw socket, is not counted as dropped.
Sent payloads go out as they are: the caller writes the transport header and checksum.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from netstack.socket.addr import parse_addr
from netstack.socket.errors import BufferFull, TooLarge, Unaddressable
from netstack.socket.set import PacketBuffer, Socket, touches

MAX_PAYLOAD = 65535 - 20
MAX_PAYLOAD_V6 = 65535


@touches("close", "send_to")
class RawSocket(Socket):
    __slots__ = ("ip_protocol", "rx", "tx", "ttl", "rx_dropped", "open", "version")
    KIND = "raw"

    def __init__(self, ip_protocol: int, rx_buffer: PacketBuffer | None = None,
                 tx_buffer: PacketBuffer | None = None, *, version: int = 4) -> None:
        super().__init__()
        if not 0 <= ip_protocol <= 255:
            raise ValueError(f"bad IP protocol {ip_protocol}")
        if version not in (4, 6):
            raise ValueError(f"bad IP version {version}")
        self.version = version
        self.ip_protocol = int(ip_protocol)
        self.rx = rx_buffer if rx_buffer is not None else PacketBuffer(32, 64 * 1024)
        self.tx = tx_buffer if tx_buffer is not None else PacketBuffer(32, 64 * 1024)
        self.ttl = 64
        self.rx_dropped = 0
        self.open = True

    @property
    def is_open(self) -> bool:
        return self.open

    def close(self) -> None:
        self.open = False
        self.rx.clear()
        self.tx.clear()

    def can_send(self) -> bool:
        return self.open and not self.tx.is_full()

    def send_to(self, payload, dst, src: IPv4Address | IPv6Address | None = None) -> None:
        """Queue one payload to `dst`, an address of the socket's family (source chosen by
        the interface unless given)."""
        if not self.open:
            raise Unaddressable("socket is closed")
        if len(payload) > (MAX_PAYLOAD if self.version == 4 else MAX_PAYLOAD_V6):
            raise TooLarge(f"{len(payload)} bytes do not fit in one datagram")
        dst = parse_addr(dst)
        if dst.version != self.version or (src is not None and src.version != self.version):
            raise Unaddressable(f"an IPv{self.version} raw socket cannot send to {dst}")
        if dst.is_unspecified:
            raise Unaddressable(f"cannot send to {dst}")
        self.tx.push((dst, src), bytes(payload))

    def dispatch(self, now: float, emit) -> None:
        tx = self.tx
        sent = False
        while tx:
            (dst, src), payload = tx.peek()

            def fill(buf, _src, _csum, payload=payload):
                buf[:] = payload

            if not emit(dst, self.ip_protocol, len(payload), fill, src, ttl=self.ttl):
                break
            tx.pop()
            sent = True
        if sent:
            self._wake()

    def poll_at(self, now: float) -> float | None:
        return now if self.tx else None

    def accepts(self, ip_repr, header=None) -> bool:
        return self.open and ip_repr.protocol == self.ip_protocol and \
            ip_repr.dst_addr.version == self.version

    def process(self, now: float, ip_repr, header, payload: memoryview, src_hw=None) -> None:
        try:
            self.rx.push((ip_repr.src_addr, ip_repr.dst_addr), bytes(payload))
        except (BufferFull, TooLarge):
            self.rx_dropped += 1
            return
        self._wake()

    def can_recv(self) -> bool:
        return bool(self.rx)

    def recv(self) -> tuple[bytes, IPv4Address, IPv4Address]:
        """Dequeue one payload: (payload, source, destination). Raises Exhausted."""
        (src, dst), payload = self.rx.pop()
        return payload, src, dst
