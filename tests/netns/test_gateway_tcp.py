"""TCP through the gateway's NAT with the Linux kernel at both ends (a namespace as the
guest behind our stack on a TAP, another as the "internet"): half-close both ways and RST
both ways cross the NAT as they would a router."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address

import pytest

from gateway import Gateway, GatewayConfig
from tests.netns.conftest import OUR_IP, Link
from tests.netns.test_gateway_flood import internet  # noqa: F401 (a fixture)

pytestmark = pytest.mark.netns

SERVER = r"""
import hashlib, socket, struct, sys, threading
def handle(c, mode):
    try:
        if mode == "sink":  # read to EOF (the client's half-close), then answer, close
            h, n = hashlib.sha256(), 0
            while d := c.recv(65536):
                h.update(d); n += len(d)
            c.sendall(f"{n} {h.hexdigest()}".encode())
        elif mode == "source":  # send, half-close, then read what the client says
            c.sendall(b"y" * (1 << 20))
            c.shutdown(socket.SHUT_WR)
            got = b""
            while d := c.recv(65536):
                got += d
            print("client said", got.decode(), flush=True)
        elif mode == "expect-reset":
            try:
                while c.recv(65536):
                    pass
                print("eof", flush=True)
            except ConnectionResetError:
                print("reset", flush=True)
        elif mode == "reset":
            c.recv(10)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        c.close()
def serve(port, mode):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c, mode), daemon=True).start()
for port, mode in ((9101, "sink"), (9102, "source"), (9103, "expect-reset"), (9104, "reset")):
    threading.Thread(target=serve, args=(port, mode), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import hashlib, socket, struct, sys, time
mode = sys.argv[1]
c = socket.create_connection(("198.51.100.2", {"sink": 9101, "source": 9102,
                             "reset": 9103, "expect-reset": 9104}[mode]), timeout=30)
if mode == "sink":
    data = bytes(range(256)) * 4096
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    got = b""
    while d := c.recv(65536):
        got += d
    print(got.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}")
elif mode == "source":
    n = 0
    while d := c.recv(65536):
        n += len(d)
    c.sendall(b"thanks %d" % n)
    c.close()
    print("read", n)
elif mode == "reset":
    c.sendall(b"x")
    time.sleep(0.3)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    print("sent reset")
elif mode == "expect-reset":
    c.sendall(b"x")
    try:
        print("eof" if c.recv(10) == b"" else "data")
    except ConnectionResetError:
        print("reset")
"""


@pytest.fixture
def nat(link: Link, internet):  # noqa: F811
    server = subprocess.Popen(["ip", "netns", "exec", internet, sys.executable, "-u", "-c",
                               SERVER], stdout=subprocess.PIPE, text=True)
    gw = Gateway(link.runtime, GatewayConfig(dns=False), gateway4=IPv4Address(OUR_IP))
    gw.start()
    try:
        assert server.stdout.readline().strip() == "ready"
        link.run("ip", "route", "add", "default", "via", OUR_IP)
        yield link, server, gw
    finally:
        gw.close()
        server.kill()
        server.wait(5)
        server.stdout.close()


def test_half_close_from_the_guest(nat):
    link, _server, _gw = nat
    assert link.python(CLIENT, "sink").stdout.strip() == "True"


def test_half_close_from_the_host(nat):
    link, server, _gw = nat
    assert link.python(CLIENT, "source").stdout.split() == ["read", str(1 << 20)]
    assert server.stdout.readline().split() == ["client", "said", "thanks", str(1 << 20)]


def test_reset_from_the_guest_resets_the_host_side(nat):
    link, server, gw = nat
    assert link.python(CLIENT, "reset").stdout.strip() == "sent reset"
    assert server.stdout.readline().strip() == "reset"


def test_reset_from_the_host_resets_the_guest_side(nat):
    link, _server, gw = nat
    assert link.python(CLIENT, "expect-reset").stdout.strip() == "reset"
    assert gw.status()["counters"]["tcp_host_reset"] >= 1
