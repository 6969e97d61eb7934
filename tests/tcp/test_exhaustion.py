"""TCP under exhaustion (ADVERSARIAL.md case 23): no connection held forever by a hostile or
broken peer, a bounded socket table, and a per-packet and per-poll cost that does not grow
with the table. Each test here failed before the limits of netstack.socket.limits."""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address

import pytest

from netstack.socket.errors import TableFull
from netstack.socket.limits import Limits
from netstack.socket.set import SocketSet
from netstack.socket.tcp.listener import TcpListener
from netstack.socket.tcp.socket import PERSIST_MAX, TcpSocket
from netstack.socket.tcp.state import State
from netstack.wire.tcp import FIN, RST
from tests.tcp.test_socket import IRS, ISS, Recorder, established, feed, listener_syn

HOUR = 3600.0


def _zero_window_after(s: TcpSocket, nbytes: int) -> int:
    """The app queues `nbytes`; the peer takes the first segment and shuts its window.
    Returns the peer's next expected byte."""
    s.send(b"x" * nbytes)
    rec = Recorder()
    s.dispatch(0.0, rec)
    sent = sum(len(t.payload) for _, t in rec.packets)
    assert sent
    ack = ISS + 1 + sent
    feed(s, 0.0, IRS + 1, ack, window=0)
    return ack


def _run(s: TcpSocket, until: float, answer_at: int | None, step: float = 1.0):
    """Advance a simulated clock to `until`; every probe is answered with window 0 (the
    peer is alive) unless `answer_at` is None (the peer is gone). Returns the probes
    and whether a RST went out, stopping when the socket closes."""
    probes = rst = 0
    t = 0.0
    while t < until and s.state is not State.CLOSED:
        t += step
        rec = Recorder()
        s.dispatch(t, rec)
        for _, seg in rec.packets:
            if seg.flags & RST:
                rst += 1
            elif answer_at is not None:
                probes += 1
                feed(s, t, IRS + 1, answer_at, window=0)
            else:
                probes += 1
        at = s.poll_at(t)
        if at is not None and at > t + step:
            t = at - step  # jump to the next timer
    return t, probes, rst


def test_orphan_zero_window_gives_up_though_the_peer_answers():
    """200 kB queued, the peer answers every probe with window 0, the app closes and lets
    go: it gave up never (1,447 probes in 24 simulated hours); now after
    `orphan_retries` probes at the longest interval, with a RST."""
    s = established()
    ack = _zero_window_after(s, 200_000)
    s.close()
    assert s.state is State.FIN_WAIT_1
    s.orphan(0.0)
    t, probes, rst = _run(s, 24 * HOUR, answer_at=ack)
    assert s.state is State.CLOSED and rst == 1
    assert t < 20 * PERSIST_MAX and probes < 30


def test_a_live_socket_with_a_shut_window_waits_while_the_peer_answers():
    """Its application still holds it (and may time its writes out): it keeps probing."""
    s = established()
    ack = _zero_window_after(s, 200_000)
    _run(s, 2 * HOUR, answer_at=ack)
    assert s.state is State.ESTABLISHED


def test_a_silent_peer_behind_a_shut_window_is_given_up():
    """The peer stops answering (not even its ARP: 1,440 failures in 24 h, and the socket
    was still there): unanswered probes count as retransmissions do."""
    s = established()
    _zero_window_after(s, 200_000)
    t, probes, rst = _run(s, 24 * HOUR, answer_at=None)
    assert s.state is State.CLOSED and rst == 1
    assert probes == s.data_retries and t < 2 * HOUR


