"""The batched C ring path (vu_tx_batch, vu_rx_batch) against the per-frame Python path it
replaces: the same random rings — good frames in every layout, runts, writable TX
descriptors, addresses in gaps or straddling adjacent regions, over-long chains, loops,
heads past the queue size — are served once with `virtqueue.USE_C` on and once off, and
everything the guest or the stack can see must be equal: frames handed on, guest memory,
used rings, queue indices and state, drop counters and the backlog. Split and packed
rings alike (a packed ring's broken chains: an indirect descriptor inside a chain, a
chain running around the whole ring)."""

from __future__ import annotations

import random
import struct

import pytest

import vhostuser.virtqueue as virtqueue
from vhostuser.features import (
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    Feature,
    bits,
)
from vhostuser.memory import GuestMemory, Region
from vhostuser.net import MAX_FRAME, VirtioNetDevice
from vhostuser.packed import F_AVAIL, F_USED, PackedVirtqueue
from vhostuser.protocol import VringAddr

pytestmark = pytest.mark.skipif(not virtqueue.HAVE_C, reason="vhostuser._fast not built")

DESC = struct.Struct("<QIHH")
QSIZE = 64
# two adjacent regions (buffers may straddle them), a gap, then a small third region
REGIONS = [(0x0, 0x20000), (0x20000, 0x20000), (0x50000, 0x1000)]
BOUNDARY = 0x20000
GAP = 0x48000
RINGS = {0: 0x1000, 1: 0x3000}  # RX, TX: desc, then avail and used at these offsets
AVAIL_OFF, USED_OFF = 0x800, 0x1000
DATA = 0x6000  # buffers are allocated from here

MRG = bits(Feature.F_VERSION_1, Feature.NET_F_MRG_RXBUF)
FEATURES = {
    "mrg": MRG,
    "no-mrg": bits(Feature.F_VERSION_1),
    "legacy": 0,
    "csum": MRG | bits(Feature.NET_F_CSUM, Feature.NET_F_GUEST_CSUM),
}


