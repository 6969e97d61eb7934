"""A listening TCP socket with an accept backlog, a bounded half-open table and SYN cookies.

Design: the listener is one socket in the `SocketSet` (KIND "tcp") and owns its children
until they are accepted. A SYN creates a child `TcpSocket` in SYN-RECEIVED in the half-open
table (at most `max_half_open`); the listener forwards the child's segments to it, runs its
`dispatch` (SYN-ACK retransmission, timers) and reports the earliest `poll_at` of them all
— from its own schedule (children with work now, a heap of their deadlines), so a poll
costs what is due, not the number of half-open children (4,096 under a SYN flood).
When the handshake completes the child moves to the accept queue (at most `backlog`).

`accept()` hands over the oldest established child: if the listener is in a set, the child is
added to that same set there and then (its handle in `child.handle`), so from that moment
the interface demultiplexes to the child itself and the runtime owns it like any socket
(remove it from the set once it is closed). Without a set, `accept()` just returns it.

Demultiplexing: `accepts()` takes only segments of its own children (half-open or not yet
accepted), SYNs for new 4-tuples, and — while SYN cookies were sent recently — bare ACKs
for unknown 4-tuples (validated in `process`). The interface asks a segment's connection
(by 4-tuple, SocketSet.tcp_lookup) before the port's listeners, so a child handed over
gets its own segments and the listener keeps no record of it. Everything else is left to
the interface, which answers with `rst_reply`.

SYN flood policy (ADVERSARIAL.md case 22):
- accept queue full → new SYNs and handshake-completing ACKs are dropped (the peer retries;
  Linux does the same), nothing is allocated;
- half-open table full → with `syn_cookies` (default) the SYN is answered statelessly with
  a cookie ISN (RFC 4987 §3.6): 5 bits of a 64 s clock, 3 bits of MSS class, 24 bits of
  keyed BLAKE2s over the 4-tuple, the peer's ISN and the clock; such connections run without
  window scaling, SACK and timestamps. Without cookies the oldest half-open entry is evicted.
Listening on `::` takes SYNs of both families (only IPv6 with `v6only`); a child's MSS
and its cookie's MSS follow the family of the SYN it answers (IPv6: MTU - 60, 1220 when the
peer sends no MSS option). Cookie SYN-ACKs wait in a queue of at most `COOKIE_QUEUE` entries (more are dropped: the
peer retransmits its SYN). Memory is therefore bounded by max_half_open + backlog sockets.
"""

from __future__ import annotations

import os
from collections import deque
from hashlib import blake2s
from heapq import heapify, heappop, heappush

from netstack.socket.addr import endpoint as _endpoint
from netstack.socket.addr import local_matches
from netstack.socket.errors import TableFull, Unaddressable
from netstack.socket.set import Socket, touches
from netstack.socket.tcp.seq import seq_add
from netstack.socket.tcp.socket import (
    DEFAULT_MSS,
    DEFAULT_MSS_V6,
    IPV4_TCP_HEADERS,
    IPV6_TCP_HEADERS,
    InvalidState,
    TcpSocket,
    _local_bind,
    rst_reply,
)
from netstack.socket.tcp.state import SYNCHRONIZED, State
from netstack.wire.tcp import ACK, RST, SYN, TcpPacket, TcpRepr

_TCP = 6
COOKIE_QUEUE = 64
COOKIE_PERIOD = 64.0  # seconds per tick of the cookie clock
COOKIE_MSS = (536, 1200, 1300, 1400, 1440, 1460, 4312, 8960)
SYNACK_RETRIES = 5


