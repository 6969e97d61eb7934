"""DNS as tcpdump 4.99 prints it (print-domain.c), for the decoder (apps/capture/decode.py):
`ID+ A? name. (len)` for a query, `ID 1/0/0 A 1.2.3.4 (len)` for a response with its
flags and rcode (the extended one of an OPT record included), the answers' names at -v,
the question and the authority and additional sections at -vv, TTLs at -vvv; names
through compression pointers (backwards only), EDNS options, and mDNS's QU/cache-flush
bits. `fqdn` also prints the names NDP's DNSSL option carries.
"""

from __future__ import annotations

from apps.capture._printer import Printer, Truncated, ip4_str, ip6_str, relts

# -- names, questions, records --------------------------------------------------------------------------------------
_NS_OPS = ("", " inv_q", " stat", " op3", " notify", " update", " op6", " op7", " op8",
           " updateA", " updateD", " updateDA", " updateM", " updateMA", " zoneInit",
           " zoneRef")
_NS_RESP = ("", " FormErr", " ServFail", " NXDomain", " NotImp", " Refused", " YXDomain",
            " YXRRSet", " NXRRSet", " NotAuth", " NotZone", " Resp11", " Resp12", " Resp13",
            " Resp14", " NoChange", " BadVers", "Resp17", " Resp18", " Resp19", " Resp20",
            "Resp21", " Resp22", " BadCookie")
NS_TYPES = {1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG",
            9: "MR", 10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX",
            16: "TXT", 17: "RP", 18: "AFSDB", 19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP",
            23: "NSAP_PTR", 24: "SIG", 25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC",
            30: "NXT", 31: "EID", 32: "NIMLOC", 33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX",
            37: "CERT", 38: "A6", 39: "DNAME", 40: "SINK", 41: "OPT", 42: "APL", 43: "DS",
            44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 99: "SPF",
            100: "UINFO", 101: "UID", 102: "GID", 103: "UNSPEC", 104: "UNSPECA",
            249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA",
            255: "ANY", 256: "URI"}
_NS_CLASSES = {1: "IN", 3: "CHAOS", 4: "HS", 255: "ANY"}
_EDNS_OPTS = {1: "LLQ", 2: "UL", 3: "NSID", 5: "DAU", 6: "DHU", 7: "N3U", 8: "ECS",
              9: "EXPIRE", 10: "COOKIE", 11: "KEEPALIVE", 12: "PADDING", 13: "CHAIN",
              14: "KEY-TAG", 16: "CLIENT-TAG", 17: "SERVER-TAG"}
_DAU = {0: "DELETE", 1: "RSAMD5", 2: "DH", 3: "DS", 5: "RSASHA1", 6: "DSA-NSEC3-SHA1",
        7: "RSASHA1-NSEC3-SHA1", 8: "RSASHA256", 10: "RSASHA512", 12: "ECC-GOST",
        13: "ECDSAP256SHA256", 14: "ECDSAP384SHA384", 15: "ED25519", 16: "ED448",
        252: "INDIRECT", 253: "PRIVATEDNS", 254: "PRIVATEOID"}
_DHU = {1: "SHA-1", 2: "SHA-256", 3: "GOST_R_34.11-94", 4: "SHA-384"}
_N3U = {1: "SHA-1"}
_T_OPT = 41
_MAXCDNAME = 255
_INVALID = " (invalid)"


def _type(t: int) -> str:
    return NS_TYPES.get(t, f"Type{t}")


def _class(c: int) -> str:
    return _NS_CLASSES.get(c, f"(Class {c})")


def _nskip(p: Printer, cp: int) -> int | None:
    """Past a domain name (ns_nskip); None when it is not all there or malformed."""
    if not p.has(cp):
        return None
    i = p.buf[cp]
    cp += 1
    while i:
        kind = i & 0xC0
        if kind == 0xC0:
            return cp + 1
        if kind == 0x40:
            if i & 0x3F != 1 or not p.has(cp):
                return None
            cp += 1 + ((p.buf[cp] or 256) + 7) // 8
        elif kind == 0x80:
            return None
        else:
            cp += i
        if not p.has(cp):
            return None
        i = p.buf[cp]
        cp += 1
    return cp