class Guest:
    """Guest memory (bytearrays, uva == gpa) with one RX and one TX ring, and a device.
    With `packed` the rings are packed: `chain` writes a buffer's descriptors at the
    driver's position (the first one's flags held back) and `post` makes it available."""

    def __init__(self, features: int, packed: bool = False) -> None:
        self.mem = GuestMemory()
        for gpa, size in REGIONS:
            self.mem.regions.append(Region(gpa, size, gpa, 0, None, memoryview(bytearray(size))))
        self.packed = packed
        if packed:
            features |= bits(Feature.F_RING_PACKED)
        self.queues = []
        for i, base in RINGS.items():
            q = (PackedVirtqueue if packed else virtqueue.Virtqueue)(i)
            q.size = QSIZE
            q.addr = VringAddr(i, 0, base, base + USED_OFF, base + AVAIL_OFF, 0)
            q.indirect = True
            q.map(self.mem)
            q.start()
            q.enabled = True
            self.queues.append(q)
        self.dev = VirtioNetDevice(self.mem, self.queues)
        self.dev.set_features(features)
        self.hdr = self.dev.hdr_len
        self.next_desc = {0: 0, 1: 0}
        self.avail = {0: 0, 1: 0}
        self.brk = DATA
        # packed: the driver's wrap counters, free descriptors, where it reaps used ones
        # and how many ring descriptors each buffer id took
        self.wrap = {0: True, 1: True}
        self.free = {0: QSIZE, 1: QSIZE}
        self.used = {0: (0, True), 1: (0, True)}
        self.ndesc: dict[tuple[int, int], int] = {}
        self.next_id = 0

    def write(self, gpa: int, data: bytes) -> None:
        while data:
            r = self.mem._find_gpa(gpa)
            off = gpa - r.guest_phys_addr
            n = min(len(data), r.size - off)
            r.view[off:off + n] = data[:n]
            gpa += n
            data = data[n:]

    def alloc(self, n: int) -> int:
        gpa = self.brk
        self.brk += (n + 15) & ~15
        assert self.brk < BOUNDARY - 0x1000, "test guest out of memory"
        return gpa

    def chain(self, q: int, descs, indirect: bool = False):
        """Write a chain of (addr, len, flags) and return its head (packed: what `post`
        takes, or None when the ring has no room for it)."""
        base = RINGS[q]
        if self.packed:
            return self._packed_chain(q, descs, indirect)
        if indirect:
            table = self.alloc(16 * len(descs))
            self.write(table, b"".join(
                DESC.pack(a, n, f | (VIRTQ_DESC_F_NEXT if k + 1 < len(descs) else 0), k + 1)
                for k, (a, n, f) in enumerate(descs)))
            descs = [(table, 16 * len(descs), VIRTQ_DESC_F_INDIRECT)]
        head = self.next_desc[q]
        for k, (a, n, f) in enumerate(descs):
            i = (head + k) % QSIZE
            last = k + 1 == len(descs)
            self.write(base + 16 * i, DESC.pack(a, n, f | (0 if last else VIRTQ_DESC_F_NEXT),
                                                (i + 1) % QSIZE))
        self.next_desc[q] = (head + len(descs)) % QSIZE
        return head

    def _packed_chain(self, q: int, descs, indirect: bool):
        if indirect:
            table = self.alloc(16 * len(descs))
            self.write(table, b"".join(DESC.pack(a, n, f, 0) for a, n, f in descs))
            descs = [(table, 16 * len(descs), VIRTQ_DESC_F_INDIRECT)]
        if len(descs) > self.free[q]:
            return None
        self.free[q] -= len(descs)
        bid = self.next_id = (self.next_id + 7) % 1000
        self.ndesc[q, bid] = len(descs)
        i, wrap = self.next_desc[q], self.wrap[q]
        first = None
        for k, (a, n, f) in enumerate(descs):
            f |= (VIRTQ_DESC_F_NEXT if k + 1 < len(descs) else 0)
            f |= F_AVAIL if wrap else F_USED
            if first is None:
                first = (i, f)
                f = 0  # written by post
            self.write(RINGS[q] + 16 * i, DESC.pack(a, n, bid, f))
            i += 1
            if i == QSIZE:
                i, wrap = 0, not wrap
        self.next_desc[q], self.wrap[q] = i, wrap
        return first

    def reap(self, q: int) -> None:
        """Packed: take back the descriptors of the buffers the device used."""
        i, wrap = self.used[q]
        while True:
            r = self.mem.regions[0].view
            _, _, bid, flags = DESC.unpack_from(r, RINGS[q] + 16 * i)
            if bool(flags & F_AVAIL) != bool(flags & F_USED) or bool(flags & F_USED) != wrap:
                break
            n = self.ndesc.pop((q, bid), 1)
            self.free[q] += n
            i += n
            if i >= QSIZE:
                i, wrap = i - QSIZE, not wrap
        self.used[q] = (i, wrap)

    def post_bad(self, q: int, head, rng: random.Random) -> None:
        """Post a broken chain: split, a head past the queue or a descriptor that is its
        own next; packed, an indirect descriptor inside a chain or a chain of NEXT
        descriptors around the whole ring."""
        if not self.packed:
            if rng.random() < 0.6:
                self.post(q, rng.choice([QSIZE, 0xFFFF]))
            else:
                self.write(RINGS[q] + 16 * head + 12, struct.pack("<HH", VIRTQ_DESC_F_NEXT, head))
                self.post(q, head)
            return
        i, f = head
        if rng.random() < 0.6:
            self.post(q, (i, f | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT))
            return
        r = self.mem.regions[0].view
        for k in range(QSIZE):
            at = RINGS[q] + 16 * ((i + k) % QSIZE) + 14
            r[at:at + 2] = struct.pack("<H", struct.unpack_from("<H", r, at)[0]
                                       | VIRTQ_DESC_F_NEXT)
        self.post(q, (i, f | VIRTQ_DESC_F_NEXT))

    def post(self, q: int, head) -> None:
        if self.packed:
            i, flags = head
            self.write(RINGS[q] + 16 * i + 14, struct.pack("<H", flags))
            return
        avail = RINGS[q] + AVAIL_OFF
        self.write(avail + 4 + 2 * (self.avail[q] % QSIZE), struct.pack("<H", head))
        self.avail[q] = (self.avail[q] + 1) & 0xFFFF
        self.write(avail + 2, struct.pack("<H", self.avail[q]))

    def state(self) -> tuple:
        dev = self.dev
        return (
            [bytes(r.view) for r in self.mem.regions],
            [(q.last_avail_idx, q.used_idx, q.broken, q.stats.popped, q.stats.used,
              q._pending, getattr(q, "avail_wrap", None), getattr(q, "used_wrap", None),
              getattr(q, "_head_flags", None), getattr(q, "_probe", None))
             for q in self.queues],
            {k: v for k, v in dev.drops.items() if v},  # (a counter at 0 = never counted)
            {k: v for k, v in dev.stats.items() if v},
            [(bytes(h), bytes(f)) for h, f in dev.backlog_entries()], dev._backlog_bytes,
        )


