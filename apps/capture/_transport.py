"""The transport printers of the decoder (apps/capture/decode.py), as tcpdump 4.99 words
them: TCP with its flags, relative sequence numbers and options (print-tcp.c) and UDP with
its port dispatch (print-udp.c) to DNS (_dns.py), TFTP, BOOTP/DHCP, NTP and DHCPv6
(_services.py).

Both take the offset of their header, the length the IP layer gives them, the offset of
the IP header (for the addresses and the checksum's pseudo-header) and whether the
datagram is a fragment (no checksum then).
"""

from __future__ import annotations

from apps.capture import _dns, _services
from apps.capture._printer import (
    LocalTruncated,
    Printer,
    Truncated,
    bits,
    cksum,
    safe_chars,
    shouldbe,
)

_M32 = 0xFFFFFFFF
_FIN, _SYN, _RST, _ACK, _URG = 0x01, 0x02, 0x04, 0x10, 0x20
TCP_FLAGS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "."), (0x20, "U"),
             (0x40, "E"), (0x80, "W"))
TCP_OPTIONS = {0: "eol", 1: "nop", 2: "mss", 3: "wscale", 4: "sackOK", 5: "sack",
               6: "echo", 7: "echoreply", 8: "TS", 11: "cc", 12: "ccnew", 13: "", 19: "md5",
               20: "scps", 28: "uto", 29: "tcp-ao", 30: "mptcp", 34: "tfo", 254: "exp"}
# tcpdump's port dispatch, in its order (print-tcp.c, print-udp.c): the first entry with
# a port at either end decides; None for what tcpdump decodes and we do not
_TCP_SERVICES = (((23, 25, 43, 179, 1723, 6379, 22, 139, 445, 10288, 6633, 6653, 21), None),
                 ((80, 8080), "http"), ((554, 8554), None), ((53,), "domain"))
_UDP_SERVICES = (((53,), "domain"), ((5353,), "mdns"), ((525,), None), ((69,), "tftp"),
                 ((67, 68), "bootp"), ((520, 654, 500, 4500, 7500, 8500, 161, 162), None),
                 ((123,), "ntp"), ((88, 750, 1701, 137, 138), None))
_UDP_LATER = (((2103, 2104), None), ((521,), None), ((546, 547), "dhcp6"))


def _tcp_service(sport: int, dport: int) -> str | None:
    for ports, name in _TCP_SERVICES:
        if sport in ports or dport in ports:
            return name
    return None


def _udp_service(p: Printer, data: int, sport: int, dport: int) -> str | None:
    """What tcpdump's udp_print decodes a datagram as ("" for its default, `UDP, length
    N`; None for a decoder we do not have)."""
    if 2049 in (sport, dport) and p.has(data + 4, 4):  # an NFS call or reply (SUN RPC)
        direction = p.u32(data + 4)
        if (dport == 2049 and direction == 0) or (sport == 2049 and direction == 1):
            return None
    for ports, name in _UDP_SERVICES:
        if sport in ports or dport in ports:
            return name
    if dport == 3456 or 7000 <= sport <= 7009 or 7000 <= dport <= 7009:  # VAT, AFS RX
        return None
    for ports, name in _UDP_LATER:
        if sport in ports or dport in ports:
            return name
    return ""


def _addrs(p: Printer, ip_off: int) -> tuple[bool, str, str]:
    """(IPv6?, source, destination) of the IP header at `ip_off`."""
    if p.buf[ip_off] >> 4 == 6:
        return True, p.ip6(ip_off + 8), p.ip6(ip_off + 24)
    return False, p.ip4(ip_off + 12), p.ip4(ip_off + 16)


def _next_header(p: Printer, ip_off: int, v6: bool) -> int:
    return p.u8(ip_off + 6) if v6 else p.u8(ip_off + 9)


def _pseudo(p: Printer, ip_off: int, v6: bool, length: int, proto: int) -> bytes:
    if v6:
        return p.buf[ip_off + 8:ip_off + 40] + length.to_bytes(4, "big") + bytes((0, 0, 0,
                                                                                  proto))
    return p.buf[ip_off + 12:ip_off + 20] + bytes((0, proto)) + (length & 0xFFFF).to_bytes(
        2, "big")


