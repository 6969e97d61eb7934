"""The tcpdump-style decoder of `vhostnet capture` (apps/capture/decode.py), against
tcpdump itself: the same frames written to a pcap, `tcpdump -n -e -r` (and -v, -vv, -vvv,
-XX) on it, and the lines compared frame by frame.

Three sets of frames: a catalogue made with scapy (every protocol and branch the decoder
claims), a real guest's session recorded through our backend with `serve --pcap`
(tests/data/capture/guest-session.pcap, 105 frames: the bundled Linux guest in QEMU ran
`udhcpc`, `ping -c 3 10.0.2.2`, `nslookup` of gateway.vhostnet and of a missing name,
`wget` of / and /bytes/20000, a 6000-byte `wget --post-file` to /sink, `ping -s 3000`,
ping6 and `ping6 -s 2000` (fragments), `wget` over IPv6, busybox `tftp -g` of a file and of
a missing one, and `nc` to the discard port; NDP, MLD and RA came with them), and the
catalogue and the session cut at many capture lengths and mutated at random. Every line must equal tcpdump's,
except where the module docstring says it differs: a TFTP transfer on a session port
(tcpdump: `UDP, length N`), and, for random mutations, the protocols we do not decode
(there our line must equal tcpdump's up to the point where tcpdump goes into a printer we
do not have). Hypothesis: nothing raises, whatever the bytes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6MLDMultAddrRec,
    ICMPv6MLDone,
    ICMPv6MLQuery,
    ICMPv6MLQuery2,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptRouteInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.tftp import (
    TFTP,
    TFTP_ACK,
    TFTP_DATA,
    TFTP_ERROR,
    TFTP_OACK,
    TFTP_RRQ,
    TFTP_WRQ,
    TFTP_Option,
    TFTP_Options,
)
from scapy.packet import Raw

from apps.capture import decode as decode_mod
from apps.capture._printer import Lru, hex_ascii, ip6_str
from apps.capture.decode import Decoder, decode, vnet_summary

HERE = os.path.dirname(os.path.abspath(__file__))
SESSION = os.path.join(HERE, "data", "capture", "guest-session.pcap")
TCPDUMP = shutil.which("tcpdump")
needs_tcpdump = pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed")

G, S, BCAST = "52:54:00:12:34:56", "52:55:0a:00:02:02", "ff:ff:ff:ff:ff:ff"
GIP, SIP, DNSIP = "10.0.2.15", "10.0.2.2", "10.0.2.3"
GLL, SLL = "fe80::5054:ff:fe12:3456", "fe80::5055:aff:fe00:202"
G6, S6 = "fd00:10:0:2:5054:ff:fe12:3456", "fd00:10:0:2::2"
MAC = bytes.fromhex("525400123456")

# -- byte vectors (the line tcpdump 4.99 prints for each; checked below against tcpdump) -------
ARP_WHO_HAS = bytes.fromhex("ffffffffffff5254001234560806000108000604000152540012345"
                            "60a00020f0000000000000a000202")
ARP_WHO_HAS_LINE = ("52:54:00:12:34:56 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: "
                    "Request who-has 10.0.2.2 tell 10.0.2.15, length 28")
PING = bytes.fromhex("52550a00020252540012345608004500005400014000400122980a00020f0a0002020800"
                     "f7fc00010002") + bytes(56)
PING_LINE = ("52:54:00:12:34:56 > 52:55:0a:00:02:02, ethertype IPv4 (0x0800), length 98: "
             "10.0.2.15 > 10.0.2.2: ICMP echo request, id 1, seq 2, length 64")


def test_byte_vectors():
    assert decode(ARP_WHO_HAS) == ARP_WHO_HAS_LINE
    assert decode(PING) == PING_LINE
    assert decode(PING, verbose=1) == PING_LINE.replace(
        "length 98: ", "length 98: (tos 0x0, ttl 64, id 1, offset 0, flags [DF], proto ICMP "
        "(1), length 84)\n    ")
    hexed = decode(ARP_WHO_HAS, hexdump=True)
    assert hexed.startswith(ARP_WHO_HAS_LINE + "\n\t0x0000:  ffff ffff ffff 5254 0012 3456 "
                                               "0806 0001  ......RT..4V....")
    assert decode(PING[:40], len(PING)).endswith("10.0.2.15 > 10.0.2.2:  [|icmp]")
    assert decode(b"", 60) == "[Invalid header: caplen==0]"
    assert decode(b"") == "[Invalid header: caplen==0, len==0]"
    assert decode(PING[:10]) == " [|ether]"


def test_doctests():
    import doctest

    import apps.control

    assert doctest.testmod(decode_mod).failed == 0
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for t in finder.find(apps.control.format_frame):
        runner.run(t)
    assert runner.failures == 0


# -- the catalogue --------------------------------------------------------------------------------
def _dhcp(op: int, msg: str, **kw) -> BOOTP:
    return BOOTP(op=op, chaddr=MAC, xid=0x3903F326, **kw)


def catalogue() -> list[bytes]:
    """Frames of every protocol and branch the decoder has, as a guest's link sees them."""
    e, r = Ether(src=G, dst=S), Ether(src=S, dst=G)
    up = e / IP(src=GIP, dst=SIP)
    down = r / IP(src=SIP, dst=GIP)
    up6, down6 = e / IPv6(src=G6, dst=S6), r / IPv6(src=S6, dst=G6)
    ra = (ICMPv6ND_RA(routerlifetime=1800, M=1, O=1, prf=3, reachabletime=30000,
                      retranstimer=1000)
          / ICMPv6NDOptSrcLLAddr(lladdr=S) / ICMPv6NDOptMTU(mtu=1500)
          / ICMPv6NDOptPrefixInfo(prefix="fd00:10:0:2::", prefixlen=64, validlifetime=86400,
                                  preferredlifetime=14400)
          / ICMPv6NDOptRDNSS(dns=["fd00:10:0:2::3"], lifetime=600)
          / ICMPv6NDOptDNSSL(searchlist=["vhostnet.", "example.com."], lifetime=600)
          / ICMPv6NDOptRouteInfo(prefix="fd01::", plen=48, prf=1, rtlifetime=900))
    frames = [
        # link: ARP, RARP, VLAN, QinQ, unknown EtherType
        Ether(src=G, dst=BCAST) / ARP(op=1, hwsrc=G, psrc=GIP, pdst=SIP),
        r / ARP(op=2, hwsrc=S, psrc=SIP, hwdst=G, pdst=GIP),
        Ether(src=G, dst=BCAST) / ARP(op=1, hwsrc=G, psrc=GIP, hwdst=S, pdst=SIP),
        Ether(src=G, dst=BCAST, type=0x8035) / ARP(op=3, hwsrc=G, hwdst=G),
        Ether(src=G, dst=BCAST) / ARP(op=1, ptype=0x86DD, plen=16, hwsrc=G),
        e / Dot1Q(vlan=100, prio=5) / IP(src=GIP, dst=SIP) / ICMP(id=7, seq=1),
        e / Dot1Q(vlan=20, type=0x8100) / Dot1Q(vlan=30, dei=1) / IP(src=GIP, dst=SIP)
        / UDP(sport=1, dport=9),
        Ether(src=G, dst=S, type=0x88A8) / Dot1Q(vlan=7) / ARP(hwsrc=G, psrc=GIP, pdst=SIP),
        Ether(src=G, dst=S, type=0x1234) / Raw(bytes(range(40))),
        # ICMP
        up / ICMP(type=8, id=0x1234, seq=3) / Raw(b"x" * 56),
        down / ICMP(type=0, id=0x1234, seq=3) / Raw(b"x" * 56),
        down / ICMP(type=3, code=3) / IP(src=GIP, dst=SIP) / UDP(sport=1234, dport=9),
        down / ICMP(type=3, code=3) / IP(src=GIP, dst=SIP) / TCP(sport=1234, dport=9),
        down / ICMP(type=3, code=1) / IP(src=GIP, dst="10.0.2.9") / TCP(),
        down / ICMP(type=3, code=2) / IP(src=GIP, dst=SIP, proto=99) / Raw(bytes(8)),
        down / ICMP(type=3, code=4, nexthopmtu=1400) / IP(src=GIP, dst="10.0.2.9", flags="DF")
        / TCP(sport=40000, dport=80),
        down / ICMP(type=3, code=13) / IP(src=GIP, dst="10.0.2.9") / UDP(),
        down / ICMP(type=3, code=99) / IP(src=GIP, dst="10.0.2.9") / UDP(),
        down / ICMP(type=11, code=0) / IP(src=GIP, dst="8.8.8.8", ttl=1)
        / UDP(sport=1234, dport=33434),
        down / ICMP(type=11, code=1) / IP(src=GIP, dst="8.8.8.8") / UDP(),
        down / ICMP(type=11, code=0, length=32) / Raw(bytes.fromhex(  # RFC 4884: MPLS
            "450000c80001000001119d060a00020f080808080001829a00b45fcc") + bytes(100)
            + bytes.fromhex("20008a0d0008010103e85101")),
        down / ICMP(type=5, code=1, gw="10.0.2.1") / IP(src=GIP, dst="8.8.8.8") / UDP(),
        down / ICMP(type=12, code=0, ptr=20) / IP(src=GIP, dst=SIP) / UDP(),
        up / ICMP(type=13, id=1, seq=2),
        down / ICMP(type=14, id=1, seq=2, ts_ori=1000, ts_rx=3723004, ts_tx=86399999),
        down / ICMP(type=18, addr_mask="255.255.255.0"),
        up / ICMP(type=10),
        up / ICMP(type=42, code=1),
        up / ICMP(type=8, chksum=0x1234) / Raw(b"bad checksum"),
        # IPv4 header details, options, fragments, tunnels
        e / IP(src=GIP, dst=SIP, tos=0xB8, ttl=1, id=4242, flags="DF")
        / UDP(sport=5000, dport=6000) / Raw(b"hello"),
        e / IP(src=GIP, dst=SIP, tos=3, chksum=0xBEEF) / UDP(sport=5000, dport=6000),
        e / IP(src=GIP, dst="224.0.0.22", ttl=1, options=[IPOption_Router_Alert()], proto=2)
        / Raw(bytes.fromhex("22000000000000010400000000e00000fb")[:16]),
        e / IP(src=GIP, dst=SIP, options=[IPOption_RR(routers=["1.2.3.4", "5.6.7.8"])])
        / ICMP(),
        e / IP(src=GIP, dst=SIP, flags="MF", id=77) / UDP(sport=5000, dport=6000)
        / Raw(b"a" * 100),
        e / IP(src=GIP, dst=SIP, frag=185, id=77, proto=17) / Raw(b"a" * 100),
        e / IP(src=GIP, dst=SIP, proto=4) / IP(src="192.168.0.1", dst="192.168.0.2") / ICMP(),
        e / IP(src=GIP, dst=SIP, proto=41) / IPv6(src="2001:db8::1", dst="2001:db8::2")
        / ICMPv6EchoRequest(),
        e / IP(src=GIP, dst=SIP, proto=59),
        # IGMP
        e / IP(src=GIP, dst="224.0.0.1", proto=2) / Raw(bytes.fromhex("1164ee9b00000000")),
        e / IP(src=GIP, dst="224.0.0.251", proto=2) / Raw(bytes.fromhex("160009040e0000fb")),
        e / IP(src=GIP, dst="224.0.0.2", proto=2) / Raw(bytes.fromhex("1700080300000000")),
        e / IP(src=GIP, dst="224.0.0.22", proto=2)
        / Raw(bytes.fromhex("22001cfc0000000104000000e00000fb")),
        e / IP(src=SIP, dst="224.0.0.1", proto=2)
        / Raw(bytes.fromhex("117fee9a00000000020a0000")),
        # TCP: flags, options, relative seq/ack, SACK, payloads
        up / TCP(sport=40000, dport=80, flags="S", seq=1000, window=64240,
                 options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (123, 0)),
                          ("NOP", None), ("WScale", 7)]),
        down / TCP(sport=80, dport=40000, flags="SA", seq=5000, ack=1001, window=65535,
                   options=[("MSS", 1460)]),
        up / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=5001, window=502),
        up / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=5001, window=502,
                 options=[("NOP", None), ("NOP", None), ("Timestamp", (200, 100))])
        / Raw(b"GET / HTTP/1.1\r\nHost: 10.0.2.2\r\n\r\n"),
        down / TCP(sport=80, dport=40000, flags="PA", seq=5001, ack=1035)
        / Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        down / TCP(sport=80, dport=40000, flags="A", seq=5044, ack=1035) / Raw(b"\x00\x01body"),
        up / TCP(sport=40000, dport=80, flags="A", seq=1035, ack=5001,
                 options=[("NOP", None), ("NOP", None), ("SAck", (5100, 5200, 5300, 5400))]),
        up / TCP(sport=40000, dport=80, flags="FA", seq=1035, ack=5049, window=502),
        down / TCP(sport=80, dport=40000, flags="RA", seq=5049, ack=1036)
        / Raw(b"connection reset by peer, go away please"),
        up / TCP(sport=40001, dport=8080, flags="SEC", seq=1, window=0),
        up / TCP(sport=40002, dport=22, flags="UA", urgptr=3, seq=9, ack=9),
        up / TCP(sport=40003, dport=443, flags="S",
                 options=[("MSS", 1460), ("SAck", (100, 200)), ("EOL", None)]),
        up / TCP(sport=40004, dport=443, flags="S",
                 options=[(34, b""), (28, b"\x80\x05"), (99, b"\x01\x02\x03")]),
        up / TCP(sport=40005, dport=443, flags="S", options=[(34, bytes(8)), (19, bytes(16))]),
        up / TCP(sport=40006, dport=443, flags="S", dataofs=6) / Raw(b"\x02\x08\x05\xb4"),
        up / TCP(sport=40007, dport=53, flags="PA", seq=1, ack=1)
        / Raw(struct.pack("!H", 29) + bytes(DNS(id=9, rd=1, qd=DNSQR(qname="example.com")))),
        up / TCP(sport=40008, dport=443, dataofs=4),
        e / IPv6(src=G6, dst=S6) / TCP(sport=40000, dport=80, flags="S", seq=1,
                                        options=[("MSS", 1440)]),
        # UDP: DNS, DHCP, TFTP, NTP, DHCPv6, others
        up / UDP(sport=5353, dport=53) / DNS(id=0x1A2B, rd=1, qd=DNSQR(qname="example.com")),
        down / UDP(sport=53, dport=5353) / DNS(
            id=0x1A2B, qr=1, rd=1, ra=1, qd=DNSQR(qname="example.com"),
            an=[DNSRR(rrname="example.com", type="A", ttl=300, rdata="93.184.216.34")]),
        down / UDP(sport=53, dport=5353) / DNS(
            id=7, qr=1, rd=1, ra=1, rcode=3, qd=DNSQR(qname="nope.example", qtype="AAAA")),
        down / UDP(sport=53, dport=40000) / DNS(
            id=8, qr=1, aa=1, rd=1, qd=DNSQR(qname="www.example.com", qtype="AAAA"),
            an=[DNSRR(rrname="www.example.com", type="CNAME", ttl=3600,
                      rdata="example.com"),
                DNSRR(rrname="example.com", type="AAAA", ttl=90061, rdata="2001:db8::1")],
            ns=[DNSRR(rrname="example.com", type="NS", ttl=60, rdata="ns.example.com")],
            ar=[DNSRROPT(rclass=1232)]),
        down / UDP(sport=53, dport=40000) / DNS(
            id=9, qr=1, rd=1, ra=1, ad=1, qd=DNSQR(qname="example.com", qtype="MX"),
            an=[DNSRR(rrname="example.com", type="MX", rdata=b"\x00\x0a\x04mail\xc0\x0c"),
                DNSRR(rrname="example.com", type="TXT", rdata=[b"v=spf1 -all", b"x"]),
                DNSRR(rrname="_sip._udp.example.com", type="SRV",
                      rdata=b"\x00\x01\x00\x02\x13\xc4\x03sip\xc0\x0c"),
                DNSRR(rrname="1.0.0.10.in-addr.arpa", type="PTR", rdata="host.example.com"),
                DNSRR(rrname="example.com", type=99, rdata=b"\x01\x02")]),
        down / UDP(sport=53, dport=40000) / DNS(
            id=10, qr=1, rcode=2, qd=[DNSQR(qname="a.example"), DNSQR(qname="b.example")]),
        up / UDP(sport=40000, dport=53) / DNS(id=11, opcode=4, qd=DNSQR(qname="x.example",
                                                                          qclass=3)),
        up / UDP(sport=40000, dport=53) / DNS(
            id=12, rd=1, qd=DNSQR(qname="example.com"),
            ar=[DNSRROPT(rclass=4096, z=0x8000, rdata=[])]),
        up / UDP(sport=5353, dport=5353) / DNS(id=0, qd=DNSQR(qname="printer.local",
                                                              qtype="PTR", unicastresponse=1)),
        down / UDP(sport=5353, dport=5353) / DNS(
            id=0, qr=1, aa=1, an=[DNSRR(rrname="printer.local", type="A", rclass=0x8001,
                                       rdata="10.0.2.99")]),
        Ether(src=G, dst=BCAST) / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67) / _dhcp(1, "discover") / DHCP(options=[
            ("message-type", "discover"), ("requested_addr", GIP),
            ("hostname", b"guest"), ("client_id", b"\x01" + MAC),
            ("param_req_list", [1, 3, 6, 15, 26, 28, 42, 119, 121]),
            ("max_dhcp_size", 1500), ("vendor_class_id", b"udhcp 1.36"), "end"]),
        r / IP(src=SIP, dst=GIP) / UDP(sport=67, dport=68)
        / _dhcp(2, "offer", yiaddr=GIP, siaddr=SIP) / DHCP(options=[
            ("message-type", "offer"), ("server_id", SIP), ("lease_time", 86400),
            ("renewal_time", 43200), ("subnet_mask", "255.255.255.0"), ("router", SIP),
            ("name_server", DNSIP, "10.0.2.4"), ("domain", b"vhostnet"),
            ("classless_static_routes", ["0.0.0.0/0:10.0.2.2", "10.1.0.0/16:10.0.2.5"]),
            ("broadcast_address", "10.0.2.255"), ("interface-mtu", 1500), "end"]),
        Ether(src=G, dst=BCAST) / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67) / _dhcp(1, "request", secs=3, flags=0x8000)
        / DHCP(options=[("message-type", "request"), ("server_id", SIP),
                        ("requested_addr", GIP), ("client_id", b"\x00guest-id"), "end"]),
        r / IP(src=SIP, dst=GIP) / UDP(sport=67, dport=68)
        / _dhcp(2, "ack", yiaddr=GIP, file=b"boot.ipxe", sname=b"vhostnet")
        / DHCP(options=[("message-type", "ack"), ("server_id", SIP), ("tftp_server_name",
                                                                       b"10.0.2.2"), "end"]),
        r / IP(src=SIP, dst=GIP) / UDP(sport=67, dport=68) / _dhcp(2, "nak")
        / DHCP(options=[("message-type", "nak"), ("error_message", b"wrong network"), "end"]),
        up / UDP(sport=68, dport=67) / _dhcp(1, "release", ciaddr=GIP)
        / DHCP(options=[("message-type", "release"), (200, b"\x01\x02\x03"), "end"]),
        up / UDP(sport=40001, dport=69) / TFTP() / TFTP_RRQ(filename="boot.ipxe",
                                                           mode="octet"),
        up / UDP(sport=40002, dport=69) / TFTP() / TFTP_WRQ(filename="up.bin", mode="netascii"),
        up / UDP(sport=40003, dport=69) / TFTP() / TFTP_RRQ(filename="k", mode="octet")
        / TFTP_Options(options=[TFTP_Option(oname="blksize", value="1468"),
                                TFTP_Option(oname="tsize", value="0")]),
        down / UDP(sport=69, dport=40004) / TFTP() / TFTP_ERROR(errorcode=1,
                                                                 errormsg="File not found"),
        down / UDP(sport=69, dport=40004) / TFTP() / TFTP_ERROR(errorcode=9, errormsg="odd"),
        down / UDP(sport=69, dport=40005) / Raw(b"\x00\x09junk"),
        up / UDP(sport=123, dport=123) / Raw(b"\x23" + bytes(47)),
        down / UDP(sport=123, dport=123) / Raw(b"\x24\x02\x06\xe9" + bytes(44)),
        up / UDP(sport=5000, dport=6000) / Raw(b"hello"),
        up / UDP(sport=5000, dport=6000, len=100) / Raw(b"short"),
        up / UDP(sport=5000, dport=6000, len=4),
        e / IPv6(src=GLL, dst="ff02::1:2") / UDP(sport=546, dport=547)
        / Raw(bytes.fromhex("01123456")),
        # IPv6: NDP, MLD, errors, extension headers, fragments
        e / IPv6(src=GLL, dst="ff02::2") / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=G),
        r / IPv6(src=SLL, dst="ff02::1") / ra,
        e / IPv6(src=GLL, dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt=S6)
        / ICMPv6NDOptSrcLLAddr(lladdr=G),
        e / IPv6(src="::", dst="ff02::1:ff12:3456") / ICMPv6ND_NS(tgt=G6),
        r / IPv6(src=S6, dst=GLL) / ICMPv6ND_NA(tgt=S6, R=1, S=1, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=S),
        r / IPv6(src=S6, dst=GLL) / ICMPv6ND_NA(tgt=S6, R=0, S=0, O=0),
        r / IPv6(src=SLL, dst=GLL) / ICMPv6ND_Redirect(tgt=SLL, dst="2001:db8::9"),
        up6 / ICMPv6EchoRequest(id=5, seq=1, data=b"p" * 56),
        down6 / ICMPv6EchoReply(id=5, seq=1, data=b"p" * 56),
        up6 / ICMPv6EchoRequest(id=5, seq=2, cksum=0x1234),
        down6 / ICMPv6PacketTooBig(mtu=1280) / IPv6(src=G6, dst="fd00::9")
        / TCP(sport=40000, dport=80),
        down6 / ICMPv6DestUnreach(code=4) / IPv6(src=G6, dst=S6) / UDP(sport=4000, dport=9),
        down6 / ICMPv6DestUnreach(code=4) / IPv6(src=G6, dst=S6) / TCP(sport=4000, dport=9),
        down6 / ICMPv6DestUnreach(code=0) / IPv6(src=G6, dst="2001:db8::1") / UDP(),
        down6 / ICMPv6DestUnreach(code=2) / IPv6(src=G6, dst="2001:db8::1") / UDP(),
        down6 / ICMPv6TimeExceeded(code=0) / IPv6(src=G6, dst="2001:db8::99") / UDP(),
        down6 / ICMPv6TimeExceeded(code=1) / IPv6(src=G6, dst="2001:db8::99") / UDP(),
        down6 / ICMPv6ParamProblem(code=1, ptr=40) / IPv6(src=G6, dst=S6) / UDP(),
        e / IPv6(src=GLL, dst="ff02::16", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(dst="ff02::1:ff12:3456"),
                                   ICMPv6MLDMultAddrRec(rtype=3, dst="ff02::fb",
                                                        sources=["fe80::1"])]),
        e / IPv6(src=GLL, dst="ff02::fb", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / ICMPv6MLReport(mladdr="ff02::fb"),
        e / IPv6(src=GLL, dst="ff02::2", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / ICMPv6MLDone(mladdr="ff02::fb"),
        r / IPv6(src=SLL, dst="ff02::1", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / ICMPv6MLQuery(),
        r / IPv6(src=SLL, dst="ff02::1", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / ICMPv6MLQuery2(),
        up6 / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2),
        up6 / IPv6ExtHdrFragment(m=1, id=0xABC, offset=0) / UDP(sport=1, dport=2)
        / Raw(b"q" * 64),
        up6 / IPv6ExtHdrFragment(m=0, id=0xABC, offset=9, nh=17) / Raw(b"q" * 24),
        e / IPv6(src=G6, dst=S6, tc=0xB8, fl=0x12345) / UDP(sport=5353, dport=53)
        / DNS(id=9, rd=1, qd=DNSQR(qname="example.com", qtype="AAAA")),
        up6 / ICMPv6EchoRequest(type=200),
    ]
    return [bytes(f) for f in frames]


# -- running tcpdump --------------------------------------------------------------------------
def write_pcap(path, frames: list[tuple[bytes, int]]) -> None:
    """A pcap of `(captured bytes, length on the wire)`, frame k at time k seconds."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for k, (data, wire) in enumerate(frames):
            f.write(struct.pack("<IIII", k, 0, len(data), wire) + data)


def read_pcap(path) -> list[tuple[bytes, int]]:
    with open(path, "rb") as f:
        data = f.read()
    out, off = [], 24
    while off < len(data):
        _, _, caplen, wire = struct.unpack_from("<IIII", data, off)
        out.append((data[off + 16:off + 16 + caplen], wire))
        off += 16 + caplen
    return out


def tcpdump(path, *flags: str) -> list[str]:
    """tcpdump's text for each frame (its continuation lines joined with newlines)."""
    out = subprocess.run([TCPDUMP, "-n", "-e", "-tt", *flags, "-r", str(path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    records: list[str] = []
    for line in out.split("\n"):
        m = re.match(r"\d+\.\d{6} ", line)
        if m:
            records.append(line[m.end():])
        elif line and records:
            records[-1] += "\n" + line
    return records


def ours(frames: list[tuple[bytes, int]], verbose: int = 0, hexdump: bool = False
         ) -> list[str]:
    dec = Decoder(verbose, hexdump)
    return [dec.decode(data, wire) for data, wire in frames]


FLAGS = {0: (), 1: ("-v",), 2: ("-vv",), 3: ("-vvv",)}
TFTP_TRANSFER = re.compile(r"TFTP, length (\d+)[^\n]*")


def tftp_as_udp(mine: str, theirs: str) -> str:
    """Our line of a TFTP transfer on a session port, as tcpdump (which does not follow
    the transfer) prints it: `UDP, length N`."""
    if "TFTP, length" in mine and "UDP, length" in theirs:
        return TFTP_TRANSFER.sub(r"UDP, length \1", mine)
    return mine


def compare(frames, tmp_path, verbose: int = 0, hexdump: bool = False) -> tuple[int, int]:
    """Decode `frames` and run tcpdump on them; assert every line is tcpdump's (a TFTP
    transfer's as tcpdump words it); returns (frames, TFTP lines normalised)."""
    path = tmp_path / f"frames-{verbose}-{hexdump}.pcap"
    write_pcap(path, frames)
    theirs = tcpdump(path, *FLAGS[verbose], *(("-XX",) if hexdump else ()))
    mine = ours(frames, verbose, hexdump)
    assert len(theirs) == len(mine)
    normalised = 0
    for k, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        a2 = tftp_as_udp(a, b)
        normalised += a2 != a
        assert a2.rstrip() == b.rstrip(), f"frame {k}: {frames[k][0].hex()}"
    return len(frames), normalised


@needs_tcpdump
@pytest.mark.parametrize("verbose", [0, 1, 2, 3])
def test_catalogue_is_tcpdumps(tmp_path, verbose):
    frames = [(f, len(f)) for f in catalogue()]
    n, _ = compare(frames, tmp_path, verbose)
    assert n >= 110


@needs_tcpdump
def test_catalogue_hex_dump_is_tcpdumps(tmp_path):
    frames = [(f, len(f)) for f in catalogue()]
    compare(frames, tmp_path, 0, hexdump=True)


@needs_tcpdump
@pytest.mark.parametrize("verbose", [0, 1, 2, 3])
def test_a_real_guest_session_is_tcpdumps(tmp_path, verbose):
    frames = read_pcap(SESSION)
    n, tftp = compare(frames, tmp_path, verbose)
    assert n >= 100 and tftp >= 5  # (the transfers: tcpdump says UDP, we say TFTP)
    text = "\n".join(ours(frames))
    for seen in ("BOOTP/DHCP, Request from 52:54:00:12:34:56", "ICMP echo request, id",
                 "ICMP6, echo reply", "HTTP: GET /bytes/20000 HTTP/1.1", "NXDomain",
                 "AAAA? gateway.vhostnet.", "frag (0|1448)", "router advertisement",
                 "TFTP, length 516, DATA block 1", 'RRQ "hello.txt" octet tsize 0',
                 "Flags [S.]", "options [mss 1460,sackOK,TS val"):
        assert seen in text


@needs_tcpdump
@pytest.mark.parametrize("verbose", [0, 1])
def test_truncated_captures_are_tcpdumps(tmp_path, verbose):
    """Every frame of the catalogue and the session cut at many capture lengths (the
    length on the wire kept, as a snaplen leaves it): `[|proto]` where tcpdump puts it."""
    rng = random.Random(19)
    frames = []
    for f in catalogue() + [d for d, _ in read_pcap(SESSION)][:60]:
        cuts = {14, 15, 18, 20, 30, 34, 38, 42, 46, 54, 58, 62, 66, 74, 80}
        cuts |= {rng.randrange(1, len(f) + 1) for _ in range(4)}
        frames += [(f[:c], len(f)) for c in sorted(cuts) if c < len(f)]
    n, _ = compare(frames, tmp_path, verbose)
    assert n > 1000


# -- random mutations: equal to tcpdump up to where it prints what we do not decode ------------
FALLBACKS = ("UDP, ", "ip-proto-", "\n\t0x0000:", "802.3", "TFTP, length")


def explained(mine: str, theirs: str) -> bool:
    """Whether our line differs from tcpdump's only where the decoder documents it: a
    TFTP transfer, or the point where tcpdump goes into a printer we do not have (there
    we print a fallback: `UDP, length N`, `ip-proto-N`, a hex dump, or nothing more)."""
    mine = tftp_as_udp(mine, theirs).rstrip()
    theirs = theirs.rstrip()
    if mine == theirs:
        return True
    k = len(os.path.commonprefix([mine, theirs]))
    rest = mine[k:].lstrip(" ")
    if not rest or any(rest.startswith(f) for f in FALLBACKS):
        return True
    if mine[:k].rstrip().endswith(("mptcp", "igmp dvmrp", "igmp pimv1")):  # (bodies: not
        return True                                                  # decoded)
    # SCTP and DCCP: tcpdump prints their ports with the addresses; the ICMPv6 messages
    # whose bodies we do not decode
    return bool(re.search(r"sctp|dccp|DCCP|ICMP6, (RPL|who-are-you|router renumbering|"
                          r"ha discovery reply|mobile router advertisement)", theirs))


@needs_tcpdump
@pytest.mark.parametrize("verbose", [0, 1, 3])
def test_mutated_frames_match_tcpdump_where_decoded(tmp_path, verbose):
    rng = random.Random(1000 + verbose)
    base = catalogue() + [d for d, _ in read_pcap(SESSION) if len(d) < 2000]
    frames = []
    for _ in range(2500):
        data = bytearray(rng.choice(base))
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(12, min(len(data), 140))
            if rng.random() < 0.5:
                data[i] = rng.randrange(256)
            else:
                data[i] ^= 1 << rng.randrange(8)
        wire = len(data)
        if rng.random() < 0.3:
            data = data[:rng.randrange(1, len(data) + 1)]
        frames.append((bytes(data), wire if rng.random() < 0.5 else len(data)))
    path = tmp_path / "mutated.pcap"
    write_pcap(path, frames)
    theirs = tcpdump(path, *FLAGS[verbose])
    mine = ours(frames, verbose)
    assert len(theirs) == len(mine)
    exact = sum(a.rstrip() == b.rstrip() for a, b in zip(mine, theirs, strict=True))
    bad = [(k, a, b) for k, (a, b) in enumerate(zip(mine, theirs, strict=True))
           if not explained(a, b)]
    assert not bad, "\n".join(f"{frames[k][0].hex()}\n ours: {a!r}\n tcpdump: {b!r}"
                              for k, a, b in bad[:5])
    assert exact > 0.9 * len(frames)


# -- what tcpdump does not do the same way, on purpose -------------------------------------------
def test_tftp_transfers_are_followed_on_their_session_port():
    dec = Decoder()
    e, r = Ether(src=G, dst=S) / IP(src=GIP, dst=SIP), Ether(src=S, dst=G) / IP(src=SIP, dst=GIP)
    rrq = bytes(e / UDP(sport=40001, dport=69) / TFTP() / TFTP_RRQ(filename="f", mode="octet"))
    data = bytes(r / UDP(sport=50000, dport=40001) / TFTP() / TFTP_DATA(block=1)
                 / Raw(b"z" * 512))
    ack = bytes(e / UDP(sport=40001, dport=50000) / TFTP() / TFTP_ACK(block=1))
    oack = bytes(r / UDP(sport=50000, dport=40001) / TFTP() / TFTP_OACK()
                 / TFTP_Options(options=[TFTP_Option(oname="tsize", value="1234")]))
    other = bytes(e / UDP(sport=40009, dport=50000) / TFTP() / TFTP_ACK(block=1))
    assert dec.decode(data).endswith("UDP, length 516")  # no RRQ seen from that client yet
    assert dec.decode(rrq).endswith('TFTP, length 10, RRQ "f" octet')
    assert dec.decode(data).endswith("TFTP, length 516, DATA block 1")
    assert dec.decode(ack).endswith("TFTP, length 4, ACK block 1")
    assert dec.decode(oack).endswith("TFTP, length 13, OACK tsize 1234")
    assert dec.decode(other).endswith("UDP, length 4")


def test_tcp_sequence_numbers_are_relative_per_connection_as_tcpdumps():
    e = Ether(src=G, dst=S) / IP(src=GIP, dst=SIP)
    r = Ether(src=S, dst=G) / IP(src=SIP, dst=GIP)
    syn = bytes(e / TCP(sport=40000, dport=80, flags="S", seq=1000))
    synack = bytes(r / TCP(sport=80, dport=40000, flags="SA", seq=5000, ack=1001))
    data = bytes(e / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=5001) / Raw(b"x" * 10))
    dec = Decoder()
    lines = [dec.decode(f) for f in (syn, synack, data)]
    assert "seq 1000," in lines[0] and "seq 5000, ack 1001," in lines[1]
    assert "seq 1:11, ack 1," in lines[2]
    # a one-off line (and a Decoder made with relative=False) keeps them absolute, as -S
    assert "seq 1001:1011, ack 5001," in decode(data)


def test_lru_forgets_the_oldest():
    lru = Lru(3)
    for k in range(5):
        lru.put(k, k)
    assert len(lru) == 3 and 0 not in lru and 1 not in lru and lru.get(4) == 4
    lru.put(2, "again")  # (refreshed: now the newest)
    lru.put(5, 5)
    assert 3 not in lru and lru.get(2) == "again"


def test_deep_nesting_stops_instead_of_recursing():
    frame = b"x"
    for _ in range(2000):
        frame = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(frame), 1, 0, 64, 4, 0,
                            bytes(4), bytes(4)) + frame
    line = decode(bytes(12) + b"\x08\x00" + frame, verbose=1)
    assert line.endswith(" [|ip]") and line.count("0.0.0.0 > 0.0.0.0: ") == 16


def test_vnet_summary():
    assert vnet_summary(bytes(10)) == "vnet [flags none, gso_type NONE]"
    assert vnet_summary(struct.pack("<BBHHHH", 1, 1, 66, 1448, 34, 16)) == (
        "vnet [flags NEEDS_CSUM, gso_type TCPV4, hdr_len 66, gso_size 1448, csum_start 34, "
        "csum_offset 16]")
    assert vnet_summary(struct.pack("<BBHHHH", 2, 0x84, 74, 1428, 0, 0)) == (
        "vnet [flags DATA_VALID, gso_type TCPV6|ECN, hdr_len 74, gso_size 1428]")
    assert vnet_summary(struct.pack("<BBHHHH", 0x11, 3, 0, 0, 34, 6)) == (
        "vnet [flags NEEDS_CSUM|0x10, gso_type UDP, hdr_len 0, gso_size 0, csum_start 34, "
        "csum_offset 6]")
    assert vnet_summary(b"\x01") == "vnet [flags NEEDS_CSUM, gso_type NONE, csum_start 0, " \
                                    "csum_offset 0]"


def test_ipv6_addresses_as_tcpdump_writes_them():
    for text, want in (("::", "::"), ("::1", "::1"), ("fe80::1:0:0:1", "fe80::1:0:0:1"),
                       ("1:0:0:2:0:0:0:3", "1:0:0:2::3"), ("::ffff:10.0.2.15", "::ffff:10.0.2.15"),
                       ("::10.0.2.15", "::10.0.2.15"), ("1::", "1::"),
                       ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1")):
        import ipaddress

        assert ip6_str(ipaddress.IPv6Address(text).packed) == want


def test_hex_ascii_is_tcpdumps_layout():
    assert hex_ascii(b"Hello, World!\n") == (
        "\n\t0x0000:  4865 6c6c 6f2c 2057 6f72 6c64 210a       Hello,.World!.")


# -- nothing raises ------------------------------------------------------------------------------
DECODERS = [Decoder(v, h) for v in (0, 1, 2, 3) for h in (False, True)]
BASE = catalogue()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(0, 7), st.integers(0, 100))
def test_any_bytes_decode_without_raising(data, which, extra):
    text = DECODERS[which].decode(data, len(data) + extra)
    assert isinstance(text, str)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(BASE), st.data(), st.integers(0, 7))
def test_damaged_and_cut_frames_decode_without_raising(frame, data, which):
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    text = DECODERS[which].decode(bytes(buf[:cut]), len(buf))
    assert isinstance(text, str)