def _labellen(p: Printer, cp: int) -> int:
    if not p.has(cp):
        return -1
    i = p.buf[cp]
    kind = i & 0xC0
    if kind == 0x40:
        elt = i & 0x3F
        if elt != 1:
            p.w(f"<ELT {elt}>")
            return -1
        if not p.has(cp + 1):
            return -1
        return ((p.buf[cp + 1] or 256) + 7) // 8 + 1
    if kind in (0x00, 0xC0):
        return i
    p.w("<BAD LABEL TYPE>")
    return -1


def _blabel(p: Printer, cp: int) -> int | None:
    """An EDNS0 bit-string label (RFC 2673) as \\[x.../bits]."""
    if not p.has(cp):
        return None
    bitlen = p.buf[cp] or 256
    lim = cp + 1 + (bitlen + 3) // 4
    p.w("\\[x")
    bitp, b = cp + 1, bitlen
    while bitp < lim and b > 7:
        p.w(f"{p.u8(bitp):02x}")
        b -= 8
        bitp += 1
    if b > 4:
        p.w(f"{p.u8(bitp) & (0xFF << (8 - b)) & 0xFF:02x}")
    elif b > 0:
        p.w(f"{((p.u8(bitp) >> 4) & 0x0F) & (0x0F << (4 - b)) & 0x0F:1x}")
    p.w(f"/{bitlen}]")
    return lim


def fqdn(p: Printer, cp: int, bp: int) -> int | None:
    """Print the domain name at `cp` of the message at `bp`, following compression
    pointers (backwards only, as BIND); returns the offset after the name, or None."""
    l = _labellen(p, cp)  # noqa: E741  (tcpdump's names)
    if l == -1 or not p.has(cp):
        return None
    max_offset = cp - bp
    i = p.buf[cp]
    cp += 1
    compress = False
    # where the name ends (None until known: a pointer first, never followed, is no end)
    rp: int | None = cp + l if i & 0xC0 != 0xC0 else None
    if i == 0:
        p.w(".")
        return rp
    name_chars = 0
    while i and cp < p.end:
        kind = i & 0xC0
        if kind == 0xC0:
            if not compress:
                rp = cp + 1
                compress = True
            if not p.has(cp):
                return None
            offset = ((i << 8) | p.buf[cp]) & 0x3FFF
            if offset >= max_offset:
                p.w("<BAD PTR>")
                return None
            max_offset = offset
            cp = bp + offset
            if not p.has(cp):
                return None
            i = p.buf[cp]
            l = _labellen(p, cp)  # noqa: E741
            if l == -1:
                return None
            cp += 1
            continue
        if kind == 0x40:
            if i & 0x3F != 1:
                p.w(f"<ELT {i & 0x3F}>")
                return None
            if _blabel(p, cp) is None:
                return None
        elif kind == 0x80:
            p.w("<BAD LABEL TYPE>")
            return None
        else:
            if name_chars + l <= _MAXCDNAME:
                if p.printn(cp, l):
                    return None
            elif name_chars < _MAXCDNAME and p.printn(cp, _MAXCDNAME - name_chars):
                return None
            name_chars += l
        cp += l
        if name_chars <= _MAXCDNAME:
            p.w(".")
        name_chars += 1
        if not p.has(cp):
            return None
        i = p.buf[cp]
        l = _labellen(p, cp)  # noqa: E741
        if l == -1:
            return None
        cp += 1
        if not compress and rp is not None:
            rp += l + 1
    if name_chars > _MAXCDNAME:
        p.w("<DOMAIN NAME TOO LONG>")
    return rp


def _qprint(p: Printer, cp: int, bp: int, mdns: bool) -> int | None:
    np = cp
    cp = _nskip(p, cp)
    if cp is None or not p.has(cp, 4):
        return None
    p.w(f" {_type(p.u16(cp))}")
    i = p.u16(cp + 2)
    cls = i & 0x7FFF if mdns else i
    if cls != 1:
        p.w(f" {_class(cls)}")
    if mdns:
        p.w(" (QU)" if i & 0x8000 else " (QM)")
    p.w("? ")
    end = fqdn(p, np, bp)
    return None if end is None else end + 4


