"""A vhost-user front-end in Python: what QEMU and the guest's virtio-net driver do.

Tests and benchmarks use it to drive a back-end over a real unix socket with real shared
memory and real eventfds, without QEMU or a guest. Three layers, each usable alone:

* `GuestMemoryArea` — guest RAM: memfd-backed regions mapped MAP_SHARED, a guest physical
  address (gpa) for descriptors and a made-up front-end virtual address (uaddr, gpa +
  0x7f0000000000 by default) for ring addresses, so a back-end that mixes the two fails.
  Also a first-fit allocator for rings and buffers.
* `Virtqueue` — the driver half of a split virtqueue (virtio 1.2 §2.7): descriptor free
  list, chains (direct or indirect), avail ring publishing, used ring reaping, and the
  notification rules in both directions (EVENT_IDX or the ring flags).
* `VhostUserFrontend` — the vhost-user session (QEMU docs/interop/vhost-user.rst), and
  `NetFrontend`, virtio-net on top of it (RX queue 2n, TX queue 2n+1).

Legal order of calls::

    fe = NetFrontend("/tmp/vhost.sock")   # or NetFrontend(sock=a_connected_socket)
    fe.connect()        # GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
                        # GET_MAX_MEM_SLOTS, SET_OWNER
    fe.start()          # SET_FEATURES, SET_MEM_TABLE, per ring NUM/BASE/ADDR/KICK/CALL, ENABLE
    fe.post_rx_buffers(64)
    fe.send_frame(frame); fe.recv_frames(timeout=1.0)
    fe.stop()           # GET_VRING_BASE on every ring
    fe.close()

The batched data path (`fe.tx_batch()`, `fe.rx_batch()`: `TxBatch`, `RxBatch`) takes a
queue over with a fixed buffer behind each descriptor and works it through the C helpers
(`fe_*` in vhostuser/_fast_build.py): N frames per call, one avail idx store and at most
one kick per batch, so the ring benchmark measures the back-end and not this driver.

Every request can also be sent on its own (`set_vring_num`, `get_config`, ...), and
`send`/`request`/`send_raw` send anything at all, malformed bytes included.
"""

from __future__ import annotations

import bisect
import mmap
import os
import select
import socket
import struct
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vhostuser._fast import ffi as _ffi
from vhostuser._fast import lib as _fast
from vhostuser.errors import ProtocolError, VhostUserError
from vhostuser.features import (
    NET_HDR_LEN,
    NET_HDR_LEN_LEGACY,
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
    Feature,
    bit,
    bits,
    has,
)
from vhostuser.protocol import (
    CONFIG_HEADER,
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    FLAG_VERSION_MASK,
    MAX_MEM_REGIONS,
    VERSION,
    VRING_F_LOG,
    VRING_NOFD_MASK,
    MemRegion,
    Message,
    MessageDecoder,
    ProtocolFeature,
    Request,
    VringAddr,
    pack_mem_table,
    pack_single_region,
    state_payload,
    u64_payload,
)

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_PROTOCOL_FEATURES",
    "FrontendError",
    "GuestMemoryArea",
    "GuestRegion",
    "NetCounters",
    "NetFrontend",
    "RingFull",
    "RxBatch",
    "RxPacket",
    "TxBatch",
    "VhostUserFrontend",
    "Virtqueue",
    "vring_need_event",
]

MiB = 1 << 20
UADDR_BASE = 0x7F00_0000_0000

# What `features=None` asks for (the result is what the back-end also offers).
DEFAULT_FEATURES = bits(
    Feature.F_VERSION_1,
    Feature.NET_F_MRG_RXBUF,
    Feature.RING_F_EVENT_IDX,
    Feature.RING_F_INDIRECT_DESC,
    Feature.NET_F_MTU,
    Feature.NET_F_MQ,
    Feature.PROTOCOL_FEATURES,
)
# What `protocol_features=None` asks for: the ones this front-end implements.
DEFAULT_PROTOCOL_FEATURES = bits(
    ProtocolFeature.MQ,
    ProtocolFeature.REPLY_ACK,
    ProtocolFeature.MTU,
    ProtocolFeature.CONFIG,
    ProtocolFeature.RESET_DEVICE,
    ProtocolFeature.CONFIGURE_MEM_SLOTS,
    ProtocolFeature.STATUS,
)

# Requests whose reply carries data; every other request is answered only with a
# REPLY_ACK u64, and only when REPLY_ACK is negotiated and need_reply is set.
_OWN_REPLY = frozenset(
    {
        Request.GET_FEATURES,
        Request.GET_PROTOCOL_FEATURES,
        Request.GET_VRING_BASE,
        Request.GET_QUEUE_NUM,
        Request.GET_CONFIG,
        Request.GET_MAX_MEM_SLOTS,
        Request.GET_STATUS,
        Request.GET_INFLIGHT_FD,
        Request.SET_LOG_BASE,
        Request.POSTCOPY_ADVISE,
        Request.CREATE_CRYPTO_SESSION,
    }
)


class FrontendError(VhostUserError):
    """The back-end answered wrongly or not at all (missing, late or malformed reply, a
    failure ack), or wrote the rings in a way the driver rejects."""


class RingFull(FrontendError):
    """No free descriptors left in a virtqueue."""


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """virtio 1.2 §2.7.10 / Linux vring_need_event: notify iff `event_idx` lies in the
    window of indices [old_idx, new_idx) just published (all arithmetic mod 2**16)."""
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old_idx) & 0xFFFF


def _fence() -> None:
    _fast.vu_fence()


# ---------------------------------------------------------------------------------------
# Guest memory

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
_USED_ELEM = struct.Struct("<II")  # id, len


