"""The device side of a packed virtqueue (virtio 1.2 §2.8), hardened as the split one.

One ring of 16-byte descriptors (addr, len, id, flags) is shared both ways: the driver
makes a descriptor available by setting its AVAIL flag to the driver's wrap counter and
USED to the opposite; we hand a buffer back by writing a used descriptor (the buffer's
id, the bytes written, AVAIL and USED both equal to our wrap counter) at our own used
position, which then moves on by as many descriptors as the buffer took. The counters
flip each time a position passes the end of the ring. A chain is consecutive descriptors
linked by NEXT, its buffer id in the last one; an INDIRECT descriptor stands alone and
points to a table whose every entry belongs to the buffer. Two 4-byte event suppression
structures replace the split ring's flags and event indices: the driver's (the "driver
area", SET_VRING_ADDR's avail address) says when it wants an interrupt, ours (the
"device area", the used address) when we want a kick.

`PackedVirtqueue` keeps `Virtqueue`'s interface, so the net device drives both alike,
through the C batch helpers too (vu_tx_batch, vu_rx_batch: `struct vu_vq` has a packed
mode that walks and pushes as this module does, rule for rule; the head it hands back
carries the buffer's ring descriptors in its upper 16 bits). The driver sees a batch of
used descriptors at once: the first one's flags are written last, by `publish` (a
mergeable RX frame spans several, and Linux drops a frame whose later buffers are not
there yet); the C path holds them back the same way.

In vhost-user a packed ring's base (SET/GET_VRING_BASE) is the next avail position with
the driver's wrap counter in bit 15, and, from QEMU, the used position and counter in the
upper 16 bits (0 there: the same as the avail half).
"""

from __future__ import annotations

import logging
import struct
from collections import deque

import vhostuser.virtqueue as _vq
from vhostuser.errors import GuestMemoryError, RingError
from vhostuser.features import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from vhostuser.virtqueue import Chain, Virtqueue, fence, vring_need_event

log = logging.getLogger(__name__)

PDESC = struct.Struct("<QIHH")  # addr, len, id, flags
PDESC_SIZE = 16
_LEN = struct.Struct("<I")
F_AVAIL = 1 << 7
F_USED = 1 << 15
# The flags of a used descriptor written but held back for `publish` (the first of a
# batch): still available to the driver (its AVAIL/USED bits unchanged), and marked with
# INDIRECT|NEXT, which no driver posts (an indirect descriptor inside a chain), so that a
# backend started after we died can tell it from a buffer nobody used (`_ring_position`).
HELD_AVAIL = F_AVAIL | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT  # our wrap counter 1
HELD_USED = F_USED | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT  # 0
# event suppression flags (both structures: u16 off_wrap, u16 flags)
EVENT_ENABLE, EVENT_DISABLE, EVENT_DESC = 0, 1, 2


