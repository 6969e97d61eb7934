"""netstack.net.UdpSocket between two stacks, each driven by its own Runtime thread, over an
in-memory link whose ends wake the peer's selector through an eventfd."""

from __future__ import annotations

import errno
import threading
import time
from ipaddress import IPv4Address

import pytest

from netstack.iface import Interface, InterfaceConfig
from netstack.net import UdpSocket
from netstack.phy.loopback import WakingEnd, waking_pair
from netstack.runtime import Runtime
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr

A_IP, B_IP = "10.9.0.1", "10.9.0.2"


def link() -> tuple[WakingEnd, WakingEnd]:
    return waking_pair()


def stack(mac_last: int, ip: str, device) -> Runtime:
    mac = EthernetAddress(bytes([2, 0, 0, 0, 0, mac_last]))
    iface = Interface(InterfaceConfig(mac, [Ipv4Cidr.parse(ip + "/24")]))
    return Runtime(iface, device)




def echo_server(rt: Runtime, port: int) -> tuple[UdpSocket, threading.Thread]:
    server = rt.udp_bind(("0.0.0.0", port))

    def serve() -> None:
        while True:
            try:
                data, addr = server.recv_from(65535)
            except OSError:
                return
            server.send_to(data, addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return server, t


def test_echo_between_two_stacks(pair):
    ra, rb = pair
    server, t = echo_server(rb, 7)
    with ra.udp_bind() as client:
        client.set_read_timeout(2.0)
        host, port = client.local_addr()
        assert host == "0.0.0.0" and 49152 <= port <= 65535
        for i in range(50):
            msg = b"hello %d " % i * (i + 1)
            assert client.send_to(msg, (B_IP, 7)) == len(msg)
            data, addr = client.recv_from(65535)
            assert (data, addr) == (msg, (B_IP, 7))
        big = bytes(range(256)) * 20  # 5120 bytes: fragmented and reassembled both ways
        client.send_to(big, (B_IP, 7))
        assert client.recv_from(65535) == (big, (B_IP, 7))
    server.close()
    t.join(1.0)
    assert not t.is_alive()  # close woke the blocked reader


def test_many_threads_many_sockets(pair):
    ra, rb = pair
    server, t = echo_server(rb, 9000)
    errors = []

    def client(k: int) -> None:
        try:
            with ra.udp_bind() as c:
                c.set_read_timeout(2.0)
                c.connect((B_IP, 9000))
                for i in range(20):
                    c.send(b"%d:%d" % (k, i))
                    assert c.recv(100) == b"%d:%d" % (k, i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert errors == []
    server.close()


def test_read_timeout_is_exact(pair):
    ra, _ = pair
    with ra.udp_bind() as s:
        for timeout in (0.1, 0.3):
            s.set_read_timeout(timeout)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                s.recv_from(100)
            elapsed = time.monotonic() - t0
            assert timeout <= elapsed < timeout + 0.05
        with pytest.raises(ValueError):
            s.set_read_timeout(0)


def test_nonblocking_raises_blocking_io_error(pair):
    ra, rb = pair
    with ra.udp_bind(("0.0.0.0", 4444)) as a, rb.udp_bind() as b:
        a.set_nonblocking(True)
        t0 = time.monotonic()
        with pytest.raises(BlockingIOError) as e:
            a.recv_from(100)
        assert e.value.errno == errno.EAGAIN and time.monotonic() - t0 < 0.05
        b.send_to(b"now", (A_IP, 4444))
        deadline = time.monotonic() + 2
        while True:
            try:
                assert a.recv_from(100) == (b"now", (B_IP, b.local_addr()[1]))
                break
            except BlockingIOError:
                assert time.monotonic() < deadline
                time.sleep(0.001)


def test_connected_socket_filters_other_senders(pair):
    ra, rb = pair
    with ra.udp_bind(("10.9.0.1", 5000)) as a, rb.udp_bind() as b1, rb.udp_bind() as b2:
        a.connect((B_IP, b2.local_addr()[1]))
        a.set_read_timeout(2.0)
        b1.send_to(b"not you", (A_IP, 5000))
        b2.send_to(b"you", (A_IP, 5000))
        assert a.recv(100) == b"you"
        assert a.local_addr() == ("10.9.0.1", 5000)


def test_errors(pair):
    ra, _ = pair
    s = ra.udp_bind(("0.0.0.0", 6000))
    with pytest.raises(OSError) as e:
        ra.udp_bind(("0.0.0.0", 6000))
    assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as e:
        ra.udp_bind(("10.9.0.77", 0))
    assert e.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OSError) as e:
        s.send(b"x")
    assert e.value.errno == errno.EDESTADDRREQ
    with pytest.raises(OSError) as e:
        s.send_to(b"x" * 70000, (B_IP, 7))
    assert e.value.errno == errno.EMSGSIZE
    s.close()
    s.close()
    with pytest.raises(OSError) as e:
        s.recv_from(10)
    assert e.value.errno == errno.EBADF
    ra.udp_bind(("0.0.0.0", 6000)).close()  # the port is free again


def test_blocking_send_waits_for_room(pair):
    ra, rb = pair
    server, _t = echo_server(rb, 7)
    with ra.udp_bind(tx_packets=2) as c:
        c.set_read_timeout(2.0)
        for i in range(30):  # more than the transmit buffer holds: send_to must wait
            c.send_to(b"%d" % i, (B_IP, 7))
        got = set()
        try:
            while len(got) < 30:
                got.add(c.recv_from(10)[0])
        except TimeoutError:
            pass
        assert len(got) >= 20  # the echo server's socket may drop some under load
    server.close()


def test_external_loop_mode():
    """The vhost-user server's shape: attach/detach/poll(now) and a waker."""
    da, db = link()
    ra, rb = stack(1, A_IP, None), stack(2, B_IP, db)
    woken = []
    ra.set_waker(lambda: woken.append(1))
    assert ra.poll(0.0) is None  # nothing attached
    ra.attach(da)
    rb.start()
    try:
        server, _t = echo_server(rb, 7)
        c = ra.udp_bind()
        c.set_nonblocking(True)
        woken.clear()
        c.send_to(b"ext", (B_IP, 7))
        assert woken  # the app thread woke the external loop
        deadline = time.monotonic() + 2
        reply = None
        while reply is None and time.monotonic() < deadline:
            at = ra.poll(time.monotonic())
            assert at is None or at <= time.monotonic() + 1.0
            try:
                reply = c.recv_from(100)
            except BlockingIOError:
                time.sleep(0.001)
        assert reply == (b"ext", (B_IP, 7))
        ra.detach()
        assert ra.poll(time.monotonic()) is None
        server.close()
    finally:
        rb.stop()
        da.close()
        db.close()


def test_stop_is_prompt_and_idempotent():
    da, db = link()
    rt = stack(1, A_IP, da)
    rt.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    rt.stop()
    rt.stop()
    assert time.monotonic() - t0 < 1.0 and not rt.running
    da.close()
    db.close()


def test_runtime_sleeps_until_the_deadline():
    """With an ARP retry pending, the loop wakes at the retry time, not before or after."""
    da, db = link()
    rt = stack(1, A_IP, da)
    with rt:
        with rt.udp_bind() as s:
            s.send_to(b"x", ("10.9.0.99", 9))  # nobody there: ARP at 0, 1, 2 s
            time.sleep(1.2)
            arps = []
            while (tokens := db.inner.receive(0.0)) is not None:
                arps.append(tokens[0].consume(bytes))
            requests = [f for f in arps if f[12:14] == b"\x08\x06" and f[38:42] ==
                        IPv4Address("10.9.0.99").packed]
            assert len(requests) == 2
    da.close()
    db.close()