def _cprint(p: Printer, cp: int) -> int | None:
    if not p.has(cp):
        return None
    n = p.buf[cp]
    if p.printn(cp + 1, n):
        return None
    return cp + 1 + n


def _rprint(p: Printer, cp: int, bp: int, mdns: bool) -> int | None:
    """One resource record (ns_rprint): its type and data (its name at -v, its TTL at
    -vvv); the offset after it, or None."""
    if p.v:
        p.w(" ")
        cp = fqdn(p, cp, bp)
        if cp is None:
            return None
    else:
        cp = _nskip(p, cp)
    if cp is None or not p.has(cp, 10):
        return p.end
    typ = p.u16(cp)
    i = p.u16(cp + 2)
    cp += 4
    cls = i & 0x7FFF if mdns else i
    if cls != 1 and typ != _T_OPT:
        p.w(f" {_class(cls)}")
    if mdns and i & 0x8000:
        p.w(" (Cache flush)")
    opt_flags = 0
    if typ == _T_OPT:
        opt_flags = p.u16(cp + 2)
    elif p.v > 2:
        p.w(f" [{relts(p.u32(cp))}]")
    cp += 4
    ln = p.u16(cp)
    cp += 2
    rp = cp + ln
    p.w(f" {_type(typ)}")
    if rp > p.end:
        return None
    if typ == 1:
        if not p.has(cp, 4):
            return None
        p.w(f" {p.ip4(cp)}")
    elif typ in (2, 5, 12, 39):  # NS CNAME PTR DNAME
        p.w(" ")
        if fqdn(p, cp, bp) is None:
            return None
    elif typ == 6:  # SOA
        if p.v:
            p.w(" ")
            cp = fqdn(p, cp, bp)
            if cp is None:
                return None
            p.w(" ")
            cp = fqdn(p, cp, bp)
            if cp is None or not p.has(cp, 20):
                return None
            p.w("".join(f" {p.u32(cp + 4 * k)}" for k in range(5)))
    elif typ == 15:  # MX
        p.w(" ")
        if not p.has(cp, 2) or fqdn(p, cp + 2, bp) is None:
            return None
        p.w(f" {p.u16(cp)}")
    elif typ == 16:  # TXT
        while cp < rp:
            p.w(' "')
            cp = _cprint(p, cp)
            if cp is None:
                return None
            p.w('"')
    elif typ == 33:  # SRV
        p.w(" ")
        if not p.has(cp, 6) or fqdn(p, cp + 6, bp) is None:
            return None
        p.w(f":{p.u16(cp + 4)} {p.u16(cp)} {p.u16(cp + 2)}")
    elif typ == 28:  # AAAA
        if not p.has(cp, 16):
            return None
        p.w(f" {p.ip6(cp)}")
    elif typ == 38:  # A6
        if not p.has(cp):
            return None
        pbit = p.buf[cp]
        pbyte = (pbit & ~7) // 8
        if pbit > 128:
            p.w(f" {pbit}(bad plen)")
            return rp
        if pbit < 128:
            a = bytes(pbyte) + p.take(cp + 1, 16 - pbyte)
            p.w(f" {pbit} {ip6_str(a)}")
        if pbit > 0:
            p.w(" ")
            if fqdn(p, cp + 1 + 16 - pbyte, bp) is None:
                return None
    elif typ == 256:  # URI
        if not p.has(cp, ln):
            return None
        p.w(f" {p.u16(cp)} {p.u16(cp + 2)} ")
        if p.printn(cp + 4, ln - 4 if ln >= 4 else 1 << 32):
            return None
    elif typ == _T_OPT:
        p.w(f" UDPsize={cls}")
        if opt_flags & 0x8000:
            p.w(" DO")
        if cp < rp:
            p.w(" [")
            while cp < rp:
                cp = _eopt(p, cp)
                if cp is None:
                    return None
                if cp < rp:
                    p.w(",")
            p.w("]")
    elif typ == 104:  # UNSPECA
        if not p.has(cp, ln) or p.printn(cp, ln):
            return None
    elif typ == 250:  # TSIG
        if cp + ln > p.end:
            return None
        if p.v:
            p.w(" ")
            cp = fqdn(p, cp, bp)
            if cp is None:
                return None
            cp += 6
            for name in ("fudge", "maclen", "origid", "error", "otherlen"):
                if not p.has(cp, 2):
                    return None
                value = p.u16(cp)
                p.w(f" {name}={value}")
                cp += 2 + (value if name == "maclen" else 0)
    return rp


