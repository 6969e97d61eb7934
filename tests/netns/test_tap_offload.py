"""TapDevice(offload=True) against the Linux kernel: TCP crosses the TAP as 64 KiB segments
(checksums left to the kernel, TSO both ways), verified by SHA-256 over IPv4 and IPv6 in
both directions; UDP (whose partial checksums from the kernel we complete) and ping still
work; and the same with offload=False, so the plain TAP keeps working.

The link is dual-stack: kernel 10.55.0.1/24 and fd00:77::1/64, us 10.55.0.2/24 and
fd00:77::2/64, on one TAP in a namespace of our own."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from apps.servers import echo
from netstack.iface import Interface, InterfaceConfig
from netstack.phy.tap import TapDevice
from netstack.runtime import Runtime
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr
from netstack.wire.ipv6 import Ipv6Cidr
from tests.netns import test_ipv6_linux as v6
from tests.netns import test_tcp_linux as v4
from tests.netns.conftest import KERNEL_IP, OUR_IP, OUR_MAC, Link, Pinger, wait_until

pytestmark = pytest.mark.netns

MiB = 1 << 20
OUR6, KERNEL6 = "fd00:77::2", "fd00:77::1"
BIG = 32 * MiB
SMALL = 4 * MiB


@pytest.fixture
def make_dual(make_netns) -> Iterator[Callable[[bool], Link]]:
    """`make_dual(offload)`: the dual-stack link, our runtime started; torn down in order."""
    with ExitStack() as stack:

        def make(offload: bool) -> Link:
            ns = make_netns()
            tap = TapDevice(netns=ns, offload=offload)
            stack.callback(tap.close)
            tap.add_address(f"{KERNEL_IP}/24")
            tap.up()
            link = Link(ns, tap, tap, None, None)  # type: ignore[arg-type]
            link.run("ip", "-6", "addr", "add", f"{KERNEL6}/64", "dev", tap.name, "nodad")
            iface = Interface(InterfaceConfig(
                hardware_addr=EthernetAddress.parse(OUR_MAC),
                ip_addrs=[Ipv4Cidr.parse(f"{OUR_IP}/24")],
                ipv6_addrs=[Ipv6Cidr.parse(f"{OUR6}/64")], accept_ra=False))
            runtime = Runtime(iface, tap)
            link.iface, link.runtime = iface, runtime
            runtime.start()
            stack.callback(runtime.stop)
            stack.callback(link.kill_processes)
            return link

        yield make


def ping_ok(link: Link, dst: str, count: int = 3, *options: str) -> bool:
    sent, got = link.ping(dst, count, "-i", "0.2", "-W", "2", *options)
    return sent == got == count


def test_offload_capabilities_and_repr(make_dual):
    link = make_dual(True)
    caps = link.tap.capabilities()
    assert caps.checksum.tcp and not caps.checksum.udp and not caps.checksum.ipv4
    assert caps.tso_max and caps.tso_max + 20 + 60 <= 65535
    assert caps.lro and caps.ipv6_offload
    assert "offload" in repr(link.tap)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tcp_32_mib_each_way_with_offload(make_dual, family):
    link = make_dual(True)
    if family == "ipv4":
        tx = v4.us_to_linux(link, BIG, seed=72, timeout=30.0)
        rx = v4.linux_to_us(link, BIG, seed=71, timeout=30.0)
    else:
        assert wait_until(lambda: ping_ok(link, OUR6, 1), 10.0, 0.2)  # NDP both ways
        tx, _ = v6.us_to_linux(link, KERNEL6, BIG, seed=74)
        rx, _ = v6.linux_to_us(link, OUR6, BIG, seed=73)
    st = link.tap.stats
    print(f"\noffload {family}: linux->us {rx:.0f} MiB/s, us->linux {tx:.0f} MiB/s; "
          f"{st.tx_gso} segments sent whole, {st.rx_gso} received whole")
    # the whole point: TCP crossed as segments larger than the MTU, both ways
    assert st.tx_gso > 0 and st.rx_gso > 0
    assert st.rx_errors == 0 and st.tx_errors == 0
    assert link.counter("tcp_malformed") == 0


LINUX_UDP = """
import json, random, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
rng = random.Random(port)
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
ok = 0
sizes = [0, 1, 1200, 1472, 4000, 8000]
for size in sizes:
    data = rng.randbytes(size)
    s.sendto(data, (host, port))
    got = s.recv(65535)
    assert got == data, (size, len(got))
    ok += 1
print(json.dumps({"ok": ok}))
"""


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
def test_udp_and_ping_both_ways(make_dual, offload):
    link = make_dual(offload)
    assert ping_ok(link, OUR_IP, 5)
    assert ping_ok(link, OUR_IP, 2, "-s", "3000")  # fragmented both ways
    assert wait_until(lambda: ping_ok(link, OUR6, 1), 10.0, 0.2)
    assert ping_ok(link, OUR6, 3)
    pinger = Pinger(link.runtime, ident=0x3703)
    assert pinger.ping(KERNEL_IP, 1, b"offload?") is not None

    stop = threading.Event()
    t = threading.Thread(target=echo.serve_udp, args=(link.runtime, stop), daemon=True)
    t.start()
    try:
        for host in (OUR_IP, OUR6):
            out = link.python(LINUX_UDP, host, 7, check=False)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout) == {"ok": 6}
    finally:
        stop.set()
        t.join(2.0)
    # and we send UDP to the kernel (checksums computed by us, never left to the TAP)
    with link.runtime.udp_bind(("0.0.0.0", 0)) as sock:
        sock.set_read_timeout(3.0)
        link.spawn_python(UDP_ECHO_LINUX)
        for size in (1, 1472, 5000):
            sock.send_to(bytes(size), (KERNEL_IP, 7007))
            assert sock.recv(65535) == bytes(size)
    st = link.tap.stats
    assert st.rx_errors == 0
    if offload:
        # the kernel left UDP checksums partial to an offloading TAP: completed by us
        assert st.rx_csum_completed > 0
    else:
        assert st.rx_csum_completed == st.tx_gso == st.rx_gso == 0
    assert link.counter("udp_malformed") == 0


UDP_ECHO_LINUX = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{KERNEL_IP}", 7007))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"""


def test_tcp_without_offload_still_works(make_dual):
    link = make_dual(False)
    assert not link.tap.capabilities().checksum.tcp
    v4.linux_to_us(link, SMALL, seed=75, timeout=30.0)
    v4.us_to_linux(link, SMALL, seed=76, timeout=30.0)
    assert wait_until(lambda: ping_ok(link, OUR6, 1), 10.0, 0.2)
    v6.linux_to_us(link, OUR6, SMALL, seed=77)
    v6.us_to_linux(link, KERNEL6, SMALL, seed=78)
    st = link.tap.stats
    assert st.tx_gso == st.rx_gso == 0 and st.rx_errors == 0

