"""netstack.pysocket: the `socket.socket`-compatible class between two stacks (each with its
own Runtime thread, over the in-memory link of tests/test_net_udp.py): UDP, readiness fds
under `selectors`, socketserver / http.server / http.client / urllib through
`make_server_class` and `patch`, errors, exact timeouts, non-blocking connect, asyncio."""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import hashlib
import http.client
import http.server
import os
import selectors
import socket as std_socket
import socketserver
import struct
import threading
import time
import urllib.request

import pytest

from netstack import pysocket
from netstack.pysocket import socket
from tests.test_net_udp import A_IP, B_IP


def tcp(rt, **kw) -> socket:
    return socket(pysocket.AF_INET, pysocket.SOCK_STREAM, runtime=rt, **kw)


def udp(rt) -> socket:
    return socket(pysocket.AF_INET, pysocket.SOCK_DGRAM, runtime=rt)


def serve_in_thread(server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True)
    t.start()
    return t


def stop(server, t: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    t.join(2.0)
    assert not t.is_alive()


# -- UDP ----------------------------------------------------------------------------------
def test_udp_between_two_stacks(pair):
    ra, rb = pair
    with udp(rb) as server, udp(ra) as client:
        assert server.type == std_socket.SOCK_DGRAM and server.family == std_socket.AF_INET
        server.bind(("0.0.0.0", 5353))
        assert server.getsockname() == ("0.0.0.0", 5353)
        server.settimeout(2.0)
        client.settimeout(2.0)
        assert client.getsockname() == ("0.0.0.0", 0)  # not bound yet
        assert client.sendto(b"question", (B_IP, 5353)) == 8
        port = client.getsockname()[1]
        assert 49152 <= port <= 65535  # sendto bound an ephemeral port
        data, addr = server.recvfrom(2048)
        assert (data, addr) == (b"question", (A_IP, port))
        server.sendto(b"answer", addr)
        buf = bytearray(16)
        assert client.recvfrom_into(buf) == (6, (B_IP, 5353))
        assert bytes(buf[:6]) == b"answer"
        client.connect((B_IP, 5353))
        assert client.getpeername() == (B_IP, 5353)
        client.send(b"connected")
        assert server.recv(4) == b"conn"  # a datagram cut to the buffer: the rest is lost
        server.sendto(b"x" * 100, addr)
        assert client.recv_into(buf, 10) == 10
        with pytest.raises(TypeError):
            client.sendto(b"x", "10.9.0.2")


def test_udp_timeout_nonblocking_and_errors(pair):
    ra, _ = pair
    with udp(ra) as s:
        s.bind(("10.9.0.1", 0))
        s.settimeout(0.2)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            s.recv(10)
        assert 0.2 <= time.monotonic() - t0 < 0.25
        s.setblocking(False)
        assert not s.getblocking() and s.gettimeout() == 0.0
        with pytest.raises(BlockingIOError):
            s.recvfrom(10)
        with pytest.raises(OSError) as e:
            s.send(b"x")
        assert e.value.errno == errno.EDESTADDRREQ
        with pytest.raises(OSError) as e:
            s.listen()
        assert e.value.errno == errno.EOPNOTSUPP
        with udp(ra) as other, pytest.raises(OSError) as e:
            other.bind(("0.0.0.0", s.getsockname()[1]))
        assert e.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as e:
            s.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
        assert e.value.errno == errno.ENOPROTOOPT
        with pytest.raises(std_socket.gaierror):
            s.sendto(b"x", ("no.such.host", 9))
    assert s.fileno() == -1
    with pytest.raises(OSError) as e:
        s.recv(1)
    assert e.value.errno == errno.EBADF


def test_selectors_on_udp_fds(pair):
    ra, rb = pair
    with udp(ra) as a, udp(rb) as b, selectors.DefaultSelector() as sel:
        a.bind(("0.0.0.0", 7000))
        b.bind(("0.0.0.0", 7001))
        sel.register(a, selectors.EVENT_READ, "a")
        sel.register(b, selectors.EVENT_READ | selectors.EVENT_WRITE, "b")
        assert [(k.data, ev) for k, ev in sel.select(0)] == [("b", selectors.EVENT_WRITE)]
        sel.modify(b, selectors.EVENT_READ, "b")
        assert sel.select(0) == []
        b.sendto(b"one", (A_IP, 7000))
        b.sendto(b"two", (A_IP, 7000))
        assert [k.data for k, _ in sel.select(2.0)] == ["a"]
        assert a.recv(10) == b"one"
        assert [k.data for k, _ in sel.select(2.0)] == ["a"]  # "two" (queued or coming)
        assert a.recv(10) == b"two"
        assert sel.select(0) == []


# -- TCP: stdlib servers and clients ------------------------------------------------------
class UpperEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


def test_socketserver_echo_with_make_server_class(pair):
    ra, rb = pair
    Server = pysocket.make_server_class(socketserver.ThreadingTCPServer, rb)
    server = Server(("0.0.0.0", 0), UpperEcho)
    assert isinstance(server.socket, socket)
    host, port = server.server_address
    assert host == "0.0.0.0" and port >= 49152
    t = serve_in_thread(server)
    clients = []
    for i in range(4):
        c = pysocket.create_connection((B_IP, port), timeout=2.0, runtime=ra)
        clients.append(c)
        c.sendall(b"hello %d\nworld %d\n" % (i, i))
    for i, c in enumerate(clients):
        with c, c.makefile("rb") as f:
            assert f.readline() == b"HELLO %d\n" % i
            assert f.readline() == b"WORLD %d\n" % i
    stop(server, t)


def test_socketserver_and_http_client_through_patch(pair, tmp_path):
    ra, rb = pair
    body = os.urandom(700_000)
    (tmp_path / "blob.bin").write_bytes(body)
    (tmp_path / "index.html").write_text("<h1>netstack</h1>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    with pysocket.patch(rb):
        server = http.server.ThreadingHTTPServer(("0.0.0.0", 8000), handler)
        echo = socketserver.TCPServer(("0.0.0.0", 7), UpperEcho)
    assert isinstance(server.socket, socket) and isinstance(echo.socket, socket)
    assert std_socket.socket is pysocket._real_socket  # restored
    threads = [serve_in_thread(server), serve_in_thread(echo)]
    with pysocket.patch(ra, hosts={"server.test": B_IP}) as cls:
        assert std_socket.socket is cls and socketserver.socket.socket is cls
        conn = http.client.HTTPConnection("server.test", 8000, timeout=5)
        conn.request("GET", "/blob.bin")
        resp = conn.getresponse()
        assert resp.status == 200
        got = resp.read()
        conn.close()
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open("http://server.test:8000/index.html", timeout=5) as r:
            assert r.read() == b"<h1>netstack</h1>"
        with opener.open(f"http://{B_IP}:8000/blob.bin", timeout=5) as r:
            assert r.read() == body
        with std_socket.create_connection(("server.test", 7), timeout=2) as c:
            c.sendall(b"patched\n")
            assert c.recv(100) == b"PATCHED\n"
        a, b = std_socket.socketpair()  # AF_UNIX stays a kernel socket
        assert type(a) is pysocket._real_socket
        a.close()
        b.close()
        with std_socket.socket(std_socket.AF_INET6) as s6:  # ours too, since IPv6
            assert isinstance(s6, pysocket.socket) and s6.family == std_socket.AF_INET6
    assert std_socket.socket is pysocket._real_socket
    assert std_socket.create_connection is pysocket._real_create_connection
    stop(server, threads[0])
    stop(echo, threads[1])


def test_makefile_keeps_the_connection_after_close(pair):
    ra, rb = pair
    with tcp(rb) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        c = pysocket.create_connection((B_IP, port), timeout=2.0, runtime=ra)
        s, addr = listener.accept()
        assert addr == c.getsockname() and s.getpeername() == addr
        assert s.gettimeout() is None  # accepted sockets block (no default timeout)
        f = c.makefile("r", encoding="utf-8")
        c.close()  # the file still holds the connection, as in CPython
        assert c.fileno() != -1
        s.sendall(b"line one\nline two\n")
        s.close()
        assert f.read() == "line one\nline two\n"
        f.close()
        assert c.fileno() == -1


# -- TCP: errors, timeouts, options -------------------------------------------------------
def test_connect_to_a_closed_port_is_refused(pair):
    ra, _ = pair
    with tcp(ra) as s, pytest.raises(ConnectionRefusedError):
        s.connect((B_IP, 9))
    with tcp(ra) as s:
        assert s.connect_ex((B_IP, 9)) == errno.ECONNREFUSED
    with pytest.raises(ConnectionRefusedError):
        pysocket.create_connection((B_IP, 9), timeout=2.0, runtime=ra)


def test_timeouts_are_exact(pair):
    ra, rb = pair
    with tcp(rb) as listener, tcp(ra) as c:
        listener.bind(("0.0.0.0", 0))
        listener.listen(1)
        for secs in (0.1, 0.3):
            listener.settimeout(secs)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                listener.accept()
            assert secs <= time.monotonic() - t0 < secs + 0.05
        c.settimeout(2.0)
        c.connect((B_IP, listener.getsockname()[1]))
        listener.settimeout(2.0)
        s, _ = listener.accept()
        with s:
            for secs in (0.1, 0.3):
                s.settimeout(secs)
                t0 = time.monotonic()
                with pytest.raises(std_socket.timeout):
                    s.recv(10)
                assert secs <= time.monotonic() - t0 < secs + 0.05
    with tcp(ra) as s:
        s.settimeout(0.2)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            s.connect(("10.9.0.99", 80))  # nobody there
        assert 0.2 <= time.monotonic() - t0 < 0.25


def test_bind_errors_and_reuse(pair):
    ra, rb = pair
    a = tcp(rb)
    a.bind(("10.9.0.2", 8080))
    a.listen()
    b = tcp(rb)
    with pytest.raises(OSError) as e:
        b.bind(("0.0.0.0", 8080))
    assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as e:
        b.bind(("10.9.0.9", 8080))
    assert e.value.errno == errno.EADDRNOTAVAIL
    c = pysocket.create_connection((B_IP, 8080), timeout=2.0, runtime=ra)
    s, _ = a.accept()
    s.close()  # active close on the server: its end of the connection lingers in TIME-WAIT
    c.close()
    a.close()
    time.sleep(0.1)
    with pytest.raises(OSError) as e:
        b.bind(("0.0.0.0", 8080))
    assert e.value.errno == errno.EADDRINUSE  # TIME-WAIT holds the port...
    b.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEADDR, 1)
    b.bind(("0.0.0.0", 8080))  # ...unless SO_REUSEADDR
    b.listen()
    assert b.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_ACCEPTCONN) == 1
    b.close()


