"""The TFTP server: the sans-I/O engine driven directly with a fake clock (a client written
here, in order and lossy), then `TftpServerSocket` inside an Interface, fed Ethernet frames
built with scapy over IPv4 and IPv6. Real clients are in tests/netns/test_tftp.py."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.tftp import TFTP, TFTP_DATA, TFTP_RRQ, TFTP_Option, TFTP_Options
from scapy.packet import raw

from netstack.iface import Interface, InterfaceConfig
from netstack.socket import SocketSet, UdpSocket
from netstack.socket.errors import AddrInUse, Unaddressable
from netstack.socket.tftp_server import (
    Datagram,
    TftpServer,
    TftpServerConfig,
    TftpServerSocket,
)
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr
from netstack.wire.ipv6 import Ipv6Cidr
from netstack.wire.tftp import (
    AckRepr,
    DataRepr,
    ErrorCode,
    ErrorRepr,
    OackRepr,
    Opcode,
    RequestRepr,
    parse,
)
from netstack.wire.udp import UdpRepr
from tests.iface.test_interface import Dev

SERVER = IPv4Address("10.0.2.2")
LOCAL = (SERVER, 69)
CLIENT = (IPv4Address("10.0.2.15"), 2000)


def rrq(name: str, mode: str = "octet", **options) -> bytes:
    return RequestRepr(Opcode.RRQ, name, mode, {k: str(v) for k, v in options.items()}
                       ).to_bytes()


def ack(block: int) -> bytes:
    return AckRepr(block).to_bytes()


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def netascii(data: bytes) -> bytes:
    """The reference conversion, a byte at a time (RFC 1350 §5 via RFC 764)."""
    out = bytearray()
    for b in data:
        out += {10: b"\r\n", 13: b"\r\0"}.get(b, bytes([b]))
    return bytes(out)


@dataclass
class Transfer:
    data: bytearray = field(default_factory=bytearray)
    oack: OackRepr | None = None
    error: ErrorRepr | None = None
    blocks: list[int] = field(default_factory=list)  # wire numbers, in arrival order
    batches: list[int] = field(default_factory=list)  # datagrams per reply
    port: tuple | None = None  # the session's (address, port)


def fetch(server: TftpServer, name: str, *, mode: str = "octet", client=CLIENT,
          now: float = 0.0, max_blksize: int | None = None, **options) -> Transfer:
    """Fetch `name` with no loss: every in-order block taken, the last in-order one ACKed
    after each reply (one ACK a window, as RFC 7440 has it; every block when lockstep)."""
    t = Transfer()
    out = server.handle(now, LOCAL, client, rrq(name, mode, **options), max_blksize)
    blksize, expected, done = 512, 1, False
    while out:
        t.batches.append(len(out))
        assert {d.dst for d in out} == {client} and len({d.src for d in out}) == 1
        t.port = out[0].src
        last_ok = None
        for d in out:
            m = parse(d.data)
            if isinstance(m, ErrorRepr):
                t.error = m
                return t
            if isinstance(m, OackRepr):
                t.oack = m
                blksize = int(m.option("blksize") or 512)
                last_ok = 0
                continue
            assert isinstance(m, DataRepr)
            if m.block == expected & 0xFFFF and not done:
                t.data += m.data
                t.blocks.append(m.block)
                expected += 1
                last_ok = m.block
                done = len(m.data) < blksize
        assert last_ok is not None
        out = server.handle(now, t.port, client, ack(last_ok))
        if done:
            assert out == []
    assert done
    return t


@pytest.fixture
def root(tmp_path):
    d = tmp_path / "root"
    d.mkdir()
    return d


def put(root, name: str, data: bytes):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# -- plain RRQ ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1024, 5000])
def test_plain_rrq_sizes(root, size):
    data = put(root, "f", blob(size))
    server = TftpServer(root)
    before = fds()
    t = fetch(server, "f")
    assert bytes(t.data) == data and t.oack is None
    # a short last block: an empty one when the size is a multiple of 512
    assert t.blocks == list(range(1, size // 512 + 2))
    assert t.batches == [1] * len(t.blocks)
    assert t.port[0] == SERVER and t.port[1] != 69 and 49152 <= t.port[1] <= 65535
    assert server.sessions == 0 and fds() == before
    st_ = server.stats
    assert (st_.sessions_started, st_.sessions_completed, st_.retransmits) == (1, 1, 0)
    assert st_.bytes_sent == size


def test_empty_file_is_one_empty_data_block(root):
    put(root, "empty", b"")
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("empty"))
    assert [parse(d.data) for d in out] == [DataRepr(1, b"")]
    assert server.handle(0.0, out[0].src, CLIENT, ack(1)) == []
    assert server.sessions == 0 and server.stats.sessions_completed == 1


def test_leading_slash_and_subdirectories(root):
    data = put(root, "boot/grub/x86_64-efi/core.efi", blob(3000))
    server = TftpServer(root)
    for name in ("/boot/grub/x86_64-efi/core.efi", "boot/grub/x86_64-efi/core.efi",
                 "boot//grub/./x86_64-efi/core.efi"):
        assert bytes(fetch(server, name).data) == data


def test_mode_is_case_insensitive_and_mail_refused(root):
    put(root, "f", b"x")
    server = TftpServer(root)
    assert bytes(fetch(server, "f", mode="OCTET").data) == b"x"
    for mode in ("mail", "MAIL", "binary", ""):
        out = server.handle(0.0, LOCAL, CLIENT, rrq("f", mode))
        assert [parse(d.data).code for d in out] == [ErrorCode.ILLEGAL_OPERATION]
    assert server.stats.refused["mode"] == 4 and server.sessions == 0


def test_wrq_refused_read_only(root):
    put(root, "f", b"x")
    server = TftpServer(root)
    before = fds()
    wrq = RequestRepr(Opcode.WRQ, "f", "octet").to_bytes()
    out = server.handle(0.0, LOCAL, CLIENT, wrq)
    assert len(out) == 1
    err = parse(out[0].data)
    assert err == ErrorRepr(ErrorCode.ACCESS_VIOLATION, "read-only server")
    # from a fresh port (a would-be transfer's TID), never from 69
    assert out[0].src[0] == SERVER and out[0].src[1] != 69 and out[0].dst == CLIENT
    assert server.sessions == 0 and fds() == before and server.stats.refused["write"] == 1
    assert (root / "f").read_bytes() == b"x"


def test_missing_file_not_found(root):
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("nope"))
    assert parse(out[0].data) == ErrorRepr(ErrorCode.FILE_NOT_FOUND, "file not found")
    out = server.handle(0.0, LOCAL, CLIENT, rrq("nodir/nope"))
    assert parse(out[0].data).code == ErrorCode.FILE_NOT_FOUND
    assert server.stats.refused["not_found"] == 2


# -- options -----------------------------------------------------------------------------
def test_options_negotiated_with_oack_then_data_after_ack0(root):
    data = put(root, "f", blob(10_000))
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f", blksize=1024, tsize=0, timeout=3,
                                                windowsize=4))
    assert len(out) == 1  # the OACK alone: no data before its ACK (RFC 2347)
    assert TFTP(out[0].data).op == 6  # scapy reads an OACK too
    oack = parse(out[0].data)
    assert oack == OackRepr((("blksize", "1024"), ("tsize", "10000"), ("timeout", "3"),
                             ("windowsize", "4")))
    port = out[0].src
    assert server.handle(0.0, port, CLIENT, ack(1)) == []  # ACK 1: never sent, ignored
    out = server.handle(0.0, port, CLIENT, ack(0))
    assert [parse(d.data) for d in out] == [
        DataRepr(i, data[(i - 1) * 1024 : i * 1024]) for i in (1, 2, 3, 4)]
    # the negotiated timeout (3 s) drives retransmission
    assert server.poll_at() == 3.0
    assert server.on_timer(2.9) == []
    again = server.on_timer(3.0)
    assert [parse(d.data).block for d in again] == [1, 2, 3, 4]


def test_fetch_with_every_option(root):
    data = put(root, "f", blob(100_000))
    server = TftpServer(root)
    t = fetch(server, "f", blksize=1468, tsize=0, windowsize=16, timeout=2)
    assert bytes(t.data) == data
    assert t.oack.options == (("blksize", "1468"), ("tsize", "100000"), ("windowsize", "16"),
                              ("timeout", "2"))
    assert t.batches[0] == 1 and max(t.batches) == 16
    assert server.stats.retransmits == 0


def test_blksize_clamped_to_the_link_and_config(root):
    data = put(root, "f", blob(20_000))
    server = TftpServer(root)
    t = fetch(server, "f", blksize=65464)  # the default cap: 1468, an Ethernet frame
    assert t.oack.option("blksize") == "1468" and bytes(t.data) == data
    t = fetch(server, "f", blksize=65464, max_blksize=1448)  # the caller's link (IPv6)
    assert t.oack.option("blksize") == "1448" and bytes(t.data) == data
    t = fetch(server, "f", blksize=600, max_blksize=1448)  # smaller than the link: as asked
    assert t.oack.option("blksize") == "600"
    big = TftpServer(root, TftpServerConfig(max_blksize=9000))
    t = fetch(big, "f", blksize=65464, max_blksize=8968)
    assert t.oack.option("blksize") == "8968" and bytes(t.data) == data


def test_windowsize_capped(root):
    put(root, "f", blob(200_000))
    server = TftpServer(root)
    t = fetch(server, "f", windowsize=65535)
    assert t.oack.option("windowsize") == "64" and max(t.batches) == 64
    t = fetch(TftpServer(root, TftpServerConfig(max_windowsize=8)), "f", windowsize=100)
    assert t.oack.option("windowsize") == "8"


@pytest.mark.parametrize("options", [
    {"blksize": 7}, {"blksize": 65465}, {"blksize": "abc"}, {"blksize": "-512"},
    {"blksize": " 512"}, {"blksize": "1" * 5000}, {"timeout": 0}, {"timeout": 256},
    {"windowsize": 0}, {"windowsize": 65536}, {"tsize": "x"}, {"foo": "bar"},
    {"multicast": ""}, {"utimeout": 500},
])
def test_out_of_range_and_unknown_options_are_ignored(root, options):
    data = put(root, "f", blob(1000))
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f", **options))
    # nothing accepted: no OACK, DATA 1 at the default 512 bytes straight away
    assert [parse(d.data) for d in out] == [DataRepr(1, data[:512])]


def test_ignored_option_beside_an_accepted_one(root):
    put(root, "f", blob(1000))
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f", blksize=4, tsize=0, bogus=1))
    assert parse(out[0].data) == OackRepr({"tsize": "1000"})


def test_client_refusing_the_oack_ends_the_session(root):
    put(root, "f", blob(1000))
    server = TftpServer(root)
    before = fds()
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f", blksize=1024))
    assert fds() == before + 1
    refuse = ErrorRepr(ErrorCode.OPTION_NEGOTIATION, "no thanks").to_bytes()
    assert server.handle(0.0, out[0].src, CLIENT, refuse) == []
    assert server.sessions == 0 and fds() == before and server.poll_at() is None
    assert server.stats.sessions_aborted == 1


def test_oack_retransmitted_on_timeout(root):
    put(root, "f", blob(1000))
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f", tsize=0))
    again = server.on_timer(1.0)
    assert [d.data for d in again] == [out[0].data] and server.stats.retransmits == 1


def test_tsize_omitted_for_an_empty_file(root):
    put(root, "empty", b"")
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("empty", tsize=0))  # curl fails on tsize 0
    assert [parse(d.data) for d in out] == [DataRepr(1, b"")]
    t = fetch(server, "empty", client=(CLIENT[0], 2001), tsize=0, blksize=1024)
    assert t.oack == OackRepr({"blksize": "1024"}) and t.data == b""


def test_tsize_omitted_for_netascii(root):
    put(root, "f", b"a\nb\n")
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f", "netascii", tsize=0))
    assert parse(out[0].data) == DataRepr(1, b"a\r\nb\r\n")  # no option left: no OACK
    out = server.handle(0.0, LOCAL, (CLIENT[0], 2001), rrq("f", "netascii", tsize=0,
                                                           blksize=8))
    assert parse(out[0].data) == OackRepr({"blksize": "8"})


# -- block numbers roll over ---------------------------------------------------------------
def test_block_numbers_wrap_past_65535_to_0(root):
    data = put(root, "big", blob(65536 * 8 + 3))
    server = TftpServer(root)
    t = fetch(server, "big", blksize=8)
    assert bytes(t.data) == data
    assert len(t.blocks) == 65537  # 65536 full blocks and one of 3 bytes
    assert t.blocks[65533:] == [65534, 65535, 0, 1]
    assert server.stats.sessions_completed == 1 and server.stats.acks_ignored == 0


def test_block_wrap_with_a_window_and_a_loss_across_it(root):
    data = put(root, "big", blob(65536 * 8 + 3))  # blocks 1..65537: the last is wire 1
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("big", blksize=8, windowsize=8))
    port = out[0].src
    out = server.handle(0.0, port, CLIENT, ack(0))
    got = bytearray()
    while True:  # up to the window that crosses the wrap
        blocks = [parse(d.data) for d in out]
        if blocks[-1].block == 0:
            break
        got += b"".join(b.data for b in blocks)
        out = server.handle(0.0, port, CLIENT, ack(blocks[-1].block))
    assert [b.block for b in blocks] == list(range(65529, 65536)) + [0]
    # the client lost 65535 and 0: it acknowledges 65534, the window restarts at 65535
    got += b"".join(b.data for b in blocks[:-2])
    out = server.handle(0.0, port, CLIENT, ack(65534))
    blocks = [parse(d.data) for d in out]
    assert [b.block for b in blocks] == [65535, 0, 1]  # 1 is block 65537, 3 bytes, the last
    assert len(blocks[-1].data) == 3
    # ACK 0 now means block 65536 (not the OACK, long gone): block 1 comes once more
    out = server.handle(0.0, port, CLIENT, ack(0))
    assert [parse(d.data) for d in out] == [blocks[-1]]
    got += b"".join(b.data for b in blocks)
    assert bytes(got) == data
    assert server.handle(0.0, port, CLIENT, ack(1)) == [] and server.sessions == 0
    assert server.stats.sessions_completed == 1


# -- netascii ----------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    b"hello\nworld\n",
    b"a" * 511 + b"\n" + b"b" * 600,  # LF's CR ends block 1, its LF starts block 2
    b"a" * 511 + b"\r" + b"b" * 600,  # CR's NUL carried into block 2
    b"a" * 510 + b"\r\n" + b"c" * 10,  # CR NUL CR LF across the boundary
    b"\n" * 256,  # 512 bytes exactly once converted: an empty block follows
    b"\n" * 257,
    b"\r\n" * 1000,
    b"",
    bytes(range(256)) * 9,
])
def test_netascii_conversion_across_blocks(root, content):
    put(root, "t", content)
    server = TftpServer(root)
    t = fetch(server, "t", mode="netascii")
    assert bytes(t.data) == netascii(content)
    assert len(t.blocks) == len(netascii(content)) // 512 + 1


def test_netascii_retransmission_rebuilds_the_same_blocks(root):
    content = put(root, "t", (b"x" * 7 + b"\n" + b"\r") * 40)
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("t", "netascii", blksize=8, windowsize=5))
    port = out[0].src
    first = server.handle(0.0, port, CLIENT, ack(0))
    again = server.on_timer(1.0)
    assert [d.data for d in again] == [d.data for d in first]
    got = b"".join(parse(d.data).data for d in first)
    assert got == netascii(content)[: 5 * 8]


@settings(max_examples=40, deadline=None)
@given(content=st.one_of(
           st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"x", b"yz", b"\0"]),
                    min_size=20, max_size=1500).map(b"".join),
           st.binary(max_size=3000)),
       blksize=st.integers(8, 64), windowsize=st.integers(1, 10),
       mode=st.sampled_from(["octet", "netascii"]), seed=st.integers(0, 2**32))
def test_lossy_transfers_deliver_the_file(tmp_path_factory, content, blksize, windowsize,
                                          mode, seed):
    """Datagrams lost both ways at random (30 %), a client that ACKs the last block it has
    in order after each reply and re-ACKs duplicates: the file arrives exactly."""
    root = tmp_path_factory.mktemp("lossy")
    (root / "f").write_bytes(content)
    server = TftpServer(root, TftpServerConfig(retries=1000))
    rng = random.Random(seed)
    want = content if mode == "octet" else netascii(content)
    got, expected, done, now = bytearray(), 1, False, 0.0
    client = CLIENT
    out = server.handle(now, LOCAL, client, rrq("f", mode, blksize=blksize,
                                                windowsize=windowsize))
    port = out[0].src
    for _ in range(100_000):
        if server.sessions == 0:
            break
        last_ok = None
        for d in out:
            if rng.random() < 0.3:
                continue  # lost on its way to the client
            m = parse(d.data)
            if isinstance(m, OackRepr):
                last_ok = 0 if expected == 1 else last_ok
            elif m.block == expected & 0xFFFF and not done:
                got += m.data
                expected += 1
                last_ok = m.block
                done = len(m.data) < blksize
            else:
                last_ok = (expected - 1) & 0xFFFF  # a duplicate: say again what we have
        if last_ok is not None and rng.random() >= 0.3:
            out = server.handle(now, port, client, ack(last_ok))
        else:
            now = server.poll_at()
            out = server.on_timer(now)
    assert server.sessions == 0 and done
    assert bytes(got) == want
    assert server.stats.sessions_completed == 1


# -- windows, duplicates and strays ------------------------------------------------------
def _windowed(root, size=10 * 512, windowsize=4):
    data = put(root, "f", blob(size))
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f", windowsize=windowsize))
    port = out[0].src
    return data, server, port


def test_window_lost_block_then_timeout(root):
    data, server, port = _windowed(root)
    out = server.handle(0.0, port, CLIENT, ack(0))
    assert [parse(d.data).block for d in out] == [1, 2, 3, 4]
    # block 3 lost: the client acknowledges 2, the next window starts at 3 (RFC 7440)
    out = server.handle(0.5, port, CLIENT, ack(2))
    assert [parse(d.data).block for d in out] == [3, 4, 5, 6]
    assert server.stats.retransmits == 2  # 3 and 4 went twice
    # that whole window lost: nothing until the timeout, then the window again from 3
    assert server.poll_at() == 1.5
    assert server.on_timer(1.49) == []
    out = server.on_timer(1.5)
    assert [parse(d.data) for d in out] == [
        DataRepr(i, data[(i - 1) * 512 : i * 512]) for i in (3, 4, 5, 6)]
    assert server.stats.retransmits == 6
    out = server.handle(2.0, port, CLIENT, ack(6))
    assert [parse(d.data).block for d in out] == [7, 8, 9, 10]
    out = server.handle(2.0, port, CLIENT, ack(10))
    assert [parse(d.data) for d in out] == [DataRepr(11, b"")]
    assert server.handle(2.0, port, CLIENT, ack(11)) == [] and server.sessions == 0


def test_duplicate_acks_never_cause_retransmission(root):
    data = put(root, "f", blob(5 * 512))
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f"))
    port = out[0].src
    out = server.handle(0.1, port, CLIENT, ack(1))
    assert [parse(d.data).block for d in out] == [2]
    for _ in range(5):  # the Sorcerer's Apprentice would answer each with DATA 2 again
        assert server.handle(0.2, port, CLIENT, ack(1)) == []
    assert server.stats.retransmits == 0 and server.stats.acks_ignored == 5
    assert server.poll_at() == pytest.approx(1.1)  # duplicates did not restart the timer
    assert parse(out[0].data).data + fetch_rest(server, port, 2) == data[512:]


def fetch_rest(server, port, block) -> bytes:
    out, got = server.handle(0.3, port, CLIENT, ack(block)), b""
    while out:
        m = parse(out[-1].data)
        got += b"".join(parse(d.data).data for d in out)
        out = server.handle(0.3, port, CLIENT, ack(m.block))
    return got


def test_out_of_window_and_future_acks_ignored(root):
    data, server, port = _windowed(root)
    server.handle(0.0, port, CLIENT, ack(0))  # window [1, 5)
    for stray in (5, 6, 100, 65535, 0):  # never sent, or (0) acknowledged already
        assert server.handle(0.1, port, CLIENT, ack(stray)) == []
    assert server.stats.acks_ignored == 5 and server.stats.retransmits == 0
    out = server.handle(0.2, port, CLIENT, ack(4))
    assert [parse(d.data).block for d in out] == [5, 6, 7, 8]
    assert server.handle(0.3, port, CLIENT, ack(3)) == []  # old now


def test_timeouts_end_the_session_silently_after_retries(root):
    put(root, "f", blob(2000))
    server = TftpServer(root, TftpServerConfig(retries=3, timeout=2.0))
    before = fds()
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f"))
    assert fds() == before + 1
    sent = []
    now = 0.0
    while server.poll_at() is not None:
        now = server.poll_at()
        sent.append((now, [parse(d.data).block for d in server.on_timer(now)]))
    assert sent == [(2.0, [1]), (4.0, [1]), (6.0, [1]), (8.0, [])]
    assert server.sessions == 0 and fds() == before
    assert server.stats.sessions_timed_out == 1 and server.stats.retransmits == 3
    # the port is gone: an ACK to it now is for no session at all
    assert server.handle(9.0, out[0].src, CLIENT, ack(1)) == []


def test_unknown_tid_gets_error_5_and_the_session_goes_on(root):
    data = put(root, "f", blob(2000))
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f"))
    port = out[0].src
    intruder = (IPv4Address("10.0.2.99"), 2000)
    for who in (intruder, (CLIENT[0], 2001)):
        reply = server.handle(0.1, port, who, ack(1))
        assert [(d.src, d.dst, parse(d.data)) for d in reply] == [
            (port, who, ErrorRepr(ErrorCode.UNKNOWN_TID, "unknown transfer ID"))]
    # an ERROR from a stranger is never answered (no volleys) and ends nothing
    stray_err = ErrorRepr(ErrorCode.UNKNOWN_TID, "who are you").to_bytes()
    assert server.handle(0.2, port, intruder, stray_err) == []
    assert server.stats.unknown_tid == 3 and server.sessions == 1
    assert fetch_rest(server, port, 1) == data[512:]


def test_malformed_and_truncated_packets_are_dropped(root):
    put(root, "f", blob(2000))
    server = TftpServer(root)
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f"))
    port = out[0].src
    bad = [b"", b"\x00", b"\x00\x01f", b"\x00\x01f\x00octet", b"\x00\x04\x00",
           b"\x00\x09\x00\x01", b"\x00\x01f\x00octet\x00blksize\x00", b"\xff" * 600]
    for junk in bad:
        assert server.handle(0.1, LOCAL, CLIENT, junk) == []
        assert server.handle(0.1, port, CLIENT, junk) == []
    assert server.stats.malformed == 2 * len(bad) and server.sessions == 1
    # well-formed but meaningless: DATA/ACK/OACK/ERROR to port 69, DATA to the session
    for msg in (DataRepr(1, b"x"), AckRepr(1), OackRepr(), ErrorRepr(0, "x")):
        assert server.handle(0.1, LOCAL, CLIENT, msg.to_bytes()) == []
    assert server.handle(0.1, port, CLIENT, DataRepr(1, b"x").to_bytes()) == []
    assert server.stats.unexpected == 5 and server.sessions == 1
    assert server.poll_at() == 1.0  # none of it touched the timer


def test_second_rrq_from_the_same_client(root):
    a, b = put(root, "a", blob(2000, 1)), put(root, "b", blob(2000, 2))
    server = TftpServer(root)
    before = fds()
    out = server.handle(0.0, LOCAL, CLIENT, rrq("a"))
    port = out[0].src
    # the client retransmitting its RRQ before any ACK: ignored, the timer resends
    assert server.handle(0.5, LOCAL, CLIENT, rrq("a")) == []
    assert server.stats.duplicate_requests == 1 and server.sessions == 1
    server.handle(0.6, port, CLIENT, ack(1))
    # after progress the same request is a restart: a new session on a new port
    out = server.handle(0.7, LOCAL, CLIENT, rrq("a"))
    assert parse(out[0].data) == DataRepr(1, a[:512]) and out[0].src != port
    assert server.sessions == 1 and server.stats.sessions_replaced == 1
    # another file from the same endpoint replaces at once
    out = server.handle(0.8, LOCAL, CLIENT, rrq("b"))
    assert parse(out[0].data) == DataRepr(1, b[:512])
    assert server.sessions == 1 and server.stats.sessions_replaced == 2
    assert fds() == before + 1
    server.close()
    assert fds() == before


# -- paths -------------------------------------------------------------------------------
@pytest.fixture
def jail(tmp_path):
    """root/ with files inside; secret.txt beside it, outside."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "inside.txt").write_bytes(b"inside")
    (root / "sub" / "deep.txt").write_bytes(b"deep")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "x").write_bytes(b"out")
    return root


