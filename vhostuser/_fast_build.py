"""cffi build script for vhostuser's C helpers (run by setup.py through `cffi_modules`).

`vu_csum_partial()` is the internet checksum's folded sum: the device completes partial
checksums (virtio NEEDS_CSUM) when the guest's offloads meet a stack that wants whole ones.

`fence()` is a full memory barrier: the device must publish `avail_event`/used flags and
then re-read the avail index (virtio 1.2 §2.7.10); on x86 that store→load order needs an
mfence that pure Python cannot emit.

`vu_ld16()`/`vu_st16()` read and write the ring words both sides touch at once (avail and
used idx, flags, avail/used event) as single 16-bit atomic accesses with acquire/release
order. `struct.pack_into` cannot: it zeroes the field first and then stores it byte by
byte, so a driver polling used.idx saw 0 (or a torn value) and took entries it did not
own (virtio 1.2 §2.7.13.3 has the device update idx only after the ring entries; the
driver reads idx as one value).

The ring helpers, where a profile of the ring benchmark showed Python's per-frame cost:

- `vu_walk()` walks one descriptor chain (direct or through an indirect table) with every
  check virtqueue.py makes in Python: head and next indices in the table, the chain no
  longer than its table (a loop), readable before writable, indirect rules (negotiated,
  not nested, not inside a chain, length a non-zero multiple of 16 and at most 16 × queue
  size), the indirect table inside guest memory (it may straddle adjacent regions). Each
  descriptor is read once into a local copy. A broken rule returns a negative VU_E_* code
  and its arguments in `err[]`, which Python turns into the same RingError text.

- `vu_tx_batch()` pops up to N available TX heads, walks each with vu_walk and says per
  chain where its frame is: a (region, offset) view of guest memory when the bytes after
  the virtio_net_hdr lie in one region, else gathered into a scratch buffer; or why it is
  dropped (writable descriptor, too long, runt, outside guest memory, unreadable header).
  Python hands the frames on as memoryviews; `vu_push_zero()` then returns all the
  batch's chains to the used ring in one call.
- `vu_tx_select()`, `vu_packed_select()`, `vu_tx_discard_select()`: a frame hook's
  select (a `vu_select_fn`, a C predicate over a batch of frame pointers and lengths that
  the hook's owner gives: apps/capture/bpf.py runs pcap filters) over a TX batch where
  its frames lie, over frames back to back, or inside vu_tx_discard's loop, which stops
  at the first batch with a selected frame and leaves it to Python. A capture whose
  filter drops everything then costs one C call per batch and no Python per frame.
- `vu_rx_batch()` writes frames (back to back, with their lengths and optional 10-byte
  headers) with their virtio_net_hdr into as many (mergeable) RX buffers as each needs,
  as net.py's `_write_rx` does one frame at a time, and pushes the used elements.

Both keep the queue state they need in `struct vu_vq` (ring pointers, set when the ring
is mapped; avail/used indices copied in and out once per call), check every rule the
Python path checks, and stop a batch at the first broken one with `status` set (the
same VU_E_* codes, plus VU_E_AHEAD: the avail index more than the queue size ahead).

The front-end side (`fe_*`, for vhostuser/frontend.py's TxBatch and RxBatch, which play
the guest driver in tests and the ring benchmark) keeps a fixed buffer behind each of its
descriptors, written once by `fe_setup()`: `fe_tx_send()` copies N frames (with their
virtio_net_hdr) into free buffers and publishes them with one avail idx store and at most
one kick (EVENT_IDX aware), `fe_tx_reap()` frees what the device used, `fe_rx_reap()`
reads every used RX buffer (merging by num_buffers, checking ids, lengths and headers),
copies or only counts the frames, and reposts the buffers in one publish.

The region table (`struct vu_region`) is built by memory.py from the mapped regions; the
pointers stay valid while the buffers exported to cffi are (memory.py releases them before
it unmaps).
"""

import os
import sys

from cffi import FFI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "csrc"))
from build_flags import flags as _build_flags  # noqa: E402  (csrc/: shared by both builds)

