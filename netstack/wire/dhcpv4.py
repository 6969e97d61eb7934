"""DHCPv4 messages (RFC 2131/2132) carried in UDP between ports 67 and 68.

`DhcpPacket` is a view over the BOOTP header and its option area; `DhcpRepr` holds what a DHCP
client and server need. Malformed input raises `wire.Error` (see wire/__init__).

Parsing rules:

- The buffer must hold the fixed 236-byte BOOTP header; htype must be 1 (Ethernet) and
  hlen 6. A message with no magic cookie 99.130.83.99, or with one but no message type
  option (53), is plain BOOTP (RFC 951; network-boot ROMs and old clients still send it):
  `message_type` is None, `op` says request or reply, and without the cookie the vendor
  area is not read as options.
- `sname` and `file` are ASCII text up to their first NUL (`server_name`, `boot_file`;
  other bytes read as "?").
- Options are walked from offset 240, bounded by the end of the buffer: PAD (0) is skipped,
  END (255) stops the walk (a missing END is tolerated: the buffer end stops it too), and a
  TLV whose length byte or data runs past the end raises `Error`.
- An option that appears more than once is concatenated in order (RFC 3396 long options).
- Known options with a wrong length (e.g. a 3-byte requested address) raise `Error`. Text
  options (hostname, domain name, message) are decoded as UTF-8 with invalid bytes replaced
  and trailing NULs stripped, so decoding never fails.
- Option overload (52) is ignored: `sname`/`file` are never searched for options, and 52 is
  dropped rather than kept in `additional_options` (re-emitting it would lie about our own
  `sname`/`file`).

`emit` writes the BOOTP header with the cookie, options in a fixed order (message type first,
none for plain BOOTP),
END, and zero padding up to the 300-byte BOOTP minimum; options longer than 255 bytes are split
into several TLVs of the same code (RFC 3396).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from netstack.wire import Error
from netstack.wire.ethernet import EthernetAddress

SERVER_PORT = 67
CLIENT_PORT = 68

OP = 0
HTYPE = 1
HLEN = 2
HOPS = 3
XID = slice(4, 8)
SECS = slice(8, 10)
FLAGS = slice(10, 12)
CIADDR = slice(12, 16)
YIADDR = slice(16, 20)
SIADDR = slice(20, 24)
GIADDR = slice(24, 28)
CHADDR = slice(28, 44)
SNAME = slice(44, 108)
FILE = slice(108, 236)
MAGIC_NUMBER = slice(236, 240)
OPTIONS = 240
HEADER_LEN = 240
BOOTP_MIN_LEN = 300

MAGIC_COOKIE = bytes((99, 130, 83, 99))
FLAG_BROADCAST = 0x8000
HTYPE_ETHERNET = 1
ZERO = IPv4Address(0)


class OpCode(IntEnum):
    REQUEST = 1
    REPLY = 2


class MessageType(IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8

    @property
    def opcode(self) -> OpCode:
        """BOOTREPLY for the server's messages (OFFER, ACK, NAK), BOOTREQUEST otherwise."""
        if self in (MessageType.OFFER, MessageType.ACK, MessageType.NAK):
            return OpCode.REPLY
        return OpCode.REQUEST


