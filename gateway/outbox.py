"""The gateway's seam to the stack's transmit side: a socket in the `SocketSet` (KIND
"gateway") that sends what the gateway queues — UDP datagrams from the host's peers,
RSTs for refused connects — from whatever address the guest asked for. The interface
dispatches it like any socket; the queue is bounded (`LIMIT` packets), so a host flooding
a UDP flow waits in its kernel socket, not in our memory.
"""

from __future__ import annotations

from collections import deque

from netstack.socket.set import Socket
from netstack.wire.icmpv4 import Icmpv4Packet, Icmpv4Repr
from netstack.wire.icmpv6 import Icmpv6Packet, Icmpv6Repr
from netstack.wire.tcp import TcpPacket, TcpRepr
from netstack.wire.udp import HEADER_LEN, UdpPacket, UdpRepr

_ICMP = 1
_TCP = 6
_UDP = 17
_ICMPV6 = 58
LIMIT = 1024


class Outbox(Socket):
    KIND = "gateway"
    __slots__ = ("queue", "dropped")

    def __init__(self) -> None:
        super().__init__()
        self.queue: deque = deque()
        self.dropped = 0

    @property
    def full(self) -> bool:
        return len(self.queue) >= LIMIT

    def _push(self, item) -> bool:
        if len(self.queue) >= LIMIT:
            self.dropped += 1
            return False
        self.queue.append(item)
        if self._set is not None:
            self._set.dirty.add(self)
        return True

    def udp(self, src, sport: int, dst, dport: int, data: bytes) -> bool:
        """Queue a datagram from (src, sport) to the guest's (dst, dport)."""
        n = len(data)

        def fill(buf, src_addr, csum):
            UdpRepr(sport, dport).emit(UdpPacket(buf), src_addr, dst, n, data, csum)

        return self._push((dst, _UDP, HEADER_LEN + n, fill, src))

    def tcp(self, src, dst, seg: TcpRepr) -> bool:
        """Queue a bare TCP segment (a RST) from src to the guest's dst."""
        def fill(buf, src_addr, csum):
            seg.emit(TcpPacket(buf), src_addr, dst, csum)

        return self._push((dst, _TCP, seg.buffer_len(), fill, src))

    def echo_reply(self, src, dst, ident: int, seq: int, data: bytes) -> bool:
        """Queue an echo reply from src (the address the guest pinged) to the guest."""
        if dst.version == 6:
            r6 = Icmpv6Repr.echo_reply(ident, seq, data)

            def fill6(buf, src_addr, csum):
                r6.emit(Icmpv6Packet(buf), src_addr, dst, True)

            return self._push((dst, _ICMPV6, r6.buffer_len(), fill6, src))
        r4 = Icmpv4Repr.echo_reply(ident, seq, data)

        def fill4(buf, _src, csum):
            r4.emit(Icmpv4Packet(buf), csum)

        return self._push((dst, _ICMP, r4.buffer_len(), fill4, src))

    def dst_unreachable(self, src, dst, code: int, quote: bytes) -> bool:
        """Queue a destination unreachable (ICMP type 3 / ICMPv6 type 1, `code` of that
        family) from src to the guest, quoting the guest's datagram."""
        if dst.version == 6:
            r6 = Icmpv6Repr.dst_unreachable(code, quote)

            def fill6(buf, src_addr, csum):
                r6.emit(Icmpv6Packet(buf), src_addr, dst, True)

            return self._push((dst, _ICMPV6, r6.buffer_len(), fill6, src))
        r4 = Icmpv4Repr.dst_unreachable(code, quote)

        def fill4(buf, _src, csum):
            r4.emit(Icmpv4Packet(buf), csum)

        return self._push((dst, _ICMP, r4.buffer_len(), fill4, src))

    # -- the socket protocol ------------------------------------------------------------
    def accepts(self, ip_repr, header) -> bool:
        return False

    def process(self, now, ip_repr, header, payload, src_hw) -> None:  # pragma: no cover
        pass

    def dispatch(self, now: float, emit) -> None:
        q = self.queue
        sent = False
        while q:
            dst, proto, length, fill, src = q[0]
            if not emit(dst, proto, length, fill, src):
                break
            q.popleft()
            sent = True
        if sent:
            self._wake()  # room again: the gateway reads its paused UDP flows

    def poll_at(self, now: float) -> float | None:
        return now if self.queue else None
