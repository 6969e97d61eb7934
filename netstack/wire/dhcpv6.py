"""DHCPv6 client/server messages (RFC 8415) carried in UDP between ports 546 and 547.

`Dhcpv6Packet` is a view over the 4-byte header (message type, 24-bit transaction id) and the
option area; `Dhcpv6Repr` holds what a stateless server (RFC 8415 §6.1) and its clients need.
Malformed input raises `wire.Error` (see wire/__init__).

Parsing rules:

- The buffer must hold the 4-byte header. Relay messages (RELAY-FORW, RELAY-REPL) have another
  header and nested messages: they raise `Error("relay not supported")`. Any other message
  type, known or not, is parsed with the client/server layout (unknown types stay plain ints;
  it is up to the receiver to ignore them, RFC 8415 §16).
- Options are 2-byte code, 2-byte length, data, walked to the end of the buffer: a header or
  data running past the end raises `Error`, and so do more than `MAX_OPTIONS` options.
- Interpreted options must appear at most once (IA_NA excepted: one per IA) and have the
  right length, else `Error`:
  CLIENTID/SERVERID hold a DUID of 3..130 bytes (2-byte type, 1..128 bytes, §11.1);
  ORO and DNS_SERVERS are multiples of 2 and 16 bytes; ELAPSED_TIME is 2 bytes and
  INFORMATION_REFRESH_TIME 4; STATUS_CODE at least 2 (its UTF-8 message is decoded with
  invalid bytes replaced, so decoding never fails); DOMAIN_LIST is a run of uncompressed
  names (RFC 8415 §10: a compression pointer, a name not ended by its root label inside the
  option, or a name over 255 bytes raises `Error`); IA_NA is at least 12 bytes and its
  sub-options must be well framed.
- From an IA_NA only the IAID is kept (`ia_na_iaids`, in order), plus the first Status Code
  found inside any IA_NA (`ia_na_status`); T1, T2 and IA Address sub-options are dropped.
- Every other option (IA_TA, IA_PD, RAPID_COMMIT, SOL_MAX_RT, ...) is kept verbatim, in
  order, repeats included, in `other_options`.

Names are `str` in the presentation form of `netstack.wire.dns` (no trailing dot, escapes
for odd bytes, the root as "."), so parse → emit is lossless.

`emit` writes CLIENTID, SERVERID, the IA_NAs (T1 = T2 = 0, with `ia_na_status` encapsulated
when set), ORO, ELAPSED_TIME, STATUS_CODE, DNS_SERVERS, DOMAIN_LIST,
INFORMATION_REFRESH_TIME, then `other_options`. Local mistakes (a DUID too long, a bad name,
an interpreted code in `other_options`) raise `ValueError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv6Address

from netstack.wire import Error
from netstack.wire.dns import MAX_NAME_LEN, labels_to_name, name_to_labels
from netstack.wire.ethernet import EthernetAddress

CLIENT_PORT = 546
SERVER_PORT = 547
ALL_DHCP_RELAY_AGENTS_AND_SERVERS = IPv6Address("ff02::1:2")

MSG_TYPE = 0
TRANSACTION_ID = slice(1, 4)
OPTIONS = 4
HEADER_LEN = 4
OPTION_HEADER_LEN = 4
IA_NA_FIXED_LEN = 12  # IAID, T1, T2

MAX_OPTIONS = 256  # per message, and per IA_NA's sub-options
MIN_DUID_LEN = 3  # 2-byte type + at least 1 byte (RFC 8415 §11.1)
MAX_DUID_LEN = 130  # 2-byte type + at most 128 bytes
DUID_LL = 3
HWTYPE_ETHERNET = 1
IRT_DEFAULT = 86400  # RFC 8415 §7.6
IRT_MINIMUM = 600
INFINITY = 0xFFFFFFFF


class MessageType(IntEnum):
    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13


class Option(IntEnum):
    CLIENTID = 1
    SERVERID = 2
    IA_NA = 3
    IA_TA = 4
    IAADDR = 5
    ORO = 6
    PREFERENCE = 7
    ELAPSED_TIME = 8
    RELAY_MSG = 9
    AUTH = 11
    UNICAST = 12
    STATUS_CODE = 13
    RAPID_COMMIT = 14
    USER_CLASS = 15
    VENDOR_CLASS = 16
    VENDOR_OPTS = 17
    INTERFACE_ID = 18
    RECONF_MSG = 19
    RECONF_ACCEPT = 20
    DNS_SERVERS = 23
    DOMAIN_LIST = 24
    IA_PD = 25
    IAPREFIX = 26
    INFORMATION_REFRESH_TIME = 32
    SOL_MAX_RT = 82
    INF_MAX_RT = 83


class StatusCode(IntEnum):
    SUCCESS = 0
    UNSPEC_FAIL = 1
    NO_ADDRS_AVAIL = 2
    NO_BINDING = 3
    NOT_ON_LINK = 4
    USE_MULTICAST = 5
    NO_PREFIX_AVAIL = 6


# Options with a field of their own in Dhcpv6Repr; all but IA_NA at most once per message.
_INTERPRETED = frozenset({
    Option.CLIENTID, Option.SERVERID, Option.IA_NA, Option.ORO, Option.ELAPSED_TIME,
    Option.STATUS_CODE, Option.DNS_SERVERS, Option.DOMAIN_LIST,
    Option.INFORMATION_REFRESH_TIME,
})


def _enum(enum, value: int):
    try:
        return enum(value)
    except ValueError:
        return value


def duid_ll(mac: EthernetAddress) -> bytes:
    """The DUID-LL (RFC 8415 §11.4: type 3, hardware type 1 = Ethernet) for `mac`.

    >>> duid_ll(EthernetAddress(bytes.fromhex("525400123456"))).hex()
    '00030001525400123456'
    """
    return struct.pack("!HH", DUID_LL, HWTYPE_ETHERNET) + bytes(EthernetAddress(mac))


def _walk(buf: memoryview, start: int, what: str) -> Iterator[tuple[int, memoryview]]:
    """(code, data) for every option TLV from `start` to the end of `buf`. Raises `Error` on
    a truncated TLV or more than MAX_OPTIONS of them."""
    end = len(buf)
    i = start
    count = 0
    while i < end:
        if i + OPTION_HEADER_LEN > end:
            raise Error(f"dhcpv6: truncated option header in {what}")
        code, length = struct.unpack_from("!HH", buf, i)
        data_start = i + OPTION_HEADER_LEN
        if data_start + length > end:
            raise Error(f"dhcpv6: option {code} runs past the end of {what}")
        count += 1
        if count > MAX_OPTIONS:
            raise Error(f"dhcpv6: more than {MAX_OPTIONS} options in {what}")
        yield code, buf[data_start : data_start + length]
        i = data_start + length


class Dhcpv6Packet:
    """A view over a client/server DHCPv6 message: type, transaction id, options."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        self.buffer = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) else buffer

    @classmethod
    def new_checked(cls, buffer) -> Dhcpv6Packet:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        if len(self.buffer) < HEADER_LEN:
            raise Error("dhcpv6: message shorter than its 4-byte header")

    @property
    def msg_type(self) -> int:
        return _enum(MessageType, self.buffer[MSG_TYPE])

    @msg_type.setter
    def msg_type(self, value: int) -> None:
        self.buffer[MSG_TYPE] = value

    @property
    def transaction_id(self) -> int:
        return int.from_bytes(self.buffer[TRANSACTION_ID], "big")

    @transaction_id.setter
    def transaction_id(self, value: int) -> None:
        self.buffer[TRANSACTION_ID] = value.to_bytes(3, "big")

    @property
    def options_buffer(self) -> memoryview:
        return self.buffer[OPTIONS:]

    def options(self) -> Iterator[tuple[int, memoryview]]:
        """Yield (code, data) for every option; raises `Error` on a truncated one."""
        return _walk(self.buffer, OPTIONS, "the message")