def _eopt(p: Printer, cp: int) -> int | None:
    """One EDNS option (eopt_print)."""
    if not p.has(cp, 2):
        return None
    opt = p.u16(cp)
    p.w(_EDNS_OPTS.get(opt, f"Opt{opt}"))
    if not p.has(cp + 2, 2):
        return None
    dl = p.u16(cp + 2)
    cp += 4
    if not p.has(cp, dl):
        return None
    if dl:
        p.w(" ")
        data = p.buf[cp:cp + dl]
        if opt == 8:  # ECS
            p.w(_ecs(data))
        elif opt == 10:  # COOKIE
            if dl < 8 or 8 < dl < 16 or dl > 40:
                p.w(_INVALID)
            else:
                p.w(data[:8].hex() + (" " + data[8:].hex() if dl > 8 else ""))
        elif opt == 11:  # KEEPALIVE
            p.w(_INVALID if dl != 2 else f"{int.from_bytes(data, 'big') / 10.0:.1f} sec")
        elif opt == 9:  # EXPIRE
            p.w(_INVALID if dl != 4 else f"{int.from_bytes(data, 'big')} sec")
        elif opt == 12:  # PADDING
            p.w(f"({dl})")
        elif opt == 14:  # KEY-TAG
            p.w(_INVALID if dl % 2 else " ".join(str(int.from_bytes(data[k:k + 2], "big"))
                                                  for k in range(0, dl, 2)))
        elif opt in (5, 6, 7):  # DAU DHU N3U
            names = {5: _DAU, 6: _DHU, 7: _N3U}[opt]
            p.w(" ".join(names.get(a, f"Alg_{a}") for a in data))
        elif opt == 13:  # CHAIN
            fqdn(p, cp, cp + dl)
        else:
            p.w(data.hex())
    return cp + dl


