"""The interface, sans-I/O: frames built with scapy go in through a test device, what comes
out is checked with scapy. Time is an argument throughout."""

from __future__ import annotations

from collections import deque
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, defragment, fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw, raw

from netstack.iface import Interface, InterfaceConfig, NeighborCache
from netstack.phy import ChecksumCapabilities, DeviceCapabilities
from netstack.socket import (
    IcmpSocket,
    PacketBuffer,
    RawSocket,
    SocketSet,
    UdpSocket,
)
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.icmpv4 import Icmpv4Message
from netstack.wire.ipv4 import Ipv4Cidr

MAC = EthernetAddress.parse("02:00:00:00:00:01")
PEER_MAC = "02:00:00:00:00:02"
GW_MAC = "02:00:00:00:00:fe"
OTHER_MAC = "02:00:00:00:00:77"
IP_ADDR = "10.0.2.15"
PEER = "10.0.2.2"
GATEWAY = "10.0.2.1"


class Dev:
    """A test device: frames to receive in `rx`, transmitted frames in `tx`."""

    def __init__(self, mtu: int = 1500, checksum: ChecksumCapabilities | None = None) -> None:
        self.rx: deque[bytes] = deque()
        self.tx: list[bytes] = []
        self.room: int | None = None  # None: unlimited tx
        self.caps = DeviceCapabilities(mtu=mtu, checksum=checksum or ChecksumCapabilities())

    def capabilities(self) -> DeviceCapabilities:
        return self.caps

    def receive(self, now):
        if not self.rx:
            return None
        return _Rx(self.rx.popleft()), _Tx(self)

    def transmit(self, now):
        if self.room is not None:
            if self.room <= 0:
                return None
            self.room -= 1
        return _Tx(self)

    def take(self) -> list[Ether]:
        out = [Ether(f) for f in self.tx]
        self.tx.clear()
        return out


class _Rx:
    def __init__(self, frame: bytes) -> None:
        self.frame = bytearray(frame)

    def consume(self, fn):
        return fn(memoryview(self.frame))


class _Tx:
    def __init__(self, dev: Dev) -> None:
        self.dev = dev

    def consume(self, length, fn):
        buf = bytearray(b"\xa5" * length)  # unwritten bytes would show
        result = fn(memoryview(buf))
        self.dev.tx.append(bytes(buf))
        return result


def make(now: float = 0.0, mtu: int = 1500, **kw) -> tuple[Interface, Dev, SocketSet]:
    cfg = InterfaceConfig(MAC, [Ipv4Cidr.parse(IP_ADDR + "/24")],
                          default_gateway=IPv4Address(GATEWAY), **kw)
    iface = Interface(cfg, now)
    dev = Dev(mtu=mtu)
    sockets = SocketSet()
    iface.poll(now, dev, sockets)  # the gratuitous ARP
    dev.tx.clear()
    return iface, dev, sockets


def to_us(payload, src=PEER, dst=IP_ADDR, src_mac=PEER_MAC, dst_mac=str(MAC)) -> Ether:
    return Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / payload


def feed(iface, dev, sockets, *frames, now: float = 0.0) -> list[Ether]:
    for f in frames:
        dev.rx.append(raw(f) if not isinstance(f, bytes | bytearray) else bytes(f))
    iface.poll(now, dev, sockets)
    return dev.take()


def learn_peer(iface, dev, sockets, ip=PEER, mac=PEER_MAC, now=0.0):
    arp = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip,
                                                          pdst=IP_ADDR)
    feed(iface, dev, sockets, arp, now=now)


# -- Ethernet and ARP -------------------------------------------------------------------

