"""TCP in the interface fuzz, IPv4 and IPv6 (ADVERSARIAL.md 16-23): an interface with a
listener, a connection it accepted, one in TIME-WAIT and one orphaned in FIN-WAIT-1 gets
random TCP segments with good checksums — random flags, sequence and acknowledgment
numbers near and far from the connections', options, payloads — aimed at their 4-tuples
and at others, then time passes. Nothing may raise out of `poll`, nothing we send may
exceed the MTU, and each socket's invariants hold: its buffers within their capacity,
SND.UNA <= SND.NXT <= SND.MAX in sequence space, and an orphan never accepting data."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from netstack.iface import Interface, InterfaceConfig
from netstack.socket import SocketSet
from netstack.socket.tcp.listener import TcpListener
from netstack.socket.tcp.seq import seq_le
from netstack.socket.tcp.socket import TcpSocket
from netstack.socket.tcp.state import State
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr
from netstack.wire.ipv6 import Ipv6Cidr
from tests.iface.test_interface import Dev

MAC = EthernetAddress.parse("02:00:00:00:00:01")
PEER_MAC = "02:00:00:00:00:02"
OURS4, PEER4 = "10.0.0.1", "10.0.0.2"
OURS6, PEER6 = "fd00::1", "fd00::2"
MTU = 1500
PORTS = (5001, 5002, 5003)  # the peer's ports of: established, TIME-WAIT, orphan


def _ip(v6: bool, src: str | None = None):
    if v6:
        return IPv6(src=src or PEER6, dst=OURS6)
    return IP(src=src or PEER4, dst=OURS4)


def _seg(v6: bool, **tcp) -> bytes:
    return raw(Ether(src=PEER_MAC, dst=str(MAC)) / _ip(v6) / TCP(**tcp))


def _world(v6: bool):
    """The interface and its sockets, three connections made by handshakes."""
    cfg = InterfaceConfig(MAC, [Ipv4Cidr.parse(OURS4 + "/24")],
                          ipv6_addrs=[Ipv6Cidr.parse(OURS6 + "/64")])
    iface = Interface(cfg, 0.0)
    dev = Dev(mtu=MTU)
    sockets = SocketSet()
    listener = TcpListener(16)
    listener.listen(("::", 80))
    sockets.add(listener)
    peer = IPv6Address(PEER6) if v6 else IPv4Address(PEER4)
    iface.neighbors.fill(IPv4Address(PEER4), EthernetAddress.parse(PEER_MAC), 0.0)
    iface.neighbors6.learn(IPv6Address(PEER6), EthernetAddress.parse(PEER_MAC), 0.0)
    iface.poll(0.0, dev, sockets)
    conns = {}
    for port in PORTS:
        dev.rx.append(_seg(v6, sport=port, dport=80, flags="S", seq=1000))
        iface.poll(0.0, dev, sockets)
        synack = [f for f in dev.take() if TCP in f and f[TCP].dport == port][-1]
        dev.rx.append(_seg(v6, sport=port, dport=80, flags="A", seq=1001,
                           ack=synack[TCP].seq + 1))
        iface.poll(0.0, dev, sockets)
        conns[port] = listener.accept()
        assert conns[port] is not None and conns[port].remote_endpoint == (peer, port)
    dev.take()
    tw, orphan = conns[5002], conns[5003]
    tw.close()
    iface.poll(0.0, dev, sockets)
    fin = [f for f in dev.take() if TCP in f and f[TCP].dport == 5002][-1]
    dev.rx.append(_seg(v6, sport=5002, dport=80, flags="FA", seq=1001, ack=fin[TCP].seq + 1))
    iface.poll(0.0, dev, sockets)
    tw.orphan(0.0)
    assert tw.state is State.TIME_WAIT
    orphan.send(b"x" * 5000)
    orphan.close()
    orphan.orphan(0.0)
    iface.poll(0.0, dev, sockets)
    dev.take()
    return iface, dev, sockets, conns


def _check(sockets: SocketSet, conns: dict) -> None:
    for s in list(sockets):
        if not isinstance(s, TcpSocket):
            continue
        assert len(s._rx) <= s.rx_capacity
        assert len(s._tx) <= s.tx_capacity + 1
        if s.state not in (State.CLOSED, State.LISTEN, State.SYN_SENT):
            assert seq_le(s.snd_una, s.snd_nxt) and seq_le(s.snd_nxt, s.snd_max), s
        if s.is_orphan:
            assert not s._rx  # nobody reads an orphan's data: it is not kept


_segment = st.fixed_dictionaries({
    "sport": st.sampled_from([*PORTS, 4444, 80]),
    "dport": st.sampled_from([80, 81, 5001]),
    "flags": st.integers(0, 0x3F),
    "seq": st.one_of(st.integers(0, 2**32 - 1), st.integers(990, 1100)),
    "ack": st.one_of(st.integers(0, 2**32 - 1), st.just(0)),
    "window": st.integers(0, 65535),
    "options": st.lists(st.sampled_from([("MSS", 0), ("MSS", 1460), ("WScale", 14),
                                         ("WScale", 200), ("SAckOK", b""), ("Timestamp",
                                         (1, 0)), ("NOP", None),
                                         ("SAck", (1000, 2000, 3000, 2500))]), max_size=4),
    "urgptr": st.integers(0, 65535),
    "payload": st.binary(max_size=600),
})

_settings = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _run(v6: bool, segments: list[dict], later: float) -> None:
    iface, dev, sockets, conns = _world(v6)
    tw_ack = conns[5001].snd_una  # near the established connection's numbers too
    for i, seg in enumerate(segments):
        payload = seg.pop("payload")
        if i % 2:
            seg["ack"] = (tw_ack + seg["ack"] % 3000) & 0xFFFFFFFF
        try:
            frame = raw(Ether(src=PEER_MAC, dst=str(MAC)) / _ip(v6) / TCP(**seg) /
                        Raw(payload))
        except Exception:  # scapy refuses some option values: skip them
            continue
        dev.rx.append(frame)
        iface.poll(0.5 * i / len(segments), dev, sockets)
        _check(sockets, conns)
    for t in (1.0, later, later + 200.0, later + 4000.0):
        iface.poll(t, dev, sockets)
        _check(sockets, conns)
    for f in dev.tx:
        assert len(f) <= 14 + MTU, len(f)


@_settings
@given(st.lists(_segment, min_size=1, max_size=12), st.floats(1.0, 120.0))
def test_random_tcp_segments_ipv4(segments, later):
    _run(False, segments, later)


@_settings
@given(st.lists(_segment, min_size=1, max_size=12), st.floats(1.0, 120.0))
def test_random_tcp_segments_ipv6(segments, later):
    _run(True, segments, later)


def test_the_world_is_what_the_fuzz_assumes():
    for v6 in (False, True):
        iface, dev, sockets, conns = _world(v6)
        assert conns[5001].state is State.ESTABLISHED
        assert conns[5002].state is State.TIME_WAIT and conns[5002].is_orphan
        assert conns[5003].state is State.FIN_WAIT_1 and conns[5003].is_orphan
        # the silent peer: the orphan gives up after orphan_retries retransmissions,
        # as the TIME-WAIT socket closes
        for t in range(1, 3000, 5):
            iface.poll(float(t), dev, sockets)
        assert conns[5002].state is State.CLOSED and conns[5003].state is State.CLOSED
