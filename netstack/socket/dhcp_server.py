"""A DHCPv4 server for the guest network, as a sans-I/O engine (RFC 2131/2132).

The server never touches a socket or a clock: the caller parses a datagram that arrived on
UDP port 67 into a `DhcpRepr`, calls `handle(now, request, src_mac)` and sends the reply it
returns (if any) from `server_ip:67` to where `reply_destination(request, reply)` says.
`poll_at()` tells when the next lease or offer runs out; `expire(now)` (also run by every
`handle`) frees them.

Theory of operation
-------------------

Clients are keyed by their client identifier (option 61) when they send one, else by
`b"\\x01" + chaddr`: the identifier a Linux client derives from its MAC, so a client that
sends option 61 in one message and not in the next is still one client.

A binding is OFFERED (held for `offer_timeout` seconds after a DISCOVER) or BOUND (after an
ACK, until `lease_time` runs out). The address chosen for a DISCOVER is, in order: the
client's current binding; the address it last held (remembered after release or expiry, in
a bounded LRU); the address it asks for (option 50) when free and in the pool; the lowest
free address that no past client is remembered with; the free address whose past client
was forgotten longest ago. Free means: in the pool, not reserved (the server, router and DNS
addresses are never leased), not bound or offered to another client, and not declined in
the last `decline_timeout` seconds.

REQUEST is told apart by its fields (RFC 2131 §4.3.2):

============  ==============  ==============  =========
state         server id (54)  requested (50)  ciaddr
============  ==============  ==============  =========
SELECTING     present         present         zero
INIT-REBOOT   absent          present         zero
RENEWING      absent          absent          the lease
REBINDING     absent          absent          the lease
============  ==============  ==============  =========

RENEWING (unicast) and REBINDING (broadcast) differ only in the IP destination, which the
engine does not see; they are answered alike.

SELECTING with another server's identifier means the client chose that server: our offer is
withdrawn and we stay silent. Otherwise the address is ACKed when it is free for this client
and NAKed when it is not (wrong subnet, outside the pool, reserved, declined, or held by
another client). This server is authoritative for its subnet: an INIT-REBOOT or RENEWING
client we have no record of (the backend restarted under a running guest) gets its address
back when it is free, instead of the silence RFC 2131 asks of non-authoritative servers.

Network boot (PXE, iPXE; `boot_file` and friends in the config): OFFER and ACK carry the
boot file in option 67 and the header's `file`, and the server to fetch it from in
`siaddr` and option 66 (RFC 2132 §9.4/9.5). A client whose user class (option 77) says
"iPXE" gets `ipxe_boot_file` instead when one is set: the usual chainload, where a PXE
ROM fetches iPXE by TFTP and iPXE, asking again, gets an HTTP script. A PXE client
(vendor class "PXEClient...") gets option 60 "PXEClient" back, which PXE ROMs look for.
Plain BOOTP requests (RFC 951: no message type) are answered only when a boot file is
set (a BOOTP client has nothing else to ask us for): one BOOTREPLY binds the address for
`lease_time`, as an ACK would, with the RFC 1497 options and no DHCP-only ones.

Bounds: the binding table never exceeds `max_leases` (and never the pool size); a DISCOVER
that finds no free address gets no reply and counts `stats.pool_exhausted`. Offers expire
after `offer_timeout`, so a flood of DISCOVERs from random MACs fills the pool for at most
that long and never grows memory past `max_leases`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from typing import NamedTuple

from netstack.wire.dhcpv4 import (
    CLIENT_PORT,
    FILE,
    SERVER_PORT,
    DhcpRepr,
    MessageType,
    OpCode,
    Option,
)
from netstack.wire.ethernet import BROADCAST, EthernetAddress

LIMITED_BROADCAST = IPv4Address("255.255.255.255")
INFINITE_LEASE = 0xFFFFFFFF
ZERO = IPv4Address(0)
FILE_FIELD_LEN = FILE.stop - FILE.start  # the header's `file`, NUL included


def _ip(value) -> IPv4Address:
    return value if isinstance(value, IPv4Address) else IPv4Address(value)


@dataclass(frozen=True, slots=True)
class DhcpServerConfig:
    """What the server hands out. Strings are accepted for addresses and the subnet.

    `pool_size=None` runs the pool from `pool_start` to the last host address of the subnet
    (the broadcast address excluded); reserved addresses inside it are skipped, not counted
    out of the size.
    """

    server_ip: IPv4Address = IPv4Address("10.0.2.2")
    subnet: IPv4Network = IPv4Network("10.0.2.0/24")
    pool_start: IPv4Address = IPv4Address("10.0.2.15")
    pool_size: int | None = None
    router: IPv4Address | None = IPv4Address("10.0.2.2")
    dns_servers: tuple[IPv4Address, ...] = (IPv4Address("10.0.2.3"),)
    lease_time: int = 3600
    domain_name: str | None = "vhostnet"
    max_leases: int = 1024
    offer_timeout: float = 60.0
    decline_timeout: float = 600.0
    check_src_mac: bool = True
    # network boot: the file named to clients (None: no boot options), the one named to
    # iPXE instead (None: the same), and the server holding them (None: server_ip)
    boot_file: str | None = None
    ipxe_boot_file: str | None = None
    next_server: IPv4Address | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.next_server is not None:
            set_(self, "next_server", _ip(self.next_server))
        for name in ("boot_file", "ipxe_boot_file"):
            value = getattr(self, name)
            if value is not None and not 0 < len(value.encode("utf-8")) <= 255:
                raise ValueError(f"{name} must be 1 to 255 bytes (DHCP option 67)")
        set_(self, "server_ip", _ip(self.server_ip))
        set_(self, "subnet", IPv4Network(self.subnet))
        set_(self, "pool_start", _ip(self.pool_start))
        if self.router is not None:
            set_(self, "router", _ip(self.router))
        set_(self, "dns_servers", tuple(_ip(a) for a in self.dns_servers))
        if not 1 <= self.lease_time <= 0xFFFFFFFF:
            raise ValueError(f"lease_time {self.lease_time} is not in 1..2**32-1")
        if self.max_leases < 1:
            raise ValueError("max_leases must be at least 1")
        if self.pool_start not in self.subnet:
            raise ValueError(f"pool start {self.pool_start} is not in {self.subnet}")
        last = self._last_host()
        if self.pool_start > last:
            raise ValueError(f"pool start {self.pool_start} is past the last host {last}")
        if self.pool_size is not None:
            if self.pool_size < 1:
                raise ValueError("pool_size must be at least 1")
            if int(self.pool_start) + self.pool_size - 1 > int(last):
                raise ValueError(f"a pool of {self.pool_size} from {self.pool_start} "
                                 f"runs past the last host {last} of {self.subnet}")

    def _last_host(self) -> IPv4Address:
        net = self.subnet
        return net.broadcast_address - 1 if net.prefixlen < 31 else net.broadcast_address

    @property
    def pool_end(self) -> IPv4Address:
        """The last address of the pool (inclusive)."""
        if self.pool_size is None:
            return self._last_host()
        return self.pool_start + (self.pool_size - 1)

    @property
    def reserved(self) -> frozenset[IPv4Address]:
        """Addresses never leased: the server, the router and the DNS servers."""
        out = {self.server_ip, *self.dns_servers}
        if self.router is not None:
            out.add(self.router)
        return frozenset(out)

    def in_pool(self, addr: IPv4Address) -> bool:
        return self.pool_start <= addr <= self.pool_end and addr not in self.reserved


class LeaseState(Enum):
    OFFERED = "offered"
    BOUND = "bound"


@dataclass(slots=True)
class Lease:
    """One binding. `expires` is the `now` at which it runs out."""

    client_key: bytes
    mac: EthernetAddress
    address: IPv4Address
    state: LeaseState
    expires: float
    hostname: str | None = None


@dataclass(slots=True)
class DhcpServerStats:
    received: int = 0
    offers: int = 0
    acks: int = 0
    naks: int = 0
    informs: int = 0
    releases: int = 0
    declines: int = 0
    expired: int = 0
    pool_exhausted: int = 0
    bootp: int = 0
    other_server: int = 0
    mac_mismatch: int = 0
    malformed: int = 0
    ignored: int = 0


class Destination(NamedTuple):
    """Where a reply goes: IPv4 destination, Ethernet destination, and whether it is a
    broadcast. `mac` is None when the interface must resolve it (a relay agent)."""

    ip: IPv4Address
    mac: EthernetAddress | None
    broadcast: bool


def reply_destination(request: DhcpRepr, reply: DhcpRepr) -> Destination:
    """Where to send `reply` to `request`, per RFC 2131 §4.1:

    - giaddr set: to the relay agent at giaddr, UDP port 67 (see `reply_port`); the MAC is
      left for the interface to resolve.
    - a NAK without a relay: broadcast.
    - ciaddr set (RENEWING, REBINDING, INFORM): unicast to ciaddr at chaddr.
    - the broadcast bit set: broadcast to 255.255.255.255 / ff:ff:ff:ff:ff:ff.
    - otherwise unicast to yiaddr at chaddr. The client has no address yet, so the interface
      must not ARP for yiaddr: it sends straight to chaddr. This works with Linux clients
      (dhclient, systemd-networkd, NetworkManager's internal client, udhcpc) because they
      receive on an AF_PACKET socket before the address is configured: the kernel accepts
      the frame because it is addressed to the NIC's MAC, and the packet socket sees it
      although the IP layer has no such address yet.
    """
    if request.relay_agent_ip != ZERO:
        return Destination(request.relay_agent_ip, None, False)
    if reply.message_type == MessageType.NAK:
        return Destination(LIMITED_BROADCAST, BROADCAST, True)
    if request.client_ip != ZERO:
        return Destination(request.client_ip, request.client_hardware_address, False)
    if request.broadcast:
        return Destination(LIMITED_BROADCAST, BROADCAST, True)
    return Destination(reply.your_ip, request.client_hardware_address, False)


def reply_port(request: DhcpRepr) -> int:
    """The UDP destination port of a reply: 67 to a relay agent, 68 to a client."""
    return SERVER_PORT if request.relay_agent_ip != ZERO else CLIENT_PORT


def client_key(request: DhcpRepr) -> bytes:
    """The client identifier, or `01 + chaddr` (hardware type Ethernet) without one."""
    if request.client_identifier:
        return bytes(request.client_identifier)
    return b"\x01" + bytes(request.client_hardware_address)


class DhcpServer:
    """The server's bindings and the logic that answers client messages.

    >>> from netstack.wire.ethernet import EthernetAddress
    >>> server = DhcpServer(DhcpServerConfig())
    >>> mac = EthernetAddress.parse("52:54:00:12:34:56")
    >>> offer = server.handle(0.0, DhcpRepr(MessageType.DISCOVER, 7, mac, broadcast=True), mac)
    >>> offer.message_type.name, str(offer.your_ip), offer.lease_duration
    ('OFFER', '10.0.2.15', 3600)
    """

    def __init__(self, config: DhcpServerConfig | None = None) -> None:
        self.config = config or DhcpServerConfig()
        self.stats = DhcpServerStats()
        self._by_key: dict[bytes, Lease] = {}
        self._by_addr: dict[IPv4Address, Lease] = {}
        self._declined: dict[IPv4Address, float] = {}
        self._remembered: OrderedDict[bytes, IPv4Address] = OrderedDict()
        self._mask = IPv4Address(int(self.config.subnet.netmask))

    # -- public --------------------------------------------------------------------------

    def handle(self, now: float, request: DhcpRepr,
               src_mac: EthernetAddress | None = None) -> DhcpRepr | None:
        """Answer one client message; None when nothing is to be sent.

        `src_mac` is the Ethernet source of the frame. With `check_src_mac` (the default),
        a message that did not come through a relay and whose chaddr differs from it is
        dropped: a guest cannot take leases for MACs it does not own.
        """
        self.stats.received += 1
        self.expire(now)
        if request.opcode != OpCode.REQUEST:
            self.stats.ignored += 1
            return None
        if (self.config.check_src_mac and src_mac is not None
                and request.relay_agent_ip == ZERO
                and bytes(src_mac) != bytes(request.client_hardware_address)):
            self.stats.mac_mismatch += 1
            return None
        if request.message_type is None:
            return self._bootp(now, request)
        handler = {
            MessageType.DISCOVER: self._discover,
            MessageType.REQUEST: self._request,
            MessageType.DECLINE: self._decline,
            MessageType.RELEASE: self._release,
            MessageType.INFORM: self._inform,
        }[request.message_type]
        return handler(now, request)

    def expire(self, now: float) -> None:
        """Free offers and leases whose time has come, and forget old declines."""
        for lease in [lease for lease in self._by_key.values() if lease.expires <= now]:
            if lease.state is LeaseState.BOUND:
                self.stats.expired += 1
            self._drop(lease)
        for addr in [a for a, until in self._declined.items() if until <= now]:
            del self._declined[addr]

    def poll_at(self) -> float | None:
        """The `now` at which `expire` next has something to do, None when nothing waits."""
        times = [lease.expires for lease in self._by_key.values()]
        times.extend(self._declined.values())
        return min(times) if times else None

    def leases(self) -> list[Lease]:
        """Copies of the current bindings, ordered by address (for status output)."""
        return [
            Lease(le.client_key, le.mac, le.address, le.state, le.expires, le.hostname)
            for le in sorted(self._by_key.values(), key=lambda le: le.address)
        ]

    def declined(self) -> dict[IPv4Address, float]:
        """Addresses a client declined, with the `now` until which they are not offered."""
        return dict(self._declined)

    # -- bindings ------------------------------------------------------------------------

    def _drop(self, lease: Lease) -> None:
        del self._by_key[lease.client_key]
        del self._by_addr[lease.address]
        self._remember(lease.client_key, lease.address)

    def _remember(self, key: bytes, addr: IPv4Address) -> None:
        self._remembered[key] = addr
        self._remembered.move_to_end(key)
        while len(self._remembered) > self.config.max_leases:
            self._remembered.popitem(last=False)

    def _free_for(self, key: bytes, addr: IPv4Address | None) -> bool:
        """Whether `addr` may be bound to the client `key`."""
        if addr is None or not self.config.in_pool(addr) or addr in self._declined:
            return False
        holder = self._by_addr.get(addr)
        return holder is None or holder.client_key == key

    def _next_free(self, key: bytes) -> IPv4Address | None:
        """The lowest free address, preferring those no past client may come back for
        (RFC 2131 §4.3.1); the longest-forgotten past address when nothing else is left."""
        held = {addr: i for i, addr in enumerate(self._remembered.values())}
        fallback: tuple[int, IPv4Address] | None = None
        addr, end = self.config.pool_start, self.config.pool_end
        while addr <= end:
            if self._free_for(key, addr):
                age = held.get(addr)
                if age is None:
                    return addr
                if fallback is None or age < fallback[0]:
                    fallback = (age, addr)
            addr += 1
        return fallback[1] if fallback else None

    def _bind(self, key: bytes, request: DhcpRepr, addr: IPv4Address, state: LeaseState,
              expires: float) -> Lease | None:
        """Create or move the client's binding to `addr`; None when the table is full."""
        lease = self._by_key.get(key)
        if lease is not None and lease.address != addr:
            self._drop(lease)
            lease = None
        if lease is None:
            if len(self._by_key) >= self.config.max_leases:
                return None
            lease = Lease(key, request.client_hardware_address, addr, state, expires)
            self._by_key[key] = lease
            self._by_addr[addr] = lease
            self._remembered.pop(key, None)
        lease.mac = request.client_hardware_address
        lease.state = state
        lease.expires = expires
        if request.hostname:
            lease.hostname = request.hostname
        return lease

    # -- messages ------------------------------------------------------------------------

    def _boot(self, request: DhcpRepr) -> dict:
        """The boot fields and options for this client: {} without a boot file."""
        cfg = self.config
        user_class = request.option(Option.USER_CLASS) or b""
        name = cfg.ipxe_boot_file if b"iPXE" in user_class else None
        name = name or cfg.boot_file
        if name is None:
            return {}
        server = cfg.next_server or cfg.server_ip
        options = [(int(Option.TFTP_SERVER_NAME), str(server).encode()),
                   (int(Option.BOOTFILE_NAME), name.encode("utf-8"))]
        vendor = request.option(Option.VENDOR_CLASS) or b""
        if vendor.startswith(b"PXEClient"):
            options.append((int(Option.VENDOR_CLASS), b"PXEClient"))
        fits = len(name.encode("utf-8")) < FILE_FIELD_LEN  # else option 67 alone
        return {"server_ip": server, "boot_file": name if fits else "",
                "additional_options": tuple(options)}

    def _reply(self, request: DhcpRepr, message_type: MessageType, your_ip: IPv4Address,
               *, lease: bool = True, message: str | None = None) -> DhcpRepr:
        cfg = self.config
        params = message_type != MessageType.NAK
        lease_time = cfg.lease_time if params and lease else None
        timers = lease_time is not None and lease_time != INFINITE_LEASE  # no T1/T2 if infinite
        boot = self._boot(request) if params else {}
        return DhcpRepr(
            message_type=message_type,
            transaction_id=request.transaction_id,
            client_hardware_address=request.client_hardware_address,
            broadcast=request.broadcast,
            client_ip=request.client_ip if message_type != MessageType.NAK else ZERO,
            your_ip=your_ip,
            relay_agent_ip=request.relay_agent_ip,
            server_identifier=cfg.server_ip,
            # RFC 6842: the client identifier is echoed back.
            client_identifier=request.client_identifier,
            lease_duration=lease_time,
            renew_duration=lease_time // 2 if timers else None,
            rebind_duration=lease_time * 7 // 8 if timers else None,
            subnet_mask=self._mask if params else None,
            router=cfg.router if params else None,
            dns_servers=cfg.dns_servers if params else (),
            domain_name=cfg.domain_name if params else None,
            message=message,
            **boot,
        )

    def _bootp(self, now: float, request: DhcpRepr) -> DhcpRepr | None:
        """A plain BOOTP request (RFC 951): answered only when there is a file to boot."""
        boot = self._boot(request)
        if not boot:
            self.stats.ignored += 1
            return None
        key = client_key(request)
        current = self._by_key.get(key)
        addr = None
        for candidate in (current.address if current else None, self._remembered.get(key)):
            if self._free_for(key, candidate):
                addr = candidate
                break
        addr = addr or self._next_free(key)
        lease = None if addr is None else self._bind(key, request, addr, LeaseState.BOUND,
                                                     now + self.config.lease_time)
        if lease is None:
            self.stats.pool_exhausted += 1
            return None
        self.stats.bootp += 1
        cfg = self.config
        return DhcpRepr(
            None, request.transaction_id, request.client_hardware_address,
            op=OpCode.REPLY, broadcast=request.broadcast, client_ip=request.client_ip,
            your_ip=lease.address, relay_agent_ip=request.relay_agent_ip,
            subnet_mask=self._mask, router=cfg.router, dns_servers=cfg.dns_servers,
            domain_name=cfg.domain_name, **boot)

    def _discover(self, now: float, request: DhcpRepr) -> DhcpRepr | None:
        key = client_key(request)
        current = self._by_key.get(key)
        addr = None
        for candidate in (
            current.address if current else None,
            self._remembered.get(key),
            request.requested_ip,
        ):
            if self._free_for(key, candidate):
                addr = candidate
                break
        if addr is None:
            addr = self._next_free(key)
        if current is not None and current.state is LeaseState.BOUND and addr == current.address:
            lease = current  # still bound: the offer does not shorten the lease
        elif addr is None:
            lease = None
        else:
            lease = self._bind(key, request, addr, LeaseState.OFFERED,
                               now + self.config.offer_timeout)
        if lease is None:
            self.stats.pool_exhausted += 1
            return None
        self.stats.offers += 1
        return self._reply(request, MessageType.OFFER, lease.address)

    def _request(self, now: float, request: DhcpRepr) -> DhcpRepr | None:
        key = client_key(request)
        if request.server_identifier is not None:
            if request.server_identifier != self.config.server_ip:
                # RFC 2131 §4.3.2: the client chose another server; withdraw our offer.
                self.stats.other_server += 1
                lease = self._by_key.get(key)
                if lease is not None and lease.state is LeaseState.OFFERED:
                    self._drop(lease)
                return None
            if request.requested_ip is None or request.client_ip != ZERO:
                self.stats.malformed += 1
                return None
            addr = request.requested_ip  # SELECTING
        elif request.requested_ip is not None:
            addr = request.requested_ip  # INIT-REBOOT
        elif request.client_ip != ZERO:
            addr = request.client_ip  # RENEWING or REBINDING
        else:
            self.stats.malformed += 1
            return None

        if not self._free_for(key, addr):
            return self._nak(request, f"address {addr} is not available")
        lease = self._bind(key, request, addr, LeaseState.BOUND, now + self.config.lease_time)
        if lease is None:
            self.stats.pool_exhausted += 1
            return self._nak(request, "lease table full")
        self.stats.acks += 1
        return self._reply(request, MessageType.ACK, addr)

    def _nak(self, request: DhcpRepr, message: str) -> DhcpRepr:
        self.stats.naks += 1
        return self._reply(request, MessageType.NAK, ZERO, message=message)

    def _ours(self, request: DhcpRepr) -> bool:
        sid = request.server_identifier
        if sid is not None and sid != self.config.server_ip:
            self.stats.other_server += 1
            return False
        return True

    def _release(self, now: float, request: DhcpRepr) -> None:
        if not self._ours(request):
            return None
        lease = self._by_key.get(client_key(request))
        if lease is not None and lease.address == request.client_ip:
            self.stats.releases += 1
            self._drop(lease)
        else:
            self.stats.ignored += 1
        return None

    def _decline(self, now: float, request: DhcpRepr) -> None:
        """RFC 2131 §4.3.3: the address is in use on the link (the client's ARP probe was
        answered); keep it out of the pool for `decline_timeout` seconds."""
        if not self._ours(request):
            return None
        addr = request.requested_ip
        if addr is None or not self.config.in_pool(addr):
            self.stats.malformed += 1
            return None
        lease = self._by_addr.get(addr)
        if lease is not None and lease.client_key == client_key(request):
            self._drop(lease)
            self._remembered.pop(lease.client_key, None)  # do not offer it back to them
        self._declined[addr] = now + self.config.decline_timeout
        self.stats.declines += 1
        return None

    def _inform(self, now: float, request: DhcpRepr) -> DhcpRepr | None:
        """RFC 2131 §4.3.5: configuration for a client with an address; no yiaddr, no
        lease time."""
        if request.client_ip == ZERO:
            self.stats.malformed += 1
            return None
        self.stats.informs += 1
        return self._reply(request, MessageType.ACK, ZERO, lease=False)


__all__ = [
    "DhcpServer",
    "DhcpServerConfig",
    "DhcpServerStats",
    "Destination",
    "Lease",
    "LeaseState",
    "client_key",
    "reply_destination",
    "reply_port",
]
