"""In-memory devices: a loopback (frames sent come back) and a pair of joined endpoints.

`Loopback()` queues every transmitted frame and hands it back on `receive`, like smoltcp's
`phy::Loopback`. `loopback_pair()` returns two endpoints `a, b` joined by an in-memory wire:
what `a` transmits, `b` receives and vice versa, so two stacks can talk without a kernel.

Queues are bounded (`max_queue` frames): `transmit()` returns None while the peer's queue is
full (back-pressure), and a frame sent through a token taken earlier is dropped and counted.

>>> a, b = loopback_pair()
>>> a.transmit(0.0).consume(2, lambda buf: buf.__setitem__(slice(None), b"hi"))
>>> rx, _tx = b.receive(0.0)
>>> rx.consume(bytes)
b'hi'
>>> a.receive(0.0) is None
True
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import DeviceCapabilities

R = TypeVar("R")

ETHERNET_HEADER_LEN = 14


@dataclass(slots=True)
class LoopbackStats:
    """Frames this endpoint sent, received, and dropped because the peer's queue was full."""

    tx_frames: int = 0
    rx_frames: int = 0
    dropped: int = 0


class _RxToken:
    __slots__ = ("_frame",)

    def __init__(self, frame: bytearray) -> None:
        self._frame = frame

    def consume(self, fn: Callable[[memoryview], R]) -> R:
        return fn(memoryview(self._frame))


class _TxToken:
    __slots__ = ("_dev",)

    def __init__(self, dev: Loopback) -> None:
        self._dev = dev

    def consume(self, length: int, fn: Callable[[memoryview], R]) -> R:
        dev = self._dev
        if not 0 <= length <= dev.max_frame_len:
            raise ValueError(f"frame length {length} outside 0..{dev.max_frame_len}")
        buf = bytearray(length)
        result = fn(memoryview(buf))
        dev._send(buf)
        return result


class Loopback:
    """One endpoint: `transmit` puts frames on the peer's queue (itself, unless paired)."""

    def __init__(self, mtu: int = 1500, max_queue: int = 1024) -> None:
        if mtu <= 0:
            raise ValueError(f"mtu must be positive, got {mtu}")
        if max_queue <= 0:
            raise ValueError(f"max_queue must be positive, got {max_queue}")
        self.mtu = mtu
        self.max_queue = max_queue
        self.queue: deque[bytearray] = deque()
        self.peer: Loopback = self
        self.stats = LoopbackStats()
        self._caps = DeviceCapabilities(mtu=mtu)

    @property
    def max_frame_len(self) -> int:
        return self.mtu + ETHERNET_HEADER_LEN

    def capabilities(self) -> DeviceCapabilities:
        return self._caps

    def receive(self, now: float) -> tuple[_RxToken, _TxToken] | None:
        if not self.queue:
            return None
        self.stats.rx_frames += 1
        return _RxToken(self.queue.popleft()), _TxToken(self)

    def transmit(self, now: float) -> _TxToken | None:
        if len(self.peer.queue) >= self.peer.max_queue:
            return None
        return _TxToken(self)

    def poll_at(self) -> float | None:
        """Frames waiting mean "poll now" (-inf); None when the queue is empty."""
        return float("-inf") if self.queue else None

    def _send(self, frame: bytearray) -> None:
        if len(self.peer.queue) >= self.peer.max_queue:
            self.stats.dropped += 1
            return
        self.stats.tx_frames += 1
        self.peer.queue.append(frame)

    def __repr__(self) -> str:
        kind = "loopback" if self.peer is self else "pair endpoint"
        return f"<Loopback {kind} mtu={self.mtu} queued={len(self.queue)}>"


def loopback_pair(mtu: int = 1500, max_queue: int = 1024) -> tuple[Loopback, Loopback]:
    """Two endpoints joined by an in-memory wire: `a` transmits to `b`, `b` to `a`."""
    a = Loopback(mtu=mtu, max_queue=max_queue)
    b = Loopback(mtu=mtu, max_queue=max_queue)
    a.peer, b.peer = b, a
    return a, b


class _WakingTx:
    __slots__ = ("inner", "fd")

    def __init__(self, inner, fd: int) -> None:
        self.inner, self.fd = inner, fd

    def consume(self, length, fn):
        result = self.inner.consume(length, fn)
        os.eventfd_write(self.fd, 1)
        return result


class WakingEnd:
    """A `loopback_pair` end with a readiness fd (readable once the peer has sent), so a
    `Runtime` thread on each end sleeps on its selector instead of polling."""

    def __init__(self, inner: Loopback) -> None:
        self.inner = inner
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.peer: WakingEnd | None = None

    def fileno(self) -> int:
        return self.fd

    def capabilities(self):
        return self.inner.capabilities()

    def receive(self, now: float):
        try:
            os.eventfd_read(self.fd)  # drain first, then look: no lost wake-up
        except BlockingIOError:
            pass
        return self.inner.receive(now)

    def transmit(self, now: float):
        tx = self.inner.transmit(now)
        return None if tx is None else _WakingTx(tx, self.peer.fd)

    def close(self) -> None:
        os.close(self.fd)


def waking_pair(mtu: int = 1500, max_queue: int = 1024) -> tuple[WakingEnd, WakingEnd]:
    """`loopback_pair` for two stacks each run by its own `Runtime` thread."""
    a, b = loopback_pair(mtu, max_queue)
    wa, wb = WakingEnd(a), WakingEnd(b)
    wa.peer, wb.peer = wb, wa
    return wa, wb
