"""pcap-filter expressions (apps/capture/bpf.py) against tcpdump, a tool we did not write:
for a varied recorded session and the expressions of tcpdump's and pcap-filter's manual
pages, the frames `Filter` selects are exactly the ones `tcpdump -r FILE -w OUT EXPR`
keeps (compared by timestamp, so by count and order), one by one and in C batches
(`Selector`); a bad expression fails with tcpdump's own message. Then the shared frame
hook (apps/capture/hooks.py) and `serve --pcap-filter`."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.utils import rdpcap, wrpcap

from apps.capture import hooks
from apps.capture.bpf import Filter, Selector

TCPDUMP = shutil.which("tcpdump")
needs_tcpdump = pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed")

GUEST, US, DNS_IP = "10.0.2.15", "10.0.2.2", "10.0.2.3"
GMAC, SMAC = "52:54:00:12:34:56", "52:55:0a:00:02:02"
G6, S6 = "fd00:10:0:2::15", "fd00:10:0:2::2"
GLL, SLL = "fe80::5054:ff:fe12:3456", "fe80::5055:aff:fe00:202"
TCP_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
            ("WScale", 7)]


def session() -> list:
    """A guest's session as our NIC sees it, both ways: ARP, DHCP, DNS over UDP (to us
    and past us), ICMP and ICMPv6 echo, NDP, TCP with options through its handshake,
    data, FIN and RST, UDP, IPv4 and IPv6 fragments, an 802.1Q-tagged frame, broadcast
    and multicast, a foreign network."""
    g, s = Ether(src=GMAC, dst=SMAC), Ether(src=SMAC, dst=GMAC)
    bcast = Ether(src=GMAC, dst="ff:ff:ff:ff:ff:ff")
    out = [
        bcast / ARP(op=1, hwsrc=GMAC, psrc=GUEST, pdst=US),
        s / ARP(op=2, hwsrc=SMAC, psrc=US, hwdst=GMAC, pdst=GUEST),
        bcast / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
        / BOOTP(chaddr=bytes.fromhex("525400123456")) / DHCP(options=[("message-type",
                                                                         "discover"), "end"]),
        s / IP(src=US, dst=GUEST) / UDP(sport=67, dport=68)
        / BOOTP(op=2, yiaddr=GUEST) / DHCP(options=[("message-type", "offer"), "end"]),
        g / IP(src=GUEST, dst=DNS_IP) / UDP(sport=40001, dport=53)
        / DNS(id=1, qd=DNSQR(qname="example.com")),
        s / IP(src=DNS_IP, dst=GUEST) / UDP(sport=53, dport=40001)
        / DNS(id=1, qr=1, qd=DNSQR(qname="example.com"),
              an=DNSRR(rrname="example.com", rdata="93.184.216.34")),
        g / IP(src=GUEST, dst="8.8.8.8") / UDP(sport=40002, dport=53)
        / DNS(id=2, qd=DNSQR(qname="debian.org")),
        g / IP(src=GUEST, dst=US) / ICMP(type=8, id=1, seq=1) / (b"p" * 56),
        s / IP(src=US, dst=GUEST) / ICMP(type=0, id=1, seq=1) / (b"p" * 56),
        g / IP(src=GUEST, dst="1.1.1.1", ttl=32) / ICMP(type=8, id=2, seq=1),
        s / IP(src=US, dst=GUEST) / ICMP(type=3, code=3) / IP(src=GUEST, dst=US)
        / UDP(sport=40003, dport=9999),
        Ether(src=GMAC, dst="33:33:ff:00:00:02") / IPv6(src=GLL, dst="ff02::1:ff00:2", hlim=255)
        / ICMPv6ND_NS(tgt=S6) / ICMPv6NDOptSrcLLAddr(lladdr=GMAC),
        s / IPv6(src=S6, dst=GLL, hlim=255) / ICMPv6ND_NA(tgt=S6, R=1, S=1),
        Ether(src=GMAC, dst="33:33:00:00:00:02") / IPv6(src=GLL, dst="ff02::2", hlim=255)
        / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GMAC),
        Ether(src=SMAC, dst="33:33:00:00:00:01") / IPv6(src=SLL, dst="ff02::1", hlim=255)
        / ICMPv6ND_RA() / ICMPv6NDOptPrefixInfo(prefix="fd00:10:0:2::", prefixlen=64),
        g / IPv6(src=G6, dst=S6) / ICMPv6EchoRequest(id=3, seq=1, data=b"q" * 40),
        s / IPv6(src=S6, dst=G6) / ICMPv6EchoReply(id=3, seq=1, data=b"q" * 40),
        g / IP(src=GUEST, dst=US) / TCP(sport=40100, dport=80, flags="S", seq=100,
                                        options=TCP_OPTS),
        s / IP(src=US, dst=GUEST) / TCP(sport=80, dport=40100, flags="SA", seq=500, ack=101,
                                        options=TCP_OPTS),
        g / IP(src=GUEST, dst=US) / TCP(sport=40100, dport=80, flags="A", seq=101, ack=501),
        g / IP(src=GUEST, dst=US) / TCP(sport=40100, dport=80, flags="PA", seq=101, ack=501)
        / b"GET / HTTP/1.1\r\nHost: 10.0.2.2\r\n\r\n",
        s / IP(src=US, dst=GUEST) / TCP(sport=80, dport=40100, flags="PA", seq=501, ack=135)
        / (b"x" * 1400),
        g / IP(src=GUEST, dst=US) / TCP(sport=40100, dport=80, flags="A", seq=135, ack=1901),
        g / IP(src=GUEST, dst=US) / TCP(sport=40100, dport=80, flags="FA", seq=135, ack=1901),
        s / IP(src=US, dst=GUEST) / TCP(sport=80, dport=40100, flags="FA", seq=1901, ack=136),
        g / IP(src=GUEST, dst="192.168.1.20") / TCP(sport=40200, dport=5432, flags="S",
                                                    options=TCP_OPTS),
        Ether(src="02:00:00:00:00:09", dst=GMAC) / IP(src="192.168.1.20", dst=GUEST)
        / TCP(sport=5432, dport=40200, flags="R"),
        g / IPv6(src=G6, dst="2001:db8::1") / TCP(sport=40300, dport=443, flags="S",
                                                  options=TCP_OPTS),
        g / IP(src=GUEST, dst=US) / UDP(sport=40400, dport=5555) / b"hello",
        g / IP(src=GUEST, dst=US) / UDP(sport=40401, dport=7) / (b"e" * 900),
        Ether(src=GMAC, dst=SMAC) / Dot1Q(vlan=100) / IP(src=GUEST, dst=US)
        / ICMP(type=8, id=4, seq=1),
        Ether(src=GMAC, dst=SMAC) / Dot1Q(vlan=200) / IPv6(src=G6, dst=S6)
        / UDP(sport=40500, dport=53) / DNS(id=3, qd=DNSQR(qname="v.example")),
        Ether(src=GMAC, dst="01:00:5e:00:00:fb") / IP(src=GUEST, dst="224.0.0.251")
        / UDP(sport=5353, dport=5353) / DNS(qd=DNSQR(qname="_http._tcp.local")),
    ]
    # IPv4 fragments of a 3000-byte datagram, and IPv6 ones (a fragment header)
    out += [g / f for f in fragment(IP(src=GUEST, dst=US, id=77) / UDP(sport=40600, dport=5555)
                                    / (b"f" * 3000), fragsize=1400)]
    out += [g / f for f in fragment6(IPv6(src=G6, dst=S6) / IPv6ExtHdrFragment(id=78)
                                     / UDP(sport=40601, dport=5555) / (b"g" * 3000), 1280)]
    frames = [Ether(bytes(p)) for p in out]
    for i, p in enumerate(frames):
        p.time = 1_700_000_000 + i / 100
    return frames


# From tcpdump(1) and pcap-filter(7): primitives, qualifiers, and the examples of both.
EXPRESSIONS = [
    "arp", "ip", "ip6", "tcp", "udp", "icmp", "icmp6", "vlan", "vlan 100",
    "host 10.0.2.2", "src host 10.0.2.15", "dst host 10.0.2.3", "host fd00:10:0:2::2",
    "ip6 host fe80::5054:ff:fe12:3456", "net 10.0.2.0/24", "net 192.168.1.0 mask 255.255.255.0",
    "ip6 net fd00:10:0:2::/64", "dst net 224.0.0.0/4", "port 53", "src port 53",
    "udp port 53 and not host 10.0.2.3", "portrange 5000-6000", "tcp dst portrange 1-1023",
    "tcp port 80 or icmp6", "(tcp or udp) and not port 53", "not (arp or icmp or icmp6)",
    "host 10.0.2.15 and (10.0.2.2 or 10.0.2.3)", "ip and not net 10.0.2.0/24",
    "tcp[tcpflags] & tcp-syn != 0", "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0",
    "tcp[tcpflags] & tcp-rst != 0", "tcp[13] & 2 != 0",
    "tcp port 80 and (((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) != 0)",
    "ip[8] < 64", "ip[6:2] & 0x1fff != 0", "ip[6:2] & 0x3fff != 0",
    "icmp[icmptype] != icmp-echo and icmp[icmptype] != icmp-echoreply",
    "icmp6[icmp6type] == icmp6-neighborsolicit", "ip6 protochain 44", "ip6 protochain 17",
    "greater 1000", "less 100", "len > 1400", "ether host 52:54:00:12:34:56",
    "ether src 52:55:0a:00:02:02 and ip", "ether broadcast", "ether multicast",
    "ip multicast", "ether[0] & 1 = 0 and ip[16] >= 224", "ether proto 0x0806",
    "dst port 67 or dst port 68", "udp and udp[8:2] = 1", "vlan and ip6",
    "ip proto \\udp", "tcp and port 5432",
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    frames = session()
    path = tmp_path_factory.mktemp("pcap") / "session.pcap"
    wrpcap(str(path), frames)
    return path, frames


def tcpdump_keeps(path, expr: str, tmp_path) -> list[float]:
    """The timestamps of the frames `tcpdump -r path -w out expr` writes out."""
    out = tmp_path / "out.pcap"
    r = subprocess.run([TCPDUMP, "-n", "-r", str(path), "-w", str(out), expr],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [float(p.time) for p in rdpcap(str(out))]


@needs_tcpdump
@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_filter_selects_what_tcpdump_selects(recorded, expr, tmp_path):
    path, frames = recorded
    flt = Filter.compile(expr)
    ours = [float(p.time) for p in frames if flt.matches(bytes(p))]
    theirs = tcpdump_keeps(path, expr, tmp_path)
    assert ours == theirs
    # the same in C over the batch, and over views of one buffer (no copy)
    assert Selector([flt]).select([bytes(p) for p in frames]) == [
        float(p.time) in theirs for p in frames]
    buf = bytearray(b"".join(bytes(p) for p in frames))
    views, o = [], 0
    for p in frames:
        views.append(memoryview(buf)[o:o + len(p)])
        o += len(p)
    assert [float(p.time) for p, v in zip(frames, views, strict=True)
            if flt.matches(v)] == theirs


@needs_tcpdump
def test_the_expressions_select_something_and_not_everything(recorded, tmp_path):
    """The comparison means something: the session and the list are varied enough that
    nearly every expression keeps some frames and drops others."""
    path, frames = recorded
    both = sum(0 < len(tcpdump_keeps(path, e, tmp_path)) < len(frames) for e in EXPRESSIONS)
    assert len(EXPRESSIONS) >= 50 and both >= len(EXPRESSIONS) - 2


BAD = ["tcp port", "port eighty", "host 10.0.2.300", "frobnicate", "vlan 5000",
       "tcp[tcpflags] & tcp-syn !=", "ether host 52:54:00:12:34",
       "net 10.0.2.1/24", "portrange 80-", "(tcp or udp", "ip6 host 10.0.2.2", "len >"]


@needs_tcpdump
@pytest.mark.parametrize("expr", BAD)
def test_a_bad_expression_gets_libpcaps_message(recorded, expr):
    with pytest.raises(ValueError) as e:
        Filter.compile(expr)
    r = subprocess.run([TCPDUMP, "-n", "-r", str(recorded[0]), expr],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == f"tcpdump: {e.value}"


def test_ip_broadcast_needs_a_netmask():
    """The one place we part from `tcpdump -r`: it compiles with netmask 0 (so `ip
    broadcast` means 0.0.0.0 or 255.255.255.255); we say we know no netmask, as libpcap
    does for a capture without one, rather than miss 10.0.2.255 without a word."""
    with pytest.raises(ValueError) as e:
        Filter.compile("ip broadcast")
    assert str(e.value) == "netmask not known, so 'ip broadcast' not supported"


def test_the_empty_expression_matches_everything_without_a_program():
    for expr in ("", "   ", None):
        f = Filter.compile(expr)
        assert f.everything and f.instructions == 0
        assert f.matches(b"") and f.matches(memoryview(bytearray(3))) and f(b"x")
    assert not Filter.compile("ip").everything and Filter.compile("ip").instructions > 1
    with pytest.raises(ValueError, match="need filters that are not empty|not empty"):
        Selector([Filter.compile("")])


def test_matches_outlives_its_filter():
    """A bound `matches` (what FaultInjector keeps) owns the program."""
    import gc

    m = Filter.compile("arp").matches
    gc.collect()
    frame = bytes(session()[0])
    assert m(frame) and not m(frame[:12] + b"\x08\x00" + frame[14:])


def test_short_frames_do_not_match_what_they_cannot_hold():
    f = Filter.compile("tcp port 80")
    whole = bytes(session()[17])  # the SYN to port 80
    assert f.matches(whole)
    assert [f.matches(whole[:n]) for n in (0, 14, 20, 34, 36)] == [False] * 5


def test_selector_is_the_union_of_its_filters():
    frames = [bytes(p) for p in session()]
    arp, icmp6 = Filter.compile("arp"), Filter.compile("icmp6")
    assert Selector([arp, icmp6]).select(frames) == [arp(f) or icmp6(f) for f in frames]
    assert Selector([arp]).select([]) == []


# -- the shared frame hook -------------------------------------------------------------
class FakeDevice:
    """A device as hooks.install sees it: set_frame_hook(hook, select)."""

    def __init__(self) -> None:
        self.on_frame = self.select = None

    def set_frame_hook(self, hook, select=None) -> None:
        self.on_frame, self.select = hook, select


def test_hooks_give_each_consumer_its_frames_and_the_union_as_select():
    frames = [bytes(p) for p in session()]
    dev = FakeDevice()
    seen: dict[str, list] = {"arp": [], "tcp": [], "all": []}
    arp, tcp = Filter.compile("arp"), Filter.compile("tcp")
    consumers = [(lambda d, f: seen["arp"].append(bytes(f)), arp),
                 (lambda d, f: seen["tcp"].append(bytes(f)), tcp)]
    hooks.install(dev, consumers)
    assert isinstance(dev.select, Selector) and dev.select.filters == (arp, tcp)
    for f in frames:
        dev.on_frame("guest-tx", memoryview(f))
    assert seen["arp"] == [f for f in frames if arp(f)] and len(seen["arp"]) == 2
    assert seen["tcp"] == [f for f in frames if tcp(f)]
    # a consumer without a filter wants everything: no select
    hooks.install(dev, [*consumers, (lambda d, f: seen["all"].append(f), None)])
    assert dev.select is None
    dev.on_frame("guest-rx", frames[0])
    assert seen["all"] == [frames[0]]
    hooks.install(dev, [])
    assert dev.on_frame is None and dev.select is None


def test_serve_pcap_filter_writes_only_matching_frames(tmp_path):
    """make_server(pcap=..., pcap_filter="icmp or arp") with our front-end as the guest:
    the file holds the ARP and ICMP frames both ways and nothing else, and tcpdump
    reads it. A bad expression fails before anything starts, with libpcap's words."""
    import threading
    import time

    from apps.serve import make_server
    from tests.vhostuser.conftest import make_frontend

    pcap = tmp_path / "f.pcap"
    sock = str(tmp_path / "v.sock")
    with pytest.raises(ValueError, match="^can't parse filter expression: syntax error$"):
        make_server(socket_path=sock, pcap=str(pcap), pcap_filter="icmp or", start_apps=False)
    assert not pcap.exists() and not (tmp_path / "v.sock").exists()
    server, stack, app = make_server(socket_path=sock, pcap=str(pcap),
                                     pcap_filter="icmp or arp", start_apps=False)
    everything: list[bytes] = []  # what crossed the virtqueues, from an unfiltered hook
    app.add_frame_hook(lambda d, f: everything.append(bytes(f)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        fe = make_frontend(sock)
        fe.post_rx_buffers(32)
        sent = session()
        for p in (sent[0], sent[7], sent[17], sent[28]):  # ARP, ping, SYN, UDP
            fe.send_frame(bytes(p))
        deadline = time.monotonic() + 5

        def unreachable_seen() -> bool:  # the datagram's answer comes last, through NAT
            return any(Ether(f).haslayer(ICMP) and Ether(f)[ICMP].type == 3
                       for f in list(everything))

        while not unreachable_seen() and time.monotonic() < deadline:
            fe.recv_frames(timeout=0.1)
        fe.close()
    finally:
        server.stop()
        t.join(5)
        server.close()
        app.pcap.close()
    kept = [bytes(p) for p in rdpcap(str(pcap))]
    flt = Filter.compile("icmp or arp")
    assert kept == [f for f in everything if flt(f)]
    kinds = {(p.haslayer(ARP) and f"arp {p[ARP].op}") or f"icmp {p[ICMP].type}"
             for p in map(Ether, kept)}
    assert kinds == {"arp 1", "arp 2", "icmp 0", "icmp 3", "icmp 8"}, kinds
    assert len(everything) > len(kept)  # the SYN, its RST, the datagram were left out
    if TCPDUMP is not None:
        r = subprocess.run([TCPDUMP, "-n", "-r", str(pcap), "not (icmp or arp)"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout == "", r.stdout


def test_serve_pcap_filter_needs_pcap_and_a_good_expression(tmp_path):
    import os
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = [sys.executable, "-m", "apps.cli", "serve", "--socket-path",
           str(tmp_path / "v.sock")]
    r = subprocess.run([*run, "--pcap-filter", "icmp"], capture_output=True, text=True,
                       timeout=30, cwd=repo)
    assert r.returncode == 2 and "--pcap-filter needs --pcap" in r.stderr
    r = subprocess.run([*run, "--pcap", str(tmp_path / "x.pcap"), "--pcap-filter",
                        "tcp port"], capture_output=True, text=True, timeout=30, cwd=repo)
    assert r.returncode == 2
    assert r.stderr == ("vhostnet: bad --pcap-filter 'tcp port': can't parse filter "
                        "expression: syntax error\n")
    assert not (tmp_path / "x.pcap").exists() and not (tmp_path / "v.sock").exists()


def test_the_docstring_examples_run():
    import doctest

    import apps.capture.bpf
    import apps.capture.hooks

    for mod in (apps.capture.bpf, apps.capture.hooks):
        result = doctest.testmod(mod)
        assert result.attempted and not result.failed, mod.__name__


def test_bench_ring_with_a_capture_attached():
    """`bench ring --capture-filter`: a control-socket capture on the benchmark's backend
    gets every frame its filter accepts (64 zero bytes: `ether[20] = 0`) and none of
    those it drops, and the guest's frames all reach the sink either way."""
    from apps.bench import ring_guest_to_backend

    every = ring_guest_to_backend(64, 0.5, capture_filter="ether[20] = 0", rate=20000)
    assert every.frames > 5000 and every.captured == every.frames
    none = ring_guest_to_backend(64, 0.5, capture_filter="ether host 00:00:00:00:00:01",
                                 rate=20000)
    assert none.frames > 5000 and none.captured == 0
