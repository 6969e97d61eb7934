"""The socket protocol every socket implements, the `SocketSet` that holds them, and the
bounded `PacketBuffer` datagram sockets store packets in.

The protocol (smoltcp's `AnySocket` as a duck type). Each socket class has a `KIND`
("udp", "icmp", "raw", and "tcp" when it exists) that the interface demultiplexes on, and:

- `accepts(ip_repr, header) -> bool`: would this socket take the packet? `ip_repr` is an
  `Ipv4Repr` or an `Ipv6Repr` (same `src_addr`/`dst_addr`/`protocol` names; tell them
  apart by `dst_addr.version`); `header` is the parsed transport repr (`UdpRepr`,
  `TcpRepr`, `Icmpv4Repr`/`Icmpv6Repr`; for raw sockets None). Dual-stack binding rules
  are in `netstack.socket.addr`.
- `process(now, ip_repr, header, payload, src_hw)`: take it. `payload` is a memoryview valid
  only during the call (it may point into guest memory): copy what you keep.
- `dispatch(now, emit)`: hand outgoing packets to `emit` (see `Interface.emit`), one call
  per packet, until `emit` returns False (device full or per-poll budget spent) or the
  socket has nothing more; dequeue a packet only after `emit` returned True.
- `poll_at(now) -> float | None`: when the socket next needs `dispatch` (a time <= now
  means at once), or None.

A socket calls its waker (`set_waker(fn)`) whenever it may have become readable or
writable. The interface calls process/dispatch from the one thread that owns it, with the
runtime lock held, so a waker may notify a `threading.Condition` built on that lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from netstack.socket.errors import BufferFull, Exhausted, TooLarge


class Socket:
    """What every socket shares: the waker hook and the back-reference to its set."""

    __slots__ = ("_waker", "_set")
    KIND = ""

    def __init__(self) -> None:
        self._waker: Callable[[], None] | None = None
        self._set: SocketSet | None = None

    def set_waker(self, fn: Callable[[], None] | None) -> None:
        """Call `fn()` (from the interface's thread) when the socket may have become
        readable or writable. None removes it."""
        self._waker = fn

    def _wake(self) -> None:
        if self._waker is not None:
            self._waker()

    def accepts(self, ip_repr, header) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def process(self, now: float, ip_repr, header, payload: memoryview, src_hw) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def dispatch(self, now: float, emit) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def poll_at(self, now: float) -> float | None:  # pragma: no cover - interface
        raise NotImplementedError


def touches(*names: str):
    """Class decorator: after each listed method (an application's call that may give the
    socket work: send, close, connect...), mark the socket dirty in its set, so the
    interface's schedule (see SocketSet) dispatches it on the next poll."""

    def decorate(cls):
        for name in names:
            fn = getattr(cls, name)

            def wrapper(self, *args, _fn=fn, **kwargs):
                try:
                    return _fn(self, *args, **kwargs)
                finally:
                    s = self._set
                    if s is not None:
                        s.dirty.add(self)

            wrapper.__name__ = fn.__name__
            wrapper.__qualname__ = fn.__qualname__
            wrapper.__doc__ = fn.__doc__
            wrapper.__wrapped__ = fn
            setattr(cls, name, wrapper)
        return cls

    return decorate


class SocketSet:
    """Sockets by handle (an int, never reused), and by KIND for the interface's demux.

    Iteration yields the sockets in insertion order (the interface dispatches in that
    order).

    It also keeps the interface's schedule, so a poll touches only the sockets that have
    work (1,000 idle connections must not tax a busy one): `dirty` sockets (new ones, those
    the interface fed a packet, those whose application called a method that gives them
    work — see `touches` — and those `touch`ed) and those whose last `poll_at` is due are
    dispatched. `touch_all()` makes the next poll visit every socket; the interface also
    does that every `FULL_SCAN_INTERVAL` while it is polled, a safety net for a change no
    method announced. Code that changes a socket's state behind its methods must `touch`
    it."""

    __slots__ = ("_sockets", "_by_kind", "_next", "dirty", "sched", "all_dirty", "_seq",
                 "tcp_demux", "_demux_keys", "fresh")

    def __init__(self) -> None:
        self._sockets: dict[int, Socket] = {}
        self._by_kind: dict[str, list[Socket]] = {}
        self._next = 1
        self.dirty: set[Socket] = set()
        self.sched: dict[Socket, float] = {}  # socket -> its poll_at after its last dispatch
        self.all_dirty = True
        self._seq: dict[Socket, int] = {}  # insertion order, to dispatch subsets in order
        # (local port, remote address, remote port) -> connection, filled by the interface
        self.tcp_demux: dict[tuple, Socket] = {}
        self._demux_keys: dict[Socket, tuple] = {}
        self.fresh: list[Socket] = []  # TCP sockets added since the interface last looked

    def cache_tcp(self, key: tuple, sock: Socket) -> None:
        """Remember that segments for `key` went to `sock` (a connection); the interface
        still asks `sock.accepts` on every hit, so a stale entry costs one call."""
        old = self._demux_keys.pop(sock, None)
        if old is not None and self.tcp_demux.get(old) is sock:
            del self.tcp_demux[old]
        self.tcp_demux[key] = sock
        self._demux_keys[sock] = key

    def touch(self, sock: Socket) -> None:
        """`sock` may have work: dispatch it on the next poll."""
        if sock._set is self:
            self.dirty.add(sock)

    def touch_all(self) -> None:
        """Every socket may have work (any thread may call this)."""
        self.all_dirty = True

    def due(self, now: float) -> list[Socket]:
        """The sockets to dispatch now, in insertion order; clears `all_dirty`."""
        if self.all_dirty:
            self.all_dirty = False
            return list(self._sockets.values())
        cands = set(self.dirty)
        for sock, at in self.sched.items():
            if at <= now:
                cands.add(sock)
        if len(cands) > 1:
            seq = self._seq
            return sorted(cands, key=seq.__getitem__)
        return list(cands)

    def next_at(self) -> float | None:
        """The earliest scheduled poll_at (dirty sockets are the caller's business)."""
        return min(self.sched.values()) if self.sched else None

    def add(self, sock: Socket) -> int:
        """Add `sock`; return its handle. A socket belongs to at most one set."""
        if sock._set is not None:
            raise ValueError("socket is in a set already")
        check = getattr(sock, "_check_unique", None)
        if check is not None:
            check(self)
        handle = self._next
        self._next += 1
        self._sockets[handle] = sock
        self._by_kind.setdefault(sock.KIND, []).append(sock)
        sock._set = self
        self._seq[sock] = handle
        self.dirty.add(sock)
        if sock.KIND == "tcp":
            self.fresh.append(sock)
        return handle

    def remove(self, handle: int) -> Socket:
        """Remove and return the socket (KeyError for an unknown handle)."""
        sock = self._sockets.pop(handle)
        self._by_kind[sock.KIND].remove(sock)
        sock._set = None
        self.dirty.discard(sock)
        self.sched.pop(sock, None)
        self._seq.pop(sock, None)
        key = self._demux_keys.pop(sock, None)
        if key is not None and self.tcp_demux.get(key) is sock:
            del self.tcp_demux[key]
        return sock

    def get(self, handle: int) -> Socket:
        return self._sockets[handle]

    __getitem__ = get

    def of_kind(self, kind: str) -> list[Socket]:
        """The sockets of one KIND (a live list: do not modify it)."""
        return self._by_kind.get(kind, _EMPTY)

    def __iter__(self) -> Iterator[Socket]:
        return iter(list(self._sockets.values()))

    def __len__(self) -> int:
        return len(self._sockets)

    def __contains__(self, handle: object) -> bool:
        return handle in self._sockets

    def items(self) -> list[tuple[int, Socket]]:
        return list(self._sockets.items())


_EMPTY: list[Socket] = []


class PacketBuffer:
    """A bounded FIFO of (metadata, payload bytes): at most `packets` entries and
    `payload_bytes` bytes of payload in total."""

    __slots__ = ("_queue", "packet_capacity", "byte_capacity", "_bytes")

    def __init__(self, packets: int = 64, payload_bytes: int = 64 * 1024) -> None:
        if packets <= 0 or payload_bytes <= 0:
            raise ValueError("a PacketBuffer needs room for packets and bytes")
        self._queue: deque[tuple[Any, bytes]] = deque()
        self.packet_capacity = packets
        self.byte_capacity = payload_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def is_empty(self) -> bool:
        return not self._queue

    def is_full(self) -> bool:
        return len(self._queue) >= self.packet_capacity or self._bytes >= self.byte_capacity

    def fits(self, size: int) -> bool:
        return len(self._queue) < self.packet_capacity and self._bytes + size <= self.byte_capacity

    def push(self, meta: Any, data: bytes) -> None:
        """Append; raise `TooLarge` if it could never fit, `BufferFull` if not now."""
        n = len(data)
        if n > self.byte_capacity:
            raise TooLarge(f"{n} bytes exceed the buffer's {self.byte_capacity}")
        if len(self._queue) >= self.packet_capacity or self._bytes + n > self.byte_capacity:
            raise BufferFull
        self._queue.append((meta, data))
        self._bytes += n

    def peek(self) -> tuple[Any, bytes]:
        if not self._queue:
            raise Exhausted
        return self._queue[0]

    def pop(self) -> tuple[Any, bytes]:
        if not self._queue:
            raise Exhausted
        item = self._queue.popleft()
        self._bytes -= len(item[1])
        return item

    def clear(self) -> None:
        self._queue.clear()
        self._bytes = 0