def test_fin_wait_2_of_an_orphan_times_out():
    """The app closes, the peer acknowledges our FIN and never sends its own: FIN-WAIT-2
    had no deadline (only after shutdown_read, which close() never calls)."""
    s = established()
    s.close()
    rec = Recorder()
    s.dispatch(0.0, rec)
    fin = rec.packets[-1][1]
    assert fin.flags & FIN
    feed(s, 0.0, IRS + 1, ISS + 2)
    assert s.state is State.FIN_WAIT_2
    s.orphan(1.0)
    assert s.poll_at(1.0) == 1.0 + s.fin_timeout
    s.dispatch(1.0 + s.fin_timeout, Recorder())
    assert s.state is State.CLOSED


def _orphaned_time_wait(sockets: SocketSet, port: int) -> TcpSocket:
    s = established()
    s._local = (s._local[0], port)
    sockets.add(s)
    s.close()
    s.dispatch(0.0, Recorder())
    feed(s, 0.0, IRS + 1, ISS + 2, flags="F", dport=port)
    assert s.state is State.TIME_WAIT
    s.orphan(0.0)
    return s


def test_time_wait_sockets_are_bounded_oldest_evicted():
    """20,000 TIME-WAIT sockets were kept, 55 MiB, none evicted."""
    sockets = SocketSet(Limits(max_tw_buckets=50))
    socks = [_orphaned_time_wait(sockets, 1000 + i) for i in range(200)]
    assert sockets.time_wait_count == 50
    assert sockets.stats["tw_evicted"] == 150
    assert all(s.state is State.CLOSED for s in socks[:150])
    assert all(s.state is State.TIME_WAIT for s in socks[150:])
    assert len(sockets.closed) >= 150  # for the runtime to reap, without a scan


def test_orphans_are_bounded_oldest_reset():
    sockets = SocketSet(Limits(max_orphans=10))
    socks = []
    for i in range(30):
        s = established()
        s._local = (s._local[0], 2000 + i)
        sockets.add(s)
        _zero_window_after(s, 10_000)
        s.close()
        s.orphan(0.0)
        socks.append(s)
    assert sockets.orphan_count == 10 and sockets.stats["orphans_reset"] == 20
    assert all(s.state is State.CLOSED for s in socks[:20])
    assert all(s.state is State.FIN_WAIT_1 for s in socks[20:])


def test_the_table_is_bounded():
    sockets = SocketSet(Limits(max_sockets=5))
    for _ in range(5):
        sockets.add(TcpSocket())
    with pytest.raises(TableFull):
        sockets.add(TcpSocket())
    assert sockets.stats["table_full"] == 1 and len(sockets) == 5


def test_a_full_table_is_emfile_for_the_application(pair):
    import errno

    from netstack.net import TcpListener as Listener
    from netstack.net import TcpStream
    from tests.test_net_udp import B_IP

    ra, rb = pair
    listener = Listener.bind(rb, ("0.0.0.0", 7777))
    ra.sockets.limits.max_sockets = len(ra.sockets) + 2
    held = [TcpStream.connect(ra, (B_IP, 7777), timeout=2) for _ in range(2)]
    with pytest.raises(OSError) as e:
        TcpStream.connect(ra, (B_IP, 7777), timeout=2)
    assert e.value.errno == errno.EMFILE
    for h in held:
        h.close()
    listener.close()


# -- the cost per packet and per poll does not grow with the table -------------------------
class CountingTcp(TcpSocket):
    __slots__ = ()
    asked = 0

    def accepts(self, ip_repr, seg):
        CountingTcp.asked += 1
        return super().accepts(ip_repr, seg)


