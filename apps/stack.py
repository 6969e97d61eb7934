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

from apps.servers.boot import SCRIPT, BootConfig, FileSource
from gateway import Gateway, GatewayConfig
from netstack.iface import Interface, InterfaceConfig
from netstack.runtime import Runtime
from netstack.socket.dhcp_server import DhcpServer, DhcpServerConfig
from netstack.socket.dhcpv6_server import Dhcpv6Server, Dhcpv6ServerConfig, Dhcpv6ServerSocket
from netstack.socket.dns_responder import DnsResponder, parse_record_spec
from netstack.socket.limits import Limits
from netstack.socket.router_adv import RouterAdvConfig, RouterAdvertiser
from netstack.socket.services import DhcpServerSocket, DnsServerSocket
from netstack.socket.set import SocketSet
from netstack.socket.tftp_server import TftpServer, TftpServerSocket
from netstack.wire.dhcpv6 import ALL_DHCP_RELAY_AGENTS_AND_SERVERS
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr
from netstack.wire.ipv6 import Ipv6Cidr

MIN_MTU = 68  # IPv4's minimum (RFC 791)
MIN_MTU_IPV6 = 1280  # RFC 8200 §5
MAX_MTU = 65535  # virtio-net's mtu field, and IPv4's total length


@dataclass
class StackConfig:
    """What the guest sees. Addresses left None follow `address`, as libslirp's `net=`
    does: the DNS server is the network's .3 (10.0.2.3 in 10.0.2.0/24; our own address
    when the network is too small), DHCP leases from its .15, and the names
    gateway.vhostnet and dns.vhostnet (and their PTR records) point at them. `check()`
    says in one line what is wrong with a config; `build_stack` calls it."""

    address: str = "10.0.2.2/24"
    dns_address: str | None = None  # None: derived (see above); "": our own address
    mac: str = "52:55:0a:00:02:02"
    mtu: int = 1500
    dhcp: bool = True
    dhcp_start: str | None = None  # None: derived
    dhcp_count: int | None = None  # None: up to the last host address
    lease_time: int = 3600
    dns_records: list[str] = field(default_factory=list)  # NAME=ADDR
    apps: bool = True
    ipv6: bool = True
    ipv6_prefix: str = "fd00:10:0:2::/64"  # we are ::2, the DNS server ::3
    # what a hostile or broken peer may hold (netstack.socket.limits, Linux's names)
    tcp_fin_timeout: float = 60.0
    tcp_orphan_retries: int = 8
    tcp_max_orphans: int = 16384
    tcp_max_tw_buckets: int = 16384
    max_sockets: int = 131072
    # NAT to the host and the world (the gateway package); on by default
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    # network boot (TFTP, DHCP boot file, an iPXE script for a kernel); off by default
    boot: BootConfig = field(default_factory=BootConfig)

    def limits(self) -> Limits:
        return Limits(fin_timeout=self.tcp_fin_timeout, orphan_retries=self.tcp_orphan_retries,
                      max_orphans=self.tcp_max_orphans, max_tw_buckets=self.tcp_max_tw_buckets,
                      max_sockets=self.max_sockets)

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.address)

    @property
    def dns_ip(self) -> ipaddress.IPv4Address:
        """The address our DNS server answers on."""
        if self.dns_address:
            return ipaddress.IPv4Address(self.dns_address)
        iface = self.interface
        if self.dns_address is None:
            net = iface.network
            for k in (3, 4):
                cand = net.network_address + k
                if cand != iface.ip and cand < net.broadcast_address:
                    return cand
        return iface.ip

    @property
    def dhcp_first(self) -> ipaddress.IPv4Address:
        """The first address the DHCP server leases (and hostfwd's default target)."""
        if self.dhcp_start:
            return ipaddress.IPv4Address(self.dhcp_start)
        net, taken = self.interface.network, {self.interface.ip, self.dns_ip}
        first = net.network_address + 15 if net.num_addresses > 32 else net.network_address + 1
        while first < net.broadcast_address and first in taken:
            first += 1
        return first

    def check(self) -> None:
        """ValueError naming the option and what is wrong, for the first problem found."""
        if "/" not in self.address:
            raise ValueError(f"--address {self.address}: give our address with its prefix "
                             f"length, e.g. {self.address}/24")
        try:
            iface = self.interface
        except ValueError as e:
            raise ValueError(f"--address {self.address}: {e}") from None
        net = iface.network
        if net.prefixlen > 30:
            raise ValueError(f"--address {self.address}: a /{net.prefixlen} leaves no room "
                             "for the guest; use /30 or shorter")
        if iface.ip in (net.network_address, net.broadcast_address):
            raise ValueError(f"--address {self.address}: that is the network's "
                             f"{'network' if iface.ip == net.network_address else 'broadcast'}"
                             " address, not a host address")
        lo = MIN_MTU_IPV6 if self.ipv6 else MIN_MTU
        if not lo <= self.mtu <= MAX_MTU:
            why = (f"{lo}..{MAX_MTU}" + (f" ({MIN_MTU}.. with --no-ipv6: IPv6 needs "
                                          f"{MIN_MTU_IPV6})" if self.ipv6 else ""))
            raise ValueError(f"--mtu {self.mtu}: must be {why}")
        try:
            dns = self.dns_ip
        except ValueError as e:
            raise ValueError(f"--dns-address {self.dns_address}: {e}") from None
        if dns not in net or dns in (net.network_address, net.broadcast_address):
            raise ValueError(f"--dns-address {dns}: not a host address in {net}, our link "
                             "(the guest reaches our DNS server there)")
        if self.dhcp:
            try:
                first = self.dhcp_first
            except ValueError as e:
                raise ValueError(f"--dhcp-range {self.dhcp_start}: {e}") from None
            if first not in net or first in (net.network_address, net.broadcast_address):
                raise ValueError(f"--dhcp-range {first}: not a host address in {net}")
            if first == iface.ip:
                raise ValueError(f"--dhcp-range {first}: that is our own address")
            room = int(net.broadcast_address) - int(first)
            if self.dhcp_count is not None and not 1 <= self.dhcp_count <= room:
                raise ValueError(f"--dhcp-range {first},{self.dhcp_count}: {room} "
                                 f"addresses from {first} to the end of {net}")
        if self.ipv6:
            try:
                _ = self.ipv6_network
            except ValueError as e:
                raise ValueError(f"--ipv6-prefix {self.ipv6_prefix}: {e}") from None
        try:
            self.limits()
        except ValueError as e:
            field = str(e).split()[0]
            opt = {"fin_timeout": "--tcp-fin-timeout", "orphan_retries": "--tcp-orphan-retries",
                   "max_orphans": "--tcp-max-orphans", "max_tw_buckets": "--tcp-max-tw-buckets",
                   "max_sockets": "--max-sockets"}.get(field, field)
            raise ValueError(f"{opt}: {e}") from None
        if self.gateway.enabled:
            self.gateway.check()
        self.boot.check()
        if self.boot.enabled and not (self.dhcp or self.ipv6):
            raise ValueError("network boot (--tftp, --bootfile, --boot-kernel) needs our DHCP "
                             "or DHCPv6 server: drop --no-dhcp or --no-ipv6")

    @property
    def boot_base_url(self) -> str:
        """Where the boot files are served over HTTP (our HTTP app's /boot/)."""
        return f"http://{self.interface.ip}/boot/"

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
    gateway: Gateway | None = None
    boot_files: dict[str, FileSource] = field(default_factory=dict)  # HTTP /boot/, TFTP
    app_threads: list[threading.Thread] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def start_apps(self) -> None:
        """The example apps (with `config.apps`), and the HTTP app alone when only the
        boot files need it."""
        from apps.servers import echo, http, tcpapps, udpserver

        targets = [echo.serve_udp, udpserver.serve, tcpapps.serve_echo,
                   tcpapps.serve_discard, tcpapps.serve_chargen, tcpapps.serve_echoserver,
                   http.serve_http] if self.config.apps else []
        if self.boot_files and not targets:
            targets = [http.serve_http]
        for target in targets:
            kwargs = {"files": self.boot_files} if target is http.serve_http else {}
            t = threading.Thread(target=target, args=(self.runtime, self.stop_event),
                                 kwargs=kwargs, daemon=True,
                                 name=f"{target.__module__}.{target.__name__}")
            t.start()
            self.app_threads.append(t)

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the apps to stop and wait for them up to `timeout` seconds in all (they
        look at the stop event every half second; they are daemon threads, so a process
        that is exiting need not wait at all)."""
        self.stop_event.set()
        self.runtime.wake()
        deadline = time.monotonic() + timeout
        if self.gateway is not None:
            self.gateway.close()  # every flow reset, every host socket closed
        for t in self.app_threads:
            t.join(max(0.0, deadline - time.monotonic()))


def build_stack(config: StackConfig | None = None, *, gateway_thread: bool = True) -> Stack:
    """The interface, its services and the runtime; the caller attaches a device (the
    vhost-user server drives `runtime` as its App, or `runtime.start()` runs it alone).
    The gateway runs a thread of its own unless `gateway_thread` is False: then the
    caller's loop drives it (`Gateway.attach_loop`, as `make_server` does)."""
    config = config or StackConfig()
    config.check()
    net = config.interface
    dns_ip = config.dns_ip
    addrs = [Ipv4Cidr(net.ip, net.network.prefixlen)]
    if dns_ip != net.ip:
        addrs.append(Ipv4Cidr(dns_ip, net.network.prefixlen))
    mac = EthernetAddress.parse(config.mac)
    addrs6: list[Ipv6Cidr] = []
    if config.ipv6:
        net6 = config.ipv6_network
        addrs6 = [Ipv6Cidr(config.ipv6_address, net6.prefixlen),
                  Ipv6Cidr(config.ipv6_dns_address, net6.prefixlen)]
    iface = Interface(InterfaceConfig(hardware_addr=mac, ip_addrs=addrs, ipv6=config.ipv6,
                                      ipv6_addrs=addrs6, ipv6_router=True, accept_ra=False))
    sockets = SocketSet(config.limits())
    dhcp = None
    boot_files = config.boot.boot_files(config.boot_base_url)
    if config.dhcp:
        boot_file, ipxe_boot_file = config.boot.dhcp_names(config.boot_base_url)
        dhcp = DhcpServer(DhcpServerConfig(
            server_ip=net.ip, subnet=net.network, pool_start=config.dhcp_first,
            pool_size=config.dhcp_count, router=net.ip,
            dns_servers=(dns_ip,), lease_time=config.lease_time,
            boot_file=boot_file, ipxe_boot_file=ipxe_boot_file))
        sockets.add(DhcpServerSocket(dhcp))
    if config.boot.tftp_dir or boot_files:  # ahead of the others: see TftpServerSocket
        tftp_addrs = [net.ip, *([config.ipv6_address] if config.ipv6 else [])]
        sockets.add(TftpServerSocket(TftpServer(config.boot.tftp_dir, files=boot_files),
                                     tftp_addrs, mtu=config.mtu))
    dns = DnsResponder(records={"gateway.vhostnet": [net.ip], "dns.vhostnet": [dns_ip]})
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
        boot6 = (f"http://[{config.ipv6_address}]/boot/{SCRIPT}"
                 if config.boot.kernel else config.boot.bootfile_url())
        sockets.add(Dhcpv6ServerSocket(Dhcpv6Server(Dhcpv6ServerConfig(
            mac, dns_servers=dns_servers, domain_list=(dns.domain,),
            boot_file_url=boot6))))
        iface.join_multicast_group(ALL_DHCP_RELAY_AGENTS_AND_SERVERS)
    runtime = Runtime(iface, None, sockets)
    gateway = None
    if config.gateway.enabled:
        from gateway.tcp import FLOW_RX_BUFFER, FLOW_TX_BUFFER

        gateway = Gateway(runtime, config.gateway, gateway4=net.ip,
                          gateway6=config.ipv6_address if config.ipv6 else None,
                          tcp_options={"tx_buffer_size": FLOW_TX_BUFFER,
                                       "rx_buffer_size": FLOW_RX_BUFFER})
        if gateway_thread:
            gateway.start()
        for sock in sockets.of_kind("udp"):
            if isinstance(sock, DnsServerSocket):
                sock.forwarder = gateway.dns
    st = Stack(config, iface, sockets, runtime, dhcp, dns, gateway, boot_files)
    if gateway is not None and gateway.dns is not None:
        from gateway.dns import serve_tcp

        # DNS over TCP, where resolvers go after a truncated answer
        t = threading.Thread(target=serve_tcp, name="dns-tcp", daemon=True,
                             args=(runtime, st.stop_event, dns, gateway.dns.servers,
                                   gateway.stats))
        t.start()
        st.app_threads.append(t)
    return st

