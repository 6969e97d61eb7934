"""Our IPv6 against the Linux kernel's, over a TAP into a namespace of our own.

    kernel (namespace NS)                 TAP          us (this process)
    SLAAC fd00:77::<eui64> (from our RA) <----------> fd00:77::2/64 + fe80::5055:aff:fe00:3702

- Linux autoconfigures from our RouterAdvertiser (SLAAC address in our prefix, default
  route via our link-local address); NDP both ways; ping6 both ways (global and
  link-local); TCP both ways over IPv6, verified by SHA-256.
- Packet Too Big: Linux forwards between our TAP and a second namespace over a veth whose
  near end has MTU 1280; our 1500-byte segments bring back a PTB, we lower the path MTU and
  the transfer completes.
- Adversarial frames sent at us from inside the namespace (scapy-built, written to an
  AF_PACKET socket on the namespace's side of the TAP): 100 destination-options headers,
  overlapping fragments, an NS with an option of length 0, 5,000 RAs with distinct
  prefixes and source MACs. After each we still answer ping6 and TCP, and our counters
  show the drops.

Throughput and RTTs are printed (`-s`).
"""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from ipaddress import IPv6Address

import pytest

from netstack.iface import Interface, InterfaceConfig
from netstack.net import TcpListener, TcpStream
from netstack.phy.tap import TapDevice
from netstack.runtime import Runtime
from netstack.socket.icmp import IcmpSocket
from netstack.socket.router_adv import RouterAdvConfig, RouterAdvertiser
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.icmpv6 import Icmpv6Message
from netstack.wire.ipv6 import Ipv6Cidr
from tests.netns.conftest import OUR_MAC, PING, PYTHON, Link, readline, wait_until

pytestmark = pytest.mark.netns

MiB = 1 << 20
BLOCK = 64 * 1024
PREFIX = "fd00:77::"
OUR6 = "fd00:77::2"
KERNEL6 = "fd00:77::1"  # static, where the kernel is configured by hand
FAR_PREFIX = "fd00:78::"
FAR6 = "fd00:78::2"  # the far namespace, behind the kernel router (PTB test)
RDNSS = "fd00:77::53"
PORT = 8086


def eui64(mac: str) -> int:
    b = bytearray(bytes.fromhex(mac.replace(":", "")))
    b[0] ^= 0x02
    return int.from_bytes(bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:]), "big")


OUR_LL = str(IPv6Address(0xFE80 << 112 | eui64(OUR_MAC)))


def _nsrun(ns: str, *argv, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *map(str, argv)], capture_output=True,
                          text=True, timeout=30, check=check)


def _sysctl(ns: str, **values) -> None:
    for name, value in values.items():
        _nsrun(ns, "sysctl", "-q", "-w", f"net.ipv6.{name.replace('__', '.')}={value}")


class Pinger6:
    """ICMPv6 echo requests from our ICMP socket, blocking for the matching reply."""

    def __init__(self, runtime: Runtime, ident: int) -> None:
        self.runtime = runtime
        self.sock = IcmpSocket()
        self.sock.bind(ident)
        self.cond = threading.Condition(runtime.lock)
        self.sock.set_waker(self.cond.notify_all)
        runtime.add_socket(self.sock)

    def ping(self, dst: str, seq: int, data: bytes, timeout: float = 2.0):
        """(reply data, sender, RTT seconds) of the echo reply with this sequence number, or
        None at timeout."""
        start = time.monotonic()
        with self.runtime.lock:
            self.sock.send_echo_request(IPv6Address(dst), seq, data)
        self.runtime.wake()
        deadline = start + timeout
        with self.runtime.lock:
            while True:
                while self.sock.can_recv():
                    reply, src = self.sock.recv_repr()
                    if reply.msg_type == Icmpv6Message.ECHO_REPLY and reply.seq_no == seq:
                        return bytes(reply.data), src, time.monotonic() - start
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


