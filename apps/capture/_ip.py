"""The network-layer printers of the decoder (apps/capture/decode.py), as tcpdump 4.99
words them: IPv4 with its -v header and options (print-ip.c), IPv6 with the hop-by-hop,
destination options and fragment headers (print-ip6.c, print-ip6opts.c, print-frag6.c),
the protocol demultiplexer (print-ip-demux.c) and IGMP (print-igmp.c). ICMP and ICMPv6
are in _icmp.py, TCP and UDP in _transport.py.

`ip(p, off, length)` and `ip6(p, off, length)` take the offset of the header in the frame
and the bytes the link says follow it.
"""

from __future__ import annotations

from apps.capture import _icmp, _transport
from apps.capture._printer import (
    LocalTruncated,
    Printer,
    Truncated,
    bits,
    cksum,
    relts,
    shouldbe,
)

IP_PROTOS = {0: "Options", 1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 8: "EGP", 9: "IGRP",
             17: "UDP", 33: "DCCP", 41: "IPv6", 43: "Routing", 44: "Fragment", 46: "RSVP",
             47: "GRE", 50: "ESP", 51: "AH", 55: "Mobile IP", 58: "ICMPv6",
             62: "Mobile IP (old)", 88: "EIGRP", 89: "OSPF", 103: "PIM",
             108: "Compressed IP", 112: "VRRP", 113: "PGM", 132: "SCTP", 135: "Mobility",
             143: "Ethernet"}
_NO_ADDRS = (6, 17, 33, 132)  # protocols whose printer puts the addresses with the ports
_IP_FRAG_FLAGS = ((0x2000, "+"), (0x4000, "DF"), (0x8000, "rsvd"))
_IP_OPTIONS = {0: "EOL", 1: "NOP", 68: "timestamp", 130: "security", 7: "RR", 137: "SSRR",
               131: "LSRR", 148: "RA", 82: "traceroute"}


# -- IPv4 -------------------------------------------------------------------------------------
def ip(p: Printer, off: int, length: int) -> None:
    """An IPv4 datagram (ip_print): `src > dst: ...`; at -v its header first,
    `(tos 0x0, ttl 64, id 1, offset 0, flags [DF], proto TCP (6), length 60)`."""
    p.enter("ip")
    version = p.u8(off) >> 4
    if version != 4:
        p.w(("IP6, wrong link-layer encapsulation" if version == 6 else f"IP{version}")
            + " (invalid)")
        return
    p.check(off, 20)
    if length < 20:
        p.w(f"truncated-ip {length}")
        return
    hlen = (p.buf[off] & 0x0F) * 4
    if hlen < 20:
        p.w(f"bad-hlen {hlen}")
        return
    total = p.u16(off + 2)
    if length < total:
        p.w(f"truncated-ip - {total - length} bytes missing! ")
    if total < hlen:
        p.w(f"bad-len {total}")
        return
    saved = p.limit(off + total)
    frag = p.u16(off + 6)
    proto = p.buf[off + 9]
    src, dst = p.ip4(off + 12), p.ip4(off + 16)
    if p.v:
        tos, ttl = p.buf[off + 1], p.buf[off + 8]
        p.w(f"(tos 0x{tos:x}{('', ',ECT(1)', ',ECT(0)', ',CE')[tos & 3]}")
        if ttl >= 1:
            p.w(f", ttl {ttl}")
        p.w(f", id {p.u16(off + 4)}, offset {(frag & 0x1FFF) * 8}, flags "
            f"[{bits(_IP_FRAG_FLAGS, frag)}], proto {IP_PROTOS.get(proto, 'unknown')} "
            f"({proto}), length {total}")
        cut = False
        if hlen > 20:
            p.w(", options (")
            if not _ip_options(p, off + 20, hlen - 20):
                p.w(" [truncated-option]")
                cut = True
            p.w(")")
        if off + hlen <= p.end:
            s = cksum(p.buf[off:off + hlen])
            if s:
                field = p.u16(off + 10)
                p.w(f", bad cksum {field:x} (->{shouldbe(field, s):x})!")
        p.w(")\n    ")
        if cut:
            p.w(f"{src} > {dst}: ")
            raise LocalTruncated
    if frag & 0x1FFF == 0:
        if proto not in _NO_ADDRS:
            p.w(f"{src} > {dst}: ")
        if not p.has(off, hlen):
            p.w(f" [remaining caplen({p.avail(off)}) < header length({hlen})]")
            raise Truncated
        demux(p, off + hlen, total - hlen, 4, bool(frag & 0x2000), proto, off)
    else:
        p.w(f"{src} > {dst}: ip-proto-{proto}")
    p.end = saved


