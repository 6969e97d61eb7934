"""Host port forwarding (gateway/hostfwd.py): QEMU's hostfwd rule syntax and its errors; the
TCP and UDP relays between a host socket and a second stack of ours standing in for the
guest (two runtimes over an in-memory link); then, with QEMU (mark `qemu`), the Linux
guest's busybox httpd and nc and its UDP echo server (vhn-udp -l) served to host sockets
through `make_server(hostfwd=...)`."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import urllib.request

import pytest

from gateway.hostfwd import (
    DEFAULT_HOST_ADDR,
    HostForwarder,
    HostFwd,
    HostFwdError,
    parse_hostfwd,
)
from netstack.iface import Interface, InterfaceConfig
from netstack.phy.loopback import waking_pair
from netstack.runtime import Runtime
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr

US, GUEST = "10.9.0.2", "10.9.0.15"


# -- parsing ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, rule", [
    ("tcp::8080-:80", HostFwd("tcp", DEFAULT_HOST_ADDR, 8080, None, 80)),
    (":127.0.0.1:2222-10.0.2.15:22", HostFwd("tcp", "127.0.0.1", 2222, "10.0.2.15", 22)),
    ("udp:0.0.0.0:5353-:53", HostFwd("udp", "0.0.0.0", 5353, None, 53)),
    ("tcp::0-:1", HostFwd("tcp", DEFAULT_HOST_ADDR, 0, None, 1)),
    ("tcp::65535-:65535", HostFwd("tcp", DEFAULT_HOST_ADDR, 65535, None, 65535)),
    ("tcp:127.1:0x50-10.0.2.0x10:0120", HostFwd("tcp", "127.0.0.1", 80, "10.0.2.16", 80)),
    ("tcp:: 8080-:+80", HostFwd("tcp", DEFAULT_HOST_ADDR, 8080, None, 80)),
    # IPv6 in brackets, either side or both; compressed; zones kept
    ("tcp:127.0.0.1:8080-[fd00:10:0:2:5054:ff:fe12:3456]:80",
     HostFwd("tcp", "127.0.0.1", 8080, "fd00:10:0:2:5054:ff:fe12:3456", 80)),
    ("tcp:[::1]:8080-10.0.2.15:80", HostFwd("tcp", "::1", 8080, "10.0.2.15", 80)),
    ("udp:[::]:5353-[FD00:10:0:2:0:0:0:15]:53", HostFwd("udp", "::", 5353, "fd00:10:0:2::15", 53)),
    ("tcp:[::1]:0x50-:80", HostFwd("tcp", "::1", 80, None, 80)),
    ("tcp:[fe80::1%lo]:8080-[fe80::5054:ff:fe12:3456%eth0]:80",
     HostFwd("tcp", "fe80::1%lo", 8080, "fe80::5054:ff:fe12:3456%eth0", 80)),
    ("tcp:[::ffff:127.0.0.1]:8080-:80", HostFwd("tcp", "::ffff:127.0.0.1", 8080, None, 80)),
])
def test_parse_as_qemu(spec, rule):
    assert parse_hostfwd(spec) == rule


@pytest.mark.parametrize("spec, reason", [
    ("", "No : separators"),
    ("8080-:80", "Bad protocol name"),
    ("sctp::8080-:80", "Bad protocol name"),
    ("TCP::8080-:80", "Bad protocol name"),
    ("tcp:8080-80", "Missing : separator"),
    ("tcp:8080-:80", "Bad host address"),
    ("tcp:localhost:8080-:80", "Bad host address"),
    ("tcp:1.2.3.4.5:8080-:80", "Bad host address"),
    ("tcp::8080", "Bad host port separator"),
    ("tcp::-:80", "Bad host port"),
    ("tcp::65536-:80", "Bad host port"),
    ("tcp::-1-:80", "Bad host port"),
    ("tcp::80x-:80", "Bad host port"),
    ("tcp::8080-80", "Missing guest address"),
    ("tcp::8080-guest:80", "Bad guest address"),
    ("tcp::8080-:", "Bad guest port"),
    ("tcp::8080-:0", "Bad guest port"),
    ("tcp::8080-:65536", "Bad guest port"),
    ("tcp::8080-:80:81", "Bad guest port"),
    # IPv6
    ("tcp:[::1:8080-:80", "Missing ] after the host address"),
    ("tcp:[::1]8080-:80", "Missing : separator"),
    ("tcp:[]:8080-:80", "Bad host address"),
    ("tcp:[10.0.2.2]:8080-:80", "Bad host address"),
    ("tcp:[::1%]:8080-:80", "Bad host address"),
    ("tcp:[fe80::1::2]:8080-:80", "Bad host address"),
    ("tcp:::1:8080-:80", "Bad host address: an IPv6 address goes in brackets, [::1]"),
    ("tcp:[::1]:8080", "Bad host port separator"),
    ("tcp:[::1]:x-:80", "Bad host port"),
    ("tcp::8080-[fd00::15:80", "Missing ] after the guest address"),
    ("tcp::8080-[fd00::15]80", "Missing : after the guest address"),
    ("tcp::8080-[fd00::15]", "Missing : after the guest address"),
    ("tcp::8080-[]:80", "Bad guest address"),
    ("tcp::8080-[guest]:80", "Bad guest address"),
    ("tcp::8080-fd00::15:80",
     "Bad guest address: an IPv6 address goes in brackets, [fd00::15]"),
    ("tcp::8080-[fd00::15]:", "Bad guest port"),
    ("tcp::8080-[fd00::15]:0", "Bad guest port"),
])
def test_bad_rules_say_why(spec, reason):
    with pytest.raises(HostFwdError) as exc:
        parse_hostfwd(spec)
    assert str(exc.value) == f"invalid host forwarding rule {spec!r} ({reason})"
    assert isinstance(exc.value, ValueError)


def test_cli_rejects_a_bad_rule(capsys):
    from apps.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--hostfwd", "tcp::8080-:80", "--hostfwd", "tcp::x-:80"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --hostfwd: invalid host forwarding rule 'tcp::x-:80' (Bad host port)" \
        in err


def test_cli_parses_repeated_rules():
    from apps.cli import build_parser

    args = build_parser().parse_args(["serve", "--hostfwd", "tcp::8080-:80",
                                      "--hostfwd", "udp::5353-10.0.2.16:53"])
    assert args.hostfwd == [HostFwd("tcp", "127.0.0.1", 8080, None, 80),
                            HostFwd("udp", "127.0.0.1", 5353, "10.0.2.16", 53)]
    args = build_parser().parse_args(["serve", "--hostfwd", "tcp:[::1]:8080-[fd00::15]:80"])
    assert args.hostfwd == [HostFwd("tcp", "::1", 8080, "fd00::15", 80)]


# -- two stacks: ours (with the forwards) and a stand-in guest ----------------------------
def _runtime(mac_last: int, ip: str, device) -> Runtime:
    mac = EthernetAddress(bytes([2, 0, 0, 0, 0, mac_last]))
    return Runtime(Interface(InterfaceConfig(mac, [Ipv4Cidr.parse(ip + "/24")])), device)


@pytest.fixture
def stacks():
    wa, wb = waking_pair()
    us, guest = _runtime(1, US, wa), _runtime(2, GUEST, wb)
    us.start()
    guest.start()
    yield us, guest
    us.stop()
    guest.stop()
    os.close(wa.fd)
    os.close(wb.fd)


def _serve(target, *args) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def test_tcp_both_ways_with_half_close(stacks):
    """The host sends 1 MiB and shuts down writing; the guest reads to EOF, answers with
    the hash and 512 KiB, then closes: the host gets both and then EOF."""
    us, guest = stacks
    listener = guest.tcp_listen(("0.0.0.0", 8080))
    reply = os.urandom(512 * 1024)

    def server():
        stream, _ = listener.accept()
        got = stream.read_to_end()
        stream.write_all(hashlib.sha256(got).digest() + reply)
        stream.close()

    t = _serve(server)
    fwd = HostForwarder(us, ["tcp::0-:8080"], GUEST)
    try:
        data = os.urandom(1 << 20)
        with socket.create_connection(fwd.address(), timeout=20) as c:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := c.recv(65536):
                got += chunk
        assert bytes(got) == hashlib.sha256(data).digest() + reply
        t.join(5)
    finally:
        fwd.close()
        listener.close()


def test_tcp_guest_refuses_closes_the_host_connection(stacks):
    us, _guest = stacks
    fwd = HostForwarder(us, ["tcp::0-:8081"], GUEST)  # nobody listens on 8081
    try:
        with socket.create_connection(fwd.address(), timeout=10) as c:
            try:
                assert c.recv(100) == b""
            except ConnectionResetError:
                pass
    finally:
        fwd.close()


def test_tcp_guest_reset_resets_the_host(stacks):
    us, guest = stacks
    listener = guest.tcp_listen(("0.0.0.0", 8082))

    def server():
        stream, _ = listener.accept()
        stream.read(10)
        stream.set_linger_abort(True)
        stream.close()

    t = _serve(server)
    fwd = HostForwarder(us, ["tcp::0-:8082"], GUEST)
    try:
        with socket.create_connection(fwd.address(), timeout=10) as c:
            c.sendall(b"hello")
            with pytest.raises(ConnectionResetError):
                while c.recv(100):
                    pass
        t.join(5)
    finally:
        fwd.close()
        listener.close()


def test_tcp_close_resets_open_connections(stacks):
    us, guest = stacks
    listener = guest.tcp_listen(("0.0.0.0", 8083))
    fwd = HostForwarder(us, ["tcp::0-:8083"], GUEST)
    c = socket.create_connection(fwd.address(), timeout=10)
    stream, _ = listener.accept()
    c.sendall(b"x")
    assert stream.read(1) == b"x"
    t0 = time.monotonic()
    fwd.close()
    assert time.monotonic() - t0 < 2
    stream.set_read_timeout(5)
    with pytest.raises(ConnectionResetError):
        stream.read(10)
    with pytest.raises(ConnectionResetError):
        c.recv(10)
    c.close()
    stream.close()
    listener.close()


def test_udp_relay_per_peer_and_idle_expiry(stacks):
    us, guest = stacks
    server = guest.udp_bind(("0.0.0.0", 5353))

    def echo():
        while True:
            try:
                data, addr = server.recv_from(65535)
            except OSError:
                return
            server.send_to(data.upper() + f" {addr[0]}".encode(), addr)

    _serve(echo)
    fwd = HostForwarder(us, ["udp::0-:5353"], GUEST, udp_idle=0.5)
    peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for i, p in enumerate(peers):
            p.settimeout(5)
            for n in range(3):
                p.sendto(f"ping {i} {n}".encode(), fwd.address())
                assert p.recvfrom(2048) == (f"PING {i} {n} {US}".encode(), fwd.address())
        udp = fwd.forwards[0]
        assert len(udp.peers) == 2
        deadline = time.monotonic() + 5
        while udp.peers and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not udp.peers  # idle mappings dropped
        peers[0].sendto(b"again", fwd.address())  # a new mapping
        assert peers[0].recvfrom(2048)[0] == f"AGAIN {US}".encode()
        deadline = time.monotonic() + 2  # the relay counts after its sendto returns
        while udp.stats["to_host"] < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (udp.stats["to_guest"], udp.stats["to_host"], udp.stats["dropped"]) == (7, 7, 0)
    finally:
        for p in peers:
            p.close()
        fwd.close()
        server.close()


def _link_local(rt: Runtime) -> str:
    return str(rt.iface.link_local6)


def test_tcp_ipv6_both_sides(stacks):
    """`tcp:[::1]:0-[GUEST-LINK-LOCAL]:8080`: an AF_INET6 host socket, an IPv6 connection
    through our stack to the stand-in guest (which sees our link-local address)."""
    us, guest = stacks
    listener = guest.tcp_listen(("::", 8080))
    seen = []

    def server():
        stream, peer = listener.accept()
        seen.append(peer[0])
        got = stream.read_to_end()
        stream.write_all(hashlib.sha256(got).digest())
        stream.close()

    t = _serve(server)
    fwd = HostForwarder(us, [f"tcp:[::1]:0-[{_link_local(guest)}]:8080"], GUEST)
    try:
        assert fwd.address()[0] == "::1"
        data = os.urandom(256 * 1024)
        with socket.create_connection(fwd.address(), timeout=20) as c:
            assert c.family == socket.AF_INET6
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            got = b"".join(iter(lambda: c.recv(65536), b""))
        assert got == hashlib.sha256(data).digest()
        t.join(5)
        assert seen == [_link_local(us)]
    finally:
        fwd.close()
        listener.close()


@pytest.mark.parametrize("rule", ["tcp:127.0.0.1:0-[{guest6}]:8080", "tcp:[::1]:0-{guest4}:8080"])
def test_tcp_one_side_ipv6(stacks, rule):
    us, guest = stacks
    listener = guest.tcp_listen(("::", 8080))

    def server():
        stream, _ = listener.accept()
        stream.write_all(stream.read_to_end()[::-1])
        stream.close()

    t = _serve(server)
    fwd = HostForwarder(us, [rule.format(guest6=_link_local(guest), guest4=GUEST)], GUEST)
    try:
        with socket.create_connection(fwd.address(), timeout=20) as c:
            c.sendall(b"hello over hostfwd")
            c.shutdown(socket.SHUT_WR)
            assert b"".join(iter(lambda: c.recv(65536), b"")) == b"dwftsoh revo olleh"
        t.join(5)
    finally:
        fwd.close()
        listener.close()


def test_udp_ipv6_both_sides(stacks):
    us, guest = stacks
    server = guest.udp_bind(("::", 5353))

    def echo():
        while True:
            try:
                data, addr = server.recv_from(65535)
            except OSError:
                return
            server.send_to(data.upper() + f" {addr[0]}".encode(), addr)

    _serve(echo)
    fwd = HostForwarder(us, [f"udp:[::1]:0-[{_link_local(guest)}]:5353"], GUEST)
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as p:
            p.settimeout(5)
            for n in range(3):
                p.sendto(f"ping {n}".encode(), fwd.address())
                data, src = p.recvfrom(2048)
                assert data == f"PING {n} {_link_local(us)}".encode()
                assert src[:2] == fwd.address()
    finally:
        fwd.close()
        server.close()


def test_a_taken_ipv6_host_port_names_it_in_brackets(stacks):
    us, _ = stacks
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"hostfwd tcp:\[::1\]:{port}: .*in use"):
            HostForwarder(us, [f"tcp:[::1]:{port}-:80"], GUEST)


def test_a_taken_host_port_is_an_error_and_closes_the_others(stacks):
    us, _ = stacks
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"hostfwd tcp:127.0.0.1:{port}: .*in use"):
            HostForwarder(us, ["udp::0-:53", f"tcp::{port}-:80"], GUEST)
    assert not [t for t in threading.enumerate() if t.name.startswith("hostfwd-udp")]


# -- QEMU: the Linux guest's servers, reached from host sockets ----------------------------
MiB = 1 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Overrides conftest's `served` (so `vm`/`leased_vm` use it): the stack with
    forwards to the guest's httpd (8080), nc (9000) and a UDP port (9001)."""
    from apps.serve import make_server

    class ForwardingServed:  # conftest's Served, with hostfwd
        def __init__(self, path: str) -> None:
            self.server, self.stack, self.app = make_server(
                socket_path=path,
                hostfwd=["tcp:127.0.0.1:0-:8080", "tcp::0-:9000", "udp::0-:9001"])
            self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
            self.thread.start()

        def stop(self) -> None:
            self.app.hostfwd.close()
            self.stack.stop()
            self.server.stop()
            self.thread.join(5)
            self.server.close()

    s = ForwardingServed(str(tmp_path_factory.mktemp("hostfwd") / "vhost.sock"))
    yield s
    s.stop()