@pytest.fixture
def make_link6(make_netns) -> Iterator[Callable[..., Link]]:
    """`make_link6(router=..., kernel_addr=..., ...)`: a namespace with a TAP (kernel side
    accepting RAs, optionally with a static address) and our stack on the other end with
    fd00:77::2/64; as a router running a RouterAdvertiser for fd00:77::/64, or as a host
    accepting RAs."""
    with ExitStack() as stack:

        def make(*, router: bool = True, kernel_addr: str | None = None,
                 accept_dad: int = 1, routes=(), prepare: Callable[[str], None] | None = None
                 ) -> Link:
            ns = make_netns()
            tap = TapDevice(netns=ns)
            stack.callback(tap.close)
            _sysctl(ns, **{f"conf__{tap.name}__accept_ra": 1,
                           f"conf__{tap.name}__accept_dad": accept_dad})
            if prepare is not None:
                prepare(ns)
            if kernel_addr is not None:
                _nsrun(ns, "ip", "-6", "addr", "add", kernel_addr, "dev", tap.name, "nodad")
            tap.up()
            iface = Interface(InterfaceConfig(
                hardware_addr=EthernetAddress.parse(OUR_MAC),
                ipv6_addrs=[Ipv6Cidr.parse(OUR6 + "/64")],
                ipv6_routes=[(Ipv6Cidr.parse(c), IPv6Address(v)) for c, v in routes],
                ipv6_router=router, accept_ra=not router))
            runtime = Runtime(iface, tap)
            link = Link(ns, tap, tap, iface, runtime)
            if router:
                ra = RouterAdvertiser(RouterAdvConfig(
                    prefixes=[PREFIX + "/64"], rdnss=[RDNSS], initial_interval=1.0,
                    min_delay_between=0.2, seed=77), iface.hardware_addr, runtime.clock())
                runtime.add_socket(ra)
                link.ra = ra
            runtime.start()
            stack.callback(runtime.stop)
            stack.callback(link.kill_processes)  # callbacks run last-in first-out
            return link

        yield make


def slaac_addr(link: Link) -> str:
    return str(IPv6Address(int(IPv6Address(PREFIX)) | eui64(link.tap.mac)))


def kernel_ll(link: Link) -> str:
    return str(IPv6Address(0xFE80 << 112 | eui64(link.tap.mac)))


@pytest.fixture
def ra_link(make_link6) -> Link:
    """Our stack as the router; the kernel autoconfigured from our RA (SLAAC address no
    longer tentative, default route via our link-local address)."""
    link = make_link6()
    addr = slaac_addr(link)

    def configured():
        out = link.run("ip", "-6", "addr", "show", "dev", link.tap.name, "scope", "global")
        route = link.run("ip", "-6", "route", "show", "default").stdout
        ok = f"inet6 {addr}/64" in out.stdout and "tentative" not in out.stdout and \
            f"via {OUR_LL} dev {link.tap.name}" in route
        return (out.stdout, route) if ok else None

    got = wait_until(configured, 15.0, 0.1)
    if got is None:
        out = link.run("ip", "-6", "addr").stdout + link.run("ip", "-6", "route").stdout
        raise AssertionError(f"no SLAAC address {addr} / default route via {OUR_LL}:\n{out}"
                             f"\nour stats: {dict(link.iface.stats)}")
    link.slaac = got
    return link


def ping6(link: Link, dst: str, count: int, *options: str) -> tuple[int, int, float | None]:
    """The kernel pings `dst` over IPv6: (transmitted, received, average RTT in ms)."""
    out = link.run(*PING, "-6", "-c", count, *options, dst, check=False)
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out.stdout)
    if m is None:
        raise AssertionError(f"ping said: {out.stdout}{out.stderr}")
    avg = re.search(r"= [\d.]+/([\d.]+)/", out.stdout)
    return int(m[1]), int(m[2]), float(avg[1]) if avg else None


