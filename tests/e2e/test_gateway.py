"""The gateway with a real Linux guest (QEMU, TCG) on `vhostnet serve`'s default stack: the
guest reaches an "internet" (a network namespace this test makes, 198.51.100.2 and
2001:db8:1::2 behind a veth from the host) and the host's own loopback through 10.0.2.2,
by TCP and UDP, with every byte checked; refused ports are refused at once; many flows
at once are all exact; when the guest goes away every host socket is closed.

Nothing here sends a packet anywhere but to this machine's loopback and to the
namespace the test made (documentation addresses)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from apps.stack import StackConfig
from gateway import GatewayConfig
from tests.e2e.conftest import GUEST_MAC, Served
from tests.gateway.internet import (
    HTTP,
    NET4,
    PEER4,
    PEER6,
    UDP,
    internet_namespace,
    spawn_peer,
    stop_peer,
)
from tests.gateway.peer import pattern_sha256

pytestmark = [pytest.mark.qemu]

MiB = 1 << 20


@pytest.fixture(scope="module")
def internet():
    """The namespace of tests/gateway/internet.py, for the module."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the internet namespace needs root and iproute2")
    with internet_namespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def host_peer():
    """The peer on the host's loopback (127.0.0.1 and ::1), on free ports."""
    ports = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    proc = spawn_peer([], str(ports[0]), str(ports[1]), "127.0.0.1", "::1")
    yield ports[0], ports[1]
    stop_peer(proc)


@pytest.fixture(scope="module")
def dns_server():
    """A DNS server on the host's loopback (scapy builds its answers): example.test is
    198.51.100.7, silent.test is never answered, anything else NXDOMAIN. Yields its port
    and the names it was asked."""
    import threading

    from scapy.layers.dns import DNS, DNSRR

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    asked: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = DNS(data)
            qd = q.qd[0] if isinstance(q.qd, list) else q.qd
            name = qd.qname.decode().rstrip(".")
            asked.append(name)
            if name == "silent.test":
                continue
            if name == "big.test":  # too big for UDP: truncated, no answers
                r = DNS(id=q.id, qr=1, aa=1, tc=1, rd=q.rd, ra=1, qd=[qd])
            elif name == "example.test":  # (A: the address; AAAA: no data)
                an = [DNSRR(rrname=qd.qname, type="A", ttl=60, rdata="198.51.100.7")] \
                    if qd.qtype == 1 else []
                r = DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=[qd], an=an)
            else:
                r = DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, rcode=3, qd=[qd])
            sock.sendto(bytes(r), peer)

    big_an = [DNSRR(rrname="big.test.", type="A", ttl=60, rdata=f"198.51.100.{i}")
              for i in range(1, 41)]  # 40 records: more than 512 bytes

    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", sock.getsockname()[1]))
    tcp.listen(8)
    tcp.settimeout(0.5)

    def tcp_loop() -> None:  # big.test in full over TCP
        while not stop.is_set():
            try:
                c, _ = tcp.accept()
            except TimeoutError:
                continue
            with c:
                c.settimeout(5)
                n = int.from_bytes(c.recv(2), "big")
                data = b""
                while len(data) < n:
                    data += c.recv(n - len(data))
                q = DNS(data)
                qd = q.qd[0] if isinstance(q.qd, list) else q.qd
                asked.append("tcp:" + qd.qname.decode().rstrip("."))
                r = bytes(DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=[qd], an=big_an))
                c.sendall(len(r).to_bytes(2, "big") + r)

    threads = [threading.Thread(target=loop, daemon=True),
               threading.Thread(target=tcp_loop, daemon=True)]
    for t in threads:
        t.start()
    yield sock.getsockname()[1], asked
    stop.set()
    for t in threads:
        t.join(2)
    sock.close()
    tcp.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, dns_server):
    """This module's backend: the default stack, DNS forwarded to the test's server (no
    query ever leaves the machine)."""
    config = StackConfig()
    config.gateway = GatewayConfig(dns_forward=[f"127.0.0.1:{dns_server[0]}"])
    s = Served(str(tmp_path_factory.mktemp("gw") / "vhost.sock"), config)
    yield s
    s.stop()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_download_and_upload_through_nat(leased_vm, internet, served):
    n = 16 * MiB
    t0 = time.monotonic()
    out = leased_vm.run_ok(f"wget -q -O - http://{PEER4}:{HTTP}/bytes/{n} | sha256sum",
                           timeout=600)
    took = time.monotonic() - t0
    print(f"\n16 MiB through NAT: {took:.1f} s, {n / took / MiB:.1f} MiB/s")
    assert out.split()[0] == pattern_sha256(n)
    up = leased_vm.run_ok("head -c 9000000 /dev/urandom | tr -d '\\000' | head -c 8388608 "
                          "> /tmp/gwup && sha256sum /tmp/gwup", timeout=120).split()[0]
    got = leased_vm.run_ok(f"wget -q --post-file=/tmp/gwup -O - http://{PEER4}:{HTTP}/sink",
                           timeout=600)
    assert got.strip() == up
    # the peer saw the host's address (NAT), not the guest's
    peer = leased_vm.run_ok(f"wget -q -O - http://{PEER4}:{HTTP}/peer").split()
    assert peer[0] == NET4.split("/")[0]
    st = served.stack.gateway.status()
    assert st["counters"]["tcp_opened"] >= 3