def _tx_frame(rng: random.Random, g: Guest) -> tuple[list, bytes]:
    """A random TX chain (descriptors) and the frame it carries (b"" when malformed)."""
    hdr = g.hdr
    shape = rng.choice(["one", "one", "split-hdr", "split-hdr", "pieces", "straddle",
                        "indirect", "zero-len", "runt", "writable", "gap", "too-long",
                        "hdr-in-gap", "overflow"])
    n = rng.choice([14, 60, 64, 1514, rng.randrange(14, 9000)])
    frame = rng.randbytes(n)
    data = bytes(hdr) + frame
    if shape == "one":
        a = g.alloc(len(data))
        g.write(a, data)
        return [(a, len(data), 0)], frame
    if shape == "split-hdr":
        a, b = g.alloc(hdr), g.alloc(n)
        g.write(b, frame)
        return [(a, hdr, 0), (b, n, 0)], frame
    if shape in ("pieces", "indirect", "zero-len"):
        cuts = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1)))
        descs = []
        for lo, hi in zip([0, *cuts], [*cuts, len(data)], strict=True):
            a = g.alloc(hi - lo)
            g.write(a, data[lo:hi])
            descs.append((a, hi - lo, 0))
            if shape == "zero-len":
                descs.append((GAP, 0, 0))  # length 0: never touched, wherever it points
        return descs, frame
    if shape == "straddle":
        a = BOUNDARY - rng.randrange(1, len(data))
        g.write(a, data)
        return [(a, len(data), 0)], frame
    if shape == "runt":
        a = g.alloc(hdr + 13)
        return [(a, hdr + 13, 0)], b""
    if shape == "writable":
        a = g.alloc(len(data))
        return [(a, len(data), VIRTQ_DESC_F_WRITE)], b""
    if shape == "gap":
        return [(g.alloc(hdr), hdr, 0), (GAP, n, 0)], b""
    if shape == "overflow":
        return [(2**64 - 8, len(data), 0)], b""
    if shape == "too-long":
        a = g.alloc(16)
        return [(a, MAX_FRAME, 0), (a, hdr + 1, 0)], b""
    # the header in a gap, the frame fine: a bad offload when the header is read (csum)
    b = g.alloc(n)
    g.write(b, frame)
    return [(GAP, hdr, 0), (b, n, 0)], frame