@touches("listen", "close", "set_mtu", "set_max_segment_size")
class TcpListener(Socket):
    """Listens on one endpoint; `accept()` returns established connections.

    Child sockets are made with `TcpSocket(**socket_options)` (buffer sizes, congestion,
    timestamps, ...)."""

    KIND = "tcp"
    __slots__ = ("backlog", "max_half_open", "syn_cookies", "_options", "_local", "_open",
                 "_half", "_ready", "_ctl", "_key", "_cookies_until", "_now",
                 "_mtu", "_tso", "_tso_v6", "stats", "v6only", "_due", "_timers", "_sched",
                 "_pushes")

    def __init__(self, backlog: int = 128, *, max_half_open: int | None = None,
                 syn_cookies: bool = True, **socket_options) -> None:
        super().__init__()
        if backlog <= 0:
            raise ValueError("backlog must be positive")
        TcpSocket(**socket_options)  # fail early on bad options
        self.backlog = backlog
        self.max_half_open = max_half_open if max_half_open is not None else max(2 * backlog, 64)
        self.syn_cookies = syn_cookies
        self._options = socket_options
        self._local = None
        self._open = False
        self._half: dict[tuple, TcpSocket] = {}
        self._ready: dict[tuple, TcpSocket] = {}
        self._ctl: deque = deque()
        # the children's schedule, so a poll costs what is due, not the table's size: keys
        # to visit now, and a heap of (deadline, n, key) — stale entries (a child's deadline
        # moved, or it left) are skipped against `_sched`, the deadline each key last got
        self._due: dict[tuple, None] = {}  # (a dict: in order)
        self._timers: list[tuple[float, int, tuple]] = []
        self._sched: dict[tuple, float] = {}
        self._pushes = 0
        self._key = os.urandom(32)
        self._cookies_until = -1.0
        self._now = 0.0
        self._mtu: int | None = None
        self._tso: int | None = None
        self._tso_v6 = True
        self.stats: dict[str, int] = {}
        self.v6only = False

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    # -- application side ---------------------------------------------------------------
    def listen(self, endpoint, backlog: int | None = None, *,
               v6only: bool | None = None) -> None:
        """Listen on `port` or `(addr, port)` (addr 0.0.0.0: any of our IPv4 addresses;
        `::`: any of our addresses, IPv4 included unless `v6only`)."""
        if self._open:
            raise InvalidState("listening already")
        if v6only is not None:
            self.v6only = v6only
        ep = _endpoint((None, endpoint)) if isinstance(endpoint, int) else _endpoint(endpoint)
        ep = _local_bind(ep, self.v6only)
        if ep[1] == 0:
            raise Unaddressable("listen needs a port")
        if backlog is not None:
            if backlog <= 0:
                raise ValueError("backlog must be positive")
            self.backlog = backlog
        self._local = ep
        self._open = True
        if self._set is not None:
            self._set.tcp_index(self)

    def tcp_key(self):
        """How the set indexes us: (port, None) while listening, else None."""
        return (self._local[1], None) if self._open else None

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def is_listening(self) -> bool:
        return self._open

    @property
    def local_endpoint(self):
        return self._local

    @property
    def _remote(self):
        return None

    @property
    def half_open(self) -> int:
        return len(self._half)

    @property
    def pending(self) -> int:
        """Established connections waiting for `accept()`."""
        return len(self._ready)

    def can_accept(self) -> bool:
        return bool(self._ready)

    def accept(self) -> TcpSocket | None:
        """The oldest established connection (added to the listener's set), or None.

        Only an accept that took something marks the listener dirty (a RST it queued for
        a child the table had no room for goes out on its dispatch): an application
        waiting on an empty queue, with a timeout, must not wake the stack each time."""
        if not self._ready:
            return None
        if self._set is not None:
            self._set.dirty.add(self)
        while self._ready:
            key = next(iter(self._ready))
            child = self._ready.pop(key)
            self._forget(key)
            if not child.is_open:
                continue
            s = self._set
            if s is not None:
                try:
                    child.handle = s.add(child)
                except TableFull:  # the set counted it: the peer gets a RST
                    self._count("accept_table_full")
                    child.abort()
                    self._flush_child_rst(child)
                    continue
                # a new socket is dirty (dispatched on the next poll); one that owes
                # nothing now only needs its deadline (most, once accepted)
                at = child.poll_at(self._now)
                if at is None or at > self._now:
                    s.dirty.discard(child)
                    s.schedule(child, at)
            return child
        return None

    def close(self) -> None:
        """Stop listening: half-open and unaccepted connections are reset; accepted ones
        carry on."""
        for table in (self._half, self._ready):
            for child in table.values():
                child.abort()
                self._flush_child_rst(child)
            table.clear()
        self._due.clear()
        self._timers.clear()
        self._sched.clear()
        was, self._open = self._open, False
        if self._set is not None and was:
            self._set.tcp_index(self)
            self._set.socket_closed(self)

    def _flush_child_rst(self, child: TcpSocket) -> None:
        if child._ctl_out is not None and len(self._ctl) < COOKIE_QUEUE:
            self._ctl.append(child._ctl_out)
            child._ctl_out = None

    def set_mtu(self, mtu: int) -> None:
        self.set_link(mtu, self._tso, self._tso_v6)

    def set_max_segment_size(self, max_bytes: int | None, ipv6: bool = True) -> None:
        self.set_link(self._mtu, max_bytes, ipv6)

    def set_link(self, mtu: int | None, tso_max: int | None, tso_v6: bool) -> None:
        """The interface's MTU (None: not told yet) and TSO limit for the children to
        come and those it holds (see `TcpSocket.set_link`)."""
        self._mtu, self._tso, self._tso_v6 = mtu, tso_max, tso_v6
        for table in (self._half, self._ready):
            for key, child in table.items():
                self._link_child(child)
                self._due[key] = None

    def _link_child(self, child: TcpSocket) -> None:
        child.set_link(self._mtu if self._mtu is not None else child._mtu, self._tso,
                       self._tso_v6)

    def _new_child(self) -> TcpSocket:
        child = TcpSocket(**self._options)
        if self._mtu is not None or self._tso is not None:
            self._link_child(child)
        return child

    # -- SYN cookies --------------------------------------------------------------------
    def _cookie_hash(self, key: tuple, irs: int, t: int, mss_idx: int) -> int:
        raddr, rport, laddr = key
        msg = (raddr.packed + rport.to_bytes(2, "big") + laddr.packed
               + self._local[1].to_bytes(2, "big") + irs.to_bytes(4, "big")
               + t.to_bytes(4, "big") + bytes((mss_idx,)))
        return int.from_bytes(blake2s(msg, key=self._key, digest_size=3).digest(), "big")

    def _make_cookie(self, now: float, key: tuple, irs: int, peer_mss: int | None) -> int:
        v6 = key[0].version == 6
        mss = min(peer_mss or (DEFAULT_MSS_V6 if v6 else DEFAULT_MSS), self._local_mss(v6))
        idx = 0
        for i, value in enumerate(COOKIE_MSS):
            if value <= mss:
                idx = i
        t = int(now / COOKIE_PERIOD)
        return ((t & 31) << 27) | (idx << 24) | self._cookie_hash(key, irs, t, idx)

    def _check_cookie(self, now: float, key: tuple, irs: int, cookie: int) -> int | None:
        """The MSS encoded in a valid cookie, else None."""
        t_now = int(now / COOKIE_PERIOD)
        t_bits = cookie >> 27
        idx = (cookie >> 24) & 7
        for t in (t_now, t_now - 1):
            if t >= 0 and t & 31 == t_bits and \
                    self._cookie_hash(key, irs, t, idx) == cookie & 0xFFFFFF:
                return COOKIE_MSS[idx]
        return None

    def _local_mss(self, v6: bool = False) -> int:
        mss = self._options.get("mss")
        limit = (self._mtu or 1500) - (IPV6_TCP_HEADERS if v6 else IPV4_TCP_HEADERS)
        return min(mss, limit) if mss else limit

    def _rx_window(self) -> int:
        return min(self._options.get("rx_buffer_size", 256 * 1024), 0xFFFF)

    # -- the socket protocol ------------------------------------------------------------
    def accepts(self, ip_repr, seg: TcpRepr) -> bool:
        local = self._local
        if not self._open or seg.dst_port != local[1]:
            return False
        if not local_matches(local[0], self.v6only, ip_repr.dst_addr):
            return False
        key = (ip_repr.src_addr, seg.src_port, ip_repr.dst_addr)
        # (an IPv4Address hashes slowly: an empty table is not asked)
        if (self._half and key in self._half) or (self._ready and key in self._ready):
            return True
        flags = seg.flags
        if flags & SYN:
            return not flags & (ACK | RST)
        return bool(flags & ACK) and not flags & RST and self._now <= self._cookies_until

    def process(self, now: float, ip_repr, seg: TcpRepr, payload, src_hw=None) -> None:
        self._now = now
        key = (ip_repr.src_addr, seg.src_port, ip_repr.dst_addr)
        child = self._half.get(key)
        if child is not None:
            if seg.flags & ACK and len(self._ready) >= self.backlog:
                self._count("accept_queue_full")
                return  # the peer will retransmit; the handshake completes later
            child.process(now, ip_repr, seg, payload, src_hw)
            if child.state in SYNCHRONIZED:
                del self._half[key]
                self._ready[key] = child
                # (a visit only if it owes something now: most owe nothing once accepted)
                self._schedule(key, child.poll_at(now), now)
                self._wake()
            elif child.state is State.CLOSED:
                self._flush_child_rst(child)
                del self._half[key]
                self._forget(key)
            else:
                self._due[key] = None
            return
        child = self._ready.get(key)
        if child is not None:
            child.process(now, ip_repr, seg, payload, src_hw)
            if child.state is State.CLOSED:
                self._flush_child_rst(child)
                del self._ready[key]
                self._forget(key)
            else:
                self._due[key] = None
            return
        flags = seg.flags
        dst = ip_repr.dst_addr
        # (the children share the listener's endpoint when they can: one tuple of
        # addresses less per connection for the garbage collector to walk)
        bound = self._local[0]
        local = self._local if dst is bound or dst == bound else (dst, self._local[1])
        remote = (ip_repr.src_addr, seg.src_port)
        if flags & SYN:
            if len(self._ready) >= self.backlog:
                self._count("syn_dropped_backlog_full")
                return
            if len(self._half) >= self.max_half_open:
                if self.syn_cookies:
                    self._send_cookie(now, ip_repr, seg, key)
                    return
                oldest = next(iter(self._half))
                del self._half[oldest]
                self._forget(oldest)
                self._count("half_open_evicted")
            child = self._new_child()
            child.syn_retries = SYNACK_RETRIES
            child._syn_received(now, local, remote, seg, child.isn_fn(now, local, remote))
            self._half[key] = child
            self._due[key] = None
            return
        # a bare ACK for an unknown 4-tuple while cookies are out: a cookie?
        if len(self._ready) >= self.backlog:
            self._count("accept_queue_full")
            return
        irs = seq_add(seg.seq_number, -1)
        iss = seq_add(seg.ack_number, -1)
        mss = self._check_cookie(now, key, irs, iss)
        if mss is None:
            self._count("bad_cookie")
            reply = rst_reply(ip_repr, seg)
            if reply is not None and len(self._ctl) < COOKIE_QUEUE:
                self._ctl.append((ip_repr.src_addr, ip_repr.dst_addr, reply))
            return
        self._count("cookie_accepted")
        child = self._new_child()
        child._cookie_established(now, local, remote, iss, irs, mss, seg, self._rx_window())
        child.process(now, ip_repr, seg, payload, src_hw)  # data riding on the ACK
        self._ready[key] = child
        self._due[key] = None
        self._wake()

    def _send_cookie(self, now: float, ip_repr, seg: TcpRepr, key: tuple) -> None:
        if len(self._ctl) >= COOKIE_QUEUE:
            self._count("cookie_dropped")
            return
        cookie = self._make_cookie(now, key, seg.seq_number, seg.max_seg_size)
        reply = TcpRepr(seg.dst_port, seg.src_port, cookie, seq_add(seg.seq_number, 1),
                        SYN | ACK, self._rx_window(),
                        max_seg_size=self._local_mss(ip_repr.src_addr.version == 6))
        self._ctl.append((ip_repr.src_addr, ip_repr.dst_addr, reply))
        self._cookies_until = now + 2 * COOKIE_PERIOD
        self._count("cookie_sent")

    def dispatch(self, now: float, emit) -> None:
        self._now = now
        ctl = self._ctl
        while ctl:
            dst, src, repr_ = ctl[0]

            def fill(buf, src_addr, csum, repr_=repr_, dst=dst):
                repr_.emit(TcpPacket(buf), src_addr, dst, csum)

            if not emit(dst, _TCP, repr_.buffer_len(), fill, src, dont_frag=True):
                return
            ctl.popleft()
        blocked = False

        def guarded(*args, **kw):
            nonlocal blocked
            if blocked:
                return False
            ok = emit(*args, **kw)
            if not ok:
                blocked = True
            return ok

        due, timers, sched = self._due, self._timers, self._sched
        while timers and timers[0][0] <= now:
            at, _, key = heappop(timers)
            if sched.get(key) == at:
                del sched[key]
                due[key] = None
        if not due:
            return
        visit, self._due = due, {}
        for key in visit:
            if blocked:
                self._due[key] = None  # the device is full: next poll
                continue
            child = self._half.get(key) or self._ready.get(key)
            if child is None:
                continue
            at = child.poll_at(now)
            if at is not None and at <= now:
                child.dispatch(now, guarded)
            if child.state is State.CLOSED and child._ctl_out is None:
                self._half.pop(key, None)
                self._ready.pop(key, None)
                self._forget(key)
                continue
            self._schedule(key, child.poll_at(now), now)

    def _schedule(self, key: tuple, at: float | None, now: float) -> None:
        if at is None:
            self._sched.pop(key, None)
        elif at <= now:
            self._due[key] = None
        elif self._sched.get(key) != at:
            self._sched[key] = at
            self._pushes += 1
            heappush(self._timers, (at, self._pushes, key))
            if len(self._timers) > 2 * len(self._sched) + 64:  # mostly stale: rebuild
                rebuilt = []
                for k, t in self._sched.items():
                    self._pushes += 1
                    rebuilt.append((t, self._pushes, k))
                heapify(rebuilt)
                self._timers = rebuilt

    def _forget(self, key: tuple) -> None:
        self._sched.pop(key, None)
        self._due.pop(key, None)

    def poll_at(self, now: float) -> float | None:
        if self._ctl or self._due:
            return now
        timers, sched = self._timers, self._sched
        while timers:
            at, _, key = timers[0]
            if sched.get(key) == at:
                return at
            heappop(timers)
        return None

    def __repr__(self) -> str:
        return (f"<TcpListener {self._local} half_open={len(self._half)} "
                f"ready={len(self._ready)}>")