# -- TCP --------------------------------------------------------------------------------------
def tcp(p: Printer, off: int, length: int, ip_off: int, fragmented: bool) -> None:
    """TCP (tcp_print): `a.b.c.d.port > e.f.g.h.port: Flags [S.], seq 1, ack 1, win 502,
    options [mss 1460,...], length 0`; sequence numbers relative to the first ones seen
    (as tcpdump without -S); at -v the checksum."""
    p.proto = "tcp"
    v6, src, dst = _addrs(p, ip_off)
    if not p.has(off + 2, 2):
        p.w(f"{src} > {dst}:")
        raise LocalTruncated
    sport, dport = p.u16(off), p.u16(off + 2)
    if _next_header(p, ip_off, v6) == 6:
        p.w(f"{src}.{sport} > {dst}.{dport}: ")
    else:
        p.w(f"{sport} > {dport}: ")
    p.check(off, 20)
    hlen = (p.buf[off + 12] >> 4) * 4
    if hlen < 20:
        p.w(f" tcp {(length - hlen) & _M32} [bad hdr length {hlen} - too short, < 20]")
        return
    seq, ack = p.u32(off + 4), p.u32(off + 8)
    win, urp = p.u16(off + 14), p.u16(off + 18)
    flags = p.buf[off + 13]
    p.w(f"Flags [{bits(TCP_FLAGS, flags, 'none', '')}]")
    rev, thseq, thack = False, 0, 0
    table = p.dec.tcp_seq if p.dec is not None else None
    if table is not None and flags & _ACK:
        a, b = p.buf[ip_off + 8:ip_off + 24], p.buf[ip_off + 24:ip_off + 40]
        if not v6:
            a, b = p.buf[ip_off + 12:ip_off + 16], p.buf[ip_off + 16:ip_off + 20]
        rev = sport > dport or (sport == dport and a > b)
        key = (b, a, (dport << 16) | sport) if rev else (a, b, (sport << 16) | dport)
        th = table.get(key)
        if th is None or flags & _SYN:
            th = [(ack - 1) & _M32, seq] if rev else [seq, (ack - 1) & _M32]
            table.put(key, th)
        elif rev:
            seq, ack = (seq - th[1]) & _M32, (ack - th[0]) & _M32
        else:
            seq, ack = (seq - th[0]) & _M32, (ack - th[1]) & _M32
        thseq, thack = th
    if hlen > length:
        p.w(f" [bad hdr length {hlen} - too long, > {length}]")
        return
    if p.v and not fragmented and p.has(off, length):
        s = cksum(_pseudo(p, ip_off, v6, length, 6) + p.buf[off:off + length])
        field = p.u16(off + 16)
        p.w(f", cksum 0x{field:04x}" + (f" (incorrect -> 0x{shouldbe(field, s):04x})" if s
                                        else " (correct)"))
    length -= hlen
    if p.v > 1 or length > 0 or flags & (_SYN | _FIN | _RST):
        p.w(f", seq {seq}" + (f":{(seq + length) & _M32}" if length > 0 else ""))
    if flags & _ACK:
        p.w(f", ack {ack}")
    p.w(f", win {win}")
    if flags & _URG:
        p.w(f", urg {urp}")
    if hlen > 20 and not _tcp_options(p, off + 20, hlen - 20, rev, thseq, thack,
                                      p.has(off + hlen, length)):
        return
    p.w(f", length {length}")
    if length == 0:
        return
    if not p.has(off, hlen):
        p.w(f" [remaining caplen({p.avail(off)}) < header length({hlen})]")
        raise Truncated
    data = off + hlen
    if flags & _RST and p.v:
        _rst_data(p, data, length)
    else:
        service = _tcp_service(sport, dport)
        if service == "http":
            p.w(": ")
            _services.http(p, data, length)
        elif service == "domain":
            _dns.domain(p, data, length, over_tcp=True)


class _BadOption(Exception):  # noqa: N818  (control flow: tcpdump's `goto bad`)
    pass


