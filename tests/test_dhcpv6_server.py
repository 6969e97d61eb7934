"""Stateless DHCPv6 server: requests built by scapy, answers read back by scapy."""

from __future__ import annotations

from ipaddress import IPv6Address
from types import SimpleNamespace

import pytest
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIA_PD,
    DHCP6OptInfoRefreshTime,
    DHCP6OptOptReq,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)

from netstack.socket.dhcpv6_server import (
    NO_ADDRS_MESSAGE,
    Dhcpv6Server,
    Dhcpv6ServerConfig,
    Dhcpv6ServerSocket,
)
from netstack.socket.errors import Unaddressable
from netstack.wire.dhcpv6 import (
    CLIENT_PORT,
    SERVER_PORT,
    Dhcpv6Packet,
    Dhcpv6Repr,
    duid_ll,
)
from netstack.wire.ethernet import EthernetAddress

SERVER_MAC = EthernetAddress(bytes.fromhex("525400000002"))
CLIENT_MAC = "52:54:00:12:34:56"
OTHER_MAC = "52:54:00:99:99:99"
CONFIG = Dhcpv6ServerConfig(SERVER_MAC, dns_servers=("fd00::3", "2001:db8::53"),
                            domain_list=("vhostnet", "example.com"))
CLIENT_LINK_LOCAL = IPv6Address("fe80::5054:ff:fe12:3456")


def client_id(mac: str = CLIENT_MAC) -> DHCP6OptClientId:
    return DHCP6OptClientId(duid=DUID_LL(lladdr=mac))


def server_id(mac: str = str(SERVER_MAC)) -> DHCP6OptServerId:
    return DHCP6OptServerId(duid=DUID_LL(lladdr=mac))


def info_request(*options, trid: int = 0x0A0B0C):
    pkt = DHCP6_InfoRequest(trid=trid)
    for o in options:
        pkt = pkt / o
    return pkt


def answer(pkt, server: Dhcpv6Server | None = None) -> bytes | None:
    server = server or Dhcpv6Server(CONFIG)
    reply = server.answer(Dhcpv6Repr.parse(Dhcpv6Packet.new_checked(bytes(pkt))))
    return None if reply is None else reply.to_bytes()


# -- INFORMATION-REQUEST ---------------------------------------------------------------------


def test_information_request_gets_reply():
    out = answer(info_request(client_id(), DHCP6OptOptReq(reqopts=[23, 24, 32]),
                              DHCP6OptElapsedTime()))
    r = DHCP6_Reply(out)
    assert r.msgtype == 7 and r.trid == 0x0A0B0C
    assert r[DHCP6OptClientId].duid.lladdr == CLIENT_MAC
    assert r[DHCP6OptServerId].duid.lladdr == str(SERVER_MAC)
    assert bytes(r[DHCP6OptServerId].duid) == duid_ll(SERVER_MAC) == CONFIG.server_duid
    assert r[DHCP6OptDNSServers].dnsservers == ["fd00::3", "2001:db8::53"]
    assert r[DHCP6OptDNSDomains].dnsdomains == ["vhostnet.", "example.com."]
    assert r[DHCP6OptInfoRefreshTime].reftime == 86400
    assert DHCP6OptStatusCode not in r and DHCP6OptIA_NA not in r


def test_information_request_without_client_id_or_oro():
    """CLIENTID is optional in an Information-request; the DNS options are sent even when
    not requested."""
    r = DHCP6_Reply(answer(info_request()))
    assert DHCP6OptClientId not in r
    assert r[DHCP6OptDNSServers].dnsservers == ["fd00::3", "2001:db8::53"]


def test_information_request_with_our_server_id_is_answered():
    assert answer(info_request(client_id(), server_id())) is not None


def test_information_request_for_another_server_is_ignored():
    server = Dhcpv6Server(CONFIG)
    assert answer(info_request(client_id(), server_id(OTHER_MAC)), server) is None
    assert server.stats.ignored == 1


@pytest.mark.parametrize("ia", [DHCP6OptIA_NA(iaid=1), DHCP6OptIA_PD(iaid=1)])
def test_information_request_with_an_ia_is_discarded(ia):
    server = Dhcpv6Server(CONFIG)
    assert answer(info_request(client_id(), ia), server) is None
    assert server.stats.invalid == 1


def test_empty_config_answers_refresh_time_only():
    server = Dhcpv6Server(Dhcpv6ServerConfig(SERVER_MAC, information_refresh_time=600))
    r = DHCP6_Reply(answer(info_request(client_id()), server))
    assert DHCP6OptDNSServers not in r and DHCP6OptDNSDomains not in r
    assert r[DHCP6OptInfoRefreshTime].reftime == 600


# -- SOLICIT -----------------------------------------------------------------------------------


