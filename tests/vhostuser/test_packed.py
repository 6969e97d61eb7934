"""The packed ring's device side (vhostuser/packed.py) against a driver written here from
the spec (virtio 1.2 §2.8): chains, indirect tables, wrap counters over many rounds, the
used descriptors a batch makes visible at once, event suppression both ways, vhost-user
bases — and the packed twins of ADVERSARIAL.md's descriptor and ring cases (8-11, 13-14):
every broken rule stops the queue with a RingError, never a crash, a loop or an access
outside guest memory. The real drivers (Linux on QEMU 7.2 and 10, DPDK's virtio-user)
are in tests/e2e/test_packed.py and tests/vhostuser/test_dpdk.py."""

from __future__ import annotations

import struct

import pytest

from vhostuser.errors import RingError
from vhostuser.features import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from vhostuser.memory import GuestMemory, Region
from vhostuser.packed import (
    EVENT_DESC,
    EVENT_DISABLE,
    EVENT_ENABLE,
    F_AVAIL,
    F_USED,
    PackedVirtqueue,
)
from vhostuser.protocol import VringAddr

PDESC = struct.Struct("<QIHH")
SIZE = 16
RING, DRIVER, DEVICE, BUFS = 0x1000, 0x2000, 0x2100, 0x4000
W = VIRTQ_DESC_F_WRITE


class Driver:
    """The driver side, per virtio 1.2 §2.8: descriptors written in order, the first's
    flags last; used descriptors read at our used position with our wrap counter."""

    def __init__(self, q: PackedVirtqueue, mem: bytearray) -> None:
        self.q, self.mem = q, mem
        self.avail, self.avail_wrap = 0, True
        self.used, self.used_wrap = 0, True
        self.ndesc: dict[int, int] = {}

    def _flags(self, wrap: bool) -> int:
        return F_AVAIL if wrap else F_USED

    def add(self, bid: int, bufs: list[tuple[int, int, int]], *, publish: bool = True,
            indirect: tuple[int, int] | None = None) -> None:
        """One buffer: `bufs` as (addr, len, flags) descriptors in the ring, or one
        INDIRECT descriptor pointing at (addr, len)."""
        if indirect is not None:
            bufs = [(indirect[0], indirect[1], VIRTQ_DESC_F_INDIRECT)]
        i, wrap = self.avail, self.avail_wrap
        first = None
        for k, (addr, length, flags) in enumerate(bufs):
            f = flags | (VIRTQ_DESC_F_NEXT if k < len(bufs) - 1 else 0) | self._flags(wrap)
            if k == 0:
                first = (i, f)
                PDESC.pack_into(self.mem, RING + 16 * i, addr, length, bid, 0)
            else:
                PDESC.pack_into(self.mem, RING + 16 * i, addr, length, bid, f)
            i += 1
            if i == SIZE:
                i, wrap = 0, not wrap
        if publish:
            struct.pack_into("<H", self.mem, RING + 16 * first[0] + 14, first[1])
        self.avail, self.avail_wrap = i, wrap
        self.ndesc[bid] = 1 if indirect is not None else len(bufs)

    def reap(self) -> list[tuple[int, int]]:
        out = []
        while True:
            _, length, bid, flags = PDESC.unpack_from(self.mem, RING + 16 * self.used)
            avail, used = bool(flags & F_AVAIL), bool(flags & F_USED)
            if avail != used or used != self.used_wrap:
                return out
            out.append((bid, length))
            self.used += self.ndesc.pop(bid)
            if self.used >= SIZE:
                self.used -= SIZE
                self.used_wrap = not self.used_wrap

    def event(self, flags: int, off: int = 0, wrap: bool = True) -> None:
        struct.pack_into("<HH", self.mem, DRIVER, off | (0x8000 if wrap else 0), flags)


