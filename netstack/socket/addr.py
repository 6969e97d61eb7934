"""Addresses of both families for sockets: parsing, IPv4-mapped addresses, dual-stack rules.

One set of rules, as Linux applies them to AF_INET and AF_INET6 sockets:

- a socket bound to 0.0.0.0 takes IPv4 only; bound to `::` it takes IPv6 and, unless it is
  v6-only (`IPV6_V6ONLY`), IPv4 too (`local_matches`); bound to a specific address, only
  datagrams to that address;
- two bindings of one port clash when the sets of addresses they take overlap
  (`overlaps`): `::` clashes with 0.0.0.0 unless it is v6-only;
- an IPv4-mapped address (`::ffff:a.b.c.d`) given by an application means that IPv4
  address (`unmap`): it is never sent on the wire as IPv6.

>>> from ipaddress import ip_address as ip
>>> local_matches(ip("::"), False, ip("10.0.2.15")), local_matches(ip("::"), True, ip("10.0.2.15"))
(True, False)
>>> overlaps(ip("::"), False, ip("0.0.0.0"), False), overlaps(ip("::"), True, ip("0.0.0.0"), False)
(True, False)
>>> unmap(ip("::ffff:10.0.2.2"))
IPv4Address('10.0.2.2')
>>> parse_addr("fe80::1%eth0")
IPv6Address('fe80::1')
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from netstack.socket.errors import Unaddressable

IpAddress = IPv4Address | IPv6Address
ANY4 = IPv4Address(0)
ANY6 = IPv6Address(0)


def parse_addr(value, default: IpAddress = ANY4) -> IpAddress:
    """An address from an IPv4Address/IPv6Address or a literal; None or "" give `default`.
    A zone (`fe80::1%eth0`) is accepted and dropped: we have one interface. Raises
    Unaddressable."""
    if isinstance(value, (IPv4Address, IPv6Address)):
        return value
    if value is None or value == "":
        return default
    if isinstance(value, str) and "%" in value:
        value = value.split("%", 1)[0]
    try:
        return ip_address(value)
    except ValueError as e:
        raise Unaddressable(str(e)) from None


def unmap(addr: IpAddress) -> IpAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 address; anything else unchanged."""
    if addr.version == 6:
        v4 = addr.ipv4_mapped
        if v4 is not None:
            return v4
    return addr


def map6(addr: IpAddress) -> IPv6Address:
    """An address as an AF_INET6 socket shows it: IPv4 addresses become ::ffff:a.b.c.d."""
    if addr.version == 4:
        return IPv6Address(0xFFFF00000000 | int(addr))
    return addr


def _families(addr: IpAddress, v6only: bool) -> tuple[int, ...]:
    if addr.version == 4:
        return (4,)
    if addr.is_unspecified and not v6only:
        return (4, 6)
    return (6,)


def local_matches(bound: IpAddress, v6only: bool, dst: IpAddress) -> bool:
    """Does a socket bound to `bound` take a datagram (or SYN) addressed to `dst`?"""
    if bound is dst:  # (wire addresses are shared objects: the common case, no __eq__)
        return True
    if not bound._ip:  # (`is_unspecified` costs two Python calls, per segment)
        return dst.version in _families(bound, v6only)
    return bound == dst


def overlaps(a: IpAddress, a_v6only: bool, b: IpAddress, b_v6only: bool) -> bool:
    """Do bindings to `a` and `b` on one port take some address in common (a clash)?"""
    if a.is_unspecified:
        if b.is_unspecified:
            return bool(set(_families(a, a_v6only)) & set(_families(b, b_v6only)))
        return b.version in _families(a, a_v6only)
    if b.is_unspecified:
        return a.version in _families(b, b_v6only)
    return a == b


def source_for(bound: IpAddress, v6only: bool, dst: IpAddress) -> IpAddress | None:
    """The source address to send to `dst` from a socket bound to `bound`: None lets the
    interface choose (`bound` unspecified). Raises Unaddressable when the binding cannot
    reach `dst`'s family (an IPv4 socket to IPv6, a v6-only or IPv6-bound one to IPv4)."""
    if bound.is_unspecified:
        if dst.version not in _families(bound, v6only):
            raise Unaddressable(f"a socket bound to {bound} cannot send to {dst}")
        return None
    if bound.version != dst.version:
        raise Unaddressable(f"cannot send from {bound} to {dst}")
    return bound


def endpoint(value) -> tuple[IpAddress, int]:
    """Normalise `(addr, port)` (addr as IPv4Address/IPv6Address, str or None, which is
    0.0.0.0) to an endpoint tuple; Unaddressable for anything else."""
    try:
        host, port = value
    except (TypeError, ValueError):
        raise Unaddressable(f"not an (address, port) pair: {value!r}") from None
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise Unaddressable(f"bad port {port!r}")
    return (parse_addr(host), port)
