"""The application printers of the decoder (apps/capture/decode.py), as tcpdump 4.99 words
them: BOOTP/DHCP with its options at -v (print-bootp.c), TFTP (print-tftp.c), NTP
(print-ntp.c), DHCPv6's message type (print-dhcp6.c) and HTTP's lines (util-print.c's
txtproto_print). DNS is in _dns.py.

Each takes the Printer, the offset of the payload and its length (UDP's, or what TCP
carries) and writes what tcpdump writes; reads past the capture raise Truncated.
"""

from __future__ import annotations

import datetime

from apps.capture._printer import Printer, Truncated, bits, ip4_str

# -- TFTP -------------------------------------------------------------------------------------
_TFTP_OPS = {1: "RRQ", 2: "WRQ", 3: "DATA", 4: "ACK", 5: "ERROR", 6: "OACK"}
_TFTP_ERRORS = {0: "EUNDEF", 1: "ENOTFOUND", 2: "EACCESS", 3: "ENOSPACE", 4: "EBADOP",
                5: "EBADID", 6: "EEXISTS", 7: "ENOUSER"}


def tftp(p: Printer, off: int, length: int) -> int | None:
    """A TFTP packet (tftp_print): `TFTP, length N, RRQ "file" octet`, `DATA block N`...
    Returns the opcode (None when there was none)."""
    p.proto = "tftp"
    p.w(f"TFTP, length {length}")
    if length < 2:
        raise Truncated
    opcode = p.u16(off)
    name = _TFTP_OPS.get(opcode)
    p.w(f", {name or f'tftp-#{opcode}'}")
    if name is None:
        return opcode
    off += 2
    length -= 2
    if opcode in (1, 2):  # RRQ WRQ: file, mode, options
        if length == 0:
            raise Truncated
        p.w(' "')
        used = p.printztn(off, length)
        p.w('"')
        if not used:
            raise Truncated
        off, length = off + used, length - used
        if length == 0:
            raise Truncated
        p.w(" ")
        used = p.printztn(off, length)
        if not used:
            raise Truncated
        off, length = off + used, length - used
        _tftp_strings(p, off, length)
    elif opcode == 6:  # OACK
        _tftp_strings(p, off, length)
    elif opcode in (3, 4):
        if length < 2:
            raise Truncated
        p.w(f" block {p.u16(off)}")
    else:  # ERROR
        if length < 2:
            raise Truncated
        code = p.u16(off)
        p.w(" " + _TFTP_ERRORS.get(code, f'tftp-err-#{code} "'))
        off, length = off + 2, length - 2
        if length == 0:
            raise Truncated
        p.w(' "')
        used = p.printztn(off, length)
        p.w('"')
        if not used:
            raise Truncated
    return opcode


def _tftp_strings(p: Printer, off: int, length: int) -> None:
    while length:
        if p.u8(off):
            p.w(" ")
        used = p.printztn(off, length)
        if not used:
            raise Truncated
        off, length = off + used, length - used


