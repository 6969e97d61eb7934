"""Fixtures shared across test modules."""

from __future__ import annotations

import time

import pytest


@pytest.fixture
def pair():
    """Two of our stacks (10.9.0.1, 10.9.0.2) over a loopback link, each run by its own
    Runtime thread; both must stop within a second. Yields (runtime A, runtime B)."""
    from tests.test_net_udp import A_IP, B_IP, link, stack

    da, db = link()
    ra, rb = stack(1, A_IP, da), stack(2, B_IP, db)
    ra.start()
    rb.start()
    yield ra, rb
    for rt in (ra, rb):
        t0 = time.monotonic()
        rt.stop()
        assert time.monotonic() - t0 < 1.0 and not rt.running
    da.close()
    db.close()
