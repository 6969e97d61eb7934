"""Router advertisements (RFC 4861 §6.2), sans-I/O: what lets a guest configure IPv6 from us.

A socket of kind "ndisc": the interface hands it Router Solicitations, and its `dispatch`
sends Router Advertisements to all-nodes (ff02::1) from our link-local address with hop
limit 255, carrying a prefix for SLAAC (RFC 4862), the link MTU, our source link-layer
address and the DNS servers (RDNSS, RFC 8106). Timing, from RFC 4861 §6.2.4/§6.2.6:

- unsolicited: the first `initial_count` at most `initial_interval` apart (so a guest that
  booted before us configures quickly), then every `min_interval`..`max_interval` seconds
  (uniformly random, seeded);
- solicited: an RS brings the next advertisement forward to `now + solicit_delay`, but
  never sooner than `min_delay_between` after the previous one — an RS flood costs at most
  one RA per `min_delay_between` seconds.

The interface must be configured as a router (`InterfaceConfig.ipv6_router`) so that RSs
to ff02::2 reach us.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network

from netstack.socket.set import Socket
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv6 import ALL_NODES
from netstack.wire.ndisc import PrefixInfo, RouterAdvert, RouterSolicit

log = logging.getLogger(__name__)

_ICMPV6 = 58


@dataclass
class RouterAdvConfig:
    """What we advertise. `prefixes` are /64s for SLAAC; `rdnss` the DNS servers."""

    prefixes: list[IPv6Network] = field(default_factory=list)
    rdnss: list[IPv6Address] = field(default_factory=list)
    mtu: int | None = None
    router_lifetime: int = 1800  # seconds; 0 = not a default router
    valid_lifetime: int = 86400
    preferred_lifetime: int = 14400
    other_config: bool = True  # O flag: "ask stateless DHCPv6 for DNS and the like"
    min_interval: float = 200.0
    max_interval: float = 600.0
    initial_count: int = 3
    initial_interval: float = 4.0
    solicit_delay: float = 0.0
    min_delay_between: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        self.prefixes = [ipaddress.IPv6Network(p, strict=False) for p in self.prefixes]
        self.rdnss = [IPv6Address(a) for a in self.rdnss]
        if not 0 <= self.router_lifetime <= 9000:
            raise ValueError("router lifetime must be 0..9000 s (RFC 4861 §6.2.1)")
        if self.min_interval > self.max_interval:
            raise ValueError("min_interval > max_interval")


class RouterAdvertiser(Socket):
    """Sends the advertisements; see the module docstring."""

    KIND = "ndisc"

    def __init__(self, config: RouterAdvConfig, lladdr: EthernetAddress,
                 now: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.lladdr = EthernetAddress(lladdr)
        self._rng = random.Random(config.seed)
        self._next_at = now  # the first one goes out at once
        self._last_at: float | None = None
        self.sent = 0
        self.solicitations = 0
        self._message = self._build()

    def _build(self) -> RouterAdvert:
        c = self.config
        prefixes = tuple(PrefixInfo(p, on_link=True, autonomous=p.prefixlen == 64,
                                    valid_lifetime=c.valid_lifetime,
                                    preferred_lifetime=c.preferred_lifetime)
                         for p in c.prefixes)
        return RouterAdvert(hop_limit=64, other=c.other_config,
                            router_lifetime=c.router_lifetime, lladdr=self.lladdr, mtu=c.mtu,
                            prefixes=prefixes, rdnss=tuple(c.rdnss),
                            rdnss_lifetime=int(c.max_interval * 3) if c.rdnss else 0)

    @property
    def advert(self) -> RouterAdvert:
        return self._message

    def accepts(self, ip_repr, msg) -> bool:
        return isinstance(msg, RouterSolicit)

    def process(self, now: float, ip_repr, msg, payload, src_hw=None) -> None:
        self.solicitations += 1
        at = now + self.config.solicit_delay
        if self._last_at is not None:
            at = max(at, self._last_at + self.config.min_delay_between)
        if at < self._next_at:
            self._next_at = at
        self._wake()

    def poll_at(self, now: float) -> float | None:
        return self._next_at

    def dispatch(self, now: float, emit) -> None:
        if now < self._next_at:
            return
        msg = self._message
        if not emit(ALL_NODES, _ICMPV6, msg.buffer_len(),
                    lambda buf, src, csum: msg.emit(buf, src, ALL_NODES, True), None,
                    ttl=255):
            return  # the device is full: try again next poll
        self.sent += 1
        self._last_at = now
        c = self.config
        if self.sent < c.initial_count:
            delay = min(c.initial_interval, self._rng.uniform(c.min_interval, c.max_interval))
        else:
            delay = self._rng.uniform(c.min_interval, c.max_interval)
        self._next_at = now + delay
        log.debug("router advertisement %d sent; next in %.1f s", self.sent, delay)