def test_gratuitous_arp_on_first_poll():
    iface = Interface(InterfaceConfig(MAC, [Ipv4Cidr.parse(IP_ADDR + "/24")], ipv6=False))
    dev = Dev()
    iface.poll(0.0, dev, SocketSet())
    (f,) = dev.take()
    assert f.dst == "ff:ff:ff:ff:ff:ff" and f[ARP].op == 1
    assert f[ARP].psrc == f[ARP].pdst == IP_ADDR and f[ARP].hwsrc == str(MAC)
    iface.poll(1.0, dev, SocketSet())
    assert dev.take() == []
    iface.set_ip_addrs([Ipv4Cidr.parse("10.0.3.9/24")])  # a new lease is announced again
    iface.poll(2.0, dev, SocketSet())
    assert dev.take()[0][ARP].psrc == "10.0.3.9"


def test_arp_request_gets_reply_with_our_mac():
    iface, dev, sockets = make()
    req = Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER,
                                                            pdst=IP_ADDR)
    (reply,) = feed(iface, dev, sockets, req)
    assert reply.dst == PEER_MAC and reply.src == str(MAC)
    a = reply[ARP]
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, str(MAC), IP_ADDR, PEER_MAC, PEER)
    assert iface.neighbors.lookup(IPv4Address(PEER), 0.0) == EthernetAddress.parse(PEER_MAC)


def test_arp_for_another_address_is_ignored_and_not_learned():
    iface, dev, sockets = make()
    req = Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER,
                                                            pdst="10.0.2.99")
    assert feed(iface, dev, sockets, req) == []
    assert IPv4Address(PEER) not in iface.neighbors
    assert iface.stats["arp_not_for_us"] == 1


def test_arp_claiming_our_address_is_a_conflict():
    iface, dev, sockets = make()
    req = Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=PEER_MAC, psrc=IP_ADDR,
                                                            pdst=IP_ADDR)
    assert feed(iface, dev, sockets, req) == []
    assert iface.stats["arp_conflict"] == 1


def test_frame_to_another_mac_is_ignored():
    iface, dev, sockets = make()
    ping = to_us(ICMP(type=8, id=1, seq=1), dst_mac=OTHER_MAC)
    assert feed(iface, dev, sockets, ping) == []
    assert iface.stats["eth_not_for_us"] == 1


def test_truncated_and_garbage_frames_are_counted():
    iface, dev, sockets = make()
    good = raw(to_us(ICMP(type=8, id=1, seq=1) / (b"x" * 10)))
    arp = raw(Ether(src=PEER_MAC, dst=str(MAC)) / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER,
                                                      pdst=IP_ADDR))
    frames = [b"", b"\x01" * 5, good[:20], good[:30], arp[:30],
              bytes(MAC) + b"\x02" * 6 + b"\x88\xb5" + b"\x00" * 40]
    assert feed(iface, dev, sockets, *frames) == []
    s = iface.stats
    assert s["eth_truncated"] == 2
    assert s["ipv4_truncated"] == 2
    assert s["arp_malformed"] == 1
    assert s["eth_unknown_type"] == 1


def test_bad_ip_checksum_dropped_unless_offloaded():
    iface, dev, sockets = make()
    f = bytearray(raw(to_us(ICMP(type=8, id=1, seq=1))))
    f[24] ^= 0xFF
    assert feed(iface, dev, sockets, f) == []
    assert iface.stats["ipv4_bad_checksum"] == 1
    dev.caps = DeviceCapabilities(checksum=ChecksumCapabilities(ipv4=True))
    assert len(feed(iface, dev, sockets, f)) == 1  # the device vouched for it


# -- ICMP -------------------------------------------------------------------------------

def test_echo_request_gets_echo_reply():
    iface, dev, sockets = make()
    ping = to_us(ICMP(type=8, id=0x1234, seq=7) / b"payload!")
    (reply,) = feed(iface, dev, sockets, ping)
    assert reply.dst == PEER_MAC and reply.src == str(MAC)
    assert reply[IP].src == IP_ADDR and reply[IP].dst == PEER
    icmp = reply[ICMP]
    assert (icmp.type, icmp.id, icmp.seq, bytes(icmp.payload)) == (0, 0x1234, 7, b"payload!")
    # checksums as scapy computes them
    rebuilt = Ether(raw(reply))
    del rebuilt[IP].chksum, rebuilt[ICMP].chksum
    assert raw(Ether(raw(rebuilt))) == raw(reply)