# -- autoconfiguration, NDP, ping ---------------------------------------------------------
def test_linux_autoconfigures_from_our_ra(ra_link: Link, tmp_path):
    link = ra_link
    addrs, route = link.slaac
    assert f"inet6 {slaac_addr(link)}/64 scope global" in addrs
    assert "dynamic" in addrs or "mngtmpaddr" in addrs, addrs  # from an RA, not by hand
    assert f"default via {OUR_LL} dev {link.tap.name} proto ra" in route, route
    onlink = link.run("ip", "-6", "route", "show", PREFIX + "/64").stdout
    # the on-link prefix from the RA's prefix information (L flag), with its lifetime
    assert f"{PREFIX}/64 dev {link.tap.name}" in onlink and "expires" in onlink, onlink
    with link.runtime.lock:
        sent, solicited = link.ra.sent, link.ra.solicitations
        assert link.ra.advert.rdnss == (IPv6Address(RDNSS),)
    assert sent >= 1
    # Whether the kernel solicited depends on whether our first RA beat its RS; solicit
    # once more from its link-local address and see the RS taken and answered.
    inet6, Ether, Raw, raw = _scapy()
    time.sleep(0.25)  # past min_delay_between since the last RA
    rs = raw(Ether(src=link.tap.mac, dst="33:33:00:00:00:02") /
             inet6.IPv6(src=kernel_ll(link), dst="ff02::2", hlim=255) /
             inet6.ICMPv6ND_RS() / inet6.ICMPv6NDOptSrcLLAddr(lladdr=link.tap.mac))
    inject(link, [rs], tmp_path)

    def answered():
        with link.runtime.lock:
            return link.ra.solicitations > solicited and link.ra.sent > sent

    assert wait_until(answered, 3.0), dict(link.iface.stats)
    assert _stat(link, "ndisc_rs_received") >= 1


def test_ndp_both_ways_and_ping6(ra_link: Link):
    link = ra_link
    theirs, their_ll = slaac_addr(link), kernel_ll(link)
    # The kernel pings our global and link-local addresses.
    sent, got, rtt_g = ping6(link, OUR6, 5, "-i", "0.05")
    assert (sent, got) == (5, 5)
    sent, got, rtt_ll = ping6(link, f"{OUR_LL}%{link.tap.name}", 5, "-i", "0.05",
                              "-I", link.tap.name)
    assert (sent, got) == (5, 5)
    neigh = link.run("ip", "-6", "neigh", "show", "dev", link.tap.name).stdout
    for addr in (OUR6, OUR_LL):
        line = next((x for x in neigh.splitlines() if x.startswith(addr + " ")), "")
        assert OUR_MAC in line and re.search(r"REACHABLE|STALE|DELAY|PROBE", line), neigh
    assert "router" in next(x for x in neigh.splitlines() if x.startswith(OUR_LL + " "))
    # We ping the kernel's SLAAC and link-local addresses: NS from us, NA from it.
    pinger = Pinger6(link.runtime, ident=0x6606)
    rtts = []
    for seq, dst in enumerate([theirs, their_ll] * 3):
        data = f"hello {dst} {seq}".encode() * 20
        reply = pinger.ping(dst, seq, data)
        assert reply is not None, f"no echo reply from {dst}"
        assert reply[0] == data and reply[1] == IPv6Address(dst)
        rtts.append(reply[2] * 1000)
    with link.runtime.lock:
        nd = link.iface.neighbors6
        for addr in (theirs, their_ll):
            a = IPv6Address(addr)
            assert a in nd, f"{addr} not in our neighbor cache"
            assert str(nd.lookup(a, link.runtime.clock())) == link.tap.mac
        stats = link.iface.stats
        assert stats["ndisc_na_sent"] >= 1 and stats["ndisc_ns_sent"] >= 1
        assert stats["icmpv6_echo_replies"] == 10
    print(f"\nping6 linux->us: global {rtt_g} ms, link-local {rtt_ll} ms avg; "
          f"us->linux: {sum(rtts) / len(rtts):.2f} ms avg")


# -- TCP -------------------------------------------------------------------------------
PATTERN = f"""
import hashlib, random
def chunks(total, seed):
    block = random.Random(seed).randbytes({BLOCK})
    mv = memoryview(block)
    while total:
        n = min(total, len(block))
        yield mv[:n]
        total -= n
"""

LINUX_SENDER6 = PATTERN + """
import socket, sys
host, port, total, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((host, port), timeout=60)
for chunk in chunks(total, seed):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
print(s.getsockname()[0])
"""