def _error(server, name) -> ErrorRepr | None:
    out = server.handle(0.0, LOCAL, CLIENT, rrq(name))
    m = parse(out[0].data)
    if isinstance(m, ErrorRepr):
        return m
    server.close()
    return None


@pytest.mark.parametrize("name", [
    "../secret.txt", "/../secret.txt", "sub/../../secret.txt", "..", "sub/..", "../root/inside.txt",
    "sub\\..\\..\\secret.txt", "inside.txt\\",
])
def test_traversal_refused(jail, name):
    server = TftpServer(jail)
    before = fds()
    err = _error(server, name)
    assert err is not None and err.code == ErrorCode.ACCESS_VIOLATION, err
    assert fds() == before and server.sessions == 0


def test_absolute_paths_resolve_inside_the_root(jail):
    server = TftpServer(jail)
    # /etc/passwd is root/etc/passwd: missing here, so not found (never the host's)
    assert _error(server, "/etc/passwd").code == ErrorCode.FILE_NOT_FOUND
    assert _error(server, "//etc/passwd").code == ErrorCode.FILE_NOT_FOUND
    (jail / "etc").mkdir()
    (jail / "etc" / "passwd").write_bytes(b"root's own")
    assert bytes(fetch(server, "/etc/passwd").data) == b"root's own"
    assert bytes(fetch(server, "//etc/passwd").data) == b"root's own"


