"""Guest memory: the regions the front-end shares with us, mapped and bounds-checked.

Two address spaces reach us: front-end virtual addresses (ring addresses in
SET_VRING_ADDR) and guest physical addresses (every descriptor). Both are translated here
and nowhere else, with the overflow, gap and straddle checks a hostile guest makes
necessary. Views handed out are zero-copy `memoryview`s of the `mmap`; they must not
outlive the table (the virtqueues drop theirs when the table changes).
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vhostuser.errors import GuestMemoryError, InvalidRequest
from vhostuser.protocol import MemRegion

if TYPE_CHECKING:
    from vhostuser.dirtylog import DirtyLog

try:
    from vhostuser._fast import ffi as _ffi
except ImportError:  # pragma: no cover - only without the C build
    _ffi = None

log = logging.getLogger(__name__)

U64_MAX = (1 << 64) - 1
MAX_SLOTS = 32  # regions accepted through ADD_MEM_REG (GET_MAX_MEM_SLOTS answer)


@dataclass(slots=True, eq=False)
class Region:
    guest_phys_addr: int
    size: int
    userspace_addr: int
    mmap_offset: int
    _map: mmap.mmap | None = field(default=None, repr=False)
    view: memoryview | None = field(default=None, repr=False)
    # the view exported to cffi (C helpers' host pointer); released before the view
    cbuf: object = field(default=None, repr=False)
    # the file behind it (st_dev, st_ino), and how many ADD_MEM_REGs hold it: QEMU runs a
    # vhost device per queue pair over one connection, and each adds every region
    ident: tuple[int, int] | None = None
    refs: int = 1

    @property
    def gpa_end(self) -> int:
        return self.guest_phys_addr + self.size

    @property
    def uva_end(self) -> int:
        return self.userspace_addr + self.size

    def describe(self) -> MemRegion:
        return MemRegion(self.guest_phys_addr, self.size, self.userspace_addr, self.mmap_offset)

    def host(self):
        """The region's first byte as a cffi pointer (the export lives until unmap)."""
        if self.cbuf is None and self.view is not None:
            self.cbuf = _ffi.from_buffer(self.view)
        return self.cbuf

    def unmap(self) -> None:
        if self.cbuf is not None:
            _ffi.release(self.cbuf)
            self.cbuf = None
        if self.view is not None:
            self.view.release()
            self.view = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive somewhere; GC will unmap it
                log.warning("guest memory region %#x still referenced; unmapped later",
                            self.guest_phys_addr)
            self._map = None


def _validate(desc: MemRegion) -> None:
    if desc.memory_size == 0:
        raise InvalidRequest("memory region of size 0")
    for name, base in (("guest", desc.guest_phys_addr), ("user", desc.userspace_addr),
                       ("mmap offset", desc.mmap_offset)):
        if base + desc.memory_size - 1 > U64_MAX:
            raise InvalidRequest(f"memory region {name} address {base:#x} + size "
                                 f"{desc.memory_size:#x} overflows 64 bits")


def map_region(desc: MemRegion, fd: int) -> Region:
    """mmap one region from `fd` (which stays owned by the caller). The whole
    [0, mmap_offset + size) range of the file is mapped, as libvhost-user does, so an
    offset that is not page-aligned works; the file must be large enough, or touching
    the end would SIGBUS the whole process."""
    _validate(desc)
    total = desc.mmap_offset + desc.memory_size
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise InvalidRequest(f"memory region fd {fd}: {e}") from None
    if stat.S_ISREG(st.st_mode) and st.st_size < total:
        raise InvalidRequest(f"memory region needs {total:#x} bytes of its file, which has "
                             f"{st.st_size:#x}")
    try:
        m = mmap.mmap(fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError, OverflowError) as e:
        raise InvalidRequest(f"cannot map memory region of {total:#x} bytes: {e}") from None
    view = memoryview(m)[desc.mmap_offset:total]
    return Region(desc.guest_phys_addr, desc.memory_size, desc.userspace_addr,
                  desc.mmap_offset, m, view, ident=(st.st_dev, st.st_ino))


