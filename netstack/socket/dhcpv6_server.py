"""A stateless DHCPv6 server for the guest network (RFC 8415 §6.1), sans-I/O, and the UDP
socket on port 547 that drives it.

Addresses come from SLAAC (router advertisements); this server only hands out the other
configuration: DNS servers and the domain search list (RFC 3646). `Dhcpv6Server.answer`
maps one parsed client message to the reply to send, or None; it never touches a socket or
a clock.

What it answers (RFC 8415 §16 validation, §18.3 server behaviour):

- INFORMATION-REQUEST → REPLY with our SERVERID, the client's CLIENTID when it sent one (it
  may not, §18.2.6), DNS_SERVERS and DOMAIN_LIST, and INFORMATION_REFRESH_TIME. The two DNS
  options are sent whenever they are configured, requested in the ORO or not: §18.3 lets a
  server return options it was not asked for, and a client without an ORO still gets its
  resolver. Discarded (§16.12) when it carries a SERVERID that is not ours or any IA option
  (IA_NA, IA_TA, IA_PD).
- SOLICIT with at least one IA_NA → ADVERTISE saying there are no addresses: every IA_NA is
  echoed with no address and a Status Code NoAddrsAvail inside it (§18.3.1, which took this
  over from RFC 7550), plus a message-level NoAddrsAvail for clients written to RFC 3315
  §17.2.2. A client MUST ignore an Advertise that offers no address but still obeys its
  SOL_MAX_RT (§18.2.9), so when the client asked for SOL_MAX_RT in its ORO (§21.24 allows
  it only then) the Advertise carries `sol_max_rt` and a stateful client retries every hour
  instead of hammering us; otherwise it falls back to Information-request. Staying silent
  would leave the client at its own SOL_MAX_RT (default 3600 s) with no reason given.
  Discarded (§16.2) without a CLIENTID or with any SERVERID.
- SOLICIT with no IA_NA (only IA_PD or IA_TA): no answer; we delegate nothing.
- Every other type (REQUEST, RENEW, REBIND, CONFIRM, RELEASE, DECLINE, server messages,
  unknown types): no answer. We never advertise an address, so no client can hold one of
  ours to request, renew, confirm, release or decline; CONFIRM must go unanswered by a server
  with no knowledge of the link's addresses (§18.3.3).
- Network boot (RFC 5970): with `boot_file_url` set, a REPLY to a client whose ORO asks
  for OPT_BOOTFILE_URL (59) carries it; iPXE asks for it in its Information-request, so
  an IPv6-only network boots by HTTP over IPv6 (UEFI's HTTP boot asks in a SOLICIT,
  which gets it too).
- Relay messages never reach `answer`: `Dhcpv6Repr.parse` rejects them ("relay not
  supported"), so relayed clients are not served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv6Address

from netstack.socket.errors import SocketError
from netstack.socket.udp import UdpSocket
from netstack.wire import Error as WireError
from netstack.wire.dhcpv6 import (
    CLIENT_PORT,
    INFINITY,
    IRT_DEFAULT,
    IRT_MINIMUM,
    SERVER_PORT,
    Dhcpv6Packet,
    Dhcpv6Repr,
    MessageType,
    Option,
    StatusCode,
    duid_ll,
)
from netstack.wire.dns import name_to_labels
from netstack.wire.ethernet import EthernetAddress

log = logging.getLogger(__name__)

SOL_MAX_RT_MIN = 60  # RFC 8415 §21.24: clients ignore values outside 60..86400
SOL_MAX_RT_MAX = 86400
NO_ADDRS_MESSAGE = "no addresses here: use SLAAC"
OPT_BOOTFILE_URL = 59  # RFC 5970 §3.1

# The identity-association options that make an Information-request invalid (§16.12).
_IA_OPTIONS = frozenset({Option.IA_TA, Option.IA_PD})


@dataclass(frozen=True, slots=True)
class Dhcpv6ServerConfig:
    """What the server hands out. `mac` is ours: the server DUID is its DUID-LL.
    Addresses may be given as strings; names as for `netstack.wire.dns`."""

    mac: EthernetAddress
    dns_servers: tuple[IPv6Address, ...] = ()
    domain_list: tuple[str, ...] = ()
    information_refresh_time: int = IRT_DEFAULT
    sol_max_rt: int = 3600
    boot_file_url: str | None = None  # RFC 5970 OPT_BOOTFILE_URL, when asked for

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "mac", EthernetAddress(self.mac))
        set_(self, "dns_servers", tuple(IPv6Address(a) for a in self.dns_servers))
        set_(self, "domain_list", tuple(self.domain_list))
        for name in self.domain_list:
            name_to_labels(name)  # ValueError for a bad name
        if not IRT_MINIMUM <= self.information_refresh_time <= INFINITY:
            raise ValueError(f"information_refresh_time {self.information_refresh_time} "
                             f"is not in {IRT_MINIMUM}..{INFINITY}")
        if not SOL_MAX_RT_MIN <= self.sol_max_rt <= SOL_MAX_RT_MAX:
            raise ValueError(f"sol_max_rt {self.sol_max_rt} is not in "
                             f"{SOL_MAX_RT_MIN}..{SOL_MAX_RT_MAX}")
        if self.boot_file_url is not None and not 0 < len(self.boot_file_url.encode()) < 1024:
            raise ValueError("boot_file_url must be 1 to 1023 bytes")
        # Fails now, not on the first request, when the options do not fit a message.
        Dhcpv6Repr(MessageType.REPLY, 0, server_id=self.server_duid,
                   dns_servers=self.dns_servers, domain_list=self.domain_list).to_bytes()

    @property
    def server_duid(self) -> bytes:
        return duid_ll(self.mac)


@dataclass(slots=True)
class Dhcpv6ServerStats:
    requests: int = 0  # messages handed to answer()
    replies: int = 0  # REPLY to INFORMATION-REQUEST
    advertises: int = 0  # ADVERTISE with NoAddrsAvail
    ignored: int = 0  # valid messages we do not answer (other types, not for us)
    invalid: int = 0  # discarded by the RFC 8415 §16 rules
    malformed: int = 0  # counted by the socket: did not parse


class Dhcpv6Server:
    """The stateless server engine.

    >>> server = Dhcpv6Server(Dhcpv6ServerConfig(EthernetAddress(bytes(6)), ["fd00::3"]))
    >>> reply = server.answer(Dhcpv6Repr(MessageType.INFORMATION_REQUEST, 0x1234))
    >>> reply.msg_type.name, reply.dns_servers, reply.information_refresh_time
    ('REPLY', (IPv6Address('fd00::3'),), 86400)
    """

    __slots__ = ("config", "stats")

    def __init__(self, config: Dhcpv6ServerConfig) -> None:
        self.config = config
        self.stats = Dhcpv6ServerStats()

    def answer(self, request: Dhcpv6Repr) -> Dhcpv6Repr | None:
        """The reply to `request`, or None when it gets none (see the module docstring)."""
        self.stats.requests += 1
        if request.msg_type == MessageType.INFORMATION_REQUEST:
            return self._information_request(request)
        if request.msg_type == MessageType.SOLICIT:
            return self._solicit(request)
        self.stats.ignored += 1
        return None

    def _information_request(self, request: Dhcpv6Repr) -> Dhcpv6Repr | None:
        cfg = self.config
        if request.server_id is not None and request.server_id != cfg.server_duid:
            self.stats.ignored += 1  # meant for another server
            return None
        if request.ia_na_iaids or any(code in _IA_OPTIONS for code, _ in request.other_options):
            self.stats.invalid += 1
            return None
        self.stats.replies += 1
        return Dhcpv6Repr(
            msg_type=MessageType.REPLY,
            transaction_id=request.transaction_id,
            client_id=request.client_id,
            server_id=cfg.server_duid,
            dns_servers=cfg.dns_servers,
            domain_list=cfg.domain_list,
            information_refresh_time=cfg.information_refresh_time,
            other_options=self._boot(request),
        )

    def _boot(self, request: Dhcpv6Repr) -> tuple[tuple[int, bytes], ...]:
        url = self.config.boot_file_url
        if url is None or OPT_BOOTFILE_URL not in request.requested_options:
            return ()
        return ((OPT_BOOTFILE_URL, url.encode()),)

    def _solicit(self, request: Dhcpv6Repr) -> Dhcpv6Repr | None:
        cfg = self.config
        if request.client_id is None or request.server_id is not None:
            self.stats.invalid += 1
            return None
        if not request.ia_na_iaids:
            self.stats.ignored += 1
            return None
        status = (StatusCode.NO_ADDRS_AVAIL, NO_ADDRS_MESSAGE)
        other: tuple[tuple[int, bytes], ...] = self._boot(request)
        if Option.SOL_MAX_RT in request.requested_options:
            other += ((Option.SOL_MAX_RT, cfg.sol_max_rt.to_bytes(4, "big")),)
        self.stats.advertises += 1
        return Dhcpv6Repr(
            msg_type=MessageType.ADVERTISE,
            transaction_id=request.transaction_id,
            client_id=request.client_id,
            server_id=cfg.server_duid,
            status=status,
            ia_na_iaids=request.ia_na_iaids,
            ia_na_status=status,
            dns_servers=cfg.dns_servers,
            domain_list=cfg.domain_list,
            other_options=other,
        )


class Dhcpv6ServerSocket(UdpSocket):
    """UDP port 547 on every address (clients send to ff02::1:2 from their link-local
    address), answering from a Dhcpv6Server inside `process` so the reply leaves in the same
    poll. Replies go to the client's source address, port 546 (RFC 8415 §7.2)."""

    __slots__ = ("server",)

    def __init__(self, server: Dhcpv6Server) -> None:
        super().__init__()
        self.server = server
        self.bind(("::", SERVER_PORT), v6only=True)

    def process(self, now, ip_repr, udp_repr, payload, src_hw=None) -> None:
        try:
            request = Dhcpv6Repr.parse(Dhcpv6Packet.new_checked(payload))
        except WireError as e:
            self.server.stats.malformed += 1
            log.debug("malformed DHCPv6 message from %s: %s", ip_repr.src_addr, e)
            return
        reply = self.server.answer(request)
        if reply is None:
            return
        try:
            self.send_to(reply.to_bytes(), (ip_repr.src_addr, CLIENT_PORT))
        except SocketError as e:
            log.warning("DHCPv6 %s to %s not sent: %s", reply.msg_type.name,
                        ip_repr.src_addr, e)
        else:
            log.info("DHCPv6 %s -> %s", reply.msg_type.name, ip_repr.src_addr)


__all__ = [
    "Dhcpv6Server",
    "Dhcpv6ServerConfig",
    "Dhcpv6ServerSocket",
    "Dhcpv6ServerStats",
    "NO_ADDRS_MESSAGE",
]