def _ip_options(p: Printer, off: int, length: int) -> bool:
    """The -v list of IPv4 options (ip_optprint); False when it ran out of bytes."""
    sep = ""
    while length > 0:
        p.w(sep)
        sep = ","
        code = p.u8(off)
        p.w(_IP_OPTIONS.get(code, f"unknown {code}"))
        if code in (0, 1):
            opt_len = 1
        else:
            opt_len = p.u8(off + 1)
            if opt_len < 2:
                p.w(f" [bad length {opt_len}]")
                return True
        if opt_len > length:
            p.w(f" [bad length {opt_len}]")
            return True
        if not p.has(off, opt_len):
            return False
        if code == 0:
            return True
        if code in (7, 131, 137):  # RR LSRR SSRR: the addresses on the route
            if opt_len < 3:
                p.w(f" [bad length {opt_len}]")
            else:
                if (opt_len + 1) & 3:
                    p.w(f" [bad length {opt_len}]")
                ptr = (p.buf[off + 2] - 1) & 0xFFFFFFFF  # (unsigned, as tcpdump's)
                if ptr < 3 or (ptr + 1) & 3 or ptr > opt_len + 1:
                    p.w(f" [bad ptr {p.buf[off + 2]}]")
                for k in range(3, opt_len, 4):
                    if not p.has(off + k, 4):
                        return False
                    p.w(f" {p.ip4(off + k)}" + ("," if ptr > k else ""))
        elif code == 68:  # timestamp
            if not _ip_timestamps(p, off, opt_len):
                return False
        elif code == 148:  # router alert
            if opt_len < 4:
                p.w(f" [bad length {opt_len}]")
            elif p.u16(off + 2):
                p.w(f" value {p.u16(off + 2)}")
        off += opt_len
        length -= opt_len
    return True


def _ip_timestamps(p: Printer, cp: int, length: int) -> bool:
    """The timestamp option's hops (ip_printts); False when they were not captured."""
    if length < 4:
        p.w(f"[bad length {length}]")
        return True
    p.w(" TS{")
    flag = p.buf[cp + 3]
    hoplen = 8 if flag & 0x0F != 0 else 4
    if (length - 4) & (hoplen - 1):
        p.w(f"[bad length {length}]")
    ptr = (p.buf[cp + 2] - 1) & 0xFFFFFFFF
    if ptr < 4 or (ptr - 4) & (hoplen - 1) or ptr > length + 1:
        p.w(f"[bad ptr {p.buf[cp + 2]}]")
    kind = {0: "TSONLY", 1: "TS+ADDR", 3: "PRESPEC"}.get(flag & 0x0F)
    ln = 0
    if kind is None:
        p.w(f"[bad ts type {flag & 0x0F}]")
    else:
        p.w(kind)
        sep = " "
        for ln in range(4, length + hoplen, hoplen):
            if ln >= length:
                break
            if ptr == ln:
                sep = " ^ "
            if not p.has(cp + ln, hoplen):
                return False
            p.w(f"{sep}{p.u32(cp + ln + hoplen - 4)}@"
                + (p.ip4(cp + ln) if hoplen == 8 else ""))
            sep = " "
    p.w(" ^ " if ptr == ln else "")
    p.w(f" [{flag >> 4} hops not recorded]}} " if flag >> 4 else "}")
    return True


# -- the protocol demultiplexer ----------------------------------------------------------------
def demux(p: Printer, off: int, length: int, version: int, fragmented: bool, nh: int,
          ip_off: int) -> None:
    """What follows an IPv4 or IPv6 header (ip_demux_print)."""
    if nh == 6:
        _transport.tcp(p, off, length, ip_off, fragmented)
    elif nh == 17:
        _transport.udp(p, off, length, ip_off, fragmented)
    elif nh == 1:
        if version == 4:
            _icmp.icmp(p, off, length, ip_off, fragmented, ip)
        else:
            p.w("[ICMP requires IPv4] (invalid)")
    elif nh == 58:
        if version == 6:
            _icmp.icmp6(p, off, length, ip_off, fragmented)
        else:
            p.w("[ICMPv6 requires IPv6] (invalid)")
    elif nh == 2:
        if version == 4:
            igmp(p, off, length)
        else:
            p.w("[IGMP requires IPv4] (invalid)")
    elif nh == 4:
        ip(p, off, length)
    elif nh == 41:
        ip6(p, off, length)
    elif nh == 59:
        p.w("no next header")
    else:
        if nh in _NO_ADDRS:  # (SCTP, DCCP: tcpdump's own printers put these)
            if version == 4:
                p.w(f"{p.ip4(ip_off + 12)} > {p.ip4(ip_off + 16)}: ")
            else:
                p.w(f"{p.ip6(ip_off + 8)} > {p.ip6(ip_off + 24)}: ")
        p.w(f" ip-proto-{nh} {length}")


