"""A DHCPv4 client state machine (RFC 2131 §4.4), sans-I/O, for the stack on a real network.

The caller owns the UDP socket on port 68 and the clock:

- `poll(now)` returns the next message to send, or None. Send it from `source()` to
  `destination()`, port 67: from 0.0.0.0 to 255.255.255.255 in every state except RENEWING,
  which unicasts from the leased address to the server.
- `process(now, reply)` takes a parsed message that arrived on port 68 and returns a
  `Configured` or `Deconfigured` event when the configuration changes.
- `next_event()` returns events raised by time rather than by a message: `Deconfigured`
  when the lease ran out in `poll`. Call it after `poll`.
- `poll_at()` is the `now` at which `poll` next has something to do (0.0: at once).

Theory of operation (the states of RFC 2131 Figure 5; INIT-REBOOT is not used)::

    INIT --DISCOVER--> SELECTING --OFFER/REQUEST--> REQUESTING --ACK--> BOUND
    BOUND --T1--> RENEWING --T2--> REBINDING --lease end--> INIT   (Deconfigured)
    RENEWING / REBINDING --ACK--> BOUND          any --NAK--> INIT  (Deconfigured if bound)

- Retransmission (§4.1): DISCOVER and the selecting REQUEST are retransmitted after
  4, 8, 16, 32, 64, 64… seconds, each ±1 s of jitter drawn from the client's own
  `random.Random` (seeded for reproducible tests). The REQUEST gives up after
  `max_retransmit` retransmissions and the client starts over with a new xid; DISCOVER
  never gives up.
- Renewal (§4.4.5): at T1 (option 58, else half the lease) a REQUEST with ciaddr is
  unicast to the server, retransmitted after half the time left until T2 but at least
  60 s; at T2 (option 59, else 7/8 of the lease) the same REQUEST is broadcast to any
  server, retransmitted after half the time left in the lease, at least 60 s. Lease times
  count from when the REQUEST that got the ACK was sent (§4.4.1).
- The first OFFER wins. Replies must carry our xid and chaddr; anything else is ignored
  and counted. A NAK is believed only from the server we are talking to once we have one.
- A lease of 0xFFFFFFFF seconds is infinite: no renewal.
- No ARP probe of the offered address (no DECLINE): the stack has no ARP hook for it.
- No random 1–10 s wait before the first DISCOVER (§4.4.1 SHOULD): `poll_at()` starts at
  0.0; a caller that boots many clients at once can delay the first `poll` itself.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address

from netstack.wire.dhcpv4 import DhcpRepr, MessageType
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr

ZERO = IPv4Address(0)
LIMITED_BROADCAST = IPv4Address("255.255.255.255")
INFINITE_LEASE = 0xFFFFFFFF
MIN_BACKOFF = 4.0
MAX_BACKOFF = 64.0
JITTER = 1.0
MIN_RENEW_INTERVAL = 60.0
# Subnet mask, router, DNS servers, domain name.
PARAMETER_REQUEST_LIST = bytes((1, 3, 6, 15))


class State(Enum):
    INIT = "init"
    SELECTING = "selecting"
    REQUESTING = "requesting"
    BOUND = "bound"
    RENEWING = "renewing"
    REBINDING = "rebinding"


@dataclass(frozen=True, slots=True)
class Configured:
    """The lease to apply: address with prefix, default router, DNS servers, lease seconds
    (`math.inf` for an infinite lease), the server that granted it, the domain name."""

    address: Ipv4Cidr
    router: IPv4Address | None
    dns_servers: tuple[IPv4Address, ...]
    lease: float
    server: IPv4Address = ZERO
    domain_name: str | None = None


@dataclass(frozen=True, slots=True)
class Deconfigured:
    """The address (and routes and DNS from it) must be removed."""


Event = Configured | Deconfigured


@dataclass(slots=True)
class DhcpClientStats:
    sent: int = 0
    retransmits: int = 0
    offers: int = 0
    acks: int = 0
    naks: int = 0
    ignored: int = 0
    expired: int = 0


def _prefix_len(mask: IPv4Address | None, addr: IPv4Address) -> int:
    """The prefix of a contiguous mask; without one, the address's classful default."""
    if mask is not None:
        bits = int(mask)
        inverted = ~bits & 0xFFFFFFFF
        if inverted & (inverted + 1) == 0:
            return 32 - inverted.bit_length()
    first = int(addr) >> 24
    return 8 if first < 128 else 16 if first < 192 else 24


