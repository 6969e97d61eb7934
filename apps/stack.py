"""The default stack `vhostnet serve` puts behind the guest's NIC, as slirp/passt users
expect it: we are 10.0.2.2/24 (and 10.0.2.3, the DNS server) with MAC 52:55:0a:00:02:02,
a DHCP server leases from 10.0.2.15, a DNS responder knows gateway.vhostnet and
dns.vhostnet, and the example apps listen (UDP echo on 7, udpserver on 5555; TCP echo
on 7, discard on 9, chargen on 19, echoserver on 5555, HTTP on 80).

IPv6 (unless `ipv6=False`): we are the link's router, fd00:10:0:2::2 (and ::3, the DNS
server) plus a link-local address from the MAC; router advertisements give the guest the
/64 for SLAAC, the MTU and the DNS server (RDNSS), stateless DHCPv6 answers DNS servers
too, the DNS responder has AAAA records, and every app listens on both families.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field

from netstack.iface import Interface, InterfaceConfig
from netstack.runtime import Runtime
from netstack.socket.dhcp_server import DhcpServer, DhcpServerConfig
from netstack.socket.dhcpv6_server import Dhcpv6Server, Dhcpv6ServerConfig, Dhcpv6ServerSocket
from netstack.socket.dns_responder import DnsResponder, parse_record_spec
from netstack.socket.router_adv import RouterAdvConfig, RouterAdvertiser
from netstack.socket.services import DhcpServerSocket, DnsServerSocket
from netstack.socket.set import SocketSet
from netstack.wire.dhcpv6 import ALL_DHCP_RELAY_AGENTS_AND_SERVERS
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr
from netstack.wire.ipv6 import Ipv6Cidr


@dataclass
class StackConfig:
    address: str = "10.0.2.2/24"
    dns_address: str = "10.0.2.3"
    mac: str = "52:55:0a:00:02:02"
    mtu: int = 1500
    dhcp: bool = True
    dhcp_start: str = "10.0.2.15"
    dhcp_count: int | None = None
    lease_time: int = 3600
    dns_records: list[str] = field(default_factory=list)  # NAME=ADDR
    apps: bool = True
    ipv6: bool = True
    ipv6_prefix: str = "fd00:10:0:2::/64"  # we are ::2, the DNS server ::3

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.address)

    @property
    def ipv6_network(self) -> ipaddress.IPv6Network:
        net = ipaddress.IPv6Network(self.ipv6_prefix, strict=False)
        if net.prefixlen > 126:
            raise ValueError(f"IPv6 prefix {self.ipv6_prefix} leaves no room for ::2 and ::3")
        return net

    @property
    def ipv6_address(self) -> ipaddress.IPv6Address:
        return self.ipv6_network[2]

    @property
    def ipv6_dns_address(self) -> ipaddress.IPv6Address:
        return self.ipv6_network[3]


@dataclass
class Stack:
    config: StackConfig
    iface: Interface
    sockets: SocketSet
    runtime: Runtime
    dhcp: DhcpServer | None
    dns: DnsResponder
    app_threads: list[threading.Thread] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def start_apps(self) -> None:
        from apps import echo, http, tcpapps, udpserver

        for target in (echo.serve_udp, udpserver.serve, tcpapps.serve_echo,
                       tcpapps.serve_discard, tcpapps.serve_chargen, tcpapps.serve_echoserver,
                       http.serve_http):
            t = threading.Thread(target=target, args=(self.runtime, self.stop_event),
                                 name=f"{target.__module__}.{target.__name__}", daemon=True)
            t.start()
            self.app_threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        self.runtime.wake()
        # one deadline for all (they are daemon threads): SIGTERM must end us within 2 s
        deadline = time.monotonic() + 1.0
        for t in self.app_threads:
            t.join(max(0.0, deadline - time.monotonic()))


def build_stack(config: StackConfig | None = None) -> Stack:
    """The interface, its services and the runtime; the caller attaches a device (the
    vhost-user server drives `runtime` as its App, or `runtime.start()` runs it alone)."""
    config = config or StackConfig()
    net = config.interface
    addrs = [Ipv4Cidr(net.ip, net.network.prefixlen)]
    if config.dns_address and ipaddress.IPv4Address(config.dns_address) != net.ip:
        addrs.append(Ipv4Cidr(ipaddress.IPv4Address(config.dns_address), net.network.prefixlen))
    mac = EthernetAddress.parse(config.mac)
    addrs6: list[Ipv6Cidr] = []
    if config.ipv6:
        net6 = config.ipv6_network
        addrs6 = [Ipv6Cidr(config.ipv6_address, net6.prefixlen),
                  Ipv6Cidr(config.ipv6_dns_address, net6.prefixlen)]
    iface = Interface(InterfaceConfig(hardware_addr=mac, ip_addrs=addrs, ipv6=config.ipv6,
                                      ipv6_addrs=addrs6, ipv6_router=True, accept_ra=False))
    sockets = SocketSet()
    dhcp = None
    if config.dhcp:
        dhcp = DhcpServer(DhcpServerConfig(
            server_ip=net.ip, subnet=net.network, pool_start=config.dhcp_start,
            pool_size=config.dhcp_count, router=net.ip,
            dns_servers=(config.dns_address or str(net.ip),), lease_time=config.lease_time))
        sockets.add(DhcpServerSocket(dhcp))
    dns = DnsResponder()
    if config.ipv6:
        dns.add_record(f"gateway.{dns.domain}", config.ipv6_address)
        dns.add_record(f"dns.{dns.domain}", config.ipv6_dns_address)
    for spec in config.dns_records:
        dns.add_record(*parse_record_spec(spec))
    for cidr in addrs:
        sockets.add(DnsServerSocket(dns, str(cidr.address)))
    if config.ipv6:
        for cidr6 in addrs6:
            sockets.add(DnsServerSocket(dns, str(cidr6.address)))
        dns_servers = (config.ipv6_dns_address,)
        sockets.add(RouterAdvertiser(RouterAdvConfig(
            prefixes=[config.ipv6_network], rdnss=list(dns_servers), mtu=config.mtu), mac))
        sockets.add(Dhcpv6ServerSocket(Dhcpv6Server(Dhcpv6ServerConfig(
            mac, dns_servers=dns_servers, domain_list=(dns.domain,)))))
        iface.join_multicast_group(ALL_DHCP_RELAY_AGENTS_AND_SERVERS)
    runtime = Runtime(iface, None, sockets)
    return Stack(config, iface, sockets, runtime, dhcp, dns)