def test_broadcast_echo_is_ignored():
    iface, dev, sockets = make()
    ping = to_us(ICMP(type=8, id=1, seq=1), dst="10.0.2.255", dst_mac="ff:ff:ff:ff:ff:ff")
    assert feed(iface, dev, sockets, ping) == []


def test_big_ping_fragmented_is_reassembled_and_answered_in_fragments():
    iface, dev, sockets = make()
    data = bytes(range(256)) * 15 + b"e" * 160  # a 4000-byte ping
    ping = IP(src=PEER, dst=IP_ADDR, id=99) / ICMP(type=8, id=5, seq=9) / data
    frags = [Ether(src=PEER_MAC, dst=str(MAC)) / f for f in fragment(ping, fragsize=1480)]
    assert len(frags) == 3
    out = feed(iface, dev, sockets, *frags)
    assert len(out) == 3
    assert all(len(raw(f)) <= 1514 for f in out)
    whole = defragment([f[IP] for f in out])
    (reply,) = [p for p in whole if ICMP in p]
    assert reply[ICMP].type == 0 and (reply[ICMP].id, reply[ICMP].seq) == (5, 9)
    assert bytes(reply[ICMP].payload) == data


def test_udp_to_closed_port_gets_port_unreachable_quoting_it():
    iface, dev, sockets = make()
    dgram = to_us(UDP(sport=4000, dport=9) / b"anyone home?")
    (err,) = feed(iface, dev, sockets, dgram)
    icmp = err[ICMP]
    assert (icmp.type, icmp.code) == (3, 3)
    assert err[IP].dst == PEER and err[IP].src == IP_ADDR
    quoted = raw(dgram[IP])
    assert raw(icmp.payload) == quoted  # short datagram: quoted whole
    assert iface.stats["udp_port_unreachable"] == 1


def test_port_unreachable_is_rate_limited():
    iface, dev, sockets = make(icmp_error_rate=100.0, icmp_error_burst=10)
    frames = [to_us(UDP(sport=4000, dport=9)) for _ in range(30)]
    assert len(feed(iface, dev, sockets, *frames, now=0.0)) == 10
    assert iface.stats["icmp_error_rate_limited"] == 20
    assert len(feed(iface, dev, sockets, *frames[:5], now=0.02)) == 2  # 100/s: 2 in 20 ms


def test_no_port_unreachable_for_broadcast():
    iface, dev, sockets = make()
    for dst in ("255.255.255.255", "10.0.2.255"):
        f = to_us(UDP(sport=4000, dport=9), dst=dst, dst_mac="ff:ff:ff:ff:ff:ff")
        assert feed(iface, dev, sockets, f) == []
    assert iface.stats["udp_no_socket_broadcast"] == 2


def test_unicast_in_link_broadcast_is_dropped():
    iface, dev, sockets = make()
    f = to_us(UDP(sport=4000, dport=9), dst_mac="ff:ff:ff:ff:ff:ff")
    assert feed(iface, dev, sockets, f) == []
    assert iface.stats["ipv4_unicast_in_l2_broadcast"] == 1


def test_icmp_socket_ping():
    iface, dev, sockets = make()
    learn_peer(iface, dev, sockets)
    s = IcmpSocket()
    s.bind(0x4242)
    sockets.add(s)
    s.send_echo_request(IPv4Address(PEER), 1, b"ping")
    iface.poll(1.0, dev, sockets)
    (req,) = dev.take()
    assert req[ICMP].type == 8 and req[ICMP].id == 0x4242 and bytes(req[ICMP].payload) == b"ping"
    reply = to_us(ICMP(type=0, id=0x4242, seq=1) / b"ping")
    other = to_us(ICMP(type=0, id=0x4243, seq=1) / b"ping")
    feed(iface, dev, sockets, reply, other, now=1.1)
    r, src = s.recv_repr()
    assert src == IPv4Address(PEER) and r.msg_type == Icmpv4Message.ECHO_REPLY
    assert (r.seq_no, bytes(r.data)) == (1, b"ping")
    assert not s.can_recv()