def test_symlinks_inside_followed_outside_refused(jail, tmp_path):
    (jail / "link-in").symlink_to("sub/deep.txt")
    (jail / "sub" / "link-up").symlink_to("../inside.txt")
    (jail / "abs-in").symlink_to(jail / "inside.txt")
    (jail / "link-out").symlink_to(tmp_path / "secret.txt")
    (jail / "rel-out").symlink_to("../secret.txt")
    (jail / "dir-out").symlink_to(tmp_path / "outdir")
    (jail / "etc-passwd").symlink_to("/etc/passwd")
    (jail / "dangling").symlink_to("nowhere")
    (jail / "loop").symlink_to("loop")
    server = TftpServer(jail)
    assert bytes(fetch(server, "link-in").data) == b"deep"
    assert bytes(fetch(server, "sub/link-up").data) == b"inside"
    assert bytes(fetch(server, "abs-in").data) == b"inside"
    before = fds()
    for name in ("link-out", "rel-out", "dir-out/x", "etc-passwd"):
        err = _error(server, name)
        assert err is not None and err.code == ErrorCode.ACCESS_VIOLATION, name
    assert _error(server, "dangling").code == ErrorCode.FILE_NOT_FOUND
    assert _error(server, "loop").code in (ErrorCode.FILE_NOT_FOUND,
                                           ErrorCode.ACCESS_VIOLATION)
    assert fds() == before
    assert server.stats.refused["outside_root"] == 4


