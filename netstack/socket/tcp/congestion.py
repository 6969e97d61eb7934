"""Congestion control: Reno (RFC 5681, with RFC 3465 byte counting) and CUBIC (RFC 9438).

Every controller has the same shape (`Controller`), takes time as an argument and never
reads a clock; `now` and `rtt` are seconds (floats), windows are bytes:

- `on_ack(now, acked_bytes, rtt, bytes_in_flight)` for each ACK that advances SND.UNA
  outside loss recovery. `acked_bytes` is how far SND.UNA moved; `rtt` the latest sample
  or the smoothed RTT (None when unknown); `bytes_in_flight` the bytes outstanding when the
  ACK arrived (before removing the acknowledged ones). The window does not grow while
  `2 * bytes_in_flight < cwnd`: the application, not the network, limited the sender, so
  an unused window proves nothing (RFC 7661's idea, simplified).
- `on_loss(now)` once per loss event, when fast retransmit starts recovery:
  ssthresh = cwnd × β (Reno ½, CUBIC 0.7), at least 2 MSS, and cwnd = ssthresh.
- `on_timeout(now)` when the retransmission timer fires: ssthresh as above (kept on a
  repeated timeout with no ACK in between, RFC 5681 §3.1), cwnd = 1 MSS (the loss window).
- `cwnd`, `ssthresh` (bytes, ints), `mss`, `set_mss(mss)`: before the first event the
  initial window is recomputed from the new MSS (RFC 6928: min(10 MSS, max(2 MSS, 14600))).

Loss recovery itself is the socket's: it tracks the recovery point (RFC 6582), does not call
`on_ack` for partial ACKs during recovery, and calls `on_loss` once per window of data.
The sender may have min(cwnd, peer window) − flight bytes outstanding.

Slow start (cwnd < ssthresh) adds min(acked, 2 MSS) per ACK (RFC 3465, L = 2), so the window
doubles every round trip even against delayed ACKs. Reno's congestion avoidance adds one
MSS per window of bytes acknowledged. CUBIC's is below, at `Cubic`.
"""

from __future__ import annotations

import sys
from typing import Protocol

INFINITE_SSTHRESH = sys.maxsize
ABC_LIMIT = 2  # RFC 3465 L: slow start grows at most 2 MSS per ACK

CUBIC_C = 0.4
CUBIC_BETA = 0.7
CUBIC_ALPHA = 3 * (1 - CUBIC_BETA) / (1 + CUBIC_BETA)  # Reno-friendly slope, RFC 9438 §4.3


def initial_window(mss: int) -> int:
    """RFC 6928: min(10 × MSS, max(2 × MSS, 14600)) bytes."""
    return min(10 * mss, max(2 * mss, 14600))


class Controller(Protocol):
    mss: int

    @property
    def cwnd(self) -> int: ...

    @property
    def ssthresh(self) -> int: ...

    def set_mss(self, mss: int) -> None: ...

    def on_ack(self, now: float, acked_bytes: int, rtt: float | None,
               bytes_in_flight: int) -> None: ...

    def on_loss(self, now: float) -> None: ...

    def on_timeout(self, now: float) -> None: ...


