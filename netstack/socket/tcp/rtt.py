"""Round-trip time estimation and the retransmission timeout (RFC 6298).

    >>> est = RttEstimator()
    >>> est.rto
    1.0
    >>> est.sample(0.1)
    >>> round(est.srtt, 3), round(est.rttvar, 3), round(est.rto, 3)
    (0.1, 0.05, 0.3)

Times are seconds (floats), as everywhere in the stack. Karn's rule (RFC 6298 §3) is the
socket's job: it samples only segments that were not retransmitted, or uses timestamps
(RFC 7323 §4).

`min_rto` defaults to 0.2 s, not the 1 s of RFC 6298 §2.4 (a SHOULD): Linux uses 200 ms
(TCP_RTO_MIN). On a virtio link RTTs are microseconds, so a 1 s floor would stall every loss
that fast retransmit cannot repair for a second; 200 ms still sits above the peer's delayed
ACK (at most 200 ms, RFC 9293 §3.8.6.3), so a spurious timeout needs a delay beyond that.
"""

from __future__ import annotations

ALPHA = 1 / 8
BETA = 1 / 4
K = 4
CLOCK_GRANULARITY = 0.001  # G in RFC 6298: our clock is a float, say 1 ms


class RttEstimator:
    """SRTT, RTTVAR and RTO per RFC 6298 §2, with exponential backoff (§5.5)."""

    __slots__ = ("min_rto", "max_rto", "initial_rto", "_srtt", "_rttvar", "_base_rto",
                 "_backoff")

    def __init__(self, min_rto: float = 0.2, max_rto: float = 60.0,
                 initial_rto: float = 1.0) -> None:
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.initial_rto = initial_rto
        self._srtt: float | None = None
        self._rttvar: float | None = None
        self._base_rto = min(max(initial_rto, min_rto), max_rto)
        self._backoff = 1

    @property
    def srtt(self) -> float | None:
        """Smoothed RTT; None before the first sample."""
        return self._srtt

    @property
    def rttvar(self) -> float | None:
        """RTT variation; None before the first sample."""
        return self._rttvar

    @property
    def rto(self) -> float:
        """The retransmission timeout to arm now, backoff included, within [min, max]."""
        return min(self._base_rto * self._backoff, self.max_rto)

    def sample(self, rtt: float) -> None:
        """Take an RTT measurement R. Recomputing the RTO also ends any backoff (§5.7)."""
        if rtt < 0:
            rtt = 0.0
        if self._srtt is None:  # (2.2)
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:  # (2.3): RTTVAR first, with the old SRTT
            self._rttvar = (1 - BETA) * self._rttvar + BETA * abs(self._srtt - rtt)
            self._srtt = (1 - ALPHA) * self._srtt + ALPHA * rtt
        rto = self._srtt + max(CLOCK_GRANULARITY, K * self._rttvar)
        self._base_rto = min(max(rto, self.min_rto), self.max_rto)  # (2.4), (2.5)
        self._backoff = 1

    def backoff(self) -> None:
        """The retransmission timer expired: double the RTO (§5.5), up to `max_rto`."""
        if self._base_rto * self._backoff < self.max_rto:
            self._backoff *= 2

    def reset_backoff(self) -> None:
        """Back to the computed RTO (new data acknowledged)."""
        self._backoff = 1

    def __repr__(self) -> str:
        return f"RttEstimator(srtt={self._srtt}, rttvar={self._rttvar}, rto={self.rto})"
