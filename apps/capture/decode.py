"""Frames as tcpdump prints them: the lines of `vhostnet capture`.

`Decoder(verbose, hexdump).decode(frame, length)` returns what `tcpdump -n -e` (tcpdump
4.99) prints for an Ethernet frame after its timestamp: the MAC addresses and EtherType,
then each layer in tcpdump's words. `verbose` is tcpdump's -v count and `hexdump` its
-XX (the whole frame in hex and ASCII below the line). A Decoder keeps what tcpdump keeps
between packets: the first sequence numbers of each TCP connection (its sequence and
acknowledgement numbers are printed relative to them, as tcpdump does without -S), and
the TFTP clients seen asking port 69 (see below). `decode(frame)` is the one-off form.

>>> frame = bytes.fromhex(
...     "52550a00020252540012345608004500005400014000400122980a00020f0a000202"
...     "0800f7fc00010002") + bytes(56)
>>> decode(frame)
'52:54:00:12:34:56 > 52:55:0a:00:02:02, ethertype IPv4 (0x0800), length 98: \
10.0.2.15 > 10.0.2.2: ICMP echo request, id 1, seq 2, length 64'
>>> print(decode(frame, verbose=1))
52:54:00:12:34:56 > 52:55:0a:00:02:02, ethertype IPv4 (0x0800), length 98: (tos 0x0, \
ttl 64, id 1, offset 0, flags [DF], proto ICMP (1), length 84)
    10.0.2.15 > 10.0.2.2: ICMP echo request, id 1, seq 2, length 64
>>> decode(frame[:40], len(frame))  # only 40 bytes captured: where they end, [|proto]
'52:54:00:12:34:56 > 52:55:0a:00:02:02, ethertype IPv4 (0x0800), length 98: \
10.0.2.15 > 10.0.2.2:  [|icmp]'

What is decoded, in tcpdump's words (the printers are ports of tcpdump's print-*.c,
including its spacing and its oddities): Ethernet and 802.1Q/802.1ad tags; ARP, RARP and
ATM/Frame Relay ARP; IPv4 with its options and fragments (-v: tos, ttl, id, offset,
flags, proto, length, a bad header checksum); IPv6 with hop-by-hop and destination options
and the fragment header (-v: class, flow label, hop limit, next header, payload length);
ICMP (echo, every unreachable code, redirects, time exceeded, parameter problem,
timestamps, router adverts; -v: a wrong checksum, the quoted datagram, RFC 4884 extensions
with MPLS labels); ICMPv6 (echo, errors, NDP with its options at -v, MLDv1/v2); IGMP v1-v3
and mtrace; TCP (flags, relative seq/ack, win, urg, every option, length; -v: checksum, a
RST's text; the first line of HTTP on ports 80 and 8080, -v all its lines; DNS on port
53); UDP (length, -v: checksum) with DNS (port 53, mDNS 5353: question, answers, rcode,
flags; -v answer names, -vv the question of a response and the authority and additional
sections, -vvv TTLs), BOOTP/DHCP (67/68; -v the header fields and every option with
tcpdump's names, the message type among them), TFTP (69), NTP (123; -v its header fields)
and DHCPv6 (546/547). A frame that runs out of bytes ends with ` [|proto]` where tcpdump
puts it (so one cut short of its Ethernet header is ` [|ether]`, leading space included);
a malformed one is printed as tcpdump prints it. Nothing raises.

Where the lines differ from tcpdump's (tests/test_capture_decode.py compares the rest,
frame by frame, with tcpdump -r on the same pcap):

- TFTP transfers: tcpdump decodes only packets to or from port 69; a transfer runs on
  the server's session port, so tcpdump prints its DATA and ACK as `UDP, length N`. A
  Decoder remembers each client that sent a RRQ/WRQ and prints its datagrams to and from
  unprivileged ports (both >= 1024) as `TFTP, length 516, DATA block 1` (same length).
- Not decoded: what tcpdump has printers for and a VM's link rarely carries. We print
  what tcpdump prints for a payload it cannot decode at that point (`UDP, length N`,
  ` ip-proto-N LEN`, a hex dump after an unknown EtherType, nothing more after a TCP
  segment's length): LLDP, LLC/SNAP behind an 802.3 length, MPLS, PPPoE, EAPOL, SCTP,
  DCCP, GRE, ESP/AH, OSPF, PIM, VRRP, IPv6 routing headers, MPTCP's option subtypes,
  IGMP's DVMRP and PIMv1 bodies, the bodies of ICMPv6 node information, router
  renumbering, home agent and RPL messages, UDP services other than the ones above
  (Kerberos, SNMP, syslog, RIP, NetBIOS, VXLAN, ...; when a port of one of them is at
  either end, as tcpdump's dispatch would pick it first) and TCP ones other than HTTP and
  DNS (SSH, SMTP, FTP, BGP, telnet, ...).
- -v stops short of tcpdump's for DHCPv6: the transaction id, not the options.
- Tunnels in tunnels (and ICMP errors quoting ICMP errors) are printed 16 deep; a 17th IP
  header ends the line with ` [|ip]` (tcpdump would go on: Python's stack would not).

`vnet_summary(header)` words the virtio_net_hdr a frame crossed the rings with
(`vhostnet capture --vnet`): `vnet [flags NEEDS_CSUM, gso_type TCPV4, hdr_len 66,
gso_size 1448, csum_start 34, csum_offset 16]`; hdr_len and gso_size are shown with a
GSO type, csum_start and csum_offset with NEEDS_CSUM (or whenever they are not zero).
"""

