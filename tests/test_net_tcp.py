"""netstack.net.TcpListener / TcpStream between two stacks, each driven by its own Runtime
thread, over the in-memory link of tests/test_net_udp.py: bulk echo by SHA-256, exact reads
and writes, shutdown and reset semantics, errors, timeouts, non-blocking mode and the
readiness fds."""

from __future__ import annotations

import errno
import hashlib
import os
import selectors
import threading
import time

import pytest

from netstack.net import TcpListener, TcpStream
from netstack.socket.tcp.state import State
from tests.test_net_udp import A_IP, B_IP


def wait_until(cond, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def echo_server(rt, port: int = 7) -> tuple[TcpListener, threading.Thread]:
    listener = TcpListener.bind(rt, ("0.0.0.0", port))

    def handle(stream: TcpStream) -> None:
        with stream:
            while data := stream.read(65536):
                stream.write_all(data)

    def serve() -> None:
        for stream in listener.incoming():
            threading.Thread(target=handle, args=(stream,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return listener, t


def connected(ra, rb, **opts) -> tuple[TcpStream, TcpStream, TcpListener]:
    listener = TcpListener.bind(rb, ("0.0.0.0", 0))
    port = listener.local_addr()[1]
    client = TcpStream.connect(ra, (B_IP, port), timeout=2.0, **opts)
    listener.set_timeout(2.0)
    server, addr = listener.accept()
    assert addr == client.local_addr()
    return client, server, listener


def test_echo_10_mib_sha256(pair):
    ra, rb = pair
    listener, t = echo_server(rb, 7)
    data = os.urandom(10 << 20)
    with TcpStream.connect(ra, (B_IP, 7), timeout=2.0) as c:
        assert c.peer_addr() == (B_IP, 7)
        host, port = c.local_addr()
        assert host == A_IP and 49152 <= port <= 65535
        c.set_read_timeout(10.0)

        def writer() -> None:
            c.write_all(data)
            c.shutdown("write")

        w = threading.Thread(target=writer)
        w.start()
        got = c.read_to_end()
        w.join(10)
    assert len(got) == len(data)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    listener.close()
    t.join(2.0)
    assert not t.is_alive()  # close ended incoming()


def test_read_exact_and_write_all(pair):
    ra, rb = pair
    c, s, listener = connected(ra, rb)
    with c, s, listener:
        s.set_read_timeout(2.0)
        c.write_all(b"abc")
        c.write_all(memoryview(b"defghij")[2:])
        assert s.read_exact(8) == b"abcfghij"
        c.write_all(b"xy")
        c.shutdown("write")
        with pytest.raises(EOFError):
            s.read_exact(3)  # only 2 bytes before EOF
        buf = bytearray(4)
        assert s.read_into(buf) == 0  # EOF: the 2 bytes went into the failed read_exact
        c.set_read_timeout(2.0)
        s.write_all(b"still open the other way")
        assert c.read_exact(24) == b"still open the other way"


def test_shutdown_write_then_read_both_ways(pair):
    ra, rb = pair
    c, s, listener = connected(ra, rb)
    with c, s, listener:
        s.set_read_timeout(2.0)
        c.set_read_timeout(2.0)
        c.write_all(b"request")
        c.shutdown("write")
        assert s.read_to_end() == b"request"  # EOF after the data
        assert s.read(10) == b""  # EOF stays
        with pytest.raises(BrokenPipeError):
            c.write(b"more")
        s.write_all(b"response")
        s.shutdown("write")
        assert c.read_to_end() == b"response"
        wait_until(lambda: c.state in (State.TIME_WAIT, State.CLOSED))


def test_shutdown_read_gives_eof_and_shutdown_both(pair):
    ra, rb = pair
    c, s, listener = connected(ra, rb)
    with c, s, listener:
        s.shutdown("read")
        assert s.read(10) == b""
        s.write_all(b"server still writes")
        c.set_read_timeout(2.0)
        assert c.read_exact(19) == b"server still writes"
        c.shutdown("both")
        assert c.read(5) == b""
        with pytest.raises(BrokenPipeError):
            c.write(b"x")
        with pytest.raises(ValueError):
            c.shutdown("sideways")


def test_reset_when_peer_closes_with_unread_data(pair):
    ra, rb = pair
    c, s, listener = connected(ra, rb)
    with c, listener:
        c.write_all(b"never read")
        wait_until(lambda: s._sock.recv_queue == 10)
        s.close()  # unread data: RST, as Linux
        c.set_read_timeout(2.0)
        with pytest.raises(ConnectionResetError) as e:
            c.read(10)
        assert e.value.errno == errno.ECONNRESET
        assert c.read(10) == b""  # reported once, then EOF
        with pytest.raises(BrokenPipeError):
            c.write(b"x")


def test_connection_refused(pair):
    ra, _ = pair
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError) as e:
        TcpStream.connect(ra, (B_IP, 9), timeout=2.0)
    assert e.value.errno == errno.ECONNREFUSED and time.monotonic() - t0 < 0.5
    wait_until(lambda: len(ra.sockets) == 0)  # the runtime reaped the failed socket


def test_connect_timeout_is_exact(pair):
    ra, _ = pair
    for timeout in (0.2, 0.4):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            TcpStream.connect(ra, ("10.9.0.99", 80), timeout=timeout)  # nobody answers ARP
        assert timeout <= time.monotonic() - t0 < timeout + 0.05


def test_read_and_accept_timeouts_are_exact(pair):
    ra, rb = pair
    c, s, listener = connected(ra, rb)
    with c, s, listener:
        for timeout in (0.1, 0.3):
            s.set_read_timeout(timeout)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                s.read(10)
            assert timeout <= time.monotonic() - t0 < timeout + 0.05
            listener.set_timeout(timeout)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                listener.accept()
            assert timeout <= time.monotonic() - t0 < timeout + 0.05


def test_write_timeout_when_the_peer_does_not_read(pair):
    ra, rb = pair
    c, s, listener = connected(ra, rb, tx_buffer_size=16384)
    with c, s, listener:
        c.set_write_timeout(0.2)
        sent = 0
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            while True:  # the peer's 256 KiB window, then our 16 KiB buffer, then stuck
                sent += c.write(b"x" * 65536)
        assert 256 * 1024 <= sent <= 256 * 1024 + 16384 + 65536
        assert time.monotonic() - t0 < 2.0


def test_nonblocking(pair):
    ra, rb = pair
    listener = TcpListener.bind(rb, ("0.0.0.0", 0))
    listener.set_nonblocking(True)
    with pytest.raises(BlockingIOError) as e:
        listener.accept()
    assert e.value.errno == errno.EAGAIN
    c = TcpStream.connect(ra, (B_IP, listener.local_addr()[1]), timeout=2.0)
    s = None
    deadline = time.monotonic() + 2
    while s is None:
        try:
            s, _ = listener.accept()
        except BlockingIOError:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    with c, s, listener:
        s.set_nonblocking(True)
        with pytest.raises(BlockingIOError):
            s.read(10)
        c.write_all(b"hello")
        wait_until(lambda: s._sock.recv_queue == 5)
        assert s.read(10) == b"hello"
        with pytest.raises(BlockingIOError):
            s.read(10)
        c.set_nonblocking(True)
        total = 0
        with pytest.raises(BlockingIOError):
            while True:  # fill the peer's window and our buffer
                total += c.write(b"y" * 65536)
                assert total < 4 << 20
        assert total > 0


def test_errors(pair):
    ra, rb = pair
    listener = TcpListener.bind(rb, ("0.0.0.0", 8080))
    with pytest.raises(OSError) as e:
        TcpListener.bind(rb, ("10.9.0.2", 8080))
    assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as e:
        TcpListener.bind(rb, ("10.9.0.77", 8081))
    assert e.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OSError) as e:
        TcpStream.connect(ra, ("0.0.0.0", 80))
    assert e.value.errno == errno.EINVAL
    listener.close()
    listener.close()
    with pytest.raises(OSError) as e:
        listener.accept()
    assert e.value.errno == errno.EBADF
    TcpListener.bind(rb, ("0.0.0.0", 8080)).close()  # the port is free again


def test_close_wakes_blocked_threads(pair):
    ra, rb = pair
    c, s, listener = connected(ra, rb)
    errors = []

    def blocked(fn) -> None:
        try:
            fn()
        except OSError as e:
            errors.append(e.errno)

    threads = [threading.Thread(target=blocked, args=(fn,)) for fn in (s.read, listener.accept)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    s.close()
    listener.close()
    for t in threads:
        t.join(1.0)
        assert not t.is_alive()
    assert errors == [errno.EBADF, errno.EBADF]
    c.close()


def test_closed_connections_are_reaped(pair):
    ra, rb = pair
    listener = TcpListener.bind(rb, ("0.0.0.0", 0))
    port = listener.local_addr()[1]
    for _ in range(5):
        c = TcpStream.connect(ra, (B_IP, port), timeout=2.0, time_wait=0.05)
        s, _ = listener.accept()
        c.write_all(b"bye")
        s.set_read_timeout(2.0)
        assert s.read_exact(3) == b"bye"
        c.close()  # active close: TIME-WAIT for 50 ms, then reaped
        assert s.read(1) == b""
        s.close()
    listener.close()
    wait_until(lambda: len(ra.sockets) == 0 and len(rb.sockets) == 0)


def test_readiness_fds_with_selectors(pair):
    ra, rb = pair
    listener = TcpListener.bind(rb, ("0.0.0.0", 0))
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "listener")
    assert sel.select(0) == []
    c = TcpStream.connect(ra, (B_IP, listener.local_addr()[1]), timeout=2.0)
    assert [k.data for k, _ in sel.select(2.0)] == ["listener"]
    s, _ = listener.accept()
    assert sel.select(0) == []  # accepted: the listener is not readable any more
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, "server")
    assert [(k.data, ev) for k, ev in sel.select(0)] == [("server", selectors.EVENT_WRITE)]
    sel.modify(s, selectors.EVENT_READ, "server")
    c.write_all(b"ping")
    assert [(k.data, ev) for k, ev in sel.select(2.0)] == [("server", selectors.EVENT_READ)]
    assert s.read(10) == b"ping"
    assert sel.select(0) == []  # drained
    c.shutdown("write")
    assert [k.data for k, _ in sel.select(2.0)] == ["server"]  # EOF is readable
    assert s.read(10) == b""
    # writable goes away when the buffer is full and comes back when it drains
    sel.modify(s, selectors.EVENT_WRITE, "server")
    s.set_nonblocking(True)
    with pytest.raises(BlockingIOError):
        while True:
            s.write(b"z" * 65536)
    assert sel.select(0) == []
    c.set_read_timeout(2.0)
    got = 0
    while not sel.select(0):
        got += len(c.read(65536))
    assert got > 0
    sel.close()
    for x in (c, s, listener):
        fd = x.fileno()
        x.close()
        assert x.fileno() == -1
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_dropped_stream_is_closed(pair):
    ra, rb = pair
    c, s, listener = connected(ra, rb, time_wait=0.05)
    with s, listener:
        c.write_all(b"last words")
        del c  # dropped without close(): closed when collected, as dropping a std stream
        s.set_read_timeout(2.0)
        assert s.read_exact(10) == b"last words"
        assert s.read(1) == b""
    wait_until(lambda: len(ra.sockets) == 0)


def test_runtime_helpers(pair):
    ra, rb = pair
    with rb.tcp_listen(("0.0.0.0", 0)) as listener:
        port = listener.local_addr()[1]
        with ra.tcp_connect((B_IP, port), 2.0, nodelay=True) as c:
            assert c.nodelay()
            s, _ = listener.accept()
            with s:
                c.write_all(b"helper")
                s.set_read_timeout(2.0)
                assert s.read_exact(6) == b"helper"


def test_module_doctest():
    import doctest

    import netstack.net

    assert doctest.testmod(netstack.net).failed == 0