# -- option data -----------------------------------------------------------------------------


def _duid(data: bytes, code: int) -> bytes:
    if not MIN_DUID_LEN <= len(data) <= MAX_DUID_LEN:
        raise Error(f"dhcpv6: option {code} DUID of {len(data)} bytes (3..130 allowed)")
    return data


def _fixed(data: bytes, code: int, size: int) -> int:
    if len(data) != size:
        raise Error(f"dhcpv6: option {code} must be {size} bytes, not {len(data)}")
    return int.from_bytes(data, "big")


def _oro(data: bytes) -> tuple[int, ...]:
    if len(data) % 2:
        raise Error("dhcpv6: option request option of odd length")
    return struct.unpack(f"!{len(data) // 2}H", data)


def _addresses(data: bytes) -> tuple[IPv6Address, ...]:
    if len(data) % 16:
        raise Error("dhcpv6: DNS servers option is not a multiple of 16 bytes")
    return tuple(IPv6Address(data[i : i + 16]) for i in range(0, len(data), 16))


def _status(data: bytes) -> tuple[int, str]:
    if len(data) < 2:
        raise Error("dhcpv6: status code option shorter than 2 bytes")
    return _enum(StatusCode, int.from_bytes(data[:2], "big")), data[2:].decode(
        "utf-8", errors="replace")