@pytest.fixture
def ring():
    raw = bytearray(0x10000)
    mem = GuestMemory()
    mem.regions.append(Region(0, len(raw), 0, 0, None, memoryview(raw)))
    q = PackedVirtqueue(0)
    q.size = SIZE
    q.addr = VringAddr(0, 0, RING, DEVICE, DRIVER, 0)
    q.indirect = True
    q.map(mem)
    q.start()
    q.enabled = True
    return q, Driver(q, raw), raw


def test_chains_indirect_and_used_lengths(ring):
    q, drv, mem = ring
    drv.add(7, [(BUFS, 100, 0)])
    drv.add(9, [(BUFS + 0x100, 12, 0), (BUFS + 0x200, 1500, W), (BUFS + 0x800, 1500, W)])
    PDESC.pack_into(mem, 0x3000, BUFS + 0x1000, 64, 0, 0)
    PDESC.pack_into(mem, 0x3010, BUFS + 0x1100, 2048, 0, W | VIRTQ_DESC_F_NEXT)  # NEXT
    PDESC.pack_into(mem, 0x3020, BUFS + 0x1900, 2048, 0, W)  # ignored: every entry counts
    drv.add(3, [], indirect=(0x3000, 48))
    a, b, c = q.pop(), q.pop(), q.pop()
    assert q.pop() is None
    assert (a.head, a.readable, a.writable) == (7, [(BUFS, 100)], [])
    assert (b.head, b.readable) == (9, [(BUFS + 0x100, 12)])
    assert b.writable == [(BUFS + 0x200, 1500), (BUFS + 0x800, 1500)]
    assert (c.head, c.readable) == (3, [(BUFS + 0x1000, 64)])
    assert c.writable == [(BUFS + 0x1100, 2048), (BUFS + 0x1900, 2048)]
    q.push(7, 0)
    q.push(9, 1234)
    q.push(3, 99)
    assert drv.reap() == []  # the batch's first used descriptor waits for publish
    assert q.publish()
    assert drv.reap() == [(7, 0), (9, 1234), (3, 99)]
    assert (q.last_avail_idx, q.used_idx) == (5, 5)  # 1 + 3 ring descriptors + 1


def test_many_rounds_through_the_wrap(ring):
    """Chains of 1 to 3 descriptors for 40 rounds of a 16-entry ring: both wrap counters
    flip where they should and every buffer comes back once, in order."""
    q, drv, _ = ring
    bid = 0
    for rnd in range(200):
        n = 1 + rnd % 3
        drv.add(bid, [(BUFS + 0x100 * k, 64, W) for k in range(n)])
        chain = q.pop()
        assert chain is not None and chain.head == bid and len(chain.writable) == n
        q.push(bid, 10 * n)
        q.publish()
        assert drv.reap() == [(bid, 10 * n)]
        bid = (bid + 5) % 1000
    assert q.avail_wrap == drv.avail_wrap and q.last_avail_idx == drv.avail


def test_unpop_gives_back_the_last_chains(ring):
    q, drv, _ = ring
    for bid in (1, 2, 3):
        drv.add(bid, [(BUFS, 64, W), (BUFS + 64, 64, W)])
    first = [q.pop().head for _ in range(3)]
    q.unpop(2)
    assert [q.pop().head for _ in range(2)] == first[1:]
    for bid in first:
        q.push(bid, 1)
    q.publish()
    assert [b for b, _ in drv.reap()] == [1, 2, 3]


def test_a_descriptor_not_yet_published_is_not_taken(ring):
    q, drv, _ = ring
    drv.add(1, [(BUFS, 64, 0)], publish=False)
    assert not q.has_avail() and q.pop() is None


def test_ids_the_driver_repeats_do_not_confuse_us(ring):
    """The buffer id is the driver's token: two buffers with one id come back with it, in
    the order taken, each advancing our used position by its own length."""
    q, drv, _ = ring
    drv.add(4, [(BUFS, 64, W), (BUFS + 64, 64, W)])
    drv.ndesc[4] = 2
    PDESC.pack_into(drv.mem, RING + 32, BUFS, 64, 4, F_AVAIL)  # id 4 again, one descriptor
    drv.avail = 3
    a, b = q.pop(), q.pop()
    assert a.head == b.head == 4
    q.push(4, 1)
    q.push(4, 2)
    q.publish()
    assert q.used_idx == 3


