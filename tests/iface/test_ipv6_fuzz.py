"""Hostile bytes through `Interface.poll` (ADVERSARIAL.md: no crash, bounded output): random
bytes after a valid Ethernet + IPv6 header, random IPv6 headers, and random bodies behind
each ICMPv6 / extension header type we dispatch on. Nothing may raise out of `poll`, and
nothing we send may exceed the device MTU."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Ether
from scapy.packet import fuzz, raw

from netstack.iface import Interface, InterfaceConfig
from netstack.socket import SocketSet
from netstack.socket.icmp import IcmpSocket
from netstack.socket.raw import RawSocket
from netstack.socket.tcp.listener import TcpListener
from netstack.socket.udp import UdpSocket
from netstack.wire.icmpv6 import fill_checksum
from netstack.wire.ipv6 import Ipv6Cidr
from tests.iface.test_interface import Dev
from tests.iface.test_ipv6 import GLOBAL, LL, MAC, PEER, PEER_LL, PEER_MAC

MTU = 1280
_ETH = bytes.fromhex("020000000001") + bytes.fromhex(PEER_MAC.replace(":", "")) + b"\x86\xdd"
_ETH_MCAST = bytes.fromhex("333300000001") + bytes.fromhex(PEER_MAC.replace(":", "")) + \
    b"\x86\xdd"
_ADDRS = [PEER, PEER_LL, GLOBAL, LL, "ff02::1", "::", "ff02::1:ff00:1", "ff02::16"]


def _addr(text: str) -> bytes:
    return IPv6Address(text).packed


def _iface():
    cfg = InterfaceConfig(MAC, [], ipv6_addrs=[Ipv6Cidr.parse(GLOBAL + "/64")])
    iface = Interface(cfg, 0.0)
    dev = Dev(mtu=MTU)
    sockets = SocketSet()
    icmp = IcmpSocket()
    icmp.bind(0x4242)
    icmp_udp = IcmpSocket()
    icmp_udp.bind(udp_port=5000)
    udp = UdpSocket()
    udp.bind(("::", 5000))
    tcp = TcpListener()
    tcp.listen(("::", 80))
    for sock in (icmp, icmp_udp, udp, tcp, RawSocket(253, version=6)):
        sockets.add(sock)
    iface.poll(0.0, dev, sockets)
    dev.tx.clear()
    return iface, dev, sockets


def _run(frames: list[bytes], now: float = 1.0) -> None:
    iface, dev, sockets = _iface()
    for f in frames:
        dev.rx.append(f)
    iface.poll(now, dev, sockets)
    iface.poll(now + 100.0, dev, sockets)  # timers: reassembly expiry, ND probes
    for f in dev.tx:
        assert len(f) <= 14 + MTU, len(f)


def _header(nh: int, hlim: int, src: str, dst: str, payload: bytes,
            plen: int | None = None) -> bytes:
    n = len(payload) if plen is None else plen
    return struct.pack("!IHBB", 0x60000000, n, nh, hlim) + _addr(src) + _addr(dst) + payload


_settings = settings(max_examples=400, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(st.binary(max_size=200), st.binary(max_size=1500))
def test_random_ipv6_headers_never_raise(head, body):
    _run([_ETH + head + body, _ETH_MCAST + head + body])


@_settings
@given(st.sampled_from([0, 6, 17, 43, 44, 58, 59, 60, 51, 50, 135, 253]),
       st.sampled_from([1, 64, 255]), st.sampled_from(_ADDRS), st.sampled_from(_ADDRS),
       st.binary(max_size=1400), st.booleans())
def test_random_bytes_after_a_valid_ipv6_header_never_raise(nh, hlim, src, dst, body, mc):
    eth = _ETH_MCAST if mc else _ETH
    _run([eth + _header(nh, hlim, src, dst, body)])


_ICMP_TYPES = [1, 2, 3, 4, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 143]


@_settings
@given(st.sampled_from(_ICMP_TYPES), st.integers(0, 3), st.binary(max_size=1300),
       st.sampled_from(_ADDRS), st.sampled_from(_ADDRS), st.sampled_from([1, 255]),
       st.booleans())
def test_icmpv6_bodies_with_good_checksums_never_raise(t, code, body, src, dst, hlim, hbh):
    msg = bytearray(bytes([t, code, 0, 0]) + body)
    fill_checksum(msg, IPv6Address(src), IPv6Address(dst))
    if hbh:  # a Hop-by-Hop header with a Router Alert (MLD), then the message
        payload = bytes([58, 0, 5, 2, 0, 0, 1, 0]) + bytes(msg)
        nh = 0
    else:
        payload, nh = bytes(msg), 58
    _run([_ETH + _header(nh, hlim, src, dst, payload),
          _ETH_MCAST + _header(nh, hlim, src, dst, payload)])


@_settings
@given(st.lists(st.tuples(st.integers(0, 8191), st.booleans(), st.integers(0, 3),
                          st.binary(max_size=600)), min_size=1, max_size=12),
       st.sampled_from([6, 17, 58, 60, 44, 0]))
def test_random_fragments_never_raise(pieces, nxt):
    frames = []
    for off, more, ident, data in pieces:
        frag = struct.pack("!BBHI", nxt, 0, (off << 3) | int(more), ident)
        frames.append(_ETH + _header(44, 64, PEER, GLOBAL, frag + data))
    _run(frames)


def test_scapy_fuzzed_ipv6_frames_never_raise():
    random.seed(1234)
    base = Ether(src=PEER_MAC, dst=str(MAC)) / IPv6(src=PEER, dst=GLOBAL)
    templates = [IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(), IPv6ExtHdrDestOpt() / ICMPv6ND_NS(),
                 IPv6ExtHdrRouting() / ICMPv6ND_NA(), IPv6ExtHdrFragment() / ICMPv6EchoRequest(),
                 ICMPv6PacketTooBig() / IPv6(src=GLOBAL, dst=PEER)]
    frames = []
    for _ in range(300):
        for t in templates:
            frames.append(raw(base / fuzz(t)))
    for i in range(0, len(frames), 50):
        _run(frames[i:i + 50])
