"""ICMP and ICMPv6 as tcpdump 4.99 prints them (print-icmp.c, print-icmp6.c), for the
decoder (apps/capture/decode.py): echo, every unreachable code, redirects, time exceeded,
parameter problems, timestamps, router adverts; at -v a wrong checksum, the datagram an
error quotes (printed by the IPv4 printer the caller passes as `quote`) and its RFC 4884
extensions. ICMPv6: echo, errors, NDP (who has / tgt is, the options one a line at -v) and
MLDv1/v2.
"""

from __future__ import annotations

from collections.abc import Callable

from apps.capture._dns import fqdn
from apps.capture._printer import (
    LocalTruncated,
    Printer,
    Truncated,
    bits,
    cksum,
    hex_only,
    ip6_str,
    shouldbe,
)

# -- ICMP -------------------------------------------------------------------------------------
_ICMP_TYPES = {0: "echo reply", 4: "source quench", 8: "echo request",
               10: "router solicitation", 13: "time stamp request", 14: "time stamp reply",
               15: "information request", 16: "information reply",
               17: "address mask request"}
_UNREACH = {0: "net {} unreachable", 1: "host {} unreachable",
            5: "{} unreachable - source route failed", 6: "net {} unreachable - unknown",
            7: "host {} unreachable - unknown", 8: "{} unreachable - source host isolated",
            9: "net {} unreachable - admin prohibited",
            10: "host {} unreachable - admin prohibited",
            11: "net {} unreachable - tos prohibited",
            12: "host {} unreachable - tos prohibited",
            13: "host {} unreachable - admin prohibited filter",
            14: "host {} unreachable - host precedence violation",
            15: "host {} unreachable - precedence cutoff"}
_REDIRECT = {0: "redirect {} to net {}", 1: "redirect {} to host {}",
             2: "redirect-tos {} to net {}", 3: "redirect-tos {} to host {}"}
_ICMP_ERRORS = (3, 4, 5, 11, 12)


def _tstamp(ms: int) -> str:
    sec, msec = divmod(ms, 1000)
    mins, sec = divmod(sec, 60)
    hrs, mins = divmod(mins, 60)
    return f"{hrs:02d}:{mins:02d}:{sec:02d}.{msec:03d}"


def icmp(p: Printer, off: int, plen: int, ip_off: int, fragmented: bool,
         quote: Callable[[Printer, int, int], None]) -> None:
    """ICMP (icmp_print): `ICMP echo request, id 1, seq 2, length 64`; at -v the
    checksum when wrong and the datagram an error quotes (printed by `quote`, the IPv4
    printer: `quote(p, offset, length)`)."""
    p.proto = "icmp"
    t, code = p.u8(off), p.u8(off + 1)
    inner = off + 8  # the quoted IP header of an error
    if t in (0, 8):
        s = (f"echo {'request' if t == 8 else 'reply'}, id {p.u16(off + 4)}, "
             f"seq {p.u16(off + 6)}")
    elif t == 3:
        if code == 2:
            s = f"{p.ip4(inner + 16)} protocol {p.u8(inner + 9)} unreachable"
        elif code == 3:
            p.check(inner + 9)
            hl = (p.u8(inner) & 0x0F) * 4
            dport = p.u16(inner + hl + 2)
            proto = p.buf[inner + 9]
            dst = p.ip4(inner + 16)
            s = (f"{dst} tcp port {dport} unreachable" if proto == 6 else
                 f"{dst} udp port {dport} unreachable" if proto == 17 else
                 f"{dst} protocol {proto} port {dport} unreachable")
        elif code == 4:
            mtu = p.u16(off + 6)
            s = f"{p.ip4(inner + 16)} unreachable - need to frag" + (f" (mtu {mtu})"
                                                                   if mtu else "")
        elif code in _UNREACH:
            s = _UNREACH[code].format(p.ip4(inner + 16))
        else:
            s = f"{p.ip4(inner + 16)} unreachable - #{code}"
    elif t == 5:
        dst, gw = p.ip4(inner + 16), p.ip4(off + 4)
        s = (_REDIRECT[code].format(dst, gw) if code in _REDIRECT
             else f"redirect-#{code} {dst} to {gw}")
    elif t == 9:
        s = _router_advert(p, off)
    elif t == 11:
        p.check(inner + 16, 4)
        s = {0: "time exceeded in-transit", 1: "ip reassembly time exceeded"}.get(
            code, f"time exceeded-#{code}")
    elif t == 12:
        s = (f"parameter problem - code {code}" if code
             else f"parameter problem - octet {p.u8(off + 4)}")
    elif t == 18:
        s = f"address mask is 0x{p.u32(off + 8):08x}"
    elif t == 13:
        s = f"time stamp query id {p.u16(off + 4)} seq {p.u16(off + 6)}"
    elif t == 14:
        p.check(off + 16, 4)
        s = (f"time stamp reply id {p.u16(off + 4)} seq {p.u16(off + 6)}: org "
             f"{_tstamp(p.u32(off + 8))}, recv {_tstamp(p.u32(off + 12))}, "
             f"xmit {_tstamp(p.u32(off + 16))}")
    else:
        s = _ICMP_TYPES.get(t, f"type-#{t}")
    p.w(f"ICMP {s}, length {plen}")
    if p.v and not fragmented and p.has(off, plen):
        sm = cksum(p.buf[off:off + plen])
        if sm:
            field = p.u16(off + 2)
            p.w(f" (wrong icmp cksum {field:x} (->{shouldbe(field, sm):x})!)")
    if p.v and t in _ICMP_ERRORS:
        p.w("\n\t")
        saved = p.end
        p.end = min(inner + p.u16(inner + 2), p.end)
        try:
            quote(p, inner, p.u16(inner + 2))  # (read again within the new end, as tcpdump)
        except LocalTruncated:  # (that printer gave up; this one goes on)
            p.w(f" [|{p.proto}]")
        p.end = saved
    p.proto = "icmp"
    if p.v and t in (3, 11, 12) and plen > 136:
        _icmp_extensions(p, off, plen)


