"""Out-of-order reassembly: exact bytes from any order, overlaps and duplicates; caps."""

from __future__ import annotations

import doctest
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.socket.tcp import assembler
from netstack.socket.tcp.assembler import Assembler


def test_doctests():
    assert doctest.testmod(assembler).failed == 0


def test_in_order_data_passes_straight_through():
    a = Assembler(1000)
    assert a.add(0, memoryview(b"hello"))
    assert a.contiguous_len == 5 and a.held_bytes == 5
    assert a.pop_contiguous() == b"hello"
    assert a.is_empty and a.held_bytes == 0 and a.pop_contiguous() == b""


def test_hole_then_fill_and_offsets_shift_after_pop():
    a = Assembler(1000)
    a.add(10, b"KLMNO")
    a.add(0, b"ABC")
    assert a.pop_contiguous() == b"ABC"
    # the in-order point moved by 3: the held range is now at 7..12
    assert a.sack_blocks() == [(7, 12)]
    a.add(0, b"DEFGHIJ")
    assert a.pop_contiguous() == b"DEFGHIJKLMNO"
    assert a.is_empty


def test_overlaps_merge_and_held_bytes_win():
    a = Assembler(1000)
    a.add(5, b"fghij")
    a.add(3, b"XXfgYY")  # overlaps the start: only the new edges are taken
    a.add(8, b"ZZZklm")  # overlaps the end
    assert a.held_bytes == 14 - 3
    a.add(0, b"abcdefghijklmn")
    assert a.pop_contiguous() == b"abcXXfghijZklm"


def test_join_two_ranges_through_the_gap():
    a = Assembler(1000)
    a.add(2, b"cd")
    a.add(6, b"gh")
    a.add(10, b"kl")
    assert len(a.sack_blocks()) == 3
    a.add(1, b"bcdefghijk")  # covers three ranges and both gaps
    assert a.sack_blocks() == [(1, 12)]
    a.add(0, b"a")
    assert a.pop_contiguous() == b"abcdefghijkl"


def test_negative_offset_drops_delivered_bytes():
    a = Assembler(1000)
    assert a.add(-3, b"oldnew")
    assert a.add(-5, b"gone")
    assert a.pop_contiguous() == b"new"


def test_pop_with_a_limit():
    a = Assembler(5000)
    a.add(0, b"a" * 1500)
    a.add(1500, b"b" * 10)
    assert a.pop_contiguous(1000) == b"a" * 1000
    assert a.contiguous_len == 510
    assert a.pop_contiguous(0) == b""
    assert a.pop_contiguous(505) == b"a" * 500 + b"b" * 5
    assert a.pop_contiguous() == b"b" * 5


def test_data_beyond_max_bytes_is_trimmed():
    a = Assembler(10)
    assert a.add(8, b"abcdef")
    assert a.held_bytes == 2
    assert not a.add(10, b"x")
    assert not a.add(50, b"x")
    assert a.add(0, b"01234567")
    assert a.pop_contiguous() == b"01234567ab"
    # the window moves with the in-order point
    assert a.add(8, b"abcdef") and a.held_bytes == 2


def test_max_segments_refuses_new_holes_but_merges_and_in_order():
    a = Assembler(10_000, max_segments=3)
    for off in (10, 20, 30):
        assert a.add(off, b"x")
    assert not a.add(40, b"y")  # a fourth disjoint range
    assert a.held_bytes == 3
    assert a.add(11, b"xx")  # extends the first
    assert a.add(29, b"x")  # extends the third backwards
    assert a.add(0, b"in-order")  # offset 0 is always taken
    assert a.pop_contiguous() == b"in-order"
    assert a.held_bytes == 6


def test_sack_blocks_most_recent_first():
    a = Assembler(1000)
    a.add(10, b"a")
    a.add(20, b"b")
    a.add(30, b"c")
    a.add(40, b"d")
    a.add(50, b"e")
    assert a.sack_blocks() == [(50, 51), (40, 41), (30, 31), (20, 21)]
    a.add(21, b"bb")  # grows the 20 range: it moves to the front
    assert a.sack_blocks(2) == [(20, 23), (50, 51)]
    a.add(20, b"b")  # a pure duplicate does not reorder
    assert a.sack_blocks(2) == [(20, 23), (50, 51)]
    a.add(0, b"z")  # a range at offset 0 is not a SACK block
    assert (0, 1) not in a.sack_blocks()


def test_many_tiny_segments_in_reverse_are_coalesced():
    a = Assembler(100_000)
    for off in range(9999, 0, -1):
        a.add(off, bytes([off & 0xFF]))
    assert len(a._ranges) == 1 and len(a._ranges[0].chunks) < 20
    a.add(0, b"\0")
    assert a.pop_contiguous() == bytes(i & 0xFF for i in range(10000))


def _segments(stream: bytes, rng: random.Random):
    """Cut `stream` into overlapping pieces, with duplicates."""
    pieces = []
    pos = 0
    while pos < len(stream):
        n = rng.randint(1, 50)
        start = max(0, pos - rng.randint(0, 10))
        pieces.append((start, stream[start : pos + n]))
        pos += n
    pieces += rng.sample(pieces, len(pieces) // 3)
    rng.shuffle(pieces)
    return pieces


@pytest.mark.parametrize("seed", range(30))
def test_random_permutations_give_the_exact_stream(seed):
    rng = random.Random(seed)
    stream = rng.randbytes(rng.randint(1, 3000))
    a = Assembler(len(stream) + 100, max_segments=1000)
    got = bytearray()
    for start, piece in _segments(stream, rng):
        assert a.add(start - len(got), memoryview(piece))
        got += a.pop_contiguous(rng.choice([None, 7, 100]))
        assert a.held_bytes <= len(stream)
    got += a.pop_contiguous()
    assert bytes(got) == stream
    assert a.is_empty


@given(st.binary(min_size=1, max_size=400), st.randoms(use_true_random=False),
       st.integers(1, 8), st.integers(1, 200))
def test_caps_hold_under_any_order(stream, rng, max_segments, max_bytes):
    a = Assembler(max_bytes, max_segments)
    got = bytearray()
    pieces = _segments(stream, rng)
    for _ in range(3):  # retransmissions until everything got through
        for start, piece in pieces:
            accepted = a.add(start - len(got), piece)
            assert accepted or start - len(got) > 0
            assert len(a._ranges) <= max_segments + 1
            assert a.held_bytes <= max_bytes
            assert a.held_bytes == sum(r.end - r.start for r in a._ranges)
            assert all(len(b"".join(r.chunks)) == r.end - r.start for r in a._ranges)
            for s, e in a.sack_blocks():
                assert 0 < s < e <= max_bytes
            got += a.pop_contiguous()
        if len(got) == len(stream):
            break
    assert bytes(got) == stream[: len(got)]