def test_icmp_socket_bound_to_udp_port_gets_errors():
    iface, dev, sockets = make()
    s = IcmpSocket()
    s.bind(udp_port=5000)
    sockets.add(s)
    quote = raw(IP(src=IP_ADDR, dst=PEER) / UDP(sport=5000, dport=53))
    err = to_us(ICMP(type=3, code=3) / quote)
    feed(iface, dev, sockets, err)
    r, _ = s.recv_repr()
    assert r.msg_type == Icmpv4Message.DST_UNREACHABLE and r.code == 3


def test_raw_socket_gets_payloads_of_its_protocol():
    iface, dev, sockets = make()
    learn_peer(iface, dev, sockets)
    s = RawSocket(253)
    sockets.add(s)
    f = to_us(Raw(b"experimental"))
    f[IP].proto = 253
    assert feed(iface, dev, sockets, f) == []
    assert s.recv() == (b"experimental", IPv4Address(PEER), IPv4Address(IP_ADDR))
    assert iface.stats["ipv4_unknown_protocol"] == 0
    s.send_to(b"back", IPv4Address(PEER))
    iface.poll(0.1, dev, sockets)
    (out,) = dev.take()
    assert out[IP].proto == 253 and raw(out[IP].payload) == b"back"


# -- UDP sockets ------------------------------------------------------------------------

def test_udp_to_bound_socket():
    iface, dev, sockets = make()
    s = UdpSocket()
    s.bind(7)
    sockets.add(s)
    woke = []
    s.set_waker(lambda: woke.append(1))
    assert feed(iface, dev, sockets, to_us(UDP(sport=4000, dport=7) / b"hello")) == []
    assert woke
    data, src, truncated = s.recv_from()
    assert (data, src, truncated) == (b"hello", (IPv4Address(PEER), 4000), False)
    feed(iface, dev, sockets, to_us(UDP(sport=4000, dport=7) / b"0123456789"))
    buf = bytearray(4)
    assert s.recv_into(buf) == (4, (IPv4Address(PEER), 4000), True)
    assert buf == b"0123"


def test_udp_bad_checksum_dropped():
    iface, dev, sockets = make()
    s = UdpSocket()
    s.bind(7)
    sockets.add(s)
    f = to_us(UDP(sport=4000, dport=7, chksum=0x1234) / b"hello")
    feed(iface, dev, sockets, f)
    assert not s.can_recv() and iface.stats["udp_malformed"] == 1


def test_udp_rx_buffer_bounded():
    iface, dev, sockets = make()
    s = UdpSocket(rx_buffer=PacketBuffer(4, 1000))
    s.bind(7)
    sockets.add(s)
    feed(iface, dev, sockets, *[to_us(UDP(sport=4000, dport=7) / b"x") for _ in range(10)])
    assert len(s.rx) == 4 and s.rx_dropped == 6


def test_send_to_unresolved_neighbor_arps_first_and_queue_is_bounded():
    iface, dev, sockets = make()
    s = UdpSocket()
    s.bind(5000)
    sockets.add(s)
    for i in range(20):
        s.send_to(b"dgram %d" % i, (PEER, 53))
    iface.poll(0.0, dev, sockets)
    (req,) = dev.take()
    assert req.dst == "ff:ff:ff:ff:ff:ff" and req[ARP].op == 1
    assert req[ARP].pdst == PEER and req[ARP].psrc == IP_ADDR and req[ARP].hwsrc == str(MAC)
    assert iface.neighbors.queued == 16 and iface.stats["neighbor_queue_full"] == 4
    reply = Ether(src=PEER_MAC, dst=str(MAC)) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER,
                                                    hwdst=str(MAC), pdst=IP_ADDR)
    out = feed(iface, dev, sockets, reply, now=0.2)
    assert len(out) == 16
    assert all(f.dst == PEER_MAC and f[UDP].dport == 53 and f[UDP].sport == 5000 for f in out)
    assert [bytes(f[UDP].payload) for f in out] == [b"dgram %d" % i for i in range(16)]
    # checksums as scapy computes them
    f, ours = out[0].copy(), out[0][UDP].chksum
    del f[UDP].chksum
    assert Ether(raw(f))[UDP].chksum == ours