# -- IPv6 -------------------------------------------------------------------------------------
def ip6(p: Printer, off: int, length: int) -> None:
    """An IPv6 packet (ip6_print): `src > dst: ...`, extension headers on the way; at -v
    `(flowlabel 0x..., hlim 64, next-header TCP (6) payload length: 40) ` first."""
    p.enter("ip6")
    p.check(off, 40)
    if length < 40:
        p.w(f"truncated-ip6 {length}")
        return
    version = p.buf[off] >> 4
    if version != 6:
        p.w(f"version error: {version} != 6")
        return
    plen = p.u16(off + 4)
    if plen:
        total = plen + 40
        if length < total:
            p.w(f"truncated-ip6 - {total - length} bytes missing!")
    else:
        total = length + 40
    nh = p.buf[off + 6]
    if p.v:
        flow = p.u32(off)
        p.w("(")
        if flow & 0x0FF00000:
            p.w(f"class 0x{(flow & 0x0FF00000) >> 20:02x}, ")
        if flow & 0x000FFFFF:
            p.w(f"flowlabel 0x{flow & 0x000FFFFF:05x}, ")
        p.w(f"hlim {p.buf[off + 7]}, next-header {IP_PROTOS.get(nh, 'unknown')} ({nh}) "
            f"payload length: {plen}) ")
    saved = p.limit(off + total)
    try:
        _ip6_chain(p, off, length, total, plen, nh)
    finally:
        p.end = saved


def _ip6_chain(p: Printer, off: int, length: int, total: int, plen: int, nh: int) -> None:
    cp, advance, left = off, 40, total
    ph = 255
    found_ext = found_hbh = found_jumbo = fragmented = False
    while cp < p.end and advance > 0:
        if left < advance:
            raise Truncated
        cp += advance
        left -= advance
        if cp == off + 40 and nh not in _NO_ADDRS:
            p.w(f"{p.ip6(off + 8)} > {p.ip6(off + 24)}: ")
        if nh == 0:  # hop-by-hop options
            if found_hbh:
                p.w("[The Hop-by-Hop Options header was already found] (invalid)")
                return
            if ph != 255:
                p.w("[The Hop-by-Hop Options header don't follow the IPv6 header] (invalid)")
                return
            advance, jumbo = _options_header(p, cp, "hbhopt", "HBH ", plen)
            if jumbo is not None:
                found_jumbo, plen = True, jumbo
            if plen == 0 and not found_jumbo:
                p.w("[No valid Jumbo Payload Hop-by-Hop option found] (invalid)")
                return
            found_ext = found_hbh = True
        elif nh == 60:  # destination options
            advance, _ = _options_header(p, cp, "dstopt", "DSTOPT ", None)
            found_ext = True
        elif nh == 44:  # fragment
            advance = _frag6(p, cp, off)
            if advance < 0 or p.end <= cp + advance:
                return
            found_ext = fragmented = True
        else:
            if found_jumbo:
                left = (plen + 40) & 0xFFFFFFFF
                if left < cp - off:
                    raise Truncated
                if length < left:
                    p.w(f"truncated-ip6 - {left - length} bytes missing!")
                p.end = min(p.end, off + left)
                left -= cp - off
            elif plen == 0:
                if found_ext:
                    raise Truncated
                left = 0
                p.end = min(p.end, off + 40)
            demux(p, cp, left, 6, fragmented, nh, off)
            return
        nh = p.u8(cp)
        ph = nh
        p.proto = "ip6"


def _options_header(p: Printer, cp: int, proto: str, label: str,
                    payload_len: int | None) -> tuple[int, int | None]:
    """A hop-by-hop or destination options header (hbhopt_process, dstopt_process):
    its length, and the Jumbo Payload length it carried (valid ones only)."""
    p.proto = proto
    hlen = (p.u8(cp + 1) + 1) << 3
    p.need(cp, hlen)
    p.w(label)
    if proto == "dstopt" and not p.v:
        return hlen, None
    jumbo = _ip6_options(p, cp + 2, hlen - 2, payload_len)
    return hlen, jumbo


