"""DHCP with the real thing in a namespace: our client (`DhcpClientSocket`) leases from
busybox udhcpd and renews by unicast; busybox udhcpc leases from our `DhcpServerSocket`."""

from __future__ import annotations

import shutil
import threading
from ipaddress import IPv4Address

import pytest
from scapy.layers.dhcp import BOOTP, DHCP, DHCPTypes
from scapy.layers.inet import IP
from scapy.utils import rdpcap

from netstack.socket.dhcp_client import Configured, Deconfigured, State
from netstack.socket.dhcp_client_socket import DhcpClientSocket
from netstack.socket.dhcp_server import DhcpServer, DhcpServerConfig
from netstack.socket.services import DhcpServerSocket
from tests.netns.conftest import KERNEL_IP, OUR_IP, OUR_MAC, Link, Pinger, readline, wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed"),
]

POOL_START, POOL_END = IPv4Address("10.55.0.100"), IPv4Address("10.55.0.150")


def start_udhcpd(link: Link, tmp_path, lease: int = 3600) -> None:
    conf = tmp_path / "udhcpd.conf"
    conf.write_text(
        f"interface {link.tap.name}\n"
        f"start {POOL_START}\n"
        f"end {POOL_END}\n"
        f"lease_file {tmp_path / 'udhcpd.leases'}\n"
        f"pidfile {tmp_path / 'udhcpd.pid'}\n"
        f"min_lease {min(lease, 60)}\n"
        "option subnet 255.255.255.0\n"
        f"option router {KERNEL_IP}\n"
        f"option dns {KERNEL_IP}\n"
        f"option lease {lease}\n"
    )
    # -a 100: a short ARP check that nobody holds the address before offering it.
    proc = link.spawn("busybox", "udhcpd", "-f", "-a", "100", conf)

    def listening() -> bool:
        assert proc.poll() is None, f"udhcpd exited: {proc.stderr.read().decode()}"
        udp = link.run("cat", "/proc/net/udp", timeout=5).stdout
        return ":0043 " in udp  # port 67 bound

    assert wait_until(listening, 5.0), "udhcpd is not listening on port 67"


def dhcp_packets(capture, message_type: str) -> list:
    """The DHCP messages of `message_type` ("offer", "request", ...) in a capture."""
    code = {name: number for number, name in DHCPTypes.items()}[message_type]
    return [p for p in rdpcap(str(capture))
            if DHCP in p and ("message-type", code) in p[DHCP].options]


class ClientUnderTest:
    """Our DHCP client socket on the link, with its events collected."""

    def __init__(self, link: Link, **kwargs) -> None:
        self.events: list = []
        self.configured = threading.Event()
        self.sock = DhcpClientSocket(link.iface, rng=55, on_event=self._on_event, **kwargs)
        link.add_socket(self.sock)
        self.link = link

    def _on_event(self, event) -> None:  # runtime thread, lock held
        self.events.append(event)
        if isinstance(event, Configured):
            self.configured.set()


# With and without the broadcast flag in our DISCOVER and REQUEST (udhcpd broadcasts its
# replies either way: it unicasts only to a client's ciaddr).
@pytest.mark.parametrize("broadcast_flag", [True, False], ids=["broadcast-flag", "no-broadcast-flag"])
def test_our_client_leases_from_udhcpd(make_link, tmp_path, broadcast_flag: bool):
    capture = tmp_path / "dhcp.pcap"
    link = make_link(our_addrs=(), pcap=capture)
    start_udhcpd(link, tmp_path)
    client = ClientUnderTest(link, broadcast_flag=broadcast_flag)
    assert client.configured.wait(10.0), f"no lease; client stats {client.sock.client.stats}"

    with link.runtime.lock:
        config = client.sock.config
        assert client.sock.state is State.BOUND
        addrs = link.iface.ip_addrs
        gateway = link.iface.default_gateway
    assert POOL_START <= config.address.address <= POOL_END
    assert config.address.prefix_len == 24
    assert addrs == [config.address]
    assert gateway == IPv4Address(KERNEL_IP) == config.router
    assert config.dns_servers == (IPv4Address(KERNEL_IP),)
    assert config.server == IPv4Address(KERNEL_IP)
    assert config.lease == 3600.0
    assert client.events == [config]
    discover_flags = {p[BOOTP].flags.value for p in dhcp_packets(capture, "discover")}
    assert discover_flags == {0x8000 if broadcast_flag else 0}
    # busybox udhcpd broadcasts to every client without ciaddr, flag or not.
    assert {p[IP].dst for p in dhcp_packets(capture, "offer")} == {"255.255.255.255"}

    pinger = Pinger(link.runtime, ident=0xDC)
    got = pinger.ping(KERNEL_IP, 1, b"leased")
    assert got is not None and bytes(got[0].data) == b"leased"
    # And the kernel reaches us at the leased address.
    assert link.ping(str(config.address.address), 3, "-i", "0.1") == (3, 3)


