"""Router advertisements from the default stack: content checked with scapy, timing (initial
burst, RS answered, RS flood bounded), and the stack's IPv6 wiring (RA, DHCPv6, AAAA)."""

from __future__ import annotations

from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_InfoRequest,
    DHCP6_Reply,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptOptReq,
)
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.packet import raw

from apps.stack import StackConfig, build_stack
from tests.iface.test_interface import Dev

GUEST_MAC = "52:54:00:12:34:56"
GUEST_LL = "fe80::5054:ff:fe12:3456"
STACK_MAC = "52:55:0a:00:02:02"
STACK_LL = "fe80::5055:aff:fe00:202"


def _stack(**kw):
    stack = build_stack(StackConfig(apps=False, **kw))
    dev = Dev()
    return stack, dev


def _poll(stack, dev, now, *frames):
    for f in frames:
        dev.rx.append(raw(f))
    stack.iface.poll(now, dev, stack.sockets)
    return dev.take()


def _ras(frames):
    return [f for f in frames if ICMPv6ND_RA in f]


def test_advertisement_content_checked_by_scapy():
    stack, dev = _stack()
    (ra,) = _ras(_poll(stack, dev, 0.0))
    assert ra.dst == "33:33:00:00:00:01" and ra[IPv6].dst == "ff02::1"
    assert ra[IPv6].src == STACK_LL and ra[IPv6].hlim == 255
    body = ra[ICMPv6ND_RA]
    assert body.routerlifetime == 1800 and body.O == 1 and body.M == 0
    pi = ra[ICMPv6NDOptPrefixInfo]
    assert (pi.prefix, pi.prefixlen, pi.L, pi.A) == ("fd00:10:0:2::", 64, 1, 1)
    assert ra[ICMPv6NDOptRDNSS].dns == ["fd00:10:0:2::3"]
    assert ra[ICMPv6NDOptMTU].mtu == 1500
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == STACK_MAC
    rebuilt = ra.copy()
    del rebuilt[ICMPv6ND_RA].cksum
    assert raw(Ether(raw(rebuilt))) == raw(ra)  # the checksum is right


def test_initial_burst_then_rs_answered_and_rs_flood_bounded():
    stack, dev = _stack()
    assert len(_ras(_poll(stack, dev, 0.0))) == 1
    assert _ras(_poll(stack, dev, 1.0)) == []
    assert len(_ras(_poll(stack, dev, 4.0))) == 1  # initial interval: 4 s
    rs = Ether(src=GUEST_MAC, dst="33:33:00:00:00:02") / \
        IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS() / \
        ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC)
    assert len(_ras(_poll(stack, dev, 5.5, rs))) == 1  # answered at once
    sent = 0
    t = 5.5
    for _ in range(200):  # 200 RSs over 10 s: at most one RA a second
        t += 0.05
        sent += len(_ras(_poll(stack, dev, t, rs)))
    assert 5 <= sent <= 11


def test_no_ipv6():
    stack, dev = _stack(ipv6=False)
    frames = _poll(stack, dev, 0.0)
    assert not any(IPv6 in f for f in frames)
    assert stack.iface.ipv6_addrs == []


def test_dhcpv6_information_request_and_aaaa_over_ipv6():
    stack, dev = _stack()
    _poll(stack, dev, 0.0)
    info = Ether(src=GUEST_MAC, dst="33:33:00:01:00:02") / \
        IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / \
        DHCP6_InfoRequest(trid=0x1234) / DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC)) / \
        DHCP6OptOptReq(reqopts=[23])
    out = _poll(stack, dev, 1.0, info)  # the reply waits for the guest's link address
    (ns,) = [f for f in out if ICMPv6ND_NS in f and f[ICMPv6ND_NS].tgt == GUEST_LL]
    na = Ether(src=GUEST_MAC, dst=STACK_MAC) / IPv6(src=GUEST_LL, dst=ns[IPv6].src, hlim=255) \
        / ICMPv6ND_NA(tgt=GUEST_LL, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=GUEST_MAC)
    (reply,) = [f for f in _poll(stack, dev, 1.1, na) if UDP in f]
    assert reply[IPv6].dst == GUEST_LL and reply[UDP].dport == 546
    assert reply[DHCP6_Reply].trid == 0x1234
    assert reply[DHCP6OptDNSServers].dnsservers == ["fd00:10:0:2::3"]
    q = Ether(src=GUEST_MAC, dst=STACK_MAC) / \
        IPv6(src="fd00:10:0:2:5054:ff:fe12:3456", dst="fd00:10:0:2::3") / \
        UDP(sport=40000, dport=53) / DNS(rd=1, qd=DNSQR(qname="gateway.vhostnet", qtype="AAAA"))
    (ans,) = [f for f in _poll(stack, dev, 2.0, q) if UDP in f]
    assert ans[IPv6].src == "fd00:10:0:2::3"
    assert ans[DNS].an[0].rdata == "fd00:10:0:2::2"