def _ip6_options(p: Printer, off: int, length: int, payload_len: int | None) -> int | None:
    """ip6_opt_process: the options, printed at -v; the valid Jumbo Payload length."""
    if length == 0:
        return None
    found = None
    seen_jumbo = False
    i = 0
    while i < length:
        t = p.u8(off + i)
        if t == 0:
            optlen = 1
        elif i + 1 < length:
            optlen = p.u8(off + i + 1) + 2
        else:
            raise Truncated
        if i + optlen > length:
            raise Truncated
        if t == 0:
            if p.v:
                p.w("(pad1)")
        elif t == 1:
            if length - i < 2:
                p.w("(padn: trunc)")
                raise Truncated
            if p.v:
                p.w("(padn)")
        elif t == 5:  # router alert
            if length - i < 4:
                p.w("(rtalert: trunc)")
                raise Truncated
            if p.u8(off + i + 1) != 2:
                p.w(f"(rtalert: invalid len {p.u8(off + i + 1)})")
                raise Truncated
            if p.v:
                p.w(f"(rtalert: 0x{p.u16(off + i + 2):04x}) ")
        elif t == 0xC2:  # jumbo payload
            if length - i < 6:
                p.w("(jumbo: trunc)")
                raise Truncated
            if p.u8(off + i + 1) != 4:
                p.w(f"(jumbo: invalid len {p.u8(off + i + 1)})")
                raise Truncated
            jlen = p.u32(off + i + 2)
            if seen_jumbo:
                why = " - already seen"
            elif payload_len is None:
                why = " - not a hop-by-hop option"
            elif payload_len != 0:
                why = " - payload len != 0"
            elif jlen < 65536:
                why = " - < 65536"
            else:
                why, found = "", jlen
            seen_jumbo = True
            if p.v:
                p.w(f"(jumbo: {jlen}{why}) ")
        elif t == 0xC9:  # home address
            if length - i < 18:
                p.w("(homeaddr: trunc)")
                raise Truncated
            if p.u8(off + i + 1) < 16:
                p.w(f"(homeaddr: invalid len {p.u8(off + i + 1)})")
                raise Truncated
            if p.v:
                p.w(f"(homeaddr: {p.ip6(off + i + 2)}")
                if p.u8(off + i + 1) > 16:
                    _ip6_sub_options(p, off + i + 18, optlen - 18)
                p.w(")")
        else:
            if length - i < 2:
                p.w(f"(type {t}: trunc)")
                raise Truncated
            if p.v:
                p.w(f"(opt_type 0x{t:02x}: len={p.u8(off + i + 1)})")
        i += optlen
    if p.v:
        p.w(" ")
    return found


def _ip6_sub_options(p: Printer, off: int, length: int) -> None:
    """The sub-options of a home address option (ip6_sopt_print)."""
    i = 0
    while i < length:
        t = p.u8(off + i)
        if t == 0:
            optlen = 1
        elif i + 1 < length:
            optlen = p.u8(off + i + 1) + 2
        else:
            raise Truncated
        if i + optlen > length:
            raise Truncated
        if t == 0:
            p.w(", pad1")
        elif length - i < 2:
            p.w(", padn: trunc" if t == 1 else f", sopt_type {t}: trunc)")
            raise Truncated
        elif t == 1:
            p.w(", padn")
        else:
            p.w(f", sopt_type 0x{t:02x}: len={p.u8(off + i + 1)}")
        i += optlen


def _frag6(p: Printer, cp: int, ip_off: int) -> int:
    """The fragment header (frag6_print): `frag (offset|length) `; -1 for a fragment
    after the first (nothing more can be decoded)."""
    p.proto = "frag6"
    offlg = p.u16(cp + 2)
    size = (40 + p.u16(ip_off + 4) - (cp - ip_off) - 8) & 0xFFFFFFFFFFFFFFFF  # (a size_t)
    if p.v:
        p.w(f"frag (0x{p.u32(cp + 4):08x}:{offlg & 0xFFF8}|{size})")
    else:
        p.w(f"frag ({offlg & 0xFFF8}|{size})")
    if offlg & 0xFFF8:
        return -1
    p.w(" ")
    return 8


