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