def test_root_given_through_a_symlink(jail, tmp_path):
    (tmp_path / "alias").symlink_to(jail)
    server = TftpServer(tmp_path / "alias")
    assert bytes(fetch(server, "inside.txt").data) == b"inside"
    assert _error(server, "../secret.txt").code == ErrorCode.ACCESS_VIOLATION


def test_directories_fifos_and_unreadable_files_refused(jail):
    os.mkfifo(jail / "fifo")
    server = TftpServer(jail)
    before = fds()
    for name in ("sub", "sub/", "", "/", ".", "fifo"):  # a FIFO must not block the open
        err = _error(server, name)
        assert err is not None and err.code == ErrorCode.ACCESS_VIOLATION, name
    assert fds() == before and server.sessions == 0


def test_docstring_examples():
    import doctest

    import netstack.socket.tftp_server as mod

    result = doctest.testmod(mod)
    assert result.attempted == 4 and result.failed == 0


def test_root_must_be_a_directory(jail):
    with pytest.raises(ValueError):
        TftpServer(jail / "inside.txt")
    with pytest.raises(ValueError):
        TftpServerConfig(max_blksize=7)
    with pytest.raises(ValueError):
        TftpServerConfig(max_windowsize=0)


# -- bounds ------------------------------------------------------------------------------
def test_operator_files_are_served_ahead_of_the_root(root, tmp_path):
    """The boot files `vhostnet serve --boot-kernel` names: a path anywhere, bytes we made;
    served under their names with or without a root, every fd closed after."""
    kernel = tmp_path / "elsewhere" / "vmlinuz"
    kernel.parent.mkdir()
    kdata = blob(5000, seed=7)
    kernel.write_bytes(kdata)
    put(root, "boot.ipxe", b"the root's own")
    put(root, "other.bin", b"from the root")
    before = fds()
    server = TftpServer(root, files={"kernel": kernel, "boot.ipxe": b"#!ipxe\nboot\n"})
    assert fetch(server, "/kernel", blksize="1024").data == kdata
    assert fetch(server, "boot.ipxe").data == b"#!ipxe\nboot\n"  # ours first
    assert fetch(server, "other.bin").data == b"from the root"
    alone = TftpServer(None, files={"kernel": kernel})
    assert fetch(alone, "kernel").data == kdata
    assert fetch(alone, "other.bin").error.code == ErrorCode.FILE_NOT_FOUND
    assert fetch(alone, "../elsewhere/vmlinuz").error is not None
    kernel.unlink()  # gone since it was named: not found, not a crash
    assert fetch(alone, "kernel").error.code == ErrorCode.FILE_NOT_FOUND
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert fetch(TftpServer(None, files={"f": fifo}), "f").error.code == \
        ErrorCode.ACCESS_VIOLATION
    assert fds() == before
    with pytest.raises(ValueError):
        TftpServer(None)


