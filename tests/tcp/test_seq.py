"""Sequence arithmetic mod 2^32, above all across the wrap."""

from __future__ import annotations

import doctest

from hypothesis import given
from hypothesis import strategies as st

from netstack.socket.tcp import seq
from netstack.socket.tcp.seq import (
    seq_add,
    seq_ge,
    seq_gt,
    seq_in_window,
    seq_le,
    seq_lt,
    seq_max,
    seq_min,
    seq_sub,
)

TOP = 0xFFFFFFFF
u32 = st.integers(0, TOP)


def test_doctests():
    assert doctest.testmod(seq).failed == 0


def test_add_wraps():
    assert seq_add(TOP, 1) == 0
    assert seq_add(TOP - 5, 10) == 4
    assert seq_add(3, -5) == TOP - 1
    assert seq_add(0, 1 << 32) == 0


def test_sub_is_signed_across_the_wrap():
    assert seq_sub(2, TOP - 1) == 4
    assert seq_sub(TOP - 1, 2) == -4
    assert seq_sub(5, 5) == 0
    assert seq_sub(1 << 31, 0) == 1 << 31  # the one ambiguous distance counts as positive
    assert seq_sub(0, 1 << 31) == 1 << 31
    assert seq_sub((1 << 31) + 1, 0) == -((1 << 31) - 1)


def test_comparisons_across_the_wrap():
    a, b = TOP - 10, 10
    assert seq_lt(a, b) and seq_le(a, b) and not seq_gt(a, b) and not seq_ge(a, b)
    assert seq_gt(b, a) and seq_ge(b, a) and not seq_lt(b, a) and not seq_le(b, a)
    assert seq_le(a, a) and seq_ge(a, a) and not seq_lt(a, a) and not seq_gt(a, a)
    assert seq_max(a, b) == b and seq_min(a, b) == a
    assert seq_max(b, a) == b and seq_min(b, a) == a
    assert seq_lt(TOP, 0) and seq_gt(0, TOP)


def test_window_across_the_wrap():
    start = TOP - 2
    assert [seq_in_window(x, start, 5) for x in (TOP - 3, TOP - 2, TOP, 0, 1, 2)] == [
        False, True, True, True, True, False]
    assert not seq_in_window(start, start, 0)
    assert seq_in_window(start, start, 1)


@given(u32, st.integers(-(1 << 31) + 1, 1 << 31))
def test_sub_inverts_add(a, n):
    b = seq_add(a, n)
    assert seq_sub(b, a) == n
    assert seq_gt(b, a) == (n > 0)
    assert seq_lt(b, a) == (n < 0)
    assert seq_ge(b, a) == (n >= 0)
    assert seq_le(b, a) == (n <= 0)


@given(u32, u32, st.integers(0, 1 << 31))
def test_in_window_matches_distance(x, start, length):
    d = (x - start) % (1 << 32)
    assert seq_in_window(x, start, length) == (d < length)
