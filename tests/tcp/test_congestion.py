"""Congestion control: slow start, congestion avoidance, loss and timeout responses, the
shape of CUBIC's growth after a loss."""

from __future__ import annotations

import pytest

from netstack.socket.tcp.congestion import (
    CUBIC_C,
    INFINITE_SSTHRESH,
    Cubic,
    Reno,
    initial_window,
    make_controller,
)

MSS = 1000
RTT = 0.1


def one_rtt(cc, now: float, acks: int | None = None, rtt: float = RTT) -> float:
    """Acknowledge one full window in `acks` ACKs (one per segment by default)."""
    window = cc.cwnd
    acks = acks or max(1, window // cc.mss)
    step = rtt / acks
    for i in range(acks):
        cc.on_ack(now + i * step, window // acks, rtt, window)
    return now + rtt


def grow_to(cc, segments: int, now: float = 0.0) -> float:
    while cc.cwnd < segments * cc.mss:
        cc.on_ack(now, cc.mss, RTT, cc.cwnd)
        now += 0.001
    return now


def test_make_controller():
    assert isinstance(make_controller("cubic", MSS), Cubic)
    assert isinstance(make_controller("reno", MSS), Reno)
    assert isinstance(make_controller("CUBIC", MSS), Cubic)
    with pytest.raises(ValueError):
        make_controller("vegas", MSS)


@pytest.mark.parametrize("cls", [Reno, Cubic])
def test_initial_window_follows_rfc6928(cls):
    assert initial_window(1460) == 14600 and initial_window(536) == 5360
    assert initial_window(9000) == 18000
    cc = cls(536)
    assert cc.cwnd == 5360 and cc.ssthresh == INFINITE_SSTHRESH
    cc.set_mss(1460)  # negotiated before anything happened
    assert cc.cwnd == 14600 and cc.mss == 1460


@pytest.mark.parametrize("cls", [Reno, Cubic])
@pytest.mark.parametrize("per_ack", [1, 2])  # every segment ACKed, or delayed ACKs
def test_slow_start_doubles_per_rtt(cls, per_ack):
    cc = cls(MSS)
    now = 0.0
    for _ in range(4):
        before = cc.cwnd
        now = one_rtt(cc, now, acks=before // (per_ack * MSS))
        assert cc.cwnd == 2 * before


@pytest.mark.parametrize("cls", [Reno, Cubic])
def test_no_growth_when_application_limited(cls):
    cc = cls(MSS)
    for _ in range(100):
        cc.on_ack(0.0, MSS, RTT, MSS)  # one segment out of a 10-segment window
    assert cc.cwnd == initial_window(MSS)


def test_reno_loss_halves_then_grows_one_mss_per_rtt():
    cc = Reno(MSS)
    now = grow_to(cc, 40)
    cc.on_loss(now)
    assert cc.cwnd == cc.ssthresh == 20 * MSS
    for k in range(1, 6):
        now = one_rtt(cc, now)
        assert cc.cwnd == (20 + k) * MSS


def test_reno_loss_never_below_two_segments():
    cc = Reno(MSS)
    for _ in range(10):
        cc.on_loss(0.0)
    assert cc.cwnd == cc.ssthresh == 2 * MSS


@pytest.mark.parametrize("cls, beta", [(Reno, 0.5), (Cubic, 0.7)])
def test_timeout_resets_to_one_mss(cls, beta):
    cc = cls(MSS)
    now = grow_to(cc, 40)
    cc.on_timeout(now)
    assert cc.cwnd == MSS and cc.ssthresh == int(40 * MSS * beta)
    cc.on_timeout(now + 1)  # the same segment timing out again keeps ssthresh
    assert cc.cwnd == MSS and cc.ssthresh == int(40 * MSS * beta)
    now = one_rtt(cc, now + 2)  # slow start again, up to ssthresh
    assert cc.cwnd == 2 * MSS
    while cc.cwnd < cc.ssthresh:
        now = one_rtt(cc, now)
    assert cc.ssthresh <= cc.cwnd <= 2 * cc.ssthresh
    for _ in range(20):  # then congestion avoidance: growing, but not doubling
        before = cc.cwnd
        now = one_rtt(cc, now)
        assert before <= cc.cwnd < 1.5 * before


def test_cubic_loss_multiplies_by_0_7_and_fast_convergence():
    cc = Cubic(MSS)
    now = grow_to(cc, 100)
    cc.on_loss(now)
    assert cc.cwnd == cc.ssthresh == 70 * MSS
    assert cc.w_max == 100 * MSS
    cc.on_loss(now)  # another loss below W_max: W_max is lowered to cwnd (1 + β) / 2
    assert cc.cwnd == 49 * MSS
    assert cc.w_max == int(70 * 1.7 / 2 * MSS)


def test_cubic_growth_is_concave_then_convex_around_w_max():
    cc = Cubic(MSS)
    now = grow_to(cc, 1000)
    cc.on_loss(now)
    w_max, start = 1000, 700
    k = ((w_max - start) / CUBIC_C) ** (1 / 3)  # ~9.1 s
    samples = []  # (t, cwnd in segments) once per RTT
    t0 = now
    while now - t0 < 2 * k:
        now = one_rtt(cc, now, acks=10)
        samples.append((now - t0, cc.cwnd / MSS))
    # it follows W_cubic: at K it is back at W_max
    at_k = min(samples, key=lambda s: abs(s[0] - k))[1]
    assert at_k == pytest.approx(w_max, rel=0.02)
    for t, w in samples:
        assert w == pytest.approx(CUBIC_C * (t - k) ** 3 + w_max, abs=0.03 * w_max)

    def growth(a, b):
        ws = [w for t, w in samples if a <= t <= b]
        return ws[-1] - ws[0]

    # concave below W_max: growth slows as it nears; convex above: it speeds up
    assert growth(0.5, 2.5) > growth(3.5, 5.5) > growth(6.5, 8.5)
    assert growth(9.5, 11.5) < growth(12.5, 14.5) < growth(15.5, 17.5)
    # the plateau: slow growth around K
    assert growth(k - 1, k + 1) < 0.1 * growth(0.5, 2.5)
    assert all(w2 >= w1 for (_, w1), (_, w2) in zip(samples, samples[1:], strict=False))


def test_cubic_reno_friendly_region_on_short_rtts():
    cc = Cubic(MSS)
    now = grow_to(cc, 20)
    cc.on_loss(now)
    assert cc.cwnd == 14 * MSS
    rtt = 0.001  # W_cubic barely moves in 0.1 s; Reno would add a segment per RTT
    for _ in range(100):
        now = one_rtt(cc, now, rtt=rtt)
    assert cc.cwnd > 40 * MSS
    assert cc.w_cubic(0.1) < 21


def test_cubic_after_timeout_starts_an_epoch_at_its_own_window():
    cc = Cubic(MSS)
    now = grow_to(cc, 100)
    cc.on_timeout(now)
    while cc.cwnd < cc.ssthresh:
        now = one_rtt(cc, now)
    start = cc.cwnd
    now = one_rtt(cc, now)
    assert cc.w_max == pytest.approx(start, rel=0.05)  # W_max = cwnd at the epoch start, K = 0
    assert cc.cwnd >= start