# -- BOOTP / DHCP -----------------------------------------------------------------------------
# tcpdump's tag2str: the first character says how the value prints (i: IPv4 addresses,
# l/L: 32-bit unsigned/signed, s: 16-bit, b: bytes, x: hex bytes, a: text, B: booleans,
# p: address pairs, $: its own code, space: none)
_TAGS = {
    0: " PAD", 1: "iSubnet-Mask", 2: "LTime-Zone", 3: "iDefault-Gateway", 4: "iTime-Server",
    5: "iIEN-Name-Server", 6: "iDomain-Name-Server", 7: "iLOG", 8: "iCS", 9: "iLPR-Server",
    10: "iIM", 11: "iRL", 12: "aHostname", 13: "sBS", 255: " END", 14: "aDP",
    15: "aDomain-Name", 16: "iSS", 17: "aRP", 18: "aEP", 19: "BIPF", 20: "BSRT", 21: "pPF",
    22: "sRSZ", 23: "bTTL", 24: "lMTU-Timeout", 25: "sMTU-Table", 26: "sMTU", 27: "BLSN",
    28: "iBR", 29: "BMD", 30: "BMS", 31: "BRouter-Discovery", 32: "iRSA",
    33: "pStatic-Route", 34: "BUT", 35: "lAT", 36: "BIE", 37: "bTT", 38: "lKI", 39: "BKG",
    40: "aYD", 41: "iYS", 42: "iNTP", 43: "bVendor-Option", 44: "iNetbios-Name-Server",
    45: "iWDD", 46: "$Netbios-Node", 47: "aNetbios-Scope", 48: "iXFS", 49: "iXDM",
    64: "sN+D", 65: "iN+S", 68: "iMH", 69: "iSMTP", 70: "iPOP3", 71: "iNNTP", 72: "iWWW",
    73: "iFG", 74: "iIRC", 75: "iSTS", 76: "iSTDA", 50: "iRequested-IP", 51: "lLease-Time",
    52: "$OO", 66: "aTFTP", 67: "aBF", 53: " DHCP-Message", 54: "iServer-ID",
    55: "bParameter-Request", 56: "aMSG", 57: "sMSZ", 58: "lRN", 59: "lRB",
    60: "aVendor-Class", 61: "$Client-ID", 98: "aUAP", 116: "BNOAUTO", 78: "bSLP-DA",
    79: "bSLP-SCOPE", 117: "sNSSEARCH", 77: "$User-Class", 118: "iSUBNET",
    121: "$Classless-Static-Route", 249: "$Classless-Static-Route-Microsoft",
    150: "iTFTP-Server-Address", 80: "aSLP-NA", 81: "$FQDN", 82: "$Agent-Information",
    83: "bARMT", 88: "aTZSTR", 89: "bFQDNS", 90: "bAUTH", 91: "LLast-Transaction-Time",
    92: "iAssociated-IP", 93: "sARCH", 94: "bNDI", 97: "bGUID", 95: "aLDAP",
    100: "aPOSIX-TZ", 101: "aTZ-Name", 112: "iNI", 113: "aNITAG", 114: "aURL",
    161: "aMUD-URL",
}
DHCP_MESSAGES = {1: "Discover", 2: "Offer", 3: "Request", 4: "Decline", 5: "ACK",
                 6: "NACK", 7: "Release", 8: "Inform", 10: "LeaseQuery",
                 11: "LeaseUnassigned", 12: "LeaseUnknown", 13: "LeaseActive"}
_NETBIOS_NODES = {1: "b-node", 2: "p-node", 4: "m-node", 8: "h-node"}
_OVERLOAD = {1: "file", 2: "sname", 3: "file+sname"}
_HW_TYPES = {1: "ether", 6: "ieee802", 7: "arcnet", 15: "frelay", 23: "strip",
             24: "ieee1394"}
_AGENT_SUBOPTS = {1: "Circuit-ID", 2: "Remote-ID", 6: "Subscriber-ID"}
_RFC1048 = bytes((99, 130, 83, 99))