def test_a_thousand_concurrent_requests_stay_bounded(root):
    data = put(root, "f", blob(3000))
    server = TftpServer(root)
    before = fds()
    clients = [(IPv4Address("10.0.2.15"), 10_000 + i) for i in range(1000)]
    replies = {c: server.handle(0.0, LOCAL, c, rrq("f")) for c in clients}
    live = [c for c, out in replies.items() if isinstance(parse(out[0].data), DataRepr)]
    refused = [c for c, out in replies.items() if isinstance(parse(out[0].data), ErrorRepr)]
    assert len(live) == server.sessions == 64 and len(refused) == 936
    assert {parse(replies[c][0].data) for c in refused} == {
        ErrorRepr(ErrorCode.NOT_DEFINED, "too many sessions")}
    assert all(replies[c][0].src[1] != 69 for c in refused)
    assert server.stats.refused["too_many"] == 936
    assert fds() == before + 64
    assert len({replies[c][0].src[1] for c in live}) == 64  # a port each
    # half of them finish, the rest go silent and time out
    for c in live[:32]:
        port = replies[c][0].src
        got, block = replies[c][0].data[4:], 1
        while True:
            out = server.handle(0.5, port, c, ack(block))
            if not out:
                break
            block = parse(out[0].data).block
            got += parse(out[0].data).data
        assert got == data
    assert server.sessions == 32 and fds() == before + 32
    while server.poll_at() is not None:
        server.on_timer(server.poll_at())
    assert server.sessions == 0 and fds() == before
    st_ = server.stats
    assert (st_.sessions_completed, st_.sessions_timed_out) == (32, 32)