LINUX_RECEIVER6 = """
import hashlib, socket, sys
ls = socket.socket(socket.AF_INET6)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("::", int(sys.argv[1])))
ls.listen(1)
print("ready", flush=True)
c, peer = ls.accept()
c.settimeout(60)
h, n = hashlib.sha256(), 0
buf = bytearray(1 << 20)
while k := c.recv_into(buf):
    h.update(memoryview(buf)[:k])
    n += k
c.close()
print(n, h.hexdigest(), peer[0], flush=True)
"""

_ns: dict = {}
exec(PATTERN, _ns)  # noqa: S102 - the same helper text the namespace runs
chunks = _ns["chunks"]


def expected_digest(total: int, seed: int) -> str:
    h = hashlib.sha256()
    for chunk in chunks(total, seed):
        h.update(chunk)
    return h.hexdigest()


def linux_to_us(link: Link, dst: str, total: int, seed: int, timeout: float = 30.0):
    """The kernel connects to our listener on :: and sends; we hash. (MiB/s, peer)."""
    listener = TcpListener.bind(link.runtime, ("::", PORT))
    listener.set_timeout(10.0)
    proc = link.spawn(PYTHON, "-u", "-c", LINUX_SENDER6, dst, PORT, total, seed, text=True)
    try:
        stream, peer = listener.accept()
        start = time.monotonic()
        stream.set_read_timeout(timeout)
        h, n = hashlib.sha256(), 0
        buf = bytearray(MiB)
        with stream:
            while k := stream.read_into(buf):
                h.update(memoryview(buf)[:k])
                n += k
            elapsed = time.monotonic() - start
        assert proc.wait(timeout) == 0, proc.stderr.read()
    finally:
        listener.close()
    assert (n, h.hexdigest()) == (total, expected_digest(total, seed))
    return total / MiB / elapsed, peer


def us_to_linux(link: Link, dst: str, total: int, seed: int, timeout: float = 30.0,
                port: int = PORT, spawn=None) -> tuple[float, TcpStream]:
    """We connect to a kernel listener at `dst` and send; it hashes. (MiB/s, stream)."""
    proc = (spawn or link.spawn)(PYTHON, "-u", "-c", LINUX_RECEIVER6, port, text=True)
    assert readline(proc, 10.0) == "ready"
    start = time.monotonic()
    with TcpStream.connect(link.runtime, (dst, port), timeout=5.0) as stream:
        stream.set_write_timeout(timeout)
        for chunk in chunks(total, seed):
            stream.write_all(chunk)
        stream.shutdown("write")
        stream.set_read_timeout(timeout)
        assert stream.read() == b""
        line = readline(proc, timeout)
    elapsed = time.monotonic() - start
    n, digest, peer = line.split()
    assert (int(n), digest) == (total, expected_digest(total, seed))
    assert IPv6Address(peer) == IPv6Address(OUR6)
    return total / MiB / elapsed, stream


TCP_SIZE = 32 * MiB


def test_tcp_linux_to_us_over_ipv6(ra_link: Link):
    rate, peer = linux_to_us(ra_link, OUR6, TCP_SIZE, seed=61)
    assert IPv6Address(peer[0]) == IPv6Address(slaac_addr(ra_link)), peer
    print(f"\nipv6 linux->us: {TCP_SIZE // MiB} MiB at {rate:.1f} MiB/s")


def test_tcp_us_to_linux_over_ipv6(ra_link: Link):
    rate, _ = us_to_linux(ra_link, slaac_addr(ra_link), TCP_SIZE, seed=62)
    print(f"\nipv6 us->linux: {TCP_SIZE // MiB} MiB at {rate:.1f} MiB/s")


# -- Packet Too Big --------------------------------------------------------------------
PTB_SIZE = 8 * MiB