def bootp(p: Printer, off: int, length: int) -> None:
    """BOOTP/DHCP (bootp_print): `BOOTP/DHCP, Request from MAC, length N`; at -v the
    header fields and the options, one a line."""
    p.proto = "bootp"
    op = p.u8(off)
    p.w(f"BOOTP/DHCP, {({1: 'Request', 2: 'Reply'}).get(op, f'unknown (0x{op:02x})')}")
    htype, hlen = p.u8(off + 1), p.u8(off + 2)
    if htype == 1 and hlen == 6 and op == 1:
        p.w(f" from {p.mac(off + 28)}")
    p.w(f", length {length}")
    if not p.v:
        return
    p.need(off + 8, 2)
    if htype != 1:
        p.w(f", htype {htype}")
    if htype != 1 or hlen != 6:
        p.w(f", hlen {hlen}")
    if p.u8(off + 3):
        p.w(f", hops {p.u8(off + 3)}")
    if p.u32(off + 4):
        p.w(f", xid 0x{p.u32(off + 4):x}")
    if p.u16(off + 8):
        p.w(f", secs {p.u16(off + 8)}")
    flags = p.u16(off + 10)
    p.w(f", Flags [{bits(((0x8000, 'Broadcast'),), flags)}]")
    if p.v > 1:
        p.w(f" (0x{flags:04x})")
    for o, name in ((12, "Client-IP"), (16, "Your-IP"), (20, "Server-IP"),
                    (24, "Gateway-IP")):
        if p.u32(off + o):
            p.w(f"\n\t  {name} {p.ip4(off + o)}")
    if htype == 1 and hlen == 6:
        p.w(f"\n\t  Client-Ethernet-Address {p.mac(off + 28)}")
    for o, n, name in ((44, 64, "sname"), (108, 128, "file")):
        if p.u8(off + o):
            p.w(f'\n\t  {name} "')
            used = p.printztn(off + o, n)
            p.w('"')
            if not used:
                raise Truncated
    p.need(off + 236, 4)
    vend = off + 236
    if p.take(vend, 4) == _RFC1048:
        _rfc1048(p, vend)
    elif p.take(vend, 4) == b"CMU\0":
        _cmu(p, vend)
    elif p.u32(vend):
        p.w(f"\n\t  Vendor-#0x{p.u32(vend):x}")


def _rfc1048(p: Printer, bp: int) -> None:
    p.w("\n\t  Vendor-rfc1048 Extensions")
    p.w(f"\n\t    Magic Cookie 0x{p.u32(bp):08x}")
    bp += 4
    while p.has(bp):
        tag = p.buf[bp]
        bp += 1
        if tag == 0 and p.v < 3:
            continue
        if tag == 255 and p.v < 3:
            return
        spec = _TAGS.get(tag, "?Unknown")
        c, name = spec[0], spec[1:]
        if tag in (0, 255):
            ln = 0
        else:
            ln = p.u8(bp)
            bp += 1
        p.w(f"\n\t    {name} ({tag}), length {ln}{': ' if ln > 0 else ''}")
        if tag == 0 and p.v > 2:
            ntag = 1
            while p.has(bp) and p.buf[bp] == 0:
                bp += 1
                ntag += 1
            if ntag > 1:
                p.w(f", occurs {ntag}")
        p.need(bp, ln)
        if tag == 53 and ln == 1:
            msg = p.buf[bp]
            p.w(DHCP_MESSAGES.get(msg, f"Unknown ({msg})"))
            bp += 1
            continue
        if tag == 55:
            for idx in range(ln):
                inner = p.buf[bp + idx]
                p.w("\n\t      " if idx % 4 == 0 else ", ")
                p.w(f"{_TAGS.get(inner, '?Unknown')[1:]} ({inner})")
            bp += ln
            continue
        if c == "?":
            c = "b" if ln & 1 else "s" if ln & 2 else "l"
        data = p.buf[bp:bp + ln]
        if c == "a":
            p.w('"')
            p.printn(bp, ln)
            p.w('"')
            bp, ln = bp + ln, 0
        elif c in "ilL":
            words = [data[k:k + 4] for k in range(0, ln - ln % 4, 4)]
            p.w(",".join(ip4_str(wd) if c == "i" else
                         str(int.from_bytes(wd, "big", signed=c == "L")) for wd in words))
            bp, ln = bp + 4 * len(words), ln - 4 * len(words)
        elif c == "p":
            pairs = [data[k:k + 8] for k in range(0, ln - ln % 8, 8)]
            p.w(",".join(f"({ip4_str(pr[:4])}:{ip4_str(pr[4:])})" for pr in pairs))
            bp, ln = bp + 8 * len(pairs), ln - 8 * len(pairs)
        elif c == "s":
            shorts = [int.from_bytes(data[k:k + 2], "big") for k in range(0, ln - ln % 2, 2)]
            p.w(",".join(map(str, shorts)))
            bp, ln = bp + 2 * len(shorts), ln - 2 * len(shorts)
        elif c == "B":
            p.w(",".join({0: "N", 1: "Y"}.get(b, f"{b}?") for b in data))
            bp, ln = bp + ln, 0
        elif c == "$":
            bp, ln = _dhcp_special(p, tag, bp, ln)
        else:  # b, x and the rest: bytes
            p.w((":" if c == "x" else ".").join(f"{b:02x}" if c == "x" else str(b)
                                                for b in data))
            bp, ln = bp + ln, 0
        if ln:
            p.w(f"\n\t  trailing data length {ln}")
            bp += ln