@pytest.mark.qemu
def test_host_fetches_from_the_guest_httpd(leased_vm, served):
    vm = leased_vm
    digest = vm.run_ok("mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1K "
                       "count=1024 2>/dev/null && sha256sum /tmp/www/blob && "
                       "httpd -p 8080 -h /tmp/www && echo started", timeout=60).split()[0]
    host, port = served.app.hostfwd.address(0)
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://{host}:{port}/blob", timeout=60) as resp:
        body = resp.read()
    took = time.monotonic() - t0
    print(f"\n1 MiB from the guest's httpd via hostfwd: {took:.2f} s")
    assert (resp.status, len(body), hashlib.sha256(body).hexdigest()) == (200, MiB, digest)


@pytest.mark.qemu
def test_host_sends_to_the_guest_nc(leased_vm, served):
    vm = leased_vm
    vm.run_ok("rm -f /tmp/nc.out; (nc -l -p 9000 > /tmp/nc.out 2>/dev/null &) ; sleep 0.3")
    data = os.urandom(256 * 1024)
    host, port = served.app.hostfwd.address(1)
    with socket.create_connection((host, port), timeout=30) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)  # nc sees EOF ...
        c.settimeout(30)
        assert c.recv(10) == b""  # ... and closes, which we see as EOF
    out = vm.run_ok("sleep 0.5; sha256sum /tmp/nc.out", timeout=30)
    assert out.split()[0] == hashlib.sha256(data).hexdigest(), out