def _ecs(data: bytes) -> str:
    if len(data) < 4:
        return _INVALID
    family = int.from_bytes(data[:2], "big")
    src_len, scope_len = data[2], data[3]
    bits_ = {1: 32, 2: 128}.get(family)
    if (bits_ is None or len(data) - 4 > bits_ // 8 or src_len > bits_ or scope_len > bits_
            or (src_len + 7) // 8 != len(data) - 4):
        return _INVALID
    addr = (data[4:] + bytes(bits_ // 8))[:bits_ // 8]
    return f"{ip4_str(addr) if family == 1 else ip6_str(addr)}/{src_len}/{scope_len}"


def domain(p: Printer, off: int, length: int, over_tcp: bool = False,
           mdns: bool = False) -> None:
    """A DNS message (domain_print): `ID+ A? name. (len)` for a query,
    `ID 1/0/0 A 1.2.3.4 (len)` for a response, with the question at -vv."""
    p.proto = "domain"
    if over_tcp:
        if length < 2:
            p.w(f" [DNS over TCP: length {length} < 2]{_INVALID}")
            return
        length -= 2
        prefix = p.u16(off)
        if prefix != length:
            p.w(f" [prefix length({prefix}) != length({length})]{_INVALID}")
            return
        off += 2
        p.w(" ")
    if length < 12:
        p.w(f"domain [length {length} < 12]{_INVALID}")
        return
    p.need(off, 12)
    np = off
    flags = p.u16(off + 2)
    qd, an, ns, ar = (p.u16(off + 4), p.u16(off + 6), p.u16(off + 8), p.u16(off + 10))
    rcode = _extended_rcode(p, np, flags, qd, an, ns, ar)
    cp = np + 12
    if flags & 0x8000:  # a response
        p.w(f"{p.u16(np)}{_NS_OPS[(flags >> 11) & 0xF]}"
            f"{_NS_RESP[rcode] if rcode < len(_NS_RESP) else f' Resp{rcode & 0xFFF}'}"
            f"{'*' if flags & 0x0400 else ''}{'' if flags & 0x0080 else '-'}"
            f"{'|' if flags & 0x0200 else ''}{'$' if flags & 0x0020 else ''}")
        if qd != 1:
            p.w(f" [{qd}q]")
        for k in range(qd):
            if k:
                p.w(",")
            if p.v > 1:
                p.w(" q:")
                cp = _qprint(p, cp, np, mdns)
            else:
                cp = _nskip(p, cp)
                if cp is not None:
                    cp += 4
            if cp is None:
                raise Truncated
        p.w(f" {an}/{ns}/{ar}")
        _records(p, cp, np, mdns, an, ns, ar, verbose_rest=p.v > 1)
    else:
        p.w(f"{p.u16(np)}{_NS_OPS[(flags >> 11) & 0xF]}{'+' if flags & 0x0100 else ''}"
            f"{'%' if flags & 0x0010 else ''}")
        if flags & 0x6CF:
            p.w(f" [b2&3=0x{flags:x}]")
        if (flags >> 11) & 0xF == 1:  # IQUERY
            if qd:
                p.w(f" [{qd}q]")
            if an != 1:
                p.w(f" [{an}a]")
        else:
            if an:
                p.w(f" [{an}a]")
            if qd != 1:
                p.w(f" [{qd}q]")
        if ns:
            p.w(f" [{ns}n]")
        if ar:
            p.w(f" [{ar}au]")
        if qd:
            cp = _qprint(p, cp, np, mdns)
            if cp is None:
                raise Truncated
            qd -= 1
            while cp < p.end and qd:
                cp = _qprint(p, cp, np, mdns)
                if cp is None:
                    raise Truncated
                qd -= 1
        if qd:
            raise Truncated
        if p.v > 1:
            _records(p, cp, np, mdns, an, ns, ar)
    p.w(f" ({length})")


def _records(p: Printer, cp: int, np: int, mdns: bool, an: int, ns: int, ar: int,
             verbose_rest: bool = True) -> None:
    """The answer section, then (when `verbose_rest`) ` ns:` and ` ar:` sections."""
    if an:
        cp = _rprint(p, cp, np, mdns)
        if cp is None:
            raise Truncated
        an -= 1
        while cp < p.end and an:
            p.w(",")
            cp = _rprint(p, cp, np, mdns)
            if cp is None:
                raise Truncated
            an -= 1
    if an:
        raise Truncated
    if not verbose_rest:
        return
    for count, label in ((ns, " ns:"), (ar, " ar:")):
        if cp < p.end and count:
            p.w(label)
            cp = _rprint(p, cp, np, mdns)
            if cp is None:
                raise Truncated
            count -= 1
            while cp < p.end and count:
                p.w(",")
                cp = _rprint(p, cp, np, mdns)
                if cp is None:
                    raise Truncated
                count -= 1
        if count:
            raise Truncated


def _extended_rcode(p: Printer, np: int, flags: int, qd: int, an: int, ns: int,
                    ar: int) -> int:
    """The RCODE, with the high bits of an OPT record's extended RCODE (RFC 6891)."""
    rcode = flags & 0xF
    cp: int | None = np + 12
    for _ in range(qd):
        cp = _nskip(p, cp)
        if cp is None:
            return rcode
        cp += 4
        if cp >= p.end:
            return rcode
    for _ in range(an + ns):
        cp = _nskip(p, cp)
        if cp is None:
            return rcode
        cp += 8
        if cp + 2 > p.end:
            return rcode
        cp += 2 + p.u16(cp)
        if cp >= p.end:
            return rcode
    for _ in range(ar):
        cp = _nskip(p, cp)
        if cp is None or cp + 2 > p.end:
            return rcode
        typ = p.u16(cp)
        cp += 4
        if cp + 1 > p.end:
            return rcode
        if typ == _T_OPT:
            return rcode | (p.buf[cp] << 4)
        cp += 4
        if cp + 2 > p.end:
            return rcode
        cp += 2 + p.u16(cp)
        if cp >= p.end:
            return rcode
    return rcode
