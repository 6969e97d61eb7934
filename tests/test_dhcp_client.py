"""DHCP client state machine against our DhcpServer, with a fake clock and the wire between."""

from __future__ import annotations

import math
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from netstack.socket.dhcp_client import (
    Configured,
    Deconfigured,
    DhcpClient,
    State,
)
from netstack.socket.dhcp_server import DhcpServer, DhcpServerConfig
from netstack.wire.dhcpv4 import DhcpPacket, DhcpRepr, MessageType
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr

MAC = EthernetAddress.parse("52:54:00:12:34:56")
GATEWAY = IPv4Address("10.0.2.2")
BCAST = IPv4Address("255.255.255.255")


def wire(msg: DhcpRepr) -> DhcpRepr:
    """Through bytes and back, as on a real link."""
    buf = bytearray(msg.buffer_len())
    msg.emit(DhcpPacket(buf))
    return DhcpRepr.parse(DhcpPacket.new_checked(bytes(buf)))


class Link:
    """One client, one (possibly absent) server, a log of what the client sent."""

    def __init__(self, server: DhcpServer | None = None, seed: int = 1) -> None:
        self.client = DhcpClient(MAC, hostname="guest", rng=seed)
        self.server = server if server is not None else DhcpServer()
        self.up = True
        self.sent: list[tuple[float, DhcpRepr, IPv4Address, IPv4Address]] = []
        self.events: list[tuple[float, object]] = []

    def step(self, now: float) -> None:
        for _ in range(4):  # a whole exchange can happen in one instant
            msg = self.client.poll(now)
            while (ev := self.client.next_event()) is not None:
                self.events.append((now, ev))
            if msg is None:
                return
            self.sent.append((now, msg, self.client.source(), self.client.destination()))
            if not self.up:
                continue
            reply = self.server.handle(now, wire(msg), MAC)
            if reply is not None:
                ev = self.client.process(now, wire(reply))
                if ev is not None:
                    self.events.append((now, ev))

    def run(self, until: float, start: float = 0.0) -> float:
        """Advance the clock from deadline to deadline up to `until`."""
        now = start
        while now <= until:
            self.step(now)
            nxt = self.client.poll_at()
            if nxt > until:
                break
            now = max(nxt, now)
        return now


def configured() -> Configured:
    return Configured(Ipv4Cidr(IPv4Address("10.0.2.15"), 24), GATEWAY,
                      (IPv4Address("10.0.2.3"),), 3600.0, GATEWAY, "vhostnet")


def test_gets_configured() -> None:
    link = Link()
    link.step(0.0)
    assert link.events == [(0.0, configured())]
    assert link.client.state is State.BOUND
    assert [m.message_type for _, m, _, _ in link.sent] == [MessageType.DISCOVER,
                                                             MessageType.REQUEST]
    discover, request = (m for _, m, _, _ in link.sent)
    assert discover.broadcast and discover.client_identifier == b"\x01" + bytes(MAC)
    assert discover.hostname == "guest" and request.transaction_id == discover.transaction_id
    assert request.requested_ip == IPv4Address("10.0.2.15")
    assert request.server_identifier == GATEWAY
    assert all((src, dst) == (IPv4Address(0), BCAST) for _, _, src, dst in link.sent)
    assert link.client.poll_at() == 1800.0
    assert link.server.leases()[0].hostname == "guest"


def test_renews_at_t1_unicast_and_stays_configured() -> None:
    link = Link()
    link.step(0.0)
    link.step(1799.0)
    assert len(link.sent) == 2
    link.step(1800.0)
    when, msg, src, dst = link.sent[-1]
    assert when == 1800.0 and msg.message_type == MessageType.REQUEST
    assert msg.client_ip == IPv4Address("10.0.2.15") and msg.requested_ip is None
    assert msg.server_identifier is None and not msg.broadcast
    assert (src, dst) == (IPv4Address("10.0.2.15"), GATEWAY)
    assert link.client.state is State.BOUND
    assert len(link.events) == 1  # renewal with the same config raises no event
    assert link.client.poll_at() == 3600.0
    assert link.server.leases()[0].expires == 1800.0 + 3600


def test_rebinds_at_t2_when_the_server_does_not_answer_renewals() -> None:
    link = Link()
    link.step(0.0)
    link.up = False
    link.run(3149.0, start=1800.0)
    renew_times = [t for t, *_ in link.sent[2:]]
    # Half the time left to T2 (3150), at least 60 s, never past T2.
    assert renew_times == [1800.0, 2475.0, 2812.5, 2981.25, 3065.625, 3125.625]
    assert link.client.state is State.RENEWING
    link.up = True
    link.step(3150.0)
    _, msg, src, dst = link.sent[-1]
    assert msg.client_ip == IPv4Address("10.0.2.15") and dst == BCAST
    assert src == IPv4Address("10.0.2.15")
    assert link.client.state is State.BOUND
    assert link.client.poll_at() == 3150.0 + 1800