_EXT_OBJECTS = {1: "MPLS Stack Entry", 2: "Interface Identification"}


def _icmp_extensions(p: Printer, off: int, plen: int) -> None:
    """RFC 4884 multi-part extensions after 128 bytes of quoted datagram, at -v (tcpdump
    tries when the length field is set or the checksum over them holds)."""
    p.need(off, 141)
    ext = off + 136
    if p.buf[off + 5] == 0 and p.has(ext, plen - 136) and cksum(p.buf[ext:off + plen]):
        return
    version = p.buf[ext] >> 4
    p.w(f"\n\tICMP Multi-Part extension v{version}")
    if version != 2:
        p.w(" packet not supported")
        return
    hlen = plen - 136
    if p.has(ext, hlen):
        p.w(f", checksum 0x{p.u16(ext + 2):04x} "
            f"({'in' if cksum(p.buf[ext:ext + hlen]) else ''}correct), length {hlen}")
    hlen -= 4
    obj = ext + 4
    while hlen > 4:
        p.need(obj, 4)
        tlen, cls, ctype = p.u16(obj), p.buf[obj + 2], p.buf[obj + 3]
        obj += 4
        p.w(f"\n\t  {_EXT_OBJECTS.get(cls, 'unknown')} Object ({cls}), Class-Type: {ctype}, "
            f"length {tlen}")
        hlen -= 4
        if cls == 0 or tlen < 4:
            return
        tlen -= 4
        if cls == 1 and ctype == 1:
            raw = p.u32(obj)
            p.w(f"\n\t    label {raw >> 12}, tc {(raw >> 9) & 7}" + (", [S]" if raw & 0x100
                                                                   else "")
                + f", ttl {raw & 0xFF}")
        elif p.has(obj, 0):
            p.w(hex_only(p.buf[obj:min(obj + tlen, p.end)], "\n\t    "))
        else:
            p.w("\n\t    Dissector error: print_unknown_data called with pointer past end "
                "of packet")
        if hlen < tlen:
            break
        hlen -= tlen
        obj += tlen


def _router_advert(p: Printer, off: int) -> str:
    p.check(off + 4, 4)
    life = p.u16(off + 6)
    if life < 60:
        s = f"router advertisement lifetime {life}"
    elif life < 3600:
        s = f"router advertisement lifetime {life // 60}:{life % 60:02d}"
    else:
        s = (f"router advertisement lifetime {life // 3600}:{(life % 3600) // 60:02d}:"
             f"{life % 60:02d}")
    num, size = p.u8(off + 4), p.u8(off + 5)
    s += f" {num}:"
    if size != 2:
        return s + f" [size {size}]"
    for k in range(num):
        p.check(off + 8 + 8 * k, 8)
        s += f" {{{p.ip4(off + 8 + 8 * k)} {p.u32(off + 12 + 8 * k)}}}"
    return s