class Option(IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS_SERVERS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    REQUESTED_IP = 50
    LEASE_DURATION = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_IDENTIFIER = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_SIZE = 57
    RENEW_DURATION = 58
    REBIND_DURATION = 59
    VENDOR_CLASS = 60
    CLIENT_IDENTIFIER = 61
    TFTP_SERVER_NAME = 66
    BOOTFILE_NAME = 67
    USER_CLASS = 77
    END = 255


class DhcpPacket:
    """A view over a DHCP message: the BOOTP header, the cookie and the option area."""

    __slots__ = ("buffer",)

    def __init__(self, buffer) -> None:
        self.buffer = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) else buffer

    @classmethod
    def new_checked(cls, buffer) -> DhcpPacket:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        if len(self.buffer) < HEADER_LEN:
            raise Error("dhcp: message shorter than the BOOTP header and cookie")

    # -- fixed header ------------------------------------------------------------------------

    @property
    def op(self) -> int:
        return self.buffer[OP]

    @op.setter
    def op(self, value: int) -> None:
        self.buffer[OP] = value

    @property
    def htype(self) -> int:
        return self.buffer[HTYPE]

    @htype.setter
    def htype(self, value: int) -> None:
        self.buffer[HTYPE] = value

    @property
    def hlen(self) -> int:
        return self.buffer[HLEN]

    @hlen.setter
    def hlen(self, value: int) -> None:
        self.buffer[HLEN] = value

    @property
    def hops(self) -> int:
        return self.buffer[HOPS]

    @hops.setter
    def hops(self, value: int) -> None:
        self.buffer[HOPS] = value

    @property
    def xid(self) -> int:
        return int.from_bytes(self.buffer[XID], "big")

    @xid.setter
    def xid(self, value: int) -> None:
        self.buffer[XID] = value.to_bytes(4, "big")

    @property
    def secs(self) -> int:
        return int.from_bytes(self.buffer[SECS], "big")

    @secs.setter
    def secs(self, value: int) -> None:
        self.buffer[SECS] = value.to_bytes(2, "big")

    @property
    def flags(self) -> int:
        return int.from_bytes(self.buffer[FLAGS], "big")

    @flags.setter
    def flags(self, value: int) -> None:
        self.buffer[FLAGS] = value.to_bytes(2, "big")

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    @property
    def ciaddr(self) -> IPv4Address:
        return IPv4Address(bytes(self.buffer[CIADDR]))

    @ciaddr.setter
    def ciaddr(self, value: IPv4Address) -> None:
        self.buffer[CIADDR] = value.packed

    @property
    def yiaddr(self) -> IPv4Address:
        return IPv4Address(bytes(self.buffer[YIADDR]))

    @yiaddr.setter
    def yiaddr(self, value: IPv4Address) -> None:
        self.buffer[YIADDR] = value.packed

    @property
    def siaddr(self) -> IPv4Address:
        return IPv4Address(bytes(self.buffer[SIADDR]))

    @siaddr.setter
    def siaddr(self, value: IPv4Address) -> None:
        self.buffer[SIADDR] = value.packed

    @property
    def giaddr(self) -> IPv4Address:
        return IPv4Address(bytes(self.buffer[GIADDR]))

    @giaddr.setter
    def giaddr(self, value: IPv4Address) -> None:
        self.buffer[GIADDR] = value.packed

    @property
    def chaddr(self) -> memoryview:
        """All 16 bytes of the client hardware address field (a MAC uses the first hlen)."""
        return self.buffer[CHADDR]

    @property
    def client_hardware_address(self) -> EthernetAddress:
        return EthernetAddress(self.buffer[28:34])

    @client_hardware_address.setter
    def client_hardware_address(self, value: bytes) -> None:
        self.buffer[CHADDR] = bytes(value).ljust(16, b"\x00")

    @property
    def magic_number(self) -> bytes:
        return bytes(self.buffer[MAGIC_NUMBER])

    @magic_number.setter
    def magic_number(self, value: bytes) -> None:
        self.buffer[MAGIC_NUMBER] = value

    # -- options -----------------------------------------------------------------------------

    @property
    def options_buffer(self) -> memoryview:
        return self.buffer[OPTIONS:]

    def options(self) -> Iterator[tuple[int, memoryview]]:
        """Yield (code, data) for every option up to END or the buffer end; PAD skipped.

        Raises `Error` when a TLV's length byte or data runs past the end of the buffer.
        """
        buf = self.buffer
        end = len(buf)
        i = OPTIONS
        while i < end:
            code = buf[i]
            if code == Option.PAD:
                i += 1
                continue
            if code == Option.END:
                return
            if i + 1 >= end:
                raise Error(f"dhcp: option {code} has no length byte")
            length = buf[i + 1]
            start = i + 2
            if start + length > end:
                raise Error(f"dhcp: option {code} runs past the end of the message")
            yield code, buf[start : start + length]
            i = start + length


