"""virtio-net on top of the virtqueues: the frame path between the guest and us.

Queue 2n is the guest's RX (we write frames into its buffers), 2n+1 its TX (we read the
frames it sends). Every frame on the rings carries a virtio_net_hdr: 12 bytes with
VERSION_1 or MRG_RXBUF, 10 for a legacy guest without MRG_RXBUF.

`VirtioNetDevice` is the seam to the rest of the program. It satisfies netstack's
`phy.Device` protocol by shape (vhostuser never imports netstack):
`receive(now) -> (RxToken, TxToken) | None`, `transmit(now) -> TxToken | None`,
`capabilities()`. `flush()` publishes used rings and interrupts the guest once per batch.
A raw-frame hook (`on_frame`) sees every frame both ways, for tests and debugging; while it
runs, `frame_vnet` holds the first 10 bytes of that frame's virtio_net_hdr (the guest's for
a frame it sent, ours for one it is given; zeros when no offload was negotiated), for
`vhostnet capture --vnet`. Without a hook neither costs anything.
`set_frame_hook(hook, select)` adds a C predicate over a batch of frames (a
`vu_select_fn`, see _fast_build.py; apps/capture/bpf.py's pcap filters are one): the
batched paths run it where the frames lie and call the hook only for the frames it
selects, so a capture whose filter drops everything leaves them at C speed. It sees
frames as the guest wrote them (a checksum the guest left to us not yet filled in).

Batches: with the C helpers (`virtqueue.USE_C`), `drain_tx` pops, walks and locates a
batch of TX chains per C call (vu_tx_batch) and returns them to the used ring in one more;
`send_frames` and `flush_backlog` write a list of frames into RX buffers in one call
(vu_rx_batch). Without them the per-frame Python path does the same, rule for rule.
"""

from __future__ import annotations

import logging
import os
import struct
from array import array
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import vhostuser.virtqueue as _vq
from vhostuser.errors import GuestMemoryError, RingError
from vhostuser.features import (
    NET_HDR_LEN,
    NET_HDR_LEN_LEGACY,
    Feature,
    has,
)
from vhostuser.memory import GuestMemory
from vhostuser.offload import NO_OFFLOAD, BadOffload, from_guest, header_for_guest
from vhostuser.virtqueue import Chain, Virtqueue

try:
    from vhostuser._fast import ffi as _ffi
    from vhostuser._fast import lib as _lib
except ImportError:  # pragma: no cover - only without the C build
    _ffi = _lib = None

log = logging.getLogger(__name__)


def _ignore(frame) -> None:
    """A handler that takes frames and does nothing with them."""


class _OncePerInterval(logging.Filter):
    """A guest can make every frame it sends a bad one: each kind of warning (its message
    template) passes at most once per `interval` seconds, with the count of the ones held
    back since; the drop counters count them all."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        last = self._last.get(key)
        if last is not None and record.created - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = record.created
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it since)"
        return True


_warn_limit = _OncePerInterval()
log.addFilter(_warn_limit)

ETH_HLEN = 14
MIN_FRAME = ETH_HLEN
# The largest frame either side may hand over: a 64 KiB TSO segment plus headers.
MAX_FRAME = 65536 + 14 + 4
NUM_BUFFERS = struct.Struct("<H")
RX_BACKLOG_FRAMES = 256  # frames held while the guest has posted no RX buffer
RX_BACKLOG_BYTES = 4 << 20

FrameHook = Callable[[str, memoryview], None]  # ("guest-tx" | "guest-rx", frame)


class FrameSelect(Protocol):
    """What `set_frame_hook` takes as `select`: the address of a C `vu_select_fn` and of
    the context it gets as its first argument (the object keeps that context alive)."""

    c_fn: int
    c_ctx: int


@dataclass(frozen=True, slots=True)
class ChecksumOffload:
    """Which checksums the stack may leave to the device (shaped like netstack's
    ChecksumCapabilities). Only TCP: UDP/ICMP are few and may be IP-fragmented, which a
    partial checksum cannot follow; the device completes the guest's partial UDP ones."""

    ipv4: bool = False
    udp: bool = False
    tcp: bool = False
    icmp: bool = False


@dataclass(frozen=True, slots=True)
class NetCapabilities:
    """What the device carries: shaped like netstack.phy.DeviceCapabilities."""

    mtu: int = 1500
    max_burst: int | None = None
    checksum: ChecksumOffload | None = None
    tso_max: int | None = None
    lro: bool = False
    ipv6_offload: bool = False


TX_BATCH = 256  # chains popped per vu_tx_batch call (a whole ring of 256)
TX_SCRATCH = 512 << 10  # gathered frames of one batch (≥ MAX_FRAME + header)
NET_HDR_F_NEEDS_CSUM = 1


class TxBatch:
    """The arrays one vu_tx_batch call fills: per entry its head, where the frame is
    (`kind`: a region index, `nregions` for `scratch`, or a negative VU_TX_* drop),
    offset, length, error detail and the first 10 header bytes."""

    def __init__(self, size: int = TX_BATCH, scratch_size: int = TX_SCRATCH) -> None:
        self.size = size
        self.heads = _ffi.new("uint32_t[]", size)
        self.kind = _ffi.new("int32_t[]", size)
        self.off = _ffi.new("uint64_t[]", size)
        self.flen = _ffi.new("uint32_t[]", size)
        self.aux = _ffi.new("uint64_t[]", size)
        self.vhdr = _ffi.new("uint8_t[]", 10 * size)
        self.scratch = _ffi.new("uint8_t[]", scratch_size)
        self.scratch_size = scratch_size
        self.scratch_view = memoryview(_ffi.buffer(self.scratch))
        self.vhdr_view = memoryview(_ffi.buffer(self.vhdr))
        # for a frame hook's select: the frames' addresses and what it selected
        self.frames = _ffi.new("const uint8_t *[]", size)
        self.selected = _ffi.new("uint8_t[]", size)
        self.pending = _ffi.new("uint32_t *")


class TxFrames:
    """The frames of one TX batch, for `drain_tx_batches` handlers: `len()` frames of
    `nbytes` bytes in all; iterating gives each as a view (into guest memory or the
    batch's scratch), valid during the handler call only. The views are made only when
    iterated: a handler that only counts touches no frame."""

    __slots__ = ("nbytes", "_count", "_make", "_frames")

    def __init__(self, count: int, nbytes: int, make: Callable[[], list]) -> None:
        self._count = count
        self.nbytes = nbytes
        self._make = make
        self._frames: list | None = None

    @classmethod
    def of(cls, frames: list) -> TxFrames:
        out = cls(len(frames), sum(map(len, frames)), list)
        out._frames = frames
        return out

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        if self._frames is None:
            self._frames = self._make()
        return iter(self._frames)


