"""The device side of a split virtqueue (virtio 1.2 §2.7), hardened against the driver.

The driver (guest) owns the descriptor table and the avail ring; we own the used ring.
Everything we read from guest memory is checked before use, and each descriptor is read
once into a local tuple (the guest may rewrite it behind our back). A rule broken by the
driver raises RingError inside `pop()`; the queue is marked broken, stops, and the
caller reports it (err eventfd, DEVICE_NEEDS_RESET) — it never crashes or loops.

Ring states follow vhost-user: a queue is *started* by the first kick (or at once when the
front-end asks for polling) and stopped by GET_VRING_BASE; *enabled* by SET_VRING_ENABLE.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

from vhostuser.errors import GuestMemoryError, RingError
from vhostuser.features import (
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
)
from vhostuser.memory import GuestMemory
from vhostuser.protocol import VringAddr

try:
    from vhostuser._fast import ffi as _ffi
    from vhostuser._fast import lib as _lib

    fence = _lib.vu_fence
    HAVE_C = True
except ImportError:  # pragma: no cover - only without the C build
    import threading

    HAVE_C = False

    _fence_lock = threading.Lock()

    def fence() -> None:
        """A locked instruction (the lock's cmpxchg) is a full barrier on x86."""
        with _fence_lock:
            pass

# Ring words the driver reads while we write them (used idx, used flags, avail_event) and
# words it writes while we read them (avail idx, flags, used_event) are accessed as one
# 16-bit value: vu_ld16/vu_st16 (atomic, acquire/release), or without the C build a
# memoryview cast to "H" (one 2-byte load or store in CPython). Never struct.pack_into:
# it zeroes the field and then writes it byte by byte, so a driver polling used.idx saw
# 0 (or half of the new value) and reaped entries it did not own — DPDK's virtio-user
# then freed descriptors twice and published more than the queue size (virtio 1.2
# §2.7.8: idx only increases, and entries are written before it).


log = logging.getLogger(__name__)

# Chains are walked by the C helper (vu_walk) when it is built; tests switch this off to
# run the same cases through the pure-Python walker.
USE_C = HAVE_C

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
DESC_SIZE = 16
USED_ELEM = struct.Struct("<II")
MAX_QUEUE_SIZE = 32768  # virtio: Queue Size ≤ 32768


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """virtio §2.7.10: notify iff event_idx lies in [old_idx, new_idx)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


@dataclass(slots=True)
class Chain:
    """One popped descriptor chain: `readable`/`writable` are (guest address, length)
    pairs in order. `head` goes back in the used ring."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        total = 0
        for _, n in self.readable:
            total += n
        return total

    @property
    def writable_len(self) -> int:
        total = 0
        for _, n in self.writable:
            total += n
        return total


@dataclass(slots=True)
class QueueStats:
    popped: int = 0
    used: int = 0
    notified: int = 0
    kicks: int = 0
    errors: int = 0
    resyncs: int = 0  # starts whose base disagreed with the used ring (see Virtqueue.start)
    batched: int = 0  # of `popped`, the chains the C batch helpers took


class Virtqueue:
    """One split virtqueue seen from the device."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.size = 0
        self.addr: VringAddr | None = None
        self.last_avail_idx = 0
        self.used_idx = 0
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.polling = False  # SET_VRING_KICK with the no-fd bit: we poll, no kicks
        self.started = False
        self.enabled = False
        # Disabled by SET_VRING_ENABLE 0 / RESET_OWNER (not merely not enabled yet): only
        # then is TX drained and discarded. Before the first enable a ring is left alone,
        # or frames the guest queued while we were away would be lost between QEMU's
        # SET_VRING_KICK and SET_VRING_ENABLE.
        self.disabled = False
        self.broken = False
        self.event_idx = False
        self.indirect = False
        self.stats = QueueStats()
        self._memory: GuestMemory | None = None
        self._mem_gen = -1
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None  # cast to u16
        self._used: memoryview | None = None  # raw bytes
        self._used16: memoryview | None = None  # the same, cast to u16 (no C build)
        self._pa = 0  # host addresses of the avail and used rings (for vu_ld16/vu_st16)
        self._pu = 0
        self._shadow_avail = 0
        self._signalled_used: int | None = None
        self._armed: int | None = None  # the avail idx notifications were armed at
        self._pending = 0  # used entries pushed but not yet published
        self._unsignalled = False  # published since the last interrupt decision
        # the C walker's view of the descriptor table and its output arrays
        self._cdesc = None
        self._caddr = self._clen = self._cnread = self._cerr = None
        # the batch helpers' queue state (struct vu_vq): the ring pointers stay; the
        # indices are copied in and out once per batch call
        self._cq = None
        self._cq_gen = -1  # the memory generation whose region table _cq holds
        self._log_spans: list[tuple[int, int]] = []
        self._cexports: list = []

    # -- configuration -------------------------------------------------------------
    @property
    def configured(self) -> bool:
        return self.size > 0 and self.addr is not None

    @property
    def serviceable(self) -> bool:
        """Ready, and either enabled or explicitly disabled (TX then drains)."""
        return self.ready and (self.enabled or self.disabled)

    @property
    def mapped(self) -> bool:
        return self._desc is not None

    @property
    def ready(self) -> bool:
        """Started, mapped and healthy: may be processed."""
        return self.started and not self.broken and self._desc is not None

    def map(self, memory: GuestMemory) -> None:
        """Translate the ring addresses into views of guest memory. Raises
        GuestMemoryError (the ring stays unmapped) when they are not all inside one region
        each, or RingError when misaligned."""
        if self._pending:
            self.publish()
        self.unmap()
        if not self.configured:
            return
        a, n = self.addr, self.size
        assert a is not None
        desc_len, avail_len, used_len, avail_align = self._areas(n)
        if a.desc % 16 or a.avail % avail_align or a.used % 4:
            raise RingError(f"queue {self.index}: misaligned ring addresses")
        desc = memory.uva(a.desc, desc_len)
        avail = memory.uva(a.avail, avail_len)
        used = memory.uva(a.used, used_len)
        self._memory = memory
        self._mem_gen = memory.generation
        self._armed = None
        # what we write of the rings, in guest-physical terms, for the dirty log
        self._log_spans = [(memory.uva_to_gpa(a.used), used_len)]
        if self.device_writes_desc:
            self._log_spans.append((memory.uva_to_gpa(a.desc), desc_len))
        self._bind(desc, avail, used)

    device_writes_desc = False  # (the packed ring's device writes its descriptors back)

    def _log_ring(self) -> None:
        """Mark the ring areas we write in the dirty log, if the front-end is migrating
        (after the writes: it may read the log at any moment)."""
        mem = self._memory
        if mem is not None and mem.log is not None:
            for gpa, n in self._log_spans:
                mem.log.mark(gpa, n)

    @staticmethod
    def _areas(n: int) -> tuple[int, int, int, int]:
        """Bytes of the descriptor table, avail ring and used ring of `n` entries, and the
        avail ring's alignment (virtio 1.2 §2.7)."""
        return DESC_SIZE * n, 6 + 2 * n, 6 + 8 * n, 2

    def _bind(self, desc: memoryview, avail: memoryview, used: memoryview) -> None:
        """Keep the mapped rings (and the C helpers' view of them); take the used index
        from the ring."""
        self._desc, self._avail, self._used = desc, avail.cast("H"), used
        self._used16 = used.cast("H")
        if HAVE_C:
            self._bind_c(desc, avail, used)
        self._shadow_avail = self.last_avail_idx
        # the driver saw exactly what the used ring says (we may be a restarted backend)
        self.used_idx = self._used16[1]

    def _bind_c(self, desc: memoryview, avail: memoryview, used: memoryview) -> None:
        """The C helpers' view of the rings (`struct vu_vq`, its descriptor store)."""
        n = self.size
        self._cdesc = _ffi.from_buffer(desc)
        self._caddr = _ffi.new("uint64_t[]", n)
        self._clen = _ffi.new("uint32_t[]", n)
        self._cnread = _ffi.new("uint32_t *")
        self._cerr = _ffi.new("uint64_t[2]")
        cavail = _ffi.from_buffer(avail)
        cused = _ffi.from_buffer(used, require_writable=True)
        # descriptors one RX frame's chains may hold (vu_rx_batch), and as many chains:
        # a guest posting while we pop may give one frame more chains than the queue
        # size, but never more than descriptors
        cap = 2 * n + 64
        store = (_ffi.new("uint64_t[]", cap), _ffi.new("uint32_t[]", cap),
                 _ffi.new("uint32_t[]", 3 * cap))
        cq = _ffi.new("struct vu_vq *")
        cq.desc = self._cdesc
        cq.avail = _ffi.cast("uint16_t *", cavail)
        cq.used = _ffi.cast("uint8_t *", cused)
        self._pa = int(_ffi.cast("uintptr_t", cavail))
        self._pu = int(_ffi.cast("uintptr_t", cused))
        if self._pa % 2 or self._pu % 4:  # a region mapped at an odd offset
            self.unmap()
            raise RingError(f"queue {self.index}: rings misaligned in our mapping")
        cq.n = n
        cq.addr, cq.len, cq.chains = store
        cq.cap = cap
        self._cq = cq
        self._cq_gen = -1
        self._cexports = [cavail, cused, store]

    def unmap(self) -> None:
        self._cq = None
        self._pa = self._pu = 0
        if self._cexports:
            _ffi.release(self._cexports[0])
            _ffi.release(self._cexports[1])
            self._cexports = []
        if self._cdesc is not None:
            _ffi.release(self._cdesc)
            self._cdesc = None
        for v in (self._desc, self._avail, self._used16, self._used):
            if v is not None:
                v.release()
        self._desc = self._avail = self._used = self._used16 = None
        self._memory = None

    def is_stale(self, memory: GuestMemory) -> bool:
        return self._desc is not None and self._mem_gen != memory.generation

    def reset(self) -> None:
        """Back to the initial state (RESET_DEVICE, disconnect). Fds are the caller's."""
        self.unmap()
        self.size = 0
        self.addr = None
        self.last_avail_idx = self.used_idx = 0
        self.started = self.enabled = self.broken = self.polling = False
        self.disabled = False
        self._signalled_used = None
        self._armed = None
        self._pending = 0
        self._unsignalled = False
        self._shadow_avail = 0

    def set_base(self, base: int) -> None:
        """SET_VRING_BASE: the front-end sets the ring up afresh (a broken ring too: the
        guest's driver reset the device)."""
        self.broken = False
        self.last_avail_idx = base & 0xFFFF
        self.used_idx = base & 0xFFFF
        self._shadow_avail = self.last_avail_idx
        self._signalled_used = None

    def start(self) -> None:
        if not self.started:
            self.started = True
            self._signalled_used = None
            self._armed = None
            self._resync_base()

    def _resync_base(self) -> None:
        """Start from the used ring's index when the base we were given disagrees with it.

        A front-end that reconnects to a restarted backend may not know where the old one
        stopped: DPDK's virtio-user in server mode sends base 0 with its used ring at 40,000
        (the avail index then looks 40,000 ahead: a broken ring), and a backend killed with
        chains in hand left the used ring behind the avail index it had reached. The used
        ring is what the driver saw: resuming there (as DPDK's own vhost library does)
        leaves nothing stuck; chains the dead backend took and never returned are taken
        again (a TX frame may go out twice, an RX buffer is filled anew)."""
        if self._used16 is None:
            return
        used = self._used16[1]
        if used == self.last_avail_idx and used == self.used_idx:
            return
        log.warning("queue %d: started at avail index %d, but the driver's used ring is at "
                    "%d: resuming there", self.index, self.last_avail_idx, used)
        self.stats.resyncs += 1
        self.last_avail_idx = self._shadow_avail = self.used_idx = used

    def stop(self) -> int:
        """GET_VRING_BASE: publish what was used, stop, return the next avail index."""
        self.publish()
        self.started = False
        return self.last_avail_idx

    def mark_broken(self, why: str) -> None:
        if not self.broken:
            log.error("queue %d: %s; queue stopped until the device is reset", self.index, why)
        self.broken = True
        self.stats.errors += 1

    # -- ring words shared with the driver (see the note at the top) --------------------
    def _avail_word(self, i: int) -> int:
        """u16 number `i` of the avail ring (0 flags, 1 idx, 2 + size used_event)."""
        if self._pa:
            return _lib.vu_ld16(self._pa + 2 * i)
        return self._avail[i]

    def _set_used_word(self, i: int, value: int) -> None:
        """u16 number `i` of the used ring (0 flags, 1 idx, 2 + 4 * size avail_event)."""
        if self._pu:
            _lib.vu_st16(self._pu + 2 * i, value)
        else:
            self._used16[i] = value

    # -- the avail side --------------------------------------------------------------
    def avail_idx(self) -> int:
        return self._avail_word(1)

    def has_avail(self) -> bool:
        if not self.ready:
            return False
        if self.last_avail_idx != self._shadow_avail:
            return True
        self._shadow_avail = self._avail_word(1)
        return self._shadow_avail != self.last_avail_idx

    def avail_moved(self) -> bool:
        """Whether the driver made buffers available since we last read the avail
        index (not merely: some are unused, as has_avail)."""
        return self.ready and self._avail_word(1) != self._shadow_avail

    def pop(self) -> Chain | None:
        """The next available chain, validated, or None. RingError marks the queue
        broken (and is re-raised so the caller can count and report it)."""
        if not self.ready:
            return None
        last = self.last_avail_idx
        if last == self._shadow_avail:
            self._shadow_avail = self._avail_word(1)
            if last == self._shadow_avail:
                return None
        n = self.size
        if (self._shadow_avail - last) & 0xFFFF > n:
            self.mark_broken(f"avail index {self._shadow_avail} is more than the queue size "
                             f"({n}) ahead of {last}")
            raise RingError("avail index too far ahead")
        head = self._avail[2 + (last & (n - 1))]
        self.last_avail_idx = (last + 1) & 0xFFFF
        try:
            chain = self._walk(head)
        except (RingError, GuestMemoryError) as e:
            self.mark_broken(str(e))
            raise RingError(str(e)) from None
        self.stats.popped += 1
        return chain

    def unpop(self, count: int = 1) -> None:
        """Give back the last `count` popped chains (nothing was written to them)."""
        self.last_avail_idx = (self.last_avail_idx - count) & 0xFFFF
        self.stats.popped -= count

    def _walk(self, head: int) -> Chain:
        if USE_C and self._cdesc is not None:
            return self._walk_c(head)
        n = self.size
        if head >= n:
            raise RingError(f"head index {head} ≥ queue size {n}")
        descs: memoryview | bytes = self._desc
        table_len = n
        chain = Chain(head)
        readable, writable = chain.readable, chain.writable
        i = head
        count = 0
        indirect = False
        unpack = DESC.unpack_from
        while True:
            addr, length, flags, nxt = unpack(descs, i * DESC_SIZE)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self.indirect:
                    raise RingError("indirect descriptor without INDIRECT_DESC negotiated")
                if indirect:
                    raise RingError("nested indirect descriptor table")
                if flags & VIRTQ_DESC_F_NEXT or count:
                    raise RingError("indirect descriptor inside a chain")
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > n:
                    raise RingError(f"indirect table of {length} bytes (queue size {n})")
                pieces = self._memory.gpa_segments(addr, length)
                descs = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                table_len = length // DESC_SIZE
                indirect = True
                i = 0
                continue
            if flags & VIRTQ_DESC_F_WRITE:
                writable.append((addr, length))
            elif writable:
                raise RingError("readable descriptor after a writable one")
            else:
                readable.append((addr, length))
            count += 1
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            if count >= table_len:
                raise RingError(f"descriptor chain longer than {table_len} (a loop?)")
            i = nxt
            if i >= table_len:
                raise RingError(f"next index {i} ≥ table size {table_len}")

    def _walk_c(self, head: int) -> Chain:
        """`_walk` by vu_walk: the same checks, the same errors."""
        regs, nregs = self._memory.c_table()
        count = _lib.vu_walk(self._cdesc, self.size, head, self.indirect, regs, nregs,
                             self._caddr, self._clen, self._cnread, self._cerr)
        if count < 0:
            raise _walk_error(count, self._cerr, self.size)
        if count == 1:  # most chains: one buffer
            pair = [(self._caddr[0], self._clen[0])]
            if self._cnread[0]:
                return Chain(head, pair, [])
            return Chain(head, [], pair)
        nread = self._cnread[0]
        pairs = list(zip(_ffi.unpack(self._caddr, count), _ffi.unpack(self._clen, count),
                         strict=True))
        return Chain(head, pairs[:nread], pairs[nread:])

    # -- batches in C (vu_tx_batch, vu_rx_batch): one call for many chains --------------
    @property
    def batched(self) -> bool:
        """Whether the C batch helpers serve this queue (built, mapped, not switched off)."""
        return USE_C and self._cq is not None

    def _cq_in(self):
        cq = self._cq_sync()
        _lib.vu_enter(cq, self.last_avail_idx, self._shadow_avail, self.used_idx)
        return cq

    def _cq_sync(self):
        """The C state with the current region table, features and dirty log."""
        cq = self._cq
        mem = self._memory
        if mem.generation != self._cq_gen or self.indirect != cq.indirect_ok:
            # the region table (rebuilt when the memory table changes) and the features
            regs, nregs = mem.c_table()
            cq.regs = regs
            cq.nregs = nregs
            cq.indirect_ok = self.indirect
            self._cq_gen = mem.generation
        dl = mem.log
        if dl is None:
            cq.log = _ffi.NULL
        else:
            cq.log = dl.c
            cq.log_size = dl.size
        return cq

    def _cq_out(self, cq) -> None:
        self.last_avail_idx = cq.last_avail
        self._shadow_avail = cq.shadow_avail
        self.used_idx = cq.used_idx
        self._cq_count(cq)

    def _cq_count(self, cq) -> None:
        self.stats.popped += cq.popped
        self.stats.batched += cq.popped
        self.stats.used += cq.pushed
        self._pending += cq.pushed

    def pop_tx_batch(self, b, limit: int, hdr: int, max_total: int,
                     want_hdr: bool) -> tuple[int, int]:
        """Pop and walk up to `limit` chains into the TxBatch `b` (see vu_tx_batch).
        Returns how many entries were filled and the status: 0, or the VU_E_* code of a
        broken rule met after them. The caller hands the entries on and completes them
        first (as the per-frame path would have), then calls `batch_failed(status)`,
        or `batch_retract(status)` if it gives them back instead."""
        if not self.ready:
            return 0, 0
        cq = self._cq_in()
        k = _lib.vu_tx_batch(cq, min(limit, b.size), hdr, max_total, want_hdr, b.scratch,
                             b.scratch_size, b.heads, b.kind, b.off, b.flen, b.aux, b.vhdr)
        self._cq_out(cq)
        return k, cq.status

    def discard_tx(self, b, limit: int, hdr: int, max_total: int, drops) -> tuple[int, int, int]:
        """Pop, check and complete up to `limit` TX chains without handing their frames
        on (see vu_tx_discard), drops by kind added to `drops`. Returns (chains
        completed, drops among them, their frames' bytes, status as pop_tx_batch's)."""
        if not self.ready:
            return 0, 0, 0, 0
        cq = self._cq_in()
        k = _lib.vu_tx_discard(cq, limit, hdr, max_total, b.scratch, b.scratch_size, b.size,
                               b.heads, b.kind, b.off, b.flen, b.aux, b.vhdr, drops)
        self._cq_out(cq)
        return k, cq.tx_drops, cq.tx_bytes, cq.status

    def discard_tx_select(self, b, limit: int, hdr: int, max_total: int, drops,
                          want_hdr: bool, sel, ctx) -> tuple[int, int, int, int, int]:
        """`discard_tx` that offers each batch to the select `sel(ctx, ...)` first (see
        vu_tx_discard_select): returns its five values, the last the length of the batch
        it stopped at because `sel` selected a frame in it (0 if none did). That batch
        is popped but neither counted nor completed: its entries are in `b` (`b.selected`
        says which frames `sel` chose), for the caller to hand on and push."""
        if not self.ready:
            return 0, 0, 0, 0, 0
        cq = self._cq_in()
        k = _lib.vu_tx_discard_select(cq, limit, hdr, max_total, want_hdr, b.scratch,
                                      b.scratch_size, b.size, b.heads, b.kind, b.off, b.flen,
                                      b.aux, b.vhdr, drops, sel, ctx, b.frames, b.selected,
                                      b.pending)
        self._cq_out(cq)
        return k, cq.tx_drops, cq.tx_bytes, cq.status, b.pending[0]

    def batch_failed(self, status: int) -> RingError:
        """Mark the queue broken for the rule a batch call reported; the error to raise
        (the C call leaves its arguments in the state until the next batch call)."""
        cq = self._cq
        if status == _lib.VU_E_AHEAD:
            self.mark_broken(f"avail index {cq.err[0]} is more than the queue size "
                             f"({self.size}) ahead of {cq.err[1]}")
            return RingError("avail index too far ahead")
        e = _walk_error(status, cq.err, self.size)
        self.mark_broken(str(e))
        return RingError(str(e))

    def batch_retract(self, status: int) -> None:
        """Give back the head whose walk broke a rule (it is met again next time)."""
        if status and status != _lib.VU_E_AHEAD:
            self.last_avail_idx = (self.last_avail_idx - 1) & 0xFFFF

    def retract_batch(self, heads, done: int, count: int, status: int) -> None:
        """Give back entries `done`..`count` of a TX batch (not handed on) and the head
        whose walk broke a rule after them, if any."""
        self.unpop(count - done)
        self.stats.batched -= count - done
        self.batch_retract(status)

    def push_zero(self, heads, count: int) -> None:
        """Push `count` used elements (heads[i], 0): TX chains done with."""
        if count:
            cq = self._cq_in()
            _lib.vu_push_zero(cq, heads, count)
            self._cq_out(cq)

    def fill_rx(self, data, lens, count: int, hdrs, hdr: int,
                mergeable: bool) -> tuple[int, int, RingError | None, bool]:
        """Write `count` frames into RX buffers (see vu_rx_batch). Returns (frames
        consumed, buffers outside guest memory, the RingError that stopped it or None,
        whether the next frame needs the per-frame path); the consumed frames' bytes and
        too-small drops are left in `_cq.rx_bytes` / `_cq.rx_small`."""
        if not self.ready:
            return 0, 0, None, False
        cq = self._cq_in()
        k = _lib.vu_rx_batch(cq, hdr, mergeable, data, lens, count, hdrs, _ffi.NULL)
        self._cq_out(cq)
        if cq.log_outside:
            self._memory.log.count_outside(cq.log_outside)
            cq.log_outside = 0
        status = cq.status
        if status == _lib.VU_RX_SLOW:
            return k, cq.bad, None, True
        if status < 0:
            return k, cq.bad, self.batch_failed(status), False
        return k, cq.bad, None, False

    # -- the used side ---------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Put one used element; visible to the driver after `publish()`."""
        n = self.size
        USED_ELEM.pack_into(self._used, 4 + 8 * (self.used_idx & (n - 1)), head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._pending += 1
        self.stats.used += 1

    def publish(self) -> bool:
        """Make pushed elements visible: one release store of the used idx after the
        elements (virtio 1.2 §2.7.8: len and the buffer are written before idx). Returns
        whether anything was published."""
        if not self._pending or self._used is None:
            return False
        self._set_used_word(1, self.used_idx)
        self._pending = 0
        self._unsignalled = True
        self._log_ring()
        return True

    def take_unsignalled(self) -> bool:
        """Whether used entries were published since the last call (the caller then
        decides on one interrupt for all of them with `should_notify`)."""
        was, self._unsignalled = self._unsignalled, False
        return was

    def should_notify(self) -> bool:
        """After publishing: does the driver want an interrupt for what we used?"""
        if self._used is None:
            return False
        fence()  # our used idx store must be visible before we read the driver's wish
        if self.event_idx:
            new = self.used_idx
            old = self._signalled_used
            self._signalled_used = new
            if old is None:
                return True
            used_event = self._avail_word(2 + self.size)
            return vring_need_event(used_event, new, old)
        return not (self._avail_word(0) & VIRTQ_AVAIL_F_NO_INTERRUPT)

    def enable_notification(self) -> bool:
        """Ask for a kick when the driver makes more buffers available than we have seen
        (with EVENT_IDX: avail_event = the avail index we read, as Linux vhost does — not
        our consumption point, or an RX queue waiting for enough buffers for a large frame
        would never be kicked). Returns True if the index moved meanwhile (re-checked after
        the fence, or a kick sent in between would be lost)."""
        if not self.ready:
            return False
        seen = self._avail_word(1)
        self._shadow_avail = seen
        if seen == self._armed:
            return False  # armed at this index and nothing published since: still armed
        if self.event_idx:
            self._set_used_word(2 + 4 * self.size, seen)
        else:
            self._set_used_word(0, 0)
        self._log_ring()
        self._armed = seen
        fence()
        return self._avail_word(1) != seen

    def disable_notification(self) -> None:
        """While we come back to the queue ourselves: no kicks (used.flags NO_NOTIFY;
        with EVENT_IDX avail_event is simply not moved on, so it falls behind)."""
        if self.ready and not self.event_idx and self._armed is not None:
            self._set_used_word(0, VIRTQ_USED_F_NO_NOTIFY)
            self._log_ring()
            self._armed = None


def _walk_error(code: int, err, n: int) -> Exception:
    """The exception `_walk` raises for the rule vu_walk reports broken."""
    a, b = err[0], err[1]
    lib = _lib
    if code == lib.VU_E_HEAD:
        return RingError(f"head index {a} ≥ queue size {b}")
    if code == lib.VU_E_NO_INDIRECT:
        return RingError("indirect descriptor without INDIRECT_DESC negotiated")
    if code == lib.VU_E_NESTED:
        return RingError("nested indirect descriptor table")
    if code == lib.VU_E_INDIRECT_IN_CHAIN:
        return RingError("indirect descriptor inside a chain")
    if code == lib.VU_E_INDIRECT_LEN:
        return RingError(f"indirect table of {a} bytes (queue size {b})")
    if code == lib.VU_E_READ_AFTER_WRITE:
        return RingError("readable descriptor after a writable one")
    if code == lib.VU_E_TOO_LONG:
        return RingError(f"descriptor chain longer than {a} (a loop?)")
    if code == lib.VU_E_NEXT:
        return RingError(f"next index {a} ≥ table size {b}")
    if code == lib.VU_E_NO_REGION:
        return GuestMemoryError(f"guest address {a:#x} is in no memory region")
    if code == lib.VU_E_OVERFLOW:
        return GuestMemoryError(f"guest buffer {a:#x}+{b:#x} overflows")
    return RingError(f"descriptor chain error {code}")  # pragma: no cover
