"""Multicast Listener Discovery: MLDv2 reports and MLDv1/v2 queries (RFC 3810), MLDv1
reports and done messages (RFC 2710).

Enough for a guest that joins groups (its solicited-node groups above all) and for the
stack to send its own reports. Every repr here reads and writes the WHOLE ICMPv6 message,
checksum included (IPv6 pseudo-header, see `wire.icmpv6`).

What belongs to the IPv6 layer, not here: MLD messages are sent with hop limit 1 and a
Hop-by-Hop Options header carrying a Router Alert option (RFC 2711, value 0 = MLD), and a
receiver discards them otherwise (RFC 3810 §5.1.14, §5.2.13, §6.2); `parse` does not see the
IPv6 header beyond the addresses it is given.

What `parse` checks, raising `wire.Error` otherwise: the message type, the checksum, that
every length (record count, auxiliary data, source count) fits in the buffer, at most
`MAX_RECORDS` records and `MAX_SOURCES` sources per record or query, and the source address
RFC 3810 requires: link-local for queries (§5.1.14), link-local or `::` for reports
(§5.2.13; `::` is what a node uses before its link-local address is valid). The code field
is ignored (RFC 3810 §5.1.2). Bytes after the last record are ignored. Record types and
group addresses are returned as they are: the consumer ignores unknown record types and
non-multicast groups (RFC 3810 §5.2.12, §6.1). A query of 24 bytes is MLDv1, of 28 or more
MLDv2; 25..27 bytes is `Error` (RFC 3810 §8.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network

from netstack.wire import Error
from netstack.wire.icmpv6 import Icmpv6Message, checksum_ok
from netstack.wire.icmpv6 import fill_checksum as _fill_checksum

MLDV2_ALL_ROUTERS = IPv6Address("ff02::16")
ALL_NODES = IPv6Address("ff02::1")

MODE_IS_INCLUDE = 1
MODE_IS_EXCLUDE = 2
CHANGE_TO_INCLUDE = 3
CHANGE_TO_EXCLUDE = 4
ALLOW_NEW = 5
BLOCK_OLD = 6

MAX_RECORDS = 1024
MAX_SOURCES = 1024

REPORT_HEADER_LEN = 8
RECORD_HEADER_LEN = 20
QUERY_V1_LEN = 24
QUERY_V2_LEN = 28
MLDV1_LEN = 24

_UNSPECIFIED = IPv6Address("::")
_LINK_LOCAL = IPv6Network("fe80::/10")

_REPORT = struct.Struct("!BBHHH")  # type, code, checksum, reserved, number of records
_RECORD = struct.Struct("!BBH16s")  # type, aux data len (words), number of sources, group
_QUERY = struct.Struct("!BBHHH16s")  # type, code, checksum, max resp code, reserved, group
_QUERY_V2 = struct.Struct("!BBH")  # S|QRV, QQIC, number of sources


def _view(buf) -> memoryview:
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    return mv if mv.format == "B" else mv.cast("B")


def _check(b: memoryview, msg_types, src: IPv6Address, dst: IPv6Address,
           verify_checksum: bool) -> None:
    if len(b) < 4:
        raise Error("mld: message shorter than the ICMPv6 header")
    if b[0] not in msg_types:
        raise Error(f"mld: unexpected message type {b[0]}")
    if verify_checksum and not checksum_ok(b, src, dst):
        raise Error("mld: bad checksum")


def _read_sources(b: memoryview, offset: int, count: int) -> tuple[IPv6Address, ...]:
    if count > MAX_SOURCES:
        raise Error(f"mld: {count} sources, more than {MAX_SOURCES}")
    if offset + 16 * count > len(b):
        raise Error("mld: sources run past the end of the message")
    return tuple(IPv6Address(bytes(b[o: o + 16])) for o in range(offset, offset + 16 * count, 16))


def _finish(b: memoryview, end: int, src, dst, fill_checksum: bool) -> None:
    if fill_checksum:
        _fill_checksum(b[:end], src, dst)


@dataclass(frozen=True, slots=True)
class AddressRecord:
    """One multicast address record of an MLDv2 report (RFC 3810 §5.2.4). Auxiliary data
    is skipped on parse and never emitted."""

    record_type: int
    group: IPv6Address
    sources: tuple[IPv6Address, ...] = ()

    def buffer_len(self) -> int:
        return RECORD_HEADER_LEN + 16 * len(self.sources)


@dataclass(frozen=True, slots=True)
class Mldv2Report:
    """An MLDv2 report (ICMPv6 type 143, RFC 3810 §5.2), sent to `MLDV2_ALL_ROUTERS`. A node
    joining group G sends `(AddressRecord(CHANGE_TO_EXCLUDE, G),)`; leaving,
    `(AddressRecord(CHANGE_TO_INCLUDE, G),)`."""

    records: tuple[AddressRecord, ...]

    @classmethod
    def parse(cls, buf, src: IPv6Address, dst: IPv6Address,
              verify_checksum: bool = True) -> Mldv2Report:
        b = _view(buf)
        _check(b, (Icmpv6Message.MLDV2_REPORT,), src, dst, verify_checksum)
        if len(b) < REPORT_HEADER_LEN:
            raise Error("mld: report shorter than its header")
        if src != _UNSPECIFIED and src not in _LINK_LOCAL:
            raise Error(f"mld: report from {src}, neither link-local nor ::")
        count = _REPORT.unpack_from(b, 0)[4]
        if count > MAX_RECORDS:
            raise Error(f"mld: {count} records, more than {MAX_RECORDS}")
        records = []
        offset = REPORT_HEADER_LEN
        for _ in range(count):
            if offset + RECORD_HEADER_LEN > len(b):
                raise Error("mld: record header runs past the end of the message")
            rtype, aux_words, nsrc, group = _RECORD.unpack_from(b, offset)
            sources = _read_sources(b, offset + RECORD_HEADER_LEN, nsrc)
            offset += RECORD_HEADER_LEN + 16 * nsrc + 4 * aux_words
            if offset > len(b):
                raise Error("mld: auxiliary data runs past the end of the message")
            records.append(AddressRecord(rtype, IPv6Address(group), sources))
        return cls(tuple(records))

    def buffer_len(self) -> int:
        return REPORT_HEADER_LEN + sum(r.buffer_len() for r in self.records)

    def emit(self, buf, src: IPv6Address, dst: IPv6Address, fill_checksum: bool = True) -> None:
        b = _view(buf)
        _REPORT.pack_into(b, 0, Icmpv6Message.MLDV2_REPORT, 0, 0, 0, len(self.records))
        offset = REPORT_HEADER_LEN
        for r in self.records:
            _RECORD.pack_into(b, offset, r.record_type, 0, len(r.sources), r.group.packed)
            offset += RECORD_HEADER_LEN
            for s in r.sources:
                b[offset: offset + 16] = s.packed
                offset += 16
        _finish(b, offset, src, dst, fill_checksum)


def _decode_float(code: int, threshold: int, mant_bits: int, exp_shift: int) -> int:
    """RFC 3810 §5.1.3/§5.1.9: values at or above `threshold` are 1|exp|mant floating
    point: (mant | 1 << mant_bits) << (exp + 3)."""
    if code < threshold:
        return code
    mant = code & ((1 << mant_bits) - 1)
    exp = (code >> exp_shift) & 0x7
    return (mant | (1 << mant_bits)) << (exp + 3)


@dataclass(frozen=True, slots=True)
class MldQuery:
    """A multicast listener query (ICMPv6 type 130). `group` is `::` for a general query.
    `max_resp_code` and `qqic` are the raw encoded fields (see `max_resp_delay_ms` and
    `query_interval`). `mldv1` marks a 24-byte MLDv1 query (RFC 2710), which has no
    `sources`, `s_flag`, `qrv` or `qqic` (they read as (), False, 0, 0 after parse and are
    not emitted)."""

    max_resp_code: int = 10000
    group: IPv6Address = _UNSPECIFIED
    sources: tuple[IPv6Address, ...] = ()
    s_flag: bool = False
    qrv: int = 2
    qqic: int = 125
    mldv1: bool = False

    @property
    def max_resp_delay_ms(self) -> int:
        if self.mldv1:
            return self.max_resp_code
        return _decode_float(self.max_resp_code, 0x8000, 12, 12)

    @property
    def query_interval(self) -> int:
        """Seconds (QQI); 0 for MLDv1."""
        return _decode_float(self.qqic, 0x80, 4, 4)

    @classmethod
    def parse(cls, buf, src: IPv6Address, dst: IPv6Address,
              verify_checksum: bool = True) -> MldQuery:
        b = _view(buf)
        _check(b, (Icmpv6Message.MLD_QUERY,), src, dst, verify_checksum)
        n = len(b)
        if n < QUERY_V1_LEN or QUERY_V1_LEN < n < QUERY_V2_LEN:
            raise Error(f"mld: query of {n} bytes")
        if src not in _LINK_LOCAL:
            raise Error(f"mld: query from non-link-local {src}")
        _t, _c, _s, max_resp, _r, group = _QUERY.unpack_from(b, 0)
        if n == QUERY_V1_LEN:
            return cls(max_resp, IPv6Address(group), (), False, 0, 0, True)
        flags, qqic, nsrc = _QUERY_V2.unpack_from(b, QUERY_V1_LEN)
        sources = _read_sources(b, QUERY_V2_LEN, nsrc)
        return cls(max_resp, IPv6Address(group), sources, bool(flags & 0x08), flags & 0x07,
                   qqic, False)

    def buffer_len(self) -> int:
        return QUERY_V1_LEN if self.mldv1 else QUERY_V2_LEN + 16 * len(self.sources)

    def emit(self, buf, src: IPv6Address, dst: IPv6Address, fill_checksum: bool = True) -> None:
        b = _view(buf)
        _QUERY.pack_into(b, 0, Icmpv6Message.MLD_QUERY, 0, 0, self.max_resp_code, 0,
                         self.group.packed)
        end = QUERY_V1_LEN
        if not self.mldv1:
            flags = (0x08 if self.s_flag else 0) | (self.qrv & 0x07)
            _QUERY_V2.pack_into(b, QUERY_V1_LEN, flags, self.qqic, len(self.sources))
            end = QUERY_V2_LEN
            for s in self.sources:
                b[end: end + 16] = s.packed
                end += 16
        _finish(b, end, src, dst, fill_checksum)


@dataclass(frozen=True, slots=True)
class Mldv1Report:
    """An MLDv1 report (type 131, sent to `group`) or, with `done`, a done message (type 132,
    sent to ff02::2) (RFC 2710 §3). A guest falls back to these when it hears an MLDv1
    query. Parse checks the source like an MLDv2 report and ignores bytes past 24."""

    group: IPv6Address
    done: bool = False

    @classmethod
    def parse(cls, buf, src: IPv6Address, dst: IPv6Address,
              verify_checksum: bool = True) -> Mldv1Report:
        b = _view(buf)
        _check(b, (Icmpv6Message.MLD_REPORT, Icmpv6Message.MLD_DONE), src, dst,
               verify_checksum)
        if len(b) < MLDV1_LEN:
            raise Error("mld: MLDv1 message shorter than 24 bytes")
        if src != _UNSPECIFIED and src not in _LINK_LOCAL:
            raise Error(f"mld: report from {src}, neither link-local nor ::")
        return cls(IPv6Address(bytes(b[8:24])), b[0] == Icmpv6Message.MLD_DONE)

    def buffer_len(self) -> int:
        return MLDV1_LEN

    def emit(self, buf, src: IPv6Address, dst: IPv6Address, fill_checksum: bool = True) -> None:
        b = _view(buf)
        t = Icmpv6Message.MLD_DONE if self.done else Icmpv6Message.MLD_REPORT
        _QUERY.pack_into(b, 0, t, 0, 0, 0, 0, self.group.packed)
        _finish(b, MLDV1_LEN, src, dst, fill_checksum)