def test_socket_options(pair):
    ra, rb = pair
    with tcp(ra) as s:
        assert s.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_TYPE) == pysocket.SOCK_STREAM
        assert s.getsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY) == 0
        s.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, True)
        s.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_KEEPALIVE, 1)
        s.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_KEEPIDLE, 30)
        s.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, 65536)
        s.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEPORT, 1)  # accepted, ignored
        s.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_LINGER, struct.pack("ii", 1, 0))
        assert s.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_LINGER, 8) == \
            struct.pack("ii", 1, 0)
        assert s.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF) == 65536
        assert s.getsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 4) == \
            struct.pack("i", 1)
        with pytest.raises(OSError) as e:
            s.setsockopt(pysocket.SOL_SOCKET, 0x4242, 1)
        assert e.value.errno == errno.ENOPROTOOPT
        with pytest.raises(OSError) as e:
            s.getpeername()
        assert e.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as e:
            s.detach()
        assert e.value.errno == errno.EOPNOTSUPP
        with tcp(rb) as listener:
            listener.bind(("0.0.0.0", 0))
            listener.listen()
            s.settimeout(2.0)
            s.connect((B_IP, listener.getsockname()[1]))
            impl = s._impl._sock
            assert not impl.nagle and impl.keep_alive == 30.0 and impl.rx_capacity == 65536
            with pytest.raises(OSError) as e:
                s.connect((B_IP, listener.getsockname()[1]))
            assert e.value.errno == errno.EISCONN
            peer, _ = listener.accept()
            with peer:
                s.close()  # SO_LINGER 0: a RST
                peer.settimeout(2.0)
                with pytest.raises(ConnectionResetError):
                    peer.recv(10)