@pytest.mark.parametrize("case", [
    "chain longer than the ring", "indirect not negotiated", "indirect with next",
    "indirect table of 0", "indirect table not a multiple of 16",
    "indirect table larger than the ring", "nested indirect", "readable after writable",
    "indirect table outside memory"])
def test_broken_rules_stop_the_queue(ring, case):
    q, drv, mem = ring
    if case == "chain longer than the ring":
        for i in range(SIZE):  # every descriptor says NEXT: it would wrap forever
            PDESC.pack_into(mem, RING + 16 * i, BUFS, 0, 0, VIRTQ_DESC_F_NEXT | F_AVAIL)
    elif case == "indirect not negotiated":
        q.indirect = False
        drv.add(1, [], indirect=(0x3000, 16))
    elif case == "indirect with next":
        drv.add(1, [(0x3000, 16, VIRTQ_DESC_F_INDIRECT), (BUFS, 64, 0)])
    elif case == "indirect table of 0":
        drv.add(1, [], indirect=(0x3000, 0))
    elif case == "indirect table not a multiple of 16":
        drv.add(1, [], indirect=(0x3000, 24))
    elif case == "indirect table larger than the ring":
        drv.add(1, [], indirect=(0x3000, 16 * (SIZE + 1)))
    elif case == "nested indirect":
        PDESC.pack_into(mem, 0x3000, 0x3100, 16, 0, VIRTQ_DESC_F_INDIRECT)
        drv.add(1, [], indirect=(0x3000, 16))
    elif case == "readable after writable":
        drv.add(1, [(BUFS, 64, W), (BUFS + 64, 64, 0)])
    elif case == "indirect table outside memory":
        drv.add(1, [], indirect=(0xFFFF_FFFF_FFFF_FFF0, 32))
    with pytest.raises(RingError):
        q.pop()
    assert q.broken and q.stats.errors == 1
    assert q.pop() is None  # stopped: nothing more is read


def test_the_drivers_event_suppression_decides_interrupts(ring):
    q, drv, _ = ring

    def use(n: int) -> bool:
        for k in range(n):
            drv.add(k, [(BUFS, 64, W)])
            q.pop()
            q.push(k, 1)
        q.publish()
        drv.reap()
        return q.should_notify()

    assert use(1)  # the first: always
    drv.event(EVENT_DISABLE)
    assert not use(1)
    drv.event(EVENT_ENABLE)
    assert use(1)
    q.event_idx = True
    drv.event(EVENT_DESC, off=q.used_idx + 1, wrap=q.used_wrap)  # two ahead: not yet
    assert not use(1)
    assert use(1)  # the descriptor it named is used now
    drv.event(EVENT_DESC, off=(q.used_idx + 2) % SIZE, wrap=q.used_wrap)
    assert not use(1)
    drv.event(EVENT_DESC, off=q.used_idx, wrap=not q.used_wrap)  # a round behind/ahead
    assert not use(1)


def test_our_event_suppression_asks_for_kicks_or_not(ring):
    q, drv, mem = ring
    assert q.pop() is None
    assert not q.enable_notification()  # nothing available meanwhile
    assert struct.unpack_from("<HH", mem, DEVICE)[1] == EVENT_ENABLE
    q.disable_notification()  # while we come back by ourselves
    assert struct.unpack_from("<HH", mem, DEVICE)[1] == EVENT_DISABLE
    drv.add(1, [(BUFS, 64, 0)])
    assert q.enable_notification()  # a buffer came where pop last found none
    assert struct.unpack_from("<HH", mem, DEVICE)[1] == EVENT_ENABLE


