"""IPv6 between the Linux guest (busybox) and our stack, the guest configured by nothing but
our router advertisements: SLAAC in the advertised prefix, the default route via our
link-local address, our neighbour entry with our MAC, ping6 to both our addresses (1400- and
4000-byte ones too, the latter fragmented both ways), AAAA answers from our DNS server over
IPv6, wget over IPv6 down and up by SHA-256, UDP over IPv6 (the guest's vhn-udp to our echo
and udpserver apps, 4000-byte datagrams fragmented both ways; our stack's UDP socket to the
guest's vhn-udp echo server), and our stack's own client connecting to the guest's SLAAC (and
link-local) address.

One VM for the module, IPv6 only until the last test (which leases IPv4 too and asks our
DNS server for the AAAA record over IPv4). Not testable with this guest's busybox: stateless
DHCPv6 and RDNSS (no DHCPv6 client applet, and nothing reads the RA's DNS option into
/etc/resolv.conf), so DNS is asked of fd00:10:0:2::3 by name on the command line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time

import pytest

from apps.harness.vm import GuestImage, QemuVM, vhost_user_nic_args
from apps.servers.http import pattern_chunks
from tests.e2e.conftest import GUEST_MAC, Served

pytestmark = pytest.mark.qemu

KiB, MiB = 1 << 10, 1 << 20
PREFIX = ipaddress.IPv6Network("fd00:10:0:2::/64")
OUR_GLOBAL = "fd00:10:0:2::2"
OUR_DNS = "fd00:10:0:2::3"
OUR_MAC = "52:55:0a:00:02:02"
OUR_LINK_LOCAL = "fe80::5055:aff:fe00:202"  # EUI-64 of OUR_MAC
GUEST_LINK_LOCAL = "fe80::5054:ff:fe12:3456"  # EUI-64 of GUEST_MAC
GUEST_SLAAC = "fd00:10:0:2:5054:ff:fe12:3456"  # the advertised prefix + the same EUI-64
GUEST_SLAAC6 = ipaddress.IPv6Address(GUEST_SLAAC)
GUEST_LINK_LOCAL6 = ipaddress.IPv6Address(GUEST_LINK_LOCAL)


def pattern_sha256(n: int) -> str:
    h = hashlib.sha256()
    for chunk in pattern_chunks(n):
        h.update(chunk)
    return h.hexdigest()


def timed(vm, cmd: str, timeout: float) -> tuple[str, float]:
    t0 = time.monotonic()
    out = vm.run_ok(cmd, timeout=timeout)
    return out, time.monotonic() - t0


def ping_stats(out: str) -> tuple[int, int, int, float]:
    """(transmitted, received, loss %, average RTT ms) from busybox ping's summary."""
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received, (\d+)% packet loss", out)
    rtt = re.search(r"min/avg/max = [\d.]+/([\d.]+)/[\d.]+ ms", out)
    assert m and rtt, out
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), float(rtt.group(1))