def test_default_runtime(pair):
    ra, _ = pair
    pysocket.set_default_runtime(None)
    with pytest.raises(OSError) as e:
        socket()
    assert e.value.errno == errno.ENETDOWN
    pysocket.set_default_runtime(ra)
    try:
        with socket() as s:
            assert s.runtime is ra
    finally:
        pysocket.set_default_runtime(None)


def test_shutdown_and_eof(pair):
    ra, rb = pair
    with tcp(rb) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        c = pysocket.create_connection((B_IP, listener.getsockname()[1]), 2.0, runtime=ra)
        s, _ = listener.accept()
        with c, s:
            c.sendall(b"bye")
            c.shutdown(pysocket.SHUT_WR)
            s.settimeout(2.0)
            assert s.recv(10) == b"bye"
            assert s.recv(10) == b""
            with pytest.raises(BrokenPipeError):
                c.send(b"more")
            s.sendall(b"reply")
            c.settimeout(2.0)
            assert c.recv(10) == b"reply"
            s.shutdown(pysocket.SHUT_RDWR)
            assert c.recv(10) == b""


# -- readiness and non-blocking connect ---------------------------------------------------
def test_nonblocking_connect_and_selectors(pair):
    ra, rb = pair
    with tcp(rb) as listener, tcp(ra) as c, selectors.DefaultSelector() as sel:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
        sel.register(listener, selectors.EVENT_READ, "listener")
        c.setblocking(False)
        fd = c.fileno()
        sel.register(c, selectors.EVENT_WRITE, "client")
        with pytest.raises(BlockingIOError) as e:
            c.connect((B_IP, listener.getsockname()[1]))
        assert e.value.errno == errno.EINPROGRESS
        assert c.fileno() == fd  # the fd does not change when the socket connects
        seen = set()
        deadline = time.monotonic() + 2
        while seen != {"listener", "client"}:
            assert time.monotonic() < deadline
            seen |= {k.data for k, _ in sel.select(0.5)}
        assert c.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_ERROR) == 0
        s, _ = listener.accept()
        with s:
            sel.unregister(c)
            sel.register(s, selectors.EVENT_READ, "server")
            c.send(b"ready")
            assert [k.data for k, _ in sel.select(2.0)] == ["server"]
            assert s.recv(10) == b"ready"
            sel.unregister(s)
        # a refused non-blocking connect: writable, and SO_ERROR says why
        r = tcp(ra)
        r.setblocking(False)
        assert r.connect_ex((B_IP, 9)) == errno.EINPROGRESS
        sel.register(r, selectors.EVENT_WRITE, "refused")
        assert [k.data for k, _ in sel.select(2.0) if k.data == "refused"] == ["refused"]
        assert r.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_ERROR) == errno.ECONNREFUSED
        sel.unregister(r)
        r.close()