class Reno:
    """RFC 5681 slow start and congestion avoidance, appropriate byte counting (RFC 3465)."""

    __slots__ = ("mss", "_cwnd", "_ssthresh", "_bytes_acked", "_started", "_timed_out")

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self._cwnd = initial_window(mss)
        self._ssthresh = INFINITE_SSTHRESH
        self._bytes_acked = 0  # congestion-avoidance byte counter
        self._started = False
        self._timed_out = False

    @property
    def cwnd(self) -> int:
        return self._cwnd

    @property
    def ssthresh(self) -> int:
        return self._ssthresh

    def set_mss(self, mss: int) -> None:
        self.mss = mss
        if not self._started:
            self._cwnd = initial_window(mss)
        elif self._cwnd < mss:
            self._cwnd = mss

    def on_ack(self, now: float, acked_bytes: int, rtt: float | None,
               bytes_in_flight: int) -> None:
        self._started = True
        self._timed_out = False
        if acked_bytes <= 0 or 2 * bytes_in_flight < self._cwnd:
            return
        mss = self.mss
        if self._cwnd < self._ssthresh:
            self._cwnd += min(acked_bytes, ABC_LIMIT * mss)
            return
        self._bytes_acked += acked_bytes
        if self._bytes_acked >= self._cwnd:
            self._bytes_acked -= self._cwnd
            self._cwnd += mss

    def on_loss(self, now: float) -> None:
        self._started = True
        self._ssthresh = max(self._cwnd // 2, 2 * self.mss)
        self._cwnd = self._ssthresh
        self._bytes_acked = 0

    def on_timeout(self, now: float) -> None:
        self._started = True
        if not self._timed_out:
            self._ssthresh = max(self._cwnd // 2, 2 * self.mss)
            self._timed_out = True
        self._cwnd = self.mss
        self._bytes_acked = 0

    def __repr__(self) -> str:
        return f"Reno(cwnd={self._cwnd}, ssthresh={self._ssthresh}, mss={self.mss})"


class Cubic:
    """CUBIC (RFC 9438). After a congestion event the window follows

        W_cubic(t) = C × (t − K)³ + W_max,   K = ∛((W_max − cwnd_epoch) / C)

    in segments, t in seconds since congestion avoidance began (the first ACK after the
    event): concave up to the old maximum W_max, flat around it, then convex probing beyond.
    Each ACK moves cwnd a fraction acked/cwnd of the way to the target W_cubic(t + RTT),
    clamped to [cwnd, 1.5 cwnd] (§4.2). Where Reno would be faster (short RTTs, small
    windows) the Reno-friendly estimate W_est, growing α = 3(1−β)/(1+β) segments per RTT
    (1 once it passes the pre-loss window), takes over (§4.3). Fast convergence (§4.7): a
    loss below the previous W_max lowers W_max to cwnd × (1+β)/2 to yield to newer flows.
    After a timeout, the next epoch starts with K = 0 and W_max = its starting cwnd (§4.8).
    """

    __slots__ = ("mss", "_cwnd", "_ssthresh", "_started", "_timed_out", "_w_max",
                 "_cwnd_prior", "_k", "_epoch_start", "_w_est", "_rtt", "_after_timeout")

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self._cwnd = float(initial_window(mss))  # bytes, fractional between ACKs
        self._ssthresh = INFINITE_SSTHRESH
        self._started = False
        self._timed_out = False
        self._w_max: float | None = None  # segments
        self._cwnd_prior = 0.0  # segments, cwnd at the last loss
        self._k = 0.0
        self._epoch_start: float | None = None
        self._w_est = 0.0  # segments
        self._rtt = 0.0
        self._after_timeout = False

    @property
    def cwnd(self) -> int:
        return max(int(self._cwnd), self.mss)

    @property
    def ssthresh(self) -> int:
        return self._ssthresh

    @property
    def w_max(self) -> int | None:
        """The window (bytes) at the last congestion event, after fast convergence."""
        return None if self._w_max is None else int(self._w_max * self.mss)

    def set_mss(self, mss: int) -> None:
        self.mss = mss
        if not self._started:
            self._cwnd = float(initial_window(mss))
        elif self._cwnd < mss:
            self._cwnd = float(mss)

    def w_cubic(self, t: float) -> float:
        """W_cubic(t) in segments, t seconds into the current epoch."""
        return CUBIC_C * (t - self._k) ** 3 + (self._w_max or 0.0)

    def on_ack(self, now: float, acked_bytes: int, rtt: float | None,
               bytes_in_flight: int) -> None:
        self._started = True
        self._timed_out = False
        if rtt is not None:
            self._rtt = rtt
        if acked_bytes <= 0 or 2 * bytes_in_flight < self._cwnd:
            return
        mss = self.mss
        if self._cwnd < self._ssthresh:
            self._cwnd += min(acked_bytes, ABC_LIMIT * mss)
            return
        cwnd = self._cwnd / mss  # segments from here on
        if self._epoch_start is None:
            self._epoch_start = now
            self._w_est = cwnd
            if self._w_max is None or self._after_timeout or self._w_max <= cwnd:
                self._w_max = cwnd
                self._k = 0.0
                if self._cwnd_prior < cwnd:
                    self._cwnd_prior = cwnd
            else:
                self._k = ((self._w_max - cwnd) / CUBIC_C) ** (1 / 3)
            self._after_timeout = False
        acked = acked_bytes / mss
        alpha = 1.0 if self._w_est >= self._cwnd_prior else CUBIC_ALPHA
        self._w_est += alpha * acked / cwnd
        t = now - self._epoch_start
        if self.w_cubic(t) < self._w_est:  # Reno-friendly region
            cwnd = max(cwnd, self._w_est)
        else:
            target = self.w_cubic(t + self._rtt)
            if target < cwnd:
                target = cwnd
            elif target > 1.5 * cwnd:
                target = 1.5 * cwnd
            cwnd += (target - cwnd) / cwnd * acked
        self._cwnd = cwnd * mss

    def _reduce(self) -> None:
        cwnd = self._cwnd / self.mss
        if self._w_max is not None and cwnd < self._w_max:  # fast convergence
            self._w_max = cwnd * (1 + CUBIC_BETA) / 2
        else:
            self._w_max = cwnd
        self._cwnd_prior = cwnd
        self._ssthresh = max(int(self._cwnd * CUBIC_BETA), 2 * self.mss)
        self._epoch_start = None

    def on_loss(self, now: float) -> None:
        self._started = True
        self._reduce()
        self._cwnd = float(self._ssthresh)
        self._after_timeout = False

    def on_timeout(self, now: float) -> None:
        self._started = True
        if not self._timed_out:
            self._reduce()
            self._timed_out = True
        self._cwnd = float(self.mss)
        self._epoch_start = None
        self._after_timeout = True

    def __repr__(self) -> str:
        return (f"Cubic(cwnd={self.cwnd}, ssthresh={self._ssthresh}, w_max={self.w_max}, "
                f"mss={self.mss})")


_CONTROLLERS = {"cubic": Cubic, "reno": Reno}


def check_controller(name: str) -> None:
    """ValueError for a name `make_controller` does not know."""
    if not isinstance(name, str) or name.lower() not in _CONTROLLERS:
        make_controller(name)  # (raises, with the names it has)


def make_controller(name: str = "cubic", mss: int = 536) -> Reno | Cubic:
    """A controller by name: "cubic" (the default, as on Linux) or "reno"."""
    try:
        cls = _CONTROLLERS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown congestion control {name!r} (have {', '.join(_CONTROLLERS)})"
        ) from None
    return cls(mss)