def test_solicit_with_ia_na_gets_no_addrs_avail():
    pkt = (DHCP6_Solicit(trid=0x123456) / client_id()
           / DHCP6OptOptReq(reqopts=[23, 24, 82]) / DHCP6OptIA_NA(iaid=0x11)
           / DHCP6OptIA_NA(iaid=0x22))
    out = answer(pkt)
    a = DHCP6_Advertise(out)
    assert a.msgtype == 2 and a.trid == 0x123456
    assert a[DHCP6OptClientId].duid.lladdr == CLIENT_MAC
    assert a[DHCP6OptServerId].duid.lladdr == str(SERVER_MAC)
    ias = [a.getlayer(DHCP6OptIA_NA, nb=i) for i in (1, 2)]
    assert [ia.iaid for ia in ias] == [0x11, 0x22]
    for ia in ias:
        assert len(ia.ianaopts) == 1  # a status, no address
        assert ia.ianaopts[0].statuscode == 2
        assert ia.ianaopts[0].statusmsg == NO_ADDRS_MESSAGE.encode()
    top = a.getlayer(DHCP6OptStatusCode, nb=3)
    assert top.statuscode == 2
    assert out.endswith(bytes.fromhex("0052 0004 00000e10"))  # SOL_MAX_RT 3600 (scapy has none)
    assert a[DHCP6OptDNSServers].dnsservers == ["fd00::3", "2001:db8::53"]


def test_solicit_without_sol_max_rt_in_oro_gets_none():
    pkt = DHCP6_Solicit(trid=1) / client_id() / DHCP6OptIA_NA(iaid=1)
    out = answer(pkt)
    assert b"\x00\x52\x00\x04" not in out and DHCP6_Advertise(out)[DHCP6OptIA_NA].iaid == 1


def test_solicit_without_client_id_is_discarded():
    server = Dhcpv6Server(CONFIG)
    assert answer(DHCP6_Solicit(trid=1) / DHCP6OptIA_NA(iaid=1), server) is None
    assert server.stats.invalid == 1


@pytest.mark.parametrize("mac", [str(SERVER_MAC), OTHER_MAC])
def test_solicit_with_a_server_id_is_discarded(mac):
    pkt = DHCP6_Solicit(trid=1) / client_id() / server_id(mac) / DHCP6OptIA_NA(iaid=1)
    assert answer(pkt) is None


def test_solicit_for_prefixes_only_is_ignored():
    assert answer(DHCP6_Solicit(trid=1) / client_id() / DHCP6OptIA_PD(iaid=1)) is None
    assert answer(DHCP6_Solicit(trid=1) / client_id()) is None


# -- everything else ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [DHCP6_Request, DHCP6_Renew, DHCP6_Rebind, DHCP6_Release,
                                 DHCP6_Confirm, DHCP6_Reply, DHCP6_Advertise])
def test_other_types_get_nothing(cls):
    server = Dhcpv6Server(CONFIG)
    assert answer(cls(trid=1) / client_id() / server_id() / DHCP6OptIA_NA(iaid=1),
                  server) is None
    assert server.stats.ignored == 1


def test_config_validation():
    assert CONFIG.dns_servers == (IPv6Address("fd00::3"), IPv6Address("2001:db8::53"))
    for kw in ({"information_refresh_time": 599}, {"information_refresh_time": 2**32},
               {"sol_max_rt": 59}, {"sol_max_rt": 86401}, {"domain_list": ("a..b",)},
               {"dns_servers": ("10.0.2.3",)}, {"dns_servers": ("fd00::1",) * 5000}):
        with pytest.raises(ValueError):
            Dhcpv6ServerConfig(SERVER_MAC, **kw)


def test_docstring_examples():
    import doctest

    import netstack.socket.dhcpv6_server as mod
    assert doctest.testmod(mod).failed == 0


# -- socket glue -------------------------------------------------------------------------------


def _deliver(sock: Dhcpv6ServerSocket, payload: bytes) -> None:
    ip = SimpleNamespace(src_addr=CLIENT_LINK_LOCAL, dst_addr=IPv6Address("ff02::1:2"))
    udp = SimpleNamespace(src_port=CLIENT_PORT, dst_port=SERVER_PORT)
    sock.process(0.0, ip, udp, memoryview(payload))


def test_socket_binds_547_and_counts_malformed():
    sock = Dhcpv6ServerSocket(Dhcpv6Server(CONFIG))
    assert sock.endpoint[1] == SERVER_PORT
    _deliver(sock, b"\x0b\x00")
    _deliver(sock, b"\x0c" + bytes(40))  # relay-forward
    assert sock.server.stats.malformed == 2 and not sock.tx


def test_socket_queues_the_reply_to_the_client_port():
    sock = Dhcpv6ServerSocket(Dhcpv6Server(CONFIG))
    try:
        sock.send_to(b"", (CLIENT_LINK_LOCAL, CLIENT_PORT))
    except Unaddressable:
        pytest.skip("UDP sockets do not take IPv6 destinations yet")
    sock.tx.clear()
    _deliver(sock, bytes(info_request(client_id())))
    (addr, port, _hw), data = sock.tx.peek()
    assert (addr, port) == (CLIENT_LINK_LOCAL, CLIENT_PORT)
    assert DHCP6_Reply(data)[DHCP6OptServerId].duid.lladdr == str(SERVER_MAC)