def test_host_loopback_through_the_gateway_address(leased_vm, host_peer):
    http, udp = host_peer
    n = 4 * MiB
    out = leased_vm.run_ok(f"wget -q -O - http://10.0.2.2:{http}/bytes/{n} | sha256sum",
                           timeout=300)
    assert out.split()[0] == pattern_sha256(n)
    # our own apps keep their ports: 80 is our HTTP server, not the host's
    assert "vhostnet" in leased_vm.run_ok("wget -q -O - http://10.0.2.2/")
    out = leased_vm.run_ok(f"echo -n loopback | vhn-udp 10.0.2.2 {udp}")
    assert out.strip() == "loopback"


def test_udp_4000_byte_datagrams_both_ways(leased_vm, internet, served):
    out = leased_vm.run_ok(f"vhn-udp -q -n 20 -s 4000 {PEER4} {UDP}", timeout=60)
    assert out.strip() == "20/20 replies", out
    st = served.stack.gateway.status()
    assert st["udp_flows"] >= 1
    flows = [f for f in st["flows"] if f["proto"] == "udp"]
    assert any(f["down"] >= 20 * 4000 for f in flows), flows


def test_a_refused_port_is_refused_at_once(leased_vm, internet):
    t0 = time.monotonic()
    res = leased_vm.run(f"wget -q -O /dev/null http://{PEER4}:1/", timeout=30)
    took = time.monotonic() - t0
    assert res.rc != 0 and "refused" in res.output.lower(), res.output
    assert took < 1.0, f"refused after {took:.2f} s"


def test_ipv6_through_nat(leased_vm, internet):
    leased_vm.run_ok("for i in $(seq 50); do ip -6 route | grep -q default && break; "
                     "sleep 0.2; done; ip -6 route | grep default", timeout=30)
    n = 2 * MiB
    out = leased_vm.run_ok(f"wget -q -O - http://[{PEER6}]:{HTTP}/bytes/{n} | sha256sum",
                           timeout=300)
    assert out.split()[0] == pattern_sha256(n)
    out = leased_vm.run_ok(f"vhn-udp -q -n 5 -s 1000 {PEER6} {UDP}", timeout=60)
    assert out.strip() == "5/5 replies", out


def test_ping_and_ping6_through_the_host(leased_vm, internet, served):
    out = leased_vm.run_ok(f"ping -c 5 -i 0.2 -s 1400 {PEER4}", timeout=60)
    assert "5 packets received" in out, out
    leased_vm.run_ok("for i in $(seq 50); do ip -6 route | grep -q default && break; "
                     "sleep 0.2; done", timeout=30)
    out = leased_vm.run_ok(f"ping -c 5 -i 0.2 {PEER6}", timeout=60)
    assert "5 packets received" in out, out
    # an address nobody has: no reply is made up in its name
    res = leased_vm.run("ping -c 2 -W 1 198.51.100.99", timeout=30)
    assert "0 packets received" in res.output, res
    c = served.stack.gateway.status()["counters"]
    assert c["icmp_replies"] >= 10, c