def _dhcp_special(p: Printer, tag: int, bp: int, ln: int) -> tuple[int, int]:
    """The options tcpdump prints with code of their own; returns (bp, ln) after."""
    data = p.buf[bp:bp + ln]
    if tag in (46, 52):  # Netbios-Node, OO
        if ln < 1:
            p.w("[ERROR: length < 1 bytes]")
            return bp, ln
        table = _NETBIOS_NODES if tag == 46 else _OVERLOAD
        p.w(table.get(data[0], f"#{data[0]}"))
        return bp + 1, ln - 1
    if tag == 81:  # Client FQDN
        if ln < 3:
            p.w("[ERROR: length < 3 bytes]")
            return bp + ln, 0
        if data[0] & 0xF0:
            p.w(f"[ERROR: MBZ nibble 0x{(data[0] & 0xF0) >> 4:x} != 0] ")
        if data[0] & 0x0F:
            p.w(f"[{bits(((1, 'S'), (2, 'O'), (4, 'E'), (8, 'N')), data[0], '', '')}] ")
        if data[1] or data[2]:
            p.w(f"{data[1]}/{data[2]} ")
        p.w('"')
        p.printn(bp + 3, ln - 3)
        p.w('"')
        return bp + ln, 0
    if tag == 61:  # Client-ID
        if ln < 1:
            p.w("[ERROR: length < 1 bytes]")
            return bp, ln
        if data[0] == 0:
            p.w('"')
            p.printn(bp + 1, ln - 1)
            p.w('"')
        else:
            p.w(f"{_HW_TYPES.get(data[0], f'hardware-type {data[0]},')} "
                + ":".join(f"{b:02x}" for b in data[1:]))
        return bp + ln, 0
    if tag == 82:  # Agent-Information
        while ln >= 2:
            sub, sublen = p.buf[bp], p.buf[bp + 1]
            bp, ln = bp + 2, ln - 2
            name = _AGENT_SUBOPTS.get(sub, "Unknown")
            if sublen > ln:
                p.w(f"\n\t      {name} SubOption {sub}, length {sublen}: length goes "
                    "past end of option")
                return bp + ln, 0
            p.w(f"\n\t      {name} SubOption {sub}, length {sublen}: ")
            if sub in _AGENT_SUBOPTS:
                p.printn(bp, sublen)
            else:
                from apps.capture._printer import hex_only

                p.w(hex_only(p.buf[bp:bp + sublen], "\n\t\t"))
            bp, ln = bp + sublen, ln - sublen
        return bp, ln
    if tag in (121, 249):  # Classless static routes (RFC 3442)
        if ln < 5:
            p.w("[ERROR: length < 5 bytes]")
            return bp + ln, 0
        first = True
        while ln > 0:
            if not first:
                p.w(",")
            width = p.buf[bp]
            bp, ln = bp + 1, ln - 1
            if width > 32:
                p.w(f"[ERROR: Mask width ({width}) > 32]")
                return bp + ln, 0
            sig = (width + 7) // 8
            if ln < sig + 4:
                p.w(f"[ERROR: Remaining length ({ln}) < {sig + 4} bytes]")
                return bp + ln, 0
            net = ".".join(str(b) for b in p.buf[bp:bp + sig]) + ".0" * (4 - sig)
            p.w(f"({'default' if width == 0 else f'{net}/{width}'}:"
                f"{ip4_str(p.buf[bp + sig:bp + sig + 4])})")
            bp, ln = bp + sig + 4, ln - sig - 4
            first = False
        return bp, ln
    if tag == 77:  # User-Class
        if ln < 2:
            p.w("[ERROR: length < 2 bytes]")
            return bp + ln, 0
        n = 1
        while ln > 0:
            sublen = p.buf[bp]
            bp, ln = bp + 1, ln - 1
            p.w(f"\n\t      instance#{n}: ")
            if sublen == 0:
                p.w("[ERROR: suboption length must be non-zero]")
                return bp + ln, 0
            if ln < sublen:
                p.w("[ERROR: invalid option]")
                return bp + ln, 0
            p.w('"')
            p.printn(bp, sublen)
            p.w(f'", length {sublen}')
            n += 1
            bp, ln = bp + sublen, ln - sublen
        return bp, ln
    p.w(f"[unknown special tag {tag}, size {ln}]")
    return bp + ln, 0