def test_vhost_user_bases():
    q = PackedVirtqueue(0)
    q.set_base(0x8000 | 5)  # avail 5, wrap 1; no upper half: used the same
    assert (q.last_avail_idx, q.avail_wrap, q.used_idx, q.used_wrap) == (5, True, 5, True)
    q.set_base(7 | (0x8000 | 3) << 16)  # QEMU: avail 7 wrap 0, used 3 wrap 1
    assert (q.last_avail_idx, q.avail_wrap, q.used_idx, q.used_wrap) == (7, False, 3, True)
    assert q.base() == 7 | (0x8000 | 3) << 16


def _reborn(q: PackedVirtqueue, base: int) -> PackedVirtqueue:
    """A new backend on the same ring after the old one was killed: QEMU hands it the
    base it read last (it restores none for packed rings), then starts the ring."""
    new = PackedVirtqueue(0)
    new.size, new.addr, new.indirect = q.size, q.addr, q.indirect
    new.map(q._memory)
    new.set_base(base)
    new.start()
    new.enabled = True
    return new


@pytest.mark.parametrize("seed", range(16))
def test_a_killed_backend_resumes_where_the_ring_says(ring, seed):
    """The driver posts, the device takes, uses and publishes at random, and is killed
    now and then: with chains taken and not used, or used descriptors whose batch was
    not published yet (the first one's flags held back). The new backend gets a stale
    base (the first one, or one read many rounds earlier, as QEMU gives): every buffer
    still comes back to the driver exactly once and in order, over many wraps. (One
    ring descriptor per buffer, as a Linux guest posts them: single buffers or indirect
    tables.)"""
    import random

    q, drv, _ = ring
    rng = random.Random(seed)
    bases = [q.base()]
    posted: list[int] = []
    returned: list[int] = []
    size_of: dict[int, int] = {}
    free, bid, taken, kills = SIZE, 0, [], 0

    def reap() -> None:
        nonlocal free
        for b, _ in drv.reap():
            returned.append(b)
            free += size_of.pop(b)

    for _ in range(400):
        while rng.random() < 0.6:
            n = 1
            if n > free:
                break
            if rng.random() < 0.3:
                drv.add(bid, [], indirect=(0x3000, 32))
            else:
                drv.add(bid, [(BUFS, 64, W)])
            posted.append(bid)
            size_of[bid] = n
            free -= n
            bid = (bid + 1) % 1000
        for _ in range(rng.randrange(6)):
            chain = q.pop()
            if chain is None:
                break
            taken.append(chain.head)
        used = rng.randrange(len(taken) + 1)
        for head in taken[:used]:
            q.push(head, 1)
        del taken[:used]
        if rng.random() < 0.6:
            q.publish()
        if rng.random() < 0.1:
            bases.append(q.base())  # a GET_VRING_BASE some time before the kill
        reap()
        if rng.random() < 0.08:
            q = _reborn(q, rng.choice(bases))
            taken = []
            kills += 1
    for _ in range(4 * SIZE):  # no more kills: everything outstanding comes back
        taken += [c.head for c in iter(q.pop, None)]
        for head in taken:
            q.push(head, 1)
        taken = []
        q.publish()
        reap()
    assert kills > 10
    assert returned == posted


def test_a_ring_with_chains_keeps_the_base_it_is_given(ring):
    """Chains of several ring descriptors (NEXT on available ones): the used position
    cannot be read from the flags (a used chain's tails still look available), so the
    base the front-end gives stands."""
    q, drv, _ = ring
    PDESC.pack_into(drv.mem, 0x3000, BUFS, 64, 0, W)
    PDESC.pack_into(drv.mem, 0x3010, BUFS + 64, 64, 0, W)
    for bid in range(4):
        drv.add(bid, [(BUFS, 64, W), (BUFS + 64, 64, W)])
    for _ in range(2):
        q.push(q.pop().head, 1)
    q.publish()
    new = _reborn(q, 0x8000 | 0x8000 << 16)
    assert (new.used_idx, new.last_avail_idx, new.stats.resyncs) == (0, 0, 0)