def _domain_list(data: bytes) -> tuple[str, ...]:
    """Uncompressed names back to back (RFC 8415 §10, RFC 1035 §3.1)."""
    names: list[str] = []
    i = 0
    end = len(data)
    while i < end:
        labels: list[bytes] = []
        wire_len = 1
        while True:
            if i >= end:
                raise Error("dhcpv6: domain name not terminated inside its option")
            length = data[i]
            if length & 0xC0:
                raise Error("dhcpv6: compressed or extended label in a domain name")
            i += 1
            if length == 0:
                break
            if i + length > end:
                raise Error("dhcpv6: label runs past the end of its option")
            wire_len += length + 1
            if wire_len > MAX_NAME_LEN:
                raise Error("dhcpv6: domain name longer than 255 bytes")
            labels.append(data[i : i + length])
            i += length
        names.append(labels_to_name(labels))
    return tuple(names)


def _ia_na(data: memoryview) -> tuple[int, tuple[int, str] | None]:
    """The IAID of an IA_NA and the Status Code inside it, if any."""
    if len(data) < IA_NA_FIXED_LEN:
        raise Error("dhcpv6: IA_NA option shorter than 12 bytes")
    iaid = int.from_bytes(data[:4], "big")
    status = None
    for code, sub in _walk(data, IA_NA_FIXED_LEN, "an IA_NA"):
        if code == Option.STATUS_CODE and status is None:
            status = _status(bytes(sub))
    return iaid, status


def _encode_name_list(names: tuple[str, ...]) -> bytes:
    out = bytearray()
    for name in names:
        for label in name_to_labels(name):
            out.append(len(label))
            out += label
        out.append(0)
    return bytes(out)


def _encode_status(status: tuple[int, str]) -> bytes:
    code, message = status
    return struct.pack("!H", code) + message.encode("utf-8")


def _check(what: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"dhcpv6: {what} {value} out of range 0..{maximum}")


def _tlv(code: int, data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"dhcpv6: option {code} longer than 65535 bytes")
    return struct.pack("!HH", code, len(data)) + data


