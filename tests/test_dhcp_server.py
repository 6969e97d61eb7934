"""DHCP server engine: client messages built with scapy, replies checked with scapy."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from netstack.socket.dhcp_server import (
    DhcpServer,
    DhcpServerConfig,
    LeaseState,
    reply_destination,
    reply_port,
)
from netstack.wire.dhcpv4 import DhcpPacket, DhcpRepr, MessageType
from netstack.wire.ethernet import BROADCAST, EthernetAddress

MAC_A = EthernetAddress.parse("52:54:00:00:00:0a")
MAC_B = EthernetAddress.parse("52:54:00:00:00:0b")
SERVER = IPv4Address("10.0.2.2")
BCAST = IPv4Address("255.255.255.255")


def client_msg(mac: EthernetAddress, mtype: str, *, xid: int = 0x1234, flags: int = 0,
               ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0", options=()) -> DhcpRepr:
    """A client message built by scapy, parsed by our wire module."""
    pkt = BOOTP(op=1, xid=xid, flags=flags, ciaddr=ciaddr, giaddr=giaddr,
                chaddr=bytes(mac) + bytes(10)) / DHCP(
        options=[("message-type", mtype), *options, "end"])
    return DhcpRepr.parse(DhcpPacket.new_checked(bytes(pkt)))


def to_scapy(reply: DhcpRepr) -> BOOTP:
    buf = bytearray(b"\xa5" * reply.buffer_len())
    reply.emit(DhcpPacket(buf))
    return BOOTP(bytes(buf))


def opts(pkt: BOOTP) -> dict:
    return {o[0]: (o[1] if len(o) == 2 else o[1:]) for o in pkt[DHCP].options
            if isinstance(o, tuple)}


def dora(server: DhcpServer, mac: EthernetAddress, now: float = 0.0, xid: int = 1,
         extra=()) -> DhcpRepr:
    offer = server.handle(now, client_msg(mac, "discover", xid=xid, options=extra), mac)
    assert offer is not None and offer.message_type == MessageType.OFFER
    ack = server.handle(now, client_msg(mac, "request", xid=xid, options=[
        ("server_id", str(SERVER)), ("requested_addr", str(offer.your_ip)), *extra]), mac)
    assert ack is not None and ack.message_type == MessageType.ACK
    return ack


def test_dora_first_client_gets_pool_start_with_options() -> None:
    server = DhcpServer(DhcpServerConfig())
    offer = server.handle(0.0, client_msg(MAC_A, "discover", flags=0x8000), MAC_A)
    o = to_scapy(offer)
    assert o.op == 2 and o.xid == 0x1234 and o.yiaddr == "10.0.2.15"
    assert o.chaddr[:6] == bytes(MAC_A)
    got = opts(o)
    assert got["message-type"] == 2
    assert got["server_id"] == "10.0.2.2"
    assert got["router"] == "10.0.2.2"
    assert got["name_server"] == "10.0.2.3"
    assert got["subnet_mask"] == "255.255.255.0"
    assert got["lease_time"] == 3600
    assert got["renewal_time"] == 1800 and got["rebinding_time"] == 3150
    assert got["domain"] == b"vhostnet"
    assert reply_destination(client_msg(MAC_A, "discover", flags=0x8000), offer) == (
        BCAST, BROADCAST, True)

    req = client_msg(MAC_A, "request", options=[
        ("server_id", "10.0.2.2"), ("requested_addr", "10.0.2.15"), ("hostname", b"guest")])
    ack = server.handle(1.0, req, MAC_A)
    a = to_scapy(ack)
    assert opts(a)["message-type"] == 5 and a.yiaddr == "10.0.2.15"
    assert opts(a)["lease_time"] == 3600
    # No broadcast bit, no ciaddr: unicast to yiaddr at chaddr.
    assert reply_destination(req, ack) == (IPv4Address("10.0.2.15"), MAC_A, False)
    assert reply_port(req) == 68
    [lease] = server.leases()
    assert (lease.address, lease.mac, lease.state, lease.expires, lease.hostname) == (
        IPv4Address("10.0.2.15"), MAC_A, LeaseState.BOUND, 3601.0, "guest")
    assert server.poll_at() == 3601.0
    assert server.stats.offers == 1 and server.stats.acks == 1


def test_two_clients_get_different_addresses() -> None:
    server = DhcpServer()
    a = dora(server, MAC_A)
    b = dora(server, MAC_B)
    assert a.your_ip == IPv4Address("10.0.2.15")
    assert b.your_ip == IPv4Address("10.0.2.16")


def test_same_mac_gets_the_same_address_back() -> None:
    server = DhcpServer()
    first = dora(server, MAC_A)
    dora(server, MAC_B)
    assert dora(server, MAC_A, now=10, xid=2).your_ip == first.your_ip
    # Even after the lease expired and another client came along.
    server.expire(10_000)
    assert server.leases() == []
    dora(server, EthernetAddress.parse("52:54:00:00:00:0c"), now=10_000)
    assert dora(server, MAC_A, now=10_001, xid=3).your_ip == first.your_ip


def test_discover_honours_requested_address_when_free() -> None:
    server = DhcpServer()
    offer = server.handle(0, client_msg(MAC_A, "discover",
                                        options=[("requested_addr", "10.0.2.100")]), MAC_A)
    assert offer.your_ip == IPv4Address("10.0.2.100")
    # Outside the pool or reserved: the next free one instead.
    for asked in ("10.0.2.3", "10.0.3.9", "10.0.2.5"):
        offer = server.handle(0, client_msg(MAC_B, "discover",
                                            options=[("requested_addr", asked)]), MAC_B)
        assert offer.your_ip == IPv4Address("10.0.2.15")


def test_client_identifier_keys_the_lease() -> None:
    server = DhcpServer()
    cid = [("client_id", b"\xffmy-duid")]
    ack = dora(server, MAC_A, extra=cid)
    assert opts(to_scapy(ack))["client_id"] == b"\xffmy-duid"  # RFC 6842 echo
    # Same identifier from another MAC (a re-created NIC): the same address.
    assert dora(server, MAC_B, now=5, xid=9, extra=cid).your_ip == ack.your_ip
    assert len(server.leases()) == 1


def test_release_frees_the_address() -> None:
    server = DhcpServer(DhcpServerConfig(pool_size=1))
    ack = dora(server, MAC_A)
    rel = client_msg(MAC_A, "release", ciaddr=str(ack.your_ip), options=[("server_id", "10.0.2.2")])
    assert server.handle(5, rel, MAC_A) is None
    assert server.leases() == [] and server.stats.releases == 1
    assert dora(server, MAC_B, now=6).your_ip == ack.your_ip


def test_init_reboot_wrong_address_is_naked() -> None:
    server = DhcpServer()
    req = client_msg(MAC_A, "request", flags=0, options=[("requested_addr", "192.168.1.50")])
    nak = server.handle(0, req, MAC_A)
    n = to_scapy(nak)
    assert opts(n)["message-type"] == 6 and n.yiaddr == "0.0.0.0"
    assert "router" not in opts(n) and "lease_time" not in opts(n)
    assert reply_destination(req, nak) == (BCAST, BROADCAST, True)  # NAKs are broadcast


def test_init_reboot_address_of_another_client_is_naked() -> None:
    server = DhcpServer()
    a = dora(server, MAC_A)
    req = client_msg(MAC_B, "request", options=[("requested_addr", str(a.your_ip))])
    assert server.handle(0, req, MAC_B).message_type == MessageType.NAK


def test_init_reboot_unknown_client_free_address_is_acked() -> None:
    """Authoritative: after a backend restart the guest keeps its address."""
    server = DhcpServer()
    req = client_msg(MAC_A, "request", options=[("requested_addr", "10.0.2.42")])
    ack = server.handle(0, req, MAC_A)
    assert ack.message_type == MessageType.ACK and ack.your_ip == IPv4Address("10.0.2.42")


def test_request_for_another_server_is_ignored_and_offer_withdrawn() -> None:
    server = DhcpServer()
    offer = server.handle(0, client_msg(MAC_A, "discover"), MAC_A)
    req = client_msg(MAC_A, "request", options=[
        ("server_id", "10.0.2.99"), ("requested_addr", str(offer.your_ip))])
    assert server.handle(0, req, MAC_A) is None
    assert server.stats.other_server == 1 and server.leases() == []


def test_renewing_and_rebinding_extend_the_lease() -> None:
    server = DhcpServer()
    ack = dora(server, MAC_A)
    renew = client_msg(MAC_A, "request", xid=7, ciaddr=str(ack.your_ip))
    again = server.handle(1800, renew, MAC_A)
    assert again.message_type == MessageType.ACK and again.your_ip == ack.your_ip
    assert again.client_ip == ack.your_ip
    assert reply_destination(renew, again) == (ack.your_ip, MAC_A, False)
    assert server.leases()[0].expires == 1800 + 3600
    # A renewal for an address outside the subnet is NAKed.
    bad = client_msg(MAC_A, "request", xid=8, ciaddr="10.9.9.9")
    assert server.handle(1801, bad, MAC_A).message_type == MessageType.NAK


def test_pool_exhaustion_no_reply_and_counter() -> None:
    server = DhcpServer(DhcpServerConfig(pool_size=2))
    assert dora(server, MAC_A).your_ip == IPv4Address("10.0.2.15")
    assert dora(server, MAC_B).your_ip == IPv4Address("10.0.2.16")
    mac_c = EthernetAddress.parse("52:54:00:00:00:0c")
    assert server.handle(0, client_msg(mac_c, "discover"), mac_c) is None
    assert server.stats.pool_exhausted == 1
    # When a lease expires, the address comes free again.
    assert server.handle(3601, client_msg(mac_c, "discover"), mac_c).your_ip == IPv4Address(
        "10.0.2.15")


def test_reserved_addresses_are_skipped() -> None:
    cfg = DhcpServerConfig(pool_start="10.0.2.2", pool_size=3)
    server = DhcpServer(cfg)
    # 10.0.2.2 (server, router) and 10.0.2.3 (DNS) are never leased.
    assert dora(server, MAC_A).your_ip == IPv4Address("10.0.2.4")
    assert server.handle(0, client_msg(MAC_B, "discover"), MAC_B) is None


def test_expiry_of_leases_and_offers() -> None:
    server = DhcpServer()
    ack = dora(server, MAC_A)
    server.handle(0, client_msg(MAC_B, "discover"), MAC_B)
    assert server.poll_at() == 60.0  # the offer
    server.expire(60.0)
    assert [le.mac for le in server.leases()] == [MAC_A]
    assert server.poll_at() == 3600.0
    server.expire(3599.9)
    assert len(server.leases()) == 1
    server.expire(3600.0)
    assert server.leases() == [] and server.poll_at() is None
    assert server.stats.expired == 1
    # A renewal after expiry still gets the address back while it is free.
    renew = client_msg(MAC_A, "request", ciaddr=str(ack.your_ip))
    assert server.handle(4000, renew, MAC_A).message_type == MessageType.ACK


def test_decline_keeps_address_out_for_a_while() -> None:
    server = DhcpServer()
    ack = dora(server, MAC_A)
    dec = client_msg(MAC_A, "decline", options=[
        ("server_id", "10.0.2.2"), ("requested_addr", str(ack.your_ip))])
    assert server.handle(1, dec, MAC_A) is None
    assert server.declined() == {ack.your_ip: 601.0}
    assert dora(server, MAC_A, now=2, xid=5).your_ip == IPv4Address("10.0.2.16")
    server.expire(601)
    assert server.declined() == {}
    assert dora(server, MAC_B, now=601).your_ip == ack.your_ip


def test_inform_acks_without_yiaddr_or_lease() -> None:
    server = DhcpServer()
    inform = client_msg(MAC_A, "inform", ciaddr="10.0.2.77")
    ack = server.handle(0, inform, MAC_A)
    a = to_scapy(ack)
    assert opts(a)["message-type"] == 5 and a.yiaddr == "0.0.0.0" and a.ciaddr == "10.0.2.77"
    assert "lease_time" not in opts(a) and opts(a)["router"] == "10.0.2.2"
    assert reply_destination(inform, ack) == (IPv4Address("10.0.2.77"), MAC_A, False)
    assert server.leases() == []


def test_relay_replies_go_to_giaddr_port_67() -> None:
    server = DhcpServer(DhcpServerConfig())
    disc = client_msg(MAC_A, "discover", giaddr="10.0.2.1", flags=0x8000)
    offer = server.handle(0, disc, EthernetAddress.parse("52:54:00:99:99:99"))
    assert offer.relay_agent_ip == IPv4Address("10.0.2.1")
    assert reply_destination(disc, offer) == (IPv4Address("10.0.2.1"), None, False)
    assert reply_port(disc) == 67


def test_chaddr_not_matching_source_mac_is_dropped() -> None:
    server = DhcpServer()
    assert server.handle(0, client_msg(MAC_A, "discover"), MAC_B) is None
    assert server.stats.mac_mismatch == 1
    lax = DhcpServer(DhcpServerConfig(check_src_mac=False))
    assert lax.handle(0, client_msg(MAC_A, "discover"), MAC_B) is not None


def test_server_messages_are_ignored() -> None:
    server = DhcpServer()
    offer = server.handle(0, client_msg(MAC_A, "discover"), MAC_A)
    assert server.handle(0, offer, MAC_A) is None
    assert server.stats.ignored == 1


def test_flood_of_discovers_stays_bounded() -> None:
    rng = random.Random(7)
    server = DhcpServer(DhcpServerConfig(max_leases=50))
    replies = 0
    for i in range(5000):
        mac = EthernetAddress(bytes([0x52]) + rng.randbytes(5))
        if server.handle(i * 0.01, client_msg(mac, "discover", xid=i), mac) is not None:
            replies += 1
        assert len(server.leases()) <= 50
    assert replies >= 50
    assert server.stats.pool_exhausted == 5000 - replies
    assert len(server._remembered) <= 50  # the memory of past clients is bounded too
    # Offers time out and a real client gets served again.
    assert dora(server, MAC_A, now=1000).your_ip in IPv4Network("10.0.2.0/24")


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        DhcpServerConfig(pool_start="10.0.3.1")
    with pytest.raises(ValueError):
        DhcpServerConfig(pool_size=500)
    cfg = DhcpServerConfig(subnet="192.168.7.0/24", server_ip="192.168.7.1",
                           router="192.168.7.1", dns_servers=["192.168.7.1"],
                           pool_start="192.168.7.100")
    assert cfg.pool_end == IPv4Address("192.168.7.254")
    assert cfg.reserved == {IPv4Address("192.168.7.1")}


def test_docstring_examples() -> None:
    import doctest

    import netstack.socket.dhcp_server as mod
    assert doctest.testmod(mod).failed == 0


_ADDRS = st.sampled_from(["0.0.0.0", "10.0.2.2", "10.0.2.3", "10.0.2.15", "10.0.2.16",
                          "10.0.2.254", "10.0.2.255", "10.0.3.15", "192.0.2.1"]).map(IPv4Address)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(list(MessageType)), st.integers(0, 3), _ADDRS, st.none() | _ADDRS,
    st.none() | _ADDRS, st.booleans(), st.sampled_from(["0.0.0.0", "10.0.2.1"]).map(IPv4Address),
    st.none() | st.binary(max_size=8), st.floats(0, 10_000)), max_size=40))
def test_any_message_sequence_is_handled(messages) -> None:
    """Whatever clients send, handle never raises, replies emit, the table stays bounded."""
    server = DhcpServer(DhcpServerConfig(pool_size=3, max_leases=2))
    now = 0.0
    for mtype, who, ciaddr, requested, sid, bcast, giaddr, cid, dt in messages:
        now += dt
        mac = EthernetAddress(bytes([0x52, 0, 0, 0, 0, who]))
        req = DhcpRepr(mtype, 1, mac, broadcast=bcast, client_ip=ciaddr, relay_agent_ip=giaddr,
                       requested_ip=requested, server_identifier=sid, client_identifier=cid)
        reply = server.handle(now, req, mac)
        if reply is not None:
            to_scapy(reply)
            dest = reply_destination(req, reply)
            assert dest.broadcast == (dest.ip == BCAST)
            if reply.message_type == MessageType.ACK and reply.your_ip != IPv4Address(0):
                assert reply.your_ip in (IPv4Address("10.0.2.15"), IPv4Address("10.0.2.16"),
                                         IPv4Address("10.0.2.17"))
        leases = server.leases()
        assert len(leases) <= 2
        assert len({le.address for le in leases}) == len(leases)
        assert server.poll_at() is None or server.poll_at() > now
