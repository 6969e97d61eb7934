"""ICMP sockets (sans-I/O): enough for `ping` and for learning about errors.

Bind to an echo identifier (`bind(ident)`) to receive echo replies with that identifier and
ICMP errors quoting our echo requests; or to a UDP port (`bind(udp_port=...)`) to receive
the errors that quote datagrams sent from that port (port unreachable, TTL exceeded).
Messages go out and come in whole (ICMP header + data) as bytes; the socket fills the
checksum on send. `send_echo_request` and `recv_repr` spare callers the encoding.

Both families: sending to an IPv6 address sends ICMPv6 (protocol 58, the checksum over
the IPv6 pseudo-header filled at emit), `send_echo_request` picks the echo type of the
destination's family, and the socket receives ICMPv6 echo replies and errors (destination
unreachable, packet too big, time exceeded, parameter problem) quoting its echo requests
or datagrams, as `Icmpv6Repr` from `recv_repr`.

The interface answers echo requests itself; an ICMP socket never sees them.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from netstack.socket.addr import parse_addr, unmap
from netstack.socket.errors import BufferFull, TooLarge, Unaddressable
from netstack.socket.set import PacketBuffer, Socket, touches
from netstack.wire.checksum import checksum
from netstack.wire.icmpv4 import Icmpv4Message, Icmpv4Packet, Icmpv4Repr
from netstack.wire.icmpv6 import Icmpv6Message, Icmpv6Packet, Icmpv6Repr
from netstack.wire.icmpv6 import fill_checksum as _fill_checksum6
from netstack.wire.ipv4 import IpProtocol

_ICMP = int(IpProtocol.ICMP)
_UDP = int(IpProtocol.UDP)
_ERRORS = (Icmpv4Message.DST_UNREACHABLE, Icmpv4Message.TIME_EXCEEDED)
_ERRORS6 = (Icmpv6Message.DST_UNREACHABLE, Icmpv6Message.PKT_TOO_BIG,
            Icmpv6Message.TIME_EXCEEDED, Icmpv6Message.PARAM_PROBLEM)
_ICMPV6 = 58
MAX_MESSAGE = 65535 - 20
MAX_MESSAGE_V6 = 65535  # the IPv6 payload length excludes the fixed header


@touches("close", "send_to", "send_echo_request")
class IcmpSocket(Socket):
    __slots__ = ("rx", "tx", "_ident", "_udp_port", "ttl", "rx_dropped")
    KIND = "icmp"

    def __init__(self, rx_buffer: PacketBuffer | None = None,
                 tx_buffer: PacketBuffer | None = None) -> None:
        super().__init__()
        self.rx = rx_buffer if rx_buffer is not None else PacketBuffer(32, 64 * 1024)
        self.tx = tx_buffer if tx_buffer is not None else PacketBuffer(32, 64 * 1024)
        self._ident: int | None = None
        self._udp_port: int | None = None
        self.ttl = 64
        self.rx_dropped = 0

    def bind(self, ident: int | None = None, *, udp_port: int | None = None) -> None:
        """Bind to an echo identifier (0-65535) or to a local UDP port, exactly one."""
        if self.is_open:
            raise Unaddressable("socket is bound already")
        if (ident is None) == (udp_port is None):
            raise Unaddressable("bind to an echo identifier or a UDP port")
        if ident is not None and not 0 <= ident <= 0xFFFF:
            raise Unaddressable(f"bad echo identifier {ident}")
        if udp_port is not None and not 1 <= udp_port <= 0xFFFF:
            raise Unaddressable(f"bad UDP port {udp_port}")
        self._ident, self._udp_port = ident, udp_port

    @property
    def is_open(self) -> bool:
        return self._ident is not None or self._udp_port is not None

    def close(self) -> None:
        self._ident = self._udp_port = None
        self.rx.clear()
        self.tx.clear()

    # -- sending ------------------------------------------------------------------------
    def can_send(self) -> bool:
        return not self.tx.is_full()

    def send_to(self, message, dst) -> None:
        """Queue a whole ICMP message (header + data) to `dst`; its checksum is filled."""
        if len(message) < 8:
            raise Unaddressable("an ICMP message has at least 8 bytes")
        dst = unmap(parse_addr(dst))
        if len(message) > (MAX_MESSAGE if dst.version == 4 else MAX_MESSAGE_V6):
            raise TooLarge(f"{len(message)} bytes do not fit in one datagram")
        if dst.is_unspecified:
            raise Unaddressable(f"cannot send to {dst}")
        self.tx.push(dst, bytes(message))

    def send_echo_request(self, dst, seq_no: int, data=b"") -> None:
        """Queue an echo request with the bound identifier."""
        if self._ident is None:
            raise Unaddressable("bind to an echo identifier first")
        dst = unmap(parse_addr(dst))
        if dst.version == 6:
            r6 = Icmpv6Repr.echo_request(self._ident, seq_no & 0xFFFF, data)
            buf = bytearray(r6.buffer_len())
            r6.emit(Icmpv6Packet(buf), dst, dst, False)  # the checksum is filled at emit
        else:
            r = Icmpv4Repr.echo_request(self._ident, seq_no & 0xFFFF, data)
            buf = bytearray(r.buffer_len())
            r.emit(Icmpv4Packet(buf))
        self.send_to(buf, dst)

    def dispatch(self, now: float, emit) -> None:
        tx = self.tx
        sent = False
        while tx:
            dst, message = tx.peek()

            def fill(buf, src, csum, message=message, dst=dst):
                buf[:] = message
                buf[2] = buf[3] = 0
                if not csum:
                    return
                if dst.version == 6:
                    _fill_checksum6(buf, src, dst)
                    return
                c = checksum(buf)
                buf[2] = c >> 8
                buf[3] = c & 0xFF

            proto = _ICMPV6 if dst.version == 6 else _ICMP
            if not emit(dst, proto, len(message), fill, None, ttl=self.ttl):
                break
            tx.pop()
            sent = True
        if sent:
            self._wake()

    def poll_at(self, now: float) -> float | None:
        return now if self.tx else None

    # -- receiving ----------------------------------------------------------------------
    def accepts(self, ip_repr, icmp_repr: Icmpv4Repr | Icmpv6Repr) -> bool:
        if ip_repr.dst_addr.version == 6:
            return self._accepts6(icmp_repr)
        t = icmp_repr.msg_type
        if t == Icmpv4Message.ECHO_REPLY:
            return self._ident is not None and icmp_repr.ident == self._ident
        if t not in _ERRORS:
            return False
        quote = icmp_repr.data
        hl = (quote[0] & 0x0F) * 4
        proto = quote[9]
        inner = quote[hl:]
        if proto == _ICMP and self._ident is not None and len(inner) >= 8:
            return inner[0] == 8 and (inner[4] << 8 | inner[5]) == self._ident
        if proto == _UDP and self._udp_port is not None and len(inner) >= 2:
            return (inner[0] << 8 | inner[1]) == self._udp_port
        return False

    def _accepts6(self, icmp_repr: Icmpv6Repr) -> bool:
        t = icmp_repr.msg_type
        if t == Icmpv6Message.ECHO_REPLY:
            return self._ident is not None and icmp_repr.ident == self._ident
        if t not in _ERRORS6:
            return False
        quote = icmp_repr.data  # the offending IPv6 datagram (extension headers not walked)
        if len(quote) < 40:
            return False
        proto = quote[6]
        inner = quote[40:]
        if proto == _ICMPV6 and self._ident is not None and len(inner) >= 8:
            return inner[0] == Icmpv6Message.ECHO_REQUEST and \
                (inner[4] << 8 | inner[5]) == self._ident
        if proto == _UDP and self._udp_port is not None and len(inner) >= 2:
            return (inner[0] << 8 | inner[1]) == self._udp_port
        return False

    def process(self, now: float, ip_repr, icmp_repr, payload: memoryview,
                src_hw=None) -> None:
        try:
            self.rx.push((ip_repr.src_addr, ip_repr.dst_addr), bytes(payload))
        except (BufferFull, TooLarge):
            self.rx_dropped += 1
            return
        self._wake()

    def can_recv(self) -> bool:
        return bool(self.rx)

    def recv_from(self) -> tuple[bytes, IPv4Address | IPv6Address]:
        """Dequeue one whole ICMP message and its sender. Raises Exhausted when empty."""
        (src, _dst), message = self.rx.pop()
        return message, src

    def recv_repr(self) -> tuple[Icmpv4Repr | Icmpv6Repr, IPv4Address | IPv6Address]:
        """Dequeue and parse one message (its `data` is bytes owned by the caller): an
        `Icmpv6Repr` for a message that came over IPv6."""
        (src, dst), message = self.rx.pop()
        if src.version == 6:
            return Icmpv6Repr.parse(Icmpv6Packet(message), src, dst, False), src
        return Icmpv4Repr.parse(Icmpv4Packet(message), verify_checksum=False), src
