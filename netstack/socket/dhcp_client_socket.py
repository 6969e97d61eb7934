"""The DHCP client as a socket: the sans-I/O `DhcpClient` engine bound to UDP port 68,
configuring the interface it is given.

`DhcpClientSocket(iface)` binds 0.0.0.0:68 and runs on the interface's thread, as the
server in `services.py` does: replies are fed to the engine inside `process`, and what the
engine's `poll(now)` returns leaves in `dispatch`, from `source()` to `destination()`
port 67. The source is passed to `emit` explicitly, so a DISCOVER or REQUEST goes out from
0.0.0.0 even while the interface still holds an address of its own (the interface only
picks a source when given None), and a renewal goes out from the leased address.

Receiving needs no help from us: servers broadcast their replies (the engine sets the
broadcast flag by default), and without the flag the interface, while it has no address,
accepts unicast UDP to port 68 sent to our MAC whatever its IP destination.

Events change the interface at once, on the runtime's thread:

- `Configured`: `iface.set_ip_addrs([address])`, `iface.set_default_gateway(router)`.
- `Deconfigured` (lease expired, NAK): no addresses, no default gateway.

and are then handed to `on_event(event)`, if set (called with the runtime lock held: do not
block in it). `config` is the lease in force (a `Configured`) or None, `state` the engine's
`State`.

    >>> from netstack.iface import Interface, InterfaceConfig
    >>> from netstack.wire.ethernet import EthernetAddress
    >>> iface = Interface(InterfaceConfig(EthernetAddress.parse("52:55:0a:00:37:02")))
    >>> sock = DhcpClientSocket(iface, rng=1)
    >>> sock.endpoint, sock.state.name, sock.poll_at(0.0)
    ((IPv4Address('0.0.0.0'), 68), 'INIT', 0.0)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from netstack.socket.dhcp_client import Configured, Deconfigured, DhcpClient, Event, State
from netstack.socket.set import touches
from netstack.socket.udp import UdpSocket
from netstack.wire import Error as WireError
from netstack.wire.dhcpv4 import CLIENT_PORT, SERVER_PORT, DhcpPacket, DhcpRepr
from netstack.wire.ipv4 import IpProtocol
from netstack.wire.udp import HEADER_LEN, UdpPacket, UdpRepr

log = logging.getLogger(__name__)

_UDP = int(IpProtocol.UDP)


@touches("reset")
class DhcpClientSocket(UdpSocket):
    """UDP port 68 on every address, driving a DhcpClient for `iface`.

    `client` is an engine to use; without one, a `DhcpClient(iface.hardware_addr,
    **client_kwargs)` is made (`hostname`, `rng`, `broadcast_flag`, ...)."""

    __slots__ = ("client", "iface", "on_event", "malformed", "_pending")

    def __init__(self, iface, *, client: DhcpClient | None = None,
                 on_event: Callable[[Event], None] | None = None, **client_kwargs) -> None:
        super().__init__()
        if client is not None and client_kwargs:
            raise ValueError("pass either a DhcpClient or the arguments for one")
        self.iface = iface
        self.client = client if client is not None else DhcpClient(iface.hardware_addr,
                                                                   **client_kwargs)
        self.on_event = on_event
        self.malformed = 0
        # (source, destination, message bytes) the device had no room for: sent next time.
        self._pending: tuple | None = None
        self.bind(("0.0.0.0", CLIENT_PORT))

    @property
    def config(self) -> Configured | None:
        """The lease in force, or None."""
        return self.client.config

    @property
    def state(self) -> State:
        return self.client.state

    def reset(self) -> None:
        """Start over from INIT (the link went down and up); removes a held lease."""
        self._pending = None
        self._apply(self.client.reset())

    # -- events ---------------------------------------------------------------------------
    def _apply(self, event: Event | None) -> None:
        if event is None:
            return
        iface = self.iface
        if isinstance(event, Configured):
            iface.set_ip_addrs([event.address])
            iface.set_default_gateway(event.router)
            log.info("DHCP lease %s router %s dns %s from %s", event.address, event.router,
                     ", ".join(map(str, event.dns_servers)), event.server)
        elif isinstance(event, Deconfigured):
            iface.set_ip_addrs([])
            iface.set_default_gateway(None)
            log.info("DHCP lease lost")
        if self.on_event is not None:
            self.on_event(event)
        self._wake()

    # -- receiving ------------------------------------------------------------------------
    def process(self, now, ip_repr, udp_repr, payload, src_hw=None) -> None:
        if udp_repr.src_port != SERVER_PORT:
            self.client.stats.ignored += 1
            return
        try:
            reply = DhcpRepr.parse(DhcpPacket.new_checked(payload))
        except WireError as e:
            self.malformed += 1
            log.debug("malformed DHCP message from %s: %s", ip_repr.src_addr, e)
            return
        self._apply(self.client.process(now, reply))

    # -- sending --------------------------------------------------------------------------
    def dispatch(self, now: float, emit) -> None:
        if self._pending is None:
            message = self.client.poll(now)
            # A lease that ran out in poll: take the address away before sending anything.
            while (event := self.client.next_event()) is not None:
                self._apply(event)
            if message is None:
                return
            buf = bytearray(message.buffer_len())
            message.emit(DhcpPacket(buf))
            self._pending = (self.client.source(), self.client.destination(), bytes(buf))
        src, dst, data = self._pending
        n = len(data)

        def fill(buf, src_addr, csum):
            UdpRepr(CLIENT_PORT, SERVER_PORT).emit(UdpPacket(buf), src_addr, dst, n, data, csum)

        if emit(dst, _UDP, HEADER_LEN + n, fill, src, ttl=self.ttl):
            self._pending = None

    def poll_at(self, now: float) -> float | None:
        if self._pending is not None:
            return now
        at = self.client.poll_at()
        return None if at == math.inf else at


__all__ = ["DhcpClientSocket"]