def _post_tx(rng: random.Random, g: Guest) -> None:
    """Random TX chains, now and then a broken one (the ring breaks when it is met)."""
    for _ in range(rng.randrange(1, QSIZE // 4)):
        descs, _ = _tx_frame(rng, g)
        head = g.chain(1, descs, indirect=rng.random() < 0.2 and len(descs) > 1)
        if head is None:  # (packed: the ring is full)
            break
        if rng.random() < 0.05:
            g.post_bad(1, head, rng)
        else:
            g.post(1, head)


def _tx_scenario(seed: int, features: int, use_c: bool, fail_at: int | None = None,
                 packed: bool = False):
    virtqueue.USE_C = use_c
    try:
        rng = random.Random(seed)
        g = Guest(features, packed)
        _post_tx(rng, g)
        got = []

        def handler(frame) -> None:
            if fail_at is not None and len(got) == fail_at:
                got.append("raised")
                raise ValueError("the consumer failed")
            got.append(bytes(frame))

        outcome = []
        for _ in range(2):
            try:
                outcome.append(g.dev.drain_tx(handler))
            except ValueError:
                outcome.append("raised")
        return got, outcome, g.state()
    finally:
        virtqueue.USE_C = virtqueue.HAVE_C


LAYOUTS = pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])


@LAYOUTS
@pytest.mark.parametrize("features", list(FEATURES), ids=list(FEATURES))
@pytest.mark.parametrize("seed", range(12))
def test_tx_batch_and_python_path_agree(seed, features, packed):
    c = _tx_scenario(seed, FEATURES[features], True, packed=packed)
    py = _tx_scenario(seed, FEATURES[features], False, packed=packed)
    assert c[0] == py[0]
    assert c[1:] == py[1:]


@LAYOUTS
@pytest.mark.parametrize(("seed", "fail_at"), [
    (0, 0), (0, 2), (0, 5), (62, 0), (62, 2), (62, 5), (22, 0)],
    ids=["drops-0", "drops-2", "drops-5", "drops-then-broken-chain-0",
         "drops-then-broken-chain-2", "drops-then-broken-chain-5", "broken-chain-next"])
def test_tx_handler_raising_mid_batch(seed, fail_at, packed):
    """The consumer raises on one frame: that chain is done with, the ones after it go
    back to the guest untouched (a broken chain after them too: the ring breaks when the
    next drain meets it, also when it is the very next chain) and come with the next
    drain — in both paths."""
    c = _tx_scenario(seed, MRG, True, fail_at, packed)
    py = _tx_scenario(seed, MRG, False, fail_at, packed)
    assert c == py
    assert "raised" in c[0]


def _rx_buffer(rng: random.Random, g: Guest) -> list:
    shape = rng.choice(["one", "one", "one", "two", "read-first", "straddle", "gap",
                        "zero-len", "small"])
    n = rng.choice([64, 1526, 2048, 4096, rng.randrange(16, 9100)])
    if shape == "one":
        return [(g.alloc(n), n, VIRTQ_DESC_F_WRITE)]
    if shape == "two":
        return [(g.alloc(g.hdr), g.hdr, VIRTQ_DESC_F_WRITE), (g.alloc(n), n, VIRTQ_DESC_F_WRITE)]
    if shape == "read-first":
        return [(g.alloc(16), 16, 0), (g.alloc(n), n, VIRTQ_DESC_F_WRITE)]
    if shape == "straddle":
        return [(BOUNDARY - rng.randrange(1, n), n, VIRTQ_DESC_F_WRITE)]
    if shape == "gap":
        return [(g.alloc(100), 100, VIRTQ_DESC_F_WRITE), (GAP, n, VIRTQ_DESC_F_WRITE)]
    if shape == "zero-len":
        return [(GAP, 0, VIRTQ_DESC_F_WRITE), (g.alloc(n), n, VIRTQ_DESC_F_WRITE)]
    return [(g.alloc(20), 20, VIRTQ_DESC_F_WRITE)]


def _post_rx(rng: random.Random, g: Guest) -> None:
    if g.packed:
        g.reap(0)
    for _ in range(rng.randrange(0, 12)):
        descs = _rx_buffer(rng, g)
        head = g.chain(0, descs, indirect=rng.random() < 0.2 and len(descs) > 1)
        if head is None:
            break
        if rng.random() < 0.02:
            g.post_bad(0, head, rng)
        else:
            g.post(0, head)


