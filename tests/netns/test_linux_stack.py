"""Our stack against the Linux kernel's, over a TAP into a namespace of our own: ARP both
ways, ping both ways, UDP both ways with IP fragmentation, port unreachable understood by the
kernel, and a capture read back by tshark."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
import time
from ipaddress import IPv4Address

import pytest

from apps.servers import echo, udpserver
from tests.netns.conftest import KERNEL_IP, OUR_IP, OUR_MAC, Link, Pinger, wait_until

pytestmark = pytest.mark.netns

ECHO_PORT = 7777


@pytest.fixture
def our_apps(link: Link):
    """apps.servers.echo (UDP 7) and apps.servers.udpserver (UDP 5555) on our runtime, stopped at teardown."""
    stop = threading.Event()
    threads = [threading.Thread(target=fn, args=(link.runtime, stop), daemon=True)
               for fn in (echo.serve_udp, udpserver.serve)]
    for t in threads:
        t.start()
    # Bound once both ports are in the socket set.
    assert wait_until(lambda: _udp_ports(link) >= {7, 5555}, 5.0)
    yield
    stop.set()
    for t in threads:
        t.join(2.0)
        assert not t.is_alive()


def _udp_ports(link: Link) -> set[int]:
    with link.runtime.lock:
        return {s.endpoint[1] for s in link.runtime.sockets.of_kind("udp") if s.endpoint}


# -- ARP --------------------------------------------------------------------------------
def test_linux_resolves_us(link: Link):
    assert link.ping(OUR_IP, 3, "-i", "0.2") == (3, 3)
    neigh = link.run("ip", "neigh", "show", OUR_IP, "dev", link.tap.name).stdout
    assert OUR_MAC in neigh, neigh
    assert link.counter("arp_replies_sent") >= 1


def test_we_resolve_linux(link: Link, pinger: Pinger):
    got = pinger.ping(KERNEL_IP, 1, b"who has 10.55.0.1")
    assert got is not None, "no echo reply from the kernel"
    reply, src = got
    assert src == IPv4Address(KERNEL_IP)
    assert bytes(reply.data) == b"who has 10.55.0.1"
    with link.runtime.lock:
        mac = link.iface.neighbors.lookup(IPv4Address(KERNEL_IP), link.runtime.clock())
    assert str(mac) == link.tap.mac
    assert link.counter("arp_requests_sent") >= 1


# -- ping -------------------------------------------------------------------------------
def test_linux_pings_us_20(link: Link):
    assert link.ping(OUR_IP, 20, "-i", "0.05", "-s", "1000") == (20, 20)
    assert link.counter("icmp_echo_replies") == 20


def test_linux_pings_us_fragmented(link: Link):
    """Echo requests of 4000 and 65000 bytes: we reassemble 3 and 44 fragments (1480 bytes each) and answer
    with as many."""
    assert link.ping(OUR_IP, 5, "-i", "0.1", "-s", "4000") == (5, 5)
    assert link.ping(OUR_IP, 2, "-i", "0.1", "-s", "65000") == (2, 2)
    assert link.counter("icmp_echo_replies") == 7
    assert link.counter("ipv4_fragments") == link.counter("tx_fragments") == 5 * 3 + 2 * 44


def test_we_ping_linux_20(link: Link, pinger: Pinger):
    rng = random.Random(20)
    for seq in range(20):
        data = rng.randbytes(rng.choice((0, 56, 1000, 1472, 3000)))
        got = pinger.ping(KERNEL_IP, seq, data)
        assert got is not None, f"echo request {seq} ({len(data)} bytes) lost"
        assert bytes(got[0].data) == data


# -- UDP --------------------------------------------------------------------------------
KERNEL_ECHO_SERVER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{KERNEL_IP}", {ECHO_PORT}))
print("ready")
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"""


def _sizes(n: int, seed: int) -> list[int]:
    """Edge sizes around one Ethernet frame and its fragments, then random ones."""
    edges = [0, 1, 1471, 1472, 1473, 2952, 2953, 4000, 7999, 8000]
    rng = random.Random(seed)
    return edges + [rng.randint(1, 8000) for _ in range(n - len(edges))]