def test_packet_too_big_from_linux_router(make_link6, make_netns):
    """us --TAP(1500)-- kernel router (forwarding=1) --veth(1280 on its side)-- far NS.
    The far end advertises MSS 1440 (its veth end is 1500), so our full-size segments
    reach the router, which answers with Packet Too Big (MTU 1280)."""
    far = make_netns()

    def prepare(ns: str) -> None:
        _nsrun(ns, "ip", "link", "add", "vr0", "type", "veth", "peer", "name", "vf0",
               "netns", far)
        _nsrun(ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        _nsrun(ns, "ip", "link", "set", "vr0", "mtu", "1280", "up")
        _nsrun(ns, "ip", "-6", "addr", "add", FAR_PREFIX + "1/64", "dev", "vr0", "nodad")
        _nsrun(far, "ip", "link", "set", "lo", "up")
        _nsrun(far, "ip", "link", "set", "vf0", "up")
        _nsrun(far, "ip", "-6", "addr", "add", FAR6 + "/64", "dev", "vf0", "nodad")
        _nsrun(far, "ip", "-6", "route", "add", "default", "via", FAR_PREFIX + "1")

    link = make_link6(router=False, kernel_addr=KERNEL6 + "/64", prepare=prepare,
                      routes=[(FAR_PREFIX + "/64", KERNEL6)])
    far_link = Link(far, link.tap, link.device, link.iface, link.runtime)
    try:
        # The kernel takes a moment before it forwards over the new veth: wait for the
        # path (small packets: nothing here is too big).
        assert wait_until(lambda: ping6(far_link, OUR6, 1, "-W", "1")[1] == 1, 10.0)
        with link.runtime.lock:
            assert link.iface.path_mtu(IPv6Address(FAR6)) == 1500
        rate, stream = us_to_linux(link, FAR6, PTB_SIZE, seed=1280, spawn=far_link.spawn)
        with link.runtime.lock:
            pmtu = link.iface.path_mtu(IPv6Address(FAR6))
            applied = link.iface.stats["icmpv6_ptb_applied"]
            lowered = stream._sock.stats.get("path_mtu_lowered", 0)
    finally:
        far_link.kill_processes()
    assert pmtu == 1280
    assert applied >= 1
    assert lowered >= 1  # the connection's segments shrank
    print(f"\nPTB: path MTU to {FAR6} {pmtu}, {applied} PTB applied; "
          f"{PTB_SIZE // MiB} MiB through the 1280 link at {rate:.1f} MiB/s")


# -- adversarial ------------------------------------------------------------------------
RAW_SENDER = """
import errno, socket, struct, sys, time
ifname, path, pace = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
data = open(path, "rb").read()
pos = n = 0
while pos < len(data):
    (k,) = struct.unpack_from("!H", data, pos)
    pos += 2
    while True:
        try:
            s.send(data[pos:pos + k])
            break
        except OSError as e:
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise
            time.sleep(0.001)
    pos += k
    n += 1
    if pace and n % pace == 0:
        time.sleep(0.002)
print(n)
"""


def inject(link: Link, frames: list[bytes], tmp_path, pace: int = 0) -> int:
    """Send raw Ethernet frames from the namespace's side of the TAP (AF_PACKET)."""
    path = tmp_path / f"frames-{time.monotonic_ns()}.bin"
    path.write_bytes(b"".join(struct.pack("!H", len(f)) + f for f in frames))
    out = link.python(RAW_SENDER, link.tap.name, path, pace, timeout=60)
    return int(out.stdout)


ALIVE_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"still there?" * 1000)
s.shutdown(socket.SHUT_WR)
got = b""
while k := s.recv(65536):
    got += k