TSO_MAX = 65000  # TCP payload per segment handed to a GUEST_TSO4/6 guest (IP total ≤ 64 KiB)


class _Outcome:
    """What `_write_rx` did with a frame the guest had room for."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_DELIVERED = _Outcome("delivered")
_DROPPED = _Outcome("dropped")


class _Done:
    """Completion of one TX chain (guest → us): pushed to the used ring once."""

    __slots__ = ("queue", "head", "done")

    def __init__(self, queue: Virtqueue, head: int) -> None:
        self.queue = queue
        self.head = head
        self.done = False

    def complete(self, dev: VirtioNetDevice) -> None:
        if not self.done:
            self.done = True
            if self.queue.ready:
                self.queue.push(self.head, 0)
                dev._dirty.add(self.queue)


class RxToken:
    """A frame the guest sent; `consume(fn)` hands `fn` a view of it (valid during the
    call only: it may point into guest memory) and then returns the buffer to the guest."""

    __slots__ = ("_dev", "_frame", "_done")

    def __init__(self, dev: VirtioNetDevice, frame, done: _Done) -> None:
        self._dev = dev
        self._frame = frame
        self._done = done

    def consume(self, fn):
        try:
            return fn(self._frame)
        finally:
            self._frame = None
            self._done.complete(self._dev)


class TxToken:
    """Room for one frame to the guest: `consume(length, fn)` lets `fn` write it."""

    __slots__ = ("_dev",)

    def __init__(self, dev: VirtioNetDevice) -> None:
        self._dev = dev

    def consume(self, length: int, fn):
        return self._dev._send_with(length, fn)


class _Chunk:
    """Frames for RX buffers: back to back in `data`, lengths in `lens` (array 'I'), and
    10 virtio_net_hdr bytes each in `hdrs` (None: no offload for any); the frames before
    `first` (`off` bytes) are done with. A batch that did not fit waits in the backlog
    as one chunk (its own copy of the bytes), written into the guest's buffers a chunk
    per C call, not a frame per Python step."""

    __slots__ = ("data", "lens", "hdrs", "first", "off", "_c")

    def __init__(self, data, lens: array, hdrs: bytes | None) -> None:
        self.data = data
        self.lens = lens
        self.hdrs = hdrs
        self.first = 0
        self.off = 0
        self._c = None  # cffi pointers to data, lens, hdrs (made once)

    @property
    def left(self) -> int:
        return len(self.lens) - self.first

    def pointers(self):
        c = self._c
        if c is None:
            from_buffer, cast = _ffi.from_buffer, _ffi.cast
            c = self._c = (
                cast("uint8_t *", from_buffer(self.data)),
                cast("uint32_t *", from_buffer(self.lens)),
                cast("uint8_t *", from_buffer(self.hdrs)) if self.hdrs is not None
                else _ffi.NULL)
        return c

    def header(self, i: int) -> bytes:
        return NO_OFFLOAD if self.hdrs is None else bytes(self.hdrs[10 * i:10 * i + 10])

    def frames(self) -> list[tuple[bytes, bytes]]:
        """(header, frame) per frame left."""
        out, o = [], self.off
        mv = memoryview(self.data)
        for i in range(self.first, len(self.lens)):
            ln = self.lens[i]
            out.append((self.header(i), bytes(mv[o:o + ln])))
            o += ln
        return out

    def rest(self) -> _Chunk:
        """The frames left, in a chunk that owns a copy of them."""
        end = self.off + sum(self.lens[self.first:])
        return _Chunk(bytes(memoryview(self.data)[self.off:end]), self.lens[self.first:],
                      None if self.hdrs is None else bytes(self.hdrs[10 * self.first:]))


class VirtioNetDevice:
    """The frame side of one vhost-user net device (all its queue pairs)."""

    def __init__(self, memory: GuestMemory, queues: list[Virtqueue], *, mtu: int = 1500) -> None:
        self._caps: tuple | None = None  # (what it was made from, capabilities())
        self.memory = memory
        self.queues = queues
        self.mtu = mtu
        self.features = 0
        self.hdr_len = NET_HDR_LEN_LEGACY
        self.mergeable = False
        self.packed = False
        self.csum_offload = False  # CSUM or GUEST_CSUM: TCP checksums left to the device
        self.guest_csum = False
        self.guest_tso = False
        self.guest_tso6 = False
        self.host_tso = False
        self.ipv6_offload = False
        self.on_frame: FrameHook | None = None
        # (hook, vu_select_fn, ctx, owner): set_frame_hook's select, valid while on_frame
        # is that hook
        self._select: tuple | None = None
        self._rx_select: tuple | None = None  # (frames, selected) arrays for RX batches
        self.frame_vnet: bytes = NO_OFFLOAD  # the header of the frame on_frame is given
        self.stats: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        # frames waiting for RX buffers, in chunks of frames back to back (see _Chunk)
        self._backlog: deque[_Chunk] = deque()
        self._backlog_frames = 0
        self._backlog_bytes = 0
        self._dirty: set[Virtqueue] = set()
        self._pending_rx: _Done | None = None  # an RxToken not consumed yet
        self._next_tx = 0
        self._injected: deque[bytes] = deque()  # frames "from the guest" we made (RARP)
        self.on_error: Callable[[Virtqueue, str], None] | None = None
        self._txq = queues[1::2]
        self._rxq0 = queues[0]
        self._txb: TxBatch | None = None
        self._discard_drops = None  # uint64_t[6]: discard_tx's drops by kind

    # -- configuration -------------------------------------------------------------
    def set_frame_hook(self, hook: FrameHook | None, select: FrameSelect | None = None
                       ) -> None:
        """Install `hook` as `on_frame` (None: no hook). With `select`, a C predicate
        saying which frames of a batch the hook wants (it must want no other: it is not
        called for them on the batched paths; on the per-frame paths it sees every
        frame and must ignore those itself)."""
        self.on_frame = hook
        if hook is None or select is None or _ffi is None:
            self._select = None
            return
        self._select = (hook, _ffi.cast("vu_select_fn", select.c_fn),
                        _ffi.cast("void *", select.c_ctx), select)

    def _hook_select(self):
        """set_frame_hook's select for the current hook, or None."""
        sel = self._select
        if sel is None or sel[0] is not self.on_frame:
            return None
        return sel

    @property
    def _tx_batches(self) -> bool:
        """Whether guest frames are taken by the C batch helpers: built and switched on
        (`virtqueue.USE_C`); they walk split and packed rings."""
        return _vq.USE_C and _ffi is not None

    def set_features(self, features: int) -> None:
        self.features = features
        self.packed = has(features, Feature.F_RING_PACKED)
        self.mergeable = has(features, Feature.NET_F_MRG_RXBUF)
        if self.mergeable or has(features, Feature.F_VERSION_1):
            self.hdr_len = NET_HDR_LEN
        else:
            self.hdr_len = NET_HDR_LEN_LEGACY
        self.guest_csum = has(features, Feature.NET_F_GUEST_CSUM)
        self.csum_offload = self.guest_csum or has(features, Feature.NET_F_CSUM)
        self.guest_tso = self.guest_csum and has(features, Feature.NET_F_GUEST_TSO4)
        self.guest_tso6 = self.guest_csum and has(features, Feature.NET_F_GUEST_TSO6)
        self.host_tso = has(features, Feature.NET_F_HOST_TSO4) or has(
            features, Feature.NET_F_HOST_TSO6)
        # The stack treats IPv6 TCP like IPv4 (checksum left to us, segments up to tso_max)
        # only when we can deliver that: a guest with GUEST_TSO4 but not GUEST_TSO6 could
        # not take a 64 KiB IPv6 segment whole, so IPv6 then keeps software checksums.
        self.ipv6_offload = self.csum_offload and (self.guest_tso6 or not self.guest_tso)

    def capabilities(self) -> NetCapabilities:
        # (asked on every poll: made again only when what it reports changed)
        key = (self.mtu, self.csum_offload, self.guest_tso, self.host_tso, self.ipv6_offload)
        caps = self._caps
        if caps is None or caps[0] != key:
            caps = self._caps = (key, NetCapabilities(
                mtu=self.mtu,
                checksum=ChecksumOffload(tcp=True) if self.csum_offload else None,
                tso_max=TSO_MAX if self.guest_tso else None,
                lro=self.host_tso,
                ipv6_offload=self.ipv6_offload,
            ))
        return caps[1]

    def _guest_header(self, frame) -> bytes:
        """The first 10 header bytes for a frame to the guest (patches its TCP checksum
        field when the stack left it to us)."""
        if not self.csum_offload:
            return NO_OFFLOAD
        return header_for_guest(frame, self.mtu, guest_csum=self.guest_csum,
                                guest_tso=self.guest_tso, guest_tso6=self.guest_tso6)

    def _rx_queues(self) -> list[Virtqueue]:
        return self.queues[0::2]

    def _tx_queues(self) -> list[Virtqueue]:
        return self._txq

    def _ring_error(self, q: Virtqueue, e: Exception) -> None:
        self.drops["ring_error"] += 1
        if self.on_error is not None:
            self.on_error(q, str(e))

    # -- guest → us ------------------------------------------------------------------
    def _pop_tx(self) -> tuple[object, Virtqueue, int] | None:
        """The next frame the guest sent, from any TX queue (round-robin), with its queue
        and head (for `_complete`). Frames on started-but-disabled queues are drained
        and discarded, as the spec asks."""
        txq = self._txq
        nq = len(txq)
        for k in range(nq):
            q = txq[(self._next_tx + k) % nq]
            while q.serviceable:
                try:
                    chain = q.pop()
                except RingError as e:
                    self._ring_error(q, e)
                    break
                if chain is None:
                    break
                if not q.enabled:
                    self.drops["tx_queue_disabled"] += 1
                    self._complete(q, chain.head)
                    continue
                frame = self._gather_tx(chain)
                if frame is None:
                    self._complete(q, chain.head)
                    continue
                if nq > 1:
                    self._next_tx = (self._next_tx + k + 1) % nq
                return frame, q, chain.head
        return None

    def _complete(self, q: Virtqueue, head: int) -> None:
        """A TX chain is done with: back to the guest (published by `flush`)."""
        if q.ready:
            q.push(head, 0)
            self._dirty.add(q)

    def _gather_tx(self, chain: Chain):
        """The frame after the virtio_net_hdr: a zero-copy view when it lies in one
        descriptor, else joined bytes. None (and a counted drop) when malformed."""
        if chain.writable:
            self.drops["tx_writable_descriptor"] += 1
            return None
        hdr = self.hdr_len
        total = 0
        for _, n in chain.readable:
            total += n
            if total > MAX_FRAME + hdr:
                self.drops["tx_too_long"] += 1
                return None
        if total < hdr + MIN_FRAME:
            self.drops["tx_runt"] += 1
            return None
        try:
            readable = chain.readable
            if len(readable) == 1:  # header and frame in one buffer: a view, no copy
                addr, n = readable[0]
                pieces = [self.memory.gpa(addr + hdr, n - hdr)]
            elif len(readable) == 2 and readable[0][1] == hdr:  # Linux: header apart
                addr, n = readable[1]
                pieces = [self.memory.gpa(addr, n)]
            else:
                pieces = self._tx_pieces(readable, hdr)
        except GuestMemoryError:
            # not in one region (it may straddle adjacent ones) or outside guest memory
            try:
                pieces = self._tx_pieces(chain.readable, hdr)
            except GuestMemoryError as e:
                self.drops["tx_bad_address"] += 1
                log.warning("guest TX buffer outside guest memory: %s", e)
                return None
        frame = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        head = NO_OFFLOAD
        if self.csum_offload:
            try:
                head = self._tx_header(chain)
                frame = from_guest(frame, head)
            except (BadOffload, GuestMemoryError) as e:
                self.drops["tx_bad_offload"] += 1
                log.warning("guest TX frame dropped: %s", e)
                return None
        self.stats["guest_tx_frames"] += 1
        self.stats["guest_tx_bytes"] += len(frame)
        if self.on_frame is not None:
            self.frame_vnet = head
            self.on_frame("guest-tx", memoryview(frame))
        return frame

    def _tx_pieces(self, readable: list[tuple[int, int]], hdr: int) -> list[memoryview]:
        """Views of the frame after the `hdr` header bytes, in order."""
        pieces: list[memoryview] = []
        skip = hdr
        for addr, n in readable:
            if skip >= n:
                skip -= n
                continue
            pieces.extend(self.memory.gpa_segments(addr + skip, n - skip))
            skip = 0
        return pieces

    def _tx_header(self, chain: Chain) -> bytes:
        """The first 10 bytes of the guest's virtio_net_hdr (it may span descriptors)."""
        out = b""
        for addr, n in chain.readable:
            out += bytes(self.memory.gpa(addr, min(n, 10 - len(out))))
            if len(out) >= 10:
                return out
        return out.ljust(10, b"\0")

    def receive(self, now: float = 0.0):
        """netstack Device: a frame from the guest, as (RxToken, TxToken), or None."""
        if self._pending_rx is not None:
            self._pending_rx.complete(self)
            self._pending_rx = None
        if self._injected:
            frame = self._injected.popleft()
            done = _Done(self.queues[1], 0)
            done.done = True
            return RxToken(self, frame, done), TxToken(self)
        got = self._pop_tx()
        if got is None:
            return None
        frame, q, head = got
        done = _Done(q, head)
        self._pending_rx = done
        return RxToken(self, frame, done), TxToken(self)

    def drain_tx(self, handler: Callable[[memoryview], None], limit: int = 1 << 30) -> int:
        """Hand every waiting guest frame to `handler` (standalone use, no stack). The
        view is valid during the call only; the buffer goes back to the guest after it."""
        if self._pending_rx is not None:
            self._pending_rx.complete(self)
            self._pending_rx = None
        n = 0
        while n < limit and self._injected:
            handler(self._injected.popleft())
            n += 1
        if self._tx_batches:
            return n + self._drain_tx_batched(handler, limit - n)
        pop = self._pop_tx
        complete = self._complete
        while n < limit:
            got = pop()
            if got is None:
                break
            frame, q, head = got
            try:
                handler(frame)
            finally:
                complete(q, head)
            n += 1
        return n

    def drain_tx_batches(self, handler: Callable[[TxFrames], None],
                         limit: int = 1 << 30) -> int:
        """`drain_tx` a batch at a time: `handler` gets each batch of waiting guest
        frames as a TxFrames (up to TX_BATCH frames, their count and bytes known without
        touching them); the buffers go back to the guest after the call. Returns the
        frames handed. Without the C helpers the batches come from the per-frame path."""
        if not self._tx_batches:
            frames: list = []
            n = self.drain_tx(frames.append, limit)  # views valid until the next pop
            if frames:
                handler(TxFrames.of([bytes(f) for f in frames]))
            return n
        if self._pending_rx is not None:
            self._pending_rx.complete(self)
            self._pending_rx = None
        n = 0
        if self._injected:
            frames = []
            while n < limit and self._injected:
                frames.append(self._injected.popleft())
                n += 1
            handler(TxFrames.of(frames))
        return n + self._drain_tx_batched(None, limit - n, handler)

    def discard_tx(self, limit: int = 8192) -> int:
        """Give every waiting guest frame's buffer straight back, counted (frames and
        bytes in `stats`, drops by reason) but never handed to Python: a sink at ring
        speed (`vhostnet serve --raw`, the benchmarks), checked as strictly as
        `drain_tx`; at most `limit` frames a call (the loop comes back for the rest: a
        guest reposting as fast as we complete cannot keep us here). With a frame hook
        (capture) or without the C helpers the frames go through `drain_tx_batches`
        instead, so the hook still sees them; but with the hook's select (see
        `set_frame_hook`) a batch goes through Python only when it selects a frame in
        it. Returns the frames taken (not counting drops), as `drain_tx`."""
        sel = None
        if self.on_frame is not None:
            sel = self._hook_select()
            if sel is None:
                return self.drain_tx_batches(lambda frames: None, limit)
        if not self._tx_batches:
            return self.drain_tx_batches(lambda frames: None, limit)
        if self._pending_rx is not None:
            self._pending_rx.complete(self)
            self._pending_rx = None
        n = 0
        while n < limit and self._injected:
            self._injected.popleft()
            n += 1
        b = self._txb
        if b is None:
            b = self._txb = TxBatch()
        drops = self._discard_drops
        if drops is None:
            drops = self._discard_drops = _ffi.new("uint64_t[6]")
        for q in self._txq:
            while n < limit and q.serviceable and q.batched and q.has_avail():
                took, status, pending = self._discard_some(q, b, limit - n, drops, sel)
                n += took
                if status or not pending or not q.enabled:  # (disabled: nothing taken)
                    break
        return n

    def _discard_some(self, q: Virtqueue, b: TxBatch, limit: int, drops, sel
                      ) -> tuple[int, int, int]:
        """One vu_tx_discard(_select) call on `q`: (frames taken, status, and the length
        of the batch it stopped at for the hook's select, handed here, or 0)."""
        pending = 0
        if sel is None:
            count, bad, nbytes, status = q.discard_tx(b, limit, self.hdr_len,
                                                      MAX_FRAME + self.hdr_len, drops)
        else:
            count, bad, nbytes, status, pending = q.discard_tx_select(
                b, limit, self.hdr_len, MAX_FRAME + self.hdr_len, drops, self.csum_offload,
                sel[1], sel[2])
        n = 0
        if count:
            self._dirty.add(q)
            if not q.enabled:
                self.drops["tx_queue_disabled"] += count
            else:
                self.stats["guest_tx_frames"] += count - bad
                self.stats["guest_tx_bytes"] += nbytes
                if bad:
                    self._count_discard_drops(drops)
                n += count - bad
        if bad:
            for i in range(6):
                drops[i] = 0
        if pending:  # a batch with frames for the hook: as drain_tx_batches does
            n += self._hand_tx_batch(q, b, pending, _ignore, status, selected=b.selected)
        if status:  # the chains before the broken one are completed: now break
            self._ring_error(q, q.batch_failed(status))
        return n, status, pending

    def _count_discard_drops(self, drops) -> None:
        lib = _lib
        for kind, name in ((lib.VU_TX_WRITABLE, "tx_writable_descriptor"),
                           (lib.VU_TX_TOO_LONG, "tx_too_long"), (lib.VU_TX_RUNT, "tx_runt"),
                           (lib.VU_TX_BAD_HEADER, "tx_bad_offload"),
                           (lib.VU_TX_NO_REGION, "tx_bad_address"),
                           (lib.VU_TX_OVERFLOW, "tx_bad_address")):
            k = drops[-kind - 1]
            if k:
                self.drops[name] += k
                if name == "tx_bad_address":
                    log.warning("%d guest TX buffers outside guest memory dropped", k)

    def _drain_tx_batched(self, handler: Callable[[memoryview], None] | None, limit: int,
                          batch_handler: Callable[[TxFrames], None] | None = None) -> int:
        """`drain_tx` by vu_tx_batch: per queue (round-robin) one C call pops and walks a
        batch of chains; frames go to `handler` as views (into guest memory, or into the
        batch's scratch when gathered), or as one TxFrames to `batch_handler`; one C
        call pushes the batch's used elements."""
        b = self._txb
        if b is None:
            b = self._txb = TxBatch()
        txq = self._txq
        nq = len(txq)
        n = 0
        idle = 0
        while n < limit and idle < nq:
            q = txq[self._next_tx % nq]
            self._next_tx = (self._next_tx + 1) % nq
            if not (q.serviceable and q.batched and q.has_avail()):
                idle += 1  # (a mapped queue always is batched)
                continue
            count, status = q.pop_tx_batch(b, limit - n, self.hdr_len,
                                           MAX_FRAME + self.hdr_len, self.csum_offload)
            if count:
                if batch_handler is not None:
                    n += self._hand_tx_frames(q, b, count, batch_handler, status)
                else:
                    n += self._hand_tx_batch(q, b, count, handler, status)
                idle = 0
            else:
                idle += 1
            if status:  # the frames before the broken chain are done with: now break
                self._ring_error(q, q.batch_failed(status))
        return n

    def _hand_tx_batch(self, q: Virtqueue, b: TxBatch, count: int,
                       handler: Callable[[memoryview], None], status: int = 0,
                       before_push: Callable[[], None] | None = None,
                       selected=None) -> int:
        """Hand a popped batch's frames to `handler`, count its drops, complete its
        chains (all of them; if the handler raises, the ones not reached go back, and
        so does a broken chain after them: it is met again next time). `before_push`
        runs after the last frame, while the views are still valid. `selected`: the
        hook's select flags for the batch (the hook sees only those frames)."""
        unpack = _ffi.unpack
        sel = None if selected is None else unpack(selected, count)
        kinds = unpack(b.kind, count)
        offs = unpack(b.off, count)
        lens = unpack(b.flen, count)
        views = self.memory.c_views()
        nregs = len(views)
        csum = self.csum_offload
        hook = self.on_frame
        handed = 0
        nbytes = 0
        done = 0
        finished = False
        try:
            if not q.enabled:
                self.drops["tx_queue_disabled"] += count
                done = count
            else:
                for kind, o, ln in zip(kinds, offs, lens, strict=True):
                    done += 1
                    if kind < 0:
                        self._tx_batch_drop(kind, b, done - 1)
                        continue
                    frame = (views[kind] if kind < nregs else b.scratch_view)[o:o + ln]
                    if csum and b.vhdr[10 * (done - 1)] & NET_HDR_F_NEEDS_CSUM:
                        h = 10 * (done - 1)
                        try:
                            frame = from_guest(frame, bytes(b.vhdr_view[h:h + 10]))
                        except BadOffload as e:
                            self.drops["tx_bad_offload"] += 1
                            log.warning("guest TX frame dropped: %s", e)
                            continue
                        ln = len(frame)
                    handed += 1
                    nbytes += ln
                    if hook is not None and (sel is None or sel[done - 1]):
                        h = 10 * (done - 1)  # (the batch read headers only for offloads)
                        self.frame_vnet = bytes(b.vhdr_view[h:h + 10]) if csum else NO_OFFLOAD
                        hook("guest-tx", memoryview(frame))
                    handler(frame)
            if before_push is not None:
                before_push()
            finished = True
        finally:
            if not finished:  # the handler raised: what it did not get goes back, and
                # a broken chain after the batch is met again (the caller's batch_failed
                # is skipped by the exception)
                q.retract_batch(b.heads, done, count, status)
            if q.ready:
                q.push_zero(b.heads, done)
                self._dirty.add(q)
            self.stats["guest_tx_frames"] += handed
            self.stats["guest_tx_bytes"] += nbytes
        return handed

    def _hand_tx_frames(self, q: Virtqueue, b: TxBatch, count: int,
                        handler: Callable[[TxFrames], None], status: int = 0) -> int:
        """`_hand_tx_batch` for a batch handler: one TxFrames call for the batch. A batch
        with nothing to do per frame (no drop, no checksum to complete, no frame hook)
        costs a few C-speed list operations, whatever its size."""
        cq = q._cq
        hook = self.on_frame
        selected = None
        if hook is not None and q.enabled:
            sel = self._hook_select()
            if sel is not None:  # the hook's select decides which frames it sees
                if _lib.vu_tx_select(cq, b.scratch, b.kind, b.off, b.flen, count, b.frames,
                                     sel[1], sel[2], b.selected):
                    selected = b.selected
                else:
                    hook = None
        if (hook is not None or not q.enabled or cq.tx_drops
                or (self.csum_offload and cq.tx_csum)):
            frames: list = []
            if selected is None and hook is None and self.on_frame is not None:
                selected = b.selected  # all zero: the hook sees none of them
            handed = self._hand_tx_batch(q, b, count, frames.append, status,
                                         lambda: handler(TxFrames.of(frames)), selected)
            return handed
        nbytes = cq.tx_bytes
        views = self.memory.c_views()

        def make() -> list:
            unpack = _ffi.unpack
            scratch = b.scratch_view
            nregs = len(views)
            return [(views[k] if k < nregs else scratch)[o:o + ln]
                    for k, o, ln in zip(unpack(b.kind, count), unpack(b.off, count),
                                        unpack(b.flen, count), strict=True)]

        try:
            handler(TxFrames(count, nbytes, make))
        finally:
            if q.ready:
                q.push_zero(b.heads, count)
                self._dirty.add(q)
            self.stats["guest_tx_frames"] += count
            self.stats["guest_tx_bytes"] += nbytes
        return count

    def _tx_batch_drop(self, kind: int, b: TxBatch, i: int) -> None:
        lib = _lib
        if kind == lib.VU_TX_WRITABLE:
            self.drops["tx_writable_descriptor"] += 1
        elif kind == lib.VU_TX_TOO_LONG:
            self.drops["tx_too_long"] += 1
        elif kind == lib.VU_TX_RUNT:
            self.drops["tx_runt"] += 1
        elif kind == lib.VU_TX_BAD_HEADER:
            self.drops["tx_bad_offload"] += 1
            log.warning("guest TX frame dropped: guest buffer %#x+%#x runs past its region",
                        b.off[i], b.aux[i])
        else:
            self.drops["tx_bad_address"] += 1
            if kind == lib.VU_TX_NO_REGION:
                why = f"guest address {b.off[i]:#x} is in no memory region"
            else:
                why = f"guest buffer {b.off[i]:#x}+{b.aux[i]:#x} overflows"
            log.warning("guest TX buffer outside guest memory: %s", why)

    def inject_from_guest(self, frame: bytes) -> None:
        """A frame that enters the stack as if the guest had sent it (SEND_RARP)."""
        if len(self._injected) < 16:
            self._injected.append(bytes(frame))

    # -- us → guest ------------------------------------------------------------------
    def transmit(self, now: float = 0.0) -> TxToken | None:
        """netstack Device: room for a frame to the guest, or None when the backlog is
        full. Before the guest has started its RX queue (a fresh attach: it has posted
        no buffers yet) frames wait in the backlog and go out when it does, as with a
        guest that is slow to post buffers; they were dropped as tx_device_busy."""
        if self._backlog_frames >= RX_BACKLOG_FRAMES:
            self.flush_backlog()
            if self._backlog_frames >= RX_BACKLOG_FRAMES:
                return None
        return TxToken(self)

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Deliver one frame to the guest (or the backlog). False if it was dropped."""
        n = len(frame)
        if not self.csum_offload and MIN_FRAME <= n <= MAX_FRAME:
            # the frame is final (no checksum to patch): copied once, straight into the
            # guest's buffers, without the intermediate buffer of _send_with
            rxq = self.queues[0]
            if self._backlog:
                self.flush_backlog()
            if not self._backlog and rxq.ready and rxq.enabled:
                got = self._write_rx(rxq, NO_OFFLOAD, frame)
                if got:
                    self._after_write(memoryview(frame))
                    return got is _DELIVERED
        dropped = self.drops.total()
        self._send_with(len(frame), lambda buf: buf.__setitem__(slice(None), frame))
        return self.drops.total() == dropped

    def send_frames(self, frames: Sequence[bytes | bytearray | memoryview]) -> int:
        """Deliver frames in order, as `send` on each would (what finds no guest buffer
        waits in the backlog); with the C helpers one vu_rx_batch call writes them all.
        Returns how many were not dropped (for a bad length, a too small buffer, a broken
        ring or a full backlog — a drop of an older frame from the backlog counts too)."""
        rxq = self.queues[0]
        dropped = self._frame_drops()
        if not (_vq.USE_C and rxq.batched):
            for f in frames:
                self.send(f)
            self._publish_rx()
            return max(0, len(frames) - (self._frame_drops() - dropped))
        good = []
        for f in frames:
            if MIN_FRAME <= len(f) <= MAX_FRAME:
                good.append(f)
            else:
                self.drops["rx_bad_length"] += 1
        if not good:
            return 0
        lens = array("I", [len(f) for f in good])
        if self.csum_offload:  # headers patch the frames: work on one copy of them all
            data = bytearray().join(good)
            mv = memoryview(data)
            heads = []
            o = 0
            for ln in lens:
                heads.append(self._guest_header(mv[o:o + ln]))
                o += ln
            hdrs = b"".join(heads)
        else:
            data = good[0] if len(good) == 1 else b"".join(good)
            hdrs = None
        self._send_batch(data, lens, hdrs)
        self._publish_rx()
        return max(0, len(frames) - (self._frame_drops() - dropped))

    def send_packed(self, data: bytes | bytearray | memoryview, lens: array,
                    hdrs: bytes | None = None) -> int:
        """Deliver frames that lie back to back in `data` (lengths in `lens`, an
        `array('I')`), each complete as it is (checksums filled: no offload header is
        made for them) or with its first 10 virtio_net_hdr bytes in `hdrs`. What finds
        no guest buffer waits in the backlog. The same as `send_frames` without a Python
        step per frame: with the C helpers one call writes the whole batch. Returns how
        many were not dropped, as `send_frames`."""
        count = len(lens)
        if not count:
            return 0
        if not isinstance(lens, array) or lens.itemsize != 4:
            lens = array("I", lens)
        total = _ffi.new("uint64_t *") if _lib is not None else None
        if total is not None:
            bad = _lib.vu_lens_check(_ffi.from_buffer("uint32_t[]", lens), count, MIN_FRAME, MAX_FRAME,
                                     total)
            nbytes = total[0]
        else:  # pragma: no cover - only without the C build
            bad = sum(not MIN_FRAME <= n <= MAX_FRAME for n in lens)
            nbytes = sum(lens)
        if nbytes > len(data) or (hdrs is not None and len(hdrs) != 10 * count):
            raise ValueError(f"{count} frames of {nbytes} bytes (headers: "
                             f"{None if hdrs is None else len(hdrs)}) in {len(data)} bytes")
        rxq = self.queues[0]
        if bad or not (_vq.USE_C and rxq.batched):
            # per frame: the Python path, or lengths to refuse one by one
            dropped = self._frame_drops()
            mv = memoryview(data)
            o = 0
            good: list = []
            heads: list = []
            for i, ln in enumerate(lens):
                if MIN_FRAME <= ln <= MAX_FRAME:
                    good.append(mv[o:o + ln])
                    heads.append(NO_OFFLOAD if hdrs is None else hdrs[10 * i:10 * i + 10])
                else:
                    self.drops["rx_bad_length"] += 1
                o += ln
            if good and _vq.USE_C and rxq.batched:
                self._send_batch(b"".join(good), array("I", map(len, good)),
                                 None if hdrs is None else b"".join(heads))
            else:
                for head, f in zip(heads, good, strict=True):
                    self._send_one(head, f)
            self._publish_rx()
            return max(0, count - (self._frame_drops() - dropped))
        dropped = self._frame_drops()
        self._send_batch(data, lens, hdrs, nbytes)
        self._publish_rx()
        return max(0, count - (self._frame_drops() - dropped))

    def _publish_rx(self) -> None:
        """Make what a batch wrote visible at once, so the driver takes it (and posts
        buffers again) while we go on; the interrupt it may want is still decided once
        per batch, by `flush`. (Publishing only at flush, once per service pass, held
        the frames back from a polling driver: 64-byte frames to DPDK's testpmd went
        from 3.5 to ~9 M/s.)"""
        q = self._rxq0
        if q in self._dirty:
            q.publish()

    def _send_one(self, head: bytes, frame) -> None:
        """One frame with a header of our own (the Python path of send_packed)."""
        self.stats["guest_rx_frames"] += 1
        self.stats["guest_rx_bytes"] += len(frame)
        if self.on_frame is not None:
            self.frame_vnet = head
            self.on_frame("guest-rx", memoryview(frame))
        self._backlog_push(bytes(frame), array("I", [len(frame)]),
                           None if head == NO_OFFLOAD else bytes(head))
        self.flush_backlog()
        self._trim_backlog()

    def _frame_drops(self) -> int:
        d = self.drops
        return d["rx_bad_length"] + d["rx_buffer_too_small"] + d["rx_no_buffer"] + d["ring_error"]

    def _send_batch(self, data, lens: array, hdrs: bytes | None,
                    nbytes: int | None = None) -> None:
        """Frames of valid lengths (`nbytes` in all), back to back in `data`, by
        vu_rx_batch; what does not fit waits in the backlog as one chunk."""
        rxq = self.queues[0]
        count = len(lens)
        if nbytes is None:
            nbytes = sum(lens)
        self.stats["guest_rx_frames"] += count
        self.stats["guest_rx_bytes"] += nbytes
        if self.on_frame is not None:
            self._hook_rx_batch(data, lens, hdrs)
        if self._backlog:
            self.flush_backlog()
        chunk = _Chunk(data, lens, hdrs)
        if not self._backlog and rxq.ready and rxq.enabled:
            self._fill_chunk(rxq, chunk)
        if chunk.left:
            self._backlog_add(chunk.rest())
            self._trim_backlog()

    def _hook_rx_batch(self, data, lens: array, hdrs: bytes | None) -> None:
        """Show frames back to back in `data` to the hook: all of them, or only those
        its select selects when it has one."""
        hook = self.on_frame
        count = len(lens)
        flags = None
        sel = self._hook_select()
        if sel is not None:
            arrays = self._rx_select
            if arrays is None or len(arrays[1]) < count:
                arrays = self._rx_select = (_ffi.new("const uint8_t *[]", max(count, 256)),
                                            _ffi.new("uint8_t[]", max(count, 256)))
            frames, out = arrays
            if not _lib.vu_packed_select(_ffi.from_buffer("uint8_t[]", data),
                                         _ffi.from_buffer("uint32_t[]", lens), count,
                                         frames, sel[1], sel[2], out):
                return
            flags = _ffi.unpack(out, count)
        mv = memoryview(data)
        o = 0
        for i, ln in enumerate(lens):
            if flags is None or flags[i]:
                self.frame_vnet = NO_OFFLOAD if hdrs is None else hdrs[10 * i:10 * i + 10]
                hook("guest-rx", mv[o:o + ln])
            o += ln

    # -- the backlog: frames waiting for RX buffers ------------------------------------
    def _backlog_push(self, data: bytes, lens: array, hdrs: bytes | None) -> None:
        self._backlog_add(_Chunk(data, lens, hdrs))

    def _backlog_add(self, chunk: _Chunk) -> None:
        self._backlog.append(chunk)
        self._backlog_frames += chunk.left
        self._backlog_bytes += len(chunk.data) - chunk.off

    def _backlog_done(self, k: int, nbytes: int) -> None:
        """`k` frames (`nbytes`) of the first chunk went to the guest, or were dropped."""
        self._backlog_frames -= k
        self._backlog_bytes -= nbytes
        if not self._backlog[0].left:
            self._backlog.popleft()

    def _trim_backlog(self) -> None:
        """Drop the oldest frames past RX_BACKLOG_FRAMES / RX_BACKLOG_BYTES (counted)."""
        while (self._backlog_frames > RX_BACKLOG_FRAMES
               or self._backlog_bytes > RX_BACKLOG_BYTES):
            c = self._backlog[0]
            frames, nbytes, k, gone = self._backlog_frames, self._backlog_bytes, 0, 0
            for i in range(c.first, len(c.lens)):
                if frames <= RX_BACKLOG_FRAMES and nbytes <= RX_BACKLOG_BYTES:
                    break
                ln = c.lens[i]
                frames -= 1
                nbytes -= ln
                gone += ln
                k += 1
            c.first += k
            c.off += gone
            self._backlog_done(k, gone)
            self.drops["rx_no_buffer"] += k

    def backlog_entries(self) -> list[tuple[bytes, bytes]]:
        """The frames waiting for RX buffers, oldest first, as (header, frame)."""
        return [e for c in self._backlog for e in c.frames()]

    @property
    def backlog_frames(self) -> int:
        return self._backlog_frames

    def _fill_chunk(self, q: Virtqueue, chunk: _Chunk) -> tuple[int, int]:
        """Write the chunk's frames into RX buffers by vu_rx_batch (a frame the C store
        cannot hold by `_write_rx`) and move its start past them. Returns how many were
        consumed (written, or dropped for a too small buffer) and their bytes; the rest
        wait for more buffers."""
        cdata, clens, chdrs = chunk.pointers()
        lens, hdrs = chunk.lens, chunk.hdrs
        total = len(lens)
        done = first = chunk.first
        off = off0 = chunk.off
        hdr = self.hdr_len
        while done < total and q.ready and q.enabled:
            k, bad, err, slow = q.fill_rx(cdata + off, clens + done, total - done,
                                          chdrs + 10 * done if hdrs is not None else chdrs,
                                          hdr, self.mergeable)
            cq = q._cq
            if k or bad:
                self._dirty.add(q)
            if bad:
                self.drops["rx_bad_address"] += bad
                log.warning("guest RX buffer outside guest memory: guest address %#x",
                            cq.err[0])
            if k:  # (the summary of the call that consumed them)
                if cq.rx_small:
                    self.drops["rx_buffer_too_small"] += cq.rx_small
                off += cq.rx_bytes
                done += k
            if err is not None:
                self._ring_error(q, err)
                break
            if not slow:
                break
            ln = lens[done]
            if self._write_rx(q, chunk.header(done), memoryview(chunk.data)[off:off + ln]) is None:
                break
            off += ln
            done += 1
        chunk.first, chunk.off = done, off
        return done - first, off - off0

    def _send_with(self, length: int, fn):
        if length < MIN_FRAME or length > MAX_FRAME:
            self.drops["rx_bad_length"] += 1
            return fn(memoryview(bytearray(length)))
        rxq = self._rxq0
        hdr = self.hdr_len
        # Fast path: no backlog and one buffer big enough: let fn write into guest memory.
        if not self._backlog and rxq.ready and rxq.enabled:
            try:
                chain = rxq.pop()
            except RingError as e:
                self._ring_error(rxq, e)
                chain = None
            if chain is not None:
                if len(chain.writable) == 1 and chain.writable[0][1] >= hdr + length:
                    try:
                        view = self.memory.gpa(chain.writable[0][0], hdr + length)
                    except GuestMemoryError:
                        # not in one region: it may straddle adjacent regions, which
                        # the scatter path below handles (and it drops a bad address)
                        rxq.unpop()
                        view = None
                    if view is not None:
                        body = view[hdr:]
                        result = fn(body)
                        view[:hdr] = _HEADERS[hdr]
                        head = self._guest_header(body)
                        view[:10] = head
                        self._after_write(body, head)
                        view.release()
                        if self.memory.log is not None:
                            self.memory.log.mark(chain.writable[0][0], hdr + length)
                        rxq.push(chain.head, hdr + length)
                        self._dirty.add(rxq)
                        return result
                else:
                    rxq.unpop()
        buf = bytearray(length)
        result = fn(memoryview(buf))
        head = self._guest_header(buf)
        self._after_write(memoryview(buf), head)
        self._backlog_push(bytes(buf), array("I", [length]),
                           None if head == NO_OFFLOAD else head)
        self.flush_backlog()
        self._trim_backlog()
        return result

    def _after_write(self, frame: memoryview, head: bytes = NO_OFFLOAD) -> None:
        self.stats["guest_rx_frames"] += 1
        self.stats["guest_rx_bytes"] += len(frame)
        if self.on_frame is not None:
            self.frame_vnet = head
            self.on_frame("guest-rx", frame)

    @property
    def has_backlog(self) -> bool:
        return bool(self._backlog)

    def flush_backlog(self) -> None:
        """Move waiting frames into RX buffers the guest has posted since: a chunk per
        vu_rx_batch call with the C helpers, else frame by frame."""
        rxq = self._rxq0
        while self._backlog and rxq.ready and rxq.enabled:
            c = self._backlog[0]
            if _vq.USE_C and rxq.batched:
                done, nbytes = self._fill_chunk(rxq, c)
            else:
                done = nbytes = 0
                for head, frame in c.frames():
                    if self._write_rx(rxq, head, frame) is None:
                        break
                    done += 1
                    nbytes += len(frame)
                c.first += done
                c.off += nbytes
            if done:
                self._backlog_done(done, nbytes)
            if c.left:
                break
        self._publish_rx()

    def _write_rx(self, q: Virtqueue, head: bytes, frame) -> _Outcome | None:
        """Scatter the header and one frame into guest RX buffers (several with
        MRG_RXBUF), copying the frame once. None when the guest has not posted enough
        (nothing consumed then); else _DELIVERED, or _DROPPED (the buffer was used)."""
        hdr = self.hdr_len
        need = hdr + len(frame)
        chains: list[Chain] = []
        room = 0
        try:
            while room < need:
                if len(chains) >= q.size:
                    # More buffers than the ring holds for one frame: a guest re-posting
                    # (empty) buffers as fast as we pop them would keep us here forever.
                    raise RingError(f"RX frame of {need} bytes still short after "
                                    f"{len(chains)} buffers ({room} bytes)")
                chain = q.pop()
                if chain is None:
                    q.unpop(len(chains))
                    return None
                chains.append(chain)
                room += chain.writable_len
                if not self.mergeable:
                    break
        except RingError as e:
            self._ring_error(q, e)
            return None
        if room < need:  # one buffer without MRG_RXBUF, and too small
            self.drops["rx_buffer_too_small"] += 1
            q.push(chains[0].head, 0)
            self._dirty.add(q)
            return _DROPPED
        if hdr != NET_HDR_LEN:
            hb = head
        elif len(chains) == 1 and head is NO_OFFLOAD:
            hb = _HEADERS[hdr]
        else:
            hb = head + NUM_BUFFERS.pack(len(chains))
        writable = chains[0].writable
        if len(chains) == 1 and len(writable) == 1:  # the common case: one buffer
            try:
                view = self.memory.gpa(writable[0][0], need)
            except GuestMemoryError:
                view = None  # straddles regions, or a bad address: the general path
            if view is not None:
                view[:hdr] = hb
                view[hdr:] = frame
                view.release()
                if self.memory.log is not None:
                    self.memory.log.mark(writable[0][0], need)
                q.push(chains[0].head, need)
                self._dirty.add(q)
                return _DELIVERED
        src = memoryview(frame)
        mem = self.memory
        dirty = mem.log
        off = 0
        for chain in chains:
            start = off
            try:
                for addr, n in chain.writable:
                    if off >= need:
                        break
                    take = min(n, need - off)
                    if off >= hdr:  # a whole buffer of frame bytes: one view when it can
                        try:
                            piece = mem.gpa(addr, take)
                        except GuestMemoryError:
                            piece = None  # straddles regions, or bad: piece by piece
                        if piece is not None:
                            piece[:] = src[off - hdr:off - hdr + take]
                            piece.release()
                            if dirty is not None:
                                dirty.mark(addr, take)
                            off += take
                            continue
                    for piece in mem.gpa_segments(addr, take):
                        k = len(piece)
                        if off >= hdr:
                            piece[:] = src[off - hdr:off - hdr + k]
                        elif off + k <= hdr:
                            piece[:] = hb[off:off + k]
                        else:
                            piece[:hdr - off] = hb[off:]
                            piece[hdr - off:] = src[:off + k - hdr]
                        off += k
                    if dirty is not None:
                        dirty.mark(addr, take)
            except GuestMemoryError as e:
                log.warning("guest RX buffer outside guest memory: %s", e)
                self.drops["rx_bad_address"] += 1
            q.push(chain.head, off - start)
        self._dirty.add(q)
        return _DELIVERED

    # -- notifications ---------------------------------------------------------------
    def flush(self) -> int:
        """Publish used rings touched since the last flush and interrupt the guest where
        it wants it. Returns how many interrupts were sent."""
        if self._pending_rx is not None:
            self._pending_rx.complete(self)
            self._pending_rx = None
        sent = 0
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, set()
        for q in dirty:
            q.publish()
            if q.take_unsignalled() and q.call_fd is not None and q.should_notify():
                try:
                    os.eventfd_write(q.call_fd, 1)
                    q.stats.notified += 1
                    sent += 1
                except OSError as e:
                    log.debug("call eventfd of queue %d: %s", q.index, e)
        return sent

    def reset(self) -> None:
        self._backlog.clear()
        self._backlog_frames = 0
        self._backlog_bytes = 0
        self._dirty.clear()
        self._pending_rx = None
        self._injected.clear()


# A header with no offloads; the 12-byte form carries num_buffers = 1 (one buffer), which
# virtio asks for even without MRG_RXBUF.
_HEADERS = {NET_HDR_LEN: bytes(10) + NUM_BUFFERS.pack(1), NET_HDR_LEN_LEGACY: bytes(10)}
