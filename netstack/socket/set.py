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

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from netstack.socket.errors import BufferFull, Exhausted, TableFull, TooLarge
from netstack.socket.limits import Limits


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

    It also keeps the interface's schedule, so a poll costs in proportion to the sockets
    with work, not to the table (100,000 idle connections must not tax a busy one):
    `dirty` sockets (new ones, those the interface fed a packet, those whose application
    called a method that gives them work — see `touches` — and those `touch`ed) and those
    whose `poll_at` has come (a heap of deadlines, stale entries skipped) are dispatched.
    `touch_all()` makes the next poll visit every socket (an MTU change); `sweep(k)` adds
    `k` more sockets in turn, a bounded safety net for a change no method announced.
    Code that changes a socket's state behind its methods must `touch` it.

    TCP sockets are indexed for O(1) demultiplexing (`tcp_index`): connections by (local
    port, remote address, remote port), listeners (a LISTEN TcpSocket or a TcpListener)
    by local port; every indexed socket by local port too, for port-in-use checks. A TCP
    socket calls `tcp_index` itself when its endpoints or state change.

    `limits` (see `netstack.socket.limits`) bounds the table (`max_sockets`: `TableFull`),
    the TIME-WAIT sockets (the oldest is closed past `max_tw_buckets`) and the orphans
    (the oldest is reset past `max_orphans`); `stats` counts what they refused or evicted.
    Sockets that have closed are listed in `closed` for their owner (the runtime reaps
    the ones its applications let go of) without a scan of the table."""

    __slots__ = ("_sockets", "_by_kind", "_next", "dirty", "sched", "all_dirty", "_seq",
                 "fresh", "_heap", "_sweep", "tcp_conns", "tcp_listen", "tcp_ports",
                 "_tcp_keys", "limits", "stats", "_tw", "_orphans", "closed", "_pushes")

    def __init__(self, limits: Limits | None = None) -> None:
        self._sockets: dict[int, Socket] = {}
        self._by_kind: dict[str, dict[Socket, None]] = {}
        self._next = 1
        self.dirty: set[Socket] = set()
        self.sched: dict[Socket, float] = {}  # socket -> its poll_at after its last dispatch
        self._heap: list[tuple[float, int, Socket]] = []  # (at, n, socket); may be stale
        self._pushes = itertools.count()  # n: ties never compare sockets
        self._sweep: deque[Socket] = deque()  # every socket, in turn (removed ones lazily)
        self.all_dirty = True
        self._seq: dict[Socket, int] = {}  # socket -> handle (insertion order)
        self.fresh: list[Socket] = []  # TCP sockets added since the interface last looked
        self.tcp_conns: dict[tuple, Socket | list[Socket]] = {}
        self.tcp_listen: dict[int, list[Socket]] = {}
        self.tcp_ports: dict[int, dict[Socket, None]] = {}
        # socket -> its port (a listener) or its tcp_conns key (a connection): the key
        # itself, not another tuple to hold (every tuple of addresses is one more object
        # for the garbage collector to walk)
        self._tcp_keys: dict[Socket, int | tuple] = {}
        self.limits = limits if limits is not None else Limits()
        self.stats: Counter[str] = Counter()
        self._tw: dict[Socket, None] = {}  # TIME-WAIT sockets, oldest first
        self._orphans: dict[Socket, None] = {}  # orphans not closed yet, oldest first
        self.closed: list[Socket] = []  # sockets that entered CLOSED since the owner looked

    # -- the schedule -----------------------------------------------------------------
    def touch(self, sock: Socket) -> None:
        """`sock` may have work: dispatch it on the next poll."""
        if sock._set is self:
            self.dirty.add(sock)

    def touch_all(self) -> None:
        """Every socket may have work (any thread may call this)."""
        self.all_dirty = True

    def schedule(self, sock: Socket, at: float | None) -> None:
        """`sock` next needs a dispatch at `at` (None: only when touched)."""
        if at is None:
            self.sched.pop(sock, None)
        elif self.sched.get(sock) != at:
            self.sched[sock] = at
            heapq.heappush(self._heap, (at, next(self._pushes), sock))

    def due(self, now: float, sweep: int = 0) -> list[Socket]:
        """The sockets to dispatch now, in insertion order (plus `sweep` more, visited in
        turn); clears `all_dirty`."""
        if self.all_dirty:
            self.all_dirty = False
            return list(self._sockets.values())
        # the dirty set is handed over, not copied: a set keeps the capacity it once had
        # (100,000 slots after a table's worth of touches) and copying or iterating it
        # costs that capacity, 0.2 ms a poll, even when it is nearly empty
        cands = self.dirty
        if cands:
            self.dirty = set()
        else:
            cands = set()
        heap, sched = self._heap, self.sched
        while heap and heap[0][0] <= now:
            at, _, sock = heapq.heappop(heap)
            if sched.get(sock) == at:
                del sched[sock]
                cands.add(sock)
        if sweep:
            ring = self._sweep
            for _ in range(min(sweep, len(ring))):
                sock = ring.popleft()
                if sock._set is self:
                    ring.append(sock)
                    cands.add(sock)
        if len(cands) > 1:
            seq = self._seq
            return sorted(cands, key=seq.__getitem__)
        return list(cands)

    def next_at(self) -> float | None:
        """The earliest scheduled poll_at (dirty sockets are the caller's business)."""
        heap, sched = self._heap, self.sched
        while heap:
            at, _, sock = heap[0]
            if sched.get(sock) == at:
                return at
            heapq.heappop(heap)  # stale: rescheduled or unscheduled since
        return None

    # -- membership -------------------------------------------------------------------
    def add(self, sock: Socket) -> int:
        """Add `sock`; return its handle. A socket belongs to at most one set.
        `TableFull` when the table holds `limits.max_sockets` already."""
        if sock._set is not None:
            raise ValueError("socket is in a set already")
        cap = self.limits.max_sockets
        if cap is not None and len(self._sockets) >= cap:
            self.stats["table_full"] += 1
            raise TableFull(f"the socket table is full ({cap} sockets)")
        check = getattr(sock, "_check_unique", None)
        if check is not None:
            check(self)
        handle = self._next
        self._next += 1
        self._sockets[handle] = sock
        self._by_kind.setdefault(sock.KIND, {})[sock] = None
        sock._set = self
        self._seq[sock] = handle
        self.dirty.add(sock)
        self._sweep.append(sock)
        if sock.KIND == "tcp":
            self.fresh.append(sock)
            self.tcp_index(sock)
        return handle

    def remove(self, handle: int) -> Socket:
        """Remove and return the socket (KeyError for an unknown handle)."""
        sock = self._sockets.pop(handle)
        self._by_kind[sock.KIND].pop(sock, None)
        self._unindex(sock)
        sock._set = None
        self.dirty.discard(sock)
        self.sched.pop(sock, None)
        self._seq.pop(sock, None)
        self._tw.pop(sock, None)
        self._orphans.pop(sock, None)
        return sock

    def handle_of(self, sock: Socket) -> int | None:
        return self._seq.get(sock) if sock._set is self else None

    def get(self, handle: int) -> Socket:
        return self._sockets[handle]

    __getitem__ = get

    def of_kind(self, kind: str):
        """The sockets of one KIND, in insertion order (a live view: do not add or
        remove sockets while iterating it)."""
        d = self._by_kind.get(kind)
        return d.keys() if d is not None else _EMPTY

    def __iter__(self) -> Iterator[Socket]:
        return iter(list(self._sockets.values()))

    def __len__(self) -> int:
        return len(self._sockets)

    def __contains__(self, handle: object) -> bool:
        return handle in self._sockets

    def items(self) -> list[tuple[int, Socket]]:
        return list(self._sockets.items())

    # -- the TCP index ----------------------------------------------------------------
    def tcp_index(self, sock: Socket) -> None:
        """(Re)index `sock` after its endpoints or state changed: `sock.tcp_key()` is
        None (not indexed: closed or unbound), `(port, None)` (listening) or `(port,
        (remote address, remote port))` (a connection)."""
        self._unindex(sock)
        if sock._set is not self:
            return
        key = sock.tcp_key()
        if key is None:
            return
        port, remote = key
        self.tcp_ports.setdefault(port, {})[sock] = None
        if remote is None:
            self.tcp_listen.setdefault(port, []).append(sock)
            self._tcp_keys[sock] = port
            return
        ck = (port, remote[0], remote[1])
        have = self.tcp_conns.get(ck)
        if have is None:
            self.tcp_conns[ck] = sock
        elif have.__class__ is list:
            have.append(sock)
        else:  # two connections share it (different local addresses): rare
            self.tcp_conns[ck] = [have, sock]
        self._tcp_keys[sock] = ck

    def _unindex(self, sock: Socket) -> None:
        key = self._tcp_keys.pop(sock, None)
        if key is None:
            return
        listening = key.__class__ is int
        port = key if listening else key[0]
        ports = self.tcp_ports.get(port)
        if ports is not None:
            ports.pop(sock, None)
            if not ports:
                del self.tcp_ports[port]
        if listening:
            lst = self.tcp_listen.get(port)
            if lst is not None and sock in lst:
                lst.remove(sock)
                if not lst:
                    del self.tcp_listen[port]
            return
        ck = key
        have = self.tcp_conns.get(ck)
        if have is sock:
            del self.tcp_conns[ck]
        elif have.__class__ is list and sock in have:
            have.remove(sock)
            if len(have) == 1:
                self.tcp_conns[ck] = have[0]

    def tcp_lookup(self, port: int, addr, rport: int) -> tuple:
        """The connections indexed under (port, addr, rport), then the listeners on
        `port`: the candidates for a segment, in the order to ask them."""
        have = self.tcp_conns.get((port, addr, rport))
        conns = () if have is None else (have if have.__class__ is list else (have,))
        return conns, self.tcp_listen.get(port, ())

    # -- limits -----------------------------------------------------------------------
    def tw_enter(self, sock: Socket) -> None:
        """An orphan entered TIME-WAIT (its application let go of it, so nobody reads
        what it holds): past `max_tw_buckets` the oldest is closed now."""
        self._orphans.pop(sock, None)  # counted here now, not as an orphan
        self._tw[sock] = None
        while len(self._tw) > self.limits.max_tw_buckets:
            old = next(iter(self._tw))
            del self._tw[old]
            self.stats["tw_evicted"] += 1
            old.evict_time_wait()
            self.dirty.add(old)

    def orphan_enter(self, sock: Socket) -> None:
        """`sock` was let go of by its application: past `max_orphans` the oldest orphan
        is reset (Linux: 'too many orphaned sockets')."""
        self._orphans[sock] = None
        while len(self._orphans) > self.limits.max_orphans:
            old = next(iter(self._orphans))
            del self._orphans[old]
            self.stats["orphans_reset"] += 1
            old.abort()
            self.dirty.add(old)

    def socket_closed(self, sock: Socket) -> None:
        """`sock` entered CLOSED (TCP calls this): out of the TIME-WAIT and orphan
        accounts, and listed in `closed` for its owner."""
        self._tw.pop(sock, None)
        self._orphans.pop(sock, None)
        self.closed.append(sock)

    @property
    def time_wait_count(self) -> int:
        return len(self._tw)

    @property
    def orphan_count(self) -> int:
        return len(self._orphans)


_EMPTY: tuple = ()


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
