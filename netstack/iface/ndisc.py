"""The IPv6 neighbor cache (RFC 4861 §7.3): reachability states, probes, bounded queues.

States and what moves them (time is an argument; nothing here reads a clock or sends):

- INCOMPLETE: we asked (multicast NS to the solicited-node group) and wait; datagrams to
  the address queue here (bounded per address and in total). `due()` asks again every
  `retrans_timer`, `max_multicast_solicit` times, then the entry and its queue are dropped.
- REACHABLE: confirmed by a solicited Neighbor Advertisement; after `reachable_time`
  it becomes STALE.
- STALE: learned from an unsolicited message (NS with a source link-layer option, an
  unsolicited NA, an RS/RA); usable, but the first send from it moves it to DELAY.
- DELAY: we sent to it; if nothing confirms it within `delay_first_probe`, PROBE.
- PROBE: unicast NS every `retrans_timer`, `max_unicast_solicit` times; then deleted.

`due(now)` returns the solicitations to send as (address, unicast MAC or None); a
solicited NA confirms (`advert`), other messages only create or refresh STALE entries
(`learn`). Capacity is bounded; the least recently used entry goes first.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from enum import Enum
from ipaddress import IPv6Address

from netstack.wire.ethernet import EthernetAddress


class State(Enum):
    INCOMPLETE = "incomplete"
    REACHABLE = "reachable"
    STALE = "stale"
    DELAY = "delay"
    PROBE = "probe"


class _Entry:
    __slots__ = ("state", "mac", "timer", "probes", "queue", "router")

    def __init__(self, state: State, mac: EthernetAddress | None, timer: float) -> None:
        self.state = state
        self.mac = mac
        self.timer = timer  # when this state's timer fires (inf: none)
        self.probes = 0
        self.queue: deque[bytes] = deque()
        self.router = False


_INF = float("inf")


class NeighborCache6:
    """IPv6 address → Ethernet address with the RFC 4861 state machine. See the module
    docstring."""

    __slots__ = ("capacity", "reachable_time", "retrans_timer", "delay_first_probe",
                 "max_multicast_solicit", "max_unicast_solicit", "queue_per_dest",
                 "queue_total", "queue_bytes", "stats", "_entries", "_queued",
                 "_queued_bytes")

    def __init__(self, capacity: int = 1024, reachable_time: float = 30.0,
                 retrans_timer: float = 1.0, delay_first_probe: float = 5.0,
                 max_multicast_solicit: int = 3, max_unicast_solicit: int = 3,
                 queue_per_dest: int = 16, queue_total: int = 256,
                 queue_bytes: int = 1 << 20, stats: Counter | None = None) -> None:
        self.capacity = capacity
        self.reachable_time = reachable_time
        self.retrans_timer = retrans_timer
        self.delay_first_probe = delay_first_probe
        self.max_multicast_solicit = max_multicast_solicit
        self.max_unicast_solicit = max_unicast_solicit
        self.queue_per_dest = queue_per_dest
        self.queue_total = queue_total
        self.queue_bytes = queue_bytes
        self.stats = stats if stats is not None else Counter()
        self._entries: OrderedDict[IPv6Address, _Entry] = OrderedDict()
        self._queued = 0
        self._queued_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, addr: object) -> bool:
        e = self._entries.get(addr)  # type: ignore[arg-type]
        return e is not None and e.mac is not None

    def state(self, addr: IPv6Address) -> State | None:
        e = self._entries.get(addr)
        return None if e is None else e.state

    @property
    def queued(self) -> int:
        return self._queued

    def _insert(self, addr: IPv6Address, entry: _Entry) -> None:
        entries = self._entries
        entries[addr] = entry
        entries.move_to_end(addr)
        while len(entries) > self.capacity:
            _, old = entries.popitem(last=False)
            self._forget(old)
            self.stats["nd_evicted"] += 1

    def _forget(self, entry: _Entry) -> None:
        self._queued -= len(entry.queue)
        self._queued_bytes -= sum(len(d) for d in entry.queue)
        entry.queue.clear()

    def lookup(self, addr: IPv6Address, now: float) -> EthernetAddress | None:
        """The MAC to send to `addr`, or None (unknown or INCOMPLETE). Sending through a
        STALE entry starts the DELAY timer (RFC 4861 §7.3.3)."""
        e = self._entries.get(addr)
        if e is None or e.mac is None:
            return None
        if e.state is State.REACHABLE and e.timer <= now:
            e.state, e.timer = State.STALE, _INF
        if e.state is State.STALE:
            e.state, e.timer = State.DELAY, now + self.delay_first_probe
        self._entries.move_to_end(addr)
        return e.mac

    def learn(self, addr: IPv6Address, mac: EthernetAddress, now: float) -> list[bytes]:
        """Unsolicited news that `addr` is at `mac` (NS/RS/RA source link-layer option,
        unsolicited NA with Override): a new entry is STALE, a changed MAC makes it STALE,
        the same MAC changes nothing. Returns datagrams that were waiting for it."""
        e = self._entries.get(addr)
        if e is None:
            self._insert(addr, _Entry(State.STALE, mac, _INF))
            return []
        if e.mac is None:  # INCOMPLETE: now we know
            e.mac, e.state, e.timer = mac, State.STALE, _INF
            return self._release(e)
        if e.mac != mac:
            e.mac, e.state, e.timer = mac, State.STALE, _INF
        return []

    def advert(self, addr: IPv6Address, mac: EthernetAddress | None, now: float, *,
               solicited: bool, override: bool, router: bool | None = None) -> list[bytes]:
        """A Neighbor Advertisement for `addr` (RFC 4861 §7.2.5). Returns datagrams that
        were waiting for it."""
        e = self._entries.get(addr)
        if e is None:
            return []  # no entry: an unsolicited NA creates none
        if router is not None:
            e.router = router
        if e.mac is None:
            if mac is None:
                return []
            e.mac = mac
            e.state, e.timer = (State.REACHABLE, now + self.reachable_time) if solicited \
                else (State.STALE, _INF)
            e.probes = 0
            return self._release(e)
        if mac is not None and mac != e.mac and not override:
            if e.state is State.REACHABLE:
                e.state, e.timer = State.STALE, _INF
            return []
        if mac is not None:
            if mac != e.mac:
                e.mac = mac
                e.state, e.timer = State.STALE, _INF
        if solicited:
            e.state, e.timer, e.probes = State.REACHABLE, now + self.reachable_time, 0
        return []

    def confirm(self, addr: IPv6Address, now: float) -> None:
        """Upper-layer proof of forward progress (RFC 4861 §7.3.1)."""
        e = self._entries.get(addr)
        if e is not None and e.mac is not None:
            e.state, e.timer, e.probes = State.REACHABLE, now + self.reachable_time, 0

    def _release(self, e: _Entry) -> list[bytes]:
        out = list(e.queue)
        self._forget(e)
        return out

    def enqueue(self, addr: IPv6Address, datagram: bytes, now: float) -> bool:
        """Hold `datagram` until `addr` resolves (creating an INCOMPLETE entry); False,
        counted, when the queues are full."""
        e = self._entries.get(addr)
        if self._queued >= self.queue_total or \
                self._queued_bytes + len(datagram) > self.queue_bytes:
            self.stats["nd_queue_full"] += 1
            return False
        if e is None:
            e = _Entry(State.INCOMPLETE, None, now)
            self._insert(addr, e)
        elif len(e.queue) >= self.queue_per_dest:
            self.stats["nd_queue_full"] += 1
            return False
        e.queue.append(datagram)
        self._queued += 1
        self._queued_bytes += len(datagram)
        return True

    def due(self, now: float) -> list[tuple[IPv6Address, EthernetAddress | None]]:
        """Solicitations to send now: (target, None) for a multicast NS, (target, mac) for
        a unicast probe. Entries that got no answer are dropped here."""
        out: list[tuple[IPv6Address, EthernetAddress | None]] = []
        for addr, e in list(self._entries.items()):
            if e.timer > now:
                continue
            st = e.state
            if st is State.INCOMPLETE:
                if e.probes >= self.max_multicast_solicit:
                    self.stats["neighbor_unreachable"] += len(e.queue)
                    self._forget(e)
                    del self._entries[addr]
                    continue
                e.probes += 1
                e.timer = now + self.retrans_timer
                out.append((addr, None))
            elif st is State.REACHABLE:
                e.state, e.timer = State.STALE, _INF
            elif st is State.DELAY:
                e.state, e.probes = State.PROBE, 1
                e.timer = now + self.retrans_timer
                out.append((addr, e.mac))
            elif st is State.PROBE:
                if e.probes >= self.max_unicast_solicit:
                    self.stats["nd_probe_failed"] += 1
                    del self._entries[addr]
                    continue
                e.probes += 1
                e.timer = now + self.retrans_timer
                out.append((addr, e.mac))
        return out

    def poll_at(self) -> float | None:
        at = None
        for e in self._entries.values():
            if e.state is State.REACHABLE or e.state is State.STALE:
                continue  # their timers send nothing; `lookup` handles REACHABLE expiry
            if at is None or e.timer < at:
                at = e.timer
        return at

    def entries(self) -> list[dict]:
        """Every entry as a dict: address, state, mac (None while INCOMPLETE), router,
        queued (datagrams waiting), timer (when its state's timer fires; inf: none)."""
        return [{"address": a, "state": e.state, "mac": e.mac, "router": e.router,
                 "queued": len(e.queue), "timer": e.timer}
                for a, e in self._entries.items()]

    def remove(self, addr: IPv6Address) -> None:
        e = self._entries.pop(addr, None)
        if e is not None:
            self._forget(e)

    def clear(self) -> None:
        self._entries.clear()
        self._queued = self._queued_bytes = 0