def test_udp_to_linux_echo_server_100_datagrams_fragmented(link: Link):
    link.spawn_python(KERNEL_ECHO_SERVER)
    rng = random.Random(100)
    sizes = _sizes(100, 100)
    start = time.monotonic()
    with link.runtime.udp_bind(("0.0.0.0", 0)) as sock:
        sock.set_read_timeout(2.0)
        for i, size in enumerate(sizes):
            data = rng.randbytes(size)
            sock.send_to(data, (KERNEL_IP, ECHO_PORT))
            got, peer = sock.recv_from(65535)
            assert peer == (KERNEL_IP, ECHO_PORT)
            assert got == data, f"datagram {i} ({size} bytes) came back changed"
    elapsed = time.monotonic() - start
    assert link.counter("tx_fragments") > 0  # we fragmented
    assert link.counter("ipv4_fragments") > 0  # and reassembled the kernel's fragments
    assert elapsed < 20, f"100 round trips took {elapsed:.1f} s"


def test_largest_udp_datagram_both_ways(link: Link, our_apps):
    """65507 bytes, the most one IPv4 datagram carries: to the kernel's echo server and
    back, and from the kernel to our echo app and back."""
    link.spawn_python(KERNEL_ECHO_SERVER)
    data = random.Random(65507).randbytes(65507)
    with link.runtime.udp_bind(("0.0.0.0", 0)) as sock:
        sock.set_read_timeout(3.0)
        sock.send_to(data, (KERNEL_IP, ECHO_PORT))
        assert sock.recv(65535) == data
    out = link.python(f"""
import random, socket
data = random.Random(65507).randbytes(65507)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3.0)
s.sendto(data, ("{OUR_IP}", 7))
print(s.recv(65535) == data)
""")
    assert out.stdout.strip() == "True"


LINUX_CLIENT = f"""
import json, random, socket, sys
port, prefix, seed = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
rng = random.Random(seed)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
sizes = [0, 1, 1472, 1473, 4000, 8000] + [rng.randint(1, 8000) for _ in range(44)]
ok = 0
for size in sizes:
    data = rng.randbytes(size)
    s.sendto(data, ("{OUR_IP}", port))
    got, peer = s.recvfrom(65535)
    assert peer == ("{OUR_IP}", port), peer
    assert got == prefix + data, (size, len(got))
    ok += 1
print(json.dumps({{"ok": ok, "sizes": len(sizes)}}))
"""


@pytest.mark.parametrize(("port", "prefix"), [(7, ""), (5555, "response_")],
                         ids=["echo", "udpserver"])
def test_linux_sends_udp_to_our_apps(link: Link, our_apps, port: int, prefix: str):
    out = link.python(LINUX_CLIENT, port, prefix, port, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"ok": 50, "sizes": 50}


LINUX_CONNECTED_SEND = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("{OUR_IP}", 9999))
s.settimeout(2.0)
s.send(b"anyone there?")
try:
    s.recv(100)
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


def test_udp_to_closed_port_is_refused(link: Link):
    out = link.python(LINUX_CONNECTED_SEND)
    assert out.stdout.strip() == "refused", out.stdout + out.stderr
    assert link.counter("udp_port_unreachable") == 1
    assert link.counter("icmp_errors_sent") == 1


# -- capture ----------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_capture_read_back_by_tshark(make_link, tmp_path):
    path = tmp_path / "tap.pcap"
    link = make_link(pcap=path)
    assert link.ping(OUR_IP, 3, "-i", "0.1") == (3, 3)
    pinger = Pinger(link.runtime, ident=0x4242)
    for seq in range(3):
        assert pinger.ping(KERNEL_IP, seq, b"captured") is not None
    link.runtime.stop()
    link.device.close()

    def fields(display_filter: str, *names: str) -> list[list[str]]:
        argv = ["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields"]
        for name in names:
            argv += ["-e", name]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        return [line.split("\t") for line in res.stdout.splitlines() if line]

    icmp = fields("icmp", "ip.src", "ip.dst", "icmp.type", "icmp.ident", "icmp.seq")
    theirs = {(s, d, t, int(q)) for s, d, t, i, q in icmp if int(i) != 0x4242}
    ours = {(s, d, t, int(q)) for s, d, t, i, q in icmp if int(i) == 0x4242}
    assert theirs == {(KERNEL_IP, OUR_IP, "8", q) for q in range(3)} | {
        (OUR_IP, KERNEL_IP, "0", q) for q in range(3)}
    assert ours == {(OUR_IP, KERNEL_IP, "8", q) for q in range(3)} | {
        (KERNEL_IP, OUR_IP, "0", q) for q in range(3)}
    arp = fields("arp", "arp.opcode", "arp.src.proto_ipv4", "arp.src.hw_mac")
    assert ["2", OUR_IP, OUR_MAC] in arp  # our answer to the kernel's request