def _cmu(p: Printer, vend: int) -> None:
    p.w(" vend-cmu")
    p.need(vend + 4, 4)
    flags = p.buf[vend + 4]
    if flags & ~1:
        p.w(f" F:0x{flags:x}")
    for o, name in ((12, "DG"), (8, "SM" if flags & 1 else "SM*"), (16, "NS1"),
                    (20, "NS2"), (24, "IEN1"), (28, "IEN2"), (32, "TS1"), (36, "TS2")):
        if p.u32(vend + o):
            p.w(f" {name}:{p.ip4(vend + o)}")


# -- NTP, DHCPv6 ------------------------------------------------------------------------------
_NTP_MODES = ("unspecified", "symmetric active", "symmetric passive", "Client", "Server",
              "Broadcast", "Control Message", "Reserved")
_DHCP6_MESSAGES = {1: "solicit", 2: "advertise", 3: "request", 4: "confirm", 5: "renew",
                   6: "rebind", 7: "reply", 8: "release", 9: "decline", 10: "reconfigure",
                   11: "inf-req", 12: "relay-fwd", 13: "relay-reply", 14: "leasequery",
                   15: "leasequery-reply"}


def ntp(p: Printer, off: int, length: int) -> None:
    """NTP (ntp_print): `NTPv4, Client, length 48`; at -v the header, a line a field."""
    p.proto = "ntp"
    status = p.u8(off)
    mode = status & 7
    p.w(f"NTPv{(status >> 3) & 7}, {_NTP_MODES[mode]}, length {length}")
    if not p.v:
        return
    leap = status & 0xC0
    p.w(f"\n\tLeap indicator: {_NTP_LEAP[leap >> 6]} ({leap})")
    if mode <= 5:
        _ntp_time(p, off, length)
    elif mode == 6:
        _ntp_control(p, off, length)


_NTP_LEAP = ("", "+1s", "-1s", "clock unsynchronized")
_JAN_1970 = 2208988800


def _ntp_stamp(p: Printer, off: int) -> str:
    """p_ntp_time: seconds.nanoseconds since 1900, and the UTC date."""
    i, uf = p.u32(off), p.u32(off + 4)
    text = f"{i}.{int(uf / 4294967296.0 * 1000000000.0):09d}"
    if i:
        when = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=i - _JAN_1970)
        text += f" ({when:%Y-%m-%dT%H:%M:%SZ})"
    return text


def _ntp_sfix(p: Printer, off: int) -> str:
    return f"{p.u16(off)}.{int(p.u16(off + 2) / 65536.0 * 1000000.0):06d}"


