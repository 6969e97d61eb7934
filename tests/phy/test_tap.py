"""netstack.phy.tap against the Linux kernel: ARP and ICMP with the stack of a namespace we
create (and always remove), and a TAP in the default namespace that only counts frames."""

from __future__ import annotations

import os
import select
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from netstack.phy import Device
from netstack.phy.pcap import PcapWriter
from netstack.phy.tap import TapDevice, TapError


def needs_tap(fn):
    """Real TAP devices: root and /dev/net/tun, else a skip that says which is missing."""
    for mark in (
        pytest.mark.netns,
        pytest.mark.skipif(os.geteuid() != 0, reason="TAP tests need root (CAP_NET_ADMIN)"),
        pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="/dev/net/tun is missing"),
    ):
        fn = mark(fn)
    return fn


OUR_MAC = "02:00:5e:00:99:02"
OUR_IP = "10.99.0.2"
KERNEL_IP = "10.99.0.1"


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


def link_names(netns: str | None = None) -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


@pytest.fixture
def netns():
    from pyroute2 import netns as pyr_netns

    name = unique("vhn-test-")
    pyr_netns.create(name)
    try:
        yield name
    finally:
        pyr_netns.remove(name)
        assert name not in pyr_netns.listnetns()


@pytest.fixture
def tap_in_netns(netns):
    tap = TapDevice(netns=netns)
    try:
        tap.add_address(f"{KERNEL_IP}/24")
        tap.up()
        yield tap
    finally:
        tap.close()
        assert tap.name not in link_names(netns)


def send(dev, frame: bytes) -> None:
    dev.transmit(time.monotonic()).consume(
        len(frame), lambda buf: buf.__setitem__(slice(None), frame)
    )