from __future__ import annotations

import struct

from apps.capture import _ip
from apps.capture._printer import Lru, Printer, Truncated, bits, hex_ascii, ip4_str

ETHERTYPES = {0x0800: "IPv4", 0x8847: "MPLS unicast", 0x8848: "MPLS multicast",
              0x86DD: "IPv6", 0x8100: "802.1Q", 0x9100: "802.1Q-9100",
              0x88A8: "802.1Q-QinQ", 0x9200: "802.1Q-9200", 0x88E5: "802.1AE MACsec",
              0x0200: "PUP", 0x0806: "ARP", 0x8035: "Reverse ARP", 0x0600: "NS",
              0x0500: "Sprite", 0x1000: "Trail", 0x6001: "MOP DL", 0x6002: "MOP RC",
              0x6003: "DN", 0x6004: "LAT", 0x6007: "SCA", 0x6558: "TEB",
              0x8038: "Lanbridge", 0x803C: "DEC DNS", 0x803E: "DEC DTS", 0x805B: "VEXP",
              0x805C: "VPROD", 0x809B: "Appletalk", 0x80F3: "Appletalk ARP",
              0x8137: "IPX", 0x880B: "PPP", 0x8808: "MPCP", 0x8809: "Slow Protocols",
              0x8863: "PPPoE D", 0x8864: "PPPoE S", 0x888E: "EAPOL",
              0x8899: "Realtek protocols", 0x886F: "MS NLB heartbeat", 0x8870: "Jumbo",
              0x894F: "NSH", 0x9000: "Loopback", 0xFEFE: "OSI", 0x00FE: "GRE-OSI",
              0xABCD: "CFM (old)", 0x8902: "CFM", 0x893A: "IEEE1905.1", 0x88CC: "LLDP",
              0x88CA: "TIPC", 0x0707: "GeoNet (old)", 0x8947: "GeoNet",
              0x1111: "CALM FAST", 0x88A2: "AoE", 0x88F7: "PTP",
              0xD28B: "Arista Vendor Specific Protocol"}
_VLAN_TYPES = (0x8100, 0x9100, 0x9200, 0x88A8)
_ARP_HW = {1: "Ethernet", 6: "TokenRing", 7: "ArcNet", 15: "FrameRelay", 23: "Strip",
           24: "IEEE 1394", 19: "ATM", 32: "InfiniBand"}
_ARP_OPS = {1: "Request", 2: "Reply", 3: "Reverse Request", 4: "Reverse Reply",
            8: "Inverse Request", 9: "Inverse Reply", 10: "NACK Reply"}
VNET_FLAGS = ((1, "NEEDS_CSUM"), (2, "DATA_VALID"), (4, "RSC_INFO"))
VNET_GSO = {0: "NONE", 1: "TCPV4", 3: "UDP", 4: "TCPV6", 5: "UDP_L4"}
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset


class Decoder:
    """tcpdump's lines for the frames of one capture, in order (see the module)."""

    def __init__(self, verbose: int = 0, hexdump: bool = False,
                 relative: bool = True) -> None:
        self.verbose = verbose
        self.hexdump = hexdump
        # (tcpdump's tcp_seq_hash: the first seq/ack of each connection; None with -S)
        self.tcp_seq: Lru | None = Lru() if relative else None
        self.tftp_clients = Lru(1024)  # (address, port) of clients that sent RRQ/WRQ

    def decode(self, frame: bytes | bytearray | memoryview, length: int | None = None
               ) -> str:
        """The text tcpdump prints for `frame` after the timestamp (its -v and -XX lines
        included, joined by newlines). `length` is the frame's length on the wire when
        only its first bytes were captured."""
        buf = bytes(frame)
        wire = len(buf) if length is None else max(length, len(buf))
        if not buf:
            return "[Invalid header: caplen==0" + (", len==0]" if not wire else "]")
        p = Printer(buf, self.verbose, self)
        try:
            _ether(p, wire, not self.hexdump)
        except Truncated:
            p.w(f" [|{p.proto}]")
        text = p.text()
        if self.hexdump:
            text += hex_ascii(buf)
        return text