@dataclass(frozen=True, slots=True)
class Dhcpv6Repr:
    """A client/server DHCPv6 message as a stateless server and its clients see it.

    Absent options are None or empty. `status` is the message-level Status Code,
    `ia_na_status` the one encapsulated in the IA_NAs (RFC 8415 §21.4, §21.13).
    """

    msg_type: int
    transaction_id: int
    client_id: bytes | None = None
    server_id: bytes | None = None
    requested_options: tuple[int, ...] = ()
    elapsed_time: int | None = None
    dns_servers: tuple[IPv6Address, ...] = ()
    domain_list: tuple[str, ...] = ()
    information_refresh_time: int | None = None
    status: tuple[int, str] | None = None
    ia_na_iaids: tuple[int, ...] = ()
    ia_na_status: tuple[int, str] | None = None
    other_options: tuple[tuple[int, bytes], ...] = ()

    @classmethod
    def parse(cls, packet: Dhcpv6Packet) -> Dhcpv6Repr:
        packet.check_len()
        msg_type = packet.msg_type
        if msg_type in (MessageType.RELAY_FORW, MessageType.RELAY_REPL):
            raise Error("dhcpv6: relay not supported")
        seen: set[int] = set()
        fields: dict[str, object] = {}
        iaids: list[int] = []
        ia_na_status = None
        other: list[tuple[int, bytes]] = []
        for code, view in packet.options():
            if code not in _INTERPRETED:
                other.append((code, bytes(view)))
                continue
            if code == Option.IA_NA:
                iaid, status = _ia_na(view)
                iaids.append(iaid)
                if ia_na_status is None:
                    ia_na_status = status
                continue
            if code in seen:
                raise Error(f"dhcpv6: option {code} appears more than once")
            seen.add(code)
            data = bytes(view)
            if code == Option.CLIENTID:
                fields["client_id"] = _duid(data, code)
            elif code == Option.SERVERID:
                fields["server_id"] = _duid(data, code)
            elif code == Option.ORO:
                fields["requested_options"] = _oro(data)
            elif code == Option.ELAPSED_TIME:
                fields["elapsed_time"] = _fixed(data, code, 2)
            elif code == Option.STATUS_CODE:
                fields["status"] = _status(data)
            elif code == Option.DNS_SERVERS:
                fields["dns_servers"] = _addresses(data)
            elif code == Option.DOMAIN_LIST:
                fields["domain_list"] = _domain_list(data)
            else:  # INFORMATION_REFRESH_TIME
                fields["information_refresh_time"] = _fixed(data, code, 4)
        return cls(
            msg_type=msg_type,
            transaction_id=packet.transaction_id,
            ia_na_iaids=tuple(iaids),
            ia_na_status=ia_na_status,
            other_options=tuple(other),
            **fields,
        )

    def _options(self) -> list[bytes]:
        """Every option as an encoded TLV, in emit order."""
        out: list[bytes] = []
        for code, duid in ((Option.CLIENTID, self.client_id), (Option.SERVERID, self.server_id)):
            if duid is not None:
                if not MIN_DUID_LEN <= len(duid) <= MAX_DUID_LEN:
                    raise ValueError(f"dhcpv6: a DUID has 3..130 bytes, not {len(duid)}")
                out.append(_tlv(code, bytes(duid)))
        inner = b"" if self.ia_na_status is None else _tlv(
            Option.STATUS_CODE, _encode_status(self.ia_na_status))
        for iaid in self.ia_na_iaids:
            out.append(_tlv(Option.IA_NA, struct.pack("!III", iaid, 0, 0) + inner))
        if self.requested_options:
            out.append(_tlv(Option.ORO, struct.pack(f"!{len(self.requested_options)}H",
                                                    *self.requested_options)))
        if self.elapsed_time is not None:
            out.append(_tlv(Option.ELAPSED_TIME, struct.pack("!H", self.elapsed_time)))
        if self.status is not None:
            out.append(_tlv(Option.STATUS_CODE, _encode_status(self.status)))
        if self.dns_servers:
            out.append(_tlv(Option.DNS_SERVERS, b"".join(a.packed for a in self.dns_servers)))
        if self.domain_list:
            out.append(_tlv(Option.DOMAIN_LIST, _encode_name_list(self.domain_list)))
        if self.information_refresh_time is not None:
            out.append(_tlv(Option.INFORMATION_REFRESH_TIME,
                            struct.pack("!I", self.information_refresh_time)))
        for code, data in self.other_options:
            if code in _INTERPRETED or not 0 <= code <= 0xFFFF:
                raise ValueError(f"dhcpv6: option {code} cannot go in other_options")
            out.append(_tlv(code, bytes(data)))
        return out

    def to_bytes(self) -> bytes:
        """The whole message. `emit` copies exactly these bytes. Raises `ValueError` for
        values that do not fit their fields."""
        if self.msg_type in (MessageType.RELAY_FORW, MessageType.RELAY_REPL):
            raise ValueError("dhcpv6: relay messages are not supported")
        _check("message type", self.msg_type, 0xFF)
        _check("transaction id", self.transaction_id, 0xFFFFFF)
        for iaid in self.ia_na_iaids:
            _check("IAID", iaid, 0xFFFFFFFF)
        for code in self.requested_options:
            _check("requested option", code, 0xFFFF)
        if self.elapsed_time is not None:
            _check("elapsed time", self.elapsed_time, 0xFFFF)
        if self.information_refresh_time is not None:
            _check("information refresh time", self.information_refresh_time, INFINITY)
        for status in (self.status, self.ia_na_status):
            if status is not None:
                _check("status code", status[0], 0xFFFF)
        return struct.pack("!B", self.msg_type) + self.transaction_id.to_bytes(3, "big") + \
            b"".join(self._options())

    def buffer_len(self) -> int:
        return len(self.to_bytes())

    def emit(self, packet: Dhcpv6Packet) -> None:
        """Write the whole message (exactly `buffer_len()` bytes) into `packet.buffer`."""
        data = self.to_bytes()
        if len(packet.buffer) < len(data):
            raise ValueError(f"dhcpv6: buffer of {len(packet.buffer)} bytes cannot hold "
                             f"{len(data)}")
        packet.buffer[: len(data)] = data


__all__ = [
    "ALL_DHCP_RELAY_AGENTS_AND_SERVERS",
    "CLIENT_PORT",
    "Dhcpv6Packet",
    "Dhcpv6Repr",
    "INFINITY",
    "IRT_DEFAULT",
    "IRT_MINIMUM",
    "MAX_DUID_LEN",
    "MAX_OPTIONS",
    "MessageType",
    "Option",
    "SERVER_PORT",
    "StatusCode",
    "duid_ll",
]