def _overlaps(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


class GuestMemory:
    """The current memory table. Lookups try the last region hit first (buffers cluster)."""

    def __init__(self) -> None:
        self.regions: list[Region] = []
        self._last: Region | None = None
        self.generation = 0  # bumped on every change; views from older generations are stale
        # (generation, array, count, views)
        self._ctable: tuple[int, object, int, list] | None = None
        # the dirty-page log while the front-end migrates the guest (VHOST_F_LOG_ALL with
        # a log mapped): whoever writes guest memory marks it there (see dirtylog.py)
        self.log: DirtyLog | None = None

    def __len__(self) -> int:
        return len(self.regions)

    # -- table changes ---------------------------------------------------------------
    def check_new(self, descs: list[MemRegion], existing: list[Region] | None = None) -> None:
        """Refuse zero-size, overflowing or overlapping regions before mapping anything."""
        spans = [(r.guest_phys_addr, r.gpa_end, r.userspace_addr, r.uva_end)
                 for r in (existing or [])]
        for d in descs:
            _validate(d)
            g0, g1 = d.guest_phys_addr, d.guest_phys_addr + d.memory_size
            u0, u1 = d.userspace_addr, d.userspace_addr + d.memory_size
            for s in spans:
                if _overlaps(g0, g1, s[0], s[1]):
                    raise InvalidRequest(f"memory region at guest {g0:#x} overlaps another")
                if _overlaps(u0, u1, s[2], s[3]):
                    raise InvalidRequest(f"memory region at user {u0:#x} overlaps another")
            spans.append((g0, g1, u0, u1))

    def set_table(self, descs: list[MemRegion], fds: list[int]) -> None:
        """Replace the whole table (SET_MEM_TABLE). On any error the old table stays."""
        if len(descs) != len(fds):
            raise InvalidRequest(f"{len(descs)} regions but {len(fds)} fds")
        self.check_new(descs)
        new: list[Region] = []
        try:
            for d, fd in zip(descs, fds, strict=True):
                new.append(map_region(d, fd))
        except Exception:
            for r in new:
                r.unmap()
            raise
        self.clear()
        self.regions = new
        self.generation += 1

    def add_region(self, desc: MemRegion, fd: int) -> bool:
        """ADD_MEM_REG. A region equal to one we hold (same addresses, size, offset and
        file) only counts one more holder: QEMU's vhost device for each further queue
        pair sends the whole table again over the same connection. Returns whether the
        table changed. Anything else overlapping is refused."""
        same = self._same(desc, fd)
        if same is not None:
            same.refs += 1
            return False
        if len(self.regions) >= MAX_SLOTS:
            raise InvalidRequest(f"no free memory slot (max {MAX_SLOTS})")
        self.check_new([desc], self.regions)
        self.regions.append(map_region(desc, fd))
        self.generation += 1
        return True

    def _same(self, desc: MemRegion, fd: int) -> Region | None:
        for r in self.regions:
            if (r.guest_phys_addr == desc.guest_phys_addr and r.size == desc.memory_size
                    and r.userspace_addr == desc.userspace_addr
                    and r.mmap_offset == desc.mmap_offset):
                try:
                    st = os.fstat(fd)
                except OSError:
                    return None
                return r if r.ident == (st.st_dev, st.st_ino) else None
        return None

    def remove_region(self, desc: MemRegion) -> bool:
        """REM_MEM_REG: one holder fewer; the region goes with its last holder. Returns
        whether the table changed."""
        for r in self.regions:
            if (r.guest_phys_addr == desc.guest_phys_addr and r.size == desc.memory_size
                    and r.userspace_addr == desc.userspace_addr):
                if r.refs > 1:
                    r.refs -= 1
                    return False
                self.regions.remove(r)
                if self._last is r:
                    self._last = None
                self.generation += 1
                r.unmap()
                return True
        raise InvalidRequest(f"no memory region at guest {desc.guest_phys_addr:#x} "
                             f"size {desc.memory_size:#x} to remove")

    def clear(self) -> None:
        regions, self.regions = self.regions, []
        self._last = None
        for r in regions:
            r.unmap()
        self.generation += 1

    # -- translation -----------------------------------------------------------------
    def c_table(self) -> tuple[object, int]:
        """The regions as a cffi `struct vu_region[]` and its length, for the C helpers
        (rebuilt when the table changes)."""
        t = self._ctable
        if t is None or t[0] != self.generation:
            regions = [r for r in self.regions if r.view is not None]
            arr = _ffi.new("struct vu_region[]", max(1, len(regions)))
            for k, r in enumerate(regions):
                arr[k].gpa = r.guest_phys_addr
                arr[k].size = r.size
                arr[k].host = _ffi.cast("uint8_t *", r.host())
            t = self._ctable = (self.generation, arr, len(regions),
                                [r.view for r in regions])
        return t[1], t[2]

    def c_views(self) -> list[memoryview]:
        """The region views in `c_table()` order (a C helper's region index → view)."""
        self.c_table()
        return self._ctable[3]

    def _find_gpa(self, addr: int) -> Region | None:
        r = self._last
        if r is not None and r.guest_phys_addr <= addr < r.gpa_end:
            return r
        for r in self.regions:
            if r.guest_phys_addr <= addr < r.gpa_end:
                self._last = r
                return r
        return None

    def gpa(self, addr: int, length: int) -> memoryview:
        """A view of guest-physical [addr, addr+length) that lies in one region."""
        r = self._last
        if r is None or not (r.guest_phys_addr <= addr < r.gpa_end):
            r = self._find_gpa(addr)
            if r is None:
                raise GuestMemoryError(f"guest address {addr:#x} is in no memory region")
        off = addr - r.guest_phys_addr
        if length < 0 or off + length > r.size:
            raise GuestMemoryError(f"guest buffer {addr:#x}+{length:#x} runs past its region")
        return r.view[off:off + length]

    def gpa_segments(self, addr: int, length: int) -> list[memoryview]:
        """Views covering guest-physical [addr, addr+length), which may straddle adjacent
        regions (the pieces are returned in order). Gaps and overflow raise."""
        if length < 0 or addr + length - 1 > U64_MAX:
            raise GuestMemoryError(f"guest buffer {addr:#x}+{length:#x} overflows")
        out = []
        while length > 0:
            r = self._find_gpa(addr)
            if r is None:
                raise GuestMemoryError(f"guest address {addr:#x} is in no memory region")
            off = addr - r.guest_phys_addr
            n = min(length, r.size - off)
            out.append(r.view[off:off + n])
            addr += n
            length -= n
        return out

    def uva(self, addr: int, length: int) -> memoryview:
        """A view of front-end virtual [addr, addr+length) (ring addresses): it must lie
        in one region; QEMU never splits a ring across regions."""
        if length <= 0 or addr + length - 1 > U64_MAX:
            raise GuestMemoryError(f"ring area {addr:#x}+{length:#x} is invalid")
        for r in self.regions:
            if r.userspace_addr <= addr < r.uva_end:
                off = addr - r.userspace_addr
                if off + length > r.size:
                    raise GuestMemoryError(f"ring area {addr:#x}+{length:#x} runs past the "
                                           "end of its region")
                return r.view[off:off + length]
        raise GuestMemoryError(f"ring address {addr:#x} is in no memory region")

    def uva_to_gpa(self, addr: int) -> int:
        """The guest-physical address of front-end virtual `addr` (a ring's, to log it)."""
        for r in self.regions:
            if r.userspace_addr <= addr < r.uva_end:
                return r.guest_phys_addr + (addr - r.userspace_addr)
        raise GuestMemoryError(f"ring address {addr:#x} is in no memory region")