def decode(frame: bytes | bytearray | memoryview, length: int | None = None, *,
           verbose: int = 0, hexdump: bool = False) -> str:
    """One frame's tcpdump text, out of any capture (sequence numbers absolute)."""
    return Decoder(verbose, hexdump, relative=False).decode(frame, length)


def vnet_summary(header: bytes | bytearray | memoryview) -> str:
    """The first 10 bytes of a virtio_net_hdr in words (see the module)."""
    hdr = bytes(header[:10]).ljust(10, b"\0")
    flags, gso, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack(hdr)
    names = bits(VNET_FLAGS, flags, "", "|")
    if flags & ~7:
        names += ("|" if names else "") + f"0x{flags & ~7:x}"
    parts = [f"flags {names or 'none'}",
             "gso_type " + VNET_GSO.get(gso & 0x7F, f"{gso & 0x7F}")
             + ("|ECN" if gso & 0x80 else "")]
    if gso & 0x7F or hdr_len or gso_size:
        parts += [f"hdr_len {hdr_len}", f"gso_size {gso_size}"]
    if flags & 1 or csum_start or csum_offset:
        parts += [f"csum_start {csum_start}", f"csum_offset {csum_offset}"]
    return f"vnet [{', '.join(parts)}]"


# -- Ethernet ---------------------------------------------------------------------------------
def _ethertype(t: int) -> str:
    return f"ethertype {ETHERTYPES.get(t, 'Unknown')} (0x{t:04x})"


def _ether(p: Printer, length: int, default_print: bool) -> None:
    """ether_print with -e: `src > dst, ethertype IPv4 (0x0800), length 98: ...`."""
    p.proto = "ether"
    if len(p.buf) < 14:
        raise Truncated
    orig = length
    p.w(f"{p.mac(6)} > {p.mac(0)}, ")
    off, length = 12, length - 12
    t = p.u16(off)
    off, length = off + 2, length - 2
    printed_length = False
    while t in _VLAN_TYPES:
        if p.avail(off) < 4 or length < 4:
            p.proto = "vlan"
            raise Truncated
        tci = p.u16(off)
        p.w(_ethertype(t) + (", " if printed_length else f", length {orig}: "))
        printed_length = True
        p.w(f"vlan {tci & 0xFFF}, p {tci >> 13}{', DEI' if tci & 0x1000 else ''}, ")
        t = p.u16(off + 2)
        off, length = off + 4, length - 4
    if t <= 1500:  # an 802.3 length: LLC follows (not decoded)
        if t < length:
            length = t
            p.limit(off + length)
        p.w("802.3" + ("" if printed_length else f", length {length}: "))
        if min(length, p.avail(off)) < 3:
            p.w(" [|llc]")
        if default_print:
            p.w(hex_ascii(p.buf[off:p.end]))
        return
    p.w(_ethertype(t) + (", " if printed_length else f", length {orig}: "))
    if t == 0x0800:
        _ip.ip(p, off, length)
    elif t == 0x86DD:
        _ip.ip6(p, off, length)
    elif t in (0x0806, 0x8035):
        _arp(p, off, length, default_print)
    elif default_print:
        p.w(hex_ascii(p.buf[off:p.end]))


# -- ARP ----------------------------------------------------------------------------------------
def _q922(p: Printer, off: int, n: int) -> str:
    """A Frame Relay hardware address: its DLCI (q922_string)."""
    b = p.buf
    if not p.has(off) or n < 1:
        return "<Truncated>"
    if b[off] & 1:
        return "<Invalid DLCI>"
    if not p.has(off + 1) or n < 2:
        return "<Truncated>"
    dlci = ((b[off] & 0xFC) << 2) | ((b[off + 1] & 0xF0) >> 4)
    if b[off + 1] & 1:
        return f"DLCI {dlci}"
    off, n = off + 2, n - 2
    if not p.has(off) or n < 1:
        return "<Truncated>"
    if not b[off] & 1:
        dlci = (dlci << 7) | (b[off] >> 1)
        off, n = off + 1, n - 1
    if not p.has(off) or n < 1:
        return "<Truncated>"
    if not b[off] & 1:
        return "<Invalid DLCI>"
    return f"DLCI {(dlci << 6) | (b[off] >> 2)}"


def _linkaddr(p: Printer, off: int, n: int, frelay: bool = False) -> str:
    p.need(off, n)
    if n == 0:
        return "<empty>"
    if frelay:
        return _q922(p, off, n)
    return p.buf[off:off + n].hex(":")