def _table(n: int) -> tuple[SocketSet, TcpListener]:
    sockets = SocketSet()
    listener = TcpListener(16)
    listener.listen((IPv4Address("192.168.1.1"), 80))
    sockets.add(listener)
    for i in range(n):
        s = CountingTcp()
        s.listen((IPv4Address("192.168.1.1"), 80))
        s._reset_connection(State.ESTABLISHED)
        s._set_endpoints((IPv4Address("192.168.1.1"), 80),
                         (IPv4Address("10.0.0.1") + i // 60000, 1024 + i % 60000))
        sockets.add(s)
    return sockets, listener


@pytest.mark.parametrize("n", [10, 20_000])
def test_demux_asks_no_more_sockets_with_a_big_table(n):
    """A segment for an unknown 4-tuple was offered to every TCP socket (5.5 ms at
    20,000); now to the connection with its 4-tuple, if any, and the port's listeners."""
    sockets, _ = _table(n)
    conns, listeners = sockets.tcp_lookup(80, IPv4Address("172.16.0.1"), 5555)
    assert conns == () and len(listeners) == 1
    conns, listeners = sockets.tcp_lookup(80, IPv4Address("10.0.0.1"), 1024 + n - 1)
    assert len(conns) == 1 and conns[0].remote_endpoint[1] == 1024 + n - 1


def test_building_a_big_table_is_linear():
    t0 = time.perf_counter()
    _table(20_000)
    assert time.perf_counter() - t0 < 10  # 635 s before: each add scanned the table


def test_a_poll_with_nothing_due_visits_a_bounded_number():
    from netstack.iface.interface import SWEEP_PER_POLL

    sockets, _ = _table(20_000)
    sockets.due(0.0)  # the first visit of every new socket
    sockets.dirty.clear()
    assert len(sockets.due(1.0, SWEEP_PER_POLL)) == SWEEP_PER_POLL
    assert sockets.next_at() is None


def test_a_listener_poll_asks_only_children_with_work(monkeypatch):
    """The listener visited every half-open child twice per poll (its poll_at and its
    dispatch: 2 x 4,096 under a SYN flood); now only those due, from its own schedule."""
    lst = TcpListener(backlog=8, max_half_open=4096, syn_cookies=False, timestamps=False)
    lst.listen((IPv4Address("192.168.1.1"), 80))
    for i in range(4000):
        listener_syn(lst, 0.0, 1024 + i, seq=i)
    rec = Recorder()
    lst.dispatch(0.0, rec)
    assert len(rec.packets) == 4000  # every SYN-ACK, once
    asked = []
    real = TcpSocket.poll_at
    monkeypatch.setattr(TcpSocket, "poll_at", lambda self, now: asked.append(self)
                        or real(self, now))
    at = lst.poll_at(0.1)
    assert at is not None and 0.1 < at <= 3.0  # the SYN-ACK retransmission timer
    rec = Recorder()
    lst.dispatch(0.1, rec)
    assert asked == [] and rec.packets == []
    rec = Recorder()
    lst.dispatch(at, rec)  # the timer: every SYN-ACK once more, backed off
    assert len(rec.packets) == 4000 and len(asked) >= 4000
    asked.clear()
    assert lst.poll_at(at + 0.01) > at + 1.0
    lst.dispatch(at + 0.01, Recorder())
    assert asked == []


def test_the_echo_app_resets_a_client_that_never_reads(pair):
    """A client sends 2.4 MB to the echo app and never reads: the app's thread sat in
    write_all forever holding 2 MiB and a slot; now its write times out and the
    connection is reset."""
    from apps.servers.tcpapps import echo, serve_tcp
    from netstack.net import TcpStream
    from tests.test_net_udp import B_IP

    ra, rb = pair
    stop = threading.Event()
    t = threading.Thread(target=serve_tcp, args=(rb, stop, 7007, echo),
                         kwargs={"idle_timeout": 1.0}, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                c = TcpStream.connect(ra, (B_IP, 7007), timeout=2)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        c.set_write_timeout(0.5)
        sent = 0
        try:
            while sent < 2_400_000:
                sent += c.write(b"x" * 65536)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with rb.lock:
                held = [s for s in rb.sockets.of_kind("tcp")
                        if isinstance(s, TcpSocket) and s.is_open]
            if not held:
                break
            time.sleep(0.1)
        assert not held, held  # the app reset it: nothing of it is left
        c.close()
    finally:
        stop.set()
        t.join(3)
