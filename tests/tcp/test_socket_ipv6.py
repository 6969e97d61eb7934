"""TCP over IPv6 and dual stack, socket level: hand-made `Ipv6Repr`s in, a recording emit out.

Checked: the family decides the MSS we advertise (MTU - 60), the peer's default MSS (1220,
RFC 8200 §8.3) and the TSO limit (65535 - 60); a `::` listener takes IPv4 and IPv6 SYNs
unless v6-only; IPv4-mapped remotes go out as IPv4; port clashes follow Linux; the ISN and
SYN cookies hash IPv6 4-tuples; `set_path_mtu` shrinks segments and resends at once.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from netstack.socket.errors import AddrInUse, Unaddressable
from netstack.socket.set import SocketSet
from netstack.socket.tcp import isn as isn_mod
from netstack.socket.tcp.listener import TcpListener
from netstack.socket.tcp.socket import TcpSocket, rst_reply
from netstack.socket.tcp.state import State
from netstack.wire.ipv4 import Ipv4Repr
from netstack.wire.ipv6 import Ipv6Repr
from netstack.wire.tcp import ACK, RST, SYN, TcpPacket, TcpRepr

L6 = IPv6Address("fd00:10:0:2::15")
R6 = IPv6Address("fd00:10:0:2::2")
L4 = IPv4Address("10.0.2.15")
R4 = IPv4Address("10.0.2.2")
PORT = 80
RPORT = 49500
ISS = 5000
IRS = 10000


def ip_repr(src, dst, n):
    if src.version == 6:
        return Ipv6Repr(src, dst, 6, n)
    return Ipv4Repr(src, dst, 6, n)


class Recorder:
    """A fake `Interface.emit` for both families: builds each segment (checksum over the
    pseudo-header of the destination's family) and records (dst, src, TcpRepr, kw)."""

    def __init__(self, src4=L4, src6=L6) -> None:
        self.src = {4: src4, 6: src6}
        self.packets: list = []

    def __call__(self, dst, protocol, payload_len, fill, src=None, **kw) -> bool:
        assert protocol == 6
        assert not (dst.version == 6 and dst.ipv4_mapped is not None), "mapped dst on the wire"
        src = src or self.src[dst.version]
        assert src.version == dst.version
        buf = bytearray(b"\xa5" * payload_len)
        fill(memoryview(buf), src, True)
        tcp = TcpRepr.parse(TcpPacket(bytes(buf)), src, dst)
        self.packets.append((dst, src, tcp, kw))
        return True


def feed(sock, now, seq, ack=None, flags=0, *, src=R6, dst=L6, sport=RPORT, dport=PORT,
         payload=b"", **opts):
    seg = TcpRepr(sport, dport, seq, ack, flags | (ACK if ack is not None else 0), 65535,
                  payload=payload, **opts)
    buf = bytearray(seg.buffer_len())
    seg.emit(TcpPacket(buf), src, dst, True)
    parsed = TcpRepr.parse(TcpPacket(bytes(buf)), src, dst)
    ip = ip_repr(src, dst, len(buf))
    if not sock.accepts(ip, parsed):
        return False
    sock.process(now, ip, parsed, parsed.payload, None)
    return True


def out(sock, now):
    rec = Recorder()
    sock.dispatch(now, rec)
    return rec.packets


def fixed(sock):
    sock.isn_fn = lambda now, local, remote: ISS
    return sock


def established6(mtu=1500, mss_opt=1440, **kw):
    s = fixed(TcpSocket(timestamps=False, sack=False, window_scaling=False, nagle=False,
                        **kw))
    s.set_mtu(mtu)
    s.listen(("::", PORT))
    assert feed(s, 0.0, IRS, flags=SYN, max_seg_size=mss_opt)
    [(_dst, _src, synack, _)] = out(s, 0.0)
    assert synack.flags == SYN | ACK
    assert feed(s, 0.0, IRS + 1, ISS + 1)
    assert s.state is State.ESTABLISHED
    return s


# -- MSS by family ---------------------------------------------------------------------------
def test_synack_mss_is_mtu_less_60_over_ipv6():
    s = fixed(TcpSocket())
    s.set_mtu(1500)
    s.listen(("::", PORT))
    assert feed(s, 0.0, IRS, flags=SYN)
    [(dst, src, synack, kw)] = out(s, 0.0)
    assert (dst, src) == (R6, L6)
    assert synack.max_seg_size == 1440
    assert kw.get("dont_frag") is True
    assert s._peer_mss == 1220  # no MSS option: RFC 8200 §8.3


def test_synack_mss_is_mtu_less_40_over_ipv4_on_dual_stack_listen():
    s = fixed(TcpSocket())
    s.set_mtu(1500)
    s.listen(("::", PORT))
    assert feed(s, 0.0, IRS, flags=SYN, src=R4, dst=L4)
    [(dst, src, synack, _)] = out(s, 0.0)
    assert (dst, src) == (R4, L4)
    assert synack.max_seg_size == 1460
    assert s._peer_mss == 536
    assert s.local_endpoint == (L4, PORT) and s.remote_endpoint == (R4, RPORT)


def test_connect_v6_syn_mss():
    s = fixed(TcpSocket())
    s.set_mtu(9000)
    s.connect(0.0, ("::", 40000), (str(R6), 80))
    [(dst, src, syn, _)] = out(s, 0.0)
    assert dst == R6 and src == L6 and syn.flags == SYN
    assert syn.max_seg_size == 9000 - 60
    assert s.local_endpoint == (L6, 40000)  # the source the interface chose


def test_connect_mapped_goes_over_ipv4():
    s = fixed(TcpSocket())
    s.connect(0.0, ("::", 40000), ("::ffff:10.0.2.2", 80))
    [(dst, src, syn, _)] = out(s, 0.0)
    assert dst == R4 and src == L4
    assert syn.max_seg_size == 1460
    assert s.remote_endpoint == (R4, 80)


def test_connect_family_mismatch_refused():
    with pytest.raises(Unaddressable):
        TcpSocket().connect(0.0, (str(L4), 0), (str(R6), 80))
    with pytest.raises(Unaddressable):
        TcpSocket().connect(0.0, (str(L6), 0), (str(R4), 80))
    s = TcpSocket()
    s.v6only = True
    with pytest.raises(Unaddressable):
        s.connect(0.0, ("::", 0), ("::ffff:10.0.2.2", 80))


def test_data_segments_use_v6_mss_and_gso_limit():
    s = established6(mss_opt=1091, congestion="reno")  # 60 × 1091 = 65460
    s.snd_wnd = s.max_snd_wnd = 1 << 20
    s._cc._cwnd = 1 << 20
    s.set_max_segment_size(1 << 20)
    s.send(bytes(200_000))
    pkts = out(s, 0.0)
    sizes = [len(t.payload) for _, _, t, _ in pkts]
    assert max(sizes) == 60 * 1091  # over IPv4 (65535 - 80) it would be 59 × 1091
    assert all(kw.get("gso_size") == 1091 for _, _, t, kw in pkts if len(t.payload) > 1091)


def test_peer_without_mss_option_gets_1220():
    s = established6(mss_opt=None)
    s.send(bytes(5000))
    sizes = [len(t.payload) for _, _, t, _ in out(s, 0.0)]
    assert sizes and max(sizes) == 1220


# -- dual stack ------------------------------------------------------------------------------
def test_v6only_listen_ignores_ipv4():
    s = fixed(TcpSocket())
    s.listen(("::", PORT), v6only=True)
    assert not feed(s, 0.0, IRS, flags=SYN, src=R4, dst=L4)
    assert feed(s, 0.0, IRS, flags=SYN)


def test_ipv4_listen_ignores_ipv6():
    s = fixed(TcpSocket())
    s.listen(("0.0.0.0", PORT))
    assert not feed(s, 0.0, IRS, flags=SYN)
    assert feed(s, 0.0, IRS, flags=SYN, src=R4, dst=L4)


def test_specific_v6_listen():
    s = fixed(TcpSocket())
    s.listen((str(L6), PORT))
    assert not feed(s, 0.0, IRS, flags=SYN, dst=IPv6Address("fd00::99"))
    assert feed(s, 0.0, IRS, flags=SYN)


@pytest.mark.parametrize("a, a6, b, b6, clash", [
    ("::", False, "0.0.0.0", False, True),
    ("::", True, "0.0.0.0", False, False),
    ("::", True, "::", False, True),
    ("::", False, "10.0.2.15", False, True),
    ("::", True, "10.0.2.15", False, False),
    ("0.0.0.0", False, "fd00::1", False, False),
    ("fd00::1", False, "fd00::1", False, True),
    ("fd00::1", False, "fd00::2", False, False),
    ("::ffff:10.0.2.15", False, "0.0.0.0", False, True),
])
def test_listen_port_clash_rules(a, a6, b, b6, clash):
    sockets = SocketSet()
    first = TcpSocket()
    first.listen((a, PORT), v6only=a6)
    sockets.add(first)
    second = TcpSocket()
    sockets.add(second)
    if clash:
        with pytest.raises(AddrInUse):
            second.listen((b, PORT), v6only=b6)
    else:
        second.listen((b, PORT), v6only=b6)


# -- listener --------------------------------------------------------------------------------
def test_listener_accepts_both_families_with_family_mss():
    lst = TcpListener(4)
    lst.set_mtu(1500)
    lst.listen(("::", PORT))
    assert feed(lst, 0.0, IRS, flags=SYN, max_seg_size=1440)
    assert feed(lst, 0.0, IRS, flags=SYN, src=R4, dst=L4, max_seg_size=1460)
    pkts = out(lst, 0.0)
    by_dst = {dst: t for dst, _, t, _ in pkts}
    assert by_dst[R6].max_seg_size == 1440 and by_dst[R4].max_seg_size == 1460
    for (dst, _src, synack, _), src in zip(pkts, (R6, R4), strict=True):
        assert dst == src
        feed(lst, 0.0, IRS + 1, synack.seq_number + 1, src=src, dst=L6 if src == R6 else L4)
    a, b = lst.accept(), lst.accept()
    assert {a.remote_endpoint[0], b.remote_endpoint[0]} == {R6, R4}


def test_listener_v6only():
    lst = TcpListener(4)
    lst.listen(("::", PORT), v6only=True)
    assert not feed(lst, 0.0, IRS, flags=SYN, src=R4, dst=L4)
    assert feed(lst, 0.0, IRS, flags=SYN)


def test_syn_cookie_over_ipv6():
    lst = TcpListener(4, max_half_open=1)
    lst.set_mtu(1500)
    lst.listen(("::", PORT))
    assert feed(lst, 0.0, IRS, flags=SYN, max_seg_size=1440)
    other = IPv6Address("fd00:10:0:2::3")
    assert feed(lst, 0.0, 777, flags=SYN, src=other, max_seg_size=1440)
    pkts = out(lst, 0.0)
    cookie = [t for dst, _, t, _ in pkts if dst == other]
    assert cookie and cookie[0].flags == SYN | ACK and cookie[0].max_seg_size == 1440
    assert feed(lst, 1.0, 778, cookie[0].seq_number + 1, src=other, payload=b"hi")
    assert lst.stats.get("cookie_accepted") == 1
    child = lst.accept()
    assert child.remote_endpoint == (other, RPORT)
    assert child._peer_mss == 1440
    assert child.recv() == b"hi"


def test_rst_reply_v6_unchanged_rules():
    seg = TcpRepr(RPORT, PORT, 100, None, SYN, 1000)
    reply = rst_reply(Ipv6Repr(R6, L6, 6, 20), seg)
    assert reply.flags == RST | ACK and reply.ack_number == 101


def test_isn_hashes_ipv6_tuples():
    gen = isn_mod.IsnGenerator(key=bytes(32))
    a = gen.isn(0.0, (L6, 80), (R6, 5000))
    b = gen.isn(0.0, (L6, 80), (ip_address("fd00:10:0:2::3"), 5000))
    assert a != b
    assert (gen.isn(1.0, (L6, 80), (R6, 5000)) - a) % 2**32 == isn_mod.TICKS_PER_SECOND


# -- path MTU --------------------------------------------------------------------------------
def test_set_path_mtu_shrinks_and_resends_at_once():
    s = established6()
    s.send(bytes(10_000))
    first = out(s, 0.0)
    assert max(len(t.payload) for _, _, t, _ in first) == 1440
    s.set_path_mtu(1400)
    again = out(s, 0.01)  # long before any RTO
    assert again, "nothing resent after the Packet Too Big"
    assert again[0][2].seq_number == ISS + 1
    assert max(len(t.payload) for _, _, t, _ in again) == 1400 - 60
    assert s.stats["path_mtu_lowered"] == 1


def test_set_path_mtu_floor_and_no_raise():
    s = established6()
    s.set_path_mtu(600)
    assert s._eff_mss() == 1220  # the IPv6 minimum MTU 1280 less 60
    s.set_path_mtu(1500)  # a larger MTU never raises it
    assert s._eff_mss() == 1220


def test_set_path_mtu_ipv4_floor():
    s = fixed(TcpSocket(timestamps=False))
    s.listen(("0.0.0.0", PORT))
    feed(s, 0.0, IRS, flags=SYN, src=R4, dst=L4, max_seg_size=1460)
    out(s, 0.0)
    feed(s, 0.0, IRS + 1, ISS + 1, src=R4, dst=L4)
    s.set_path_mtu(1000)
    assert s._eff_mss() == 960
    s.set_path_mtu(100)
    assert s._eff_mss() == 536


def test_tso_for_ipv4_only_keeps_ipv6_segments_to_one_mss():
    """A device that segments IPv4 but not IPv6 (guest without GUEST_TSO6): an IPv6
    connection must send MSS-sized segments, never 64 KiB ones the interface would have to
    cut into IP fragments."""
    s = established6(mss_opt=1440, congestion="reno")
    s.snd_wnd = s.max_snd_wnd = 1 << 20
    s._cc._cwnd = 1 << 20
    s.set_max_segment_size(1 << 16, ipv6=False)
    s.send(bytes(100_000))
    sizes = [len(t.payload) for _, _, t, kw in out(s, 0.0)]
    assert sizes and max(sizes) == 1440
