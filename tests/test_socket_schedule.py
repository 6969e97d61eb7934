"""The interface's socket schedule (SocketSet.dirty/sched): a poll dispatches only sockets
that have work — new, fed a packet, touched by their application, or due by poll_at (a
heap) — plus SWEEP_PER_POLL more in turn every SWEEP_INTERVAL, a bounded safety net (it
was a visit of every socket every 50 ms)."""

from __future__ import annotations

from netstack.iface import Interface, InterfaceConfig
from netstack.iface.interface import SWEEP_INTERVAL, SWEEP_OVERDUE, SWEEP_PER_POLL
from netstack.socket import SocketSet, UdpSocket
from netstack.socket.set import Socket, touches
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr
from tests.iface.test_interface import Dev


@touches("kick")
class Counting(Socket):
    KIND = "test"

    def __init__(self, wake_at=None):
        super().__init__()
        self.dispatched = 0
        self.wake_at = wake_at

    def kick(self):
        pass

    def accepts(self, ip, header):
        return False

    def dispatch(self, now, emit):
        self.dispatched += 1

    def poll_at(self, now):
        return self.wake_at


def _iface():
    return Interface(InterfaceConfig(EthernetAddress.parse("02:00:00:00:00:01"),
                                     [Ipv4Cidr.parse("10.0.0.1/24")], ipv6=False))


def test_idle_sockets_are_not_dispatched_every_poll():
    iface, dev, sockets = _iface(), Dev(), SocketSet()
    idle = [Counting() for _ in range(1000)]
    timer = Counting(wake_at=0.3)
    for s in [*idle, timer]:
        sockets.add(s)
    iface.poll(0.0, dev, sockets)  # new sockets: all visited once
    assert all(s.dispatched == 1 for s in idle)
    assert iface.poll_at(0.0, sockets) == 0.3
    for t in (0.01, 0.02, 0.03):
        iface.poll(t, dev, sockets)
    # three polls: only the sweep's few visits beyond the first, not 3 x 1000
    assert sum(s.dispatched for s in idle) <= 1000 + 3 * SWEEP_PER_POLL
    assert timer.dispatched <= 2
    before = [s.dispatched for s in idle]
    idle[500].kick()  # the application gave it work
    assert iface.poll_at(0.031, sockets) == 0.031
    iface.poll(0.031, dev, sockets)
    assert idle[500].dispatched == before[500] + 1
    before_timer = timer.dispatched
    iface.poll(0.3, dev, sockets)  # the timer is due
    assert timer.dispatched == before_timer + 1


def test_the_sweep_visits_every_socket_in_bounded_steps():
    """A change no method announced is still seen: every SWEEP_INTERVAL a poll visits
    SWEEP_PER_POLL more sockets in turn, so all of them within len/SWEEP_PER_POLL such
    polls — and a poll never visits the whole table, nor sweeps more often."""
    iface, dev, sockets = _iface(), Dev(), SocketSet()
    socks = [Counting() for _ in range(10 * SWEEP_PER_POLL)]
    for s in socks:
        sockets.add(s)
    iface.poll(0.0, dev, sockets)
    assert all(s.dispatched == 1 for s in socks)
    for i in range(10):
        t = SWEEP_INTERVAL * (i + 1)
        iface.poll(t, dev, sockets)
        iface.poll(t + SWEEP_INTERVAL / 2, dev, sockets)  # too soon for another sweep
        assert sum(s.dispatched for s in socks) == len(socks) + (i + 1) * SWEEP_PER_POLL
    assert all(s.dispatched == 2 for s in socks)


def _ping(seq: int) -> bytes:
    from scapy.all import ICMP, IP, Ether, raw

    return raw(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
               / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(id=1, seq=seq))


def test_the_first_frame_after_an_idle_spell_is_answered_before_the_sweep():
    """After a quiet second the sweep is long overdue; the poll that takes the next frame
    (a ping) answers it without visiting SWEEP_PER_POLL sockets first: the sweep comes on
    the next poll that takes no frame."""
    iface, dev, sockets = _iface(), Dev(), SocketSet()
    socks = [Counting() for _ in range(4 * SWEEP_PER_POLL)]
    for s in socks:
        sockets.add(s)
    iface.poll(0.0, dev, sockets)
    dev.take()  # (the gratuitous ARP)
    dev.rx.append(_ping(1))
    iface.poll(1.0, dev, sockets)
    assert [f["ICMP"].type for f in dev.take()] == [0]  # the reply
    assert sum(s.dispatched for s in socks) == len(socks)  # no sweep on its way
    iface.poll(1.001, dev, sockets)
    assert sum(s.dispatched for s in socks) == len(socks) + SWEEP_PER_POLL


def test_the_sweep_still_runs_when_every_poll_takes_frames():
    """A guest that never pauses: once polls with frames have put the sweep off for
    SWEEP_OVERDUE, one of them sweeps anyway."""
    iface, dev, sockets = _iface(), Dev(), SocketSet()
    socks = [Counting() for _ in range(4 * SWEEP_PER_POLL)]
    for s in socks:
        sockets.add(s)
    iface.poll(0.0, dev, sockets)
    dev.take()
    step = SWEEP_INTERVAL / 2
    swept_at = None
    for i in range(1, int(2 * SWEEP_OVERDUE / step)):
        dev.rx.append(_ping(i))
        iface.poll(1.0 + i * step, dev, sockets)
        if swept_at is None and sum(s.dispatched for s in socks) > len(socks):
            swept_at = i * step
    assert swept_at is not None and SWEEP_OVERDUE <= swept_at < SWEEP_OVERDUE + 2 * step
    assert len(dev.take()) == int(2 * SWEEP_OVERDUE / step) - 1


def test_send_on_a_real_socket_marks_it_dirty():
    sockets = SocketSet()
    u = UdpSocket()
    u.bind(("0.0.0.0", 5000))
    sockets.add(u)
    sockets.dirty.clear()
    u.send_to(b"x", ("10.0.0.2", 9))
    assert u in sockets.dirty
    sockets.remove(1)
    assert u not in sockets.dirty


def test_a_new_tcp_socket_learns_tso_even_when_the_count_is_unchanged():
    """One connection closes and another opens between two polls: the new one must still
    be told the device's TSO size (it was keyed on the number of TCP sockets)."""
    from netstack.phy import DeviceCapabilities
    from netstack.socket.tcp.socket import TcpSocket

    iface, dev, sockets = _iface(), Dev(), SocketSet()
    dev.caps = DeviceCapabilities(mtu=1500, tso_max=65000)
    a = TcpSocket()
    ha = sockets.add(a)
    iface.poll(0.0, dev, sockets)
    assert a._tso_max == 65000
    sockets.remove(ha)
    b = TcpSocket()
    sockets.add(b)
    iface.poll(0.01, dev, sockets)
    assert b._tso_max == 65000 and b._mtu == 1500


def test_an_accept_that_finds_nothing_leaves_the_listener_clean():
    """An app's accept loop with a timeout (every server of ours) calls accept on an
    empty queue twice a second: that must not make the next poll dispatch the listener
    (six listeners did, and each ping after a quiet spell paid for them)."""
    from netstack.socket.tcp.listener import TcpListener

    sockets = SocketSet()
    listener = TcpListener()
    listener.listen(("0.0.0.0", 80))
    sockets.add(listener)
    sockets.dirty.clear()
    assert listener.accept() is None
    assert listener not in sockets.dirty