def _arp(p: Printer, off: int, length: int, default_print: bool) -> None:
    """ARP (arp_print): `Request who-has 10.0.2.2 tell 10.0.2.15, length 28`,
    `Reply 10.0.2.2 is-at 52:55:0a:00:02:02, length 28`."""
    p.proto = "arp"
    p.need(off, 8)
    hrd, pro = p.u16(off), p.u16(off + 2)
    if hrd == 19:
        _atmarp(p, off, length, default_print)
        return
    hln, pln, op = p.buf[off + 4], p.buf[off + 5], p.u16(off + 6)
    frelay = hrd == 15
    sha = off + 8
    spa = sha + hln
    tha = spa + pln
    tpa = tha + hln
    p.need(tpa, pln)
    ip_like = pro in (0x0800, 0x1000)

    def paddr(at: int) -> str:
        if not ip_like:
            return "<wrong proto type>"
        if pln != 4:
            return "<wrong len>"
        return ip4_str(p.take(at, 4))

    if not ip_like or pln != 4 or hln == 0 or p.v:
        p.w(f"{_ARP_HW.get(hrd, f'Unknown Hardware ({hrd})')} (len {hln}), "
            f"{ETHERTYPES.get(pro, f'Unknown Protocol (0x{pro:04x})')} (len {pln})")
        if not p.v:
            p.w(f", length {length}")
            return
    p.w(f"{', ' if p.v else ''}{_ARP_OPS.get(op, f'Unknown ({op})')} ")
    if op == 1:
        p.w(f"who-has {paddr(tpa)}")
        if any(p.take(tha, hln)):
            p.w(f" ({_linkaddr(p, tha, hln, frelay)})")
        p.w(f" tell {paddr(spa)}")
    elif op == 2:
        p.w(f"{paddr(spa)} is-at {_linkaddr(p, sha, hln, frelay)}")
    elif op in (3, 8):
        p.w(f"who-is {_linkaddr(p, tha, hln, frelay)} tell {_linkaddr(p, sha, hln, frelay)}")
    elif op == 4:
        p.w(f"{_linkaddr(p, tha, hln, frelay)} at {paddr(tpa)}")
    elif op == 9:
        p.w(f"{_linkaddr(p, sha, hln, frelay)} at {paddr(spa)}")
    else:
        if default_print:
            p.w(hex_ascii(p.buf[off:p.end]))
        return
    p.w(f", length {length}")


def _atmarp(p: Printer, off: int, length: int, default_print: bool) -> None:
    """ATM ARP (RFC 2225: atmarp_print), its own header layout."""
    p.need(off, 12)
    b = p.buf
    pro, op = p.u16(off + 2), p.u16(off + 6)
    shtl, sstl, spln = b[off + 4] & 0x3F, b[off + 5] & 0x3F, b[off + 8]
    thtl, tstl, tpln = b[off + 9] & 0x3F, b[off + 10] & 0x3F, b[off + 11]
    sha = off + 12
    ssa = sha + shtl
    spa = ssa + sstl
    tha = spa + spln
    tsa = tha + thtl
    tpa = tsa + tstl
    p.need(tpa, tpln)
    ip_like = pro in (0x0800, 0x1000)

    def paddr(at: int, n: int, what: str) -> str:
        if not ip_like:
            return "<wrong proto type>"
        return f"<wrong {what}>" if n != 4 else ip4_str(p.take(at, 4))

    def haddr(at: int, n: int, sub: int, subn: int) -> str:
        if n == 0:
            return "<No address>"
        return _linkaddr(p, at, n) + (f",{_linkaddr(p, sub, subn)}" if subn else "")

    if not ip_like or spln != 4 or tpln != 4 or p.v:
        p.w(f"ATM, {ETHERTYPES.get(pro, f'Unknown Protocol (0x{pro:04x})')} "
            f"(len {spln}/{tpln})")
        if not p.v:
            p.w(f", length {length}")
            return
    p.w(f"{', ' if p.v else ''}{_ARP_OPS.get(op, f'Unknown ({op})')} ")
    if op == 1:
        p.w(f"who-has {paddr(tpa, tpln, 'tplen')}")
        if thtl:
            p.w(f" ({haddr(tha, thtl, tsa, tstl)})")
        p.w(f" tell {paddr(spa, spln, 'splen')}")
    elif op == 2:
        p.w(f"{paddr(spa, spln, 'splen')} is-at {haddr(sha, shtl, ssa, sstl)}")
    elif op == 8:
        p.w(f"who-is {haddr(tha, thtl, tsa, tstl)} tell {haddr(sha, shtl, ssa, sstl)}")
    elif op == 9:
        p.w(f"{haddr(sha, shtl, ssa, sstl)}at {paddr(spa, spln, 'splen')}")
    elif op == 10:
        p.w(f"for {paddr(spa, spln, 'splen')}")
    else:
        if default_print:
            p.w(hex_ascii(p.buf[off:p.end]))
        return
    p.w(f", length {length}")