def test_session_ports_avoid_ports_in_use(root):
    put(root, "f", b"x")
    free = 50_000
    server = TftpServer(root, port_in_use=lambda p: p != free, rng=random.Random(5))
    out = server.handle(0.0, LOCAL, CLIENT, rrq("f"))
    assert out[0].src == (SERVER, free)
    out = server.handle(0.0, LOCAL, (CLIENT[0], 2001), rrq("f"))  # none left
    assert parse(out[0].data) == ErrorRepr(ErrorCode.NOT_DEFINED, "no free port")
    assert out[0].src == LOCAL  # the error then comes from port 69


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.sampled_from([
    rrq("f"), rrq("f", blksize=8, windowsize=3), rrq("../x"), ack(0), ack(1), ack(2),
    ack(65535), DataRepr(1, b"x").to_bytes(), ErrorRepr(8, "").to_bytes(), b"\x00",
    RequestRepr(Opcode.WRQ, "f").to_bytes(), b"\x00\x01f\x00",
]), st.floats(0, 3)), max_size=40))
def test_any_sequence_keeps_the_engine_consistent(tmp_path_factory, events):
    root = tmp_path_factory.mktemp("seq")
    (root / "f").write_bytes(blob(100))
    server = TftpServer(root, TftpServerConfig(max_sessions=2))
    before = fds()
    now = 0.0
    ports = [69]
    for who, where, data, dt in events:
        now += dt
        client = (IPv4Address("10.0.2.15"), 3000 + who)
        port = ports[min(where, len(ports) - 1)]
        out = server.handle(now, (SERVER, port), client, data) + server.on_timer(now)
        for d in out:
            assert isinstance(d, Datagram) and d.src[0] == SERVER
            parse(d.data)
            ports.append(d.src[1])
        assert server.sessions <= 2
        assert fds() == before + server.sessions
    server.close()
    assert fds() == before and server.poll_at() is None