def _rx_scenario(seed: int, features: int, use_c: bool, packed: bool = False):
    virtqueue.USE_C = use_c
    try:
        rng = random.Random(seed)
        g = Guest(features, packed)
        out = []
        for _round in range(3):
            _post_rx(rng, g)
            frames = [rng.randbytes(rng.choice([60, 1514, rng.randrange(14, 20000)]))
                      for _ in range(rng.randrange(1, 10))]
            if rng.random() < 0.2:
                frames.insert(rng.randrange(len(frames)), b"short")
            out.append(g.dev.send_frames(frames))
            out.append(g.state())
            g.dev.flush_backlog()
            out.append(g.state())
        return out
    finally:
        virtqueue.USE_C = virtqueue.HAVE_C


@LAYOUTS
@pytest.mark.parametrize("features", list(FEATURES), ids=list(FEATURES))
@pytest.mark.parametrize("seed", range(16))
def test_rx_batch_and_python_path_agree(seed, features, packed):
    c = _rx_scenario(seed, FEATURES[features], True, packed)
    py = _rx_scenario(seed, FEATURES[features], False, packed)
    for k, (a, b) in enumerate(zip(c, py, strict=True)):
        assert a == b, f"step {k}"


def test_rx_frame_over_the_descriptor_store_takes_the_python_path():
    """Chains of many 1-byte buffers: one frame needs more descriptors than vu_rx_batch
    keeps (2 × queue size + 64), so that frame goes through `_write_rx`; the frames
    before and after it through the batch, all in order."""
    outs = []
    for use_c in (True, False):
        virtqueue.USE_C = use_c
        try:
            g = Guest(MRG)
            small = g.alloc(2048)
            g.post(0, g.chain(0, [(small, 2048, VIRTQ_DESC_F_WRITE)]))
            for _ in range(4):  # 4 chains of 63 one-byte buffers (indirect tables)
                a = g.alloc(63)
                g.post(0, g.chain(0, [(a + k, 1, VIRTQ_DESC_F_WRITE) for k in range(63)],
                                  indirect=True))
            big = g.alloc(2048)
            g.post(0, g.chain(0, [(big, 2048, VIRTQ_DESC_F_WRITE)]))
            frames = [b"a" * 100, b"b" * 200, b"c" * 100]
            assert g.dev.send_frames(frames) == 3
            outs.append(g.state())
            q = g.queues[0]
            assert q.used_idx == 6 and not g.dev.has_backlog
        finally:
            virtqueue.USE_C = virtqueue.HAVE_C
    assert outs[0] == outs[1]


def _discard_scenario(seed: int, features: int, discard: bool, packed: bool = False):
    """_tx_scenario's rings, taken by discard_tx (C, no frame handed on) or by drain_tx
    with a handler that only counts (the Python path)."""
    virtqueue.USE_C = discard
    try:
        rng = random.Random(seed)
        g = Guest(features, packed)
        _post_tx(rng, g)
        taken = [g.dev.discard_tx() if discard else g.dev.drain_tx(lambda f: None)
                 for _ in range(2)]
        return taken, g.state()
    finally:
        virtqueue.USE_C = virtqueue.HAVE_C


@LAYOUTS
@pytest.mark.parametrize("features", ["mrg", "no-mrg", "legacy"])
@pytest.mark.parametrize("seed", range(24))
def test_discard_tx_agrees_with_the_python_path(seed, features, packed):
    """discard_tx (vu_tx_discard: a sink that looks at no frame) checks every chain as
    the per-frame path does: the same used rings, queue state, drops and counts. (With
    CSUM the per-frame path also refuses frames whose offload header it cannot apply;
    a discarded frame's header is never read, so those are not compared.)"""
    d = _discard_scenario(seed, FEATURES[features], True, packed)
    py = _discard_scenario(seed, FEATURES[features], False, packed)
    assert d[1] == py[1]
    assert sum(d[0]) == sum(py[0])