# -- asyncio ------------------------------------------------------------------------------
def test_asyncio_echo(pair):
    ra, rb = pair
    data = os.urandom(1 << 20)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        server = await pysocket.start_server(handle, rb, "0.0.0.0", 9999)
        async with server:
            reader, writer = await pysocket.open_connection(ra, B_IP, 9999)
            assert writer.get_extra_info("peername") == (B_IP, 9999)

            async def send() -> None:
                for i in range(0, len(data), 100_000):
                    writer.write(data[i:i + 100_000])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            got = await asyncio.wait_for(reader.read(-1), 10)
            await sender
            writer.close()
            await writer.wait_closed()
            assert got == data

    asyncio.run(main())


def test_asyncio_sock_methods(pair):
    ra, rb = pair

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = tcp(rb)
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        listener.setblocking(False)
        c = tcp(ra)
        c.setblocking(False)
        accept = asyncio.create_task(loop.sock_accept(listener))
        await asyncio.wait_for(loop.sock_connect(c, (B_IP, listener.getsockname()[1])), 2)
        s, _addr = await asyncio.wait_for(accept, 2)
        await loop.sock_sendall(c, b"x" * 300_000)  # more than the buffers: waits for room
        got = bytearray()
        while len(got) < 300_000:
            got += await asyncio.wait_for(loop.sock_recv(s, 65536), 2)
        assert got == b"x" * 300_000
        r = tcp(ra)
        r.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(loop.sock_connect(r, (B_IP, 9)), 2)
        for sock in (c, s, listener, r):
            sock.close()

    asyncio.run(main())


