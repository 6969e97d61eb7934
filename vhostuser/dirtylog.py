"""The dirty-page log of live migration (vhost-user SET_LOG_BASE with LOG_SHMFD).

While the front-end migrates a running guest it copies guest RAM to the destination and
copies again every page written since. Pages its vCPUs write it tracks itself; pages we
write (RX buffers, used rings) it knows only from this log: a bitmap in shared memory,
one bit per 4 KiB page of guest-physical memory, bit `p % 8` of byte `p // 8` for page
`p` (as the kernel's vhost and DPDK's lib/vhost write it). The front-end reads and clears
it word by word with atomic exchanges, so a bit is set with an atomic OR (in C) and only
ever after the write it stands for.

Logging is on while VHOST_F_LOG_ALL is negotiated and a log is mapped: then
`GuestMemory.log` is the `DirtyLog`, and every writer of guest memory marks what it wrote.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat

from vhostuser.errors import InvalidRequest

try:
    from vhostuser._fast import ffi as _ffi
    from vhostuser._fast import lib as _lib
except ImportError:  # pragma: no cover - only without the C build
    _ffi = _lib = None

log = logging.getLogger(__name__)

PAGE_SHIFT = 12  # VHOST_LOG_PAGE: 4 KiB
MAX_LOG_SIZE = 1 << 32  # a bit per 4 KiB page of 128 TiB of guest memory


class DirtyLog:
    """One mapped log. `mark(gpa, length)` sets the bits of the pages it touches."""

    def __init__(self, fd: int, size: int, offset: int) -> None:
        """Map `size` bytes at `offset` of `fd` (which stays the caller's)."""
        if size == 0 or size > MAX_LOG_SIZE or offset > MAX_LOG_SIZE:
            raise InvalidRequest(f"dirty log of {size:#x} bytes at {offset:#x} refused")
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise InvalidRequest(f"dirty log fd: {e}") from None
        if stat.S_ISREG(st.st_mode) and st.st_size < offset + size:
            raise InvalidRequest(f"dirty log needs {offset + size:#x} bytes of its file, "
                                 f"which has {st.st_size:#x}")
        try:
            self._map = mmap.mmap(fd, offset + size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError, OverflowError) as e:
            raise InvalidRequest(f"cannot map the dirty log ({size:#x} bytes): {e}") from None
        self.size = size
        self.view = memoryview(self._map)[offset:offset + size]
        self.pages = size * 8  # pages it covers
        self.c = _ffi.from_buffer(self.view) if _ffi is not None else None
        self.marked = 0  # mark() calls
        self.outside = 0  # marks of pages past the log's end (ignored)

    def mark(self, gpa: int, length: int) -> None:
        """Log a write of `length` bytes at guest-physical `gpa`."""
        if length <= 0:
            return
        self.marked += 1
        if self.c is not None:
            if _lib.vu_log_write(self.c, self.size, gpa, length):
                self._outside(gpa, length)
            return
        first, last = gpa >> PAGE_SHIFT, (gpa + length - 1) >> PAGE_SHIFT
        if last >= self.pages:
            self._outside(gpa, length)
            last = self.pages - 1
        v = self.view
        for p in range(first, last + 1):
            v[p >> 3] |= 1 << (p & 7)

    def _outside(self, gpa: int, length: int) -> None:
        if not self.outside:
            log.warning("dirty log of %d pages: a write at %#x+%#x lies past it", self.pages,
                        gpa, length)
        self.outside += 1

    def count_outside(self, n: int) -> None:
        """Writes past the log the C batch path met (it marks what lies inside)."""
        if not self.outside:
            log.warning("dirty log of %d pages: %d writes lie past it", self.pages, n)
        self.outside += n

    def is_marked(self, gpa: int) -> bool:
        p = gpa >> PAGE_SHIFT
        return p < self.pages and bool(self.view[p >> 3] >> (p & 7) & 1)

    def close(self) -> None:
        if self.c is not None:
            _ffi.release(self.c)
            self.c = None
        self.view.release()
        try:
            self._map.close()
        except BufferError:  # pragma: no cover - a view escaped; GC unmaps it
            pass
