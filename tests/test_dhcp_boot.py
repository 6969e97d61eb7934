"""Network-boot options of the DHCP server (PXE and iPXE) and plain BOOTP: requests built
with scapy, replies read back with scapy. The real clients (QEMU's iPXE ROM) are in
tests/e2e/test_netboot.py."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from netstack.socket.dhcp_server import DhcpServer, DhcpServerConfig, LeaseState
from netstack.wire.dhcpv4 import DhcpPacket, DhcpRepr, MessageType
from tests.test_dhcp_server import MAC_A, MAC_B, SERVER, client_msg, dora, opts, to_scapy

SCRIPT = "http://10.0.2.2/boot/boot.ipxe"
IPXE = [("user_class", b"iPXE"), ("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001")]
BIOS_PXE = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001")]


def boot_server(**kw) -> DhcpServer:
    return DhcpServer(DhcpServerConfig(boot_file="undionly.kpxe", ipxe_boot_file=SCRIPT, **kw))


def test_pxe_rom_gets_the_tftp_file_ipxe_gets_the_script() -> None:
    server = boot_server()
    for extra, name in ((BIOS_PXE, "undionly.kpxe"), (IPXE, SCRIPT)):
        offer = server.handle(0, client_msg(MAC_A, "discover", options=extra), MAC_A)
        ack = dora(server, MAC_A, extra=extra)
        for reply in (offer, ack):
            pkt = to_scapy(reply)
            o = opts(pkt)
            assert pkt.siaddr == str(SERVER) and pkt.file.rstrip(b"\0") == name.encode()
            assert o["boot-file-name"] == name.encode()
            assert o["tftp_server_name"] == str(SERVER).encode()
            assert o["vendor_class_id"] == b"PXEClient"  # what PXE ROMs look for


def test_no_boot_file_no_boot_options_and_plain_clients_get_the_file_too() -> None:
    plain = to_scapy(dora(DhcpServer(DhcpServerConfig()), MAC_A))
    assert plain.siaddr == "0.0.0.0" and plain.file.rstrip(b"\0") == b""
    assert not {"boot-file-name", "tftp_server_name", "vendor_class_id"} & set(opts(plain))
    pkt = to_scapy(dora(DhcpServer(DhcpServerConfig(boot_file="kernel.elf")), MAC_A))
    assert opts(pkt)["boot-file-name"] == b"kernel.elf" and "vendor_class_id" not in opts(pkt)


def test_ipxe_without_its_own_file_gets_the_boot_file_and_next_server_is_used() -> None:
    server = DhcpServer(DhcpServerConfig(boot_file="a.ipxe", next_server="10.0.2.9"))
    pkt = to_scapy(dora(server, MAC_A, extra=IPXE))
    assert opts(pkt)["boot-file-name"] == b"a.ipxe" and pkt.siaddr == "10.0.2.9"
    assert opts(pkt)["tftp_server_name"] == b"10.0.2.9"


def test_a_long_boot_url_travels_in_option_67_only() -> None:
    url = "http://10.0.2.2/" + "x" * 200
    pkt = to_scapy(dora(DhcpServer(DhcpServerConfig(boot_file=url)), MAC_A))
    assert pkt.file.rstrip(b"\0") == b"" and opts(pkt)["boot-file-name"] == url.encode()


def test_nak_carries_no_boot_options() -> None:
    server = boot_server()
    nak = server.handle(0, client_msg(MAC_A, "request", options=[
        ("requested_addr", "10.9.9.9")]), MAC_A)
    assert nak.message_type == MessageType.NAK and nak.option(67) is None


def bootp_request(mac, xid=0x77, cookie=True) -> DhcpRepr:
    pkt = BOOTP(op=1, xid=xid, chaddr=bytes(mac) + bytes(10))
    if cookie:
        pkt = pkt / DHCP(options=["end"])  # RFC 1497 cookie, no message type
    data = bytes(pkt).ljust(300, b"\0")
    return DhcpRepr.parse(DhcpPacket.new_checked(data))


@pytest.mark.parametrize("cookie", [True, False])
def test_plain_bootp_is_answered_when_there_is_a_file_to_boot(cookie) -> None:
    assert DhcpServer(DhcpServerConfig()).handle(0, bootp_request(MAC_A, cookie=cookie),
                                                 MAC_A) is None
    server = boot_server()
    reply = server.handle(0, bootp_request(MAC_A, cookie=cookie), MAC_A)
    assert reply is not None and reply.message_type is None
    pkt = to_scapy(reply)
    o = opts(pkt)
    assert pkt.op == 2 and pkt.xid == 0x77 and pkt.yiaddr == "10.0.2.15"
    assert pkt.file.rstrip(b"\0") == b"undionly.kpxe" and pkt.siaddr == str(SERVER)
    assert o["subnet_mask"] == "255.255.255.0" and o["router"] == str(SERVER)
    assert not {"message-type", "server_id", "lease_time"} & set(o)
    # the address is bound, kept on the next request, and not handed to another client
    (lease,) = server.leases()
    assert lease.state is LeaseState.BOUND and lease.address == IPv4Address("10.0.2.15")
    assert server.handle(5, bootp_request(MAC_A, xid=2), MAC_A).your_ip == lease.address
    assert server.handle(5, bootp_request(MAC_B, xid=3), MAC_B).your_ip == IPv4Address(
        "10.0.2.16")
    assert server.stats.bootp == 3


def test_bootp_reply_is_not_taken_as_a_request_and_bad_config_is_refused() -> None:
    server = boot_server()
    reply = server.handle(0, bootp_request(MAC_A), MAC_A)
    assert server.handle(0, reply, MAC_A) is None  # a BOOTREPLY is ignored
    with pytest.raises(ValueError):
        DhcpServerConfig(boot_file="")
    with pytest.raises(ValueError):
        DhcpServerConfig(boot_file="x" * 256)


# -- DHCPv6: RFC 5970's boot file URL ----------------------------------------------------


def test_dhcpv6_names_the_boot_url_to_clients_that_ask_for_it() -> None:
    from scapy.layers.dhcp6 import (
        DHCP6_Advertise,
        DHCP6_Reply,
        DHCP6_Solicit,
        DHCP6OptBootFileUrl,
        DHCP6OptIA_NA,
        DHCP6OptOptReq,
    )

    from netstack.socket.dhcpv6_server import Dhcpv6Server, Dhcpv6ServerConfig
    from tests.test_dhcpv6_server import SERVER_MAC, answer, client_id, info_request

    url = "http://[fd00:10:0:2::2]/boot/boot.ipxe"
    server = Dhcpv6Server(Dhcpv6ServerConfig(SERVER_MAC, dns_servers=("fd00::3",),
                                             boot_file_url=url))
    # iPXE's Information-request asks for 23, 24, 59 and 60
    r = DHCP6_Reply(answer(info_request(client_id(), DHCP6OptOptReq(reqopts=[23, 24, 59, 60])),
                           server))
    assert r[DHCP6OptBootFileUrl].optdata == url.encode()
    # not asked: not sent; no URL configured: not sent
    assert DHCP6OptBootFileUrl not in DHCP6_Reply(answer(info_request(client_id()), server))
    assert DHCP6OptBootFileUrl not in DHCP6_Reply(answer(info_request(
        client_id(), DHCP6OptOptReq(reqopts=[59]))))
    # a UEFI HTTP-boot client asks in its SOLICIT
    adv = DHCP6_Advertise(answer(DHCP6_Solicit(trid=5) / client_id() / DHCP6OptIA_NA(iaid=1)
                                 / DHCP6OptOptReq(reqopts=[59, 82]), server))
    assert adv[DHCP6OptBootFileUrl].optdata == url.encode()
    with pytest.raises(ValueError):
        Dhcpv6ServerConfig(SERVER_MAC, boot_file_url="")