# -- ICMPv6 -----------------------------------------------------------------------------------
ICMP6_TYPES = {1: "destination unreachable", 2: "packet too big",
               3: "time exceeded in-transit", 4: "parameter problem", 128: "echo request",
               129: "echo reply", 130: "multicast listener query",
               131: "multicast listener report", 132: "multicast listener done",
               133: "router solicitation", 134: "router advertisement",
               135: "neighbor solicitation", 136: "neighbor advertisement", 137: "redirect",
               138: "router renumbering", 139: "who-are-you request",
               140: "who-are-you reply", 141: "inverse neighbor solicitation",
               142: "inverse neighbor advertisement", 143: "multicast listener report v2",
               144: "ha discovery request", 145: "ha discovery reply",
               146: "mobile router solicitation", 147: "mobile router advertisement",
               200: "mtrace response", 201: "mtrace message", 155: "RPL"}
_UNREACH6 = {0: "unreachable route", 1: " unreachable prohibited", 2: "beyond scope",
             3: "unreachable address", 4: "unreachable port"}
_ND_OPTS = {1: "source link-address", 2: "destination link-address", 3: "prefix info",
            4: "redirected header", 5: "mtu", 25: "rdnss", 31: "dnssl",
            7: "advertisement interval", 8: "homeagent information", 24: "route info"}
_RA_FLAGS = ((0x80, "managed"), (0x40, "other stateful"), (0x20, "home agent"),
             (0x02, "ipv6 only"))
_NA_FLAGS = ((0x80000000, "router"), (0x40000000, "solicited"), (0x20000000, "override"))
_PI_FLAGS = ((0x80, "onlink"), (0x40, "auto"), (0x20, "router"))
_MLD2_RECORDS = {1: "is_in", 2: "is_ex", 3: "to_in", 4: "to_ex", 5: "allow", 6: "block"}
_WITH_LENGTH_AT_V = (133, 134, 135, 136, 137, 145, 147)


def _rtpref(v: int) -> str:
    return ("medium", "high", "rsv", "low")[(v & 0x18) >> 3]


def _lifetime(v: int) -> str:
    return "infinity" if v == 0xFFFFFFFF else f"{v}s"


def icmp6_checksum(p: Printer, off: int, length: int, ip_off: int, proto: int) -> int:
    """The checksum over the IPv6 pseudo-header and `length` bytes at `off`: 0 when
    right (nextproto6_cksum)."""
    pseudo = (p.buf[ip_off + 8:ip_off + 40] + length.to_bytes(4, "big")
              + bytes((0, 0, 0, proto)))
    return cksum(pseudo + p.buf[off:off + length])