def _ntp_delta(p: Printer, old: int, new: int) -> str:
    """p_ntp_delta: new - old, signed, to the nanosecond (or `new` when old is 0)."""
    ou, ouf, u, uf = p.u32(old), p.u32(old + 4), p.u32(new), p.u32(new + 4)
    if ou == 0 and ouf == 0:
        return _ntp_stamp(p, new)
    if u > ou:
        sign, i, f = "+", u - ou - (ouf > uf), (uf - ouf) & 0xFFFFFFFF
    elif u < ou:
        sign, i, f = "-", ou - u - (uf > ouf), (ouf - uf) & 0xFFFFFFFF
    else:
        sign, i, f = ("+", 0, uf - ouf) if uf > ouf else ("-", 0, ouf - uf)
    return f"{sign}{i}.{int(f / 4294967296.0 * 1000000000.0):09d}"


def _ntp_time(p: Printer, off: int, length: int) -> None:
    if length < 48:
        p.w(" (invalid)")
        p.need(off, length)
        return
    stratum = p.u8(off + 1)
    name = {0: "unspecified", 1: "primary reference"}.get(
        stratum, "secondary reference" if 2 <= stratum <= 15 else "reserved")
    p.w(f", Stratum {stratum} ({name})")
    poll = p.s8(off + 2)
    p.w(f", poll {poll}")
    if -32 < poll < 32:
        p.w(f" ({1 << poll}s)" if poll >= 0 else f" (1/{1 << -poll}s)")
    p.w(f", precision {p.s8(off + 3)}")
    p.need(off + 4, 4)
    p.w(f"\n\tRoot Delay: {_ntp_sfix(p, off + 4)}")
    p.w(f", Root dispersion: {_ntp_sfix(p, off + 8)}")
    p.need(off + 12, 4)
    p.w(", Reference-ID: ")
    if stratum == 0:
        p.w("(unspec)")
    elif stratum == 1:
        if p.printn(off + 12, 4):
            raise Truncated
    elif stratum in (62, 63):
        p.w(f"{p.ip4(off + 12)} {'INFO_QUERY' if stratum == 62 else 'INFO_REPLY'}")
        return
    else:
        p.w(f"0x{p.u32(off + 12):08x}")
    for o, name in ((16, "Reference Timestamp:  "), (24, "Originator Timestamp: "),
                    (32, "Receive Timestamp:    "), (40, "Transmit Timestamp:   ")):
        p.need(off + o, 8)
        p.w(f"\n\t  {name}{_ntp_stamp(p, off + o)}")
    p.w(f"\n\t    Originator - Receive Timestamp:  {_ntp_delta(p, off + 24, off + 32)}")
    p.w(f"\n\t    Originator - Transmit Timestamp: {_ntp_delta(p, off + 24, off + 40)}")
    if length in (52, 68, 72):
        p.w(f"\n\tKey id: {p.u32(off + 48)}")
        if length > 52:
            words = (length - 52) // 4
            p.need(off + 52, 4 * words)
            p.w("\n\tAuthentication: " + "".join(f"{p.u32(off + 52 + 4 * k):08x}"
                                                 for k in range(words)))
    elif length > 48:
        p.w(f"\n\t({length - 48} more bytes after the header)")


def _ntp_control(p: Printer, off: int, length: int) -> None:
    if length < 12:
        p.w(" (invalid)")
        p.need(off, length)
        return
    control = p.u8(off + 1)
    p.w(f", {'Response' if control & 0x80 else 'Request'}, "
        f"{'Error' if control & 0x40 else 'OK'}, {'More' if control & 0x20 else 'Last'}, "
        f"OpCode={control & 0x1F}\n")
    p.w(f"\tSequence={p.u16(off + 2)}")  # (field by field: a cut one ends the line)
    status = p.u16(off + 4)
    p.w(f", Status={f'0x{status:x}' if status else '0'}")
    p.w(f", Assoc.={p.u16(off + 6)}")
    p.w(f", Offset={p.u16(off + 8)}")
    count = p.u16(off + 10)
    p.w(f", Count={count}")
    if 12 + count > length:
        p.w(" (invalid)")
        p.need(off, length)
        return
    if count:
        p.need(off + 12, count)
        p.w("\n\tTO-BE-DONE: data not interpreted")