def _packed_scenario(seed: int, features: int, use_c: bool, packed: bool,
                     packed_ring: bool = False):
    """_rx_scenario's rings and frames, sent by send_packed or send_frames."""
    from array import array

    virtqueue.USE_C = use_c
    try:
        rng = random.Random(seed)
        g = Guest(features, packed_ring)
        out = []
        for _round in range(3):
            _post_rx(rng, g)
            frames = [rng.randbytes(rng.choice([60, 1514, rng.randrange(14, 20000)]))
                      for _ in range(rng.randrange(1, 10))]
            if rng.random() < 0.2:
                frames.insert(rng.randrange(len(frames)), b"short")
            if rng.random() < 0.1:
                frames.append(bytes(MAX_FRAME + 1))
            if packed:
                out.append(g.dev.send_packed(b"".join(frames), array("I", map(len, frames))))
            else:
                out.append(g.dev.send_frames(frames))
            out.append(g.state())
            g.dev.flush_backlog()
            out.append(g.state())
        return out
    finally:
        virtqueue.USE_C = virtqueue.HAVE_C


@LAYOUTS
@pytest.mark.parametrize("features", ["mrg", "no-mrg", "legacy"])
@pytest.mark.parametrize("seed", range(16))
def test_send_packed_agrees_with_send_frames(seed, features, packed):
    """send_packed (one C call for a batch of frames back to back, the backlog kept as
    chunks) gives the guest exactly what send_frames gives, on the C and the Python
    path."""
    ref = _packed_scenario(seed, FEATURES[features], False, False, packed)
    for use_c in (True, False):
        got = _packed_scenario(seed, FEATURES[features], use_c, True, packed)
        for k, (a, b) in enumerate(zip(got, ref, strict=True)):
            assert a == b, f"use_c={use_c} step {k}"


def test_send_packed_refuses_inconsistent_lengths():
    from array import array

    g = Guest(MRG)
    with pytest.raises(ValueError):
        g.dev.send_packed(bytes(100), array("I", [60, 60]))
    with pytest.raises(ValueError):
        g.dev.send_packed(bytes(120), array("I", [60, 60]), hdrs=bytes(10))
    assert g.dev.send_packed(b"", array("I")) == 0


