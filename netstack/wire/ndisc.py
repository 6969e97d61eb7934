"""Neighbor Discovery (RFC 4861) messages and options, with RDNSS (RFC 8106).

Each message repr (`RouterSolicit`, `RouterAdvert`, `NeighborSolicit`, `NeighborAdvert`,
`Redirect`) emits the WHOLE ICMPv6 message (type, code 0, checksum, body, options);
`parse_ndisc()` reads one back after the checks of RFC 4861 §6.1.1, §6.1.2, §7.1.1, §7.1.2
and §8.1, raising `wire.Error` on any failure:

- the IPv6 hop limit is 255 (so the packet was not forwarded), the code is 0, the checksum
  (IPv6 pseudo-header) verifies, the message is at least as long as its fixed part;
- every option has a length > 0 and ends within the message; at most `MAX_OPTIONS`
  options (unknown ones included) are read;
- RS: from `::` there is no source link-layer address option;
- RA: the source is link-local;
- NS: the target is not multicast; from `::` the destination is a solicited-node
  multicast address and there is no source link-layer address option;
- NA: the target is not multicast; to a multicast destination the S flag is clear;
- Redirect: the source is link-local, the destination is not multicast, the target is
  link-local or equal to the destination.

Options, by what this module does with a well-formed message:

- Unknown option types are skipped. The redirected header (type 4) is skipped too (only its
  length is checked); it is never emitted.
- A known option whose length is not the one its RFC fixes raises `Error`: source/target
  link-layer address ≠ 1 unit (an Ethernet address is exactly 6 bytes, RFC 2464 §6),
  prefix information ≠ 4, MTU ≠ 1, RDNSS < 3 or even (RFC 8106 §5.1). So does a prefix
  length above 128.
- Which link-layer option a message keeps: RS, RA, NS → source (type 1); NA and Redirect →
  target (type 2); the other kind is ignored. For link-layer address and MTU options the
  first one wins and later duplicates are ignored (as Linux does).
- Every prefix information option is kept, in order. Its prefix is an `IPv6Network` with
  the bits past the prefix length cleared (RFC 4861 §4.6.2: receivers ignore them); a
  preferred lifetime above the valid one is kept as is (SLAAC, RFC 4862 §5.5.3, ignores
  such a prefix; that is the consumer's decision).
- RDNSS: the addresses of all RDNSS options are concatenated, in order; `rdnss_lifetime`
  is the smallest lifetime among them. Emitting writes one RDNSS option (if `rdnss` is
  non-empty).

Emit order of RA options: source link-layer address, MTU, prefixes, RDNSS. The reserved
fields are written as 0 and ignored on parse.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network

from netstack.wire import Error
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.icmpv6 import Icmpv6Message, checksum_ok
from netstack.wire.icmpv6 import fill_checksum as _fill_checksum

SOURCE_LL = 1
TARGET_LL = 2
PREFIX_INFO = 3
REDIRECTED_HEADER = 4
MTU = 5
RDNSS = 25

HOP_LIMIT = 255
MAX_OPTIONS = 64
OPTION_UNIT = 8

# the fixed part of each message, options follow
RS_LEN = 8
RA_LEN = 16
NS_LEN = 24
NA_LEN = 24
REDIRECT_LEN = 40

NA_FLAG_ROUTER = 0x80
NA_FLAG_SOLICITED = 0x40
NA_FLAG_OVERRIDE = 0x20
RA_FLAG_MANAGED = 0x80
RA_FLAG_OTHER = 0x40
PI_FLAG_ON_LINK = 0x80
PI_FLAG_AUTONOMOUS = 0x40

_UNSPECIFIED = IPv6Address("::")
_LINK_LOCAL = IPv6Network("fe80::/10")
_SOLICITED_NODE = IPv6Network("ff02::1:ff00:0/104")

_HEAD = struct.Struct("!BBHI")  # type, code, checksum, first word
_RA = struct.Struct("!BBHBBHII")
_PREFIX = struct.Struct("!BBBBIII16s")
_MTU_OPT = struct.Struct("!BBHI")
_RDNSS_HEAD = struct.Struct("!BBHI")


def _is_link_local(addr: IPv6Address) -> bool:
    return addr in _LINK_LOCAL


@dataclass(frozen=True, slots=True)
class PrefixInfo:
    """A prefix information option (RFC 4861 §4.6.2). `prefix` carries both the prefix and its
    length; lifetimes are in seconds, 0xFFFFFFFF meaning infinity."""

    prefix: IPv6Network
    on_link: bool = True
    autonomous: bool = True
    valid_lifetime: int = 2592000
    preferred_lifetime: int = 604800

    def emit_option(self, buf, offset: int) -> int:
        flags = (PI_FLAG_ON_LINK if self.on_link else 0) | (
            PI_FLAG_AUTONOMOUS if self.autonomous else 0)
        _PREFIX.pack_into(buf, offset, PREFIX_INFO, 4, self.prefix.prefixlen, flags,
                          self.valid_lifetime, self.preferred_lifetime, 0,
                          self.prefix.network_address.packed)
        return offset + 32


def _emit_lladdr(buf, offset: int, kind: int, lladdr: EthernetAddress | None) -> int:
    if lladdr is None:
        return offset
    buf[offset] = kind
    buf[offset + 1] = 1
    buf[offset + 2: offset + 8] = lladdr
    return offset + 8


def _finish(buf, end: int, src: IPv6Address, dst: IPv6Address, fill_checksum: bool) -> None:
    if fill_checksum:
        _fill_checksum(buf[:end], src, dst)


def _view(buf) -> memoryview:
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    return mv if mv.format == "B" else mv.cast("B")


@dataclass(frozen=True, slots=True)
class RouterSolicit:
    """Router solicitation (RFC 4861 §4.1); `lladdr` is the source link-layer address option
    (must be None when sent from `::`)."""

    lladdr: EthernetAddress | None = None

    def buffer_len(self) -> int:
        return RS_LEN + (8 if self.lladdr is not None else 0)

    def emit(self, buf, src: IPv6Address, dst: IPv6Address, fill_checksum: bool = True) -> None:
        b = _view(buf)
        _HEAD.pack_into(b, 0, Icmpv6Message.ROUTER_SOLICIT, 0, 0, 0)
        end = _emit_lladdr(b, RS_LEN, SOURCE_LL, self.lladdr)
        _finish(b, end, src, dst, fill_checksum)


@dataclass(frozen=True, slots=True)
class RouterAdvert:
    """Router advertisement (RFC 4861 §4.2). `router_lifetime` is in seconds (0: not a
    default router); `reachable_time` and `retrans_time` in milliseconds (0: unspecified);
    `lladdr` is the source link-layer address option, `mtu` the MTU option, `rdnss` with
    `rdnss_lifetime` (seconds) one RDNSS option (RFC 8106, at most 127 addresses). The other
    flag bits (home agent, router preference of RFC 4191, proxy) read as nothing on parse
    and are emitted 0 (medium preference)."""

    hop_limit: int = 64
    managed: bool = False
    other: bool = False
    router_lifetime: int = 1800
    reachable_time: int = 0
    retrans_time: int = 0
    lladdr: EthernetAddress | None = None
    mtu: int | None = None
    prefixes: tuple[PrefixInfo, ...] = ()
    rdnss: tuple[IPv6Address, ...] = ()
    rdnss_lifetime: int = 0

    def buffer_len(self) -> int:
        n = RA_LEN
        if self.lladdr is not None:
            n += 8
        if self.mtu is not None:
            n += 8
        n += 32 * len(self.prefixes)
        if self.rdnss:
            n += 8 + 16 * len(self.rdnss)
        return n

    def emit(self, buf, src: IPv6Address, dst: IPv6Address, fill_checksum: bool = True) -> None:
        b = _view(buf)
        flags = (RA_FLAG_MANAGED if self.managed else 0) | (RA_FLAG_OTHER if self.other else 0)
        _RA.pack_into(b, 0, Icmpv6Message.ROUTER_ADVERT, 0, 0, self.hop_limit, flags,
                      self.router_lifetime, self.reachable_time, self.retrans_time)
        off = _emit_lladdr(b, RA_LEN, SOURCE_LL, self.lladdr)
        if self.mtu is not None:
            _MTU_OPT.pack_into(b, off, MTU, 1, 0, self.mtu)
            off += 8
        for p in self.prefixes:
            off = p.emit_option(b, off)
        if self.rdnss:
            _RDNSS_HEAD.pack_into(b, off, RDNSS, 1 + 2 * len(self.rdnss), 0, self.rdnss_lifetime)
            off += 8
            for a in self.rdnss:
                b[off: off + 16] = a.packed
                off += 16
        _finish(b, off, src, dst, fill_checksum)


@dataclass(frozen=True, slots=True)
class NeighborSolicit:
    """Neighbor solicitation (RFC 4861 §4.3); `lladdr` is the source link-layer address
    option (must be None for duplicate address detection, sent from `::`)."""

    target: IPv6Address
    lladdr: EthernetAddress | None = None

    def buffer_len(self) -> int:
        return NS_LEN + (8 if self.lladdr is not None else 0)

    def emit(self, buf, src: IPv6Address, dst: IPv6Address, fill_checksum: bool = True) -> None:
        b = _view(buf)
        _HEAD.pack_into(b, 0, Icmpv6Message.NEIGHBOR_SOLICIT, 0, 0, 0)
        b[8:24] = self.target.packed
        end = _emit_lladdr(b, NS_LEN, SOURCE_LL, self.lladdr)
        _finish(b, end, src, dst, fill_checksum)


@dataclass(frozen=True, slots=True)
class NeighborAdvert:
    """Neighbor advertisement (RFC 4861 §4.4); `lladdr` is the target link-layer address
    option."""

    target: IPv6Address
    router: bool = False
    solicited: bool = False
    override: bool = False
    lladdr: EthernetAddress | None = None

    def buffer_len(self) -> int:
        return NA_LEN + (8 if self.lladdr is not None else 0)

    def emit(self, buf, src: IPv6Address, dst: IPv6Address, fill_checksum: bool = True) -> None:
        b = _view(buf)
        flags = ((NA_FLAG_ROUTER if self.router else 0)
                 | (NA_FLAG_SOLICITED if self.solicited else 0)
                 | (NA_FLAG_OVERRIDE if self.override else 0))
        _HEAD.pack_into(b, 0, Icmpv6Message.NEIGHBOR_ADVERT, 0, 0, flags << 24)
        b[8:24] = self.target.packed
        end = _emit_lladdr(b, NA_LEN, TARGET_LL, self.lladdr)
        _finish(b, end, src, dst, fill_checksum)


@dataclass(frozen=True, slots=True)
class Redirect:
    """Redirect (RFC 4861 §4.5): packets for `destination` go better to `target`; `lladdr`
    is the target link-layer address option. No redirected header option is emitted."""

    target: IPv6Address
    destination: IPv6Address
    lladdr: EthernetAddress | None = None

    def buffer_len(self) -> int:
        return REDIRECT_LEN + (8 if self.lladdr is not None else 0)

    def emit(self, buf, src: IPv6Address, dst: IPv6Address, fill_checksum: bool = True) -> None:
        b = _view(buf)
        _HEAD.pack_into(b, 0, Icmpv6Message.REDIRECT, 0, 0, 0)
        b[8:24] = self.target.packed
        b[24:40] = self.destination.packed
        end = _emit_lladdr(b, REDIRECT_LEN, TARGET_LL, self.lladdr)
        _finish(b, end, src, dst, fill_checksum)


NdiscRepr = RouterSolicit | RouterAdvert | NeighborSolicit | NeighborAdvert | Redirect

_FIXED_LEN = {
    Icmpv6Message.ROUTER_SOLICIT: RS_LEN,
    Icmpv6Message.ROUTER_ADVERT: RA_LEN,
    Icmpv6Message.NEIGHBOR_SOLICIT: NS_LEN,
    Icmpv6Message.NEIGHBOR_ADVERT: NA_LEN,
    Icmpv6Message.REDIRECT: REDIRECT_LEN,
}


class _Options:
    """What parse_ndisc keeps from the options of one message."""

    __slots__ = ("source_ll", "target_ll", "mtu", "prefixes", "rdnss", "rdnss_lifetime")

    def __init__(self) -> None:
        self.source_ll: EthernetAddress | None = None
        self.target_ll: EthernetAddress | None = None
        self.mtu: int | None = None
        self.prefixes: list[PrefixInfo] = []
        self.rdnss: list[IPv6Address] = []
        self.rdnss_lifetime: int | None = None


def _parse_options(b: memoryview, offset: int) -> _Options:
    opts = _Options()
    end = len(b)
    count = 0
    while offset < end:
        count += 1
        if count > MAX_OPTIONS:
            raise Error(f"ndisc: more than {MAX_OPTIONS} options")
        if end - offset < 2:
            raise Error("ndisc: truncated option header")
        kind = b[offset]
        units = b[offset + 1]
        if units == 0:
            raise Error("ndisc: option with length 0")
        length = units * OPTION_UNIT
        if offset + length > end:
            raise Error("ndisc: option runs past the end of the message")
        if kind == SOURCE_LL or kind == TARGET_LL:
            if units != 1:
                raise Error(f"ndisc: link-layer address option of {units} units")
            addr = EthernetAddress(b[offset + 2: offset + 8])
            if kind == SOURCE_LL:
                if opts.source_ll is None:
                    opts.source_ll = addr
            elif opts.target_ll is None:
                opts.target_ll = addr
        elif kind == PREFIX_INFO:
            if units != 4:
                raise Error(f"ndisc: prefix information option of {units} units")
            _t, _l, plen, flags, valid, preferred, _r, prefix = _PREFIX.unpack_from(b, offset)
            if plen > 128:
                raise Error(f"ndisc: prefix length {plen}")
            opts.prefixes.append(PrefixInfo(
                IPv6Network((IPv6Address(prefix), plen), strict=False),
                bool(flags & PI_FLAG_ON_LINK), bool(flags & PI_FLAG_AUTONOMOUS),
                valid, preferred))
        elif kind == MTU:
            if units != 1:
                raise Error(f"ndisc: MTU option of {units} units")
            if opts.mtu is None:
                opts.mtu = _MTU_OPT.unpack_from(b, offset)[3]
        elif kind == RDNSS:
            if units < 3 or units % 2 == 0:
                raise Error(f"ndisc: RDNSS option of {units} units")
            lifetime = _RDNSS_HEAD.unpack_from(b, offset)[3]
            if opts.rdnss_lifetime is None or lifetime < opts.rdnss_lifetime:
                opts.rdnss_lifetime = lifetime
            for a in range(offset + 8, offset + length, 16):
                opts.rdnss.append(IPv6Address(bytes(b[a: a + 16])))
        offset += length
    return opts


def parse_ndisc(buf, src: IPv6Address, dst: IPv6Address, hop_limit: int,
                verify_checksum: bool = True) -> NdiscRepr:
    """Validate and parse one Neighbor Discovery message: `buf` is the whole ICMPv6 message
    (the IPv6 payload), `src`/`dst`/`hop_limit` come from its IPv6 header. Raises `Error`
    for anything RFC 4861 says to discard silently (see the module docstring)."""
    b = _view(buf)
    if hop_limit != HOP_LIMIT:
        raise Error(f"ndisc: hop limit {hop_limit}, not 255")
    if len(b) < 4:
        raise Error("ndisc: message shorter than the ICMPv6 header")
    msg_type = b[0]
    fixed = _FIXED_LEN.get(msg_type)
    if fixed is None:
        raise Error(f"ndisc: not a neighbor discovery message: type {msg_type}")
    if b[1] != 0:
        raise Error(f"ndisc: code {b[1]}")
    if len(b) < fixed:
        raise Error(f"ndisc: type {msg_type} shorter than {fixed} bytes")
    if verify_checksum and not checksum_ok(b, src, dst):
        raise Error("ndisc: bad checksum")
    opts = _parse_options(b, fixed)

    if msg_type == Icmpv6Message.ROUTER_SOLICIT:
        if src == _UNSPECIFIED and opts.source_ll is not None:
            raise Error("ndisc: RS from :: with a source link-layer address")
        return RouterSolicit(opts.source_ll)

    if msg_type == Icmpv6Message.ROUTER_ADVERT:
        if not _is_link_local(src):
            raise Error(f"ndisc: RA from non-link-local {src}")
        _t, _c, _s, cur_hop, flags, lifetime, reachable, retrans = _RA.unpack_from(b, 0)
        return RouterAdvert(
            cur_hop, bool(flags & RA_FLAG_MANAGED), bool(flags & RA_FLAG_OTHER), lifetime,
            reachable, retrans, opts.source_ll, opts.mtu, tuple(opts.prefixes),
            tuple(opts.rdnss), opts.rdnss_lifetime or 0)

    target = IPv6Address(bytes(b[8:24]))
    if msg_type == Icmpv6Message.NEIGHBOR_SOLICIT:
        if target.is_multicast:
            raise Error(f"ndisc: NS for multicast target {target}")
        if src == _UNSPECIFIED:
            if dst not in _SOLICITED_NODE:
                raise Error(f"ndisc: NS from :: to {dst}, not a solicited-node address")
            if opts.source_ll is not None:
                raise Error("ndisc: NS from :: with a source link-layer address")
        return NeighborSolicit(target, opts.source_ll)

    if msg_type == Icmpv6Message.NEIGHBOR_ADVERT:
        if target.is_multicast:
            raise Error(f"ndisc: NA for multicast target {target}")
        flags = b[4]
        solicited = bool(flags & NA_FLAG_SOLICITED)
        if solicited and dst.is_multicast:
            raise Error("ndisc: solicited NA to a multicast destination")
        return NeighborAdvert(target, bool(flags & NA_FLAG_ROUTER), solicited,
                              bool(flags & NA_FLAG_OVERRIDE), opts.target_ll)

    # redirect
    if not _is_link_local(src):
        raise Error(f"ndisc: redirect from non-link-local {src}")
    destination = IPv6Address(bytes(b[24:40]))
    if destination.is_multicast:
        raise Error(f"ndisc: redirect for multicast destination {destination}")
    if target != destination and not _is_link_local(target):
        raise Error(f"ndisc: redirect target {target} neither link-local nor the destination")
    return Redirect(target, destination, opts.target_ll)