def dhcp6(p: Printer, off: int, length: int) -> None:
    """DHCPv6's message type (`dhcp6 solicit`); at -v the transaction id (not the
    options tcpdump prints after it)."""
    p.proto = "dhcp6"
    p.w("dhcp6")
    p.need(off, 4)
    msg = p.buf[off]
    name = _DHCP6_MESSAGES.get(msg, f"msgtype-{msg}")
    if not p.v:
        p.w(f" {name}")
        return
    p.w(f" {name} (")
    if msg in (12, 13):
        p.w(f"linkaddr={p.ip6(off + 2)}")
        p.w(f" peeraddr={p.ip6(off + 18)}")
    else:
        p.w(f"xid={p.u32(off) & 0xFFFFFF:x}")
    p.w(")")


# -- HTTP's first line ------------------------------------------------------------------------
HTTP_COMMANDS = frozenset((
    "GET", "PUT", "COPY", "HEAD", "LOCK", "MOVE", "POLL", "POST", "BCOPY", "BMOVE", "MKCOL",
    "TRACE", "LABEL", "MERGE", "DELETE", "SEARCH", "UNLOCK", "REPORT", "UPDATE", "NOTIFY",
    "BDELETE", "CONNECT", "OPTIONS", "CHECKIN", "PROPFIND", "CHECKOUT", "CCM_POST",
    "SUBSCRIBE", "PROPPATCH", "BPROPFIND", "BPROPPATCH", "UNCHECKOUT", "MKACTIVITY",
    "MKWORKSPACE", "UNSUBSCRIBE", "RPC_CONNECT", "VERSION-CONTROL", "BASELINE-CONTROL"))


def _printable(c: int) -> bool:
    return 0x20 <= c < 0x7F


def _fetch_token(p: Printer, base: int, idx: int, ln: int) -> tuple[int, str]:
    tok = []
    while idx < ln:
        if not p.has(base + idx):
            return 0, ""
        c = p.buf[base + idx]
        if c >= 0x80:
            return 0, ""
        if c in (0x20, 0x09, 0x0D, 0x0A):
            break
        if not _printable(c) or len(tok) + 2 > 129:
            return 0, ""
        tok.append(chr(c))
        idx += 1
    if not tok:
        return 0, ""
    while idx < ln and p.has(base + idx):
        c = p.buf[base + idx]
        if c in (0x0D, 0x0A) or not _printable(c) or c not in (0x20, 0x09):
            break
        idx += 1
    return idx, "".join(tok)


def _txt_line(p: Printer, prefix: str, base: int, idx: int, ln: int) -> int:
    start = idx
    while idx < ln:
        c = p.u8(base + idx)
        if c == 0x0A:
            p.w(prefix + p.buf[base + start:base + idx].decode("ascii"))
            return idx + 1
        if c == 0x0D:
            if idx + 1 >= ln:
                return 0
            if p.u8(base + idx + 1) == 0x0A:
                p.w(prefix + p.buf[base + start:base + idx].decode("ascii"))
                return idx + 2
            return 0
        if not _printable(c) and c != 0x09:
            return 0
        idx += 1
    p.w(prefix + p.buf[base + start:base + idx].decode("ascii"))
    p.w(f" [|{p.proto}]")
    return 0


def http(p: Printer, off: int, length: int) -> None:
    """HTTP (txtproto_print): `HTTP: GET / HTTP/1.1` for a request or response line;
    at -v every text line, one a line."""
    p.proto = "http"
    show = False
    idx, tok = _fetch_token(p, off, 0, length)
    if idx:
        if tok.upper() in HTTP_COMMANDS:
            show = True
        idx, tok = _fetch_token(p, off, idx, length)
        if idx and len(tok) == 3 and tok.isdigit():
            show = True
    p.w("HTTP")
    if not show:
        return
    if p.v:
        p.w(f", length: {length}")
        idx = 0
        while idx < length:
            idx = _txt_line(p, "\n\t", off, idx, length)
            if not idx:
                break
    else:
        _txt_line(p, ": ", off, 0, length)
