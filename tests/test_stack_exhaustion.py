"""ADVERSARIAL.md 22-23 against the product stack (`apps.stack.build_stack` with its apps
running: HTTP on 80, echo on 7, ...), not only against a TcpListener: a peer over a
loopback link that is either our own stack (well-behaved clients that never close) or
raw frames built with scapy (a SYN flood from spoofed sources)."""

from __future__ import annotations

import random
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from apps.stack import StackConfig, build_stack
from netstack.net import TcpStream
from netstack.phy.loopback import waking_pair
from netstack.socket.tcp.socket import TcpSocket
from netstack.socket.tcp.state import State
from tests.test_net_udp import stack as client_stack

SERVER_IP = "10.9.0.2"
CLIENT_IP = "10.9.0.1"
SERVER_MAC = "52:55:0a:00:02:02"
CLIENT_MAC = "02:00:00:00:00:01"


@pytest.fixture
def product():
    """The product stack on one end of a link (its own runtime thread, apps started);
    yields (stack, the other end)."""
    ours, theirs = waking_pair()
    cfg = StackConfig(address=SERVER_IP + "/24", ipv6=False, dhcp=False,
                      tcp_fin_timeout=1.0, max_sockets=2000)
    st = build_stack(cfg)
    st.runtime.attach(ours)
    st.runtime.start()
    st.start_apps()
    yield st, theirs
    st.stop()
    st.runtime.stop()
    ours.close()
    theirs.close()


def _server_tcp(st) -> list[TcpSocket]:
    with st.runtime.lock:
        return [s for s in st.sockets.of_kind("tcp") if isinstance(s, TcpSocket)]


def test_http_clients_that_never_send_their_fin_are_reclaimed(product):
    """50 clients GET /bytes/10 and never close: our HTTP app closes its side, the
    clients acknowledge the FIN and never send theirs. The 50 FIN-WAIT-2 sockets had no
    deadline (2,000 were all there an hour later); now fin_timeout reclaims them."""
    st, end = product
    client = client_stack(1, CLIENT_IP, end)
    client.start()
    held = []
    try:
        for _ in range(50):
            s = TcpStream.connect(client, (SERVER_IP, 80), timeout=5)
            s.write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.set_read_timeout(5)
            assert s.read_to_end().endswith(bytes(range(10)))
            held.append(s)  # never closed: no FIN from the client
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            fw2 = [s for s in _server_tcp(st) if s.state is State.FIN_WAIT_2]
            if not fw2 and not [s for s in _server_tcp(st) if s.remote_endpoint is not None
                                and s.state is not State.LISTEN]:
                break
            time.sleep(0.1)
        left = [s for s in _server_tcp(st) if s.remote_endpoint is not None]
        assert not left, left
    finally:
        for s in held:
            s.close()
        client.stop()


def _send(end, pkt) -> None:
    """Put a frame on the link, waiting while the link's queue is full (the server
    takes 64 frames per poll)."""
    frame = bytes(pkt)
    deadline = time.monotonic() + 10
    while (tx := end.transmit(0.0)) is None:
        assert time.monotonic() < deadline, "the server stopped taking frames"
        _frames(end)
        time.sleep(0.001)
    tx.consume(len(frame), lambda buf: buf.__setitem__(slice(None), frame))


def _frames(end) -> list[Ether]:
    out = []
    while (tokens := end.receive(0.0)) is not None:
        out.append(tokens[0].consume(lambda f: Ether(bytes(f))))
    return out


def test_a_syn_flood_leaves_the_table_bounded_and_a_real_client_served(product):
    """5,000 SYNs from spoofed sources to the HTTP app's port: bounded half-open state
    and SYN cookies, the socket table stays small — and a client that completes its
    handshake still gets its page (ADVERSARIAL.md 22, on the product stack)."""
    st, end = product
    eth = Ether(src=CLIENT_MAC, dst=SERVER_MAC)
    rng = random.Random(22)
    before = len(st.sockets)
    for i in range(5_000):
        src = f"10.9.0.{rng.randrange(100, 250)}"
        _send(end, eth / IP(src=src, dst=SERVER_IP) / TCP(sport=rng.randrange(1024, 65535),
                                                         dport=80, flags="S", seq=i))
        if i % 500 == 0:
            _frames(end)  # (what the server says to the spoofed sources goes nowhere)
    time.sleep(0.5)
    _frames(end)
    assert len(st.sockets) <= before + 5  # half-open children live in the listener
    # a real client now: announce ourselves, then the three-way handshake and a GET
    _send(end, Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=CLIENT_MAC, psrc=CLIENT_IP, pdst=SERVER_IP))
    ip = IP(src=CLIENT_IP, dst=SERVER_IP)
    _send(end, eth / ip / TCP(sport=5555, dport=80, flags="S", seq=1000))
    synack = None
    deadline = time.monotonic() + 5
    while synack is None and time.monotonic() < deadline:
        for f in _frames(end):
            if TCP in f and f[TCP].dport == 5555 and f[TCP].flags == "SA":
                synack = f[TCP]
        time.sleep(0.02)
    assert synack is not None, "no SYN-ACK for the real client"
    ack = synack.seq + 1
    _send(end, eth / ip / TCP(sport=5555, dport=80, flags="A", seq=1001, ack=ack))
    req = b"GET /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n"
    _send(end, eth / ip / TCP(sport=5555, dport=80, flags="PA", seq=1001, ack=ack) / req)
    body = b""
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in body and time.monotonic() < deadline:
        for f in _frames(end):
            if TCP in f and f[TCP].dport == 5555 and bytes(f[TCP].payload):
                body += bytes(f[TCP].payload)
        time.sleep(0.02)
    assert body.startswith(b"HTTP/1.1 200"), body