class _OptionCut(Exception):  # noqa: N818  (tcpdump's `goto trunc` in the options)
    pass


def _tcp_options(p: Printer, cp: int, h: int, rev: bool, thseq: int, thack: int,
                 payload_captured: bool) -> bool:
    """`, options [mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7]`; False when tcpdump
    stops the line there (a bad or cut option). (`payload_captured`: whether the whole
    segment is there, which tcpdump says about an MD5 signature it cannot check.)"""
    ch = ""

    def lencheck(n: int) -> None:
        if n > h:
            raise _BadOption
        if not p.has(cp, n):
            raise _OptionCut

    p.w(", options [")
    try:
        while h > 0:
            p.w(ch)
            opt = p.u8(cp)
            cp += 1
            if opt in (0, 1):
                ln = 1
            else:
                ln = p.u8(cp)
                cp += 1
                if ln < 2 or ln > h:
                    raise _BadOption
                h -= 1
            h -= 1
            datalen = 0
            p.w(TCP_OPTIONS.get(opt, f"unknown-{opt}"))
            if opt == 2:
                datalen = 2
                lencheck(2)
                p.w(f" {p.u16(cp)}")
            elif opt == 3:
                datalen = 1
                lencheck(1)
                p.w(f" {p.u8(cp)}")
            elif opt == 5:
                datalen = ln - 2
                if datalen % 8:
                    p.w(" invalid sack")
                else:
                    p.w(f" {datalen // 8} ")
                    for i in range(0, datalen, 8):
                        lencheck(i + 4)
                        s = p.u32(cp + i)
                        lencheck(i + 8)
                        e = p.u32(cp + i + 4)
                        base = thseq if rev else thack
                        p.w(f"{{{(s - base) & _M32}:{(e - base) & _M32}}}")
            elif opt in (6, 7, 11, 12, 13):
                datalen = 4
                lencheck(4)
                p.w(f" {p.u32(cp)}")
            elif opt == 8:
                datalen = 8
                lencheck(8)
                p.w(f" val {p.u32(cp)} ecr {p.u32(cp + 4)}")
            elif opt == 19:
                datalen = 16
                lencheck(16)
                p.w((" shared secret not supplied with -M" if payload_captured
                     else " snaplen too short") + ", can't check - " + p.take(cp, 16).hex())
            elif opt == 20:
                datalen = 2
                lencheck(2)
                p.w(f" cap {p.u8(cp):02x} id {p.u8(cp + 1)}")
            elif opt == 29:
                datalen = ln - 2
                if datalen < 2:
                    p.w(" (invalid)")
                else:
                    lencheck(1)
                    p.w(f" keyid {p.u8(cp)}")
                    lencheck(2)
                    p.w(f" rnextkeyid {p.u8(cp + 1)}")
                    if datalen > 2:
                        p.w(" mac 0x")
                        for i in range(2, datalen):
                            lencheck(i + 1)
                            p.w(f"{p.u8(cp + i):02x}")
            elif opt == 28:
                datalen = 2
                lencheck(2)
                uto = p.u16(cp)
                p.w(f" 0x{uto:x} {(uto >> 1) * 60 if uto & 1 else uto >> 1}")
            elif opt == 30:
                datalen = ln - 2
                lencheck(datalen)  # (MPTCP's subtypes are not decoded)
            elif opt == 34:
                datalen = ln - 2
                lencheck(datalen)
                p.w(" ")
                _fastopen(p, cp, datalen, False)
            elif opt == 254:
                datalen = ln - 2
                lencheck(datalen)
                if datalen < 2:
                    raise _BadOption
                magic = p.u16(cp)
                p.w("-")
                if magic == 0xF989:
                    _fastopen(p, cp + 2, datalen - 2, True)
                else:
                    p.w(f"{magic:04x}")
            elif opt not in (0, 1, 4):
                datalen = ln - 2
                if datalen:
                    p.w(" 0x")
                for i in range(datalen):
                    lencheck(i + 1)
                    p.w(f"{p.u8(cp + i):02x}")
            cp += datalen
            h -= datalen
            datalen += 1 if opt in (0, 1) else 2
            if datalen != ln:
                p.w(f"[len {ln}]")
            ch = ","
            if opt == 0:
                break
        p.w("]")
        return True
    except _BadOption:
        p.w("[bad opt]" + ("]" if ch else ""))
    except _OptionCut:
        p.w(" [|tcp]" + (">" if ch else ""))
    return False