ffibuilder = FFI()
ffibuilder.cdef(
    """
    void vu_fence(void);
    uint16_t vu_ld16(uintptr_t p);
    void vu_st16(uintptr_t p, uint16_t v);
    uint32_t vu_csum_partial(const uint8_t *buf, size_t len, uint32_t sum);

    struct vu_region { uint64_t gpa; uint64_t size; uint8_t *host; };
    #define VU_E_HEAD ...
    #define VU_E_NO_INDIRECT ...
    #define VU_E_NESTED ...
    #define VU_E_INDIRECT_IN_CHAIN ...
    #define VU_E_INDIRECT_LEN ...
    #define VU_E_READ_AFTER_WRITE ...
    #define VU_E_TOO_LONG ...
    #define VU_E_NEXT ...
    #define VU_E_NO_REGION ...
    #define VU_E_OVERFLOW ...
    int vu_walk(const uint8_t *desc, uint32_t n, uint32_t head, int indirect_ok,
                const struct vu_region *regs, uint32_t nregs,
                uint64_t *addr, uint32_t *len, uint32_t *nread, uint64_t *err);
    struct vu_vq {
        const uint8_t *desc; const uint16_t *avail; uint8_t *used;
        const struct vu_region *regs; uint32_t nregs;
        uint32_t n; int indirect_ok;
        uint16_t last_avail, shadow_avail, used_idx;
        uint32_t popped, pushed, bad;
        int status;
        uint64_t err[2];
        uint64_t *addr; uint32_t *len; uint32_t cap;
        uint32_t *chains;
        uint64_t tx_bytes; uint32_t tx_drops, tx_csum;
        uint64_t rx_bytes; uint32_t rx_small;
        uint8_t *log; uint64_t log_size; uint32_t log_outside;
        int packed; uint16_t avail_wrap, used_wrap;
        int32_t held_pos; uint16_t held_flags;
        int32_t probe_pos; uint16_t probe_wrap;
    };
    void vu_enter(struct vu_vq *q, uint16_t last_avail, uint16_t shadow_avail,
                  uint16_t used_idx);
    void vu_enter_packed(struct vu_vq *q, uint16_t last_avail, int avail_wrap,
                         uint16_t used_idx, int used_wrap, int32_t held_pos,
                         uint16_t held_flags);
    #define VU_E_AHEAD ...
    #define VU_RX_SLOW ...
    #define VU_TX_WRITABLE ...
    #define VU_TX_TOO_LONG ...
    #define VU_TX_RUNT ...
    #define VU_TX_NO_REGION ...
    #define VU_TX_OVERFLOW ...
    #define VU_TX_BAD_HEADER ...
    int vu_tx_batch(struct vu_vq *q, uint32_t max, uint32_t hdr, uint64_t max_total,
                    int want_hdr, uint8_t *scratch, uint64_t scratch_size,
                    uint32_t *heads, int32_t *kind, uint64_t *off, uint32_t *flen,
                    uint64_t *aux, uint8_t *vhdr);
    void vu_push_zero(struct vu_vq *q, const uint32_t *heads, uint32_t count);
    int vu_tx_discard(struct vu_vq *q, uint32_t max, uint32_t hdr, uint64_t max_total,
                      uint8_t *scratch, uint64_t scratch_size, uint32_t batch,
                      uint32_t *heads, int32_t *kind, uint64_t *off, uint32_t *flen,
                      uint64_t *aux, uint8_t *vhdr, uint64_t *drops);
    typedef uint32_t (*vu_select_fn)(const void *ctx, const uint8_t *const *frames,
                                     const uint32_t *lens, uint32_t count, uint8_t *out);
    uint32_t vu_tx_select(const struct vu_vq *q, const uint8_t *scratch,
                          const int32_t *kind, const uint64_t *off, const uint32_t *flen,
                          uint32_t count, const uint8_t **frames, vu_select_fn sel,
                          const void *ctx, uint8_t *out);
    int vu_tx_discard_select(struct vu_vq *q, uint32_t max, uint32_t hdr,
                             uint64_t max_total, int want_hdr, uint8_t *scratch,
                             uint64_t scratch_size, uint32_t batch, uint32_t *heads,
                             int32_t *kind, uint64_t *off, uint32_t *flen, uint64_t *aux,
                             uint8_t *vhdr, uint64_t *drops, vu_select_fn sel,
                             const void *ctx, const uint8_t **frames, uint8_t *out,
                             uint32_t *pending);
    uint32_t vu_packed_select(const uint8_t *data, const uint32_t *lens, uint32_t count,
                              const uint8_t **frames, vu_select_fn sel, const void *ctx,
                              uint8_t *out);
    int vu_rx_batch(struct vu_vq *q, uint32_t hdr, int mergeable, const uint8_t *data,
                    const uint32_t *lens, uint32_t nframes, const uint8_t *hdrs,
                    uint8_t *outcome);
    uint32_t vu_lens_check(const uint32_t *lens, uint32_t n, uint32_t lo, uint32_t hi,
                           uint64_t *total);
    int vu_log_write(uint8_t *log, uint64_t size, uint64_t gpa, uint64_t len);
    struct fe_vq {
        uint8_t *desc; uint8_t *avail; uint8_t *used;
        uint32_t n; int event_idx; int kick_fd;
        uint16_t avail_idx, last_used;
        uint8_t **host; uint32_t nbufs, buf_len, hdr_len;
        uint16_t *free_ids; uint32_t nfree;
        uint8_t *busy;
        uint32_t rx_want, rx_got, rx_copy;
        uint64_t rx_len, rx_out_start;
        uint64_t frames, bytes, buffers, kicks, kicks_suppressed;
        int status; uint64_t err[2];
    };
    #define FE_E_AHEAD ...
    #define FE_E_ID ...
    #define FE_E_LEN ...
    #define FE_E_RUNT ...
    #define FE_E_NUM_BUFFERS ...
    #define FE_E_TOO_BIG ...
    void fe_setup(struct fe_vq *q, const uint64_t *gpa, int writable);
    int fe_tx_send(struct fe_vq *q, const uint8_t *data, const uint32_t *lens,
                   uint32_t count, const uint8_t *hdr);
    int fe_tx_reap(struct fe_vq *q);
    int fe_rx_reap(struct fe_vq *q, int mergeable, uint8_t *out, uint64_t out_cap,
                   uint32_t *out_lens, uint32_t max_out, uint32_t *nout);
    """
)
ffibuilder.set_source(
    "vhostuser._fast",
    r"""
    #include <stdint.h>
    #include <string.h>
    #include "csum.h"
    static void vu_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

    /* A ring word the other side reads or writes while we do (an idx, flags, a used or
       avail event): one 16-bit access, acquire on load, release on store. Python's
       struct.pack_into zeroes the field and then writes it byte by byte, and unpack_from
       reads it byte by byte: the other side can see 0 or half of two values. */
    static uint16_t vu_ld16(uintptr_t p)
    {
        return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
    }

    static void vu_st16(uintptr_t p, uint16_t v)
    {
        __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
    }

    struct vu_region { uint64_t gpa; uint64_t size; uint8_t *host; };

    #define VU_E_HEAD (-1)              /* err: head, n */
    #define VU_E_NO_INDIRECT (-2)
    #define VU_E_NESTED (-3)
    #define VU_E_INDIRECT_IN_CHAIN (-4)
    #define VU_E_INDIRECT_LEN (-5)      /* err: length, n */
    #define VU_E_READ_AFTER_WRITE (-6)
    #define VU_E_TOO_LONG (-7)          /* err: table length */
    #define VU_E_NEXT (-8)              /* err: next, table length */
    #define VU_E_NO_REGION (-9)         /* err: address */
    #define VU_E_OVERFLOW (-10)         /* err: address, length */

    #define F_NEXT 1
    #define F_WRITE 2
    #define F_INDIRECT 4

    /* The region holding guest-physical `a`, or NULL. */
    static const struct vu_region *vu_find(const struct vu_region *regs, uint32_t nregs,
                                           uint64_t a)
    {
        for (uint32_t i = 0; i < nregs; i++)
            if (a >= regs[i].gpa && a - regs[i].gpa < regs[i].size)
                return &regs[i];
        return NULL;
    }

    /* Check that [a, a+n) is covered by regions (adjacent ones may share it). */
    static int vu_covered(const struct vu_region *regs, uint32_t nregs, uint64_t a,
                          uint64_t n, uint64_t *err)
    {
        if (n && a + (n - 1) < a) {
            err[0] = a; err[1] = n;
            return VU_E_OVERFLOW;
        }
        while (n) {
            const struct vu_region *r = vu_find(regs, nregs, a);
            if (!r) {
                err[0] = a;
                return VU_E_NO_REGION;
            }
            uint64_t room = r->size - (a - r->gpa);
            uint64_t take = n < room ? n : room;
            a += take;
            n -= take;
        }
        return 0;
    }

    /* Copy n bytes at guest-physical a (already checked by vu_covered) to dst. */
    static void vu_read(const struct vu_region *regs, uint32_t nregs, uint64_t a,
                        uint8_t *dst, uint64_t n)
    {
        while (n) {
            const struct vu_region *r = vu_find(regs, nregs, a);
            uint64_t off = a - r->gpa, room = r->size - off;
            uint64_t take = n < room ? n : room;
            memcpy(dst, r->host + off, take);
            dst += take;
            a += take;
            n -= take;
        }
    }

    /* One descriptor into the chain's buffers: readable ones first, then writable ones
       (a readable one after a writable one breaks the rule). Shared by both walkers. */
    static int vu_take(uint16_t flags, uint64_t a, uint32_t l, uint64_t *addr, uint32_t *len,
                       uint32_t *count, int *writable, uint32_t *readable)
    {
        if (flags & F_WRITE)
            *writable = 1;
        else if (*writable)
            return VU_E_READ_AFTER_WRITE;
        else
            (*readable)++;
        addr[*count] = a;
        len[*count] = l;
        (*count)++;
        return 0;
    }

    static int vu_walk(const uint8_t *desc, uint32_t n, uint32_t head, int indirect_ok,
                       const struct vu_region *regs, uint32_t nregs,
                       uint64_t *addr, uint32_t *len, uint32_t *nread, uint64_t *err)
    {
        uint64_t table_gpa = 0;
        uint32_t table_len = n, i = head, count = 0, readable = 0;
        int indirect = 0, writable = 0;
        if (head >= n) {
            err[0] = head; err[1] = n;
            return VU_E_HEAD;
        }
        for (;;) {
            uint8_t d[16];
            uint64_t a;
            uint32_t l;
            uint16_t flags, nxt;
            if (indirect)
                vu_read(regs, nregs, table_gpa + 16ull * i, d, 16);
            else
                memcpy(d, desc + 16ull * i, 16);
            memcpy(&a, d, 8);
            memcpy(&l, d + 8, 4);
            memcpy(&flags, d + 12, 2);
            memcpy(&nxt, d + 14, 2);
            if (flags & F_INDIRECT) {
                if (!indirect_ok)
                    return VU_E_NO_INDIRECT;
                if (indirect)
                    return VU_E_NESTED;
                if ((flags & F_NEXT) || count)
                    return VU_E_INDIRECT_IN_CHAIN;
                if (l == 0 || l % 16 || l / 16 > n) {
                    err[0] = l; err[1] = n;
                    return VU_E_INDIRECT_LEN;
                }
                int rc = vu_covered(regs, nregs, a, l, err);
                if (rc)
                    return rc;
                table_gpa = a;
                table_len = l / 16;
                indirect = 1;
                i = 0;
                continue;
            }
            if (vu_take(flags, a, l, addr, len, &count, &writable, &readable))
                return VU_E_READ_AFTER_WRITE;
            if (!(flags & F_NEXT)) {
                *nread = readable;
                return (int)count;
            }
            if (count >= table_len) {
                err[0] = table_len;
                return VU_E_TOO_LONG;
            }
            i = nxt;
            if (i >= table_len) {
                err[0] = i; err[1] = table_len;
                return VU_E_NEXT;
            }
        }
    }


    /* ---- batched ring work: one call per batch of chains, not per descriptor ---- */
    struct vu_vq {
        const uint8_t *desc; const uint16_t *avail; uint8_t *used;
        const struct vu_region *regs; uint32_t nregs;
        uint32_t n; int indirect_ok;
        uint16_t last_avail, shadow_avail, used_idx;
        uint32_t popped, pushed, bad;   /* counters the calls add to */
        int status;                     /* 0, or the VU_E_* / VU_RX_SLOW that stopped a call */
        uint64_t err[2];
        uint64_t *addr; uint32_t *len; uint32_t cap;   /* descriptor store (cap >= n) */
        uint32_t *chains;                               /* RX: 3 words per chain, cap chains */
        /* vu_tx_batch's summary of the entries it filled: frame bytes, drops (kind < 0)
           and frames whose header asks for NEEDS_CSUM (with want_hdr) */
        uint64_t tx_bytes; uint32_t tx_drops, tx_csum;
        /* vu_rx_batch: bytes of the frames consumed, and how many of them were dropped
           for a too small buffer */
        uint64_t rx_bytes; uint32_t rx_small;
        /* the dirty-page log while the front-end migrates (NULL otherwise): every guest
           buffer vu_rx_batch writes is marked in it (see vhostuser/dirtylog.py) */
        uint8_t *log; uint64_t log_size;
        uint32_t log_outside;  /* writes (partly) past the log's end: not marked */
        /* a packed ring (virtio 1.2 §2.8; vhostuser/packed.py): `desc` is its one ring,
           last_avail / used_idx are positions with their wrap counters; the first used
           descriptor of a batch has its flags held back (held_pos, -1: none) until
           Python's publish; probe_pos: where a pop last found nothing (-1: a pop found
           a chain since, -2: no pop in this call) */
        int packed; uint16_t avail_wrap, used_wrap;
        int32_t held_pos; uint16_t held_flags;
        int32_t probe_pos; uint16_t probe_wrap;
    };

    /* The queue's indices, copied in before a batch call (Python keeps them between
       calls); the counters the calls add to start at 0. */
    static void vu_enter(struct vu_vq *q, uint16_t last_avail, uint16_t shadow_avail,
                         uint16_t used_idx)
    {
        q->last_avail = last_avail;
        q->shadow_avail = shadow_avail;
        q->used_idx = used_idx;
        q->popped = q->pushed = q->bad = 0;
    }

    static void vu_enter_packed(struct vu_vq *q, uint16_t last_avail, int avail_wrap,
                                uint16_t used_idx, int used_wrap, int32_t held_pos,
                                uint16_t held_flags)
    {
        q->last_avail = last_avail;
        q->avail_wrap = (uint16_t)!!avail_wrap;
        q->used_idx = used_idx;
        q->used_wrap = (uint16_t)!!used_wrap;
        q->held_pos = held_pos;
        q->held_flags = held_flags;
        q->probe_pos = -2;  /* no pop yet */
        q->popped = q->pushed = q->bad = 0;
    }

    #define VU_E_AHEAD (-11)            /* err: avail idx, last avail idx */
    #define VU_RX_SLOW (-12)            /* the frame needs more descriptors than the store */

    #define VU_TX_WRITABLE (-1)
    #define VU_TX_TOO_LONG (-2)
    #define VU_TX_RUNT (-3)
    #define VU_TX_NO_REGION (-4)        /* off: address */
    #define VU_TX_OVERFLOW (-5)         /* off: address, aux: length */
    #define VU_TX_BAD_HEADER (-6)       /* off: address, aux: length */

    /* The next available head (1), none (0), or VU_E_AHEAD; as Virtqueue.pop. */
    static int vu_pop_head(struct vu_vq *q, uint32_t *head)
    {
        uint16_t last = q->last_avail;
        if (last == q->shadow_avail) {
            q->shadow_avail = __atomic_load_n(&q->avail[1], __ATOMIC_ACQUIRE);
            if (last == q->shadow_avail)
                return 0;
        }
        if ((uint16_t)(q->shadow_avail - last) > q->n) {
            q->err[0] = q->shadow_avail; q->err[1] = last;
            return VU_E_AHEAD;
        }
        *head = __atomic_load_n(&q->avail[2 + (last & (q->n - 1))], __ATOMIC_RELAXED);
        q->last_avail = (uint16_t)(last + 1);
        return 1;
    }

    #define P_AVAIL (1u << 7)
    #define P_USED (1u << 15)

    /* The packed chain at ring position i, as PackedVirtqueue._walk_packed: descriptors
       i, i+1, ... (wrapping) linked by NEXT, or one INDIRECT descriptor whose every table
       entry belongs to the buffer. Returns the buffers (addr/len) or a VU_E_* code; *head
       is the buffer id (the last descriptor's) | ring descriptors taken << 16. */
    static int vu_walk_packed(struct vu_vq *q, uint32_t i, uint64_t *addr, uint32_t *len,
                              uint32_t *nread, uint32_t *head)
    {
        uint32_t n = q->n, k = 0, readable = 0, steps = 0;
        int writable = 0;
        for (;;) {
            uint8_t d[16];
            uint64_t a;
            uint32_t l;
            uint16_t bid, flags;
            memcpy(d, q->desc + 16ull * i, 16);
            memcpy(&a, d, 8);
            memcpy(&l, d + 8, 4);
            memcpy(&bid, d + 12, 2);
            memcpy(&flags, d + 14, 2);
            steps++;
            if (flags & F_INDIRECT) {
                if (!q->indirect_ok)
                    return VU_E_NO_INDIRECT;
                if (steps > 1 || (flags & F_NEXT))
                    return VU_E_INDIRECT_IN_CHAIN;
                if (l == 0 || l % 16 || l / 16 > n) {
                    q->err[0] = l; q->err[1] = n;
                    return VU_E_INDIRECT_LEN;
                }
                int rc = vu_covered(q->regs, q->nregs, a, l, q->err);
                if (rc)
                    return rc;
                for (uint32_t e = 0; e < l / 16; e++) {
                    uint8_t t[16];
                    uint64_t ta;
                    uint32_t tl;
                    uint16_t tf;
                    vu_read(q->regs, q->nregs, a + 16ull * e, t, 16);
                    memcpy(&ta, t, 8);
                    memcpy(&tl, t + 8, 4);
                    memcpy(&tf, t + 14, 2);
                    if (tf & F_INDIRECT)
                        return VU_E_NESTED;
                    if (vu_take(tf, ta, tl, addr, len, &k, &writable, &readable))
                        return VU_E_READ_AFTER_WRITE;
                }
                *nread = readable;
                *head = bid | (1u << 16);
                return (int)k;
            }
            if (vu_take(flags, a, l, addr, len, &k, &writable, &readable))
                return VU_E_READ_AFTER_WRITE;
            if (!(flags & F_NEXT)) {
                *nread = readable;
                *head = bid | (steps << 16);
                return (int)k;
            }
            if (steps >= n) {
                q->err[0] = n;
                return VU_E_TOO_LONG;
            }
            if (++i == n)
                i = 0;
        }
    }

    /* The next available chain, walked into addr/len: its descriptor count (> 0), 0 when
       there is none, or a VU_E_* code. *head is what vu_push takes back: the head index
       (split) or the buffer id and ring descriptors (packed). As the Python pops, a split
       ring moves past a head whose walk fails, a packed ring does not. */
    static int vu_next(struct vu_vq *q, uint32_t *head, uint64_t *addr, uint32_t *len,
                       uint32_t *nread)
    {
        if (!q->packed) {
            int rc = vu_pop_head(q, head);
            if (rc <= 0)
                return rc;
            return vu_walk(q->desc, q->n, *head, q->indirect_ok, q->regs, q->nregs, addr,
                           len, nread, q->err);
        }
        uint32_t i = q->last_avail;
        int w = q->avail_wrap;
        uint16_t f = __atomic_load_n((const uint16_t *)(q->desc + 16ull * i + 14),
                                     __ATOMIC_ACQUIRE);
        if (!!(f & P_AVAIL) != w || !!(f & P_USED) == w) {
            q->probe_pos = (int32_t)i;
            q->probe_wrap = (uint16_t)w;
            return 0;
        }
        q->probe_pos = -1;
        int cnt = vu_walk_packed(q, i, addr, len, nread, head);
        if (cnt < 0)
            return cnt;
        i += *head >> 16;
        if (i >= q->n) {
            i -= q->n;
            q->avail_wrap ^= 1;
        }
        q->last_avail = (uint16_t)i;
        return cnt;
    }

    /* A packed used descriptor at our used position: the buffer's id and length, flags
       equal to our wrap counter (the batch's first held back for publish, marked as
       PackedVirtqueue.push marks it), then the position moves on by the buffer's ring
       descriptors. */
    static void vu_push_packed(struct vu_vq *q, uint32_t head, uint32_t len)
    {
        uint8_t *d = (uint8_t *)q->desc + 16ull * q->used_idx;
        uint16_t id = (uint16_t)head, flags = q->used_wrap ? (P_AVAIL | P_USED) : 0;
        memcpy(d + 8, &len, 4);
        memcpy(d + 12, &id, 2);
        if (q->held_pos < 0) {
            q->held_pos = q->used_idx;
            q->held_flags = flags;
            /* still available to the driver, marked as held (packed.py's HELD_*) */
            __atomic_store_n((uint16_t *)(d + 14),
                             (uint16_t)((q->used_wrap ? P_AVAIL : P_USED) | F_INDIRECT | F_NEXT),
                             __ATOMIC_RELEASE);
        } else {
            __atomic_store_n((uint16_t *)(d + 14), flags, __ATOMIC_RELEASE);
        }
        uint32_t i = q->used_idx + (head >> 16);
        if (i >= q->n) {
            i -= q->n;
            q->used_wrap ^= 1;
        }
        q->used_idx = (uint16_t)i;
        q->pushed++;
    }

    static void vu_push(struct vu_vq *q, uint32_t head, uint32_t len)
    {
        if (q->packed) {
            vu_push_packed(q, head, len);
            return;
        }
        uint8_t *e = q->used + 4 + 8ull * (q->used_idx & (q->n - 1));
        memcpy(e, &head, 4);
        memcpy(e + 4, &len, 4);
        q->used_idx++;
        q->pushed++;
    }

    static void vu_push_zero(struct vu_vq *q, const uint32_t *heads, uint32_t count)
    {
        for (uint32_t i = 0; i < count; i++)
            vu_push(q, heads[i], 0);
    }

    /* The summary of entries [0, k): bytes of the frames, drops, NEEDS_CSUM headers. */
    static void vu_tx_summary(struct vu_vq *q, uint32_t k, const int32_t *kind,
                              const uint32_t *flen, const uint8_t *vhdr, int want_hdr)
    {
        for (uint32_t i = 0; i < k; i++) {
            if (kind[i] < 0) {
                q->tx_drops++;
                continue;
            }
            q->tx_bytes += flen[i];
            if (want_hdr && (vhdr[10ull * i] & 1))
                q->tx_csum++;
        }
    }

    /* Pop up to `max` TX chains. Each entry: its head, and in kind[] where the frame (the
       bytes after the `hdr`-byte virtio_net_hdr) is: a region index (off = offset in that
       region, zero copy), nregs (off = offset in scratch, gathered), or a VU_TX_* drop. With
       want_hdr the first 10 header bytes go to vhdr[10 i]. Returns the entries filled; a
       broken ring rule stops the batch with q->status set. vu_tx_batch adds the
       summary (tx_bytes, tx_drops, tx_csum). */
    static int vu_tx_walk(struct vu_vq *q, uint32_t max, uint32_t hdr, uint64_t max_total,
                          int want_hdr, uint8_t *scratch, uint64_t scratch_size,
                          uint32_t *heads, int32_t *kind, uint64_t *off, uint32_t *flen,
                          uint64_t *aux, uint8_t *vhdr)
    {
        uint64_t used_scratch = 0;
        uint32_t k = 0;
        q->status = 0;
        q->tx_bytes = 0; q->tx_drops = 0; q->tx_csum = 0;
        while (k < max) {
            uint32_t head, nread = 0;
            uint16_t sa = q->last_avail, sw = q->avail_wrap;
            int cnt = vu_next(q, &head, q->addr, q->len, &nread);
            if (cnt <= 0) {
                q->status = cnt;
                return (int)k;
            }
            q->popped++;
            heads[k] = head;
            off[k] = 0; flen[k] = 0; aux[k] = 0;
            if (nread < (uint32_t)cnt) {
                kind[k++] = VU_TX_WRITABLE;
                continue;
            }
            uint64_t total = 0;
            int too_long = 0;
            for (uint32_t i = 0; i < nread; i++) {
                total += q->len[i];
                if (total > max_total) { too_long = 1; break; }
            }
            if (too_long) { kind[k++] = VU_TX_TOO_LONG; continue; }
            if (total < hdr + 14) { kind[k++] = VU_TX_RUNT; continue; }
            /* the frame's pieces after the header, each checked against the regions */
            uint64_t skip = hdr, first_a = 0, first_n = 0;
            uint32_t nseg = 0;
            int bad = 0;
            for (uint32_t i = 0; i < nread; i++) {
                uint64_t a = q->addr[i], l = q->len[i];
                if (skip >= l) { skip -= l; continue; }
                if (a + (l - 1) < a) {  /* past 2^64 (a + skip must not wrap around) */
                    q->err[0] = a; q->err[1] = l;
                    bad = VU_E_OVERFLOW;
                    break;
                }
                a += skip; l -= skip; skip = 0;
                bad = vu_covered(q->regs, q->nregs, a, l, q->err);
                if (bad) break;
                if (!nseg) { first_a = a; first_n = l; }
                nseg++;
            }
            if (bad) {
                kind[k] = bad == VU_E_NO_REGION ? VU_TX_NO_REGION : VU_TX_OVERFLOW;
                off[k] = q->err[0]; aux[k] = q->err[1];
                k++;
                continue;
            }
            uint64_t flen_k = total - hdr;
            const struct vu_region *r = vu_find(q->regs, q->nregs, first_a);
            if (nseg == 1 && first_n - 1 < r->size - (first_a - r->gpa)) {
                kind[k] = (int32_t)(r - q->regs);
                off[k] = first_a - r->gpa;
            } else {
                if (used_scratch + flen_k > scratch_size) {
                    /* no room left: give the chain back, it starts the next batch */
                    q->last_avail = sa;
                    q->avail_wrap = sw;
                    q->popped--;
                    return (int)k;
                }
                uint8_t *dst = scratch + used_scratch;
                skip = hdr;
                for (uint32_t i = 0; i < nread; i++) {
                    uint64_t a = q->addr[i], l = q->len[i];
                    if (skip >= l) { skip -= l; continue; }
                    a += skip; l -= skip; skip = 0;
                    vu_read(q->regs, q->nregs, a, dst, l);
                    dst += l;
                }
                kind[k] = (int32_t)q->nregs;
                off[k] = used_scratch;
                used_scratch += (flen_k + 7) & ~7ull;
            }
            flen[k] = (uint32_t)flen_k;
            if (want_hdr) {
                /* the first 10 header bytes, each piece inside one region (as gpa()) */
                uint8_t *h = vhdr + 10ull * k;
                uint32_t got = 0;
                memset(h, 0, 10);
                for (uint32_t i = 0; i < nread && got < 10; i++) {
                    uint64_t a = q->addr[i];
                    uint32_t take = q->len[i] < 10 - got ? q->len[i] : 10 - got;
                    const struct vu_region *hr = vu_find(q->regs, q->nregs, a);
                    if (!hr || a - hr->gpa + take > hr->size) {
                        kind[k] = VU_TX_BAD_HEADER;
                        off[k] = a; aux[k] = take;
                        break;
                    }
                    memcpy(h + got, hr->host + (a - hr->gpa), take);
                    got += take;
                }
            }
            k++;
        }
        return (int)k;
    }

    static int vu_tx_batch(struct vu_vq *q, uint32_t max, uint32_t hdr, uint64_t max_total,
                           int want_hdr, uint8_t *scratch, uint64_t scratch_size,
                           uint32_t *heads, int32_t *kind, uint64_t *off, uint32_t *flen,
                           uint64_t *aux, uint8_t *vhdr)
    {
        int k = vu_tx_walk(q, max, hdr, max_total, want_hdr, scratch, scratch_size, heads,
                           kind, off, flen, aux, vhdr);
        vu_tx_summary(q, (uint32_t)k, kind, flen, vhdr, want_hdr);
        return k;
    }

    /* A predicate over a batch of frames (pointers and lengths): out[i] = 1 for the
       frames it selects, 0 for the others (a NULL frame is never selected); returns how
       many it selected. The device's frame hook needs to see only those: the hook's
       owner gives one (apps/capture/bpf.py runs pcap filters) and we call it where the
       frames are, before any Python runs per frame. */
    typedef uint32_t (*vu_select_fn)(const void *ctx, const uint8_t *const *frames,
                                     const uint32_t *lens, uint32_t count, uint8_t *out);

    /* `sel` over the frames of a walked TX batch (kind/off/flen as vu_tx_walk left
       them: a region index, nregs for the scratch, a negative drop), in place in guest
       memory; frames[] (count entries) is room for their pointers. */
    static uint32_t vu_tx_select(const struct vu_vq *q, const uint8_t *scratch,
                                 const int32_t *kind, const uint64_t *off,
                                 const uint32_t *flen, uint32_t count,
                                 const uint8_t **frames, vu_select_fn sel, const void *ctx,
                                 uint8_t *out)
    {
        for (uint32_t i = 0; i < count; i++) {
            int32_t k = kind[i];
            if (k < 0) {
                frames[i] = NULL;
                continue;
            }
            frames[i] = ((uint32_t)k < q->nregs ? q->regs[k].host : scratch) + off[i];
            /* the guest wrote it on another CPU a moment ago: start fetching its first
               line now, for all the batch at once, rather than one miss per frame */
            __builtin_prefetch(frames[i]);
        }
        return sel(ctx, (const uint8_t *const *)frames, flen, count, out);
    }

    /* Pop, check and give back up to `max` TX chains, `batch` at a time (the arrays
       are vu_tx_batch's, of `batch` entries): a sink that looks at no frame. Each
       batch is pushed before the next is popped. Frames' bytes go to q->tx_bytes,
       drops by kind to drops[-kind - 1] (6 counters), their total to q->tx_drops.
       Returns the chains completed; a broken ring rule stops it with q->status set
       (the chains before it are completed).
       With `sel` (else NULL), each walked batch is first offered to it (vu_tx_select,
       its flags in out[]): a batch with a selected frame stops the call, neither
       counted nor pushed, its length in *pending: the caller shows the selected frames
       to its hook and completes the batch itself (the arrays still describe it;
       `want_hdr` as vu_tx_batch's, for that). */
    static int vu_tx_discard_select(struct vu_vq *q, uint32_t max, uint32_t hdr,
                                    uint64_t max_total, int want_hdr, uint8_t *scratch,
                                    uint64_t scratch_size, uint32_t batch, uint32_t *heads,
                                    int32_t *kind, uint64_t *off, uint32_t *flen,
                                    uint64_t *aux, uint8_t *vhdr, uint64_t *drops,
                                    vu_select_fn sel, const void *ctx,
                                    const uint8_t **frames, uint8_t *out, uint32_t *pending)
    {
        uint32_t total = 0, bad = 0;
        uint64_t bytes = 0;
        q->status = 0;
        if (pending)
            *pending = 0;
        while (total < max) {
            uint32_t want = max - total < batch ? max - total : batch;
            int k = vu_tx_walk(q, want, hdr, max_total, want_hdr, scratch, scratch_size,
                               heads, kind, off, flen, aux, vhdr);
            if (sel && k > 0
                    && vu_tx_select(q, scratch, kind, off, flen, (uint32_t)k, frames, sel,
                                    ctx, out)) {
                *pending = (uint32_t)k;
                break;
            }
            for (int i = 0; i < k; i++) {
                if (kind[i] < 0) {
                    drops[-kind[i] - 1]++;
                    bad++;
                } else
                    bytes += flen[i];
            }
            vu_push_zero(q, heads, (uint32_t)k);
            total += (uint32_t)k;
            if (q->status || k == 0)
                break;
        }
        q->tx_bytes = bytes;
        q->tx_drops = bad;
        return (int)total;
    }

    static int vu_tx_discard(struct vu_vq *q, uint32_t max, uint32_t hdr, uint64_t max_total,
                             uint8_t *scratch, uint64_t scratch_size, uint32_t batch,
                             uint32_t *heads, int32_t *kind, uint64_t *off, uint32_t *flen,
                             uint64_t *aux, uint8_t *vhdr, uint64_t *drops)
    {
        return vu_tx_discard_select(q, max, hdr, max_total, 0, scratch, scratch_size, batch,
                                    heads, kind, off, flen, aux, vhdr, drops, NULL, NULL,
                                    NULL, NULL, NULL);
    }

    /* `sel` over `count` frames back to back in `data` (lengths in lens[]). */
    static uint32_t vu_packed_select(const uint8_t *data, const uint32_t *lens,
                                     uint32_t count, const uint8_t **frames,
                                     vu_select_fn sel, const void *ctx, uint8_t *out)
    {
        uint64_t o = 0;
        for (uint32_t i = 0; i < count; i++) {
            frames[i] = data + o;
            o += lens[i];
        }
        return sel(ctx, (const uint8_t *const *)frames, lens, count, out);
    }

    /* Mark the pages of guest-physical [gpa, gpa+len) in the dirty log (size bytes, a bit
       per 4 KiB page). The front-end clears it with atomic exchanges while we run, hence
       the atomic OR. Returns 1 if some of the range lies past the log (not marked). */
    static int vu_log_write(uint8_t *log, uint64_t size, uint64_t gpa, uint64_t len)
    {
        if (!len)
            return 0;
        uint64_t first = gpa >> 12, last = (gpa + len - 1) >> 12, pages = size * 8;
        int outside = 0;
        if (last < first || last >= pages) {  /* (wrapped, or past the end) */
            outside = 1;
            if (first >= pages)
                return 1;
            last = pages - 1;
        }
        for (uint64_t p = first; p <= last; p++)
            __atomic_fetch_or(&log[p >> 3], (uint8_t)(1u << (p & 7)), __ATOMIC_RELAXED);
        return outside;
    }

    /* Copy [pos, pos+n) of (header hb[0:hdr] then frame) to guest-physical a (checked). */
    static void vu_write(const struct vu_region *regs, uint32_t nregs, uint64_t a,
                         uint64_t n, const uint8_t *hb, uint32_t hdr, const uint8_t *frame,
                         uint64_t pos)
    {
        while (n) {
            const struct vu_region *r = vu_find(regs, nregs, a);
            uint64_t o = a - r->gpa, room = r->size - o;
            uint64_t take = n < room ? n : room;
            uint8_t *dst = r->host + o;
            uint64_t left = take;
            if (pos < hdr) {
                uint64_t h = hdr - pos < left ? hdr - pos : left;
                memcpy(dst, hb + pos, h);
                dst += h; pos += h; left -= h;
            }
            if (left) {
                memcpy(dst, frame + (pos - hdr), left);
                pos += left;
            }
            a += take;
            n -= take;
        }
    }

    /* Write frames (back to back in data, lens[i] bytes each; hdrs: 10 header bytes per
       frame, or NULL for none) with their virtio_net_hdr into the guest's RX buffers, as
       VirtioNetDevice._write_rx does one by one. outcome[i] (if not NULL): 0 delivered, 1
       dropped (one buffer too small without MRG_RXBUF; counted in q->rx_small). Returns how many frames were consumed; stops
       when the guest has posted too little (those chains given back), on a broken ring
       rule (q->status), or with VU_RX_SLOW for a frame whose chains overflow the store. */
    /* Start the loads the next chains will need while this one is served: the
       descriptor two heads ahead, the buffer of the next head (its descriptor was
       asked for one step earlier). Lines the driver just wrote live in the other
       CPU's cache; fetched one by one they cost more than the copy. Only heads
       already published (below shadow_avail) are read; a prefetch never faults, and
       the address is taken only inside a region. */
    static void vu_prefetch(const struct vu_vq *q, int write)
    {
        uint16_t ahead = (uint16_t)(q->shadow_avail - q->last_avail);
        if (ahead > 2) {
            uint16_t h = __atomic_load_n(&q->avail[2 + ((uint16_t)(q->last_avail + 2)
                                                        & (q->n - 1))], __ATOMIC_RELAXED);
            if (h < q->n)
                __builtin_prefetch(q->desc + 16ull * h);
        }
        if (ahead > 1) {
            uint16_t h = __atomic_load_n(&q->avail[2 + ((uint16_t)(q->last_avail + 1)
                                                        & (q->n - 1))], __ATOMIC_RELAXED);
            if (h < q->n) {
                uint64_t a;
                memcpy(&a, q->desc + 16ull * h, 8);
                const struct vu_region *r = vu_find(q->regs, q->nregs, a);
                if (r) {
                    if (write)
                        __builtin_prefetch(r->host + (a - r->gpa), 1);
                    else
                        __builtin_prefetch(r->host + (a - r->gpa), 0);
                }
            }
        }
    }

    static int vu_rx_batch(struct vu_vq *q, uint32_t hdr, int mergeable, const uint8_t *data,
                           const uint32_t *lens, uint32_t nframes, const uint8_t *hdrs,
                           uint8_t *outcome)
    {
        q->status = 0;
        q->rx_bytes = 0;
        q->rx_small = 0;
        for (uint32_t i = 0; i < nframes; i++) {
            if (!q->packed)
                vu_prefetch(q, 1);
            uint64_t need = (uint64_t)hdr + lens[i], room = 0;
            uint32_t nch = 0, slots = 0;
            uint16_t sa = q->last_avail, sw = q->avail_wrap;  /* to give the chains back */
            while (room < need) {
                uint32_t head, nread = 0;
                if (q->cap - slots < q->n) {
                    q->last_avail = sa; q->avail_wrap = sw; q->popped -= nch;
                    q->status = VU_RX_SLOW;
                    return (int)i;
                }
                int cnt = vu_next(q, &head, q->addr + slots, q->len + slots, &nread);
                if (cnt < 0) { q->status = cnt; return (int)i; }
                if (cnt == 0) {
                    q->last_avail = sa; q->avail_wrap = sw; q->popped -= nch;
                    return (int)i;
                }
                q->popped++;
                q->chains[3 * nch] = head;
                q->chains[3 * nch + 1] = slots + nread;
                q->chains[3 * nch + 2] = slots + (uint32_t)cnt;
                for (uint32_t j = nread; j < (uint32_t)cnt; j++)
                    room += q->len[slots + j];
                slots += (uint32_t)cnt;
                nch++;
                if (!mergeable)
                    break;
            }
            if (room < need) {
                vu_push(q, q->chains[0], 0);
                if (outcome)
                    outcome[i] = 1;
                q->rx_small++;
                q->rx_bytes += lens[i];
                data += lens[i];
                continue;
            }
            uint8_t hb[12];
            if (hdrs)
                memcpy(hb, hdrs + 10ull * i, 10);
            else
                memset(hb, 0, 10);
            uint16_t nb = (uint16_t)nch;
            memcpy(hb + 10, &nb, 2);
            uint64_t pos = 0;
            for (uint32_t c = 0; c < nch; c++) {
                uint64_t start = pos;
                for (uint32_t j = q->chains[3 * c + 1]; j < q->chains[3 * c + 2]; j++) {
                    if (pos >= need)
                        break;
                    uint64_t a = q->addr[j], take = q->len[j];
                    if (take > need - pos)
                        take = need - pos;
                    if (vu_covered(q->regs, q->nregs, a, take, q->err)) {
                        q->bad++;
                        break;
                    }
                    vu_write(q->regs, q->nregs, a, take, hb, hdr, data, pos);
                    if (q->log)
                        q->log_outside += vu_log_write(q->log, q->log_size, a, take);
                    pos += take;
                }
                vu_push(q, q->chains[3 * c], (uint32_t)(pos - start));
            }
            if (outcome)
                outcome[i] = 0;
            q->rx_bytes += lens[i];
            data += lens[i];
        }
        return (int)nframes;
    }

    /* How many of n lengths lie outside [lo, hi]; their sum in *total. */
    static uint32_t vu_lens_check(const uint32_t *lens, uint32_t n, uint32_t lo, uint32_t hi,
                                  uint64_t *total)
    {
        uint32_t bad = 0;
        uint64_t sum = 0;
        for (uint32_t i = 0; i < n; i++) {
            sum += lens[i];
            bad += lens[i] < lo || lens[i] > hi;
        }
        *total = sum;
        return bad;
    }


    /* ---- Front-end (driver) side: vhostuser/frontend.py's TxBatch and RxBatch -------
       Descriptor i (< nbufs) is fixed to buffer i (host[i], nbufs <= n), written once
       by fe_setup; a batch only copies bytes, sets lengths and publishes avail entries
       with one avail idx store and at most one kick (EVENT_IDX or NO_NOTIFY). `busy[i]`
       says the device owns descriptor i, so a used id the driver never made available
       is refused (FE_E_ID) instead of corrupting the free list. */
    #include <unistd.h>

    struct fe_vq {
        uint8_t *desc; uint8_t *avail; uint8_t *used;
        uint32_t n; int event_idx; int kick_fd;
        uint16_t avail_idx, last_used;
        uint8_t **host; uint32_t nbufs, buf_len, hdr_len;
        uint16_t *free_ids; uint32_t nfree;
        uint8_t *busy;
        uint32_t rx_want, rx_got, rx_copy;   /* the RX frame being merged */
        uint64_t rx_len, rx_out_start;
        uint64_t frames, bytes, buffers, kicks, kicks_suppressed;
        int status; uint64_t err[2];
    };

    #define FE_E_AHEAD (-1)        /* err: used idx, last reaped */
    #define FE_E_ID (-2)           /* err: id */
    #define FE_E_LEN (-3)          /* err: length, buffer size */
    #define FE_E_RUNT (-4)         /* err: length */
    #define FE_E_NUM_BUFFERS (-5)
    #define FE_E_TOO_BIG (-6)      /* err: frame index, frame length */

    static uint16_t fe_ld16(const uint8_t *p)
    {
        return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
    }

    static void fe_st16(uint8_t *p, uint16_t v)
    {
        __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
    }

    static void fe_setup(struct fe_vq *q, const uint64_t *gpa, int writable)
    {
        for (uint32_t i = 0; i < q->nbufs; i++) {
            uint8_t *d = q->desc + 16ull * i;
            uint16_t flags = writable ? F_WRITE : 0, nxt = 0;
            memcpy(d, &gpa[i], 8);
            memcpy(d + 8, &q->buf_len, 4);
            memcpy(d + 12, &flags, 2);
            memcpy(d + 14, &nxt, 2);
            q->free_ids[i] = (uint16_t)(q->nbufs - 1 - i);  /* pops 0 first */
            q->busy[i] = 0;
        }
        q->nfree = q->nbufs;
    }

    /* Store the avail idx (entries before it), then kick if the device asked for it. */
    static void fe_publish(struct fe_vq *q, uint16_t old)
    {
        fe_st16(q->avail + 2, q->avail_idx);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* idx before avail_event / flags */
        int kick;
        if (q->event_idx) {
            uint16_t ev = fe_ld16(q->used + 4 + 8ull * q->n);
            kick = (uint16_t)(q->avail_idx - ev - 1) < (uint16_t)(q->avail_idx - old);
        } else {
            kick = !(fe_ld16(q->used) & 1);  /* VIRTQ_USED_F_NO_NOTIFY */
        }
        if (kick) {
            uint64_t one = 1;
            if (write(q->kick_fd, &one, 8) == 8)
                q->kicks++;
        } else {
            q->kicks_suppressed++;
        }
    }

    static int fe_tx_send(struct fe_vq *q, const uint8_t *data, const uint32_t *lens,
                          uint32_t count, const uint8_t *hdr)
    {
        uint16_t old = q->avail_idx;
        uint32_t i;
        for (i = 0; i < count && q->nfree; i++) {
            uint32_t len = lens[i];
            if (len > q->buf_len - q->hdr_len) {
                q->status = FE_E_TOO_BIG;
                q->err[0] = i; q->err[1] = len;
                break;
            }
            uint16_t id = q->free_ids[--q->nfree];
            uint8_t *p = q->host[id];
            if (hdr)
                memcpy(p, hdr, q->hdr_len);
            else
                memset(p, 0, q->hdr_len);
            memcpy(p + q->hdr_len, data, len);
            uint32_t total = q->hdr_len + len;
            memcpy(q->desc + 16ull * id + 8, &total, 4);
            q->busy[id] = 1;
            memcpy(q->avail + 4 + 2ull * (q->avail_idx % q->n), &id, 2);
            q->avail_idx++;
            q->frames++;
            q->bytes += len;
            data += len;
        }
        if (q->avail_idx != old)
            fe_publish(q, old);
        return (int)i;
    }

    /* Take one used entry's id (checked) or set status; -1 on error. */
    static int fe_used_id(struct fe_vq *q, uint32_t *len)
    {
        const uint8_t *e = q->used + 4 + 8ull * (q->last_used % q->n);
        uint32_t id;
        memcpy(&id, e, 4);
        memcpy(len, e + 4, 4);
        if (id >= q->nbufs || !q->busy[id]) {
            q->status = FE_E_ID;
            q->err[0] = id;
            return -1;
        }
        return (int)id;
    }

    static int fe_used_end(struct fe_vq *q, uint16_t *end)
    {
        *end = fe_ld16(q->used + 2);  /* acquire: idx before the entries it covers */
        if ((uint16_t)(*end - q->last_used) > q->n) {
            q->status = FE_E_AHEAD;
            q->err[0] = *end; q->err[1] = q->last_used;
            return -1;
        }
        return 0;
    }

    /* Free completed TX buffers; asks (EVENT_IDX) for a call once 3/4 of what is still in
       flight is done (Linux's virtqueue_enable_cb_delayed). Returns the count or -1. */
    static int fe_tx_reap(struct fe_vq *q)
    {
        uint16_t end;
        int done = 0;
        if (fe_used_end(q, &end))
            return -1;
        while (q->last_used != end) {
            uint32_t len;
            int id = fe_used_id(q, &len);
            if (id < 0)
                return -1;
            q->busy[id] = 0;
            q->free_ids[q->nfree++] = (uint16_t)id;
            q->last_used++;
            done++;
        }
        if (q->event_idx) {
            uint32_t inflight = q->nbufs - q->nfree;
            fe_st16(q->avail + 4 + 2ull * q->n, (uint16_t)(q->last_used + inflight * 3 / 4));
        }
        return done;
    }

    /* Reap used RX buffers, merging frames by num_buffers (MRG_RXBUF) even across calls;
       copy whole frames that start in this call into `out` (back to back, lengths in
       out_lens) while max_out and out_cap allow, count all of them (frames, bytes after
       the header, buffers), and make every buffer available again with one avail idx
       store. Re-arms used_event and looks once more before returning. Returns the frames
       completed, or -1 with status set (the buffers reaped before are reposted). */
    static int fe_rx_reap(struct fe_vq *q, int mergeable, uint8_t *out, uint64_t out_cap,
                          uint32_t *out_lens, uint32_t max_out, uint32_t *nout)
    {
        uint16_t old = q->avail_idx, end;
        uint64_t out_pos = 0;
        int frames = 0, rc = 0;
        *nout = 0;
        if (q->rx_want)
            q->rx_copy = 0;  /* started in an earlier call: counted, not copied */
        for (int pass = 0; pass < 2 && rc == 0; pass++) {
            if (fe_used_end(q, &end)) {
                rc = -1;
                break;
            }
            while (q->last_used != end) {
                uint32_t len;
                int id = fe_used_id(q, &len);
                if (id < 0) {
                    rc = -1;
                    break;
                }
                if (len > q->buf_len) {
                    q->status = FE_E_LEN;
                    q->err[0] = len; q->err[1] = q->buf_len;
                    rc = -1;
                    break;
                }
                const uint8_t *p = q->host[id];
                uint32_t skip = 0;
                if (!q->rx_want) {
                    if (len < q->hdr_len) {
                        q->status = FE_E_RUNT;
                        q->err[0] = len;
                        rc = -1;
                        break;
                    }
                    uint16_t want = 1;
                    if (mergeable)
                        memcpy(&want, p + 10, 2);
                    if (!want) {
                        q->status = FE_E_NUM_BUFFERS;
                        rc = -1;
                        break;
                    }
                    q->rx_want = want;
                    q->rx_got = 0;
                    q->rx_len = 0;
                    q->rx_copy = out && *nout < max_out;
                    q->rx_out_start = out_pos;
                    skip = q->hdr_len;
                }
                uint32_t piece = len - skip;
                if (q->rx_copy) {
                    if (out_pos + piece > out_cap) {
                        q->rx_copy = 0;  /* too big for what is left: counted only */
                        out_pos = q->rx_out_start;
                    } else {
                        memcpy(out + out_pos, p + skip, piece);
                        out_pos += piece;
                    }
                }
                q->rx_len += piece;
                q->rx_got++;
                q->buffers++;
                q->last_used++;
                /* repost: descriptor id still points at its buffer, full length */
                uint16_t id16 = (uint16_t)id;
                memcpy(q->avail + 4 + 2ull * (q->avail_idx % q->n), &id16, 2);
                q->avail_idx++;
                if (q->rx_got == q->rx_want) {
                    if (q->rx_copy)
                        out_lens[(*nout)++] = (uint32_t)q->rx_len;
                    q->frames++;
                    q->bytes += q->rx_len;
                    frames++;
                    q->rx_want = 0;
                }
            }
            if (q->event_idx) {
                fe_st16(q->avail + 4 + 2ull * q->n, q->last_used);
                __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* used_event before idx */
            }
            if (fe_ld16(q->used + 2) == q->last_used)
                break;
        }
        if (q->avail_idx != old)
            fe_publish(q, old);
        return rc ? rc : frames;
    }

    static uint32_t vu_csum_partial(const uint8_t *buf, size_t len, uint32_t sum)
    {
        return vhn_csum_partial(buf, len, sum);  /* csrc/csum.h */
    }
    """,
    **_build_flags(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