def wait_for(tap: TapDevice, dev, match: Callable[[Ether], bool], timeout: float = 5.0) -> Ether:
    """Read frames from `dev` (a TAP or a wrapper around one) until `match`; answer the
    kernel's ARP requests for OUR_IP meanwhile, ignore the rest (IPv6 chatter)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        select.select([tap.fileno()], [], [], left)
        tokens = dev.receive(time.monotonic())
        if tokens is None:
            continue
        pkt = Ether(tokens[0].consume(bytes))
        if match(pkt):
            return pkt
        if ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == OUR_IP:
            reply = Ether(src=OUR_MAC, dst=pkt.src) / ARP(
                op=2, hwsrc=OUR_MAC, psrc=OUR_IP, hwdst=pkt[ARP].hwsrc, pdst=pkt[ARP].psrc
            )
            send(dev, bytes(reply))
    raise AssertionError("no matching frame from the kernel within the timeout")


def arp_request() -> bytes:
    return bytes(
        Ether(src=OUR_MAC, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=OUR_MAC, psrc=OUR_IP, hwdst="00:00:00:00:00:00", pdst=KERNEL_IP)
    )


def is_arp_reply(pkt: Ether) -> bool:
    return ARP in pkt and pkt[ARP].op == 2 and pkt[ARP].psrc == KERNEL_IP


@needs_tap
def test_tap_in_netns_is_a_device(tap_in_netns, netns):
    tap = tap_in_netns
    assert isinstance(tap, Device)
    assert tap.name.startswith("vhn")
    assert tap.name in link_names(netns)
    assert tap.name not in link_names()  # moved out of our namespace
    assert tap.capabilities().mtu == 1500
    assert isinstance(tap.fileno(), int)


@needs_tap
def test_arp_and_icmp_with_the_kernel_in_a_namespace(tap_in_netns):
    tap = tap_in_netns
    kernel_mac = tap.mac

    send(tap, arp_request())
    reply = wait_for(tap, tap, is_arp_reply)
    assert reply.src == kernel_mac and reply.dst == OUR_MAC
    assert reply[ARP].hwsrc == kernel_mac
    assert reply[ARP].hwdst == OUR_MAC
    assert reply[ARP].pdst == OUR_IP

    payload = b"vhostnet-tap-test" * 4
    echo = (
        Ether(src=OUR_MAC, dst=reply[ARP].hwsrc)
        / IP(src=OUR_IP, dst=KERNEL_IP)
        / ICMP(type=8, id=0x1234, seq=7)
        / payload
    )
    send(tap, bytes(echo))
    pong = wait_for(tap, tap, lambda p: ICMP in p and p[ICMP].type == 0)
    assert pong.src == kernel_mac and pong.dst == OUR_MAC
    assert pong[IP].src == KERNEL_IP and pong[IP].dst == OUR_IP
    assert pong[ICMP].id == 0x1234 and pong[ICMP].seq == 7
    assert bytes(pong[ICMP].payload) == payload
    # scapy recomputes the checksums of a rebuilt copy: the kernel's must match them
    fresh = Ether(bytes(pong))
    del fresh[IP].chksum, fresh[ICMP].chksum
    fresh = Ether(bytes(fresh))
    assert (fresh[IP].chksum, fresh[ICMP].chksum) == (pong[IP].chksum, pong[ICMP].chksum)
    assert tap.stats.tx_frames >= 2 and tap.stats.rx_frames >= 2 and tap.stats.tx_errors == 0


@needs_tap
def test_capture_of_a_tap_exchange(tap_in_netns, tmp_path):
    tap = tap_in_netns
    path = tmp_path / "tap.pcap"
    with PcapWriter(tap, path) as dev:
        assert dev.fileno() == tap.fileno()
        send(dev, arp_request())
        wait_for(tap, dev, is_arp_reply)
    from scapy.utils import rdpcap

    pkts = rdpcap(str(path))
    assert bytes(pkts[0]) == arp_request()
    assert any(is_arp_reply(Ether(bytes(p))) for p in pkts[1:])


@needs_tap
def test_close_removes_the_link_and_is_idempotent(netns):
    tap = TapDevice(netns=netns, mtu=1400)
    name = tap.name
    assert name in link_names(netns)
    from pyroute2 import IPRoute

    with IPRoute(netns=netns, flags=0) as ipr:
        assert ipr.get_links(ipr.link_lookup(ifname=name)[0])[0].get_attr("IFLA_MTU") == 1400
    tap.close()
    tap.close()
    assert tap.closed
    assert name not in link_names(netns)
    assert tap.receive(0.0) is None and tap.transmit(0.0) is None


@needs_tap
def test_missing_namespace_is_a_clear_error():
    with pytest.raises(TapError, match="does not exist"):
        TapDevice(netns=unique("vhn-absent-"))


@needs_tap
def test_default_namespace_unique_name_and_cleanup():
    from pyroute2 import IPRoute

    name = unique("vhnt")
    tap = TapDevice(name, mtu=9000)
    try:
        assert tap.name == name
        assert name in link_names()
        assert tap.capabilities().mtu == 9000
        with pytest.raises(TapError, match="already exists"):
            TapDevice(name)
        # A frame for nobody (other host's MAC, local-experimental EtherType): the kernel
        # counts it and drops it. While the link is down the write fails and is counted.
        frame = bytes.fromhex("02000000000102000000000288b5") + b"\0" * 46
        send(tap, frame)
        assert tap.stats.tx_errors == 1
        tap.up()
        send(tap, frame)
        assert tap.stats.tx_frames == 1
        with IPRoute() as ipr:
            link = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0]
            assert link.get_attr("IFLA_MTU") == 9000
            assert link.get_attr("IFLA_STATS64")["rx_packets"] >= 1
    finally:
        tap.close()
    assert name not in link_names()


@needs_tap
def test_attach_to_persistent_tap_leaves_it_in_place():
    name = unique("vhnp")
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
    try:
        with TapDevice(name, create=False) as tap:
            assert tap.name == name
        assert name in link_names()  # not ours: not deleted
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)
    assert name not in link_names()


@needs_tap
def test_attach_to_missing_tap_refuses_to_create():
    name = unique("vhnm")
    with pytest.raises(TapError, match="no interface"):
        TapDevice(name, create=False)
    assert name not in link_names()


def test_bad_arguments():
    with pytest.raises(ValueError):
        TapDevice("x" * 16)
    with pytest.raises(ValueError):
        TapDevice(mtu=10)
    with pytest.raises(ValueError):
        TapDevice(netns="somewhere", create=False)


def test_not_root_is_a_clear_error(monkeypatch):
    def denied(*args, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("netstack.phy.tap.os.open", denied)
    monkeypatch.setattr("netstack.phy.tap.os.path.exists", lambda path: True)
    with pytest.raises(TapError, match="root"):
        TapDevice()  # a "%d" name: no netlink lookups before the open


def test_missing_tun_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("netstack.phy.tap.TUN_PATH", str(tmp_path / "tun"))
    with pytest.raises(TapError, match="modprobe tun"):
        TapDevice()