def _fastopen(p: Printer, cp: int, datalen: int, exp: bool) -> None:
    if exp:
        p.w("tfo")
    if datalen == 0:
        p.w(" cookiereq")
    elif datalen % 2 or datalen < 4 or datalen > 16:
        p.w(" (invalid)")
    else:
        p.w(" cookie " + p.take(cp, datalen).hex())


def _rst_data(p: Printer, off: int, length: int) -> None:
    """The text a RST carries, at -v (print_tcp_rst_data)."""
    p.w(" [RST" if p.has(off, length) else " [!RST")
    if length > 30:
        length = 30
        p.w("+")
    p.w(" " + safe_chars(p.buf[off:min(off + length, p.end)]) + "]")


# -- UDP --------------------------------------------------------------------------------------
def udp(p: Printer, off: int, length: int, ip_off: int, fragmented: bool) -> None:
    """UDP (udp_print): `a.b.c.d.port > e.f.g.h.port: ` and what the ports say it
    carries, else `UDP, length N`."""
    p.proto = "udp"
    v6, src, dst = _addrs(p, ip_off)
    is_udp = _next_header(p, ip_off, v6) == 17

    def addrs(sport: int | None = None, dport: int | None = None) -> None:
        if is_udp:
            p.w(f"{src} > {dst}: " if sport is None else f"{src}.{sport} > {dst}.{dport}: ")
        elif sport is not None:
            p.w(f"{sport} > {dport}: ")

    if not p.has(off + 2, 2):
        addrs()
        raise LocalTruncated
    sport, dport = p.u16(off), p.u16(off + 2)
    if length < 8:
        addrs(sport, dport)
        p.w(f"truncated-udp {length}")
        return
    if not p.has(off + 4, 2):
        addrs(sport, dport)
        raise LocalTruncated
    ulen = p.u16(off + 4)
    if ulen == 0 and length > 65535:
        ulen = length
    if ulen < 8:
        addrs(sport, dport)
        p.w(f"truncated-udplength {ulen}")
        return
    ulen -= 8
    length -= 8
    if ulen < length:
        length = ulen
    data = off + 8
    if data > p.end:
        addrs(sport, dport)
        raise LocalTruncated
    addrs(sport, dport)
    if p.v and not fragmented and (v6 or p.v > 1):
        field = p.u16(off + 6)
        if not v6 and field == 0:
            p.w("[no cksum] ")
        elif p.has(data, length):
            s = cksum(_pseudo(p, ip_off, v6, length + 8, 17) + p.buf[off:data + length])
            p.w(f"[bad udp cksum 0x{field:04x} -> 0x{shouldbe(field, s):04x}!] " if s
                else "[udp sum ok] ")
    dec = p.dec
    service = _udp_service(p, data, sport, dport)
    if service == "domain":
        _dns.domain(p, data, length)
    elif service == "mdns":
        _dns.domain(p, data, length, mdns=True)
    elif service == "tftp":
        opcode = _services.tftp(p, data, length)
        if dport == 69 and opcode in (1, 2) and dec is not None:
            dec.tftp_clients.put((src, sport), True)
    elif service == "bootp":
        _services.bootp(p, data, length)
    elif service == "ntp":
        _services.ntp(p, data, length)
    elif service == "dhcp6":
        _services.dhcp6(p, data, length)
    elif ulen > length and not fragmented:
        p.w(f"UDP, bad length {ulen} > {length}")
    elif (service == "" and dec is not None and sport >= 1024 and dport >= 1024
          and ((src, sport) in dec.tftp_clients or (dst, dport) in dec.tftp_clients)):
        _services.tftp(p, data, length)  # a transfer on the server's session port
    else:
        p.w(f"UDP, length {ulen}")