def test_many_flows_at_once_all_exact(leased_vm, internet, served):
    k = 500
    script = (f"cd /tmp && rm -f f.* && sh -c 'for i in $(seq {k}); do "
              f"(wget -q -O - http://{PEER4}:{HTTP}/bytes/$((40000 + i)) | sha256sum > f.$i) & "
              "done; wait' && cat f.* | sort | uniq | wc -l; ls f.* | wc -l")
    t0 = time.monotonic()
    out = leased_vm.run_ok(script, timeout=900).split()
    print(f"\n{k} flows at once: {time.monotonic() - t0:.1f} s; gateway "
          f"{served.stack.gateway.status()['counters']}")
    assert out == [str(k), str(k)], out  # k distinct sizes: k distinct hashes
    got = set(leased_vm.run_ok("cat /tmp/f.* | cut -d' ' -f1", timeout=60).split())
    assert got == {pattern_sha256(40000 + i) for i in range(1, k + 1)}


def test_the_guest_going_away_closes_every_host_socket(tmp_path, guest_image, internet):
    from apps.harness.vm import QemuVM, vhost_user_nic_args

    served = Served(str(tmp_path / "gw.sock"))
    try:
        base = _fds()
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(served.server.socket_path,
                                                              mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            # 20 connections held open (nc waits on its stdin), and a UDP flow
            vm.run_ok(f"for i in $(seq 20); do (sleep 600 | nc {PEER4} {HTTP} >/dev/null &) ;"
                      f" done; echo -n x | vhn-udp {PEER4} {UDP}", timeout=60)
            deadline = time.monotonic() + 30
            while served.stack.gateway.status()["tcp_flows"] < 20:
                assert time.monotonic() < deadline, served.stack.gateway.status()
                time.sleep(0.2)
            assert _fds() >= base + 21
        deadline = time.monotonic() + 10
        while _fds() > base and time.monotonic() < deadline:
            time.sleep(0.1)
        st = served.stack.gateway.status()
        assert st["tcp_flows"] == 0 and st["udp_flows"] == 0, st
        assert _fds() <= base, (base, _fds())
    finally:
        served.stop()


def test_dns_forwarding(leased_vm, dns_server, served):
    _port, asked = dns_server
    out = leased_vm.run_ok("nslookup example.test 10.0.2.3")
    assert "198.51.100.7" in out, out
    res = leased_vm.run("nslookup nosuch.test 10.0.2.3")
    assert "NXDOMAIN" in res.output or "can't find" in res.output, res
    # our own names stay ours: never forwarded
    assert "10.0.2.2" in leased_vm.run_ok("nslookup gateway.vhostnet 10.0.2.3")
    assert "gateway.vhostnet" not in asked and "example.test" in asked
    # no answer upstream: SERVFAIL (busybox's nslookup takes it as "try another server"
    # and times out, so the query is sent raw and the answer's header read back)
    query = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
             b"\x06silent\x04test\x00\x00\x01\x00\x01")
    octal = "".join(f"\\{b:03o}" for b in query)
    t0 = time.monotonic()
    out = leased_vm.run_ok(f"printf '{octal}' | vhn-udp -w 8 10.0.2.3 53 | od -An -tx1 | "
                           "head -1", timeout=60)
    took = time.monotonic() - t0
    head = out.split()[:4]
    assert head[:2] == ["12", "34"] and int(head[3], 16) & 15 == 2, (out, took)  # SERVFAIL
    assert took < 5.0, took
    c = served.stack.gateway.status()["counters"]
    assert c["dns_forwarded"] >= 3 and c["dns_servfail"] >= 1, c


def _unmapped(words: list[str]) -> list[str]:
    return [w.removeprefix("[::ffff:").removesuffix("]") for w in words]