def test_our_client_renews_by_unicast(make_link, tmp_path):
    """A 4 s lease: at T1 (2 s) the REQUEST goes by unicast from the leased address to the
    server, whose ACK extends the lease; the address stays the same and no Deconfigured."""
    capture = tmp_path / "dhcp.pcap"
    link = make_link(our_addrs=(), pcap=capture)
    start_udhcpd(link, tmp_path, lease=4)
    client = ClientUnderTest(link)
    assert client.configured.wait(10.0)
    stats = client.sock.client.stats

    def renewed() -> bool:
        with link.runtime.lock:
            return stats.acks >= 2 and client.sock.state is State.BOUND

    assert wait_until(renewed, 6.0), f"no renewal ACK: {stats}, state {client.sock.state}"
    with link.runtime.lock:
        first = client.events[0]
        assert link.iface.ip_addrs == [first.address]
        assert client.events == [first]  # the renewal changed nothing
        assert stats.sent == 3  # DISCOVER, REQUEST, renewing REQUEST: no retransmission
    leased = str(first.address.address)
    requests = [(p[IP].src, p[IP].dst, p[BOOTP].ciaddr) for p in dhcp_packets(capture, "request")]
    assert requests == [("0.0.0.0", "255.255.255.255", "0.0.0.0"),
                        (leased, KERNEL_IP, leased)]
    acks = [(p[IP].src, p[IP].dst) for p in dhcp_packets(capture, "ack")]
    assert acks[1] == (KERNEL_IP, leased)  # the renewal's ACK came unicast


def test_lease_expiry_deconfigures_then_leases_again(make_link, tmp_path):
    """The server goes away: renewing and rebinding get no answer, at the end of the 4 s
    lease the interface loses its address and gateway (Deconfigured) and the client starts
    over; with the server back, it is configured again."""
    link = make_link(our_addrs=())
    start_udhcpd(link, tmp_path, lease=4)
    client = ClientUnderTest(link)
    assert client.configured.wait(10.0)
    link.kill_processes()  # udhcpd
    client.configured.clear()

    def deconfigured() -> bool:
        with link.runtime.lock:
            return len(client.events) == 2

    assert wait_until(deconfigured, 6.0), client.events
    with link.runtime.lock:
        assert client.events[1] == Deconfigured()
        assert link.iface.ip_addrs == [] and link.iface.default_gateway is None
        assert client.sock.config is None
        assert client.sock.state is State.SELECTING
        assert client.sock.client.stats.expired == 1

    start_udhcpd(link, tmp_path, lease=60)
    assert client.configured.wait(15.0), client.sock.client.stats  # the next DISCOVER: ~4 s
    with link.runtime.lock:
        assert link.iface.ip_addrs == [client.events[2].address]
        assert link.iface.default_gateway == IPv4Address(KERNEL_IP)


UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc calls this with deconfig, bound, renew, nak; the lease is in the environment.
case "$1" in
    deconfig) ip -4 addr flush dev "$interface" ;;
    bound|renew)
        ip addr add "$ip/$mask" dev "$interface"
        echo "ip=$ip mask=$mask router=$router dns=$dns serverid=$serverid" > "$0.lease"
        ;;
esac
exit 0
"""


def test_linux_leases_from_our_server(make_link, tmp_path):
    # The kernel side has no address: udhcpc must get one from us.
    link = make_link(kernel_addr=None)
    server = DhcpServer(DhcpServerConfig(
        server_ip=OUR_IP, subnet="10.55.0.0/24", pool_start="10.55.0.50", router=OUR_IP,
        dns_servers=(OUR_IP,)))
    link.add_socket(DhcpServerSocket(server))
    script = tmp_path / "udhcpc.script"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)

    out = link.run("busybox", "udhcpc", "-i", link.tap.name, "-n", "-q", "-f",
                   "-t", "5", "-T", "1", "-s", script, timeout=30, check=False)
    assert out.returncode == 0, out.stdout + out.stderr

    addrs = link.run("ip", "-4", "addr", "show", "dev", link.tap.name).stdout
    assert "inet 10.55.0.50/24" in addrs, addrs
    lease = (tmp_path / "udhcpc.script.lease").read_text().split()
    assert lease == ["ip=10.55.0.50", "mask=24", f"router={OUR_IP}", f"dns={OUR_IP}",
                     f"serverid={OUR_IP}"]
    with link.runtime.lock:
        leases = server.leases()
    assert [(str(le.address), str(le.mac)) for le in leases] == [("10.55.0.50", link.tap.mac)]
    # The address works: the kernel pings us from it.
    assert link.ping(OUR_IP, 3, "-i", "0.1") == (3, 3)


def test_client_socket_identity(make_link):
    """The DISCOVER carries our MAC as chaddr and goes from 0.0.0.0 even when the interface
    already has an address (the kernel sees it on the TAP)."""
    link = make_link()
    sniff = link.spawn_python("""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("0.0.0.0", 67))
print("ready")
data, peer = s.recvfrom(2048)
print(peer[0], data[28:34].hex(":"), flush=True)
""")
    ClientUnderTest(link)
    line = readline(sniff, 5.0).split()
    assert line == ["0.0.0.0", OUR_MAC], line


def test_docstring_examples():
    import doctest

    import netstack.socket.dhcp_client_socket as mod

    assert doctest.testmod(mod).failed == 0