def _ip(data: bytes, code: int) -> IPv4Address:
    if len(data) != 4:
        raise Error(f"dhcp: option {code} must be 4 bytes, not {len(data)}")
    return IPv4Address(data)


def _ip_list(data: bytes, code: int) -> tuple[IPv4Address, ...]:
    if not data or len(data) % 4:
        raise Error(f"dhcp: option {code} must be a non-empty multiple of 4 bytes")
    return tuple(IPv4Address(data[i : i + 4]) for i in range(0, len(data), 4))


def _u32(data: bytes, code: int) -> int:
    if len(data) != 4:
        raise Error(f"dhcp: option {code} must be 4 bytes, not {len(data)}")
    return int.from_bytes(data, "big")


def _text(data: bytes) -> str:
    return data.rstrip(b"\x00").decode("utf-8", errors="replace")


def _field_text(data) -> str:
    """A NUL-terminated header field (sname, file) as text, never failing and never
    longer than the field allows (its last byte is the NUL): bytes outside ASCII read
    as "?"."""
    raw = bytes(data[: len(data) - 1]).split(b"\x00", 1)[0]
    return raw.decode("ascii", errors="replace").replace("\ufffd", "?")


@dataclass(frozen=True, slots=True)
class DhcpRepr:
    """A DHCP message as a client or server sees it.

    `op` follows from `message_type` (`MessageType.opcode`); only plain BOOTP
    (`message_type` None) needs it given. Optional options are None (or empty) when absent;
    `additional_options` keeps every other option verbatim as (code, data) in the order
    first seen. `server_name` and `boot_file` are the header's `sname` and `file` fields
    (the boot file also travels as option 67, `additional_options`, when a server sets it).
    """

    message_type: MessageType | None
    transaction_id: int
    client_hardware_address: EthernetAddress
    secs: int = 0
    broadcast: bool = False
    client_ip: IPv4Address = ZERO
    your_ip: IPv4Address = ZERO
    server_ip: IPv4Address = ZERO
    relay_agent_ip: IPv4Address = ZERO
    requested_ip: IPv4Address | None = None
    server_identifier: IPv4Address | None = None
    subnet_mask: IPv4Address | None = None
    router: IPv4Address | None = None
    dns_servers: tuple[IPv4Address, ...] = ()
    lease_duration: int | None = None
    renew_duration: int | None = None
    rebind_duration: int | None = None
    parameter_request_list: bytes | None = None
    client_identifier: bytes | None = None
    hostname: str | None = None
    domain_name: str | None = None
    max_size: int | None = None
    message: str | None = None
    additional_options: tuple[tuple[int, bytes], ...] = ()
    op: OpCode | None = None
    server_name: str = ""
    boot_file: str = ""

    def __post_init__(self) -> None:
        if self.message_type is None and self.op is None:
            raise ValueError("dhcp: a plain BOOTP message needs its op")
        for name, field, text in (("server_name", SNAME, self.server_name),
                                  ("boot_file", FILE, self.boot_file)):
            room = field.stop - field.start - 1  # NUL-terminated
            if len(text.encode("utf-8")) > room:
                raise ValueError(f"dhcp: {name} is longer than {room} bytes")

    @property
    def opcode(self) -> OpCode:
        """BOOTREQUEST or BOOTREPLY: given, or the message type's."""
        if self.message_type is None:
            return self.op  # type: ignore[return-value]  # __post_init__ checked it
        return self.message_type.opcode

    def option(self, code: int) -> bytes | None:
        """The data of an option kept in `additional_options`, or None."""
        for c, data in self.additional_options:
            if c == code:
                return data
        return None

    @classmethod
    def parse(cls, packet: DhcpPacket) -> DhcpRepr:
        packet.check_len()
        if packet.htype != HTYPE_ETHERNET or packet.hlen != 6:
            raise Error("dhcp: hardware type is not Ethernet with a 6-byte address")
        if packet.op not in (OpCode.REQUEST, OpCode.REPLY):
            raise Error(f"dhcp: op {packet.op} is neither BOOTREQUEST nor BOOTREPLY")

        merged: dict[int, bytearray] = {}
        if packet.magic_number == MAGIC_COOKIE:
            for code, data in packet.options():
                if code in merged:
                    merged[code] += data
                else:
                    merged[code] = bytearray(data)
        opts = {code: bytes(data) for code, data in merged.items()}

        raw_type = opts.pop(Option.MESSAGE_TYPE, None)
        message_type = None  # plain BOOTP
        if raw_type is not None:
            if len(raw_type) != 1:
                raise Error("dhcp: message type option must be 1 byte")
            try:
                message_type = MessageType(raw_type[0])
            except ValueError:
                raise Error(f"dhcp: unknown message type {raw_type[0]}") from None

        def take(code: Option, conv):
            data = opts.pop(code, None)
            return None if data is None else conv(data, int(code))

        requested_ip = take(Option.REQUESTED_IP, _ip)
        server_identifier = take(Option.SERVER_IDENTIFIER, _ip)
        subnet_mask = take(Option.SUBNET_MASK, _ip)
        routers = take(Option.ROUTER, _ip_list)
        dns_servers = take(Option.DNS_SERVERS, _ip_list) or ()
        lease_duration = take(Option.LEASE_DURATION, _u32)
        renew_duration = take(Option.RENEW_DURATION, _u32)
        rebind_duration = take(Option.REBIND_DURATION, _u32)
        parameter_request_list = take(Option.PARAMETER_REQUEST_LIST, lambda d, c: d)
        client_identifier = take(Option.CLIENT_IDENTIFIER, lambda d, c: d)
        hostname = take(Option.HOSTNAME, lambda d, c: _text(d))
        domain_name = take(Option.DOMAIN_NAME, lambda d, c: _text(d))
        message = take(Option.MESSAGE, lambda d, c: _text(d))
        raw_max = opts.pop(Option.MAX_SIZE, None)
        max_size = None
        if raw_max is not None:
            if len(raw_max) != 2:
                raise Error("dhcp: maximum message size option must be 2 bytes")
            max_size = int.from_bytes(raw_max, "big")
        opts.pop(Option.OVERLOAD, None)

        return cls(
            message_type=message_type,
            transaction_id=packet.xid,
            client_hardware_address=packet.client_hardware_address,
            secs=packet.secs,
            broadcast=packet.broadcast,
            client_ip=packet.ciaddr,
            your_ip=packet.yiaddr,
            server_ip=packet.siaddr,
            relay_agent_ip=packet.giaddr,
            requested_ip=requested_ip,
            server_identifier=server_identifier,
            subnet_mask=subnet_mask,
            router=routers[0] if routers else None,
            dns_servers=dns_servers,
            lease_duration=lease_duration,
            renew_duration=renew_duration,
            rebind_duration=rebind_duration,
            parameter_request_list=parameter_request_list,
            client_identifier=client_identifier,
            hostname=hostname,
            domain_name=domain_name,
            max_size=max_size,
            message=message,
            additional_options=tuple(opts.items()),
            op=OpCode(packet.op) if message_type is None else None,
            server_name=_field_text(packet.buffer[SNAME]),
            boot_file=_field_text(packet.buffer[FILE]),
        )

    def _options(self) -> list[tuple[int, bytes]]:
        """(code, data) pairs in emit order: message type first, the rest as a server and
        client conventionally send them, then `additional_options`."""
        out: list[tuple[int, bytes]] = []
        if self.message_type is not None:
            out.append((Option.MESSAGE_TYPE, bytes((self.message_type,))))

        def add(code: int, value, encode) -> None:
            if value is not None:
                out.append((code, encode(value)))

        def u32(v: int) -> bytes:
            return v.to_bytes(4, "big")

        def text(v: str) -> bytes:
            return v.encode("utf-8")

        add(Option.CLIENT_IDENTIFIER, self.client_identifier, bytes)
        add(Option.SERVER_IDENTIFIER, self.server_identifier, lambda v: v.packed)
        add(Option.REQUESTED_IP, self.requested_ip, lambda v: v.packed)
        add(Option.LEASE_DURATION, self.lease_duration, u32)
        add(Option.RENEW_DURATION, self.renew_duration, u32)
        add(Option.REBIND_DURATION, self.rebind_duration, u32)
        add(Option.SUBNET_MASK, self.subnet_mask, lambda v: v.packed)
        add(Option.ROUTER, self.router, lambda v: v.packed)
        if self.dns_servers:
            out.append((Option.DNS_SERVERS, b"".join(a.packed for a in self.dns_servers)))
        add(Option.HOSTNAME, self.hostname, text)
        add(Option.DOMAIN_NAME, self.domain_name, text)
        add(Option.PARAMETER_REQUEST_LIST, self.parameter_request_list, bytes)
        add(Option.MAX_SIZE, self.max_size, lambda v: v.to_bytes(2, "big"))
        add(Option.MESSAGE, self.message, text)
        for code, data in self.additional_options:
            if code in (Option.PAD, Option.END) or not 0 <= code <= 255:
                raise ValueError(f"dhcp: option code {code} cannot be emitted as a TLV")
            if code == Option.OVERLOAD:
                continue
            out.append((code, bytes(data)))
        return out

    @staticmethod
    def _tlv_len(data: bytes) -> int:
        # RFC 3396: split into 255-byte pieces; an empty option is one TLV of length 0.
        pieces = max(1, -(-len(data) // 255))
        return 2 * pieces + len(data)

    def buffer_len(self) -> int:
        n = OPTIONS + sum(self._tlv_len(d) for _, d in self._options()) + 1
        return max(n, BOOTP_MIN_LEN)

    def emit(self, packet: DhcpPacket) -> None:
        """Write the whole message (exactly `buffer_len()` bytes) into `packet.buffer`."""
        b = packet.buffer
        length = self.buffer_len()
        if len(b) < length:
            raise ValueError(f"dhcp: buffer of {len(b)} bytes cannot hold {length}")
        b[OP] = self.opcode
        b[HTYPE] = HTYPE_ETHERNET
        b[HLEN] = 6
        b[HOPS] = 0
        struct.pack_into("!IHH", b, 4, self.transaction_id, self.secs,
                         FLAG_BROADCAST if self.broadcast else 0)
        b[CIADDR] = self.client_ip.packed
        b[YIADDR] = self.your_ip.packed
        b[SIADDR] = self.server_ip.packed
        b[GIADDR] = self.relay_agent_ip.packed
        b[CHADDR] = bytes(self.client_hardware_address).ljust(16, b"\x00")
        b[SNAME.start : FILE.stop] = bytes(FILE.stop - SNAME.start)
        for field, text in ((SNAME, self.server_name), (FILE, self.boot_file)):
            data = text.encode("utf-8")
            b[field.start : field.start + len(data)] = data
        b[MAGIC_NUMBER] = MAGIC_COOKIE
        i = OPTIONS
        for code, data in self._options():
            chunks = [data[j : j + 255] for j in range(0, len(data), 255)] or [b""]
            for chunk in chunks:
                b[i] = code
                b[i + 1] = len(chunk)
                b[i + 2 : i + 2 + len(chunk)] = chunk
                i += 2 + len(chunk)
        b[i] = Option.END
        i += 1
        b[i:length] = bytes(length - i)