def test_hostfwd_shows_the_guest_the_real_client(leased_vm, internet, served):
    """A forwarded connection comes from the client's own address and port (libslirp
    shows every one as 10.0.2.2): the guest's httpd CGI prints what it saw."""
    from gateway.hostfwd import HostForwarder

    leased_vm.run_ok("mkdir -p /tmp/www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: "
                     "text/plain\\necho\\necho \"$REMOTE_ADDR $REMOTE_PORT\"\\n' > "
                     "/tmp/www/cgi-bin/peer && chmod +x /tmp/www/cgi-bin/peer && "
                     "httpd -p 8000 -h /tmp/www && sleep 0.5 && "
                     "wget -q -O - http://127.0.0.1:8000/cgi-bin/peer")
    leased_vm.run_ok("(vhn-udp -l 9000 -c 1 -v > /tmp/udpv 2>&1 &) ; sleep 0.3")
    fwd = HostForwarder(served.stack.runtime, ["tcp:0.0.0.0:0-:8000", "udp:127.0.0.1:0-:9000"],
                        str(served.stack.config.dhcp_first),
                        source=served.stack.gateway.hostfwd_source)
    try:
        port = fwd.address()[1]
        # from the host's loopback: the guest sees 10.0.2.2 (standing for it), our port
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            cport = c.getsockname()[1]
            c.sendall(b"GET /cgi-bin/peer HTTP/1.0\r\n\r\n")
            body = b""
            while chunk := c.recv(4096):
                body += chunk
        # (busybox httpd listens on :: and writes IPv4 peers as [::ffff:a.b.c.d])
        assert _unmapped(body.decode().split()[-2:]) == ["10.0.2.2", str(cport)], body
        # from the internet namespace: its own address and port
        out = subprocess.run(
            ["ip", "netns", "exec", internet, sys.executable, "-c",
             "import socket,sys\n"
             f"c = socket.create_connection(('198.51.100.1', {port}), timeout=30)\n"
             "c.sendall(b'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n')\n"
             "b = b''\n"
             "while (d := c.recv(4096)): b += d\n"
             "print(c.getsockname()[1], *b.decode().split()[-2:])"],
            capture_output=True, text=True, timeout=60, check=True).stdout.split()
        assert _unmapped(out[1:]) == [PEER4, out[0]], out
        # UDP too: the guest's echo server saw the datagram come from 10.0.2.2, our port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(10)
            u.sendto(b"hello", ("127.0.0.1", fwd.address(1)[1]))
            assert u.recvfrom(100)[0] == b"hello"
            uport = u.getsockname()[1]
        seen = leased_vm.run_ok("grep -v listening /tmp/udpv").split()
        assert _unmapped(seen[:3]) == ["10.0.2.2", str(uport), "5"], seen
    finally:
        fwd.close()
        leased_vm.run("killall httpd")


def _raw_query(qid: bytes, name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x01\x00\x01"


def test_a_truncated_answer_then_the_same_question_over_tcp(leased_vm, dns_server):
    _port, asked = dns_server
    q = _raw_query(b"\x43\x21", "big.test")
    octal = "".join(f"\\{b:03o}" for b in q)
    out = leased_vm.run_ok(f"printf '{octal}' | vhn-udp -w 5 10.0.2.3 53 | od -An -tx1 | "
                           "head -1", timeout=60).split()
    assert out[:2] == ["43", "21"] and int(out[2], 16) & 0x02, out  # TC, relayed as it was
    framed = len(q).to_bytes(2, "big") + q
    octal = "".join(f"\\{b:03o}" for b in framed)
    out = leased_vm.run_ok(f"printf '{octal}' | nc -w 3 10.0.2.3 53 | od -An -tx1 -v | "
                           "tr -s ' \\n' ' '", timeout=60).split()
    # length, then the answer: our id back, 40 answers
    assert out[2:4] == ["43", "21"] and int(out[8] + out[9], 16) == 40, out
    assert "tcp:big.test" in asked
