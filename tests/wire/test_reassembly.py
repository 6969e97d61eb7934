"""IPv4 reassembly (ADVERSARIAL.md case 21): fragments made by scapy's `fragment()`, in
order, reversed, shuffled, duplicated; overlaps, never-completed and oversize datagrams;
the memory and datagram caps."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, fragment
from scapy.packet import raw

from netstack.iface.reassembly import DATAGRAM_OVERHEAD, FRAGMENT_OVERHEAD, Ipv4Reassembler
from netstack.wire.ipv4 import Ipv4Packet, Ipv4Repr
from netstack.wire.udp import UdpPacket, UdpRepr

SRC, DST = IPv4Address("10.0.2.15"), IPv4Address("10.0.2.2")


def datagram(ident: int = 1, size: int = 3000, src: str = "10.0.2.15", flags: int = 0) -> IP:
    payload = bytes(i % 251 for i in range(size))
    return IP(src=src, dst="10.0.2.2", id=ident, flags=flags) / UDP(sport=5000, dport=53) / payload


def frags(dgram: IP, fragsize: int = 1000) -> list[bytes]:
    return [raw(f) for f in fragment(dgram, fragsize=fragsize)]


def feed(r: Ipv4Reassembler, pieces, now: float = 0.0):
    outs = [r.add(now, Ipv4Packet.new_checked(p)) for p in pieces]
    done = [o for o in outs if o is not None]
    return done


def check_whole(out: bytes, dgram: IP) -> None:
    assert out == raw(dgram)
    ip = Ipv4Packet.new_checked(out)
    r = Ipv4Repr.parse(ip)  # checksum verified, no fragment flags left
    u = UdpPacket.new_checked(ip.payload)
    assert UdpRepr.parse(u, r.src_addr, r.dst_addr) == UdpRepr(5000, 53)
    sp = IP(out)
    assert sp.flags == 0 and sp.frag == 0 and sp.len == len(out)


def test_in_order():
    d = datagram()
    pieces = frags(d)
    assert len(pieces) == 4
    r = Ipv4Reassembler()
    outs = [r.add(0.0, Ipv4Packet.new_checked(p)) for p in pieces]
    assert outs[:-1] == [None, None, None]
    check_whole(outs[-1], d)
    assert r.stats.reassembled == 1 and r.stats.fragments == 4
    assert len(r) == 0 and r.bytes_in_use == 0 and r.poll_at() is None


def test_reversed():
    d = datagram()
    r = Ipv4Reassembler()
    (out,) = feed(r, reversed(frags(d)))
    check_whole(out, d)


@pytest.mark.parametrize("seed", range(10))
def test_shuffled(seed):
    d = datagram(size=5000 + seed * 8)
    pieces = frags(d, fragsize=200)
    random.Random(seed).shuffle(pieces)
    r = Ipv4Reassembler()
    (out,) = feed(r, pieces)
    check_whole(out, d)


def test_duplicates_are_ignored():
    d = datagram()
    pieces = frags(d)
    r = Ipv4Reassembler()
    (out,) = feed(r, [pieces[0], pieces[0], pieces[2], pieces[1], pieces[2], pieces[3]])
    check_whole(out, d)
    assert r.stats.duplicates == 2
    # a duplicate of a datagram already delivered starts a new one, which times out
    assert feed(r, [pieces[1]]) == []
    assert r.expire(100.0) == 1


def test_interleaved_datagrams_keyed_apart():
    a, b = datagram(ident=7), datagram(ident=7, src="10.0.2.16")
    c = datagram(ident=8)
    pa, pb, pc = frags(a), frags(b), frags(c)
    mixed = [x for trio in zip(pa, pb, pc, strict=True) for x in trio]
    r = Ipv4Reassembler()
    outs = feed(r, mixed)
    assert sorted(outs) == sorted([raw(a), raw(b), raw(c)])


def test_dont_frag_is_kept_and_options_come_from_the_first_fragment():
    d = datagram(flags=0)
    pieces = [bytearray(p) for p in frags(d)]
    for p in pieces:  # DF on a fragment is odd but legal to carry through
        pkt = Ipv4Packet(p)
        pkt.dont_frag = True
        pkt.fill_checksum()
    r = Ipv4Reassembler()
    (out,) = feed(r, [bytes(p) for p in pieces])
    assert IP(out).flags == "DF"
    assert out[20:] == raw(d)[20:]


def test_unfragmented_packet_passes_through():
    d = raw(datagram(size=10))
    r = Ipv4Reassembler()
    assert r.add(0.0, Ipv4Packet.new_checked(d + b"\0" * 6)) == d
    assert len(r) == 0


def _fragment(ident: int, offset: int, data: bytes, more: bool, proto: int = 17) -> bytes:
    """A hand-made fragment (scapy's fragment() never overlaps)."""
    buf = bytearray(20 + len(data))
    Ipv4Repr(SRC, DST, proto, len(data), ident=ident, dont_frag=False).emit(
        Ipv4Packet(buf), fill_checksum=False
    )
    pkt = Ipv4Packet(buf)
    pkt.more_frags = more
    pkt.frag_offset = offset
    buf[20:] = data
    pkt.fill_checksum()
    return bytes(buf)


@pytest.mark.parametrize(
    "pieces",
    [
        # second fragment starts inside the first
        [(0, 16, True), (8, 16, False)],
        # a fragment covering two others
        [(0, 8, True), (16, 8, False), (0, 24, True)],
        # same offset, different length
        [(0, 16, True), (0, 8, True)],
        # same offset and length, different bytes (not a duplicate)
        [(0, 8, True, b"A"), (0, 8, True, b"B")],
        # a last fragment before data already held
        [(16, 8, True), (8, 8, False)],
        # two last fragments disagreeing on the length
        [(16, 8, False), (24, 8, False)],
        # data beyond the known end
        [(8, 8, False), (16, 8, True)],
        # tail overlapping the next one
        [(16, 16, False), (8, 16, True)],
    ],
)
def test_overlap_drops_the_whole_datagram(pieces):
    r = Ipv4Reassembler()
    outs = []
    for piece in pieces:
        offset, size, more = piece[:3]
        fill = piece[3] if len(piece) > 3 else b"x"
        outs.append(r.add(0.0, Ipv4Packet.new_checked(_fragment(9, offset, fill * size, more))))
    assert outs == [None] * len(pieces)
    assert r.stats.overlaps == 1
    assert len(r) == 0 and r.bytes_in_use == 0
    # the rest of the attack cannot complete it: it starts over and never finishes
    assert r.add(0.0, Ipv4Packet.new_checked(_fragment(9, 0, b"y" * 8, True))) is None
    assert r.expire(31.0) == 1


def test_overlap_with_real_fragments():
    d = datagram()
    pieces = frags(d, fragsize=800)
    evil = _fragment(1, 400, b"E" * 800, True)
    r = Ipv4Reassembler()
    assert feed(r, [pieces[0], evil] + pieces[1:]) == []
    assert r.stats.overlaps == 1 and r.stats.reassembled == 0


def test_never_completed_expires():
    pieces = frags(datagram())
    r = Ipv4Reassembler(timeout=30.0)
    assert feed(r, pieces[:2], now=5.0) == []
    assert feed(r, pieces[3:], now=10.0) == []
    assert r.poll_at() == 35.0
    assert r.expire(34.9) == 0 and len(r) == 1
    assert r.expire(35.0) == 1
    assert r.stats.timeouts == 1 and len(r) == 0 and r.bytes_in_use == 0
    assert r.poll_at() is None
    # the missing fragment alone, late, does not complete anything
    assert feed(r, pieces[2:3], now=36.0) == []


def test_add_expires_stale_datagrams_first():
    pieces = frags(datagram())
    r = Ipv4Reassembler(timeout=30.0)
    feed(r, pieces[:3], now=0.0)
    assert feed(r, pieces[3:], now=31.0) == []  # the first three are gone
    assert r.stats.timeouts == 1


def test_poll_at_is_the_oldest_deadline():
    r = Ipv4Reassembler(timeout=10.0)
    feed(r, frags(datagram(ident=1))[:1], now=1.0)
    feed(r, frags(datagram(ident=2))[:1], now=2.0)
    assert r.poll_at() == 11.0
    r.expire(11.0)
    assert r.poll_at() == 12.0


def test_over_64k_is_dropped():
    # ping of death: the last fragment reaches past 65535
    r = Ipv4Reassembler()
    first = _fragment(3, 0, b"a" * 1480, True)
    last = _fragment(3, 65528, b"b" * 100, False)
    assert r.add(0.0, Ipv4Packet.new_checked(first)) is None
    assert r.add(0.0, Ipv4Packet.new_checked(last)) is None
    assert r.stats.oversize == 1 and len(r) == 0 and r.bytes_in_use == 0


def test_exactly_64k_minus_header_is_reassembled_and_one_more_is_not():
    r = Ipv4Reassembler(max_bytes=1 << 20)
    payload_max = 65535 - 20
    whole = payload_max - payload_max % 8  # largest multiple of 8 for the MF pieces
    parts = [(o, min(1480, payload_max - o)) for o in range(0, payload_max, 1480)]
    outs = [
        r.add(0.0, Ipv4Packet.new_checked(_fragment(4, o, b"q" * n, o + n < payload_max)))
        for o, n in parts
    ]
    assert outs[-1] is not None and len(outs[-1]) == 65535 and whole > 0
    assert Ipv4Repr.parse(Ipv4Packet.new_checked(outs[-1])).payload_len == payload_max
    # a datagram with a 24-byte header (options) and the same payload is 4 bytes too long
    buf = bytearray(_fragment(5, 0, b"o" * 1480, True))
    buf[0] = 0x46
    opt = bytearray(buf[:20]) + b"\x01\x01\x01\x00" + buf[20:]
    struct.pack_into("!H", opt, 2, len(opt))
    Ipv4Packet(opt).fill_checksum()
    outs = [r.add(0.0, Ipv4Packet.new_checked(bytes(opt)))]
    outs += [
        r.add(0.0, Ipv4Packet.new_checked(_fragment(5, o, b"q" * n, o + n < payload_max)))
        for o, n in parts[1:]
    ]
    assert outs == [None] * len(parts)
    assert r.stats.oversize == 1 and len(r) == 0


def test_malformed_fragments_are_dropped():
    r = Ipv4Reassembler()
    assert r.add(0.0, Ipv4Packet.new_checked(_fragment(6, 0, b"z" * 12, True))) is None  # not ×8
    assert r.add(0.0, Ipv4Packet.new_checked(_fragment(6, 8, b"", True))) is None  # empty
    assert r.stats.malformed == 2 and len(r) == 0
    truncated = _fragment(6, 0, b"z" * 16, True)[:30]
    assert r.add(0.0, Ipv4Packet(truncated)) is None
    assert r.stats.malformed == 3


def test_memory_cap_with_many_partial_datagrams():
    cap = 64 * 1024
    r = Ipv4Reassembler(max_bytes=cap, max_packets=1000)
    for ident in range(200):  # 200 datagrams, each missing its last fragment
        feed(r, frags(datagram(ident=ident, size=3000))[:3], now=ident * 0.01)
        assert r.bytes_in_use <= cap
    assert r.stats.evicted > 0
    held = len(r)
    assert 0 < held < 200
    # the survivors are the newest ones: completing the newest works, the oldest is gone
    (out,) = feed(r, frags(datagram(ident=199, size=3000))[3:], now=2.0)
    check_whole(out, datagram(ident=199, size=3000))
    assert feed(r, frags(datagram(ident=0, size=3000))[3:], now=2.0) == []


def test_datagram_count_cap_evicts_oldest():
    r = Ipv4Reassembler(max_packets=4)
    for ident in range(10):
        feed(r, frags(datagram(ident=ident))[:1], now=float(ident))
    assert len(r) == 4 and r.stats.evicted == 6
    assert r.poll_at() == 6.0 + 30.0
    (out,) = feed(r, frags(datagram(ident=9))[1:], now=10.0)
    check_whole(out, datagram(ident=9))


def test_one_datagram_larger_than_the_cap_is_dropped_not_the_others():
    cap = 8 * 1024
    r = Ipv4Reassembler(max_bytes=cap)
    small = datagram(ident=1, size=1000)
    feed(r, frags(small, fragsize=400)[:1])
    big = frags(datagram(ident=2, size=20000), fragsize=1400)
    assert feed(r, big) == []
    assert r.bytes_in_use <= cap
    assert r.stats.evicted >= 1


def test_a_fragment_larger_than_the_cap_is_refused():
    r = Ipv4Reassembler(max_bytes=1024)
    assert r.add(0.0, Ipv4Packet.new_checked(_fragment(1, 0, b"x" * 1480, True))) is None
    assert r.stats.too_big == 1 and len(r) == 0 and r.bytes_in_use == 0


def test_tiny_fragment_flood_is_bounded_by_overhead():
    cap = 32 * 1024
    r = Ipv4Reassembler(max_bytes=cap)
    for i in range(4000):  # 8-byte fragments with gaps: the state stays within the cap
        r.add(0.0, Ipv4Packet.new_checked(_fragment(77, i * 16, b"t" * 8, True)))
        assert r.bytes_in_use <= cap
    assert r.bytes_in_use >= DATAGRAM_OVERHEAD + FRAGMENT_OVERHEAD
    assert r.stats.evicted >= 1


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4000),
    st.sampled_from([8, 16, 64, 512, 1480]),
    st.randoms(use_true_random=False),
    st.integers(0, 5),
)
def test_any_order_with_duplicates_reassembles(size, fragsize, rnd, dups):
    d = datagram(ident=size, size=size)
    pieces = frags(d, fragsize=fragsize)
    pieces += [rnd.choice(pieces) for _ in range(dups)]
    rnd.shuffle(pieces)
    r = Ipv4Reassembler(max_bytes=1 << 20)
    outs = feed(r, pieces)
    if len(pieces) == 1:
        assert outs == [raw(d)]
        return
    assert outs[0] == raw(d)
    # duplicates arriving after completion start a new datagram that never completes
    assert all(o == raw(d) for o in outs)
    assert r.bytes_in_use <= 1 << 20


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 70000 // 8), st.integers(0, 200), st.booleans(),
                  st.integers(0, 3)),
        max_size=30,
    )
)
def test_random_fragments_never_break_the_caps(spec):
    cap = 16 * 1024
    r = Ipv4Reassembler(max_bytes=cap, max_packets=3, timeout=5.0)
    now = 0.0
    for off8, size, more, ident in spec:
        now += 0.5
        offset = min(off8 * 8, 0x1FFF * 8)
        out = r.add(now, Ipv4Packet.new_checked(_fragment(ident, offset, b"r" * size, more)))
        if out is not None:
            assert len(out) <= 65535
            Ipv4Repr.parse(Ipv4Packet.new_checked(out))
        assert r.bytes_in_use <= cap and len(r) <= 3
    r.expire(now + 5.0)
    assert len(r) == 0 and r.bytes_in_use == 0
