"""What the guest sends through the gateway leaves within the stack's own poll: a
datagram, an echo request and a forwarded DNS query reach their host socket before the
gateway's turn of the loop (a hop through it added a wake-up to every round trip). The
host side here is this machine's loopback; the answers' way back is covered with a guest
in tests/e2e/test_gateway.py."""

from __future__ import annotations

import socket

import pytest
from scapy.all import DNS, DNSQR, ICMP, IP, UDP, Ether, raw

from apps.stack import StackConfig, build_stack
from gateway.policy import GatewayConfig
from tests.iface.test_interface import Dev

GUEST_MAC = "52:54:00:12:34:56"


@pytest.fixture()
def stack():
    def make(**gateway):
        cfg = StackConfig(gateway=GatewayConfig(**gateway))
        st = build_stack(cfg, gateway_thread=False)
        made.append(st)
        return st

    made = []
    yield make
    for st in made:
        st.stop()


def _poll_with(st, *frames) -> Dev:
    dev = Dev()
    st.runtime.attach(dev)
    for f in frames:
        dev.rx.append(raw(Ether(src=GUEST_MAC, dst=st.config.mac) / f))
    st.runtime.poll(0.0)
    return dev


def test_a_datagram_reaches_its_host_socket_within_the_poll(stack):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host:
        host.bind(("127.0.0.1", 0))
        host.settimeout(0)
        port = host.getsockname()[1]
        st = stack()
        _poll_with(st, IP(src="10.0.2.15", dst="10.0.2.2") / UDP(sport=4000, dport=port)
                   / b"hello")
        data, peer = host.recvfrom(100)  # already there: no BlockingIOError
        assert data == b"hello"
        assert st.gateway.stats["udp_opened"] == 1


def test_an_echo_request_is_sent_within_the_poll(stack):
    st = stack(map_host_loopback="10.0.2.99")  # (10.0.2.2 itself answers pings: ours)
    _poll_with(st, IP(src="10.0.2.15", dst="10.0.2.99") / ICMP(id=9, seq=1) / (b"x" * 8))
    if st.gateway.icmp.mode.get(4) == "none":
        pytest.skip("neither ping sockets nor raw sockets on this machine")
    assert st.gateway.stats["icmp_sent"] == 1


def test_a_forwarded_query_reaches_the_server_within_the_poll(stack):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(0)
        st = stack(dns_forward=[f"127.0.0.1:{server.getsockname()[1]}"])
        _poll_with(st, IP(src="10.0.2.15", dst="10.0.2.3") / UDP(sport=4001, dport=53)
                   / DNS(id=77, qd=DNSQR(qname="example.test")))
        query, _ = server.recvfrom(512)
        assert DNS(query).qd[0].qname == b"example.test."
        assert st.gateway.stats["dns_forwarded"] == 1
