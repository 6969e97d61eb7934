"""RTT estimator: RFC 6298's formulas, clamping and backoff."""

from __future__ import annotations

import doctest

import pytest

from netstack.socket.tcp import rtt
from netstack.socket.tcp.rtt import CLOCK_GRANULARITY, RttEstimator


def test_doctests():
    assert doctest.testmod(rtt).failed == 0


def test_initial_rto_before_any_sample():
    est = RttEstimator()
    assert est.rto == 1.0 and est.srtt is None and est.rttvar is None


def test_first_and_later_samples_follow_rfc6298():
    est = RttEstimator(min_rto=0.0)
    est.sample(0.5)
    assert est.srtt == 0.5 and est.rttvar == 0.25
    assert est.rto == pytest.approx(0.5 + 4 * 0.25)
    srtt, rttvar = 0.5, 0.25
    for r in (0.3, 0.9, 0.4, 0.4, 2.0):
        est.sample(r)
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)
        srtt = 0.875 * srtt + 0.125 * r
        assert est.srtt == pytest.approx(srtt) and est.rttvar == pytest.approx(rttvar)
        assert est.rto == pytest.approx(srtt + max(CLOCK_GRANULARITY, 4 * rttvar))


def test_rto_is_clamped():
    est = RttEstimator(min_rto=0.2, max_rto=60.0)
    for _ in range(50):
        est.sample(0.0001)
    assert est.rto == 0.2
    est = RttEstimator(max_rto=60.0)
    est.sample(100.0)
    assert est.rto == 60.0


def test_backoff_doubles_caps_and_resets():
    est = RttEstimator(max_rto=10.0)
    est.sample(0.5)  # RTO 1.5
    est.backoff()
    assert est.rto == pytest.approx(3.0)
    est.backoff()
    est.backoff()
    assert est.rto == pytest.approx(10.0)  # 12 capped
    for _ in range(100):
        est.backoff()
    assert est.rto == 10.0
    est.reset_backoff()
    assert est.rto == pytest.approx(1.5)
    est.backoff()
    est.sample(0.5)  # a new sample recomputes the RTO and ends the backoff (5.7)
    assert est.rto < 3.0


def test_backoff_before_any_sample():
    est = RttEstimator()
    est.backoff()
    assert est.rto == 2.0