def icmp6(p: Printer, off: int, length: int, ip_off: int, fragmented: bool) -> None:
    """ICMPv6 (icmp6_print): `ICMP6, echo request, id 5, seq 1, length 64`,
    `ICMP6, neighbor solicitation, who has fe80::1, length 32`; at -v the checksum and
    the NDP options, one a line."""
    p.proto = "icmp6"
    if length == 0:
        p.w("ICMP6, length 0 (invalid)")
        return
    if p.v and not fragmented and p.has(off, length):
        s = icmp6_checksum(p, off, length, ip_off, 58)
        field = p.u16(off + 2)
        p.w(f"[bad icmp6 cksum 0x{field:04x} -> 0x{shouldbe(field, s):04x}!] " if s
            else "[icmp6 sum ok] ")
    t = p.u8(off)
    p.w(f"ICMP6, {ICMP6_TYPES.get(t, f'unknown icmp6 type ({t})')}")
    if p.v and t in _WITH_LENGTH_AT_V:
        p.w(f", length {length}")
    code = p.u8(off + 1)
    oip = off + 8  # the quoted IPv6 header of an error
    if t == 1:
        p.w(", " + _UNREACH6.get(code, f"unknown unreach code ({code})"))
        if code in (0, 1, 3):
            p.w(f" {p.ip6(oip + 24)}")
        elif code == 2:
            p.w(f" {p.ip6(oip + 24)}, source address {p.ip6(oip + 8)}")
        elif code == 4:
            got = _upper_layer(p, oip)
            if got is None:
                raise Truncated
            proto, uh = got
            dport = p.u16(uh + 2)
            dst = p.ip6(oip + 24)
            p.w(f", {dst} tcp port {dport}" if proto == 6 else
                f", {dst} udp port {dport}" if proto == 17 else
                f", {dst} protocol {proto} port {dport} unreachable")
        elif p.v <= 1:
            p.w(hex_only(p.buf[off:min(off + length, p.end)]))
            return
    elif t == 2:
        p.w(f", mtu {p.u32(off + 4)}")
    elif t == 3:
        if code == 0:
            p.w(f" for {p.ip6(oip + 24)}")
        elif code == 1:
            p.w(" (reassembly)")
        else:
            p.w(f", unknown code ({code})")
    elif t == 4:
        p.need(oip + 24, 16)
        what = {0: "erroneous", 1: "next header", 2: "option",
                3: "incomplete header chain"}.get(code)
        p.w(f", {what} - octet {p.u32(off + 4)}" if what else f", code-#{code}")
    elif t in (128, 129):
        p.w(f", id {p.u16(off + 4)}, seq {p.u16(off + 6)}")
    elif t == 130:
        if length == 24:
            _mld(p, off)
        elif length >= 28:
            p.w(" v2")
            _mld2_query(p, off, length)
        else:
            p.w(f" unknown-version (len {length}) ")
    elif t in (131, 132):
        _mld(p, off)
    elif t == 133:
        if p.v:
            _nd_options(p, off + 8, length - 8)
    elif t == 134:
        if p.v:
            fl = p.u8(off + 5)
            p.w(f"\n\thop limit {p.u8(off + 4)}, Flags [{bits(_RA_FLAGS, fl)}], pref "
                f"{_rtpref(fl)}, router lifetime {p.u16(off + 6)}s, reachable time "
                f"{p.u32(off + 8)}ms, retrans timer {p.u32(off + 12)}ms")
            _nd_options(p, off + 16, length - 16)
    elif t == 135:
        p.w(f", who has {p.ip6(off + 8)}")
        if p.v:
            _nd_options(p, off + 24, length - 24)
    elif t == 136:
        p.w(f", tgt is {p.ip6(off + 8)}")
        if p.v:
            p.w(f", Flags [{bits(_NA_FLAGS, p.u32(off + 4))}]")
            _nd_options(p, off + 24, length - 24)
    elif t == 137:
        p.w(f", {p.ip6(off + 24)} to {p.ip6(off + 8)}")  # destination, then target
        if p.v:
            _nd_options(p, off + 40, length - 40)
    elif t == 143:
        _mld2_report(p, off, length)
    elif t in (144, 146):
        p.w(f", id 0x{p.u16(off + 4):04x}")
    elif t in (138, 139, 140, 141, 142, 145, 147, 155):
        pass  # (router renumbering, node information, home agent, RPL: not decoded)
    else:
        p.w(f", length {length}")
        if p.v <= 1:
            p.w(hex_only(p.buf[off:min(off + length, p.end)]))
        return
    if not p.v:
        p.w(f", length {length}")


def _upper_layer(p: Printer, oip: int) -> tuple[int, int] | None:
    """The protocol and offset of the TCP/UDP header in a quoted IPv6 packet
    (get_upperlayer), through its extension headers; None when not there."""
    if not p.has(oip + 6):
        return None
    nh = p.buf[oip + 6]
    cp, hlen = oip, 40
    while cp < p.end:
        cp += hlen
        if nh in (6, 17):
            return (nh, cp) if p.has(cp + 2, 2) else None
        if nh in (0, 60, 43):
            if not p.has(cp + 1):
                return None
            nh, hlen = p.buf[cp], (p.buf[cp + 1] + 1) << 3
        elif nh == 44:
            if not p.has(cp + 2, 2) or p.u16(cp + 2) & 0xFFF8:
                return None
            nh, hlen = p.buf[cp], 8
        elif nh == 51:
            if not p.has(cp + 1):
                return None
            nh, hlen = p.buf[cp], (p.buf[cp + 1] + 2) << 2
        else:
            return None
    return None


def _mld(p: Printer, off: int) -> None:
    if off + 24 > p.end:
        return
    p.w(f"max resp delay: {p.u16(off + 4)} addr: {p.ip6(off + 8)}")


def _mld2_report(p: Printer, off: int, length: int) -> None:
    if length < 8:
        p.w(f" [invalid len {length}]")
        return
    n = p.u16(off + 6)
    p.w(f", {n} group record(s)")
    if not p.v:
        return
    group = 8
    for _ in range(n):
        if length < group + 20:
            p.w(" [invalid number of groups]")
            return
        p.w(f" [gaddr {p.ip6(off + group + 4)}")
        kind = p.u8(off + group)
        p.w(" " + _MLD2_RECORDS.get(kind, f" [v2-report-#{kind}]"))
        nsrcs = p.u16(off + group + 2)
        if length < group + 20 + 16 * nsrcs:
            p.w(f" [invalid number of sources {nsrcs}]")
            return
        if p.v == 1:
            p.w(f", {nsrcs} source(s)")
        else:
            p.w(" {")
            for k in range(nsrcs):
                p.w(f" {p.ip6(off + group + 20 + 16 * k)}")
            p.w(" }")
        group += 20 + 16 * nsrcs
        p.w("]")


