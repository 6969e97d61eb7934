"""The C chain walker (vu_walk) against the pure-Python one it replaces: random descriptor
tables, direct and indirect, loops, bad indices, tables straddling two adjacent regions or
lying in a gap — both walkers must return the same chain or raise the same error text."""

from __future__ import annotations

import random
import struct

import pytest

import vhostuser.virtqueue as virtqueue
from vhostuser.errors import GuestMemoryError, RingError
from vhostuser.features import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from vhostuser.memory import GuestMemory, Region
from vhostuser.protocol import VringAddr

pytestmark = pytest.mark.skipif(not virtqueue.HAVE_C, reason="vhostuser._fast not built")

DESC = struct.Struct("<QIHH")
QSIZE = 16
# two adjacent regions (an indirect table may straddle them), then a gap, then a third
REGIONS = [(0x0, 0x4000), (0x4000, 0x4000), (0x10000, 0x1000)]
RING = 0x100  # the descriptor table's guest address (uva == gpa here)


def _memory() -> tuple[GuestMemory, list[memoryview]]:
    mem = GuestMemory()
    views = []
    for gpa, size in REGIONS:
        view = memoryview(bytearray(size))
        views.append(view)
        mem.regions.append(Region(gpa, size, gpa, 0, None, view))
    return mem, views


def _write(mem: GuestMemory, gpa: int, data: bytes) -> None:
    """Write across adjacent regions (region by region)."""
    while data:
        r = mem._find_gpa(gpa)
        off = gpa - r.guest_phys_addr
        n = min(len(data), r.size - off)
        r.view[off:off + n] = data[:n]
        gpa, data = gpa + n, data[n:]


def _queue(mem: GuestMemory) -> virtqueue.Virtqueue:
    """A queue of QSIZE whose descriptor table is at RING, mapped."""
    q = virtqueue.Virtqueue(1)
    q.size = QSIZE
    q.addr = VringAddr(1, 0, RING, 0x1000, 0x800, 0)
    q.map(mem)
    return q


def _random_desc(rng: random.Random, table_len: int) -> bytes:
    flags = rng.choice([0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
                        VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT,
                        rng.randrange(1 << 16)])
    addr = rng.choice([0x3ff8, 0x3ff0, 0x8000, 0x10000, 0x7ff8, 2**64 - 8, rng.randrange(1 << 17)])
    length = rng.choice([0, 16, 32, 48, 16 * QSIZE, 16 * QSIZE + 16, 20, rng.randrange(1 << 12)])
    nxt = rng.choice([rng.randrange(table_len), rng.randrange(1 << 16), 0])
    return DESC.pack(addr, length, flags, nxt)


def _walk(q: virtqueue.Virtqueue, head: int, use_c: bool):
    virtqueue.USE_C = use_c
    try:
        chain = q._walk(head)
        return ("ok", chain.readable, chain.writable)
    except (RingError, GuestMemoryError) as e:
        return (type(e).__name__, str(e))
    finally:
        virtqueue.USE_C = virtqueue.HAVE_C


@pytest.mark.parametrize("seed", range(8))
def test_c_and_python_walkers_agree(seed):
    rng = random.Random(seed)
    mem, _ = _memory()
    q = _queue(mem)
    outcomes = set()
    for _ in range(400):
        q.indirect = rng.random() < 0.8
        _write(mem, RING, b"".join(_random_desc(rng, QSIZE) for _ in range(QSIZE)))
        # an indirect table around the region boundary (0x8000.. is a gap)
        _write(mem, 0x3fc0, b"".join(_random_desc(rng, 8) for _ in range(8)))
        head = rng.choice([rng.randrange(QSIZE), QSIZE, rng.randrange(1 << 16)])
        py, c = _walk(q, head, False), _walk(q, head, True)
        assert c == py, f"head {head}: C {c} vs Python {py}"
        outcomes.add(py[0] if py[0] == "ok" else py[1].split(" ")[0])
    q.unmap()
    assert "ok" in outcomes and len(outcomes) > 5, outcomes  # several rules were reached


def test_indirect_table_straddling_two_regions_is_gathered():
    mem, _ = _memory()
    q = _queue(mem)
    q.indirect = True
    table = 0x4000 - 24  # the second descriptor starts 8 bytes before the boundary
    _write(mem, table, DESC.pack(0x100, 10, VIRTQ_DESC_F_NEXT, 1)
           + DESC.pack(0x200, 20, VIRTQ_DESC_F_WRITE, 0))
    _write(mem, RING, DESC.pack(table, 32, VIRTQ_DESC_F_INDIRECT, 0))
    for use_c in (True, False):
        assert _walk(q, 0, use_c) == ("ok", [(0x100, 10)], [(0x200, 20)])
    q.unmap()