def test_arp_retries_once_a_second_then_gives_up():
    iface, dev, sockets = make()
    s = UdpSocket()
    s.bind(5000)
    sockets.add(s)
    s.send_to(b"x", (PEER, 53))
    sent = []
    for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0):
        iface.poll(t, dev, sockets)
        sent += [(t, f[ARP].pdst) for f in dev.take()]
        if t == 2.0:
            assert iface.poll_at(t, sockets) == 3.0
    assert sent == [(0.0, PEER), (1.0, PEER), (2.0, PEER)]
    assert iface.stats["neighbor_unreachable"] == 1 and iface.neighbors.queued == 0
    assert iface.poll_at(5.0, sockets) is None


def test_off_subnet_goes_via_gateway_mac():
    iface, dev, sockets = make()
    s = UdpSocket()
    s.bind(5000)
    sockets.add(s)
    s.send_to(b"far", ("8.8.8.8", 53))
    iface.poll(0.0, dev, sockets)
    (req,) = dev.take()
    assert req[ARP].pdst == GATEWAY
    reply = Ether(src=GW_MAC, dst=str(MAC)) / ARP(op=2, hwsrc=GW_MAC, psrc=GATEWAY,
                                                  hwdst=str(MAC), pdst=IP_ADDR)
    (out,) = feed(iface, dev, sockets, reply)
    assert out.dst == GW_MAC and out[IP].dst == "8.8.8.8" and out[IP].src == IP_ADDR
    # the next one goes straight out
    s.send_to(b"far again", ("8.8.8.8", 53))
    iface.poll(0.1, dev, sockets)
    assert dev.take()[0].dst == GW_MAC


def test_explicit_route_wins_over_default_gateway():
    iface, dev, sockets = make()
    iface.add_route(Ipv4Cidr.parse("192.168.0.0/16"), IPv4Address("10.0.2.3"))
    s = UdpSocket()
    s.bind(5000)
    sockets.add(s)
    s.send_to(b"x", ("192.168.4.4", 53))
    iface.poll(0.0, dev, sockets)
    assert dev.take()[0][ARP].pdst == "10.0.2.3"


def test_no_route_is_dropped_and_counted():
    iface = Interface(InterfaceConfig(MAC, [Ipv4Cidr.parse(IP_ADDR + "/24")], ipv6=False))
    dev, sockets = Dev(), SocketSet()
    s = UdpSocket()
    s.bind(5000)
    sockets.add(s)
    s.send_to(b"x", ("8.8.8.8", 53))
    iface.poll(0.0, dev, sockets)
    assert all(ARP in f and f[ARP].pdst == IP_ADDR for f in dev.take())  # only the GARP
    assert iface.stats["tx_no_route"] == 1 and not s.tx


def test_big_udp_datagram_is_fragmented():
    iface, dev, sockets = make(mtu=576)
    learn_peer(iface, dev, sockets)
    s = UdpSocket()
    s.bind(5000)
    sockets.add(s)
    data = bytes(range(256)) * 12
    s.send_to(data, (PEER, 53))
    iface.poll(0.0, dev, sockets)
    out = dev.take()
    assert len(out) == 6 and all(len(raw(f[IP])) <= 576 for f in out)
    (whole,) = defragment([f[IP] for f in out])
    assert whole[UDP].dport == 53 and bytes(whole[UDP].payload) == data
    del whole[UDP].chksum
    assert IP(raw(whole))[UDP].chksum == defragment([f[IP] for f in out])[0][UDP].chksum


