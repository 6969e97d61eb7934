"""The gateway's services as sockets: the sans-I/O DHCP server and DNS responder engines
bound to UDP ports, answering inside `process` so a reply leaves in the same poll.

They run on the interface's thread (no app thread, no lock round trip per query), which is
what a guest booting with `udhcpc` and `nslookup` needs from its first frame on.
"""

from __future__ import annotations

import logging

from netstack.socket.dhcp_server import DhcpServer, reply_destination, reply_port
from netstack.socket.dns_responder import DnsResponder
from netstack.socket.errors import SocketError
from netstack.socket.udp import UdpSocket
from netstack.wire import Error as WireError
from netstack.wire.dhcpv4 import SERVER_PORT, DhcpPacket, DhcpRepr
from netstack.wire.dns import Class, DnsPacket, DnsRepr, Opcode

log = logging.getLogger(__name__)


class DhcpServerSocket(UdpSocket):
    """UDP port 67 on every address (DISCOVERs arrive broadcast), driving a DhcpServer."""

    __slots__ = ("server",)

    def __init__(self, server: DhcpServer) -> None:
        super().__init__()
        self.server = server
        self.bind(("0.0.0.0", SERVER_PORT))

    def process(self, now, ip_repr, udp_repr, payload, src_hw=None) -> None:
        try:
            request = DhcpRepr.parse(DhcpPacket.new_checked(payload))
        except WireError as e:
            self.server.stats.malformed += 1
            log.debug("malformed DHCP message from %s: %s", ip_repr.src_addr, e)
            return
        reply = self.server.handle(now, request, src_hw)
        if reply is None:
            return
        dest = reply_destination(request, reply)
        buf = bytearray(reply.buffer_len())
        reply.emit(DhcpPacket(buf))
        try:
            self.send_to(buf, (dest.ip, reply_port(request)), dst_hw=dest.mac)
        except SocketError as e:
            log.warning("DHCP reply to %s not sent: %s", dest.ip, e)
        else:
            kind = reply.message_type.name if reply.message_type else "BOOTREPLY"
            boot = f" boot {reply.option(67).decode(errors='replace')}" if reply.option(67) else ""
            log.info("DHCP %s %s -> %s%s", kind, reply.your_ip,
                     request.client_hardware_address, boot)

    def poll_at(self, now: float) -> float | None:
        at = super().poll_at(now)
        expiry = self.server.poll_at()
        if expiry is not None and (at is None or expiry < at):
            at = expiry
        return at

    def dispatch(self, now: float, emit) -> None:
        self.server.expire(now)
        super().dispatch(now, emit)


class DnsServerSocket(UdpSocket):
    """UDP port 53 on one of our addresses, answering from a DnsResponder. Bound to a
    specific address so replies come from the address the query went to (resolvers drop
    answers from any other)."""

    __slots__ = ("responder", "forwarder")

    def __init__(self, responder: DnsResponder, address: str, port: int = 53) -> None:
        super().__init__()
        self.responder = responder
        # `submit(data, query, self, (addr, port), now)` takes the queries for names the
        # responder does not own (the gateway's DNS forwarding); None: NXDOMAIN for them
        self.forwarder = None
        self.bind((address, port))

    def process(self, now, ip_repr, udp_repr, payload, src_hw=None) -> None:
        data = bytes(payload)
        if self.forwarder is not None:
            query = self._forwardable(data)
            if query is not None:
                self.forwarder.submit(data, query, self, (ip_repr.src_addr, udp_repr.src_port),
                                      now)
                return
        answer = self.responder.handle_bytes(data)
        if answer is None:
            return
        try:
            self.send_to(answer, (ip_repr.src_addr, udp_repr.src_port))
        except SocketError as e:
            log.warning("DNS answer to %s not sent: %s", ip_repr.src_addr, e)

    def _forwardable(self, data: bytes):
        return forwardable(self.responder, data)


def forwardable(responder: DnsResponder, data: bytes):
    """The parsed query when it is a well-formed standard query for a name that is not
    the responder's, else None (answered by it: ours, FORMERR, NOTIMP, REFUSED...)."""
    try:
        query = DnsRepr.parse(DnsPacket.new_checked(data))
    except WireError:
        return None
    if query.is_response or query.opcode != Opcode.QUERY or len(query.questions) != 1:
        return None
    q = query.questions[0]
    if q.qclass not in (Class.IN, Class.ANY) or responder.is_local(q.name):
        return None
    return query