class PackedVirtqueue(Virtqueue):
    """One packed virtqueue seen from the device. `last_avail_idx`/`used_idx` are the
    next avail and used positions (0..size-1), with `avail_wrap`/`used_wrap`."""

    device_writes_desc = True  # used descriptors are written back in place

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self._packed_init()

    def _packed_init(self) -> None:
        self.avail_wrap = True  # both counters start at 1 (virtio 1.2 §2.8.1)
        self.used_wrap = True
        self._d16: memoryview | None = None  # the descriptor ring as u16 words
        # (id, descriptors) of chains popped and not yet pushed, oldest first: we use
        # buffers in the order they were made available, and a hostile driver's ids
        # (repeated, out of range) then cannot confuse us
        self._inflight: deque[tuple[int, int]] = deque()
        self._popped: list[tuple[int, bool]] = []  # positions before each pop (unpop)
        self._probe: tuple[int, bool] | None = None  # where pop last found nothing
        self._head_flags: tuple[int, int] | None = None  # held back until publish

    # -- configuration -------------------------------------------------------------
    @staticmethod
    def _areas(n: int) -> tuple[int, int, int, int]:
        """The descriptor ring and the two 4-byte event suppression structures."""
        return PDESC_SIZE * n, 4, 4, 4

    def _bind(self, desc: memoryview, driver: memoryview, device: memoryview) -> None:
        self._desc, self._d16 = desc, desc.cast("H")
        self._avail = driver.cast("H")  # the driver's: [0] off_wrap, [1] flags
        self._used, self._used16 = device, device.cast("H")  # ours
        if _vq.HAVE_C:
            self._bind_c(desc, driver, device)
            self._cq.packed = 1

    def unmap(self) -> None:
        if self._d16 is not None:
            self._d16.release()
            self._d16 = None
        super().unmap()

    def reset(self) -> None:
        super().reset()
        self.avail_wrap = self.used_wrap = True
        self._inflight.clear()
        self._popped.clear()
        self._probe = None
        self._head_flags = None

    def set_base(self, base: int) -> None:
        self.broken = False  # (as the split ring's: set up afresh)
        avail, used = base & 0xFFFF, base >> 16
        if not used:
            used = avail
        self.last_avail_idx, self.avail_wrap = avail & 0x7FFF, bool(avail & 0x8000)
        self.used_idx, self.used_wrap = used & 0x7FFF, bool(used & 0x8000)
        self._inflight.clear()
        self._popped.clear()
        self._probe = None
        self._signalled_used = None

    def base(self) -> int:
        """What GET_VRING_BASE answers (see the module docstring)."""
        avail = self.last_avail_idx | (0x8000 if self.avail_wrap else 0)
        used = self.used_idx | (0x8000 if self.used_wrap else 0)
        return avail | used << 16

    def stop(self) -> int:
        self.publish()
        self.started = False
        return self.base()

    def _resync_base(self) -> None:
        """Start where the ring says the device stopped, when the base disagrees.

        A packed ring keeps no used index in memory, and QEMU restores no packed base after
        a backend dies (its virtio_queue_packed_restore_last_avail_idx is empty): the new
        backend gets the base QEMU last read, perhaps thousands of descriptors behind. The
        ring's flags say where we are (see `_ring_position`); as on a split ring we resume
        at the used position, so chains the dead backend took and never returned are
        taken again. A used descriptor whose flags a dead backend held back for its
        publish (the first of a batch; its id and length are written) would keep the
        driver waiting there forever: its flags are written now."""
        if self._d16 is None:
            return
        found = self._ring_position()
        if found is None:
            return
        pos, wrap, held = found
        for i in held:
            self._d16[i * 8 + 7] = F_AVAIL | F_USED if self._d16[i * 8 + 7] == HELD_AVAIL else 0
        if held:
            fence()
            self._log_ring()
        elif (pos, wrap) == (self.used_idx, self.used_wrap):
            if (pos, wrap) != (self.last_avail_idx, self.avail_wrap):
                # (chains taken before a stop and never used: taken again)
                self.last_avail_idx, self.avail_wrap = pos, wrap
            return
        log.warning("queue %d: started at used position %d (wrap %d), but the ring says %d "
                    "(wrap %d)%s: resuming there", self.index, self.used_idx,
                    self.used_wrap, pos, wrap,
                    f"; {len(held)} held-back used descriptor(s) published" if held else "")
        self.stats.resyncs += 1
        self.last_avail_idx = self.used_idx = pos
        self.avail_wrap = self.used_wrap = wrap

    def _ring_position(self) -> tuple[int, bool, list[int]] | None:
        """(used position, its wrap counter, positions of held-back used descriptors) as
        the descriptors' flags show them, or None when they cannot tell.

        Every position was last written in the lap (of the driver, or ours after it) that
        its AVAIL bit names: the driver writes the bit of its wrap counter when it posts,
        and our used descriptors repeat it. Going round the ring, that bit therefore flips
        once, where the driver will post next (`a`; nowhere when a is 0, where it flips on
        the ring's end). The descriptors just before `a` that are still available are
        those we have not used: our used position is where that run starts. A used
        descriptor whose flags were held back for a publish that never came carries the
        HELD mark. This holds when every buffer is one ring descriptor; a ring showing
        chains (NEXT on an available descriptor, or an available one before the run)
        gives None; 2-descriptor chains, whose used ones show no NEXT, would be
        misread."""
        n, d16 = self.size, self._d16
        flags = [d16[i * 8 + 7] for i in range(n)]
        held = [i for i, f in enumerate(flags) if f in (HELD_AVAIL, HELD_USED)]

        def avail(i: int) -> bool:
            f = flags[i]
            return bool(f & F_AVAIL) != bool(f & F_USED) and f not in (HELD_AVAIL, HELD_USED)

        # One ring descriptor per buffer (a Linux guest: single buffers or indirect
        # tables) or nothing can be read: after a used chain its tails still look
        # available, so where our used position is would be a guess.
        if any(f & VIRTQ_DESC_F_NEXT for i, f in enumerate(flags) if avail(i)):
            return None
        bit = [bool(f & F_AVAIL) for f in flags]
        flips = [i for i in range(1, n) if bit[i] != bit[i - 1]]
        if len(flips) > 1:
            return None
        if flips:
            a, wrap_a = flips[0], bit[0]
        else:
            a, wrap_a = 0, not bit[0]
        run = 0
        while run < n and avail((a - run - 1) % n):
            run += 1
        pos, wrap = a - run, wrap_a
        if pos < 0:
            pos, wrap = pos + n, not wrap
        if any(avail((pos - k) % n) for k in range(1, n - run + 1)):
            return None  # available ones before ours: not a ring we wrote
        return pos, wrap, held

    # -- batches in C ------------------------------------------------------------------
    @property
    def batched(self) -> bool:
        """As the split ring's, while no chain the per-frame path popped is still out
        (buffers are used in the order they were taken)."""
        return _vq.USE_C and self._cq is not None and not self._inflight

    def _cq_in(self):
        cq = self._cq_sync()
        held = self._head_flags
        _vq._lib.vu_enter_packed(cq, self.last_avail_idx, self.avail_wrap, self.used_idx,
                                 self.used_wrap, -1 if held is None else held[0],
                                 0 if held is None else held[1])
        return cq

    def _cq_out(self, cq) -> None:
        self.last_avail_idx, self.avail_wrap = cq.last_avail, bool(cq.avail_wrap)
        self.used_idx, self.used_wrap = cq.used_idx, bool(cq.used_wrap)
        held = cq.held_pos
        self._head_flags = None if held < 0 else (held, cq.held_flags)
        probe = cq.probe_pos
        if probe != -2:  # where the last pop found nothing, or None after a chain
            self._probe = None if probe < 0 else (probe, bool(cq.probe_wrap))
        self._cq_count(cq)

    def batch_retract(self, status: int) -> None:
        """(A packed pop does not move past a chain whose walk fails.)"""

    def retract_batch(self, heads, done: int, count: int, status: int) -> None:
        i, wrap = self.last_avail_idx, self.avail_wrap
        for k in range(count - 1, done - 1, -1):
            i -= heads[k] >> 16
            if i < 0:
                i += self.size
                wrap = not wrap
        self.last_avail_idx, self.avail_wrap = i, wrap
        self.stats.popped -= count - done
        self.stats.batched -= count - done

    # -- the avail side --------------------------------------------------------------
    def _is_avail(self, i: int, wrap: bool) -> bool:
        flags = self._d16[i * 8 + 7]
        return bool(flags & F_AVAIL) == wrap and bool(flags & F_USED) != wrap

    def has_avail(self) -> bool:
        return self.ready and self._is_avail(self.last_avail_idx, self.avail_wrap)

    def avail_moved(self) -> bool:
        """Whether the driver made a descriptor available where `pop` last found none
        (an RX queue waiting for more buffers than it has)."""
        if not self.ready:
            return False
        probe = self._probe
        if probe is None:
            return self.has_avail()
        return self._is_avail(*probe)

    def pop(self) -> Chain | None:
        if not self.ready:
            return None
        i, wrap = self.last_avail_idx, self.avail_wrap
        if not self._is_avail(i, wrap):
            self._probe = (i, wrap)
            return None
        self._probe = None
        try:
            chain, count = self._walk_packed(i)
        except (RingError, GuestMemoryError) as e:
            self.mark_broken(str(e))
            raise RingError(str(e)) from None
        popped = self._popped
        popped.append((i, wrap))
        if len(popped) > 2 * self.size:  # only the last few are ever given back
            del popped[:self.size]
        i += count
        if i >= self.size:
            i -= self.size
            wrap = not wrap
        self.last_avail_idx, self.avail_wrap = i, wrap
        self._inflight.append((chain.head, count))
        self.stats.popped += 1
        return chain

    def unpop(self, count: int = 1) -> None:
        for _ in range(count):
            self.last_avail_idx, self.avail_wrap = self._popped.pop()
            self._inflight.pop()
        self.stats.popped -= count

    def _walk_packed(self, i: int) -> tuple[Chain, int]:
        """The chain at position `i` and how many ring descriptors it takes. Each
        descriptor is read once (the driver may rewrite it behind us)."""
        n = self.size
        desc = self._desc
        chain = Chain(0)
        readable, writable = chain.readable, chain.writable
        count = 0
        while True:
            addr, length, bid, flags = PDESC.unpack_from(desc, i * PDESC_SIZE)
            count += 1
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self.indirect:
                    raise RingError("indirect descriptor without INDIRECT_DESC negotiated")
                if count > 1 or flags & VIRTQ_DESC_F_NEXT:
                    raise RingError("indirect descriptor inside a chain")
                if length == 0 or length % PDESC_SIZE or length // PDESC_SIZE > n:
                    raise RingError(f"indirect table of {length} bytes (queue size {n})")
                pieces = self._memory.gpa_segments(addr, length)
                table = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                for k in range(length // PDESC_SIZE):  # every entry, NEXT or not
                    a, ln, _, f = PDESC.unpack_from(table, k * PDESC_SIZE)
                    if f & VIRTQ_DESC_F_INDIRECT:
                        raise RingError("nested indirect descriptor table")
                    _add(readable, writable, a, ln, f)
                chain.head = bid
                return chain, 1
            _add(readable, writable, addr, length, flags)
            if not flags & VIRTQ_DESC_F_NEXT:
                chain.head = bid
                return chain, count
            if count >= n:
                raise RingError(f"descriptor chain longer than {n} (a loop?)")
            i += 1
            if i == n:
                i = 0

    # -- the used side ---------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """A used descriptor for the oldest buffer popped; the first of a batch becomes
        visible (and the rest with it) at `publish`."""
        bid, count = self._inflight.popleft()
        if bid != head:  # (we push in the order we popped: a bug of ours if not)
            raise AssertionError(f"queue {self.index}: pushed id {head}, oldest is {bid}")
        i = self.used_idx
        d16 = self._d16
        _LEN.pack_into(self._desc, i * PDESC_SIZE + 8, written)
        d16[i * 8 + 6] = bid
        flags = F_AVAIL | F_USED if self.used_wrap else 0
        if self._head_flags is None:
            self._head_flags = (i, flags)
            d16[i * 8 + 7] = HELD_AVAIL if self.used_wrap else HELD_USED
        else:
            d16[i * 8 + 7] = flags
        i += count
        if i >= self.size:
            i -= self.size
            self.used_wrap = not self.used_wrap
        self.used_idx = i
        self._pending += 1
        self.stats.used += 1

    def publish(self) -> bool:
        if not self._pending or self._d16 is None:
            return False
        i, flags = self._head_flags
        self._head_flags = None
        fence()  # every other used descriptor (and the data) before the first's flags
        self._d16[i * 8 + 7] = flags
        self._pending = 0
        self._unsignalled = True
        self._log_ring()
        return True

    def should_notify(self) -> bool:
        """The driver's event suppression structure decides (virtio 1.2 §2.8.10): never
        (DISABLE), always (ENABLE), or with EVENT_IDX when the used descriptor it names
        (position and wrap counter in off_wrap) was among those written since the last
        interrupt."""
        if self._used is None:
            return False
        fence()
        new, old = self.used_idx, self._signalled_used
        self._signalled_used = new
        if old is None:
            return True
        flags = self._avail[1]
        if flags != EVENT_DESC or not self.event_idx:
            return flags != EVENT_DISABLE
        off_wrap = self._avail[0]
        off = off_wrap & 0x7FFF
        if new <= old:
            old -= self.size
        if bool(off_wrap >> 15) != self.used_wrap:
            off -= self.size
        return vring_need_event(off & 0xFFFF, new & 0xFFFF, old & 0xFFFF)

    def enable_notification(self) -> bool:
        """Ask for kicks (our structure's flags ENABLE); True when a descriptor became
        available meanwhile where we last found none (looked at after the fence)."""
        if not self.ready:
            return False
        if self._armed is None:
            self._used16[1] = EVENT_ENABLE
            self._log_ring()
            self._armed = 1
            fence()
        return self.avail_moved()

    def disable_notification(self) -> None:
        if self.ready and self._armed is not None:
            self._used16[1] = EVENT_DISABLE
            self._log_ring()
            self._armed = None


def _add(readable: list, writable: list, addr: int, length: int, flags: int) -> None:
    if flags & VIRTQ_DESC_F_WRITE:
        writable.append((addr, length))
    elif writable:
        raise RingError("readable descriptor after a writable one")
    else:
        readable.append((addr, length))


def use_layout(q: Virtqueue, packed: bool) -> None:
    """Make `q` a packed or a split queue (SET_FEATURES decides, before the rings are
    set up; a queue switched while mapped is unmapped and starts over)."""
    if isinstance(q, PackedVirtqueue) == packed:
        return
    # what the front-end set apart from the ring's contents stays (QEMU enables the rings
    # before it sends the features that pick the layout)
    kept = (q.size, q.addr, q.enabled, q.disabled, q.polling)
    q.unmap()
    q.__class__ = PackedVirtqueue if packed else Virtqueue
    if packed:
        q._packed_init()
    q.reset()
    q.size, q.addr, q.enabled, q.disabled, q.polling = kept