# -- IGMP -------------------------------------------------------------------------------------
_GROUP_RECORDS = {1: "is_in", 2: "is_ex", 3: "to_in", 4: "to_ex", 5: "allow", 6: "block"}


def igmp(p: Printer, off: int, length: int) -> None:
    """IGMP (igmp_print): `igmp v3 report, 1 group record(s)`, `igmp query v2`..."""
    p.proto = "igmp"
    t = p.u8(off)
    if t == 0x11:
        p.w("igmp query")
        if length >= 12:
            _igmp3_query(p, off, length)
        else:
            mrt = p.u8(off + 1)
            if mrt:
                p.w(" v2" + (f" [max resp time {mrt}]" if mrt != 100 else ""))
            else:
                p.w(" v1")
            if p.u32(off + 4):
                p.w(f" [gaddr {p.ip4(off + 4)}]")
            if length != 8:
                p.w(f" [len {length}]")
    elif t == 0x12:
        p.w(f"igmp v1 report {p.ip4(off + 4)}" + (f" [len {length}]" if length != 8 else ""))
    elif t == 0x16:
        p.w(f"igmp v2 report {p.ip4(off + 4)}")
    elif t == 0x22:
        p.w("igmp v3 report")
        _igmp3_report(p, off, length)
    elif t == 0x17:
        p.w(f"igmp leave {p.ip4(off + 4)}")
    elif t == 0x13:
        p.w("igmp dvmrp" + (f" [len {length}]" if length < 8 else ""))  # (not decoded)
    elif t == 0x14:
        p.w("igmp pimv1")  # (not decoded)
    elif t in (0x1E, 0x1F):
        if length < 24:
            p.w(f" [invalid len {length}]")
        else:
            q = off + 8
            raddr = p.u32(q + 8)
            p.w(f"{'mresp' if t == 0x1E else 'mtrace'} {p.u32(q + 12) & 0xFFFFFF}: "
                f"{p.ip4(q)} to {p.ip4(q + 4)} reply-to {p.ip4(q + 8)}"
                + (f" with-ttl {p.u8(q + 12)}" if raddr >> 28 == 0xE else ""))
    else:
        p.w(f"igmp-{t}")
    if p.v and length >= 4 and p.has(off, length) and cksum(p.buf[off:off + length]):
        p.w(f" bad igmp cksum {p.u16(off + 2):x}!")


def _igmp3_report(p: Printer, off: int, length: int) -> None:
    if length < 16 or length & 3:
        p.w(f" [invalid len {length}]")
        return
    n = p.u16(off + 6)
    p.w(f", {n} group record(s)")
    if not p.v:
        return
    group = 8
    for _ in range(n):
        if length < group + 8:
            p.w(" [invalid number of groups]")
            return
        p.w(f" [gaddr {p.ip4(off + group + 4)}")
        kind = p.u8(off + group)
        p.w(" " + _GROUP_RECORDS.get(kind, f" [v3-report-#{kind}]"))
        nsrcs = p.u16(off + group + 2)
        if length < group + 8 + (nsrcs << 2):
            p.w(f" [invalid number of sources {nsrcs}]")
            return
        if p.v == 1:
            p.w(f", {nsrcs} source(s)")
        else:
            p.w(" {")
            for k in range(nsrcs):
                p.w(f" {p.ip4(off + group + 8 + 4 * k)}")
            p.w(" }")
        group += 8 + (nsrcs << 2)
        p.w("]")


def _igmp3_query(p: Printer, off: int, length: int) -> None:
    p.w(" v3")
    if length < 12 or length & 3:
        p.w(f" [invalid len {length}]")
        return
    mrc = p.u8(off + 1)
    mrt = mrc if mrc < 128 else ((mrc & 0x0F) | 0x10) << (((mrc & 0x70) >> 4) + 3)
    if mrc != 100:
        p.w(" [max resp time " + (f"{mrt * 0.1:.1f}s" if mrt < 600 else relts(mrt // 10))
            + "]")
    if p.u32(off + 4) == 0:
        return
    p.w(f" [gaddr {p.ip4(off + 4)}")
    nsrcs = p.u16(off + 10)
    if nsrcs:
        if length < 12 + (nsrcs << 2):
            p.w(" [invalid number of sources]")
        elif p.v > 1:
            p.w(" {")
            for k in range(nsrcs):
                p.w(f" {p.ip4(off + 12 + 4 * k)}")
            p.w(" }")
        else:
            p.w(f", {nsrcs} source(s)")
    p.w("]")