# -- TftpServerSocket inside an Interface ------------------------------------------------
MAC = EthernetAddress.parse("02:00:00:00:00:01")
OUR4, PEER4 = "10.0.2.2", "10.0.2.15"
OUR6, PEER6 = "fd00:10:0:2::2", "fd00:10:0:2::15"
PEER_MAC = "02:00:00:00:00:02"


def stack(root, mtu: int = 1500, **kw):
    cfg = InterfaceConfig(MAC, [Ipv4Cidr.parse(OUR4 + "/24")],
                          ipv6_addrs=[Ipv6Cidr.parse(OUR6 + "/64")], dad=False)
    iface = Interface(cfg, 0.0)
    dev = Dev(mtu=mtu)
    sockets = SocketSet()
    sock = TftpServerSocket(TftpServer(root, **kw), [OUR4, OUR6], mtu=mtu)
    sockets.add(sock)
    iface.poll(0.0, dev, sockets)
    dev.take()
    iface.neighbors6.learn(IPv6Address(PEER6), EthernetAddress.parse(PEER_MAC), 0.0)
    arp = Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER4,
                                                              pdst=OUR4)
    feed(iface, dev, sockets, arp)
    return iface, dev, sockets, sock


def feed(iface, dev, sockets, *frames, now: float = 0.0) -> list[Ether]:
    for f in frames:
        dev.rx.append(raw(f))
    iface.poll(now, dev, sockets)
    return dev.take()


def to_us(v6: bool, sport: int, dport: int, payload) -> Ether:
    ip = IPv6(src=PEER6, dst=OUR6) if v6 else IP(src=PEER4, dst=OUR4)
    return Ether(src=PEER_MAC, dst=str(MAC)) / ip / UDP(sport=sport, dport=dport) / payload


def udp_out(frames: list[Ether], v6: bool):
    """The UDP datagrams among `frames` (ARP/NDP chatter skipped), checksums verified by
    rebuilding them with scapy."""
    ip_layer = IPv6 if v6 else IP
    out = []
    for f in frames:
        if ip_layer in f and UDP in f:
            rebuilt = f.copy()
            del rebuilt[UDP].chksum
            assert raw(Ether(raw(rebuilt))) == raw(f), "bad UDP checksum"
            out.append(f)
    return out


def ip_repr_for(v6: bool) -> SimpleNamespace:
    """What `accepts` reads of an IP repr: the destination address."""
    return SimpleNamespace(dst_addr=IPv6Address(OUR6) if v6 else IPv4Address(OUR4))


def _udp(sport: int, dport: int) -> UdpRepr:
    return UdpRepr(sport, dport)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_socket_serves_an_rrq_frame(root, v6):
    data = put(root, "pxelinux.0", blob(3000))
    iface, dev, sockets, sock = stack(root)
    request = TFTP() / TFTP_RRQ(filename="/pxelinux.0", mode="octet") / TFTP_Options(
        options=[TFTP_Option(oname="blksize", value="1468"),
                 TFTP_Option(oname="tsize", value="0")])
    frames = udp_out(feed(iface, dev, sockets, to_us(v6, 1234, 69, request)), v6)
    assert len(frames) == 1
    f = frames[0]
    ip = f[IPv6] if v6 else f[IP]
    assert (ip.src, ip.dst) == ((OUR6, PEER6) if v6 else (OUR4, PEER4))
    assert f.dst == PEER_MAC and f[UDP].dport == 1234
    tid = f[UDP].sport
    assert tid != 69 and 49152 <= tid <= 65535
    oack = TFTP(raw(f[UDP].payload))
    assert oack.op == 6
    opts = {o.oname: o.value for o in oack[TFTP_Options].options}
    # the link carries 1468-byte blocks over IPv4, 1448 over IPv6 (40-byte header)
    assert opts == {b"blksize": b"1448" if v6 else b"1468", b"tsize": b"3000"}
    blksize = int(opts[b"blksize"])
    got, block = b"", 0
    while True:
        ack_frame = to_us(v6, 1234, tid, TFTP(raw(AckRepr(block).to_bytes())))
        frames = udp_out(feed(iface, dev, sockets, ack_frame), v6)
        if not frames:
            break
        (f,) = frames
        assert f[UDP].sport == tid and f[UDP].dport == 1234
        assert len(f) <= 1514  # one Ethernet frame: no fragments
        d = TFTP(raw(f[UDP].payload))
        assert d.op == 3 and d[TFTP_DATA].block == block + 1
        got += raw(d[TFTP_DATA].payload)
        block += 1
    assert got == data and block == 3000 // blksize + 1
    assert sock.server.stats.sessions_completed == 1 and sock.server.sessions == 0
    # the session's port is closed now: the interface answers port unreachable
    assert not sock.accepts(ip_repr_for(v6), _udp(1234, tid))


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_socket_plain_rrq_gets_data_1_at_once(root, v6):
    data = put(root, "f", blob(700))
    iface, dev, sockets, sock = stack(root)
    request = TFTP() / TFTP_RRQ(filename="f", mode="octet")
    (f,) = udp_out(feed(iface, dev, sockets, to_us(v6, 3000, 69, request)), v6)
    assert f[UDP].sport != 69 and f[UDP].dport == 3000
    assert (f[IPv6] if v6 else f[IP]).dst == (PEER6 if v6 else PEER4)
    d = TFTP(raw(f[UDP].payload))
    assert d.op == 3 and d[TFTP_DATA].block == 1 and raw(d[TFTP_DATA].payload) == data[:512]


