"""TcpSocket and TcpListener, smoltcp style: segments built with scapy go into the socket,
and its replies (emitted through a fake `emit`, parsed back with `TcpRepr.parse`) are
checked field by field. Tests are named `test_<state>_<event>`."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from netstack.socket.set import SocketSet
from netstack.socket.tcp import isn as isn_mod
from netstack.socket.tcp.listener import TcpListener
from netstack.socket.tcp.socket import InvalidState, TcpSocket, rst_reply
from netstack.socket.tcp.state import State
from netstack.wire.ipv4 import Ipv4Repr
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpPacket, TcpRepr

LOCAL_IP = IPv4Address("192.168.1.1")
REMOTE_IP = IPv4Address("192.168.1.2")
LOCAL_PORT = 80
REMOTE_PORT = 49500
LOCAL = (LOCAL_IP, LOCAL_PORT)
REMOTE = (REMOTE_IP, REMOTE_PORT)
ISS = 5000
IRS = 10000
MASK = 0xFFFFFFFF


# -- harness -------------------------------------------------------------------------------
class Recorder:
    """A fake `Interface.emit`: builds each packet (buffer pre-filled with 0xA5), parses
    it back and records (ip_repr, tcp_repr)."""

    def __init__(self, src=LOCAL_IP) -> None:
        self.src = src
        self.packets: list[tuple[Ipv4Repr, TcpRepr]] = []
        self.room = None  # packets the "device" takes before it is full

    def __call__(self, dst, protocol, payload_len, fill, src=None, **kw) -> bool:
        assert protocol == 6
        if self.room is not None:
            if self.room == 0:
                return False
            self.room -= 1
        buf = bytearray(b"\xa5" * (payload_len + 8))
        src = src or self.src
        fill(memoryview(buf), src, True)
        assert buf[payload_len:] == b"\xa5" * 8  # wrote exactly payload_len bytes
        data = bytes(buf[:payload_len])
        tcp = TcpRepr.parse(TcpPacket(data), src, dst)  # checksum verified
        tcp = TcpRepr(**{f: getattr(tcp, f) for f in TcpRepr.__dataclass_fields__
                         if f != "payload"}, payload=bytes(tcp.payload))
        self.packets.append((Ipv4Repr(src, dst, 6, payload_len), tcp))
        return True


def scapy_segment(seq, ack=None, flags="", window=65535, options=(), payload=b"",
                  sport=REMOTE_PORT, dport=LOCAL_PORT, src=REMOTE_IP, dst=LOCAL_IP,
                  urgptr=0):
    flag_str = flags + ("A" if ack is not None and "A" not in flags else "")
    pkt = IP(src=str(src), dst=str(dst)) / TCP(
        sport=sport, dport=dport, seq=seq & MASK, ack=(ack or 0) & MASK, flags=flag_str,
        window=window, options=list(options), urgptr=urgptr)
    if payload:
        pkt = pkt / Raw(payload)
    raw = bytes(pkt)
    ihl = (raw[0] & 0x0F) * 4
    return raw[ihl:]


def feed(sock, now, seq, ack=None, flags="", *, src=REMOTE_IP, dst=LOCAL_IP, **kw):
    """Build a segment with scapy, parse it as the interface would, hand it to `sock`.
    Returns whether the socket accepted it."""
    raw = scapy_segment(seq, ack, flags, src=src, dst=dst, **kw)
    tcp = TcpRepr.parse(TcpPacket(raw), src, dst)
    ip = Ipv4Repr(src, dst, 6, len(raw))
    if not sock.accepts(ip, tcp):
        return False
    sock.process(now, ip, tcp, tcp.payload, None)
    return True


def out(sock, now):
    """Everything the socket emits now."""
    rec = Recorder()
    sock.dispatch(now, rec)
    return [t for _, t in rec.packets]


def one(sock, now):
    segs = out(sock, now)
    assert len(segs) == 1, segs
    return segs[0]


def fixed_isn(iss):
    return lambda now, local, remote: iss


def new_socket(iss=ISS, **kw):
    s = TcpSocket(**kw)
    s.isn_fn = fixed_isn(iss)
    return s


def established(iss=ISS, irs=IRS, options=(("MSS", 1460),), window=65535, **kw):
    """A socket that went LISTEN → SYN-RECEIVED → ESTABLISHED at t=0."""
    s = new_socket(iss, **kw)
    s.listen(LOCAL)
    feed(s, 0.0, irs, flags="S", options=options, window=window)
    synack = one(s, 0.0)
    assert synack.flags == SYN | ACK
    feed(s, 0.0, irs + 1, iss + 1, window=window)
    assert s.state is State.ESTABLISHED
    return s


def plain(**kw):
    """Established without window scaling, SACK or timestamps (simple numbers)."""
    return established(timestamps=False, sack=False, window_scaling=False, **kw)


# -- ISN and RST helper ---------------------------------------------------------------------
def test_isn_clock_and_key():
    g = isn_mod.IsnGenerator(key=bytes(32))
    a = g.isn(0.0, LOCAL, REMOTE)
    assert (g.isn(1.0, LOCAL, REMOTE) - a) % 2**32 == 250_000
    assert g.isn(0.0, LOCAL, (REMOTE_IP, REMOTE_PORT + 1)) != a
    assert isn_mod.IsnGenerator().isn(0.0, LOCAL, REMOTE) != a  # random key


def test_rst_reply_rules():
    ip = Ipv4Repr(REMOTE_IP, LOCAL_IP, 6, 20)
    syn = TcpRepr(REMOTE_PORT, LOCAL_PORT, 100, None, SYN, 1000)
    r = rst_reply(ip, syn)
    assert (r.src_port, r.dst_port, r.seq_number, r.ack_number, r.flags) == \
        (LOCAL_PORT, REMOTE_PORT, 0, 101, RST | ACK)
    ack = TcpRepr(REMOTE_PORT, LOCAL_PORT, 100, 777, ACK, 1000, payload=b"abc")
    r = rst_reply(ip, ack)
    assert (r.seq_number, r.ack_number, r.flags) == (777, None, RST)
    assert rst_reply(ip, TcpRepr(REMOTE_PORT, LOCAL_PORT, 1, None, RST, 0)) is None


# -- LISTEN / SYN-RECEIVED ----------------------------------------------------------------
def test_listen_syn():
    s = new_socket()
    s.listen(LOCAL_PORT)
    assert feed(s, 0.0, IRS, flags="S", options=[("MSS", 1400), ("SAckOK", b""),
                                                  ("Timestamp", (777, 0)), ("WScale", 7)])
    assert s.state is State.SYN_RECEIVED
    r = one(s, 0.0)
    assert r.src_port == LOCAL_PORT and r.dst_port == REMOTE_PORT
    assert r.flags == SYN | ACK
    assert r.seq_number == ISS and r.ack_number == IRS + 1
    assert r.max_seg_size == 1460
    assert r.window_scale == 3  # 256 KiB buffer
    assert r.sack_permitted
    assert r.timestamp[1] == 777
    assert r.window_len == 65535
    assert s.remote_endpoint == REMOTE and s.local_endpoint == LOCAL


def test_listen_syn_no_options():
    s = new_socket()
    s.listen(LOCAL)
    feed(s, 0.0, IRS, flags="S")
    r = one(s, 0.0)
    # the peer offered nothing: we must not use scaling, SACK or timestamps
    assert r.window_scale is None and not r.sack_permitted and r.timestamp is None
    feed(s, 0.0, IRS + 1, ISS + 1)
    s.send(b"x" * 2000)
    segs = out(s, 0.0)
    assert [len(t.payload) for t in segs] == [536, 536, 536]  # default MSS; Nagle holds 392
    assert s._eff_mss() == 536


def test_listen_ack():
    # not taken: the interface answers it with rst_reply (tested above)
    s = new_socket()
    s.listen(LOCAL)
    assert not feed(s, 0.0, IRS, 1234)
    assert s.state is State.LISTEN
    # and if it is handed over anyway, the socket answers with the same RST
    raw = scapy_segment(IRS, 1234)
    tcp = TcpRepr.parse(TcpPacket(raw), REMOTE_IP, LOCAL_IP)
    s.process(0.0, Ipv4Repr(REMOTE_IP, LOCAL_IP, 6, len(raw)), tcp, tcp.payload)
    r = one(s, 0.0)
    assert r.flags == RST and r.seq_number == 1234 and r.ack_number is None
    assert s.state is State.LISTEN


def test_listen_rst():
    s = new_socket()
    s.listen(LOCAL)
    assert not feed(s, 0.0, IRS, flags="R")
    assert out(s, 0.0) == [] and s.state is State.LISTEN


def test_listen_other_port_not_accepted():
    s = new_socket()
    s.listen(LOCAL)
    assert not feed(s, 0.0, IRS, flags="S", dport=81)


def test_syn_received_ack():
    s = established()
    assert s.state is State.ESTABLISHED and s.is_active and s.may_send


def test_syn_received_syn_retransmitted():
    s = new_socket()
    s.listen(LOCAL)
    feed(s, 0.0, IRS, flags="S")
    one(s, 0.0)
    feed(s, 0.5, IRS, flags="S")  # our SYN-ACK was lost
    r = one(s, 0.5)
    assert r.flags == SYN | ACK and r.seq_number == ISS and r.ack_number == IRS + 1


def test_syn_received_rto():
    s = new_socket()
    s.listen(LOCAL)
    feed(s, 0.0, IRS, flags="S")
    one(s, 0.0)
    assert s.poll_at(0.0) == pytest.approx(1.0)
    assert out(s, 0.5) == []
    r = one(s, 1.0)
    assert r.flags == SYN | ACK and r.seq_number == ISS


def test_syn_received_rst_back_to_listen():
    s = new_socket()
    s.listen(LOCAL)
    feed(s, 0.0, IRS, flags="S")
    one(s, 0.0)
    feed(s, 0.0, IRS + 1, flags="R")
    assert s.state is State.LISTEN and s.error is None
    assert feed(s, 0.0, IRS + 50, flags="S", sport=REMOTE_PORT + 1)  # listening again


def test_syn_received_bad_ack():
    s = new_socket()
    s.listen(LOCAL)
    feed(s, 0.0, IRS, flags="S")
    one(s, 0.0)
    feed(s, 0.0, IRS + 1, ISS + 100)
    r = one(s, 0.0)
    assert r.flags == RST and r.seq_number == ISS + 100
    assert s.state is State.SYN_RECEIVED


def test_syn_received_close_then_ack_sends_fin():
    s = new_socket(timestamps=False)
    s.listen(LOCAL)
    feed(s, 0.0, IRS, flags="S")
    one(s, 0.0)
    s.close()
    assert s.state is State.SYN_RECEIVED
    feed(s, 0.0, IRS + 1, ISS + 1)
    assert s.state is State.FIN_WAIT_1
    r = one(s, 0.0)
    assert r.flags == FIN | ACK and r.seq_number == ISS + 1


# -- SYN-SENT -------------------------------------------------------------------------------
def connecting(**kw):
    s = new_socket(**kw)
    s.connect(0.0, (LOCAL_IP, LOCAL_PORT), REMOTE)
    return s


def test_syn_sent_syn():
    s = connecting()
    assert s.state is State.SYN_SENT
    r = one(s, 0.0)
    assert r.flags == SYN and r.seq_number == ISS and r.ack_number is None
    assert r.max_seg_size == 1460 and r.window_scale == 3 and r.sack_permitted
    assert r.timestamp is not None and r.timestamp[1] == 0
    assert out(s, 0.0) == []


def test_syn_sent_syn_ack():
    s = connecting(timestamps=False)
    one(s, 0.0)
    feed(s, 0.01, IRS, ISS + 1, flags="S", options=[("MSS", 1000), ("WScale", 2)],
         window=1000)
    assert s.state is State.ESTABLISHED
    r = one(s, 0.01)
    assert r.flags == ACK and r.seq_number == ISS + 1 and r.ack_number == IRS + 1
    assert r.window_len == (256 * 1024) >> 3 - 1 or r.window_len == 32768
    assert s.snd_wnd == 1000  # SYN windows are never scaled
    feed(s, 0.02, IRS + 1, ISS + 1, window=1000)
    assert s.snd_wnd == 4000  # now scaled by 2


def test_syn_sent_rst_ack_refused():
    s = connecting()
    one(s, 0.0)
    feed(s, 0.0, 0, ISS + 1, flags="R")
    assert s.state is State.CLOSED and s.error == "refused"


def test_syn_sent_rst_bad_ack_ignored():
    s = connecting()
    one(s, 0.0)
    feed(s, 0.0, 0, ISS + 7, flags="R")
    feed(s, 0.0, 0, flags="R")  # no ACK: ignored
    assert s.state is State.SYN_SENT


def test_syn_sent_bad_ack():
    s = connecting()
    one(s, 0.0)
    feed(s, 0.0, IRS, ISS + 50, flags="S")
    r = one(s, 0.0)
    assert r.flags == RST and r.seq_number == ISS + 50
    assert s.state is State.SYN_SENT


def test_syn_sent_syn_simultaneous_open():
    s = connecting(timestamps=False)
    one(s, 0.0)
    feed(s, 0.0, IRS, flags="S")
    assert s.state is State.SYN_RECEIVED
    r = one(s, 0.0)
    assert r.flags == SYN | ACK and r.seq_number == ISS and r.ack_number == IRS + 1
    feed(s, 0.0, IRS + 1, ISS + 1)
    assert s.state is State.ESTABLISHED


def test_syn_sent_rto_backoff_and_limit():
    s = connecting()
    one(s, 0.0)
    t, times = 0.0, []
    while s.state is State.SYN_SENT:
        t = s.poll_at(t)
        segs = out(s, t)
        if segs:
            assert segs[0].flags == SYN and segs[0].seq_number == ISS
            times.append(t)
    assert times == pytest.approx([1, 3, 7, 15, 31, 63])
    assert s.error == "timed out"


# -- ESTABLISHED: data ----------------------------------------------------------------------
def test_established_recv_delayed_ack():
    s = plain()
    feed(s, 0.0, IRS + 1, ISS + 1, flags="P", payload=b"hello")
    assert s.recv_queue == 5
    assert out(s, 0.0) == []  # delayed
    assert s.poll_at(0.0) == pytest.approx(0.04)
    r = one(s, 0.04)
    assert r.flags == ACK and r.ack_number == IRS + 6 and r.seq_number == ISS + 1
    assert s.recv(100) == b"hello"


def test_established_recv_two_full_segments_ack_at_once():
    s = plain()
    feed(s, 0.0, IRS + 1, ISS + 1, payload=b"a" * 1460)
    feed(s, 0.0, IRS + 1461, ISS + 1, payload=b"b" * 1460)
    r = one(s, 0.0)
    assert r.ack_number == IRS + 1 + 2920


def test_established_send_data():
    s = plain()
    assert s.send(b"abcdef") == 6
    r = one(s, 0.0)
    assert r.payload == b"abcdef" and r.seq_number == ISS + 1 and r.flags == PSH | ACK
    assert r.ack_number == IRS + 1
    feed(s, 0.01, IRS + 1, ISS + 7)
    assert s.send_queue == 0 and s.snd_una == ISS + 7
    assert s.poll_at(0.01) is None


def test_established_send_segmentation_and_nagle():
    s = plain()
    s.send(b"x" * 3000)
    segs = out(s, 0.0)
    assert [len(t.payload) for t in segs] == [1460, 1460]  # 80 bytes wait: Nagle
    feed(s, 0.01, IRS + 1, ISS + 1 + 2920)
    r = one(s, 0.01)
    assert len(r.payload) == 80


def test_established_send_nodelay():
    s = plain()
    s.set_nodelay(True)
    s.send(b"a")
    one(s, 0.0)
    s.send(b"b")
    assert one(s, 0.0).payload == b"b"


def test_established_send_buffer_full():
    s = plain(tx_buffer_size=100)
    assert s.send(b"x" * 150) == 100
    assert not s.can_send()
    assert s.send(b"y") == 0


def test_established_rto_retransmit_and_backoff():
    s = plain()
    s.send(b"data")
    one(s, 0.0)
    t1 = s.poll_at(0.0)
    assert t1 == pytest.approx(1.0)
    r = one(s, t1)
    assert r.payload == b"data" and r.seq_number == ISS + 1
    t2 = s.poll_at(t1)
    assert t2 - t1 == pytest.approx(2.0)  # doubled
    one(s, t2)
    assert s.poll_at(t2) - t2 == pytest.approx(4.0)
    feed(s, t2 + 0.01, IRS + 1, ISS + 5)
    assert s.poll_at(t2 + 0.01) is None


def test_established_retransmissions_exhausted():
    s = plain()
    s.data_retries = 3
    s.send(b"data")
    t = 0.0
    while s.state is State.ESTABLISHED:
        out(s, t)
        t = s.poll_at(t)
    assert s.error == "timed out"


def test_established_user_timeout():
    s = plain(timeout=2.5)
    s.send(b"data")
    out(s, 0.0)
    t = 0.0
    while s.state is State.ESTABLISHED:
        t = s.poll_at(t)
        segs = out(s, t)
    assert t == pytest.approx(2.5) and s.error == "timed out"
    assert segs[-1].flags == RST


def test_established_out_of_order_then_gap_fill_with_sack():
    s = established(options=[("MSS", 1460), ("SAckOK", b"")])
    base = IRS + 1
    feed(s, 0.0, base + 100, ISS + 1, payload=b"B" * 100)
    r = one(s, 0.0)  # immediate duplicate ACK with a SACK block
    assert r.ack_number == base
    assert r.sack_ranges == ((base + 100, base + 200),)
    feed(s, 0.0, base + 300, ISS + 1, payload=b"D" * 100)
    r = one(s, 0.0)
    assert r.sack_ranges == ((base + 300, base + 400), (base + 100, base + 200))
    feed(s, 0.0, base, ISS + 1, payload=b"A" * 100)  # fills the first gap
    r = one(s, 0.0)
    assert r.ack_number == base + 200 and r.sack_ranges == ((base + 300, base + 400),)
    feed(s, 0.0, base + 200, ISS + 1, payload=b"C" * 100)
    r = one(s, 0.0)
    assert r.ack_number == base + 400 and r.sack_ranges == ()
    assert s.recv() == b"A" * 100 + b"B" * 100 + b"C" * 100 + b"D" * 100


def test_established_duplicate_and_overlapping_segments():
    s = plain()
    base = IRS + 1
    feed(s, 0.0, base, ISS + 1, payload=b"0123456789")
    feed(s, 0.0, base + 5, ISS + 1, payload=b"56789abcde")  # overlaps
    feed(s, 0.0, base, ISS + 1, payload=b"0123")  # old duplicate
    assert s.recv() == b"0123456789abcde"
    r = out(s, 0.0)[-1]
    assert r.ack_number == base + 15


def test_established_sack_scoreboard_skips_sacked_data():
    s = established(options=[("MSS", 1000), ("SAckOK", b"")])
    s.set_nodelay(True)
    s.send(b"z" * 4000)
    segs = out(s, 0.0)
    assert [t.seq_number - ISS - 1 for t in segs] == [0, 1000, 2000, 3000]
    una = ISS + 1
    for k in (2, 3, 4):  # segments 2..4 arrived, segment 1 lost
        feed(s, 0.01, IRS + 1, una, options=[("SAck", (una + 1000, una + 1000 * k))])
    r = one(s, 0.01)  # fast retransmit of the hole only
    assert r.seq_number == una and len(r.payload) == 1000
    assert s.stats["fast_retransmit"] == 1
    # a timeout now resends only the un-SACKed hole
    t = s.poll_at(0.01)
    segs = out(s, t)
    assert [(x.seq_number - una, len(x.payload)) for x in segs] == [(0, 1000)]


def test_established_fast_retransmit_newreno_partial_ack():
    s = plain()
    s.set_nodelay(True)
    s.send(b"q" * 5840)
    segs = out(s, 0.0)
    assert len(segs) == 4
    una = ISS + 1
    for _ in range(3):
        feed(s, 0.01, IRS + 1, una)
    r = one(s, 0.01)
    assert r.seq_number == una
    feed(s, 0.02, IRS + 1, una + 1460)  # partial ACK: the next hole goes at once
    r = one(s, 0.02)
    assert r.seq_number == una + 1460
    feed(s, 0.03, IRS + 1, una + 5840)  # full ACK ends recovery
    assert not s._in_recovery and s.send_queue == 0


def test_established_window_full_and_zero_window_probe():
    s = plain(window=1000)
    s.set_nodelay(True)
    s.send(b"w" * 3000)
    r = one(s, 0.0)
    assert len(r.payload) == 1000
    feed(s, 0.01, IRS + 1, ISS + 1001, window=0)
    assert out(s, 0.01) == []
    t = s.poll_at(0.01)
    assert t is not None and t > 0.01
    probe = one(s, t)
    assert probe.seq_number == ISS + 1000 and probe.payload == b""  # SND.UNA - 1
    t2 = s.poll_at(t)
    assert t2 - t > t - 0.01  # backoff
    feed(s, t + 0.01, IRS + 1, ISS + 1001, window=2000)
    segs = out(s, t + 0.01)
    assert sum(len(x.payload) for x in segs) == 2000


def test_established_recv_window_closes_and_update():
    s = plain(rx_buffer_size=4096)
    base = IRS + 1
    feed(s, 0.0, base, ISS + 1, payload=b"a" * 1460)
    feed(s, 0.0, base + 1460, ISS + 1, payload=b"b" * 1460)
    feed(s, 0.0, base + 2920, ISS + 1, payload=b"c" * 1176)
    r = out(s, 0.0)[-1]
    assert r.ack_number == base + 4096 and r.window_len == 0
    feed(s, 0.0, base + 4096, ISS + 1, payload=b"x")  # beyond the zero window
    r = one(s, 0.0)
    assert r.ack_number == base + 4096 and r.window_len == 0
    s.recv(100)  # too little to reopen (silly window avoidance)
    assert out(s, 0.0) == []
    s.recv(3000)
    r = one(s, 0.0)  # window update
    assert r.window_len == 3100


def test_established_shutdown_read_keeps_the_window():
    # Data discarded after shutdown_read must not move RCV.ADV left: the next segment of
    # the window we advertised, arriving before our ACK, is still taken (found by the tcp
    # fuzz target: it was dropped as out of window)
    s = plain()
    s.shutdown_read()
    edge = s.rcv_adv
    feed(s, 0.0, IRS + 1, ISS + 1, payload=b"a" * 100)
    assert s.rcv_adv == edge
    feed(s, 0.0, IRS + 101, ISS + 1, payload=b"b" * 100)
    assert s.rcv_nxt == IRS + 201 and s.stats.get("unacceptable", 0) == 0
    assert one(s, 0.0).ack_number == IRS + 201


def test_established_large_received_segment():
    s = plain()
    data = bytes(random.Random(1).randbytes(60000))
    feed(s, 0.0, IRS + 1, ISS + 1, payload=data)
    assert s.recv() == data


def test_established_tso_segments():
    sent = []
    s = plain()
    s.set_max_segment_size(65000)
    s.set_nodelay(True)
    s.send(b"t" * 30000)

    def emit(dst, proto, n, fill, src=None, **kw):
        sent.append((n, kw.get("gso_size")))
        return True

    s.dispatch(0.0, emit)
    assert sent[0] == (20 + 14600, 1460)  # the initial window, in one emit


def test_established_mtu_clamps_mss():
    s = new_socket(timestamps=False)
    s.set_mtu(1000)
    s.listen(LOCAL)
    feed(s, 0.0, IRS, flags="S", options=[("MSS", 1460)])
    assert one(s, 0.0).max_seg_size == 960


# -- ESTABLISHED: RST, SYN, bad ACKs (RFC 5961) --------------------------------------------
def test_established_rst_exact():
    s = plain()
    feed(s, 0.0, IRS + 1, flags="R")
    assert s.state is State.CLOSED and s.error == "reset"


def test_established_rst_in_window_not_exact_challenge_ack():
    s = plain()
    feed(s, 0.0, IRS + 100, flags="R")
    assert s.state is State.ESTABLISHED
    r = one(s, 0.0)
    assert r.flags == ACK and r.seq_number == ISS + 1 and r.ack_number == IRS + 1


def test_established_rst_out_of_window_dropped():
    s = plain()
    feed(s, 0.0, IRS - 100, flags="R")
    feed(s, 0.0, IRS + 1 + 10_000_000, flags="R")
    assert s.state is State.ESTABLISHED and out(s, 0.0) == []


def test_established_syn_challenge_ack():
    s = plain()
    feed(s, 0.0, IRS + 50, flags="S")
    assert s.state is State.ESTABLISHED
    r = one(s, 0.0)
    assert r.flags == ACK and r.ack_number == IRS + 1


def test_established_ack_above_snd_nxt_challenge_ack():
    s = plain()
    feed(s, 0.0, IRS + 1, ISS + 1000, payload=b"evil")
    assert s.recv_queue == 0  # dropped
    r = one(s, 0.0)
    assert r.flags == ACK and r.ack_number == IRS + 1 and r.seq_number == ISS + 1


def test_established_ack_too_old_challenge_ack():
    s = plain()
    feed(s, 0.0, IRS + 1, ISS + 1 - 200_000, payload=b"old")
    assert s.recv_queue == 0
    assert one(s, 0.0).ack_number == IRS + 1


def test_established_challenge_acks_rate_limited():
    s = plain()
    sent = 0
    for i in range(50):
        feed(s, 0.5, IRS + 100 + i, flags="R")
        sent += len(out(s, 0.5))
    assert sent == 10
    assert s.stats["challenge_ack_limited"] == 40
    feed(s, 1.5, IRS + 100, flags="R")  # a new second
    assert len(out(s, 1.5)) == 1
    assert s.state is State.ESTABLISHED


def test_established_unacceptable_segment_acked():
    s = plain()
    feed(s, 0.0, IRS + 1 + 100_000, ISS + 1, payload=b"far")
    r = one(s, 0.0)
    assert r.ack_number == IRS + 1 and s.recv_queue == 0


def test_established_paws():
    s = established(options=[("MSS", 1460), ("Timestamp", (1000, 0))])
    ts = s._ts_recent
    assert ts == 1000
    feed(s, 0.0, IRS + 1, ISS + 1, payload=b"new", options=[("Timestamp", (1005, 0))])
    assert s.recv() == b"new"
    feed(s, 0.0, IRS + 4, ISS + 1, payload=b"old", options=[("Timestamp", (900, 0))])
    assert s.recv_queue == 0 and s.stats["paws_drop"] == 1


def test_established_timestamps_echoed():
    s = established(options=[("MSS", 1460), ("Timestamp", (1000, 0))])
    feed(s, 0.0, IRS + 1, ISS + 1, flags="P", payload=b"x" * 10,
         options=[("Timestamp", (1234, 0))])
    r = one(s, 0.04)
    assert r.timestamp[1] == 1234


def test_established_malformed_options():
    s = plain()
    bad = [
        b"\x02\x00\x05\xb4",  # option length 0
        b"\x08\x0a\x00\x00",  # runs past the header
        b"\x02\x04\x00\x00",  # MSS 0
        b"\x03\x03\x0f\x00",  # window scale 15
        b"\xfe\x04\xab\xcd",  # unknown kind
        b"\x05\x03\x00\x00",  # SACK with a bad length
    ]
    seq = IRS + 1
    for opt in bad:
        raw = bytearray(scapy_segment(seq, ISS + 1, payload=b"d"))
        raw = raw[:20] + bytearray(opt) + raw[20:]
        raw[12] = (24 // 4) << 4
        raw[16:18] = b"\x00\x00"
        tcp = TcpRepr.parse(TcpPacket(bytes(raw)), REMOTE_IP, LOCAL_IP, verify_checksum=False)
        ip = Ipv4Repr(REMOTE_IP, LOCAL_IP, 6, len(raw))
        assert s.accepts(ip, tcp)
        s.process(0.0, ip, tcp, tcp.payload)
        seq += 1
    assert s.recv() == b"d" * len(bad) and s.state is State.ESTABLISHED


def test_established_urgent_pointer_beyond_data():
    s = plain()
    feed(s, 0.0, IRS + 1, ISS + 1, flags="U", urgptr=60000, payload=b"urgent?")
    assert s.recv() == b"urgent?"  # treated as normal data, nothing over-read


def test_established_sequence_wrap():
    iss, irs = MASK - 10, MASK - 5
    s = plain(iss=iss, irs=irs)
    s.set_nodelay(True)
    s.send(b"0123456789abcdefghij")
    r = one(s, 0.0)
    assert r.seq_number == (iss + 1) & MASK
    feed(s, 0.01, irs + 1, iss + 21)
    assert s.send_queue == 0 and s.snd_una == (iss + 21) & MASK
    # received data across the wrap, out of order
    data = bytes(range(40))
    base = (irs + 1) & MASK
    feed(s, 0.0, base + 20, iss + 21, payload=data[20:])
    feed(s, 0.0, base + 10, iss + 21, payload=data[10:25])
    feed(s, 0.0, base, iss + 21, payload=data[:12])
    assert s.recv() == data
    assert s.rcv_nxt == (base + 40) & MASK


# -- FIN and closing --------------------------------------------------------------------------
def test_established_fin():
    s = plain()
    feed(s, 0.0, IRS + 1, ISS + 1, flags="F", payload=b"bye")
    assert s.state is State.CLOSE_WAIT
    r = one(s, 0.0)
    assert r.ack_number == IRS + 5
    assert s.recv() == b"bye"
    assert not s.may_recv and s.may_send


def test_established_fin_out_of_order():
    s = plain()
    feed(s, 0.0, IRS + 4, ISS + 1, flags="F")  # FIN before data 1..3
    assert s.state is State.ESTABLISHED
    feed(s, 0.0, IRS + 1, ISS + 1, payload=b"abc")
    assert s.state is State.CLOSE_WAIT and s.rcv_nxt == IRS + 5


def test_close_wait_close():
    s = plain()
    feed(s, 0.0, IRS + 1, ISS + 1, flags="F")
    one(s, 0.0)
    s.send(b"last")
    s.close()
    assert s.state is State.LAST_ACK
    r = one(s, 0.0)
    assert r.flags == FIN | ACK | PSH and r.payload == b"last"
    feed(s, 0.01, IRS + 2, ISS + 6)
    assert s.state is State.CLOSED and s.error is None


def test_last_ack_fin_retransmitted():
    s = plain()
    feed(s, 0.0, IRS + 1, ISS + 1, flags="F")
    one(s, 0.0)
    s.close()
    one(s, 0.0)
    r = one(s, s.poll_at(0.0))
    assert r.flags == FIN | ACK and r.seq_number == ISS + 1


def test_established_close():
    s = plain()
    s.close()
    assert s.state is State.FIN_WAIT_1
    r = one(s, 0.0)
    assert r.flags == FIN | ACK and r.seq_number == ISS + 1
    with pytest.raises(InvalidState):
        s.send(b"no")


def test_fin_wait_1_ack():
    s = plain()
    s.close()
    one(s, 0.0)
    feed(s, 0.0, IRS + 1, ISS + 2)
    assert s.state is State.FIN_WAIT_2
    feed(s, 0.0, IRS + 1, ISS + 2, payload=b"more")  # half-closed: still receiving
    assert s.recv() == b"more"


def test_fin_wait_2_fin_time_wait_expiry():
    s = plain(time_wait=30.0)
    s.close()
    one(s, 0.0)
    feed(s, 0.0, IRS + 1, ISS + 2)
    feed(s, 1.0, IRS + 1, ISS + 2, flags="F")
    assert s.state is State.TIME_WAIT
    r = one(s, 1.0)
    assert r.ack_number == IRS + 2
    feed(s, 5.0, IRS + 1, ISS + 2, flags="F")  # retransmitted FIN: ACK again, restart
    assert one(s, 5.0).ack_number == IRS + 2
    assert s.poll_at(5.0) == pytest.approx(35.0)
    out(s, 34.9)
    assert s.state is State.TIME_WAIT
    out(s, 35.0)
    assert s.state is State.CLOSED and s.error is None


def test_fin_wait_1_fin_simultaneous_close():
    s = plain()
    s.close()
    one(s, 0.0)
    feed(s, 0.0, IRS + 1, ISS + 1, flags="F")  # their FIN, not acking ours
    assert s.state is State.CLOSING
    assert one(s, 0.0).ack_number == IRS + 2
    feed(s, 0.0, IRS + 2, ISS + 2)
    assert s.state is State.TIME_WAIT


def test_fin_wait_1_fin_ack():
    s = plain()
    s.close()
    one(s, 0.0)
    feed(s, 0.0, IRS + 1, ISS + 2, flags="F")
    assert s.state is State.TIME_WAIT


def test_time_wait_rst():
    s = plain()
    s.close()
    one(s, 0.0)
    feed(s, 0.0, IRS + 1, ISS + 2, flags="F")
    one(s, 0.0)
    feed(s, 0.0, IRS + 2, flags="R")
    assert s.state is State.CLOSED and s.error is None


def test_established_abort():
    s = plain()
    s.abort()
    assert s.state is State.CLOSED
    r = one(s, 0.0)
    assert r.flags == RST and r.seq_number == ISS + 1
    assert s.poll_at(0.0) is None


def test_established_keep_alive():
    s = plain(keep_alive=10.0)
    assert s.poll_at(0.0) == pytest.approx(10.0)
    r = one(s, 10.0)
    assert r.seq_number == ISS and r.payload == b""  # SND.UNA - 1 elicits an ACK
    feed(s, 10.01, IRS + 1, ISS + 1)
    assert s.poll_at(10.01) == pytest.approx(20.01)


def test_established_keep_alive_dead_peer():
    s = plain(keep_alive=1.0)
    t = 0.0
    while s.state is State.ESTABLISHED:
        t = s.poll_at(t)
        out(s, t)
    assert s.error == "timed out" and t == pytest.approx(10.0)


def test_dispatch_stops_when_device_full():
    s = plain()
    s.set_nodelay(True)
    s.send(b"x" * 5000)
    rec = Recorder()
    rec.room = 1
    s.dispatch(0.0, rec)
    assert len(rec.packets) == 1
    rec.room = None
    s.dispatch(0.0, rec)
    assert [t.seq_number - ISS - 1 for _, t in rec.packets] == [0, 1460, 2920, 4380]


# -- two sockets over a lossy link ----------------------------------------------------------
class LossyLink:
    """Carries segments between sockets; drops `loss` of them and reorders some, seeded."""

    def __init__(self, seed, loss=0.05, reorder=0.2):
        self.rng = random.Random(seed)
        self.loss = loss
        self.reorder = reorder
        self.queue: list = []

    def emitter(self, src_ip):
        def emit(dst, proto, n, fill, src=None, **kw):
            buf = bytearray(n)
            src = src or src_ip
            fill(memoryview(buf), src, True)
            if self.rng.random() >= self.loss:
                self.queue.append((src, dst, bytes(buf)))
            return True
        return emit

    def deliver(self, now, sockets):
        queue, self.queue = self.queue, []
        if self.rng.random() < self.reorder:
            self.rng.shuffle(queue)
        for src, dst, raw in queue:
            tcp = TcpRepr.parse(TcpPacket(raw), src, dst)
            ip = Ipv4Repr(src, dst, 6, len(raw))
            for sock in sockets:
                if sock.accepts(ip, tcp):
                    sock.process(now, ip, tcp, tcp.payload)
                    break


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_transfer_one_mebibyte(seed):
    link = LossyLink(seed)
    client = TcpSocket()
    server = TcpSocket()
    server.listen((REMOTE_IP, 80))
    client.connect(0.0, (LOCAL_IP, 0), (REMOTE_IP, 80))
    c_emit, s_emit = link.emitter(LOCAL_IP), link.emitter(REMOTE_IP)
    data = random.Random(seed).randbytes(1 << 20)
    sent, got, now = 0, bytearray(), 0.0
    for _ in range(20000):
        if sent < len(data) and client.may_send:
            sent += client.send(data[sent:sent + 65536])
        client.dispatch(now, c_emit)
        server.dispatch(now, s_emit)
        link.deliver(now, [client, server])
        got += server.recv()
        if sent == len(data) and client.state is State.ESTABLISHED:
            client.close()
        if server.state is State.CLOSE_WAIT:
            server.close()
        if client.state is State.TIME_WAIT and server.state is State.CLOSED:
            break
        times = [t for t in (client.poll_at(now), server.poll_at(now)) if t is not None]
        now = max(now + 0.0005, min(times))
    assert bytes(got) == data
    assert client.state is State.TIME_WAIT and server.state is State.CLOSED
    assert server.error is None and client.error is None


# -- TcpListener --------------------------------------------------------------------------------
def listener_syn(lst, now, port, seq=IRS, options=(("MSS", 1460),)):
    return feed(lst, now, seq, flags="S", sport=port, options=options)


def test_listener_accept_into_set():
    sockets = SocketSet()
    lst = TcpListener(backlog=4, timestamps=False)
    lst.listen(LOCAL)
    sockets.add(lst)
    assert listener_syn(lst, 0.0, 40000)
    r = one(lst, 0.0)
    assert r.flags == SYN | ACK and r.ack_number == IRS + 1 and r.dst_port == 40000
    assert lst.accept() is None
    feed(lst, 0.0, IRS + 1, r.seq_number + 1, sport=40000, payload=b"hi")
    assert lst.pending == 1
    child = lst.accept()
    assert child is not None and child.state is State.ESTABLISHED
    assert child.handle in sockets and child.recv() == b"hi"
    # from now on the child, not the listener, takes the 4-tuple's segments: the set
    # offers a segment to its connection (by 4-tuple) before the port's listeners
    conns, listeners = sockets.tcp_lookup(LOCAL_PORT, REMOTE_IP, 40000)
    assert conns == (child,) and listeners == [lst]
    raw = scapy_segment(IRS + 3, r.seq_number + 1, sport=40000, payload=b"more")
    tcp = TcpRepr.parse(TcpPacket(raw), REMOTE_IP, LOCAL_IP)
    ip = Ipv4Repr(REMOTE_IP, LOCAL_IP, 6, len(raw))
    assert child.accepts(ip, tcp)
    # ...a SYN on it too (the child answers with a challenge ACK)
    syn = TcpRepr.parse(TcpPacket(scapy_segment(IRS + 99, flags="S", sport=40000)),
                        REMOTE_IP, LOCAL_IP)
    assert child.accepts(ip, syn)


def test_listener_ack_for_unknown_tuple_not_accepted():
    lst = TcpListener()
    lst.listen(LOCAL)
    assert not feed(lst, 0.0, IRS, 4242, sport=40001)  # the interface sends the RST


def test_listener_backlog_full_drops_syns():
    lst = TcpListener(backlog=2, timestamps=False)
    lst.listen(LOCAL)
    for port in (40000, 40001):
        listener_syn(lst, 0.0, port)
        synack = [t for t in out(lst, 0.0) if t.dst_port == port][0]
        feed(lst, 0.0, IRS + 1, synack.seq_number + 1, sport=port)
    assert lst.pending == 2
    listener_syn(lst, 0.0, 40002)
    assert lst.half_open == 0 and out(lst, 0.0) == []
    assert lst.stats["syn_dropped_backlog_full"] == 1
    assert lst.accept() is not None  # room again
    listener_syn(lst, 0.1, 40002)
    assert lst.half_open == 1


def test_listener_syn_flood_bounded_with_cookies():
    sockets = SocketSet()
    lst = TcpListener(backlog=8, max_half_open=32, timestamps=False)
    lst.listen(LOCAL)
    sockets.add(lst)
    # one real connection first
    listener_syn(lst, 0.0, 30000)
    synack = one(lst, 0.0)
    feed(lst, 0.0, IRS + 1, synack.seq_number + 1, sport=30000)
    child = lst.accept()
    # the flood: 10,000 4-tuples
    rng = random.Random(7)
    cookies = {}
    for i in range(10_000):
        ip = IPv4Address(0x0A000000 + i)
        port = 1024 + rng.randrange(60000)
        raw = scapy_segment(i, flags="S", sport=port, src=ip)
        tcp = TcpRepr.parse(TcpPacket(raw), ip, LOCAL_IP)
        ipr = Ipv4Repr(ip, LOCAL_IP, 6, len(raw))
        if lst.accepts(ipr, tcp):
            lst.process(0.01, ipr, tcp, tcp.payload)
        if i % 50 == 0:
            rec = Recorder()
            lst.dispatch(0.01, rec)
            for _, t in rec.packets:
                cookies[t.dst_port] = t
        assert lst.half_open <= 32 and len(lst._ctl) <= 64
    assert lst.stats["cookie_sent"] > 0
    # the established connection carries on
    feed(child, 0.02, IRS + 1, synack.seq_number + 1, sport=30000, payload=b"still here")
    assert child.recv() == b"still here"
    # a legitimate client answering a cookie SYN-ACK gets a connection
    sport = 55555
    raw = scapy_segment(777, flags="S", sport=sport, options=[("MSS", 1460)])
    tcp = TcpRepr.parse(TcpPacket(raw), REMOTE_IP, LOCAL_IP)
    ipr = Ipv4Repr(REMOTE_IP, LOCAL_IP, 6, len(raw))
    lst.process(0.03, ipr, tcp, tcp.payload)
    cookie_synack = [t for t in out(lst, 0.03) if t.dst_port == sport][0]
    assert cookie_synack.flags == SYN | ACK and cookie_synack.max_seg_size == 1460
    assert cookie_synack.window_scale is None
    assert feed(lst, 0.04, 778, cookie_synack.seq_number + 1, sport=sport, payload=b"c")
    assert lst.stats["cookie_accepted"] == 1
    c2 = lst.accept()
    assert c2.state is State.ESTABLISHED and c2.recv() == b"c" and c2._eff_mss() == 1460
    # a forged ACK is rejected with a RST
    feed(lst, 0.05, 999, 123456, sport=sport + 1)
    r = [t for t in out(lst, 0.05) if t.dst_port == sport + 1][0]
    assert r.flags == RST and r.seq_number == 123456


def test_listener_syn_flood_bounded_with_eviction():
    lst = TcpListener(backlog=8, max_half_open=16, syn_cookies=False)
    lst.listen(LOCAL)
    for i in range(1000):
        listener_syn(lst, 0.0, 1024 + i, seq=i)
    assert lst.half_open == 16 and lst.stats["half_open_evicted"] == 1000 - 16


def test_listener_half_open_expires():
    lst = TcpListener(timestamps=False)
    lst.listen(LOCAL)
    listener_syn(lst, 0.0, 40000)
    t = 0.0
    for _ in range(20):
        out(lst, t)
        nxt = lst.poll_at(t)
        if nxt is None:
            break
        t = nxt
    assert lst.half_open == 0 and lst.poll_at(t) is None


def test_listener_close_resets_pending():
    lst = TcpListener(timestamps=False)
    lst.listen(LOCAL)
    listener_syn(lst, 0.0, 40000)
    synack = one(lst, 0.0)
    feed(lst, 0.0, IRS + 1, synack.seq_number + 1, sport=40000)
    lst.close()
    r = one(lst, 0.0)
    assert r.flags == RST and r.dst_port == 40000
    assert not lst.is_open and lst.pending == 0