def _mld2_query(p: Printer, off: int, length: int) -> None:
    if length < 28:
        p.w(f" [invalid len {length}]")
        return
    mrc = p.u16(off + 4)
    mrt = mrc if mrc < 32768 else ((mrc & 0x0FFF) | 0x1000) << (((mrc & 0x7000) >> 12) + 3)
    if p.v:
        p.w(f" [max resp delay={mrt}]")
    p.w(f" [gaddr {p.ip6(off + 8)}")
    if p.v:
        b24, b25 = p.u8(off + 24), p.u8(off + 25)
        if b24 & 0x08:
            p.w(" sflag")
        if b24 & 0x07:
            p.w(f" robustness={b24 & 0x07}")
        qqi = b25 if b25 < 128 else ((b25 & 0x0F) | 0x10) << (((b25 & 0x70) >> 4) + 3)
        p.w(f" qqi={qqi}")
    nsrcs = p.u16(off + 26)
    if nsrcs:
        if length < 28 + 16 * nsrcs:
            p.w(" [invalid number of sources]")
        elif p.v > 1:
            p.w(" {")
            for k in range(nsrcs):
                p.w(f" {p.ip6(off + 28 + 16 * k)}")
            p.w(" }")
        else:
            p.w(f", {nsrcs} source(s)")
    p.w("]")


def _nd_options(p: Printer, cp: int, resid: int) -> None:
    """The NDP options, one a line (icmp6_opt_print)."""
    start = cp
    while cp < p.end:
        p.need(cp + 1)
        if resid <= 0:
            return
        t, n = p.buf[cp], p.buf[cp + 1]
        if n == 0 or cp + (n << 3) > p.end:
            raise Truncated
        p.w(f"\n\t  {_ND_OPTS.get(t, 'unknown')} option ({t}), length {n << 3} ({n}): ")
        if t in (1, 2):
            p.w(p.buf[cp + 2:cp + (n << 3)].hex(":"))
        elif t == 3:
            p.w(f"{p.ip6(cp + 16)}/{p.u8(cp + 2)}{'badlen' if n != 4 else ''}, Flags "
                f"[{bits(_PI_FLAGS, p.u8(cp + 3))}], valid time {_lifetime(p.u32(cp + 4))}"
                f", pref. time {_lifetime(p.u32(cp + 8))}")
        elif t == 4:
            p.w(hex_only(p.buf[start:min(start + (n << 3), p.end)], "\n\t    "))
        elif t == 5:
            p.w(f" {p.u32(cp + 4)}{'bad option length' if n != 1 else ''}")
        elif t == 25:
            p.w(f" lifetime {p.u32(cp + 4)}s,"
                + "".join(f" addr: {p.ip6(cp + 8 + 16 * k)}" for k in range((n - 1) // 2)))
        elif t == 31:
            p.w(f" lifetime {p.u32(cp + 4)}s, domain(s):")
            dom = cp + 8
            while dom < cp + (n << 3) and p.u8(dom) != 0:
                p.w(" ")
                dom = fqdn(p, dom, start)
                if dom is None:
                    raise Truncated
        elif t == 7:
            p.w(f" {p.u32(cp + 4)}ms")
        elif t == 8:
            p.w(f" preference {p.u16(cp + 4)}, lifetime {p.u16(cp + 6)}")
        elif t == 24:
            p.need(cp + 4, 4)
            if n not in (1, 2, 3):
                raise Truncated
            prefix = (p.take(cp + 8, 8 * (n - 1)) + bytes(16))[:16]
            p.w(f" {ip6_str(prefix)}/{p.u8(cp + 2)}, pref={_rtpref(p.u8(cp + 3))}, "
                f"lifetime={_lifetime(p.u32(cp + 4))}")
        elif p.v <= 1:
            p.w(hex_only(p.buf[cp + 2:min(cp + (n << 3), p.end)], "\n\t  "))
            return
        if p.v > 1:
            p.w(hex_only(p.buf[cp + 2:min(cp + (n << 3), p.end)], "\n\t    "))
        cp += n << 3
        resid -= n << 3