@pytest.mark.qemu
def test_udp_to_the_guest(leased_vm, served):
    """`udp::0-:9001` to the guest's UDP echo server (vhn-udp -l, since busybox nc has no
    -u): each host datagram reaches the guest from our address and its echo comes back to
    the host socket from the forward's address; 4000 bytes too (IP fragments both ways)."""
    vm = leased_vm
    vm.run_ok("rm -f /tmp/udp.out; (vhn-udp -l 9001 -c 4 -v > /tmp/udp.out 2>&1 &) ; "
              "for i in $(seq 50); do grep -q listening /tmp/udp.out && break; sleep 0.1; "
              "done; cat /tmp/udp.out")
    host, port = served.app.hostfwd.address(2)
    sent = [b"hello guest over udp\n", b"second", b"", os.urandom(4000)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        for data in sent:
            s.sendto(data, (host, port))
            assert s.recvfrom(65536) == (data, (host, port))
    out = vm.run_ok("sleep 0.3; cat /tmp/udp.out; killall vhn-udp 2>/dev/null; true")
    lines = out.strip().splitlines()
    assert lines[0] == "listening on 9001" and lines[-1] == "echoed 4 datagrams", out
    # one relay mapping for the one host peer: the same source port for all four
    peers = [line.split() for line in lines[1:-1]]
    assert [p[2] for p in peers] == [str(len(d)) for d in sent], out
    assert {p[0] for p in peers} == {"10.0.2.2"} and len({p[1] for p in peers}) == 1, out