print(got == b"still there?" * 1000)
"""


def assert_alive(link: Link) -> None:
    """ping6 (global and link-local) and a TCP echo from the kernel still work."""
    assert ping6(link, OUR6, 3, "-i", "0.05")[:2] == (3, 3)
    assert ping6(link, f"{OUR_LL}%{link.tap.name}", 2, "-i", "0.05",
                 "-I", link.tap.name)[:2] == (2, 2)
    listener = TcpListener.bind(link.runtime, ("::", PORT + 1))
    listener.set_timeout(10.0)
    proc = link.spawn(PYTHON, "-u", "-c", ALIVE_CLIENT, OUR6, PORT + 1, text=True)
    try:
        stream, _ = listener.accept()
        with stream:
            stream.set_read_timeout(10.0)
            stream.write_all(stream.read_to_end())
        assert proc.wait(10.0) == 0, proc.stderr.read()
        assert proc.stdout.read().strip() == "True"
    finally:
        listener.close()


@pytest.fixture
def host_link(make_link6) -> Link:
    """Static addresses on both sides; our stack a host (accept_ra=True)."""
    link = make_link6(router=False, kernel_addr=KERNEL6 + "/64")
    assert ping6(link, OUR6, 1, "-W", "2")[:2] == (1, 1)  # neighbors resolved
    return link


def _scapy():
    from scapy.layers import inet6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw, raw

    return inet6, Ether, Raw, raw


def _stat(link: Link, name: str) -> int:
    with link.runtime.lock:
        return link.iface.stats[name]


def test_100_destination_options_headers(host_link: Link, tmp_path):
    inet6, Ether, Raw, raw = _scapy()
    link = host_link
    eth = Ether(src=link.tap.mac, dst=OUR_MAC)

    def echo(n_headers: int, seq: int) -> bytes:
        pkt = inet6.IPv6(src=KERNEL6, dst=OUR6)
        for _ in range(n_headers):
            pkt = pkt / inet6.IPv6ExtHdrDestOpt()
        return raw(eth / pkt / inet6.ICMPv6EchoRequest(id=0x100, seq=seq, data=b"x" * 32))

    big = echo(100, 1)
    assert len(big) == 14 + 40 + 800 + 8 + 32
    replies = _stat(link, "icmpv6_echo_replies")
    before = _stat(link, "ipv6_bad_extension_headers")
    assert inject(link, [big] * 10 + [echo(8, 2)], tmp_path) == 11
    assert wait_until(lambda: _stat(link, "icmpv6_echo_replies") == replies + 1, 5.0), \
        "the echo request with 8 headers (within the bound) was not answered"
    assert _stat(link, "ipv6_bad_extension_headers") == before + 10
    assert_alive(link)


def test_overlapping_fragments(host_link: Link, tmp_path):
    inet6, Ether, Raw, raw = _scapy()
    link = host_link
    eth = Ether(src=link.tap.mac, dst=OUR_MAC)
    body = raw(inet6.IPv6(src=KERNEL6, dst=OUR6) /
               inet6.ICMPv6EchoRequest(id=0x200, seq=1, data=b"o" * 2000))[40:]

    def frag(ident: int, offset: int, piece: bytes, more: bool) -> bytes:
        return raw(eth / inet6.IPv6(src=KERNEL6, dst=OUR6) /
                   inet6.IPv6ExtHdrFragment(nh=58, offset=offset // 8, m=int(more), id=ident) /
                   Raw(piece))

    frames = []
    for ident in range(0x7000, 0x7010):  # 16 datagrams, each with an overlap
        frames.append(frag(ident, 0, body[:1200], True))
        frames.append(frag(ident, 800, body[800:], False))  # overlaps 800..1200
    # and one more whose second fragment lies wholly inside the first
    frames.append(frag(0x7100, 0, body[:1200], True))
    frames.append(frag(0x7100, 400, body[400:800], True))
    frames.append(frag(0x7100, 1200, body[1200:], False))
    replies = _stat(link, "icmpv6_echo_replies")
    with link.runtime.lock:
        overlaps = link.iface.reassembler6.stats.overlaps
    inject(link, frames, tmp_path)

    def counted():
        with link.runtime.lock:
            return link.iface.reassembler6.stats.overlaps - overlaps >= 17

    assert wait_until(counted, 5.0), link.iface.reassembler6.stats
    with link.runtime.lock:
        # Nothing kept of the overlapping datagrams but the last fragment of 0x7100, which
        # came after its datagram was dropped and waits, alone, for its timeout.
        assert len(link.iface.reassembler6) <= 1
        stats = link.iface.reassembler6.stats
    assert _stat(link, "icmpv6_echo_replies") == replies
    # The same datagram fragmented properly is answered; so are the kernel's fragments.
    good = [frag(0x7200, 0, body[:1200], True), frag(0x7200, 1200, body[1200:], False)]
    inject(link, good, tmp_path)
    assert wait_until(lambda: _stat(link, "icmpv6_echo_replies") == replies + 1, 5.0)
    assert ping6(link, OUR6, 3, "-i", "0.05", "-s", "4000")[:2] == (3, 3)
    print(f"\noverlapping fragments: {stats}")
    assert_alive(link)


def test_ns_with_zero_length_option(host_link: Link, tmp_path):
    inet6, Ether, Raw, raw = _scapy()
    link = host_link
    mac = bytes.fromhex(link.tap.mac.replace(":", ""))
    snm = "ff02::1:ff00:2"  # solicited-node group of fd00:77::2
    frames = []
    for opt in (b"\x01\x00" + mac,  # source link-layer address, length 0
                b"\x01\x01" + mac + b"\x0e\x00" + b"\x00" * 6,  # a good one, then length 0
                b"\x0e\x00" + b"\x00" * 6):  # an unknown option of length 0
        frames.append(raw(Ether(src=link.tap.mac, dst="33:33:ff:00:00:02") /
                          inet6.IPv6(src=KERNEL6, dst=snm, hlim=255) /
                          inet6.ICMPv6ND_NS(tgt=OUR6) / Raw(opt)))
    before = _stat(link, "ndisc_malformed")
    na_sent = _stat(link, "ndisc_na_sent")
    assert inject(link, frames * 5, tmp_path) == 15
    assert wait_until(lambda: _stat(link, "ndisc_malformed") == before + 15, 5.0), \
        dict(link.iface.stats)
    assert _stat(link, "ndisc_na_sent") == na_sent  # none answered
    assert_alive(link)


RA_FLOOD = 5000


def test_ra_flood(host_link: Link, tmp_path):
    """5,000 RAs, each from its own link-local address and MAC with its own /64 prefix:
    our tables stay bounded and we keep answering."""
    inet6, Ether, Raw, raw = _scapy()
    link = host_link
    frames = []
    for i in range(RA_FLOOD):
        mac = f"02:aa:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}:01"
        frames.append(raw(
            Ether(src=mac, dst="33:33:00:00:00:01") /
            inet6.IPv6(src=f"fe80::aa:{i >> 16:x}:{i & 0xFFFF:x}", dst="ff02::1", hlim=255) /
            inet6.ICMPv6ND_RA(routerlifetime=1800) /
            inet6.ICMPv6NDOptSrcLLAddr(lladdr=mac) /
            inet6.ICMPv6NDOptPrefixInfo(prefix=f"2001:db8:{i >> 8:x}:{i & 0xFF:x}::",
                                        prefixlen=64, L=1, A=1, validlifetime=3600,
                                        preferredlifetime=1800)))
    rx_before = link.tap.stats.rx_frames
    accepted = _stat(link, "ndisc_ra_accepted")
    start = time.monotonic()
    assert inject(link, frames, tmp_path, pace=20) == RA_FLOOD
    sent_in = time.monotonic() - start

    def settled():
        with link.runtime.lock:
            return link.tap.stats.rx_frames - rx_before >= RA_FLOOD * 0.9

    wait_until(settled, 10.0)
    time.sleep(0.3)
    with link.runtime.lock:
        iface = link.iface
        n_onlink, n_neigh = len(iface._onlink6), len(iface.neighbors6)
        got = iface.stats["ndisc_ra_accepted"] - accepted
        full, evicted = iface.stats["ndisc_prefix_table_full"], iface.stats["nd_evicted"]
        received = link.tap.stats.rx_frames - rx_before
    print(f"\nRA flood: {RA_FLOOD} sent in {sent_in:.1f} s, {received} frames read, "
          f"{got} accepted; on-link prefixes {n_onlink}, neighbors {n_neigh}, "
          f"prefix table full {full}, neighbors evicted {evicted}")
    assert n_onlink <= 16
    assert n_neigh <= 1024
    assert got > 1024, "too few RAs reached us for the flood to test the bounds"
    assert full >= got - 16
    assert evicted >= got - 1024
    assert_alive(link)