class DhcpClient:
    """One interface's DHCP client.

    `rng` is a `random.Random` or a seed for one: it draws the xids and the jitter.
    `client_id` defaults to `01 + mac` (what Linux sends); `broadcast_flag` asks servers to
    broadcast their replies, which a stack with no address yet can always receive.

    >>> client = DhcpClient(EthernetAddress.parse("52:54:00:12:34:56"), rng=1)
    >>> client.poll(0.0).message_type.name, client.state.name, 3.0 <= client.poll_at() <= 5.0
    ('DISCOVER', 'SELECTING', True)
    """

    def __init__(self, mac: EthernetAddress, *, hostname: str | None = None,
                 client_id: bytes | None = None, rng: random.Random | int | None = None,
                 max_retransmit: int = 4, broadcast_flag: bool = True) -> None:
        self.mac = EthernetAddress(mac)
        self.hostname = hostname
        self.client_id = client_id if client_id is not None else b"\x01" + bytes(self.mac)
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self.max_retransmit = max_retransmit
        self.broadcast_flag = broadcast_flag
        self.stats = DhcpClientStats()
        self._events: list[Event] = []
        self._init_state()

    def _init_state(self) -> None:
        self.state = State.INIT
        self.xid = 0
        self.config: Configured | None = None
        self.server: IPv4Address | None = None
        self._offered: IPv4Address | None = None
        self._deadline = 0.0  # when poll next acts
        self._attempt = 0
        self._exchange_start = 0.0
        self._sent_at = 0.0  # when the REQUEST that an ACK answers was sent
        self._t1 = self._t2 = self._expires = math.inf

    # -- public --------------------------------------------------------------------------

    def reset(self) -> Deconfigured | None:
        """Start over from INIT (link down and up, for example); Deconfigured when a lease
        was held. The next `poll` sends a DISCOVER."""
        was = self.config
        self._init_state()
        return Deconfigured() if was is not None else None

    def poll_at(self) -> float:
        """When `poll` next acts: 0.0 for at once, `math.inf` for never (infinite lease)."""
        return self._deadline

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def source(self) -> IPv4Address:
        """The IPv4 source for the message `poll` just returned."""
        if self.state in (State.RENEWING, State.REBINDING) and self.config is not None:
            return self.config.address.address
        return ZERO

    def destination(self) -> IPv4Address:
        """The IPv4 destination for the message `poll` just returned."""
        if self.state is State.RENEWING and self.server is not None:
            return self.server
        return LIMITED_BROADCAST

    def poll(self, now: float) -> DhcpRepr | None:
        """The message to send now, if any; moves the timers along."""
        if now < self._deadline:
            return None
        state = self.state
        if state is State.INIT:
            self._new_exchange(now)
            self.state = State.SELECTING
            return self._send(now, self._discover(now), self._backoff())
        if state is State.SELECTING:
            self.stats.retransmits += 1
            return self._send(now, self._discover(now), self._backoff())
        if state is State.REQUESTING:
            if self._attempt > self.max_retransmit:
                self._init_state()  # no ACK: start over with a new xid
                return self.poll(now)
            if self._attempt:
                self.stats.retransmits += 1
            else:
                self._sent_at = now  # §4.4.1: the lease counts from the first REQUEST
            return self._send(now, self._request(now), self._backoff())
        # BOUND, RENEWING, REBINDING: the lease timers.
        if now >= self._expires:
            self.stats.expired += 1
            self._init_state()
            self._events.append(Deconfigured())
            return self.poll(now)
        if now >= self._t2 and state is not State.REBINDING:
            self.state = State.REBINDING
            self._new_exchange(now)
        elif now >= self._t1 and state is State.BOUND:
            self.state = State.RENEWING
            self._new_exchange(now)
        elif state is State.BOUND:
            self._deadline = self._t1
            return None
        else:
            self.stats.retransmits += 1
        limit = self._t2 if self.state is State.RENEWING else self._expires
        wait = max((limit - now) / 2, MIN_RENEW_INTERVAL)
        self._sent_at = self._exchange_start  # the first REQUEST of this renewal
        return self._send(now, self._request(now), min(wait, limit - now))

    def process(self, now: float, reply: DhcpRepr) -> Event | None:
        """Take a server message; returns an event when the configuration changes."""
        if (reply.transaction_id != self.xid
                or bytes(reply.client_hardware_address) != bytes(self.mac)
                or self.state in (State.INIT, State.BOUND)):
            self.stats.ignored += 1
            return None
        mtype = reply.message_type
        if mtype == MessageType.OFFER and self.state is State.SELECTING:
            return self._offer(now, reply)
        if mtype == MessageType.ACK and self.state is not State.SELECTING:
            return self._ack(now, reply)
        if mtype == MessageType.NAK and self.state is not State.SELECTING:
            if (self.server is not None and reply.server_identifier is not None
                    and reply.server_identifier != self.server
                    and self.state is not State.REBINDING):
                self.stats.ignored += 1
                return None
            self.stats.naks += 1
            return self.reset()
        self.stats.ignored += 1
        return None

    # -- transitions ---------------------------------------------------------------------

    def _new_exchange(self, now: float) -> None:
        self.xid = self.rng.getrandbits(32)
        self._attempt = 0
        self._exchange_start = now

    def _backoff(self) -> float:
        base = min(MIN_BACKOFF * 2 ** self._attempt, MAX_BACKOFF)
        return base + self.rng.uniform(-JITTER, JITTER)

    def _send(self, now: float, message: DhcpRepr, wait: float) -> DhcpRepr:
        self._attempt += 1
        self._deadline = now + wait
        self.stats.sent += 1
        return message

    def _offer(self, now: float, offer: DhcpRepr) -> None:
        if offer.your_ip == ZERO or offer.server_identifier is None:
            self.stats.ignored += 1
            return None
        self.stats.offers += 1
        self.state = State.REQUESTING
        self.server = offer.server_identifier
        self._offered = offer.your_ip
        self._attempt = 0
        self._deadline = now  # send the REQUEST at the next poll
        return None

    def _ack(self, now: float, ack: DhcpRepr) -> Event | None:
        if ack.your_ip == ZERO or ack.lease_duration is None:
            self.stats.ignored += 1
            return None
        if (self.state is State.REQUESTING and ack.server_identifier is not None
                and ack.server_identifier != self.server):
            self.stats.ignored += 1
            return None
        self.stats.acks += 1
        lease = math.inf if ack.lease_duration == INFINITE_LEASE else float(ack.lease_duration)
        t1 = float(ack.renew_duration) if ack.renew_duration is not None else lease / 2
        t2 = float(ack.rebind_duration) if ack.rebind_duration is not None else lease * 7 / 8
        if lease == math.inf:
            t1 = t2 = math.inf
        elif not t1 <= t2 <= lease:
            t1, t2 = lease / 2, lease * 7 / 8
        start = self._sent_at
        self._t1, self._t2, self._expires = start + t1, start + t2, start + lease
        if ack.server_identifier is not None:
            self.server = ack.server_identifier
        self.state = State.BOUND
        self._deadline = self._t1
        config = Configured(
            address=Ipv4Cidr(ack.your_ip, _prefix_len(ack.subnet_mask, ack.your_ip)),
            router=ack.router,
            dns_servers=ack.dns_servers,
            lease=lease,
            server=self.server or ZERO,
            domain_name=ack.domain_name,
        )
        changed = config != self.config
        self.config = config
        return config if changed else None

    # -- messages ------------------------------------------------------------------------

    def _message(self, now: float, mtype: MessageType, **fields) -> DhcpRepr:
        return DhcpRepr(
            message_type=mtype,
            transaction_id=self.xid,
            client_hardware_address=self.mac,
            secs=min(int(now - self._exchange_start), 0xFFFF),
            client_identifier=self.client_id,
            hostname=self.hostname,
            parameter_request_list=PARAMETER_REQUEST_LIST,
            max_size=1500,
            **fields,
        )

    def _discover(self, now: float) -> DhcpRepr:
        return self._message(now, MessageType.DISCOVER, broadcast=self.broadcast_flag)

    def _request(self, now: float) -> DhcpRepr:
        if self.state is State.REQUESTING:
            return self._message(now, MessageType.REQUEST, broadcast=self.broadcast_flag,
                                 requested_ip=self._offered, server_identifier=self.server)
        assert self.config is not None
        return self._message(now, MessageType.REQUEST, client_ip=self.config.address.address)


__all__ = [
    "Configured",
    "Deconfigured",
    "DhcpClient",
    "DhcpClientStats",
    "Event",
    "State",
]