def test_deconfigures_at_expiry_when_the_server_vanishes() -> None:
    link = Link()
    link.step(0.0)
    link.up = False
    link.run(3599.0, start=1800.0)
    assert link.client.state is State.REBINDING
    rebind_times = [t for t, m, _, d in link.sent if d == BCAST and m.client_ip != IPv4Address(0)]
    # Half the time left in the lease, at least 60 s, never past its end.
    assert rebind_times == [3150.0, 3375.0, 3487.5, 3547.5]
    assert link.events == [(0.0, configured())]
    link.step(3600.0)
    assert link.events[-1] == (3600.0, Deconfigured())
    assert link.client.state is State.SELECTING
    assert link.sent[-1][1].message_type == MessageType.DISCOVER
    # The server comes back: configured again.
    link.up = True
    link.run(3700.0, start=3600.0)
    assert isinstance(link.events[-1][1], Configured)


def test_nak_while_renewing_deconfigures_and_restarts() -> None:
    link = Link()
    link.step(0.0)
    # The gateway now serves another subnet (backend restarted with new settings).
    link.server = DhcpServer(DhcpServerConfig(
        subnet="10.0.3.0/24", server_ip="10.0.2.2", router="10.0.3.1",
        dns_servers=["10.0.3.3"], pool_start="10.0.3.15"))
    link.step(1800.0)
    kinds = [ev for _, ev in link.events]
    assert kinds[1] == Deconfigured()
    assert isinstance(kinds[2], Configured)
    assert kinds[2].address == Ipv4Cidr(IPv4Address("10.0.3.15"), 24)
    assert kinds[2].router == IPv4Address("10.0.3.1")
    assert link.client.stats.naks == 1


def test_nak_while_requesting_restarts_without_event() -> None:
    link = Link(server=None)
    client = link.client
    discover = client.poll(0.0)
    offer = link.server.handle(0.0, wire(discover), MAC)
    client.process(0.0, wire(offer))
    request = client.poll(0.0)
    assert request.message_type == MessageType.REQUEST
    nak = DhcpRepr(MessageType.NAK, request.transaction_id, MAC, server_identifier=GATEWAY)
    assert client.process(0.1, wire(nak)) is None
    assert client.state is State.INIT and client.poll_at() == 0.0
    again = client.poll(0.2)
    assert again.message_type == MessageType.DISCOVER
    assert again.transaction_id != discover.transaction_id


def test_retransmission_backoff_with_jitter() -> None:
    link = Link()
    link.up = False
    link.run(300.0)
    times = [t for t, *_ in link.sent]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    for gap, base in zip(gaps, [4, 8, 16, 32, 64, 64, 64], strict=False):
        assert base - 1 <= gap <= base + 1
    assert len({round(g - b, 6) for g, b in zip(gaps, [4, 8, 16, 32, 64], strict=False)}) > 1
    assert all(m.message_type == MessageType.DISCOVER for _, m, _, _ in link.sent)
    assert len({m.transaction_id for _, m, _, _ in link.sent}) == 1
    assert link.sent[2][1].secs == int(times[2])
    # The same seed gives the same schedule.
    other = Link()
    other.up = False
    other.run(300.0)
    assert [t for t, *_ in other.sent] == times


def test_request_gives_up_after_max_retransmit() -> None:
    link = Link()
    client = link.client
    offer = link.server.handle(0.0, wire(client.poll(0.0)), MAC)
    client.process(0.0, wire(offer))
    sent = []
    now = 0.0
    while len(sent) < 6:
        msg = client.poll(now)
        if msg is not None:
            sent.append((now, msg.message_type))
        now = client.poll_at()
    assert [t for _, t in sent] == [MessageType.REQUEST] * 5 + [MessageType.DISCOVER]


def test_replies_with_wrong_xid_or_mac_are_ignored() -> None:
    link = Link()
    client = link.client
    discover = client.poll(0.0)
    offer = link.server.handle(0.0, wire(discover), MAC)
    assert client.process(0.0, replace(offer, transaction_id=offer.transaction_id ^ 1)) is None
    other = EthernetAddress.parse("52:54:00:00:00:01")
    assert client.process(0.0, replace(offer, client_hardware_address=other)) is None
    assert client.state is State.SELECTING and client.stats.ignored == 2
    client.process(0.0, offer)
    assert client.state is State.REQUESTING


def test_reset_deconfigures() -> None:
    link = Link()
    link.step(0.0)
    assert link.client.reset() == Deconfigured()
    assert link.client.state is State.INIT and link.client.config is None
    assert link.client.reset() is None


@pytest.mark.parametrize("lease", [0xFFFFFFFF])
def test_infinite_lease_never_renews(lease: int) -> None:
    link = Link(DhcpServer(DhcpServerConfig(lease_time=lease)))
    link.step(0.0)
    assert link.events[0][1].lease == math.inf
    assert link.client.poll_at() == math.inf
    assert link.events[0][1].lease == math.inf
    link.step(1e12)
    assert len(link.sent) == 2 and link.client.state is State.BOUND


def test_docstring_examples() -> None:
    import doctest

    import netstack.socket.dhcp_client as mod
    assert doctest.testmod(mod).failed == 0