def test_an_unclosed_socket_warns_and_closes(pair):
    ra, rb = pair
    with tcp(rb) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        c = pysocket.create_connection((B_IP, listener.getsockname()[1]), 2.0, runtime=ra)
        s, _ = listener.accept()
        with s:
            with pytest.warns(ResourceWarning):
                del c
                gc.collect()
            s.settimeout(2.0)
            assert s.recv(1) == b""  # the peer's FIN


def test_sendall_timeout_is_for_the_whole_call(pair):
    ra, rb = pair
    with tcp(rb) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        c = tcp(ra)
        c.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_SNDBUF, 16384)
        c.settimeout(2.0)
        c.connect((B_IP, listener.getsockname()[1]))
        s, _ = listener.accept()
        with c, s:
            c.settimeout(0.3)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                c.sendall(b"x" * (4 << 20))  # the peer never reads
            assert 0.3 <= time.monotonic() - t0 < 0.35


def test_patch_restores_on_error_and_nests(pair):
    ra, rb = pair
    real = std_socket.socket
    with pytest.raises(RuntimeError), pysocket.patch(ra) as outer:
        assert std_socket.socket is outer
        with pysocket.patch(rb) as inner:
            assert std_socket.socket is inner and socketserver.socket.socket is inner
            assert inner._bound_runtime is rb
        assert std_socket.socket is outer
        raise RuntimeError("boom")
    assert std_socket.socket is real
    assert std_socket.getfqdn is pysocket._real_getfqdn


def test_plain_asyncio_through_patch(pair):
    """Under `patch`, asyncio's own open_connection (getaddrinfo, socket.socket,
    sock_connect) runs on our stack, names from `hosts` included."""
    ra, rb = pair

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await pysocket.start_server(handle, rb, "0.0.0.0", 8765)
        async with server:
            reader, writer = await asyncio.open_connection("server.test", 8765)
            assert isinstance(writer.get_extra_info("socket")._sock, socket)
            writer.write(b"through patch\n")
            assert await asyncio.wait_for(reader.readline(), 2) == b"THROUGH PATCH\n"
            writer.close()
            await writer.wait_closed()

    with pysocket.patch(ra, hosts={"server.test": B_IP}):
        assert std_socket.getaddrinfo("server.test", "80", type=std_socket.SOCK_STREAM) == \
            [(std_socket.AF_INET, std_socket.SOCK_STREAM, std_socket.IPPROTO_TCP, "",
              (B_IP, 80))]
        asyncio.run(main())
    assert std_socket.getaddrinfo is pysocket._real_getaddrinfo