def test_broadcast_send_from_no_address_and_dhcp_offer_to_foreign_address():
    iface = Interface(InterfaceConfig(MAC, [], ipv6=False))
    dev, sockets = Dev(), SocketSet()
    client = UdpSocket()
    client.bind(("0.0.0.0", 68))
    sockets.add(client)
    client.send_to(b"DISCOVER", ("255.255.255.255", 67))
    iface.poll(0.0, dev, sockets)
    (out,) = dev.take()
    assert out.dst == "ff:ff:ff:ff:ff:ff"
    assert (out[IP].src, out[IP].dst, out[UDP].sport, out[UDP].dport) == (
        "0.0.0.0", "255.255.255.255", 68, 67)
    offer = to_us(UDP(sport=67, dport=68) / b"OFFER", src="10.0.2.2", dst="10.0.2.15")
    feed(iface, dev, sockets, offer)
    data, meta = client.recv_meta()
    assert data == b"OFFER" and meta.dst_addr == IPv4Address("10.0.2.15")
    assert meta.src_hw == EthernetAddress.parse(PEER_MAC)
    # but nothing else to an address we do not have
    assert feed(iface, dev, sockets, to_us(UDP(sport=67, dport=99))) == []
    assert feed(iface, dev, sockets, to_us(ICMP(type=8))) == []


def test_udp_send_with_explicit_mac_skips_arp():
    iface, dev, sockets = make()
    s = UdpSocket()
    s.bind(67)
    sockets.add(s)
    s.send_to(b"OFFER", ("10.0.2.100", 68), dst_hw=EthernetAddress.parse(OTHER_MAC))
    iface.poll(0.0, dev, sockets)
    (out,) = dev.take()
    assert out.dst == OTHER_MAC and out[IP].dst == "10.0.2.100"


def test_multicast_group_joined_is_received():
    iface, dev, sockets = make()
    s = UdpSocket()
    s.bind(5353)
    sockets.add(s)
    f = to_us(UDP(sport=5353, dport=5353) / b"mdns", dst="224.0.0.251",
              dst_mac="01:00:5e:00:00:fb")
    feed(iface, dev, sockets, f)
    assert not s.can_recv() and iface.stats["eth_not_for_us"] == 1
    iface.join_multicast_group(IPv4Address("224.0.0.251"))
    feed(iface, dev, sockets, f)
    assert s.recv_from()[0] == b"mdns"


def test_device_busy_keeps_packets_in_the_socket():
    iface, dev, sockets = make(ipv6=False)  # no IPv6 timers: poll_at is IPv4's alone
    learn_peer(iface, dev, sockets)
    s = UdpSocket()
    s.bind(5000)
    sockets.add(s)
    for i in range(3):
        s.send_to(b"%d" % i, (PEER, 53))
    dev.room = 1
    iface.poll(0.0, dev, sockets)
    assert len(dev.take()) == 1 and len(s.tx) == 2
    assert iface.poll_at(0.0, sockets) == pytest.approx(0.001)  # back off, do not spin
    dev.room = None
    iface.poll(0.001, dev, sockets)
    assert [bytes(f[UDP].payload) for f in dev.take()] == [b"1", b"2"]
    assert iface.poll_at(0.002, sockets) is None


# -- bounds -----------------------------------------------------------------------------

