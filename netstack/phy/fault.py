"""A device that wraps a device and damages traffic on purpose: loss, corruption, duplication,
reordering, size and rate limits, delay. For tests of the stack above it (smoltcp's
`phy::FaultInjector`, with duplicate/reorder/delay added).

Every fault applies to both directions; each direction keeps its own counters (`stats.rx`,
`stats.tx`) and its own rate-limit bucket. Randomness comes from one `random.Random(seed)`,
so the same seed and the same sequence of calls give the same damage. Knobs:

- `match`: a predicate over a frame (None: every frame). A frame it rejects passes
  untouched, at once, counted only as `unmatched`: no other knob sees it (it takes no
  rate token and draws no random number). `vhostnet faults --match EXPR` makes it a
  pcap-filter expression (apps/capture/bpf.py; netstack knows only the callable).

- `drop`, `corrupt`, `duplicate`, `reorder`: probabilities in [0, 1], per frame.
- `corrupt` flips one random byte (XOR with 1..255, so it always changes), never in the first
  `corrupt_skip` bytes (e.g. 14 to keep the Ethernet header intact); a frame no longer than
  `corrupt_skip` is left alone.
- `reorder`: the frame is held back and released right after the next frame that gets
  through in the same direction (or, if none comes, `interval` seconds later).
- `duplicate`: the frame is delivered twice.
- `max_size`: frames longer than this are dropped (`oversize`).
- `rate_limit`: at most this many frames per `interval` seconds per direction; the rest
  are dropped (`rate_limited`). None = unlimited.
- `delay`: frames are held until `now >= t + delay`.

Order of checks per frame: match, size, rate, drop, corrupt, duplicate, reorder, delay.
Knobs can be changed at any time with `configure(**kw)`.

Held frames (delayed, reordered, waiting for room on the inner device) are released by the
next `receive`/`transmit` call at or after their time; `poll_at()` says when that is, so the
runtime can wake up for them. At most `queue_limit` frames are held per direction; more are
dropped (`overflow`). When the inner device refuses to transmit, transmitted frames stay
queued (`poll_at()` is then in the past): the runtime should wait for the inner device's
readiness rather than spin.

>>> from netstack.phy.loopback import Loopback
>>> dev = FaultInjector(Loopback(), seed=1, drop=1.0)
>>> dev.transmit(0.0).consume(1, lambda buf: None)
>>> dev.receive(0.0) is None, dev.stats.tx.dropped
(True, 1)
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TypeVar

from . import Device, DeviceCapabilities

R = TypeVar("R")

# At most this many frames are pulled from the inner device in one `receive` call when all of
# them are dropped or held (a flood must not keep one call busy forever).
MAX_PULL = 256


@dataclass(slots=True)
class FaultConfig:
    """The knobs (see the module docstring)."""

    drop: float = 0.0
    corrupt: float = 0.0
    corrupt_skip: int = 0
    duplicate: float = 0.0
    reorder: float = 0.0
    max_size: int | None = None
    rate_limit: int | None = None
    interval: float = 0.1
    delay: float = 0.0
    match: Callable[[bytearray], bool] | None = None

    def validate(self) -> None:
        if self.match is not None and not callable(self.match):
            raise ValueError(f"match must be a predicate over frames or None, got "
                             f"{self.match!r}")
        for name in ("drop", "corrupt", "duplicate", "reorder"):
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        if self.corrupt_skip < 0:
            raise ValueError(f"corrupt_skip must be >= 0, got {self.corrupt_skip}")
        if self.max_size is not None and self.max_size < 0:
            raise ValueError(f"max_size must be >= 0 or None, got {self.max_size}")
        if self.rate_limit is not None and self.rate_limit < 0:
            raise ValueError(f"rate_limit must be >= 0 or None, got {self.rate_limit}")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"interval must be > 0 seconds, got {self.interval}")
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"delay must be >= 0 seconds, got {self.delay}")


@dataclass(slots=True)
class FaultCounters:
    """What happened to the frames of one direction."""

    passed: int = 0  # frames handed on (each duplicate copy counts)
    dropped: int = 0  # random loss
    oversize: int = 0  # longer than max_size
    rate_limited: int = 0
    corrupted: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    overflow: int = 0  # dropped because queue_limit frames were already held
    unmatched: int = 0  # passed untouched: `match` rejected them


@dataclass(slots=True)
class FaultStats:
    rx: FaultCounters = field(default_factory=FaultCounters)
    tx: FaultCounters = field(default_factory=FaultCounters)


class _Lane:
    """One direction: its counters, rate bucket, held frames and the reorder slot."""

    __slots__ = ("counters", "queue", "held", "bucket")

    def __init__(self, counters: FaultCounters, bucket: int | None) -> None:
        self.counters = counters
        # (release time, sequence number, frame): a heap, FIFO among equal release times.
        self.queue: list[tuple[float, int, bytearray]] = []
        # Reorder slot: (frame, copies, release time, deadline) or None.
        self.held: tuple[bytearray, int, float, float] | None = None
        self.bucket = bucket


class _RxToken:
    __slots__ = ("_frame",)

    def __init__(self, frame: bytearray) -> None:
        self._frame = frame

    def consume(self, fn: Callable[[memoryview], R]) -> R:
        return fn(memoryview(self._frame))


class _TxToken:
    __slots__ = ("_dev", "_now")

    def __init__(self, dev: FaultInjector, now: float) -> None:
        self._dev, self._now = dev, now

    def consume(self, length: int, fn: Callable[[memoryview], R]) -> R:
        if length < 0:
            raise ValueError(f"negative frame length {length}")
        buf = bytearray(length)
        result = fn(memoryview(buf))
        dev = self._dev
        dev._process(dev._tx, buf, self._now)
        dev._pump_tx(self._now)
        return result


class FaultInjector:
    """Wraps `inner` and applies the configured faults to frames in both directions."""

    def __init__(
        self,
        inner: Device,
        *,
        seed: int = 0,
        drop: float = 0.0,
        corrupt: float = 0.0,
        corrupt_skip: int = 0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        max_size: int | None = None,
        rate_limit: int | None = None,
        interval: float = 0.1,
        delay: float = 0.0,
        match: Callable[[bytearray], bool] | None = None,
        queue_limit: int = 1024,
    ) -> None:
        if queue_limit <= 0:
            raise ValueError(f"queue_limit must be positive, got {queue_limit}")
        self.inner = inner
        self.config = FaultConfig(
            drop=drop,
            corrupt=corrupt,
            corrupt_skip=corrupt_skip,
            duplicate=duplicate,
            reorder=reorder,
            max_size=max_size,
            rate_limit=rate_limit,
            interval=interval,
            delay=delay,
            match=match,
        )
        self.config.validate()
        self.queue_limit = queue_limit
        self.rng = random.Random(seed)
        self.stats = FaultStats()
        self._rx = _Lane(self.stats.rx, rate_limit)
        self._tx = _Lane(self.stats.tx, rate_limit)
        self._refilled_at: float | None = None
        self._seq = 0

    # -- knobs -------------------------------------------------------------------------
    def configure(self, **kw: object) -> None:
        """Change knobs (same names as the constructor's); unknown names raise TypeError.

        Invalid values raise ValueError and leave the configuration unchanged. Changing
        `rate_limit` refills both buckets.
        """
        names = {f.name for f in fields(FaultConfig)}
        unknown = set(kw) - names
        if unknown:
            raise TypeError(f"unknown fault knob(s): {', '.join(sorted(unknown))}")
        new = FaultConfig(**{n: kw.get(n, getattr(self.config, n)) for n in names})
        new.validate()
        self.config = new
        if "rate_limit" in kw:
            self._rx.bucket = self._tx.bucket = new.rate_limit
            self._refilled_at = None

    # -- Device ------------------------------------------------------------------------
    def capabilities(self) -> DeviceCapabilities:
        return self.inner.capabilities()

    def receive(self, now: float) -> tuple[_RxToken, _TxToken] | None:
        self._pump_tx(now)
        lane = self._rx
        self._expire(lane, now)
        for _ in range(MAX_PULL):
            if lane.queue and lane.queue[0][0] <= now:
                break
            tokens = self.inner.receive(now)
            if tokens is None:
                break
            frame = tokens[0].consume(bytearray)
            self._process(lane, frame, now)
        if lane.queue and lane.queue[0][0] <= now:
            frame = heapq.heappop(lane.queue)[2]
            lane.counters.passed += 1
            return _RxToken(frame), _TxToken(self, now)
        return None

    def transmit(self, now: float) -> _TxToken | None:
        self._pump_tx(now)
        if len(self._tx.queue) >= self.queue_limit:
            return None
        if self.inner.transmit(now) is None:
            return None
        return _TxToken(self, now)

    def poll_at(self) -> float | None:
        """Earliest time a held frame is due (a past time means now), or None.

        Includes the inner device's own `poll_at()` if it has one.
        """
        times = []
        for lane in (self._rx, self._tx):
            if lane.queue:
                times.append(lane.queue[0][0])
            if lane.held is not None:
                times.append(lane.held[3])
        inner_poll_at = getattr(self.inner, "poll_at", None)
        if inner_poll_at is not None:
            t = inner_poll_at()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def fileno(self) -> int:
        """The inner device's readiness fd (AttributeError if it has none)."""
        return self.inner.fileno()  # type: ignore[attr-defined]

    def flush(self, now: float) -> None:
        """Send transmitted frames that are due (also done by every receive/transmit)."""
        self._pump_tx(now)

    # -- the faults --------------------------------------------------------------------
    def _take_token(self, lane: _Lane, now: float) -> bool:
        limit = self.config.rate_limit
        if limit is None:
            return True
        if self._refilled_at is None or now >= self._refilled_at + self.config.interval:
            self._refilled_at = now
            self._rx.bucket = self._tx.bucket = limit
        if not lane.bucket:
            return False
        lane.bucket -= 1
        return True

    def _corrupt(self, frame: bytearray) -> bool:
        skip = self.config.corrupt_skip
        if len(frame) <= skip:
            return False
        i = self.rng.randrange(skip, len(frame))
        frame[i] ^= self.rng.randrange(1, 256)
        return True

    def _push(self, lane: _Lane, frame: bytearray, release: float) -> None:
        if len(lane.queue) >= self.queue_limit:
            lane.counters.overflow += 1
            return
        self._seq += 1
        heapq.heappush(lane.queue, (release, self._seq, frame))

    def _push_copies(self, lane: _Lane, frame: bytearray, copies: int, release: float) -> None:
        self._push(lane, frame, release)
        for _ in range(copies - 1):
            self._push(lane, bytearray(frame), release)

    def _expire(self, lane: _Lane, now: float) -> None:
        """A reordered frame whose successor never came goes out after `interval`."""
        if lane.held is not None and now >= lane.held[3]:
            frame, copies, release, _deadline = lane.held
            lane.held = None
            self._push_copies(lane, frame, copies, release)

    def _process(self, lane: _Lane, frame: bytearray, now: float) -> None:
        cfg, c, rng = self.config, lane.counters, self.rng
        if cfg.match is not None and not cfg.match(frame):
            c.unmatched += 1
            self._push(lane, frame, now)
            return
        if cfg.max_size is not None and len(frame) > cfg.max_size:
            c.oversize += 1
            return
        if not self._take_token(lane, now):
            c.rate_limited += 1
            return
        if cfg.drop and rng.random() < cfg.drop:
            c.dropped += 1
            return
        if cfg.corrupt and rng.random() < cfg.corrupt and self._corrupt(frame):
            c.corrupted += 1
        copies = 1
        if cfg.duplicate and rng.random() < cfg.duplicate:
            c.duplicated += 1
            copies = 2
        release = now + cfg.delay
        if cfg.delay > 0:
            c.delayed += 1
        if lane.held is None and cfg.reorder and rng.random() < cfg.reorder:
            c.reordered += 1
            lane.held = (frame, copies, release, now + cfg.interval)
            return
        self._push_copies(lane, frame, copies, release)
        if lane.held is not None:
            held, held_copies, held_release, _deadline = lane.held
            lane.held = None
            self._push_copies(lane, held, held_copies, max(release, held_release))

    def _pump_tx(self, now: float) -> None:
        lane = self._tx
        self._expire(lane, now)
        while lane.queue and lane.queue[0][0] <= now:
            token = self.inner.transmit(now)
            if token is None:
                return
            frame = heapq.heappop(lane.queue)[2]
            token.consume(len(frame), lambda buf, f=frame: buf.__setitem__(slice(None), f))
            lane.counters.passed += 1