@pytest.fixture(scope="module")
def served6(tmp_path_factory):
    s = Served(str(tmp_path_factory.mktemp("e2e6") / "vhost.sock"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def vm6(served6):
    nic = vhost_user_nic_args(served6.server.socket_path, mac=GUEST_MAC)
    with QemuVM(GuestImage.default(), nic_args=nic) as vm:
        vm.wait_ready(timeout=120)
        yield vm


@pytest.fixture(scope="module")
def slaac_vm(vm6):
    """eth0 up and nothing else: the kernel solicits, our RA comes back, SLAAC makes the
    address and DAD finishes. Waits (up to 20 s) for a global address that is not tentative."""
    vm = vm6
    vm.slaac_addr_gen_mode = vm.run_ok("cat /proc/sys/net/ipv6/conf/default/addr_gen_mode")
    t0 = time.monotonic()
    vm.run_ok("ip link set eth0 up")
    deadline = t0 + 20
    while True:
        out = vm.run_ok("ip -6 addr show dev eth0 scope global")
        if "inet6 " in out and "tentative" not in out:
            break
        if time.monotonic() > deadline:
            more = vm.run("ip -6 addr; ip -6 route; ip -6 neigh").output
            pytest.fail(f"no usable SLAAC address 20 s after link up:\n{out}\n{more}")
        time.sleep(0.3)
    vm.slaac_seconds = time.monotonic() - t0
    vm.slaac_output = out
    return vm


def test_slaac_address_in_the_advertised_prefix(slaac_vm):
    vm = slaac_vm
    print(f"\nSLAAC address usable {vm.slaac_seconds:.1f} s after `ip link set eth0 up`")
    # addr_gen_mode 0: EUI-64 interface identifiers (not stable-privacy), so the address is
    # predictable from the guest's MAC
    assert vm.slaac_addr_gen_mode.strip() == "0", vm.slaac_addr_gen_mode
    addrs = re.findall(r"inet6 ([0-9a-f:]+)/(\d+) scope global (.*)", vm.slaac_output)
    assert len(addrs) == 1, vm.slaac_output
    addr, plen, flags = addrs[0]
    assert ipaddress.IPv6Address(addr) in PREFIX and plen == "64", vm.slaac_output
    assert addr == GUEST_SLAAC, vm.slaac_output
    assert "dynamic" in flags, vm.slaac_output  # from an RA, with lifetimes
    lifetimes = vm.run_ok(f"ip -6 addr show dev eth0 to {GUEST_SLAAC}/128")
    m = re.search(r"valid_lft (\d+)sec preferred_lft (\d+)sec", lifetimes)
    assert m and 0 < int(m.group(2)) <= int(m.group(1)) <= 86400, lifetimes
    link = vm.run_ok("ip -6 addr show dev eth0 scope link")
    assert f"inet6 {GUEST_LINK_LOCAL}/64 scope link" in link, link


def test_default_route_via_our_link_local_address(slaac_vm):
    out = slaac_vm.run_ok("ip -6 route show dev eth0")
    # (busybox ip prints RA-learned routes' expiry as "expires 0sec": it divides the
    # kernel's clock ticks by the psched resolution. The RA's router lifetime is 1800 s.)
    assert re.search(rf"^default via {OUR_LINK_LOCAL}\s", out, re.M), out
    assert re.search(rf"^{PREFIX}\s", out, re.M), out  # the on-link prefix from the RA


def test_ping6_link_local_and_global_no_loss(slaac_vm):
    for dest in (f"{OUR_LINK_LOCAL}%eth0", OUR_GLOBAL):
        out = slaac_vm.run_ok(f"ping6 -c 20 -i 0.1 -q {dest}", timeout=60)
        sent, received, loss, avg = ping_stats(out)
        print(f"\nping6 -c 20 {dest}: {received}/{sent} answered, {loss}% loss, "
              f"avg RTT {avg:.2f} ms")
        assert (sent, received, loss) == (20, 20, 0), out


def test_our_neighbour_entry_in_the_guest(slaac_vm):
    """After the pings the guest knows both our addresses at our MAC, as a router, and the
    entries are confirmed (REACHABLE, or STALE once that times out: not FAILED/INCOMPLETE,
    and not stuck in PROBE, which would mean our unicast NAs never came)."""
    vm = slaac_vm
    vm.run_ok(f"ping6 -c 1 {OUR_GLOBAL} && ping6 -c 1 {OUR_LINK_LOCAL}%eth0")
    deadline = time.monotonic() + 10
    while True:
        out = vm.run_ok("ip -6 neigh show dev eth0")
        entries = {}
        for line in out.splitlines():
            fields = line.split()
            if fields and fields[0] in (OUR_LINK_LOCAL, OUR_GLOBAL):
                entries[fields[0]] = line
        states = {a: line.split()[-1] for a, line in entries.items()}
        if len(entries) == 2 and all(s in ("REACHABLE", "STALE") for s in states.values()):
            break
        # DELAY/PROBE are passing states of an entry being reconfirmed: look again
        assert time.monotonic() < deadline, out
        time.sleep(1)
    for line in entries.values():
        assert f"lladdr {OUR_MAC}" in line and " router " in f" {line} ", out


def test_nslookup_aaaa_over_ipv6(slaac_vm):
    out = slaac_vm.run_ok(f"nslookup -type=AAAA gateway.vhostnet {OUR_DNS}")
    assert f"[{OUR_DNS}]:53" in out, out  # the question went over IPv6
    answer = out.split("gateway.vhostnet", 1)[1]
    assert re.search(rf"Address:\s*{OUR_GLOBAL}\s*$", answer, re.M), out
    out = slaac_vm.run_ok(f"nslookup -type=AAAA dns.vhostnet {OUR_DNS}")
    assert OUR_DNS in out.split("dns.vhostnet", 1)[1], out
    res = slaac_vm.run(f"nslookup -type=AAAA nosuchname.vhostnet {OUR_DNS}")
    assert res.rc != 0 or "NXDOMAIN" in res.output or "can't find" in res.output, res


def test_wget_download_over_ipv6(slaac_vm):
    n = 32 * MiB
    out, took = timed(slaac_vm, f"wget -q -O - http://[{OUR_GLOBAL}]/bytes/{n} | sha256sum",
                      timeout=120)
    digest = out.split()[0]
    print(f"\nwget http://[{OUR_GLOBAL}]/bytes/{n}: {took:.1f} s, {n / took / MiB:.2f} MiB/s, "
          f"sha256 {digest}")
    assert digest == pattern_sha256(n), out


def test_wget_upload_over_ipv6(slaac_vm):
    # no NUL bytes: busybox wget sends a --post-file as a C string
    vm = slaac_vm
    n = 8 * MiB
    digest = vm.run_ok(f"head -c {n + n // 64} /dev/urandom | tr -d '\\000' | head -c {n} "
                       "> /tmp/up6 && sha256sum /tmp/up6", timeout=60).split()[0]
    out, took = timed(vm, f"wget -q --post-file=/tmp/up6 -O - http://[{OUR_GLOBAL}]/sink",
                      timeout=120)
    print(f"\nwget --post-file ({n} bytes) to http://[{OUR_GLOBAL}]/sink: {took:.1f} s, "
          f"{n / took / MiB:.2f} MiB/s")
    assert out.split() == [str(n), digest], out


def test_large_ping6_fragmented(slaac_vm, served6):
    stats = served6.stack.iface.stats
    out = slaac_vm.run_ok(f"ping6 -c 3 -s 1400 {OUR_GLOBAL}", timeout=30)
    assert ping_stats(out)[:3] == (3, 3, 0), out
    frags_in, frags_out = stats["ipv6_fragments"], stats["tx_fragments"]
    out = slaac_vm.run_ok(f"ping6 -c 3 -s 4000 {OUR_GLOBAL}", timeout=30)
    sent, received, loss, avg = ping_stats(out)
    print(f"\nping6 -s 4000: {received}/{sent}, avg RTT {avg:.2f} ms")
    assert (sent, received, loss) == (3, 3, 0), out
    assert "4008 bytes from" in out, out
    # 4048-byte packets on a 1500 MTU: three fragments each way per echo
    assert stats["ipv6_fragments"] - frags_in >= 9, dict(stats)
    assert stats["tx_fragments"] - frags_out >= 9, dict(stats)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_udp_over_ipv6_to_our_apps(slaac_vm, served6):
    """The guest's vhn-udp to our UDP echo (7) and udpserver (5555, answers `response_` +
    data) over IPv6, at our global and link-local addresses; a 200-datagram flood; and
    4000-byte datagrams, which the guest sends in fragments and we answer in fragments."""
    vm = slaac_vm
    out = vm.run_ok(f"echo -n hello6 | vhn-udp {OUR_GLOBAL} 5555")
    assert out == "response_hello6", out
    out = vm.run_ok(f"echo -n ping6 | vhn-udp {OUR_GLOBAL} 7")
    assert out == "ping6", out
    out = vm.run_ok(f"echo -n link-local | vhn-udp {OUR_LINK_LOCAL}%eth0 7")
    assert out == "link-local", out
    out = vm.run_ok(f"vhn-udp -q -n 200 -s 1400 {OUR_GLOBAL} 7", timeout=60)
    assert out.strip() == "200/200 replies", out

    stats = served6.stack.iface.stats
    frags_in, frags_out = stats["ipv6_fragments"], stats["tx_fragments"]
    big = b"x" * 4000
    out = vm.run_ok(f"vhn-udp -s 4000 {OUR_GLOBAL} 7 | sha256sum", timeout=30)
    assert out.split()[0] == _sha256(big), out
    out = vm.run_ok(f"vhn-udp -s 4000 {OUR_GLOBAL} 5555 | sha256sum", timeout=30)
    assert out.split()[0] == _sha256(b"response_" + big), out
    out, took = timed(vm, f"vhn-udp -q -n 20 -s 4000 {OUR_GLOBAL} 7", timeout=60)
    print(f"\n20 x 4000-byte UDP echoes over IPv6: {took:.2f} s")
    assert out.strip() == "20/20 replies", out
    # 4048-byte packets on a 1500 MTU: three fragments each way, for 22 datagrams
    assert stats["ipv6_fragments"] - frags_in >= 66, dict(stats)
    assert stats["tx_fragments"] - frags_out >= 66, dict(stats)


def test_our_stack_udp_to_the_guest_echo_server_over_ipv6(slaac_vm, served6):
    """Our stack's UdpSocket to the guest's vhn-udp echo server (bound to ::) at its SLAAC
    address: small and 4000-byte datagrams come back whole; the guest saw our global
    address."""
    vm = slaac_vm
    vm.run_ok("rm -f /tmp/udp6.out; (vhn-udp -l 9007 -c 3 -v > /tmp/udp6.out 2>&1 &) ; "
              "for i in $(seq 50); do grep -q listening /tmp/udp6.out && break; sleep 0.1; "
              "done; cat /tmp/udp6.out")
    sent = [b"hello guest over ipv6", b"", bytes(range(256)) * 16 + b"tail"]
    sock = served6.stack.runtime.udp_bind(("::", 0))
    try:
        sock.settimeout(10)
        for data in sent:
            sock.send_to(data, (GUEST_SLAAC, 9007))
            got, src = sock.recv_from(65536)
            assert (got, src.host, src.port) == (data, GUEST_SLAAC, 9007)
        ours = sock.local_addr().port
    finally:
        sock.close()
    out = vm.run_ok("sleep 0.3; cat /tmp/udp6.out; killall vhn-udp 2>/dev/null; true")
    lines = out.strip().splitlines()
    assert lines[0] == "listening on 9007" and lines[-1] == "echoed 3 datagrams", out
    assert lines[1:-1] == [f"{OUR_GLOBAL} {ours} {len(d)}" for d in sent], out


def _guest_httpd(vm) -> str:
    return vm.run_ok("mkdir -p /tmp/www6 && head -c 4194304 /dev/urandom > /tmp/www6/blob && "
                     "sha256sum /tmp/www6/blob && httpd -p 8080 -h /tmp/www6", timeout=60).split()[0]


def _fetch(runtime, host: str, path: str) -> tuple[bytes, bytes, tuple]:
    """GET path from the guest's httpd on (host, 8080) with our stack's TcpStream: the
    response head, the body and our peer address."""
    from netstack.net import TcpStream

    with TcpStream.connect(runtime, (host, 8080), timeout=30) as s:
        s.set_read_timeout(60)
        peer = s.peer_addr()
        s.write_all(f"GET {path} HTTP/1.0\r\nHost: [{host}]:8080\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.read(1 << 16):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return head, body, peer


def test_our_stack_connects_to_the_guest_over_ipv6(slaac_vm, served6):
    """The host side's `vhostnet get` path: our stack's client to the guest's busybox httpd,
    at its SLAAC address (our neighbour cache learns it by NS/NA) and at its link-local one."""
    from netstack.net import SocketAddrV6

    digest = _guest_httpd(slaac_vm)
    rt = served6.stack.runtime
    t0 = time.monotonic()
    head, body, peer = _fetch(rt, GUEST_SLAAC, "/blob")
    took = time.monotonic() - t0
    print(f"\n4 MiB from the guest's httpd at [{GUEST_SLAAC}]:8080 by our TcpStream: "
          f"{took:.1f} s, {len(body) / took / MiB:.2f} MiB/s")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    assert isinstance(peer, SocketAddrV6) and peer.host == GUEST_SLAAC and peer.port == 8080
    assert (len(body), hashlib.sha256(body).hexdigest()) == (4 * MiB, digest)
    nd = served6.stack.iface.neighbors6
    assert nd.state(GUEST_SLAAC6) is not None, "our neighbour cache never learned the guest"
    head, body, peer = _fetch(rt, GUEST_LINK_LOCAL, "/blob")
    assert b" 200 " in head.split(b"\r\n")[0], head
    print(f"link-local: peer_addr() {peer}, neighbour {nd.state(GUEST_LINK_LOCAL6)}")
    assert ipaddress.IPv6Address(peer.host.split("%")[0]) == GUEST_LINK_LOCAL6, peer
    assert hashlib.sha256(body).hexdigest() == digest
    # and through the HTTP client `vhostnet get` uses, with a bracketed literal
    from apps.servers.http import http_get

    status, _, body = http_get(rt, f"http://[{GUEST_SLAAC}]:8080/blob", timeout=60)
    assert (status, hashlib.sha256(body).hexdigest()) == (200, digest)
    status, _, _ = http_get(rt, f"http://[{GUEST_SLAAC}]:8080/nothing-here", timeout=60)
    assert status == 404


def test_dual_stack_aaaa_over_ipv4(slaac_vm):
    """Last (it changes the guest): IPv4 by DHCP beside the SLAAC address, and our DNS
    server answers the AAAA question asked over IPv4 too."""
    vm = slaac_vm
    vm.run_ok("udhcpc -i eth0 -n -q -t 5 -T 2 2>&1", timeout=60)
    out = vm.run_ok("nslookup -type=AAAA gateway.vhostnet 10.0.2.3")
    assert "10.0.2.3:53" in out and OUR_GLOBAL in out.split("gateway.vhostnet", 1)[1], out
    assert f"inet6 {GUEST_SLAAC}/64" in vm.run_ok("ip -6 addr show dev eth0"), "SLAAC lost"
    out = vm.run_ok(f"wget -q -O - http://[{OUR_GLOBAL}]/bytes/1000 | sha256sum")
    assert out.split()[0] == pattern_sha256(1000), out
