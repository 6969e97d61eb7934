"""DNS responder engine: queries built with scapy, answers read back with scapy."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR

from netstack.socket.dns_responder import MAX_UDP_LEN, DnsResponder, parse_record_spec
from netstack.wire.dns import DnsRepr, Opcode, Question, Rcode, Type

NOERROR, FORMERR, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 3, 4, 5


def ask(dns: DnsResponder, name: str, qtype: str = "A", **kw) -> DNS:
    out = dns.handle_bytes(bytes(DNS(id=0x4242, rd=1, qd=DNSQR(qname=name, qtype=qtype), **kw)))
    assert out is not None
    return DNS(out)


def answers(reply: DNS) -> list:
    return [reply.an[i].rdata for i in range(reply.ancount)]


def test_gateway_a_record() -> None:
    r = ask(DnsResponder(), "gateway.vhostnet")
    assert (r.id, r.qr, r.rd, r.ra, r.aa, r.rcode) == (0x4242, 1, 1, 0, 1, NOERROR)
    assert r.qd[0].qname == b"gateway.vhostnet."
    assert answers(r) == ["10.0.2.2"]
    assert r.an[0].ttl == 60 and r.an[0].rrname == b"gateway.vhostnet."
    assert answers(ask(DnsResponder(), "dns.vhostnet")) == ["10.0.2.3"]


def test_names_are_case_insensitive_and_keep_the_question_case() -> None:
    r = ask(DnsResponder(), "GaTeWaY.VHOSTNET.")
    assert answers(r) == ["10.0.2.2"]
    assert r.an[0].rrname == b"GaTeWaY.VHOSTNET."


def test_aaaa_absent_is_noerror_empty() -> None:
    r = ask(DnsResponder(), "gateway.vhostnet", "AAAA")
    assert (r.rcode, r.ancount, r.aa) == (NOERROR, 0, 1)
    for qtype in ("MX", "TXT", "PTR"):
        assert ask(DnsResponder(), "gateway.vhostnet", qtype).rcode == NOERROR
    # The domain itself exists too.
    assert ask(DnsResponder(), "vhostnet").rcode == NOERROR


def test_ptr_for_gateway() -> None:
    r = ask(DnsResponder(), "2.2.0.10.in-addr.arpa", "PTR")
    assert (r.rcode, r.aa) == (NOERROR, 1)
    assert answers(r) == [b"gateway.vhostnet."]
    assert ask(DnsResponder(), "9.9.0.10.in-addr.arpa", "PTR").rcode == NXDOMAIN


def test_nxdomain() -> None:
    r = ask(DnsResponder(), "nope.vhostnet")
    assert (r.rcode, r.aa, r.ancount) == (NXDOMAIN, 1, 0)
    r = ask(DnsResponder(), "example.com")
    assert (r.rcode, r.aa) == (NXDOMAIN, 0)


def test_added_records_v4_and_v6() -> None:
    dns = DnsResponder()
    dns.add_record(*parse_record_spec("web.vhostnet=10.0.2.50"))
    dns.add_record("web.vhostnet.", "fd00::50")
    dns.add_record("db", IPv4Address("10.0.2.51"))  # qualified with the domain
    dns.add_record("host.example.org", "192.0.2.7")
    assert answers(ask(dns, "web.vhostnet")) == ["10.0.2.50"]
    assert answers(ask(dns, "WEB.vhostnet", "AAAA")) == ["fd00::50"]
    assert sorted(answers(ask(dns, "web.vhostnet", "ALL"))) == ["10.0.2.50", "fd00::50"]
    assert answers(ask(dns, "db.vhostnet")) == ["10.0.2.51"]
    r = ask(dns, "host.example.org")
    assert answers(r) == ["192.0.2.7"] and r.aa == 0
    ptr6 = IPv6Address("fd00::50").reverse_pointer
    assert answers(ask(dns, ptr6, "PTR")) == [b"web.vhostnet."]
    assert dns.records()["web.vhostnet"] == [IPv4Address("10.0.2.50"), IPv6Address("fd00::50")]
    assert dns.is_local("x.vhostnet") and not dns.is_local("example.com")
    with pytest.raises(ValueError):
        parse_record_spec("web.vhostnet")
    with pytest.raises(ValueError):
        parse_record_spec("web=not-an-ip")
    with pytest.raises(ValueError):
        dns.add_record("a..b", "10.0.0.1")



# -- IPv6: AAAA and ip6.arpa -------------------------------------------------------------------

GW6 = IPv6Address("fd00::2")


def dual_stack() -> DnsResponder:
    return DnsResponder({"gateway.vhostnet": ["10.0.2.2", str(GW6)],
                         "dns.vhostnet": ["10.0.2.3"]})


def test_aaaa_answered_with_the_v6_address() -> None:
    r = ask(dual_stack(), "gateway.vhostnet", "AAAA")
    assert (r.rcode, r.aa, r.ancount) == (NOERROR, 1, 1)
    assert (r.an[0].type, r.an[0].rrname, r.an[0].rdata) == (28, b"gateway.vhostnet.", "fd00::2")
    # The A query on the same name still sees only the IPv4 address.
    assert answers(ask(dual_stack(), "gateway.vhostnet")) == ["10.0.2.2"]


def test_aaaa_for_a_name_with_only_a_is_nodata() -> None:
    dns = dual_stack()
    r = ask(dns, "dns.vhostnet", "AAAA")
    assert (r.rcode, r.aa, r.ancount) == (NOERROR, 1, 0)
    assert dns.stats.nodata == 1 and dns.stats.nxdomain == 0
    # And the other way round: A for a name that has only AAAA.
    dns.add_record("v6only", "fd00::66")
    r = ask(dns, "v6only.vhostnet", "A")
    assert (r.rcode, r.ancount) == (NOERROR, 0)
    assert ask(dns, "nothing.vhostnet", "AAAA").rcode == NXDOMAIN


def test_ptr_for_our_ip6_arpa_name() -> None:
    name = GW6.reverse_pointer
    assert name.endswith(".ip6.arpa") and name.count(".") == 33
    r = ask(dual_stack(), name, "PTR")
    assert (r.rcode, r.aa) == (NOERROR, 1)
    assert answers(r) == [b"gateway.vhostnet."]
    assert r.an[0].rrname == (name + ".").encode()
    # Nibbles compare case-insensitively; the question's case is echoed.
    upper = ask(dual_stack(), name.upper(), "PTR")
    assert answers(upper) == [b"gateway.vhostnet."]
    # The reverse name of an address we do not hold is not ours.
    other = ask(dual_stack(), IPv6Address("fd00::9").reverse_pointer, "PTR")
    assert (other.rcode, other.aa) == (NXDOMAIN, 0)
    # Another type on our reverse name: it exists, so NODATA.
    assert ask(dual_stack(), name, "AAAA").rcode == NOERROR
    assert ask(dual_stack(), name, "AAAA").ancount == 0


def test_link_local_with_a_zone_is_recorded_without_it() -> None:
    dns = DnsResponder({})
    dns.add_record("gateway", "fe80::2%eth0")
    assert answers(ask(dns, "gateway.vhostnet", "AAAA")) == ["fe80::2"]
    ptr = ask(dns, IPv6Address("fe80::2").reverse_pointer, "PTR")
    assert answers(ptr) == [b"gateway.vhostnet."]
    assert dns.records() == {"gateway.vhostnet": [IPv6Address("fe80::2")]}
    assert dns.is_local(IPv6Address("fe80::2").reverse_pointer)


def test_aaaa_via_repr_api() -> None:
    r = dual_stack().handle(DnsRepr(id=2, questions=(Question("gateway.vhostnet", Type.AAAA),)))
    assert [(a.rtype, a.data) for a in r.answers] == [(Type.AAAA, GW6)]


def test_empty_non_terminal_is_noerror() -> None:
    dns = DnsResponder({"a.b.vhostnet": ["10.0.2.9"]})
    assert ask(dns, "b.vhostnet").rcode == NOERROR
    assert ask(dns, "gateway.vhostnet").rcode == NXDOMAIN  # custom table replaces defaults


def test_opcode_and_class_and_empty_question() -> None:
    dns = DnsResponder()
    r = DNS(dns.handle_bytes(bytes(DNS(id=1, opcode=2, qd=DNSQR(qname="gateway.vhostnet")))))
    assert (r.rcode, r.opcode, r.qr) == (NOTIMP, 2, 1)
    r = DNS(dns.handle_bytes(bytes(DNS(id=1, qd=DNSQR(qname="version.bind", qclass="CH",
                                                      qtype="TXT")))))
    assert r.rcode == REFUSED
    r = DNS(dns.handle_bytes(bytes(DNS(id=3, qd=[]))))
    assert r.rcode == FORMERR and r.id == 3


def test_responses_are_never_answered() -> None:
    dns = DnsResponder()
    assert dns.handle_bytes(bytes(DNS(id=1, qr=1, qd=DNSQR(qname="gateway.vhostnet")))) is None
    assert dns.handle(DnsRepr(id=1, is_response=True)) is None


def test_several_questions_answers_the_first() -> None:
    dns = DnsResponder()
    q = DnsRepr(id=9, questions=(Question("dns.vhostnet"), Question("gateway.vhostnet")))
    r = DNS(dns.handle_bytes(q.to_bytes()))
    assert r.qdcount == 1 and answers(r) == ["10.0.2.3"]


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x12\x34\x01\x00\x00\x01",  # shorter than a header
])
def test_no_header_gets_nothing(data: bytes) -> None:
    assert DnsResponder().handle_bytes(data) is None


def test_bad_body_gets_formerr() -> None:
    query = bytes(DNS(id=0x7777, rd=1, qd=DNSQR(qname="gateway.vhostnet")))
    r = DNS(DnsResponder().handle_bytes(query[:20]))  # question cut short
    assert (r.id, r.qr, r.rcode, r.qdcount, r.rd) == (0x7777, 1, FORMERR, 0, 1)
    loop = query[:12] + b"\xc0\x0c\x00\x01\x00\x01"  # a pointer to itself
    assert DNS(DnsResponder().handle_bytes(loop)).rcode == FORMERR
    # A malformed response is dropped, not answered.
    assert DnsResponder().handle_bytes(b"\x00\x01\x80\x00\x00\x05" + bytes(6)) is None


def test_truncation_keeps_within_512_with_tc() -> None:
    dns = DnsResponder({})
    for i in range(60):
        dns.add_record("many.vhostnet", f"fd00::{i + 1:x}")
    out = dns.handle_bytes(bytes(DNS(id=5, qd=DNSQR(qname="many.vhostnet", qtype="AAAA"))))
    assert len(out) <= MAX_UDP_LEN
    r = DNS(out)
    assert r.tc == 1 and 0 < r.ancount < 60
    assert dns.stats.truncated == 1


def test_repr_level_api() -> None:
    dns = DnsResponder(domain="lab", ttl=5)
    r = dns.handle(DnsRepr(id=1, recursion_desired=True,
                           questions=(Question("gateway.lab", Type.ANY),)))
    assert r.rcode == Rcode.NOERROR and r.opcode == Opcode.QUERY
    assert [(a.rtype, a.ttl, a.data) for a in r.answers] == [
        (Type.A, 5, IPv4Address("10.0.2.2"))]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_answer_or_none_never_raise(data: bytes) -> None:
    out = DnsResponder().handle_bytes(data)
    assert out is None or len(out) <= MAX_UDP_LEN


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=60))
def test_mutated_queries_never_raise(tail: bytes) -> None:
    query = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="gateway.vhostnet")))
    for data in (query[:12] + tail, query + tail, query[: len(tail)]):
        out = DnsResponder().handle_bytes(data)
        assert out is None or len(out) <= MAX_UDP_LEN


def test_docstring_examples() -> None:
    import doctest

    import netstack.socket.dns_responder as mod
    assert doctest.testmod(mod).failed == 0