@pytest.mark.parametrize("use_c", [True, False])
def test_a_bad_buffer_per_frame_is_one_log_line_and_a_counter(use_c, caplog):
    """A guest whose every TX buffer lies outside its memory: every frame is dropped and
    counted, and the log gets one line, not one per frame."""
    import logging

    import vhostuser.net

    vhostuser.net._warn_limit._last.clear()  # (another test's line may be recent)
    virtqueue.USE_C = use_c
    try:
        g = Guest(MRG)
        with caplog.at_level(logging.WARNING, logger="vhostuser.net"):
            for _ in range(20):
                for _ in range(QSIZE // 2):
                    g.post(1, g.chain(1, [(GAP, 100, 0)]))
                assert g.dev.drain_tx(lambda f: None) == 0
                g.dev.flush()
        assert g.dev.drops["tx_bad_address"] == 20 * QSIZE // 2
        lines = [r for r in caplog.records if "outside guest memory" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
    finally:
        virtqueue.USE_C = virtqueue.HAVE_C


# -- a frame hook with a select (set_frame_hook): C decides which frames the hook sees ----
PREDICATES = {
    "quarter": lambda f: len(f) > 0 and f[0] % 4 == 0,
    "long": lambda f: len(f) > 1000,
    "none": lambda f: False,
}


class _Select:
    """set_frame_hook's select made of a Python predicate (a cffi callback standing in for
    a C one such as apps/capture/bpf.py's): it sees the frames where the device found
    them."""

    def __init__(self, pred) -> None:
        from vhostuser._fast import ffi

        self.calls = 0

        @ffi.callback("vu_select_fn")
        def select(ctx, frames, lens, count, out):
            self.calls += 1
            n = 0
            for i in range(count):
                m = frames[i] != ffi.NULL and pred(bytes(ffi.buffer(frames[i], lens[i])))
                out[i] = m
                n += m
            return n

        self._fn = select
        self.c_fn = int(ffi.cast("uintptr_t", select))
        self.c_ctx = 0


def _hook_scenario(seed: int, features: int, use_c: bool, path: str, pred,
                   select: bool, packed: bool = False):
    """_tx_scenario's rings taken by `path` (drain_tx_batches or discard_tx) with a frame
    hook that keeps the frames `pred` accepts: with `select`, the hook is given the
    predicate as its select as well (and must then see only those frames)."""
    virtqueue.USE_C = use_c
    try:
        rng = random.Random(seed)
        g = Guest(features, packed)
        _post_tx(rng, g)
        seen: list = []
        sel = _Select(pred) if select else None

        def hook(direction: str, frame) -> None:
            assert not select or pred(bytes(frame)), "the hook got a frame not selected"
            if pred(bytes(frame)):
                seen.append((direction, bytes(frame)))

        g.dev.set_frame_hook(hook, sel)
        handed: list = []
        taken = []
        for _ in range(2):
            if path == "discard":
                taken.append(g.dev.discard_tx())
            else:
                taken.append(g.dev.drain_tx_batches(
                    lambda frames: handed.extend(bytes(f) for f in frames)))
        return seen, handed, taken, g.state(), sel.calls if sel else None
    finally:
        virtqueue.USE_C = virtqueue.HAVE_C


@LAYOUTS
@pytest.mark.parametrize("pred", list(PREDICATES))
@pytest.mark.parametrize("path, features", [
    ("batches", "mrg"), ("batches", "csum"), ("batches", "legacy"), ("discard", "mrg"),
    ("discard", "legacy")])
@pytest.mark.parametrize("seed", range(8))
def test_hook_select_shows_the_hook_what_it_would_keep(seed, path, features, pred, packed):
    """With a select, the batched paths call the hook for the selected frames only and
    otherwise go on at C speed; the hook sees exactly what it keeps on the per-frame
    Python path (which shows it every frame), and the rings, counters and drops are
    the same. (discard_tx reads no offload header: CSUM is left out, as above.)"""
    c = _hook_scenario(seed, FEATURES[features], True, path, PREDICATES[pred], True, packed)
    py = _hook_scenario(seed, FEATURES[features], False, path, PREDICATES[pred], False,
                        packed)
    assert c[0] == py[0]
    assert c[1:4] == py[1:4]
    assert c[4] >= 1 or not c[2][0]  # the select ran (when there was a batch)


def test_a_stale_select_is_not_used():
    """A select belongs to the hook it came with: a hook set later by plain assignment
    sees every frame."""
    g = Guest(MRG)
    rng = random.Random(3)
    _post_tx(rng, g)
    seen: list = []
    g.dev.set_frame_hook(lambda d, f: None, _Select(PREDICATES["none"]))
    g.dev.on_frame = lambda d, f: seen.append(bytes(f))
    handed: list = []
    g.dev.drain_tx_batches(lambda frames: handed.extend(bytes(f) for f in frames))
    assert seen == handed and seen


@pytest.mark.parametrize("pred", list(PREDICATES))
@pytest.mark.parametrize("seed", range(6))
def test_hook_select_on_rx_batches(seed, pred):
    """send_packed/send_frames with a select: the hook sees the frames it would keep."""
    from array import array

    outs = []
    for select in (True, False):
        rng = random.Random(seed)
        g = Guest(MRG)
        _post_rx(rng, g)
        frames = [rng.randbytes(rng.choice([60, 1514, rng.randrange(14, 3000)]))
                  for _ in range(rng.randrange(1, 12))]
        seen: list = []
        p = PREDICATES[pred]

        def hook(direction: str, frame, p=p, seen=seen, select=select) -> None:
            assert not select or p(bytes(frame))
            if p(bytes(frame)):
                seen.append((direction, bytes(frame)))

        g.dev.set_frame_hook(hook, _Select(p) if select else None)
        g.dev.send_packed(b"".join(frames), array("I", map(len, frames)))
        g.dev.send_frames(frames[::-1])
        outs.append((seen, g.state()))
    assert outs[0] == outs[1]
