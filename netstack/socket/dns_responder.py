"""A small authoritative DNS responder for the gateway's own names, as a sans-I/O engine.

The caller hands it a query that arrived on UDP port 53 (`handle(DnsRepr)` or the raw
datagram with `handle_bytes`) and sends back what it returns. It does not recurse: names
outside its table get NXDOMAIN (use `is_local(name)` to decide whether to forward instead).

Answers (RFC 1034/1035, RFC 3596 for AAAA, RFC 8020 for empty non-terminals):

- Names compare case-insensitively and a trailing dot is ignored. A name added without a
  dot ("host") is qualified with the domain ("host.vhostnet").
- A / AAAA: every address of that family recorded for the name; ANY: all of them (and the
  PTR for a reverse name). A name that exists (it has records, it is the domain itself, or
  a name below it has records) but has nothing of the asked type: NOERROR, no answers.
- PTR for in-addr.arpa / ip6.arpa names of recorded addresses: the first name the address
  was recorded under.
- Everything else: NXDOMAIN. The AA bit is set for names in our domain and for reverse
  names we answer; never for names we know nothing about.
- Class IN and ANY are served; other classes (CHAOS `version.bind`...) get REFUSED.
- Opcode other than QUERY: NOTIMP. No question: FORMERR. A message with QR=1 is a response
  and is never answered (so two responders cannot loop).
- Several questions: only the first is answered and echoed (RFC 9619 has since made
  QDCOUNT > 1 a FORMERR candidate; nothing sends it in practice).
- The response echoes id, opcode, RD and CD; RA is clear (no recursion). It is kept within
  512 bytes (no EDNS): answers that do not fit are dropped and TC is set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address, ip_address

from netstack.wire import Error
from netstack.wire.dns import (
    Class,
    DnsPacket,
    DnsRepr,
    Opcode,
    Rcode,
    Record,
    Type,
    name_to_labels,
    parse_reverse_name,
)

MAX_UDP_LEN = 512

IpAddress = IPv4Address | IPv6Address


def _key(name: str) -> str:
    return name.lower().rstrip(".")


def parse_record_spec(text: str) -> tuple[str, IpAddress]:
    """Read a `--dns-record NAME=ADDR` argument. Raises `ValueError` with the reason."""
    name, sep, addr = text.partition("=")
    if not sep or not name.strip() or not addr.strip():
        raise ValueError(f"expected NAME=ADDR, not {text!r}")
    return name.strip(), ip_address(addr.strip())


@dataclass(slots=True)
class DnsResponderStats:
    queries: int = 0
    answered: int = 0
    nodata: int = 0
    nxdomain: int = 0
    formerr: int = 0
    notimp: int = 0
    refused: int = 0
    truncated: int = 0
    dropped: int = 0


class DnsResponder:
    """Names → addresses for the guest network.

    >>> from netstack.wire.dns import DnsRepr, Question, Type
    >>> dns = DnsResponder()
    >>> reply = dns.handle(DnsRepr(id=1, questions=(Question("Gateway.vhostnet."),)))
    >>> [str(r.data) for r in reply.answers], reply.authoritative
    (['10.0.2.2'], True)
    """

    def __init__(self, records: Mapping[str, Iterable[IpAddress | str]] | None = None,
                 domain: str = "vhostnet", ttl: int = 60) -> None:
        name_to_labels(domain)  # raises ValueError for a bad domain
        self.domain = _key(domain)
        self.ttl = ttl
        self.stats = DnsResponderStats()
        self._names: dict[str, str] = {}  # key -> name as first added (answers use it)
        self._addrs: dict[str, list[IpAddress]] = {}
        self._reverse: dict[IpAddress, str] = {}
        if records is None:
            records = {f"gateway.{self.domain}": ["10.0.2.2"], f"dns.{self.domain}": ["10.0.2.3"]}
        for name, addrs in records.items():
            for addr in addrs:
                self.add_record(name, addr)

    # -- table ---------------------------------------------------------------------------

    def add_record(self, name: str, addr: IpAddress | str) -> None:
        """Record `addr` (IPv4 or IPv6) for `name`. Raises `ValueError` for a bad name or
        address. Adding the same pair twice is harmless. An IPv6 zone ("%eth0") is
        dropped. A name may hold both families: A queries see the IPv4 addresses, AAAA
        queries the IPv6 ones, and each address's reverse name answers PTR."""
        addr = ip_address(addr) if isinstance(addr, str) else addr
        if not isinstance(addr, IPv4Address | IPv6Address):
            raise ValueError(f"not an IP address: {addr!r}")
        if isinstance(addr, IPv6Address) and addr.scope_id is not None:
            # "fe80::2%eth0": the zone means nothing to the guest and would keep the
            # address from matching its ip6.arpa name.
            addr = IPv6Address(addr.packed)
        name = name.rstrip(".")
        if "." not in name:
            name = f"{name}.{self.domain}"
        name_to_labels(name)
        key = _key(name)
        self._names.setdefault(key, name)
        addrs = self._addrs.setdefault(key, [])
        if addr not in addrs:
            addrs.append(addr)
        self._reverse.setdefault(addr, self._names[key])

    def records(self) -> dict[str, list[IpAddress]]:
        """The table, for status output."""
        return {self._names[k]: list(v) for k, v in self._addrs.items()}

    def is_local(self, name: str) -> bool:
        """Whether `name` is ours to answer: in our domain, or the reverse name of an
        address we recorded."""
        key = _key(name)
        if key == self.domain or key.endswith("." + self.domain) or key in self._addrs:
            return True
        addr = parse_reverse_name(key) if key else None
        return addr is not None and addr in self._reverse

    def _exists(self, key: str) -> bool:
        if key in self._addrs or key == self.domain:
            return True
        suffix = "." + key
        return any(k.endswith(suffix) for k in self._addrs)

    # -- queries -------------------------------------------------------------------------

    def handle(self, query: DnsRepr) -> DnsRepr | None:
        """The response to `query`, or None when it must not be answered (it is itself a
        response)."""
        if query.is_response:
            self.stats.dropped += 1
            return None
        self.stats.queries += 1
        if query.opcode != Opcode.QUERY:
            self.stats.notimp += 1
            return self._response(query, Rcode.NOTIMP)
        if not query.questions:
            self.stats.formerr += 1
            return self._response(query, Rcode.FORMERR)
        q = query.questions[0]
        if q.qclass not in (Class.IN, Class.ANY):
            self.stats.refused += 1
            return self._response(query, Rcode.REFUSED)

        key = _key(q.name)
        answers: list[Record] = []
        ours = key == self.domain or key.endswith("." + self.domain)
        exists = self._exists(key)
        rev = parse_reverse_name(key) if key else None
        if rev is not None and rev in self._reverse:
            exists = ours = True
            if q.qtype in (Type.PTR, Type.ANY):
                answers.append(Record(q.name, Type.PTR, Class.IN, self.ttl, self._reverse[rev]))
        for addr in self._addrs.get(key, ()):
            rtype = Type.A if addr.version == 4 else Type.AAAA
            if q.qtype in (rtype, Type.ANY):
                answers.append(Record(q.name, rtype, Class.IN, self.ttl, addr))

        if not exists:
            self.stats.nxdomain += 1
            return self._response(query, Rcode.NXDOMAIN, authoritative=ours)
        if answers:
            self.stats.answered += 1
        else:
            self.stats.nodata += 1
        return self._response(query, Rcode.NOERROR, answers, authoritative=ours)

    def _response(self, query: DnsRepr, rcode: Rcode, answers: list[Record] | None = None,
                  *, authoritative: bool = False) -> DnsRepr:
        answers = answers or []
        response = DnsRepr(
            id=query.id,
            is_response=True,
            opcode=query.opcode,
            authoritative=authoritative,
            recursion_desired=query.recursion_desired,
            checking_disabled=query.checking_disabled,
            rcode=rcode,
            questions=query.questions[:1],
            answers=tuple(answers),
        )
        if len(response.to_bytes()) <= MAX_UDP_LEN:
            return response
        self.stats.truncated += 1
        while answers:
            answers.pop()
            response = replace(response, answers=tuple(answers), truncated=True)
            if len(response.to_bytes()) <= MAX_UDP_LEN:
                return response
        return replace(response, questions=(), truncated=True)

    def handle_bytes(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """Parse a datagram, answer it, emit the answer. A query whose header parses but
        whose body does not gets FORMERR (no question echoed); a datagram shorter than a
        header, or a malformed response, gets nothing. Never raises for any input."""
        try:
            packet = DnsPacket.new_checked(data)
        except Error:
            self.stats.dropped += 1
            return None
        try:
            query = DnsRepr.parse(packet)
        except Error:
            if packet.is_response:
                self.stats.dropped += 1
                return None
            self.stats.queries += 1
            self.stats.formerr += 1
            header_only = DnsRepr(id=packet.id, opcode=packet.opcode,
                                  recursion_desired=packet.recursion_desired)
            response = self._response(header_only, Rcode.FORMERR)
        else:
            response = self.handle(query)
        if response is None:
            return None
        try:
            return response.to_bytes()
        except ValueError:
            # A question that parsed but cannot be emitted again (should not happen: parse
            # then emit is lossless); answer FORMERR without echoing it.
            self.stats.formerr += 1
            return DnsRepr(id=response.id, is_response=True, opcode=response.opcode,
                           rcode=Rcode.FORMERR).to_bytes()


__all__ = [
    "DnsResponder",
    "DnsResponderStats",
    "MAX_UDP_LEN",
    "parse_record_spec",
]
