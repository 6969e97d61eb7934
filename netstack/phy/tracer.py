"""A device that wraps a device and shows every frame to a callback (a debug hook).

`Tracer(device, fn)` calls `fn(direction, frame, now)` for each frame: `Direction.RX` when
the stack consumes a received frame (before the stack sees it), `Direction.TX` once the stack
has filled an outgoing frame (before the inner device sends it). `frame` is a memoryview valid
only during the call; copy it (`bytes(frame)`) to keep it.

>>> from netstack.phy.loopback import Loopback
>>> seen = []
>>> dev = Tracer(Loopback(), lambda d, f, now: seen.append((str(d), bytes(f), now)))
>>> dev.transmit(1.0).consume(1, lambda buf: buf.__setitem__(0, 7))
>>> dev.receive(2.0)[0].consume(bytes)
b'\\x07'
>>> seen
[('tx', b'\\x07', 1.0), ('rx', b'\\x07', 2.0)]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from . import Device, DeviceCapabilities, Direction, RxToken, TxToken

R = TypeVar("R")

TraceFn = Callable[[Direction, memoryview, float], object]


class _RxToken:
    __slots__ = ("_inner", "_fn", "_now")

    def __init__(self, inner: RxToken, fn: TraceFn, now: float) -> None:
        self._inner, self._fn, self._now = inner, fn, now

    def consume(self, fn: Callable[[memoryview], R]) -> R:
        def seen(frame: memoryview) -> R:
            self._fn(Direction.RX, frame, self._now)
            return fn(frame)

        return self._inner.consume(seen)


class _TxToken:
    __slots__ = ("_inner", "_fn", "_now")

    def __init__(self, inner: TxToken, fn: TraceFn, now: float) -> None:
        self._inner, self._fn, self._now = inner, fn, now

    def consume(self, length: int, fn: Callable[[memoryview], R]) -> R:
        def filled(buf: memoryview) -> R:
            result = fn(buf)
            self._fn(Direction.TX, buf, self._now)
            return result

        return self._inner.consume(length, filled)


class Tracer:
    """Wraps `inner`; every frame in either direction goes through `fn(direction, frame, now)`."""

    def __init__(self, inner: Device, fn: TraceFn) -> None:
        self.inner = inner
        self._trace = fn

    def capabilities(self) -> DeviceCapabilities:
        return self.inner.capabilities()

    def receive(self, now: float) -> tuple[_RxToken, _TxToken] | None:
        tokens = self.inner.receive(now)
        if tokens is None:
            return None
        rx, tx = tokens
        return _RxToken(rx, self._trace, now), _TxToken(tx, self._trace, now)

    def transmit(self, now: float) -> _TxToken | None:
        tx = self.inner.transmit(now)
        if tx is None:
            return None
        return _TxToken(tx, self._trace, now)

    def fileno(self) -> int:
        """The inner device's readiness fd (AttributeError if it has none)."""
        return self.inner.fileno()  # type: ignore[attr-defined]

    def poll_at(self) -> float | None:
        """The inner device's wake-up time, if it has one."""
        poll_at = getattr(self.inner, "poll_at", None)
        return poll_at() if poll_at is not None else None