@dataclass(eq=False)
class GuestRegion:
    """One memory region: a memfd of `mmap_offset + size` bytes mapped whole; guest
    physical `gpa` is at byte `mmap_offset` of the mapping."""

    gpa: int
    size: int
    uaddr: int
    mmap_offset: int
    fd: int
    mm: mmap.mmap

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def describe(self) -> MemRegion:
        """The region as SET_MEM_TABLE / ADD_MEM_REG describe it."""
        return MemRegion(self.gpa, self.size, self.uaddr, self.mmap_offset)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class GuestMemoryArea:
    """Guest RAM made of memfd regions, with an allocator over guest physical addresses.

    `layout` lists (gpa, size) per region; regions that touch (one's end is the next's
    gpa) form one address range, so allocations and reads/writes may straddle them.
    `mmap_offset` (the same for every region) places each region that far into its memfd.
    """

    def __init__(
        self,
        layout: Sequence[tuple[int, int]] = ((0, 16 * MiB),),
        *,
        mmap_offset: int = 0,
        uaddr_base: int = UADDR_BASE,
    ) -> None:
        self.uaddr_base = uaddr_base
        self.regions: list[GuestRegion] = []
        self._free: list[list[int]] = []  # sorted, disjoint [start, end) gpa ranges
        self._allocated: dict[int, int] = {}  # gpa -> size
        try:
            for gpa, size in layout:
                self.add_region(gpa, size, mmap_offset=mmap_offset)
        except BaseException:
            self.close()
            raise

    # -- regions ------------------------------------------------------------------------
    def add_region(self, gpa: int, size: int, *, mmap_offset: int = 0) -> GuestRegion:
        """Create a region (its memory becomes allocatable). Send it with ADD_MEM_REG or
        SET_MEM_TABLE for the back-end to see it."""
        if size <= 0 or gpa < 0 or mmap_offset < 0:
            raise ValueError(f"bad region gpa={gpa:#x} size={size:#x} offset={mmap_offset:#x}")
        for r in self.regions:
            if gpa < r.end and r.gpa < gpa + size:
                raise ValueError(f"region at {gpa:#x}+{size:#x} overlaps {r.gpa:#x}+{r.size:#x}")
        fd = os.memfd_create(f"vhostnet-guest-{gpa:#x}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, mmap_offset + size)
            mm = mmap.mmap(fd, mmap_offset + size, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        region = GuestRegion(gpa, size, self.uaddr_base + gpa, mmap_offset, fd, mm)
        self.regions.append(region)
        self.regions.sort(key=lambda r: r.gpa)
        self._release(gpa, gpa + size)
        return region

    def remove_region(self, region: GuestRegion) -> None:
        """Forget a region; allocations inside it must have been freed."""
        for a, n in self._allocated.items():
            if a < region.end and region.gpa < a + n:
                raise ValueError(f"allocation at {a:#x} still lives in region {region.gpa:#x}")
        self.regions.remove(region)
        self._reserve(region.gpa, region.end)
        region.close()

    def mem_table(self) -> list[MemRegion]:
        return [r.describe() for r in self.regions]

    def fds(self) -> list[int]:
        return [r.fd for r in self.regions]

    def region_at(self, gpa: int) -> GuestRegion:
        for r in self.regions:
            if r.gpa <= gpa < r.end:
                return r
        raise FrontendError(f"gpa {gpa:#x} is in no memory region")

    def uaddr(self, gpa: int) -> int:
        """Front-end virtual address of `gpa` (what ring addresses are given as)."""
        r = self.region_at(gpa)
        return r.uaddr + (gpa - r.gpa)

    def host_address(self, gpa: int, length: int) -> int:
        """Our virtual address of `length` bytes at `gpa` (in one region), for the C
        helpers; valid while the region is."""
        mm, off = self.locate(gpa, length)
        buf = _ffi.from_buffer(mm)
        try:
            return int(_ffi.cast("uintptr_t", buf)) + off
        finally:
            _ffi.release(buf)

    def locate(self, gpa: int, length: int) -> tuple[mmap.mmap, int]:
        """(mapping, offset) of `length` bytes at `gpa`, which must lie in one region."""
        r = self.region_at(gpa)
        if gpa + length > r.end:
            raise FrontendError(f"{length} bytes at gpa {gpa:#x} leave region {r.gpa:#x}")
        return r.mm, r.mmap_offset + (gpa - r.gpa)

    def _pieces(self, gpa: int, length: int) -> Iterable[tuple[mmap.mmap, int, int]]:
        while length > 0:
            r = self.region_at(gpa)
            n = min(length, r.end - gpa)
            yield r.mm, r.mmap_offset + (gpa - r.gpa), n
            gpa += n
            length -= n

    def read(self, gpa: int, length: int) -> bytes:
        return b"".join(mm[off : off + n] for mm, off, n in self._pieces(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data).cast("B")
        pos = 0
        for mm, off, n in self._pieces(gpa, len(data)):
            mm[off : off + n] = data[pos : pos + n]
            pos += n

    # -- allocator ----------------------------------------------------------------------
    def alloc(self, size: int, align: int = 16, *, one_region: bool = True) -> int:
        """First-fit allocation of `size` bytes aligned to `align`; returns the gpa.
        `one_region=False` lets the block straddle touching regions."""
        if size <= 0:
            raise ValueError("allocation size must be positive")
        for i, (start, end) in enumerate(self._free):
            a = (start + align - 1) // align * align
            while a + size <= end:
                if one_region:
                    r = self.region_at(a)
                    if a + size > r.end:
                        a = (r.end + align - 1) // align * align
                        continue
                self._take(i, a, a + size)
                self._allocated[a] = size
                return a
        raise FrontendError(f"guest memory exhausted: no {size} free bytes aligned to {align}")

    def alloc_at(self, gpa: int, size: int) -> int:
        """Allocate exactly [gpa, gpa + size) (to place a buffer across a region edge)."""
        for i, (start, end) in enumerate(self._free):
            if start <= gpa and gpa + size <= end:
                self._take(i, gpa, gpa + size)
                self._allocated[gpa] = size
                return gpa
        raise FrontendError(f"[{gpa:#x}, {gpa + size:#x}) is not free")

    def free(self, gpa: int) -> None:
        size = self._allocated.pop(gpa, None)
        if size is None:
            raise ValueError(f"gpa {gpa:#x} was not allocated")
        self._release(gpa, gpa + size)

    @property
    def free_bytes(self) -> int:
        return sum(e - s for s, e in self._free)

    def _take(self, i: int, a: int, b: int) -> None:
        start, end = self._free.pop(i)
        if b < end:
            self._free.insert(i, [b, end])
        if start < a:
            self._free.insert(i, [start, a])

    def _release(self, a: int, b: int) -> None:
        """Give [a, b) back, merged with the free ranges it touches (bisect, not a sort
        of the whole list per free)."""
        free = self._free
        i = bisect.bisect_left(free, [a, b])
        if i > 0 and free[i - 1][1] == a:
            i -= 1
            free[i][1] = b
        else:
            free.insert(i, [a, b])
        if i + 1 < len(free) and free[i + 1][0] == free[i][1]:
            free[i][1] = free.pop(i + 1)[1]

    def _reserve(self, a: int, b: int) -> None:
        out = []
        for s, e in self._free:
            if s < a:
                out.append([s, min(e, a)])
            if e > b:
                out.append([max(s, b), e])
        self._free = out

    def close(self) -> None:
        for r in self.regions:
            r.close()
        self.regions = []
        self._free = []
        self._allocated = {}


# ---------------------------------------------------------------------------------------
# Split virtqueue, driver side


@dataclass(slots=True)
class _Chain:
    ndesc: int  # descriptors taken from the table (1 for an indirect chain)
    indirect_table: int | None  # gpa of the indirect table, freed on reap
    token: object


class _DriverRing:
    """What the split and the packed driver queue share: the eventfds and kick counts,
    the outstanding chains (their tokens go back to their owner at `close`), and the
    ring memory they give back."""

    mem: GuestMemoryArea
    kick_fd: int
    call_fd: int
    kicks: int
    kicks_suppressed: int
    chains: dict[int, _Chain]
    pending: list

    def _ring_gpas(self) -> tuple[int, ...]:
        """The ring's own allocations (freed at `close`)."""
        raise NotImplementedError

    def _clear_free(self) -> None:
        """Forget the free descriptors (the queue is closed)."""
        raise NotImplementedError

    def publish(self) -> bool:
        raise NotImplementedError

    def reap_tokens(self) -> list[tuple[int, int, object]]:
        raise NotImplementedError

    @property
    def in_flight(self) -> int:
        return len(self.chains)

    def kick(self) -> None:
        os.eventfd_write(self.kick_fd, 1)
        self.kicks += 1

    def publish_and_kick(self) -> bool:
        """`publish()`, then kick when the device asked for it. Returns whether it kicked."""
        if not self.pending:
            return False
        if self.publish():
            self.kick()
            return True
        self.kicks_suppressed += 1
        return False

    def reap(self) -> list[tuple[int, int]]:
        return [(h, n) for h, n, _ in self.reap_tokens()]

    def drain_call(self) -> int:
        """Read (and clear) the call eventfd; 0 when it was not signalled."""
        try:
            return os.eventfd_read(self.call_fd)
        except BlockingIOError:
            return 0

    def close(self) -> list[object]:
        """Close the eventfds and give the ring memory (and outstanding indirect tables)
        back to the allocator. Returns the tokens of chains still outstanding, for their
        owner to free the buffers."""
        for fd in (self.kick_fd, self.call_fd):
            if fd >= 0:
                os.close(fd)
        self.kick_fd = self.call_fd = -1
        tokens = [c.token for c in self.chains.values()]
        if self.mem.regions:  # memory not already torn down
            for c in self.chains.values():
                if c.indirect_table is not None:
                    self.mem.free(c.indirect_table)
            for gpa in self._ring_gpas():
                self.mem.free(gpa)
        self.chains = {}
        self.pending = []
        self._clear_free()
        return tokens


class Virtqueue(_DriverRing):
    """The driver side of one split virtqueue in guest memory.

    Layout (virtio 1.2 §2.7): descriptor table 16·n bytes aligned 16; avail ring
    flags, idx, ring[n], used_event (u16 each) aligned 2; used ring flags, idx,
    ring[n] of {id u32, len u32}, avail_event aligned 4. Each part is allocated apart.
    """

    def __init__(
        self,
        mem: GuestMemoryArea,
        index: int,
        size: int = 256,
        *,
        event_idx: bool = False,
        indirect: bool = False,
    ) -> None:
        if size <= 0 or size & (size - 1) or size > 32768:
            raise ValueError(f"queue size {size} is not a power of two in 1..32768")
        self.mem = mem
        self.index = index
        self.size = size
        self.event_idx = event_idx
        self.indirect_ok = indirect
        self.desc_gpa = mem.alloc(16 * size, 16)
        self.avail_gpa = mem.alloc(6 + 2 * size, 2)
        self.used_gpa = mem.alloc(6 + 8 * size, 4)
        self._desc = mem.locate(self.desc_gpa, 16 * size)
        self._avail = mem.locate(self.avail_gpa, 6 + 2 * size)
        self._used = mem.locate(self.used_gpa, 6 + 8 * size)
        # the words the device reads or writes while we do go through vu_ld16/vu_st16
        # (one atomic 16-bit access each; struct.pack_into zeroes first and tears)
        self._avail_p = mem.host_address(self.avail_gpa, 6 + 2 * size)
        self._used_p = mem.host_address(self.used_gpa, 6 + 8 * size)
        for gpa, n in (
            (self.desc_gpa, 16 * size),
            (self.avail_gpa, 6 + 2 * size),
            (self.used_gpa, 6 + 8 * size),
        ):
            mem.write(gpa, bytes(n))
        self.free_heads: list[int] = list(range(size - 1, -1, -1))  # pop() gives 0 first
        self.chains: dict[int, _Chain] = {}
        self.pending: list[int] = []  # heads added but not yet published
        self.avail_idx = 0  # next free avail slot (free-running u16)
        self.last_used = 0  # next used slot to reap (free-running u16)
        self.kick_fd = -1
        self.call_fd = -1
        self.kicks = 0
        self.kicks_suppressed = 0

    # -- addresses ----------------------------------------------------------------------
    def addr(self, flags: int = 0) -> VringAddr:
        """SET_VRING_ADDR payload: ring addresses as front-end virtual addresses."""
        m = self.mem
        return VringAddr(
            self.index,
            flags,
            m.uaddr(self.desc_gpa),
            m.uaddr(self.used_gpa),
            m.uaddr(self.avail_gpa),
            0,
        )

    def base(self) -> int:
        """SET_VRING_BASE's value: the next avail index."""
        return self.avail_idx

    @property
    def num_free(self) -> int:
        return len(self.free_heads)

    # -- raw ring fields ----------------------------------------------------------------
    @staticmethod
    def _get16(base: int, off: int) -> int:
        return _fast.vu_ld16(base + off)

    @staticmethod
    def _put16(base: int, off: int, v: int) -> None:
        _fast.vu_st16(base + off, v & 0xFFFF)

    @property
    def avail_flags(self) -> int:
        return self._get16(self._avail_p, 0)

    @avail_flags.setter
    def avail_flags(self, v: int) -> None:
        self._put16(self._avail_p, 0, v)

    @property
    def used_event(self) -> int:
        return self._get16(self._avail_p, 4 + 2 * self.size)

    @used_event.setter
    def used_event(self, v: int) -> None:
        self._put16(self._avail_p, 4 + 2 * self.size, v)

    @property
    def used_flags(self) -> int:
        return self._get16(self._used_p, 0)

    @property
    def used_idx(self) -> int:
        return self._get16(self._used_p, 2)

    @property
    def avail_event(self) -> int:
        return self._get16(self._used_p, 4 + 8 * self.size)

    def read_desc(self, i: int) -> tuple[int, int, int, int]:
        """(addr, len, flags, next) of descriptor `i` (for tests)."""
        return _DESC.unpack_from(self._desc[0], self._desc[1] + 16 * i)

    def _write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        _DESC.pack_into(self._desc[0], self._desc[1] + 16 * i, addr, length, flags, nxt)

    # -- driver operations --------------------------------------------------------------
    def add_chain(
        self,
        readable: Sequence[tuple[int, int]],
        writable: Sequence[tuple[int, int]] = (),
        *,
        indirect: bool = False,
        token: object = None,
    ) -> int:
        """Write a descriptor chain (device-readable buffers first, then writable ones) and
        queue it for `publish()`. Returns the head index. `token` comes back from
        `reap_tokens()`. Raises RingFull when the table has too few free descriptors."""
        bufs = [(a, n, 0) for a, n in readable] + [(a, n, VIRTQ_DESC_F_WRITE) for a, n in writable]
        if not bufs:
            raise ValueError("a descriptor chain needs at least one buffer")
        if indirect:
            table = self.mem.alloc(16 * len(bufs), 16)
            raw = bytearray()
            for i, (a, n, f) in enumerate(bufs):
                last = i == len(bufs) - 1
                raw += _DESC.pack(
                    a, n, f | (0 if last else VIRTQ_DESC_F_NEXT), 0 if last else i + 1
                )
            self.mem.write(table, raw)
            bufs = [(table, 16 * len(bufs), VIRTQ_DESC_F_INDIRECT)]
        else:
            table = None
        if len(bufs) > len(self.free_heads):
            if table is not None:
                self.mem.free(table)
            raise RingFull(
                f"queue {self.index}: {len(bufs)} descriptors wanted, {len(self.free_heads)} free"
            )
        ids = [self.free_heads.pop() for _ in bufs]
        for k, (a, n, f) in enumerate(bufs):
            last = k == len(bufs) - 1
            self._write_desc(
                ids[k], a, n, f | (0 if last else VIRTQ_DESC_F_NEXT), 0 if last else ids[k + 1]
            )
        self.chains[ids[0]] = _Chain(len(ids), table, token)
        self.pending.append(ids[0])
        return ids[0]

    def add_writable(self, gpa: int, size: int, token: object = None) -> int:
        """`add_chain([], [(gpa, size)], token=token)` for one direct buffer, the RX
        repost of every received buffer (without add_chain's generality per buffer)."""
        if not self.free_heads:
            raise RingFull(f"queue {self.index}: 1 descriptor wanted, 0 free")
        i = self.free_heads.pop()
        _DESC.pack_into(self._desc[0], self._desc[1] + 16 * i, gpa, size, VIRTQ_DESC_F_WRITE, 0)
        self.chains[i] = _Chain(1, None, token)
        self.pending.append(i)
        return i

    def publish(self) -> bool:
        """Make pending chains available: ring entries first, then (after a barrier) the
        index. Returns whether the device wants a kick, by EVENT_IDX when negotiated
        (avail_event inside the window just published) or else by used.flags NO_NOTIFY."""
        if not self.pending:
            return False
        old = self.avail_idx
        for head in self.pending:
            self._put16(self._avail_p, 4 + 2 * (self.avail_idx % self.size), head)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.pending.clear()
        _fence()  # ring entries before idx
        self._put16(self._avail_p, 2, self.avail_idx)
        _fence()  # idx before reading avail_event / flags
        if self.event_idx:
            return vring_need_event(self.avail_event, self.avail_idx, old)
        return not self.used_flags & VIRTQ_USED_F_NO_NOTIFY

    def reap_tokens(self) -> list[tuple[int, int, object]]:
        """Take used entries: (head, written length, token) each; their descriptors are
        freed. Re-arms the device's interrupt (used_event) when EVENT_IDX is on."""
        out = []
        end = self.used_idx
        if (end - self.last_used) & 0xFFFF > self.size:
            raise FrontendError(
                f"queue {self.index}: used.idx {end} is more than {self.size} "
                f"past the last reaped {self.last_used}"
            )
        _fence()  # idx before the entries it covers
        while self.last_used != end:
            slot = 4 + 8 * (self.last_used % self.size)
            head, length = _USED_ELEM.unpack_from(self._used[0], self._used[1] + slot)
            chain = self.chains.pop(head, None)
            if chain is None:
                raise FrontendError(
                    f"queue {self.index}: device used id {head}, which is not "
                    "the head of an outstanding chain"
                )
            self._free_chain(head, chain)
            out.append((head, length, chain.token))
            self.last_used = (self.last_used + 1) & 0xFFFF
        if self.event_idx:
            self.used_event = self.last_used
        return out

    def has_used(self) -> bool:
        return self.used_idx != self.last_used

    def set_interrupts(self, on: bool) -> None:
        """Ask the device for (or to spare) used-buffer notifications: avail.flags
        NO_INTERRUPT, or with EVENT_IDX a used_event far behind."""
        if self.event_idx:
            self.used_event = self.last_used if on else (self.last_used - 1) & 0xFFFF
        else:
            self.avail_flags = 0 if on else VIRTQ_AVAIL_F_NO_INTERRUPT

    def _free_chain(self, head: int, chain: _Chain) -> None:
        i = head
        for k in range(chain.ndesc):
            _, _, flags, nxt = self.read_desc(i)
            self.free_heads.append(i)
            if k < chain.ndesc - 1:
                i = nxt
        if chain.indirect_table is not None:
            self.mem.free(chain.indirect_table)

    def _ring_gpas(self) -> tuple[int, ...]:
        return (self.desc_gpa, self.avail_gpa, self.used_gpa)

    def _clear_free(self) -> None:
        self.free_heads = []


_PDESC = struct.Struct("<QIHH")  # packed descriptor: addr, len, id, flags
_P_AVAIL, _P_USED = 1 << 7, 1 << 15  # its AVAIL and USED flags
_EV_ENABLE, _EV_DISABLE, _EV_DESC = 0, 1, 2  # event suppression flags


class PackedQueue(_DriverRing):
    """The driver side of one packed virtqueue (virtio 1.2 §2.8), with `Virtqueue`'s
    interface so that `NetFrontend` drives either.

    Layout: the descriptor ring (16·n bytes, aligned 16) and two 4-byte event suppression
    structures (off_wrap, flags): the driver's, where we say when we want interrupts
    (SET_VRING_ADDR's avail address), and the device's, where it says when it wants kicks
    (the used address). A buffer takes consecutive descriptors from our avail position,
    its id in each; its first descriptor's flags are written last, at `publish`. The
    device writes a used descriptor (the id, bytes written) at its used position, which we
    follow with our own counter. Buffer ids are handed out from a free list, so a used id
    we never made available is refused instead of corrupting it.
    """

    def __init__(
        self,
        mem: GuestMemoryArea,
        index: int,
        size: int = 256,
        *,
        event_idx: bool = False,
        indirect: bool = False,
    ) -> None:
        if size <= 0 or size > 32768:  # (no power of two needed for packed rings)
            raise ValueError(f"queue size {size} is not in 1..32768")
        self.mem = mem
        self.index = index
        self.size = size
        self.event_idx = event_idx
        self.indirect_ok = indirect
        self.desc_gpa = mem.alloc(16 * size, 16)
        self.driver_gpa = mem.alloc(4, 4)
        self.device_gpa = mem.alloc(4, 4)
        for gpa, n in ((self.desc_gpa, 16 * size), (self.driver_gpa, 4), (self.device_gpa, 4)):
            mem.write(gpa, bytes(n))
        self._desc = mem.locate(self.desc_gpa, 16 * size)
        self._desc_p = mem.host_address(self.desc_gpa, 16 * size)
        self._driver_p = mem.host_address(self.driver_gpa, 4)
        self._device_p = mem.host_address(self.device_gpa, 4)
        self.free_ids: list[int] = list(range(size - 1, -1, -1))  # pop() gives 0 first
        self.free_desc = size
        self.chains: dict[int, _Chain] = {}
        self.pending: list[tuple[int, int]] = []  # (position, flags) of unpublished heads
        self.next_avail, self.avail_wrap = 0, True
        self.next_used, self.used_wrap = 0, True
        self._batch_start: tuple[int, bool] | None = None  # avail position before pending
        self.kick_fd = -1
        self.call_fd = -1
        self.kicks = 0
        self.kicks_suppressed = 0

    def addr(self, flags: int = 0) -> VringAddr:
        m = self.mem
        return VringAddr(self.index, flags, m.uaddr(self.desc_gpa), m.uaddr(self.device_gpa),
                         m.uaddr(self.driver_gpa), 0)

    def base(self) -> int:
        """SET_VRING_BASE's value: avail position and wrap counter, used ones above."""
        return (self.next_avail | self.avail_wrap << 15
                | (self.next_used | self.used_wrap << 15) << 16)

    @property
    def num_free(self) -> int:
        return self.free_desc

    def _flags_at(self, wrap: bool) -> int:
        return _P_AVAIL if wrap else _P_USED

    def _set_flags(self, pos: int, flags: int) -> None:
        _fast.vu_st16(self._desc_p + 16 * pos + 14, flags)

    def _flags(self, pos: int) -> int:
        return _fast.vu_ld16(self._desc_p + 16 * pos + 14)

    def add_chain(
        self,
        readable: Sequence[tuple[int, int]],
        writable: Sequence[tuple[int, int]] = (),
        *,
        indirect: bool = False,
        token: object = None,
    ) -> int:
        """Write one buffer's descriptors (device-readable first) and queue it for
        `publish()`. Returns its buffer id. RingFull when too few descriptors are free."""
        bufs = [(a, n, 0) for a, n in readable] + [(a, n, VIRTQ_DESC_F_WRITE) for a, n in writable]
        if not bufs:
            raise ValueError("a buffer needs at least one descriptor")
        table = None
        if indirect:
            table = self.mem.alloc(16 * len(bufs), 16)
            self.mem.write(table, b"".join(_PDESC.pack(a, n, 0, f) for a, n, f in bufs))
            bufs = [(table, 16 * len(bufs), VIRTQ_DESC_F_INDIRECT)]
        if len(bufs) > self.free_desc or not self.free_ids:
            if table is not None:
                self.mem.free(table)
            raise RingFull(f"queue {self.index}: {len(bufs)} descriptors wanted, "
                           f"{self.free_desc} free")
        if self._batch_start is None:
            self._batch_start = (self.next_avail, self.avail_wrap)
        bid = self.free_ids.pop()
        pos, wrap = self.next_avail, self.avail_wrap
        head = None
        for k, (a, n, f) in enumerate(bufs):
            flags = f | (VIRTQ_DESC_F_NEXT if k < len(bufs) - 1 else 0) | self._flags_at(wrap)
            if k == 0:  # its flags wait for publish: the device must not see it yet
                head = (pos, flags)
                _PDESC.pack_into(self._desc[0], self._desc[1] + 16 * pos, a, n, bid,
                                 self._flags(pos))
            else:
                _PDESC.pack_into(self._desc[0], self._desc[1] + 16 * pos, a, n, bid, flags)
            pos += 1
            if pos == self.size:
                pos, wrap = 0, not wrap
        self.next_avail, self.avail_wrap = pos, wrap
        self.free_desc -= len(bufs)
        self.chains[bid] = _Chain(len(bufs), table, token)
        self.pending.append(head)
        return bid

    def add_writable(self, gpa: int, size: int, token: object = None) -> int:
        return self.add_chain([], [(gpa, size)], token=token)

    def publish(self) -> bool:
        """Make the pending buffers available (each head's flags after its other
        descriptors); whether the device wants a kick (its event suppression structure:
        ENABLE, DISABLE, or with EVENT_IDX a position among those just made available)."""
        if not self.pending:
            return False
        _fence()  # the descriptors before the flags that publish them
        for pos, flags in self.pending:
            self._set_flags(pos, flags)
        self.pending.clear()
        old_pos, old_wrap = self._batch_start
        self._batch_start = None
        _fence()  # our flags before reading the device's wish
        off_wrap = _fast.vu_ld16(self._device_p)
        want = _fast.vu_ld16(self._device_p + 2)
        if want == _EV_DISABLE:
            return False
        if want != _EV_DESC:
            return True
        # (Linux's virtqueue_kick_prepare_packed) positions on one line: the old ones a
        # ring back when the counter flipped since
        new = self.next_avail
        old = old_pos - (self.size if old_wrap != self.avail_wrap else 0)
        event = off_wrap & 0x7FFF
        if bool(off_wrap >> 15) != self.avail_wrap:
            event -= self.size
        return vring_need_event(event & 0xFFFF, new & 0xFFFF, old & 0xFFFF)

    def has_used(self) -> bool:
        flags = self._flags(self.next_used)
        avail, used = bool(flags & _P_AVAIL), bool(flags & _P_USED)
        return avail == used == self.used_wrap

    def reap_tokens(self) -> list[tuple[int, int, object]]:
        """Take used buffers: (id, written length, token) each."""
        out = []
        while self.has_used():
            _fence()  # the flags before the id and length they cover
            _, length, bid, _ = _PDESC.unpack_from(self._desc[0],
                                                   self._desc[1] + 16 * self.next_used)
            chain = self.chains.pop(bid, None)
            if chain is None:
                raise FrontendError(f"queue {self.index}: device used buffer id {bid}, "
                                    "which is not outstanding")
            self.next_used += chain.ndesc
            if self.next_used >= self.size:
                self.next_used -= self.size
                self.used_wrap = not self.used_wrap
            self.free_desc += chain.ndesc
            self.free_ids.append(bid)
            if chain.indirect_table is not None:
                self.mem.free(chain.indirect_table)
            out.append((bid, length, chain.token))
        if self.event_idx and out:
            self._arm(self.next_used, self.used_wrap)
        return out

    def _arm(self, pos: int, wrap: bool) -> None:
        _fast.vu_st16(self._driver_p, pos | wrap << 15)
        _fast.vu_st16(self._driver_p + 2, _EV_DESC)

    def set_interrupts(self, on: bool) -> None:
        if not on:
            _fast.vu_st16(self._driver_p + 2, _EV_DISABLE)
        elif self.event_idx:
            self._arm(self.next_used, self.used_wrap)
        else:
            _fast.vu_st16(self._driver_p + 2, _EV_ENABLE)

    def _ring_gpas(self) -> tuple[int, ...]:
        return (self.desc_gpa, self.driver_gpa, self.device_gpa)

    def _clear_free(self) -> None:
        self.free_ids = []


# ---------------------------------------------------------------------------------------
# The vhost-user session


class VhostUserFrontend:
    """A vhost-user front-end session over one unix stream socket.

    `features=None` asks for DEFAULT_FEATURES; pass a mask to ask for exactly those bits
    (e.g. `DEFAULT_FEATURES | bit(Feature.NET_F_CSUM)`); what is negotiated is the
    intersection with the back-end's offer (`self.features` after `connect()`). The
    same goes for `protocol_features`. `memory=None` creates a 16 MiB region at gpa 0.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        sock: socket.socket | None = None,
        queue_pairs: int = 1,
        queue_size: int = 256,
        features: int | None = None,
        protocol_features: int | None = None,
        memory: GuestMemoryArea | None = None,
        timeout: float = 2.0,
    ) -> None:
        if (socket_path is None) == (sock is None):
            raise ValueError("give exactly one of socket_path and sock")
        self.socket_path = socket_path
        self.sock = sock
        self.queue_pairs = queue_pairs
        self.queue_size = queue_size
        self.wanted_features = DEFAULT_FEATURES if features is None else features
        self.wanted_protocol_features = (
            DEFAULT_PROTOCOL_FEATURES if protocol_features is None else protocol_features
        )
        self._own_memory = memory is None
        self.mem = memory if memory is not None else GuestMemoryArea()
        self.timeout = timeout
        self.backend_features = 0
        self.backend_protocol_features = 0
        self.features = 0  # acked (sent in SET_FEATURES)
        self.protocol_features = 0  # acked (sent in SET_PROTOCOL_FEATURES)
        self.queue_num: int | None = None
        self.max_mem_slots: int | None = None
        self.vqs: list[Virtqueue] = []
        self.vring_bases: dict[int, int] = {}  # from GET_VRING_BASE, used by the next start
        self._decoder = MessageDecoder()
        self._inbox: list[Message] = []

    # -- context manager ----------------------------------------------------------------
    def __enter__(self) -> VhostUserFrontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- negotiated state ---------------------------------------------------------------
    def has_feature(self, f: Feature) -> bool:
        return has(self.features, f)

    def has_protocol_feature(self, f: ProtocolFeature) -> bool:
        return bool(self.protocol_features >> int(f) & 1)

    @property
    def num_rings(self) -> int:
        return 2 * self.queue_pairs

    # -- the sequences QEMU sends -------------------------------------------------------
    def connect(self) -> None:
        """Open the socket (unless given one) and run QEMU's initial sequence: GET_FEATURES,
        GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (MQ), GET_MAX_MEM_SLOTS
        (CONFIGURE_MEM_SLOTS), SET_OWNER."""
        if self.sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self.socket_path)
            except OSError as e:
                s.close()
                raise FrontendError(f"cannot connect to {self.socket_path}: {e}") from e
            self.sock = s
        self.sock.settimeout(self.timeout)
        self.backend_features = self.get_features()
        if has(self.backend_features, Feature.PROTOCOL_FEATURES):
            self.backend_protocol_features = self.get_protocol_features()
            self.set_protocol_features(
                self.backend_protocol_features & self.wanted_protocol_features
            )
        if self.has_protocol_feature(ProtocolFeature.MQ):
            self.queue_num = self.get_queue_num()
            if self.queue_pairs > self.queue_num:
                raise FrontendError(
                    f"back-end offers {self.queue_num} queue pairs, {self.queue_pairs} wanted"
                )
        elif self.queue_pairs > 1:
            raise FrontendError(f"{self.queue_pairs} queue pairs need protocol feature MQ")
        if self.has_protocol_feature(ProtocolFeature.CONFIGURE_MEM_SLOTS):
            self.max_mem_slots = self.get_max_mem_slots()
        self.set_owner()

    def start(self) -> None:
        """SET_FEATURES, SET_MEM_TABLE, then for every ring SET_VRING_NUM, SET_VRING_BASE,
        SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL and, with PROTOCOL_FEATURES,
        SET_VRING_ENABLE 1. With STATUS, QEMU's GET_STATUS/SET_STATUS pairs too
        (FEATURES_OK after SET_FEATURES, ACKNOWLEDGE|DRIVER|DRIVER_OK at the end)."""
        self.set_features(self.backend_features & self.wanted_features)
        if self.has_protocol_feature(ProtocolFeature.STATUS):
            self.set_status(self.get_status() | STATUS_FEATURES_OK)
        self.set_mem_table()
        if not self.vqs:
            self._create_vqs()
        for vq in self.vqs:
            i = vq.index
            self.set_vring_num(i, vq.size)
            self.set_vring_base(i, self.vring_bases.get(i, vq.base()))
            self.set_vring_addr(i)
            self.set_vring_kick(i)
            self.set_vring_call(i)
        if self.has_feature(Feature.PROTOCOL_FEATURES):
            for vq in self.vqs:
                self.set_vring_enable(vq.index, True)
        if self.has_protocol_feature(ProtocolFeature.STATUS):
            self.set_status(
                self.get_status() | STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK
            )

    def stop(self) -> list[int]:
        """GET_VRING_BASE on every ring (which stops it); returns the ring indices, also
        kept for the next `start()`."""
        return [self.get_vring_base(vq.index) for vq in self.vqs]

    def _create_vqs(self) -> None:
        ev = self.has_feature(Feature.RING_F_EVENT_IDX)
        ind = self.has_feature(Feature.RING_F_INDIRECT_DESC)
        kind = PackedQueue if self.has_feature(Feature.F_RING_PACKED) else Virtqueue
        for i in range(self.num_rings):
            vq = kind(self.mem, i, self.queue_size, event_idx=ev, indirect=ind)
            vq.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            vq.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            if ev:
                vq.set_interrupts(True)
            self.vqs.append(vq)

    def vq(self, index: int) -> Virtqueue:
        try:
            return self.vqs[index]
        except IndexError:
            raise FrontendError(f"no virtqueue {index} (started with {len(self.vqs)})") from None

    # -- one method per request ---------------------------------------------------------
    def get_features(self) -> int:
        return self._u64_reply(Request.GET_FEATURES)

    def set_features(self, features: int) -> None:
        self.features = features
        self.call(Request.SET_FEATURES, u64_payload(features))

    def get_protocol_features(self) -> int:
        return self._u64_reply(Request.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int) -> None:
        # REPLY_ACK applies from the next message on (QEMU never asks an ack for this one).
        self.send(Message(Request.SET_PROTOCOL_FEATURES, payload=u64_payload(features)))
        self.protocol_features = features

    def get_queue_num(self) -> int:
        return self._u64_reply(Request.GET_QUEUE_NUM)

    def get_max_mem_slots(self) -> int:
        return self._u64_reply(Request.GET_MAX_MEM_SLOTS)

    def set_owner(self) -> None:
        self.call(Request.SET_OWNER)

    def reset_owner(self) -> None:
        self.call(Request.RESET_OWNER)

    def set_mem_table(self, regions: Sequence[GuestRegion] | None = None) -> None:
        regions = list(self.mem.regions if regions is None else regions)
        if len(regions) > MAX_MEM_REGIONS:
            raise ValueError(f"SET_MEM_TABLE carries at most {MAX_MEM_REGIONS} regions")
        self.call(
            Request.SET_MEM_TABLE,
            pack_mem_table([r.describe() for r in regions]),
            [r.fd for r in regions],
        )

    def add_mem_reg(self, region: GuestRegion) -> None:
        self.call(Request.ADD_MEM_REG, pack_single_region(region.describe()), [region.fd])

    def rem_mem_reg(self, region: GuestRegion) -> None:
        # The spec: no fd SHOULD be passed with REM_MEM_REG.
        self.call(Request.REM_MEM_REG, pack_single_region(region.describe()))

    def set_vring_num(self, index: int, num: int) -> None:
        self.call(Request.SET_VRING_NUM, state_payload(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        self.call(Request.SET_VRING_BASE, state_payload(index, base))

    def set_vring_addr(self, index: int, addr: VringAddr | None = None) -> None:
        addr = self.vq(index).addr() if addr is None else addr
        self.call(Request.SET_VRING_ADDR, addr.pack())

    def set_vring_kick(self, index: int, fd: int | None = None, *, nofd: bool = False) -> None:
        """`fd=None` sends the queue's own kick eventfd; `nofd=True` sends the NOFD flag
        and no fd (polling mode)."""
        self._set_vring_fd(Request.SET_VRING_KICK, index, fd, nofd, "kick_fd")

    def set_vring_call(self, index: int, fd: int | None = None, *, nofd: bool = False) -> None:
        self._set_vring_fd(Request.SET_VRING_CALL, index, fd, nofd, "call_fd")

    def set_vring_err(self, index: int, fd: int) -> None:
        self.call(Request.SET_VRING_ERR, u64_payload(index), [fd])

    def _set_vring_fd(
        self, req: Request, index: int, fd: int | None, nofd: bool, attr: str
    ) -> None:
        if nofd:
            self.call(req, u64_payload(index | VRING_NOFD_MASK))
        else:
            self.call(
                req, u64_payload(index), [getattr(self.vq(index), attr) if fd is None else fd]
            )

    def get_vring_base(self, index: int) -> int:
        reply = self.request(Message(Request.GET_VRING_BASE, payload=state_payload(index, 0)))
        self._expect_size(reply, 8)
        ring, num = reply.vring_state()
        if ring != index:
            raise FrontendError(f"GET_VRING_BASE for ring {index} answered for ring {ring}")
        self.vring_bases[index] = num
        return num

    def set_vring_enable(self, index: int, on: bool) -> None:
        self.call(Request.SET_VRING_ENABLE, state_payload(index, int(on)))

    def get_config(self, offset: int, size: int, flags: int = 0) -> bytes:
        payload = CONFIG_HEADER.pack(offset, size, flags) + bytes(size)
        reply = self.request(Message(Request.GET_CONFIG, payload=payload))
        if not reply.payload:
            raise FrontendError(f"GET_CONFIG offset {offset} size {size} failed (empty reply)")
        self._expect_size(reply, len(payload))
        return reply.payload[CONFIG_HEADER.size :]

    def set_config(self, offset: int, data: bytes, flags: int = 0) -> None:
        self.call(Request.SET_CONFIG, CONFIG_HEADER.pack(offset, len(data), flags) + data)

    def set_status(self, status: int) -> None:
        self.call(Request.SET_STATUS, u64_payload(status))

    def get_status(self) -> int:
        return self._u64_reply(Request.GET_STATUS)

    def reset_device(self) -> None:
        """RESET_DEVICE, then forget the rings: the next `start()` sets up fresh ones."""
        self.call(Request.RESET_DEVICE)
        self._drop_vqs()

    def net_set_mtu(self, mtu: int) -> None:
        self.call(Request.NET_SET_MTU, u64_payload(mtu))

    def set_log_base(self, fd: int, size: int, offset: int = 0) -> None:
        """Give the back-end the dirty-page log (LOG_SHMFD): `size` bytes at `offset` of
        `fd`, a bit per 4 KiB guest page. QEMU waits for the reply; we check it is 0."""
        reply = self.request(Message(int(Request.SET_LOG_BASE), VERSION,
                                     struct.pack("<QQ", size, offset)), [fd])
        if len(reply.payload) == 8 and reply.u64() != 0:
            raise FrontendError(f"SET_LOG_BASE refused: {reply.u64():#x}")

    def set_logging(self, on: bool) -> None:
        """Start or stop dirty-page logging on a running device as QEMU does when a
        migration begins or ends: SET_FEATURES with VHOST_F_LOG_ALL toggled, then every
        ring's SET_VRING_ADDR with VRING_F_LOG toggled."""
        features = self.features | bit(Feature.LOG_ALL) if on else (
            self.features & ~bit(Feature.LOG_ALL))
        self.set_features(features)
        for vq in self.vqs:
            self.set_vring_addr(vq.index, vq.addr(VRING_F_LOG if on else 0))

    def send_rarp(self, mac: bytes) -> None:
        self.call(Request.SEND_RARP, mac.ljust(8, b"\0"))

    # -- messaging ----------------------------------------------------------------------
    def call(self, req: Request | int, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """Send a request that has no reply of its own. With REPLY_ACK negotiated it goes
        with need_reply and the ack must be 0."""
        msg = Message(int(req), VERSION, payload)
        if not self.has_protocol_feature(ProtocolFeature.REPLY_ACK):
            self.send(msg, fds)
            return
        msg.flags |= FLAG_NEED_REPLY
        reply = self.request(msg, fds)
        self._expect_size(reply, 8)
        if reply.u64() != 0:
            raise FrontendError(f"{msg.name} failed: back-end acked {reply.u64():#x}")

    def send(self, msg: Message, fds: Sequence[int] = ()) -> None:
        """Send one message as is (fds from both `msg.fds` and `fds`); no reply is read."""
        self.send_raw(msg.encode(), list(msg.fds) + list(fds))

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send bytes as they are, fds attached to the first byte."""
        sock = self._socket()
        try:
            sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
            if sent < len(data):
                sock.sendall(data[sent:])
        except TimeoutError as e:
            raise FrontendError(f"timed out sending {len(data)} bytes") from e
        except OSError as e:
            raise FrontendError(f"send failed: {e}") from e

    def request(self, msg: Message, fds: Sequence[int] = ()) -> Message:
        """Send `msg` and return its reply, checked to be a reply to the same request."""
        self.send(msg, fds)
        return self.recv_reply(msg.request)

    def recv_message(self, timeout: float | None = None) -> Message:
        """Read one whole message (fds in `.fds`, owned by the caller)."""
        if self._inbox:
            return self._inbox.pop(0)
        sock = self._socket()
        sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            while True:
                data, fds, _flags, _addr = socket.recv_fds(sock, self._decoder.pending, 8)
                if not data:
                    for fd in fds:
                        os.close(fd)
                    raise FrontendError(
                        "back-end closed the connection"
                        + (" mid-message" if self._decoder.mid_message else "")
                    )
                try:
                    self._inbox.extend(self._decoder.feed(data, fds))
                except ProtocolError as e:
                    raise FrontendError(f"malformed message from back-end: {e}") from e
                if self._inbox:
                    return self._inbox.pop(0)
        finally:
            sock.settimeout(self.timeout)

    def recv_reply(self, request: int) -> Message:
        name = _name(request)
        try:
            reply = self.recv_message()
        except TimeoutError as e:
            raise FrontendError(f"no reply to {name} within {self.timeout} s") from e
        except OSError as e:
            raise FrontendError(f"waiting for the reply to {name}: {e}") from e
        if reply.request != request:
            reply.close_fds()
            raise FrontendError(f"reply to {name} expected, got {reply.name}")
        if not reply.flags & FLAG_REPLY:
            reply.close_fds()
            raise FrontendError(f"reply to {name} lacks the reply flag (flags {reply.flags:#x})")
        if reply.flags & FLAG_VERSION_MASK != VERSION:
            raise FrontendError(f"reply to {name} has version {reply.flags & 3}")
        return reply

    def _u64_reply(self, req: Request) -> int:
        reply = self.request(Message(int(req)))
        self._expect_size(reply, 8)
        return reply.u64()

    @staticmethod
    def _expect_size(reply: Message, size: int) -> None:
        if len(reply.payload) != size:
            reply.close_fds()
            raise FrontendError(
                f"reply to {reply.name} has {len(reply.payload)} payload bytes, {size} expected"
            )

    def _socket(self) -> socket.socket:
        if self.sock is None:
            raise FrontendError("not connected")
        return self.sock

    # -- teardown -----------------------------------------------------------------------
    def _drop_vqs(self) -> None:
        for vq in self.vqs:
            self._free_tokens(vq, vq.close())
        self.vqs = []
        self.vring_bases = {}

    def _free_tokens(self, vq: Virtqueue, tokens: list[object]) -> None:
        """Free the buffers behind chains dropped unused (subclasses know what tokens are)."""

    def close(self) -> None:
        """Close the socket and the eventfds; unmap guest memory when we created it."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._decoder.close()
        for m in self._inbox:
            m.close_fds()
        self._inbox = []
        self._drop_vqs()
        if self._own_memory:
            self.mem.close()


def _name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return f"UNKNOWN({request})"


# ---------------------------------------------------------------------------------------
# virtio-net


@dataclass(slots=True)
class RxPacket:
    hdr: bytes  # the virtio_net_hdr as the device wrote it
    frame: bytes
    num_buffers: int  # buffers the frame spanned (1 without MRG_RXBUF)


@dataclass(slots=True)
class NetCounters:
    tx_frames: int = 0
    tx_bytes: int = 0
    tx_completed: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    rx_buffers: int = 0  # used RX buffers consumed
    rx_posted: int = 0  # RX buffers made available, reposts included
    calls: int = 0  # call eventfd signals seen
    kicks: int = 0
    kicks_suppressed: int = 0


class NetFrontend(VhostUserFrontend):
    """virtio-net driver behaviour on a `VhostUserFrontend`: RX ring 2n, TX ring 2n+1."""

    RX_BUFFER_SIZE = 2048
    POLL_INTERVAL = 0.002

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.counters = NetCounters()
        self._rx_partial: dict[int, list[tuple[bytes, int]]] = {}  # qp -> pieces so far
        self._batches: list[_BatchRing] = []

    def _drop_vqs(self) -> None:
        for b in list(self._batches):
            b.detach()
        super()._drop_vqs()

    def tx_batch(
        self, buf_size: int = 2048, count: int | None = None, queue_pair: int = 0
    ) -> TxBatch:
        """Take TX queue `queue_pair` over with `count` (default: queue size) buffers of
        `buf_size` bytes, header included, for `TxBatch.send`. The queue must be idle."""
        return TxBatch(self, self.tx_vq(queue_pair), buf_size, count)

    def rx_batch(
        self, buf_size: int | None = None, count: int | None = None, queue_pair: int = 0
    ) -> RxBatch:
        """Take RX queue `queue_pair` over with `count` (default: queue size) buffers of
        `buf_size` (RX_BUFFER_SIZE) bytes, all posted at once, for `RxBatch.reap`."""
        size = self.RX_BUFFER_SIZE if buf_size is None else buf_size
        return RxBatch(self, self.rx_vq(queue_pair), size, count)

    @property
    def hdr_len(self) -> int:
        """12 bytes with VERSION_1 or MRG_RXBUF, else the legacy 10."""
        if self.has_feature(Feature.F_VERSION_1) or self.has_feature(Feature.NET_F_MRG_RXBUF):
            return NET_HDR_LEN
        return NET_HDR_LEN_LEGACY

    def _free_tokens(self, vq: Virtqueue, tokens: list[object]) -> None:
        if not self.mem.regions:
            return
        for token in tokens:
            if vq.index % 2 == 0:  # RX: (gpa, size)
                self.mem.free(token[0])  # type: ignore[index]
            else:  # TX: [gpa, ...]
                for gpa in token:  # type: ignore[union-attr]
                    self.mem.free(gpa)
        self._rx_partial.pop(vq.index // 2, None)

    def rx_vq(self, queue_pair: int = 0) -> Virtqueue:
        return self.vq(2 * queue_pair)

    def tx_vq(self, queue_pair: int = 0) -> Virtqueue:
        return self.vq(2 * queue_pair + 1)

    def _kick(self, vq: Virtqueue) -> None:
        if not vq.pending:
            return
        if vq.publish_and_kick():
            self.counters.kicks += 1
        else:
            self.counters.kicks_suppressed += 1

    # -- RX -----------------------------------------------------------------------------
    def post_rx_buffers(
        self, count: int, size: int | None = None, queue_pair: int = 0, *, indirect: bool = False
    ) -> None:
        """Post `count` device-writable buffers of `size` bytes (RX_BUFFER_SIZE) and kick."""
        size = self.RX_BUFFER_SIZE if size is None else size
        if size < self.hdr_len:
            raise ValueError(
                f"RX buffers of {size} bytes cannot hold the {self.hdr_len}-byte header"
            )
        vq = self.rx_vq(queue_pair)
        for _ in range(count):
            gpa = self.mem.alloc(size, 16)
            try:
                vq.add_chain([], [(gpa, size)], indirect=indirect, token=(gpa, size))
            except RingFull:
                self.mem.free(gpa)
                raise
            self.counters.rx_posted += 1
        self._kick(vq)

    def recv_packets(self, timeout: float = 1.0, queue_pair: int = 0) -> list[RxPacket]:
        """Wait up to `timeout` for received frames (the call eventfd, with the used ring
        polled too), merge MRG_RXBUF buffers by num_buffers, repost the buffers, and
        return what arrived (empty on timeout)."""
        vq = self.rx_vq(queue_pair)
        deadline = time.monotonic() + timeout
        while True:
            packets = self._take_rx(vq, queue_pair)
            if packets:
                return packets
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._wait_call(vq, min(left, self.POLL_INTERVAL))

    def recv_frames(self, timeout: float = 1.0, queue_pair: int = 0) -> list[bytes]:
        return [p.frame for p in self.recv_packets(timeout, queue_pair)]

    def _wait_call(self, vq: Virtqueue, timeout: float) -> None:
        r, _, _ = select.select([vq.call_fd], [], [], timeout)
        if r and vq.drain_call():
            self.counters.calls += 1

    def _take_rx(self, vq: Virtqueue, queue_pair: int) -> list[RxPacket]:
        if vq.drain_call():
            self.counters.calls += 1
        used = vq.reap_tokens()
        if not used:
            return []
        hl = self.hdr_len
        mrg = self.has_feature(Feature.NET_F_MRG_RXBUF)
        pieces = self._rx_partial.pop(queue_pair, [])
        packets: list[RxPacket] = []
        read_at = self.mem.locate
        for head, length, token in used:
            gpa, size = token  # type: ignore[misc]
            if length > size:
                raise FrontendError(
                    f"RX queue {vq.index}: device wrote {length} bytes into a "
                    f"{size}-byte buffer (head {head})"
                )
            if not pieces and length < hl:
                raise FrontendError(
                    f"RX queue {vq.index}: used length {length} is shorter "
                    f"than the {hl}-byte header"
                )
            try:
                mm, off = read_at(gpa, length)
                piece = mm[off:off + length]
            except FrontendError:  # straddles regions (a test's layout)
                piece = self.mem.read(gpa, length)
            pieces.append((piece, length))
            self.counters.rx_buffers += 1
            vq.add_writable(gpa, size, token)  # repost the same buffer
            self.counters.rx_posted += 1
            first = pieces[0][0]
            want = _U16.unpack_from(first, 10)[0] if mrg else 1
            if want == 0:
                raise FrontendError(f"RX queue {vq.index}: num_buffers is 0")
            if len(pieces) < want:
                continue
            if want == 1:
                frame = first[hl:]
            else:
                frame = b"".join([memoryview(first)[hl:]] + [p for p, _ in pieces[1:]])
            packets.append(RxPacket(first[:hl], frame, want))
            self.counters.rx_frames += 1
            self.counters.rx_bytes += len(frame)
            pieces = []
        if pieces:
            self._rx_partial[queue_pair] = pieces
        self._kick(vq)
        return packets

    # -- TX -----------------------------------------------------------------------------
    def send_frame(
        self,
        frame: bytes,
        *,
        hdr: bytes | None = None,
        queue_pair: int = 0,
        split: int | Sequence[int] | None = None,
        indirect: bool = False,
        kick: bool = True,
    ) -> int:
        """Put virtio_net_hdr (`hdr`, zeros by default: no offload) + `frame` on the TX
        ring and kick by the notification rules. `split=n` spreads the bytes over n
        descriptors, `split=[a, b]` makes pieces of a, b and the rest bytes. Returns the
        chain's head."""
        hl = self.hdr_len
        if hdr is None:
            hdr = bytes(hl)
        elif len(hdr) != hl:
            raise ValueError(f"virtio_net_hdr must be {hl} bytes, got {len(hdr)}")
        data = bytes(hdr) + bytes(frame)
        vq = self.tx_vq(queue_pair)
        lengths = _split_lengths(len(data), split)
        if vq.num_free < (1 if indirect else len(lengths)):
            self.reap_tx(queue_pair)
        bufs: list[tuple[int, int]] = []
        pos = 0
        try:
            for n in lengths:
                # whole multiples of the alignment: no 1..7-byte holes left between
                # buffers for every later first-fit search to walk past
                gpa = self.mem.alloc((n + 7) & ~7, 8)
                bufs.append((gpa, n))
                self.mem.write(gpa, data[pos : pos + n])
                pos += n
            head = vq.add_chain(bufs, [], indirect=indirect, token=[g for g, _ in bufs])
        except FrontendError:
            for gpa, _ in bufs:
                self.mem.free(gpa)
            raise
        self.counters.tx_frames += 1
        self.counters.tx_bytes += len(frame)
        if kick:
            self._kick(vq)
        return head

    def send_frames(
        self, frames: Iterable[bytes], *, queue_pair: int = 0, **kw: object
    ) -> list[int]:
        """Several frames, one publish and at most one kick."""
        heads = [
            self.send_frame(f, queue_pair=queue_pair, kick=False, **kw)  # type: ignore[arg-type]
            for f in frames
        ]
        self._kick(self.tx_vq(queue_pair))
        return heads

    def flush_tx(self, queue_pair: int = 0) -> None:
        """Publish and kick what `send_frame(kick=False)` left pending."""
        self._kick(self.tx_vq(queue_pair))

    def reap_tx(self, queue_pair: int = 0) -> int:
        """Free completed TX chains; returns how many completed."""
        vq = self.tx_vq(queue_pair)
        if vq.drain_call():
            self.counters.calls += 1
        done = vq.reap_tokens()
        for _head, _len, token in done:
            for gpa in token:  # type: ignore[union-attr]
                self.mem.free(gpa)
        self.counters.tx_completed += len(done)
        return len(done)

    def wait_tx_done(self, timeout: float = 1.0, queue_pair: int | None = None) -> None:
        """Wait until the device has used every TX chain (of one or all queue pairs).
        Raises FrontendError naming what is still in flight on timeout."""
        qps = range(self.queue_pairs) if queue_pair is None else [queue_pair]
        for qp in qps:
            self.flush_tx(qp)
        deadline = time.monotonic() + timeout
        while True:
            for qp in qps:
                self.reap_tx(qp)
            busy = {qp: self.tx_vq(qp).in_flight for qp in qps if self.tx_vq(qp).in_flight}
            if not busy:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrontendError(
                    f"TX not done after {timeout} s: in flight per queue pair {busy}"
                )
            fds = [self.tx_vq(qp).call_fd for qp in busy]
            select.select(fds, [], [], min(left, self.POLL_INTERVAL))


def _split_lengths(total: int, split: int | Sequence[int] | None) -> list[int]:
    if split is None:
        return [total]
    if isinstance(split, int):
        if not 1 <= split <= total:
            raise ValueError(f"cannot split {total} bytes into {split} pieces")
        base, extra = divmod(total, split)
        return [base + (1 if i < extra else 0) for i in range(split)]
    lengths = [n for n in split if n > 0]
    rest = total - sum(lengths)
    if rest < 0:
        raise ValueError(f"split {list(split)} is longer than the {total} bytes")
    return lengths + ([rest] if rest else [])


# ---------------------------------------------------------------------------------------
# The batched data path: fixed buffers, C helpers

_FE_ERRORS = {  # status -> message with err[0], err[1]
    _fast.FE_E_AHEAD: "used.idx {0} is more than the queue size past the last reaped {1}",
    _fast.FE_E_ID: "device used id {0}, which is not a buffer it was given",
    _fast.FE_E_LEN: "device wrote {0} bytes into a {1}-byte buffer",
    _fast.FE_E_RUNT: "used length {0} is shorter than the virtio-net header",
    _fast.FE_E_NUM_BUFFERS: "num_buffers is 0",
    _fast.FE_E_TOO_BIG: "frame {0} of {1} bytes does not fit a buffer",
}


class _BatchRing:
    """A virtqueue taken over by the C helpers: descriptor i < count always points at
    buffer i (one allocation each, so `detach()` can hand them to the Python path as
    ordinary chains). While attached, the Virtqueue's own methods must not be used on
    this queue (its free list is emptied so they fail with RingFull)."""

    writable = False

    def __init__(self, fe: NetFrontend, vq: Virtqueue, buf_size: int, count: int | None) -> None:
        if isinstance(vq, PackedQueue):
            raise FrontendError("the C batches drive split rings only (this one is packed)")
        count = vq.size if count is None else count
        if not 1 <= count <= vq.size:
            raise ValueError(f"{count} buffers do not fit queue {vq.index} of {vq.size}")
        if buf_size <= fe.hdr_len or buf_size >= 1 << 32:
            raise ValueError(f"buffers of {buf_size} bytes cannot hold a frame")
        if vq.in_flight or vq.pending or vq.num_free != vq.size:
            raise FrontendError(f"queue {vq.index} is in use: {vq.in_flight} chains in flight")
        self.fe = fe
        self.vq = vq
        self.buf_size = buf_size
        self.count = count
        self.gpas: list[int] = []
        self._views: dict[int, object] = {}  # id(mmap) -> cffi buffer (released on detach)
        try:
            for _ in range(count):
                self.gpas.append(fe.mem.alloc(buf_size, 64))
            q = _ffi.new("struct fe_vq *")
            self._keep = [
                _ffi.new("uint8_t *[]", count),
                _ffi.new("uint16_t[]", count),
                _ffi.new("uint8_t[]", count),
            ]
            q.host, q.free_ids, q.busy = self._keep
            for k, gpa in enumerate(self.gpas):
                q.host[k] = self._host(gpa, buf_size)
            q.desc = self._host(vq.desc_gpa, 16 * vq.size)
            q.avail = self._host(vq.avail_gpa, 6 + 2 * vq.size)
            q.used = self._host(vq.used_gpa, 6 + 8 * vq.size)
        except BaseException:
            self._release()
            raise
        q.n = vq.size
        q.event_idx = vq.event_idx
        q.kick_fd = vq.kick_fd
        q.avail_idx = vq.avail_idx
        q.last_used = vq.last_used
        q.nbufs = count
        q.buf_len = buf_size
        q.hdr_len = fe.hdr_len
        self.q = q
        self._saved_free = vq.free_heads
        vq.free_heads = []
        _fast.fe_setup(q, _ffi.new("uint64_t[]", self.gpas), self.writable)
        fe._batches.append(self)
        self._seen = (0, 0)  # (kicks, kicks_suppressed) already counted

    def _host(self, gpa: int, length: int) -> object:
        mm, off = self.fe.mem.locate(gpa, length)
        view = self._views.get(id(mm))
        if view is None:
            view = self._views[id(mm)] = _ffi.from_buffer("uint8_t[]", mm, True)
        return view + off

    def _check(self, rc: int) -> int:
        if rc < 0:
            q = self.q
            why = _FE_ERRORS.get(q.status, f"error {q.status}").format(q.err[0], q.err[1])
            q.status = 0
            raise FrontendError(f"queue {self.vq.index}: {why}")
        return rc

    def _sync_counters(self) -> None:
        """Add the kicks the C side counted since last time to fe.counters and the vq's."""
        q, c = self.q, self.fe.counters
        kicks, supp = self._seen
        self._seen = (q.kicks, q.kicks_suppressed)
        c.kicks += q.kicks - kicks
        c.kicks_suppressed += q.kicks_suppressed - supp
        self.vq.kicks += q.kicks - kicks
        self.vq.kicks_suppressed += q.kicks_suppressed - supp

    @property
    def in_flight(self) -> int:
        """Buffers the device owns."""
        return self.count - self.q.nfree

    def wait(self, timeout: float) -> bool:
        """Sleep until the device signals the call eventfd (or `timeout`); True if it did."""
        r, _, _ = select.select([self.vq.call_fd], [], [], timeout)
        if r and self.vq.drain_call():
            self.fe.counters.calls += 1
            return True
        return False

    def detach(self) -> None:
        """Give the queue back to the Python path: indices copied back, buffers the
        device still owns become ordinary chains (their tokens as post_rx_buffers and
        send_frame make them), the others are freed."""
        if self not in self.fe._batches:
            return
        self.fe._batches.remove(self)
        q, vq = self.q, self.vq
        self._sync_counters()
        vq.avail_idx = q.avail_idx
        vq.last_used = q.last_used
        free = set(self._saved_free)
        for k, gpa in enumerate(self.gpas):
            if q.busy[k]:
                free.discard(k)
                token = (gpa, self.buf_size) if self.writable else [gpa]
                vq.chains[k] = _Chain(1, None, token)
            else:
                self.fe.mem.free(gpa)
        vq.free_heads = sorted(free, reverse=True)
        self.gpas = []
        self._release()

    def _release(self) -> None:
        for view in self._views.values():
            _ffi.release(view)
        self._views = {}
        if self.gpas and self.fe.mem.regions:
            for gpa in self.gpas:
                self.fe.mem.free(gpa)
        self.gpas = []


class TxBatch(_BatchRing):
    """TX (guest -> device) in batches: `send` copies N frames into free buffers and
    publishes them at once; `reap` frees the ones the device used. Legal order::

        tx = fe.tx_batch(buf_size=2048)
        n = tx.send(b"".join(frames), array("I", map(len, frames)))  # n <= len(frames)
        tx.reap(); tx.wait(0.01); tx.flush(timeout=1.0)
        tx.detach()   # or fe.close()
    """

    def send(
        self, data: bytes | bytearray | memoryview, lens: Sequence[int], hdr: bytes | None = None
    ) -> int:
        """Put as many of the frames (back to back in `data`, lengths in `lens`, an
        `array('I')` best) as there are free buffers, each after `hdr` (zeros: no
        offload); one publish, a kick if the device wants one. Returns how many."""
        if hdr is not None and len(hdr) != self.fe.hdr_len:
            raise ValueError(f"virtio_net_hdr must be {self.fe.hdr_len} bytes, got {len(hdr)}")
        if isinstance(lens, array):
            lens_c = _ffi.from_buffer("uint32_t[]", lens)
        else:
            lens_c = _ffi.new("uint32_t[]", list(lens))
        if sum(lens) > len(data):
            raise ValueError(f"lengths add up to {sum(lens)}, more than {len(data)} bytes")
        q = self.q
        bytes0 = q.bytes
        placed = _fast.fe_tx_send(q, _ffi.from_buffer(data), lens_c, len(lens),
                                  _ffi.NULL if hdr is None else hdr)
        c = self.fe.counters
        c.tx_frames += placed
        c.tx_bytes += q.bytes - bytes0
        self._sync_counters()
        if q.status:  # FE_E_TOO_BIG: the frames before it went out
            q.status = 0
            raise FrontendError(
                f"queue {self.vq.index}: frame {placed} of {lens[placed]} bytes does not fit "
                f"a {self.buf_size}-byte buffer with the header"
            )
        return placed

    def reap(self) -> int:
        """Free the buffers the device used; returns how many."""
        done = self._check(_fast.fe_tx_reap(self.q))
        self.fe.counters.tx_completed += done
        return done

    def flush(self, timeout: float = 1.0) -> None:
        """Wait until the device has used every buffer given to it."""
        deadline = time.monotonic() + timeout
        while self.reap() >= 0 and self.in_flight:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrontendError(f"TX not done after {timeout} s: {self.in_flight} in flight")
            self.wait(min(left, NetFrontend.POLL_INTERVAL))


class RxBatch(_BatchRing):
    """RX (device -> guest) in batches: every buffer is posted at once; `reap` reads all
    used buffers, merges frames by num_buffers (MRG_RXBUF), copies up to `max_out` whole
    frames (or none: only counted) and reposts the buffers in one publish."""

    writable = True

    def __init__(self, fe: NetFrontend, vq: Virtqueue, buf_size: int, count: int | None) -> None:
        super().__init__(fe, vq, buf_size, count)
        self.mergeable = fe.has_feature(Feature.NET_F_MRG_RXBUF)
        self._out = bytearray(0)
        self._out_lens = _ffi.new("uint32_t[]", 1)
        self._nout = _ffi.new("uint32_t *")
        q = self.q
        old = q.avail_idx
        for k in range(self.count):  # post them all: one avail idx store, one kick
            _U16.pack_into(vq._avail[0], vq._avail[1] + 4 + 2 * ((old + k) % vq.size), k)
            q.busy[k] = 1
        q.nfree = 0
        vq.avail_idx = (old + self.count) & 0xFFFF
        vq.pending = []
        _fence()
        vq._put16(vq._avail_p, 2, vq.avail_idx)
        _fence()
        q.avail_idx = vq.avail_idx
        want = (vring_need_event(vq.avail_event, vq.avail_idx, old) if vq.event_idx
                else not vq.used_flags & VIRTQ_USED_F_NO_NOTIFY)
        if want:
            vq.kick()
            fe.counters.kicks += 1
        fe.counters.rx_posted += self.count

    def reap(self, max_out: int = 0, out_size: int = 0) -> tuple[int, list[bytes]]:
        """(frames completed, the first `max_out` of them as bytes when their bytes fit
        `out_size` together); every used buffer is reposted."""
        if max_out and (len(self._out) < out_size or len(self._out_lens) < max_out):
            self._out = bytearray(out_size)
            self._out_lens = _ffi.new("uint32_t[]", max_out)
        q = self.q
        buffers = q.buffers
        bytes0 = q.bytes
        out = _ffi.from_buffer(self._out) if max_out else _ffi.NULL
        n = _fast.fe_rx_reap(q, self.mergeable, out, len(self._out) if max_out else 0,
                             self._out_lens, max_out, self._nout)
        c = self.fe.counters
        used = q.buffers - buffers
        c.rx_buffers += used
        c.rx_posted += used
        c.rx_bytes += q.bytes - bytes0
        self._sync_counters()
        self._check(n)
        c.rx_frames += n
        frames = []
        pos = 0
        for k in range(self._nout[0]):
            ln = self._out_lens[k]
            frames.append(bytes(self._out[pos:pos + ln]))
            pos += ln
        return n, frames

    def recv(self, timeout: float = 1.0, max_frames: int = 256,
             out_size: int = 1 << 20) -> list[bytes]:
        """Wait up to `timeout` for frames and return (up to `max_frames` of) them."""
        deadline = time.monotonic() + timeout
        while True:
            n, frames = self.reap(max_frames, out_size)
            if n:
                return frames
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self.wait(min(left, NetFrontend.POLL_INTERVAL))