def test_bounded_work_per_poll_with_10000_queued_frames():
    iface, dev, sockets = make()
    s = UdpSocket(rx_buffer=PacketBuffer(20000, 1 << 20))
    s.bind(7)
    sockets.add(s)
    frame = raw(to_us(UDP(sport=4000, dport=7) / b"flood"))
    dev.rx.extend([frame] * 10000)
    s.send_to(b"reply", (PEER, 53))
    iface.poll(0.0, dev, sockets)
    assert len(dev.rx) == 10000 - iface.rx_budget
    assert s.tx.is_empty()  # sockets still got their turn
    assert iface.poll_at(0.0, sockets) == 0.0
    polls = 1
    while dev.rx:
        iface.poll(0.0, dev, sockets)
        polls += 1
    assert polls == -(-10000 // iface.rx_budget)
    assert len(s.rx) == 10000


def test_tx_budget_per_socket():
    iface, dev, sockets = make(tx_budget=8)
    learn_peer(iface, dev, sockets)
    s = UdpSocket()
    s.bind(5000)
    sockets.add(s)
    for i in range(20):
        s.send_to(b"%d" % i, (PEER, 53))
    iface.poll(0.0, dev, sockets)
    assert len(dev.take()) == 8 and iface.poll_at(0.0, sockets) == 0.0


def test_neighbor_cache_lru_and_expiry():
    cache = NeighborCache(capacity=3, expiry=60.0)
    macs = [EthernetAddress(bytes([2, 0, 0, 0, 0, i])) for i in range(5)]
    ips = [IPv4Address(f"10.0.0.{i}") for i in range(5)]
    for i in range(3):
        cache.fill(ips[i], macs[i], 0.0)
    assert cache.lookup(ips[0], 1.0) == macs[0]  # now 0 is the most recently used
    cache.fill(ips[3], macs[3], 2.0)
    assert ips[1] not in cache and ips[0] in cache and len(cache) == 3
    assert cache.lookup(ips[0], 60.0) is None  # expired
    assert cache.stats["neighbor_evicted"] == 1 and cache.stats["neighbor_expired"] == 1


def test_neighbor_queue_global_bound():
    cache = NeighborCache(queue_per_dest=4, queue_total=10)
    for i in range(10):
        for _ in range(4):
            cache.enqueue(IPv4Address(f"10.0.0.{i}"), b"x", 0.0)
    assert cache.queued == 10 and cache.stats["neighbor_queue_full"] == 30


def test_socket_set_handles_and_port_clash():
    from netstack.socket import AddrInUse

    sockets = SocketSet()
    a, b = UdpSocket(), UdpSocket()
    a.bind(53)
    ha = sockets.add(a)
    b.bind(53)
    with pytest.raises(AddrInUse):
        sockets.add(b)
    c = UdpSocket()
    sockets.add(c)
    with pytest.raises(AddrInUse):
        c.bind(53)
    c.bind(0)
    assert 49152 <= c.endpoint[1] <= 65535
    assert sockets.get(ha) is a and len(sockets) == 2
    assert sockets.remove(ha) is a and len(sockets) == 1
    with pytest.raises(KeyError):
        sockets.get(ha)


# -- fuzzing ----------------------------------------------------------------------------

def _fuzz_iface():
    iface, dev, sockets = make()
    learn_peer(iface, dev, sockets)
    for port in (7, 68):
        s = UdpSocket()
        s.bind(port)
        sockets.add(s)
    icmp = IcmpSocket()
    icmp.bind(1)
    sockets.add(icmp)
    sockets.add(RawSocket(253))
    return iface, dev, sockets


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_never_raise(frames):
    iface, dev, sockets = _fuzz_iface()
    feed(iface, dev, sockets, *frames)


_HEAD = raw(Ether(src=PEER_MAC, dst=str(MAC), type=0x0800))
_ARP_HEAD = raw(Ether(src=PEER_MAC, dst=str(MAC), type=0x0806))
_IP_HEAD = raw(IP(src=PEER, dst=IP_ADDR, proto=17, len=20))[:20]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["ip", "arp", "ip-hdr", "udp", "icmp"]), st.binary(max_size=120),
       st.integers(0, 255))
def test_random_payloads_behind_valid_headers_never_raise(kind, body, proto):
    iface, dev, sockets = _fuzz_iface()
    if kind == "ip":
        frame = _HEAD + body
    elif kind == "arp":
        frame = _ARP_HEAD + body
    elif kind == "ip-hdr":
        ip = IP(src=PEER, dst=IP_ADDR, proto=proto) / Raw(body)
        frame = raw(Ether(src=PEER_MAC, dst=str(MAC)) / ip)
    elif kind == "udp":
        frame = raw(to_us(UDP(sport=4000, dport=7 if proto & 1 else 68) / body))
        frame = frame[:34] + body[:8] + frame[42:]
    else:
        frame = raw(to_us(ICMP(type=proto % 16, code=proto // 16) / body))
    feed(iface, dev, sockets, frame)
