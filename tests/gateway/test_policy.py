"""The gateway's destination policy and option parsing, without a guest (the behaviour
with one is in tests/e2e/test_gateway.py and tests/netns/test_gateway_flood.py)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from gateway.dns import parse_server
from gateway.policy import LOOPBACK4, LOOPBACK6, GatewayConfig, Policy

GW4, GW6 = IPv4Address("10.0.2.2"), IPv6Address("fd00:10:0:2::2")


def target(cfg: GatewayConfig, proto: str, dst: str):
    return Policy(cfg, GW4, GW6).target(proto, ip_address(dst))


def test_the_gateway_address_is_the_hosts_loopback():
    assert target(GatewayConfig(), "tcp", "10.0.2.2") == LOOPBACK4
    assert target(GatewayConfig(), "udp", "fd00:10:0:2::2") == LOOPBACK6
    assert target(GatewayConfig(), "tcp", "198.51.100.2") == IPv4Address("198.51.100.2")
    moved = GatewayConfig(map_host_loopback="10.0.2.99")
    assert target(moved, "tcp", "10.0.2.99") == LOOPBACK4
    assert target(moved, "tcp", "10.0.2.2") == IPv4Address("10.0.2.2")  # (ours: not NAT)
    off = GatewayConfig(map_host_loopback=None)
    assert Policy(off, GW4, GW6).loopback == {}


@pytest.mark.parametrize("dst", ["224.0.0.1", "255.255.255.255", "0.0.0.0", "127.0.0.1",
                                 "::1", "ff02::1", "fe80::1", "::ffff:1.2.3.4"])
def test_what_no_host_socket_should_reach(dst):
    assert target(GatewayConfig(), "tcp", dst) == "not_unicast"


def test_restrict_allow_deny_and_protocols():
    assert target(GatewayConfig(restrict=True), "tcp", "198.51.100.2") == "restricted"
    assert target(GatewayConfig(restrict=True), "tcp", "10.0.2.2") == "restricted"
    assert target(GatewayConfig(tcp=False), "tcp", "198.51.100.2") == "tcp_outbound_off"
    assert target(GatewayConfig(tcp=False), "udp", "198.51.100.2") != "tcp_outbound_off"
    assert target(GatewayConfig(icmp=False), "icmp", "198.51.100.2") == "icmp_outbound_off"
    cfg = GatewayConfig(allow=["198.51.100.0/24", "2001:db8::/32"],
                        deny=["198.51.100.128/25"])
    assert target(cfg, "tcp", "198.51.100.2") == IPv4Address("198.51.100.2")
    assert target(cfg, "tcp", "198.51.100.200") == "denied"  # deny wins
    assert target(cfg, "tcp", "203.0.113.1") == "not_allowed"
    assert target(cfg, "udp", "2001:db8::5") == IPv6Address("2001:db8::5")


@pytest.mark.parametrize("text,want", [
    ("192.0.2.53", ("192.0.2.53", 53)), ("192.0.2.53:5353", ("192.0.2.53", 5353)),
    ("[2001:db8::1]", ("2001:db8::1", 53)), ("[2001:db8::1]:54", ("2001:db8::1", 54)),
])
def test_dns_forward_addresses(text, want):
    assert parse_server(text) == want


@pytest.mark.parametrize("text", ["2001:db8::1", "nowhere", "1.2.3.4:0", "[::1", "[::1]x"])
def test_bad_dns_forward_addresses(text):
    with pytest.raises(ValueError):
        parse_server(text)


def test_restrict_forwards_no_dns_either():
    from apps.stack import StackConfig, build_stack

    cfg = StackConfig(apps=False)
    cfg.gateway = GatewayConfig(restrict=True, dns_forward=["127.0.0.1:5353"])
    st = build_stack(cfg)
    try:
        assert st.gateway is not None and st.gateway.dns is None
    finally:
        st.stop()
    cfg.gateway = GatewayConfig(dns_forward=["127.0.0.1:5353"])
    st = build_stack(cfg)
    try:
        assert st.gateway.dns.servers == [("127.0.0.1", 5353)]
    finally:
        st.stop()