def test_socket_accepts_only_its_addresses_and_ports(root):
    put(root, "f", b"x" * 600)
    iface, dev, sockets, sock = stack(root)
    assert sock.accepts(ip_repr_for(False), _udp(1, 69))
    assert sock.accepts(ip_repr_for(True), _udp(1, 69))
    assert not sock.accepts(ip_repr_for(False), _udp(1, 70))
    frames = udp_out(feed(iface, dev, sockets, to_us(False, 1234, 69, raw(rrq("f")))), False)
    tid = frames[0][UDP].sport
    assert sock.accepts(ip_repr_for(False), _udp(1234, tid))
    # a session's port is taken on the address its request went to only
    assert not sock.accepts(ip_repr_for(True), _udp(1234, tid))
    # another endpoint to the session port: ERROR 5 from that port
    stranger = to_us(False, 4321, tid, raw(ack(1)))
    (f,) = udp_out(feed(iface, dev, sockets, stranger), False)
    assert f[UDP].sport == tid and f[UDP].dport == 4321
    assert parse(raw(f[UDP].payload)).code == ErrorCode.UNKNOWN_TID


def test_socket_keeps_packets_while_the_device_is_full_and_retransmits(root):
    put(root, "f", blob(5000))
    iface, dev, sockets, sock = stack(root)
    dev.room = 0
    assert udp_out(feed(iface, dev, sockets, to_us(False, 1234, 69, raw(rrq(
        "f", windowsize=4)))), False) == []
    assert sock.poll_at(0.0) == 0.0  # the OACK waits in the queue
    dev.room = None
    iface.poll(0.1, dev, sockets)
    (f,) = udp_out(dev.take(), False)
    assert TFTP(raw(f[UDP].payload)).op == 6
    tid = f[UDP].sport
    frames = udp_out(feed(iface, dev, sockets, to_us(False, 1234, tid, raw(ack(0))), now=0.2),
                     False)
    assert [parse(raw(f[UDP].payload)).block for f in frames] == [1, 2, 3, 4]
    assert sock.poll_at(0.2) == pytest.approx(1.2)  # the retransmission deadline
    iface.poll(1.2, dev, sockets)
    frames = udp_out(dev.take(), False)
    assert [parse(raw(f[UDP].payload)).block for f in frames] == [1, 2, 3, 4]
    # with the device full at the deadline, a second timeout replaces (not adds to) the
    # window still queued
    dev.room = 0
    iface.poll(2.2, dev, sockets)
    iface.poll(3.2, dev, sockets)
    assert sock._queued == 4
    dev.room = None
    iface.poll(3.3, dev, sockets)
    assert [parse(raw(f[UDP].payload)).block for f in udp_out(dev.take(), False)] == \
        [1, 2, 3, 4]


def test_socket_queue_is_bounded(root):
    put(root, "f", b"x")
    iface, dev, sockets, sock = stack(root)
    sock.max_queued = 10
    dev.room = 0
    for i in range(50):  # WRQs, each answered by an ERROR from a fresh port
        feed(iface, dev, sockets, to_us(False, 2000 + i, 69, raw(
            RequestRepr(Opcode.WRQ, "f").to_bytes())))
    assert sock._queued == 10 and sock.tx_dropped == 40


def test_socket_port_clashes_and_session_ports(root):
    sockets = SocketSet()
    other = UdpSocket()
    other.bind(("0.0.0.0", 69))
    sockets.add(other)
    with pytest.raises(AddrInUse):
        sockets.add(TftpServerSocket(TftpServer(root), [OUR4]))
    with pytest.raises(Unaddressable):
        TftpServerSocket(TftpServer(root), ["0.0.0.0"])
    with pytest.raises(Unaddressable):
        TftpServerSocket(TftpServer(root), [])
    sockets = SocketSet()
    sock = TftpServerSocket(TftpServer(root), [OUR4])
    sockets.add(sock)
    late = UdpSocket()
    sockets.add(late)
    with pytest.raises(AddrInUse):
        late.bind(("0.0.0.0", 69))  # we hold 69
    taken = UdpSocket()
    taken.bind(("0.0.0.0", 50_000))
    sockets.add(taken)
    assert sock._port_taken(50_000) and sock._port_taken(69) and not sock._port_taken(50_001)
    assert sock.endpoint == (IPv4Address(OUR4), 69)
