"""IPv6 and dual stack in the UDP socket and the address rules (`netstack.socket.addr`).

Unit tests with hand-made `Ipv6Repr`s and a recording emit; the two-stack tests over a
loopback link (UDP and TCP over IPv6, dual-stack listeners, `pysocket` AF_INET6) follow.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from netstack.socket import addr as A
from netstack.socket.errors import AddrInUse, TooLarge, Unaddressable
from netstack.socket.set import PacketBuffer, SocketSet
from netstack.socket.udp import MAX_PAYLOAD, MAX_PAYLOAD_V6, UdpSocket
from netstack.wire.ipv4 import Ipv4Repr
from netstack.wire.ipv6 import Ipv6Repr
from netstack.wire.udp import UdpPacket, UdpRepr

L6 = IPv6Address("fd00:10:0:2::15")
R6 = IPv6Address("fd00:10:0:2::2")
L4 = IPv4Address("10.0.2.15")
R4 = IPv4Address("10.0.2.2")


class Recorder:
    def __init__(self) -> None:
        self.sent: list = []

    def __call__(self, dst, protocol, payload_len, fill, src=None, **kw) -> bool:
        assert protocol == 17
        assert not (dst.version == 6 and dst.ipv4_mapped is not None)
        real_src = src or (L6 if dst.version == 6 else L4)
        buf = bytearray(payload_len)
        fill(memoryview(buf), real_src, True)
        udp = UdpRepr.parse(UdpPacket(bytes(buf)), real_src, dst)  # checksum verified
        self.sent.append((dst, src, udp, bytes(UdpPacket(bytes(buf)).payload), kw))
        return True


def deliver(sock, src, dst, sport, dport, data=b"x"):
    udp = UdpRepr(sport, dport)
    ip = Ipv6Repr(src, dst, 17, 8 + len(data)) if src.version == 6 else \
        Ipv4Repr(src, dst, 17, 8 + len(data))
    if not sock.accepts(ip, udp):
        return False
    sock.process(0.0, ip, udp, memoryview(data), None)
    return True


# -- address rules -------------------------------------------------------------------------
def test_parse_addr_zone_and_default():
    assert A.parse_addr("fe80::1%eth0") == IPv6Address("fe80::1")
    assert A.parse_addr("", A.ANY6) == A.ANY6
    with pytest.raises(Unaddressable):
        A.parse_addr("not-an-ip")


def test_map_unmap():
    assert A.map6(R4) == IPv6Address("::ffff:10.0.2.2")
    assert A.unmap(A.map6(R4)) == R4
    assert A.unmap(R6) == R6 and A.map6(R6) == R6


# -- UDP socket -----------------------------------------------------------------------------
def test_udp_dual_stack_receive():
    s = UdpSocket()
    s.bind(("::", 5000))
    assert deliver(s, R6, L6, 1234, 5000, b"six")
    assert deliver(s, R4, L4, 1234, 5000, b"four")
    assert s.recv_from() == (b"six", (R6, 1234), False)
    assert s.recv_from() == (b"four", (R4, 1234), False)  # the real IPv4 sender


def test_udp_v6only_and_v4_sockets():
    s = UdpSocket()
    s.bind(("::", 5000), v6only=True)
    assert not deliver(s, R4, L4, 1234, 5000)
    assert deliver(s, R6, L6, 1234, 5000)
    v4 = UdpSocket()
    v4.bind(("0.0.0.0", 5000))
    assert not deliver(v4, R6, L6, 1234, 5000)
    specific = UdpSocket()
    specific.bind((str(L6), 5000))
    assert not deliver(specific, R6, IPv6Address("fd00::9"), 1234, 5000)
    assert deliver(specific, R6, L6, 1234, 5000)


def test_udp_send_both_families_from_dual_stack():
    s = UdpSocket()
    s.bind(("::", 5000))
    s.send_to(b"a", (str(R6), 53))
    s.send_to(b"b", ("::ffff:10.0.2.2", 53))
    rec = Recorder()
    s.dispatch(0.0, rec)
    (d1, s1, u1, p1, k1), (d2, s2, u2, p2, k2) = rec.sent
    assert (d1, s1, u1.src_port, u1.dst_port, p1) == (R6, None, 5000, 53, b"a")
    assert (d2, s2, p2) == (R4, None, b"b")  # mapped: sent as IPv4
    assert k1["ttl"] == 64


def test_udp_send_from_specific_v6_source():
    s = UdpSocket()
    s.bind((str(L6), 0))
    s.send_to(b"a", (str(R6), 53))
    rec = Recorder()
    s.dispatch(0.0, rec)
    assert rec.sent[0][1] == L6


@pytest.mark.parametrize("bound, v6only, dst", [
    ("0.0.0.0", False, "fd00::2"),
    ("10.0.2.15", False, "fd00::2"),
    ("::", True, "10.0.2.2"),
    ("::", True, "::ffff:10.0.2.2"),
    ("fd00::15", False, "10.0.2.2"),
    ("::", False, "::"),
    ("::", False, "0.0.0.0"),
])
def test_udp_send_refused(bound, v6only, dst):
    s = UdpSocket()
    s.bind((bound, 5000), v6only=v6only)
    with pytest.raises(Unaddressable):
        s.send_to(b"x", (dst, 53))
    assert not s.tx


def test_udp_max_payload_v6():
    s = UdpSocket(tx_buffer=PacketBuffer(4, 1 << 20))
    s.bind(("::", 5000))
    s.send_to(bytes(MAX_PAYLOAD_V6), (str(R6), 9))
    with pytest.raises(TooLarge):
        s.send_to(bytes(MAX_PAYLOAD_V6 + 1), (str(R6), 9))
    with pytest.raises(TooLarge):
        s.send_to(bytes(MAX_PAYLOAD + 1), ("::ffff:10.0.2.2", 9))


@pytest.mark.parametrize("a, a6, b, b6, clash", [
    ("::", False, "0.0.0.0", False, True),
    ("0.0.0.0", False, "::", False, True),
    ("::", True, "0.0.0.0", False, False),
    ("0.0.0.0", False, "::", True, False),
    ("::", True, "::", True, True),
    ("fd00::15", False, "::", True, True),
    ("fd00::15", False, "10.0.2.15", False, False),
    ("10.0.2.15", False, "::", False, True),
    ("10.0.2.15", False, "::", True, False),
])
def test_udp_port_clash_rules(a, a6, b, b6, clash):
    sockets = SocketSet()
    first = UdpSocket()
    first.bind((a, 7000), v6only=a6)
    sockets.add(first)
    second = UdpSocket()
    sockets.add(second)
    if clash:
        with pytest.raises(AddrInUse):
            second.bind((b, 7000), v6only=b6)
    else:
        second.bind((b, 7000), v6only=b6)


def test_udp_bind_mapped_is_ipv4():
    s = UdpSocket()
    s.bind(("::ffff:10.0.2.15", 5000))
    assert s.endpoint == (L4, 5000)
    assert deliver(s, R4, L4, 1, 5000)
    with pytest.raises(Unaddressable):
        UdpSocket().bind(("::ffff:10.0.2.15", 5000), v6only=True)


# -- two stacks over a loopback link -------------------------------------------------------
A6, B6 = "fd00:9::1", "fd00:9::2"


@pytest.fixture
def pair6():
    """Two of our stacks with IPv4 (10.9.0.1/2) and IPv6 (fd00:9::1/2) over a loopback
    link, as `pair`."""
    import time

    from netstack.iface.interface import Interface, InterfaceConfig
    from netstack.runtime import Runtime
    from netstack.wire.ethernet import EthernetAddress
    from netstack.wire.ipv4 import Ipv4Cidr
    from netstack.wire.ipv6 import Ipv6Cidr
    from tests.test_net_udp import A_IP, B_IP, link

    if "ipv6_addrs" not in InterfaceConfig.__dataclass_fields__:
        pytest.skip("the interface has no IPv6 yet")

    def stack(last: int, ip4: str, ip6: str, device) -> Runtime:
        mac = EthernetAddress(bytes([2, 0, 0, 0, 0, last]))
        return Runtime(Interface(InterfaceConfig(mac, [Ipv4Cidr.parse(ip4 + "/24")],
                                                 ipv6_addrs=[Ipv6Cidr.parse(ip6 + "/64")])),
                       device)

    da, db = link()
    ra, rb = stack(1, A_IP, A6, da), stack(2, B_IP, B6, db)
    ra.start()
    rb.start()
    yield ra, rb
    for rt in (ra, rb):
        t0 = time.monotonic()
        rt.stop()
        assert time.monotonic() - t0 < 1.0 and not rt.running
    da.close()
    db.close()


def _serve_echo_once(listener, result):
    import threading

    def run():
        stream, peer = listener.accept()
        result.append(peer)
        with stream:
            while data := stream.read(65536):
                stream.write_all(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_dual_stack_listener_sees_ipv4_client_mapped(pair):
    """Works on the IPv4 path alone: a `::` listener takes an IPv4 connection and reports
    the peer as Linux does on an AF_INET6 socket."""
    from netstack.net import SocketAddrV4, SocketAddrV6, TcpListener, TcpStream
    from tests.test_net_udp import A_IP, B_IP

    ra, rb = pair
    listener = TcpListener.bind(rb, ("::", 7100))
    assert listener.local_addr() == SocketAddrV6("::", 7100, 0, 0)
    peers: list = []
    t = _serve_echo_once(listener, peers)
    with TcpStream.connect(ra, (B_IP, 7100), timeout=5) as c:
        assert isinstance(c.peer_addr(), SocketAddrV4) and c.peer_addr() == (B_IP, 7100)
        c.write_all(b"hello")
        assert c.read_exact(5) == b"hello"
        c.shutdown("write")
        assert c.read() == b""
    t.join(5)
    assert peers[0].host == f"::ffff:{A_IP}" and isinstance(peers[0], SocketAddrV6)
    listener.close()


def test_v6only_listener_refuses_ipv4_client(pair):
    from netstack.net import TcpListener, TcpStream
    from tests.test_net_udp import B_IP

    ra, rb = pair
    listener = TcpListener.bind(rb, ("::", 7101), v6only=True)
    with pytest.raises(ConnectionRefusedError):
        TcpStream.connect(ra, (B_IP, 7101), timeout=5)
    v4 = TcpListener.bind(rb, ("0.0.0.0", 7101))  # no clash with a v6-only ::
    v4.close()
    listener.close()


def test_net_port_clash_rules(pair):
    import errno

    from netstack.net import TcpListener, UdpSocket

    _ra, rb = pair
    dual = TcpListener.bind(rb, ("::", 7102))
    with pytest.raises(OSError) as e:
        TcpListener.bind(rb, ("0.0.0.0", 7102))
    assert e.value.errno == errno.EADDRINUSE
    dual.close()
    u = UdpSocket.bind(rb, ("0.0.0.0", 7103))
    with pytest.raises(OSError) as e:
        UdpSocket.bind(rb, ("::", 7103))
    assert e.value.errno == errno.EADDRINUSE
    UdpSocket.bind(rb, ("::", 7103), v6only=True).close()
    u.close()


def test_udp_dual_stack_over_ipv4_reports_mapped(pair):
    from netstack.net import SocketAddrV6, UdpSocket
    from tests.test_net_udp import A_IP, B_IP

    ra, rb = pair
    server = UdpSocket.bind(rb, ("::", 7104, 0, 0))
    server.set_read_timeout(5)
    client = UdpSocket.bind(ra, ("0.0.0.0", 0))
    client.send_to(b"ping", (B_IP, 7104))
    data, peer = server.recv_from(100)
    assert data == b"ping" and isinstance(peer, SocketAddrV6)
    assert peer.host == f"::ffff:{A_IP}"
    server.send_to(b"pong", peer)  # a mapped destination goes out as IPv4
    client.set_read_timeout(5)
    assert client.recv_from(100) == (b"pong", (B_IP, 7104))
    server.close()
    client.close()


def test_net_address_forms():
    from netstack.net import SocketAddrV4, SocketAddrV6, _endpoint, _to_address

    assert _endpoint(("fe80::1%eth0", 80)) == (IPv6Address("fe80::1"), 80)
    assert _endpoint(("fd00::1", 80, 0, 3)) == (IPv6Address("fd00::1"), 80)
    assert _endpoint(("", 80), v6=True) == (A.ANY6, 80)
    assert _to_address((R4, 1)) == SocketAddrV4("10.0.2.2", 1) == ("10.0.2.2", 1)
    assert _to_address((R4, 1), v6=True) == ("::ffff:10.0.2.2", 1, 0, 0)
    assert _to_address((R6, 1)) == SocketAddrV6(str(R6), 1)
    host, port = _to_address((R4, 1))
    assert (host, port) == ("10.0.2.2", 1)


# -- over IPv6 (needs the interface's IPv6) -------------------------------------------------
def test_tcp_100_kib_over_ipv6(pair6):
    import hashlib
    import os

    from netstack.net import SocketAddrV6, TcpListener, TcpStream

    ra, rb = pair6
    listener = TcpListener.bind(rb, ("::", 7200))
    peers: list = []
    t = _serve_echo_once(listener, peers)
    blob = os.urandom(100 * 1024)
    with TcpStream.connect(ra, (B6, 7200), timeout=5) as c:
        assert c.peer_addr() == SocketAddrV6(B6, 7200)
        assert c.local_addr().host == A6
        c.write_all(blob)
        c.shutdown("write")
        got = c.read_to_end()
    t.join(5)
    assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
    assert peers[0] == SocketAddrV6(A6, peers[0].port)
    listener.close()


def test_dual_stack_listener_accepts_v4_and_v6(pair6):
    from netstack.net import TcpListener, TcpStream
    from tests.test_net_udp import A_IP, B_IP

    ra, rb = pair6
    listener = TcpListener.bind(rb, ("::", 7201))
    listener.set_timeout(5)
    c4 = TcpStream.connect(ra, (B_IP, 7201), timeout=5)
    s4, p4 = listener.accept()
    c6 = TcpStream.connect(ra, (B6, 7201), timeout=5)
    s6, p6 = listener.accept()
    assert p4.host == f"::ffff:{A_IP}" and p6.host == A6
    for c, s in ((c4, s4), (c6, s6)):
        c.write_all(b"x" * 3000)
        assert s.read_exact(3000) == b"x" * 3000
        c.close()
        s.close()
    listener.close()


def test_v6only_listener_over_ipv6(pair6):
    from netstack.net import TcpListener, TcpStream
    from tests.test_net_udp import B_IP

    ra, rb = pair6
    listener = TcpListener.bind(rb, ("::", 7202), v6only=True)
    with pytest.raises(ConnectionRefusedError):
        TcpStream.connect(ra, (B_IP, 7202), timeout=5)
    with TcpStream.connect(ra, (B6, 7202), timeout=5):
        pass
    listener.close()


def test_udp_over_ipv6(pair6):
    import os

    from netstack.net import SocketAddrV6, UdpSocket

    ra, rb = pair6
    server = UdpSocket.bind(rb, ("::", 7203))
    server.set_read_timeout(5)
    client = UdpSocket.bind(ra, ("::", 0))
    client.set_read_timeout(5)
    blobs = [os.urandom(n) for n in (1, 1200, 8000, 60000)]
    for blob in blobs:
        client.send_to(blob, (B6, 7203))
        data, peer = server.recv_from(65536)
        assert data == blob and peer.host == A6
        server.send_to(data, peer)
        assert client.recv_from(65536) == (blob, SocketAddrV6(B6, 7203))
    server.close()
    client.close()


def test_http_server_over_pysocket_af_inet6(pair6):
    import http.server
    import threading
    import urllib.request

    from netstack import pysocket

    ra, rb = pair6

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"hi {self.client_address[0]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server6(http.server.HTTPServer):
        address_family = pysocket.AF_INET6

    server = pysocket.make_server_class(Server6, rb)(("::", 8080), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pysocket.patch(ra):
            with urllib.request.urlopen(f"http://[{B6}]:8080/", timeout=5) as r:
                assert r.read() == f"hi {A6}".encode()
            with urllib.request.urlopen("http://10.9.0.2:8080/", timeout=5) as r:
                assert r.read() == b"hi ::ffff:10.9.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_pysocket_af_inet6_names_and_options(pair):
    import errno
    import socket as std

    from netstack import pysocket
    from tests.test_net_udp import A_IP, B_IP

    ra, rb = pair
    info = pysocket.getaddrinfo("fd00::1", 80, 0, pysocket.SOCK_STREAM)
    assert info == [(std.AF_INET6, std.SOCK_STREAM, 6, "", ("fd00::1", 80, 0, 0))]
    assert pysocket.getaddrinfo("10.0.0.1", 80, pysocket.AF_INET6, pysocket.SOCK_DGRAM)[0][4] \
        == ("::ffff:10.0.0.1", 80, 0, 0)
    with pysocket.socket(pysocket.AF_INET, runtime=ra) as s4:
        with pytest.raises(std.gaierror):
            s4.bind(("fd00::1", 0))
        with pytest.raises(OSError) as e:
            s4.setsockopt(pysocket.IPPROTO_IPV6, pysocket.IPV6_V6ONLY, 1)
        assert e.value.errno == errno.ENOPROTOOPT
    srv = pysocket.socket(pysocket.AF_INET6, runtime=rb)
    assert srv.getsockopt(pysocket.IPPROTO_IPV6, pysocket.IPV6_V6ONLY) == 0
    srv.bind(("", 7300))
    with pytest.raises(OSError):
        srv.setsockopt(pysocket.IPPROTO_IPV6, pysocket.IPV6_V6ONLY, 1)  # after bind
    assert srv.getsockname() == ("::", 7300, 0, 0)
    srv.listen()
    srv.settimeout(5)
    with pysocket.create_connection((B_IP, 7300), timeout=5, runtime=ra) as c:
        conn, peer = srv.accept()
        assert peer == (f"::ffff:{A_IP}", c.getsockname()[1], 0, 0)
        assert conn.getsockname() == (f"::ffff:{B_IP}", 7300, 0, 0)
        c.sendall(b"ok")
        assert conn.recv(10) == b"ok"
        conn.close()
    srv.close()
    only = pysocket.socket(pysocket.AF_INET6, pysocket.SOCK_DGRAM, runtime=rb)
    only.setsockopt(pysocket.IPPROTO_IPV6, pysocket.IPV6_V6ONLY, 1)
    only.bind(("::", 7301))
    assert only.getsockopt(pysocket.IPPROTO_IPV6, pysocket.IPV6_V6ONLY) == 1
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM, runtime=rb) as v4:
        v4.bind(("0.0.0.0", 7301))  # no clash with a v6-only socket
    with pytest.raises(OSError):
        only.sendto(b"x", ("10.9.0.1", 9))  # v6-only: no IPv4
    only.close()


# -- ICMP and raw sockets -------------------------------------------------------------------
def test_icmp_socket_echo_v6():
    from netstack.socket.icmp import IcmpSocket
    from netstack.wire.icmpv6 import Icmpv6Message, Icmpv6Packet, Icmpv6Repr

    s = IcmpSocket()
    s.bind(0x1234)
    s.send_echo_request(str(R6), 7, b"ping")
    sent = []

    def emit(dst, protocol, n, fill, src=None, **kw):
        buf = bytearray(b"\xa5" * n)
        fill(memoryview(buf), L6, True)
        sent.append((dst, protocol, bytes(buf)))
        return True

    s.dispatch(0.0, emit)
    [(dst, proto, msg)] = sent
    assert dst == R6 and proto == 58
    req = Icmpv6Repr.parse(Icmpv6Packet(msg), L6, R6)  # checksum over the pseudo-header
    assert (req.msg_type, req.ident, req.seq_no, req.data) == (128, 0x1234, 7, b"ping")
    reply = Icmpv6Repr.echo_reply(0x1234, 7, b"ping")
    buf = bytearray(reply.buffer_len())
    reply.emit(Icmpv6Packet(buf), R6, L6)
    ip = Ipv6Repr(R6, L6, 58, len(buf))
    assert s.accepts(ip, reply)
    s.process(0.0, ip, reply, memoryview(buf))
    assert not s.accepts(ip, Icmpv6Repr.echo_reply(0x9999, 7, b""))
    got, src = s.recv_repr()
    assert src == R6 and got.msg_type == Icmpv6Message.ECHO_REPLY and got.data == b"ping"


def test_icmp_socket_v6_error_quoting_our_udp_port():
    from netstack.socket.icmp import IcmpSocket
    from netstack.wire.icmpv6 import Icmpv6Message, Icmpv6Repr

    s = IcmpSocket()
    s.bind(udp_port=5000)
    quote = bytes(6) + bytes([17]) + bytes(33) + (5000).to_bytes(2, "big") + bytes(6)
    err = Icmpv6Repr(Icmpv6Message.DST_UNREACHABLE, 4, 0, 0, 0, 0, quote)
    assert s.accepts(Ipv6Repr(R6, L6, 58, 8 + len(quote)), err)
    other = quote[:40] + (5001).to_bytes(2, "big") + bytes(6)
    assert not s.accepts(Ipv6Repr(R6, L6, 58, 8 + len(quote)),
                         Icmpv6Repr(Icmpv6Message.DST_UNREACHABLE, 4, 0, 0, 0, 0, other))


def test_raw_socket_families():
    from netstack.socket.raw import RawSocket

    v4, v6 = RawSocket(253), RawSocket(253, version=6)
    ip6 = Ipv6Repr(R6, L6, 253, 4)
    ip4 = Ipv4Repr(R4, L4, 253, 4)
    assert v6.accepts(ip6) and not v6.accepts(ip4)
    assert v4.accepts(ip4) and not v4.accepts(ip6)
    v6.send_to(b"abcd", str(R6))
    with pytest.raises(Unaddressable):
        v6.send_to(b"abcd", str(R4))
    with pytest.raises(Unaddressable):
        v4.send_to(b"abcd", str(R6))
