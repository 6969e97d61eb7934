"""What the gateway lets a guest reach, and where: the options of `vhostnet serve` that
shape NAT (`GatewayConfig`) and the decision for one destination (`Policy.target`).

A destination is refused (the flow is never opened) when it is not a unicast address a
host socket could reach (multicast, broadcast, unspecified, the host's own loopback
named directly), when `restrict` is on, when its protocol's outbound is off, or when a
`deny` network holds it, or `allow` networks are given and none holds it (deny wins).
Our gateway address (10.0.2.2, fd00:10:0:2::2) on a port none of our apps owns stands for
the host's loopback (127.0.0.1, ::1), as `-netdev user` maps 10.0.2.2; `map_host_loopback`
moves that to another guest-visible address, None turns it off.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

Address = IPv4Address | IPv6Address

LOOPBACK4 = IPv4Address("127.0.0.1")
LOOPBACK6 = IPv6Address("::1")


@dataclass
class GatewayConfig:
    """The gateway's options (each has a `vhostnet serve` flag of the same name)."""

    enabled: bool = True
    # guest-visible addresses standing for the host's 127.0.0.1 / ::1 ("": our gateway
    # address of that family; None: no mapping)
    map_host_loopback: str | None = ""
    restrict: bool = False  # no outbound flows at all (hostfwd still works)
    tcp: bool = True
    udp: bool = True
    icmp: bool = True
    allow: list[str] = field(default_factory=list)  # CIDRs; empty: everything
    deny: list[str] = field(default_factory=list)
    max_flows: int = 4096  # per protocol
    udp_timeout: float = 180.0  # seconds a UDP flow lives without traffic
    connect_timeout: float = 20.0  # seconds a host connect may take before the guest's RST
    dns: bool = True  # forward queries for names that are not ours
    dns_forward: list[str] | None = None  # ADDR[:PORT]; None: /etc/resolv.conf's

    def check(self) -> None:
        """ValueError naming the option, for the first bad value."""
        for opt, nets in (("--allow-outbound", self.allow), ("--deny-outbound", self.deny)):
            for text in nets:
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError as e:
                    raise ValueError(f"{opt} {text}: {e}") from None
        if self.map_host_loopback:
            try:
                ipaddress.ip_address(self.map_host_loopback)
            except ValueError as e:
                raise ValueError(f"--map-host-loopback {self.map_host_loopback}: {e}") from None
        from gateway.dns import parse_server

        for text in self.dns_forward or ():
            try:
                parse_server(text)
            except ValueError as e:
                raise ValueError(f"--dns-forward {text}: {e}") from None
        if self.max_flows < 1:
            raise ValueError(f"--max-flows {self.max_flows}: must be at least 1")
        if not self.udp_timeout > 0:
            raise ValueError(f"--udp-timeout {self.udp_timeout}: must be positive")


class Policy:
    """`target(proto, dst)`: the host address to use for a guest's destination, or a
    reason (str) why not."""

    def __init__(self, config: GatewayConfig, gateway4: IPv4Address | None,
                 gateway6: IPv6Address | None) -> None:
        self.config = config
        self.allow = [ipaddress.ip_network(n, strict=False) for n in config.allow]
        self.deny = [ipaddress.ip_network(n, strict=False) for n in config.deny]
        self.loopback: dict[Address, Address] = {}
        m = config.map_host_loopback
        if m == "":
            if gateway4 is not None:
                self.loopback[gateway4] = LOOPBACK4
            if gateway6 is not None:
                self.loopback[gateway6] = LOOPBACK6
        elif m is not None:
            addr = ipaddress.ip_address(m)
            self.loopback[addr] = LOOPBACK4 if addr.version == 4 else LOOPBACK6

    def maps_loopback(self, dst: Address) -> bool:
        return dst in self.loopback

    def target(self, proto: str, dst: Address) -> Address | str:
        c = self.config
        if c.restrict:
            return "restricted"
        if not getattr(c, proto):
            return f"{proto}_outbound_off"
        host = self.loopback.get(dst)
        if host is not None:
            return host
        if dst.is_multicast or dst.is_unspecified or dst.is_loopback or dst.is_link_local \
                or (dst.version == 4 and dst == IPv4Address("255.255.255.255")):
            return "not_unicast"
        if dst.version == 6 and dst.ipv4_mapped is not None:
            return "not_unicast"
        if any(dst in n for n in self.deny if n.version == dst.version):
            return "denied"
        if self.allow and not any(dst in n for n in self.allow if n.version == dst.version):
            return "not_allowed"
        return dst
