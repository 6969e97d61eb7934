"""cffi build script for vhostuser's C helpers (run by setup.py through `cffi_modules`).

`vu_csum_partial()` is the internet checksum's folded sum: the device completes partial
checksums (virtio NEEDS_CSUM) when the guest's offloads meet a stack that wants whole ones.

`fence()` is a full memory barrier: the device must publish `avail_event`/used flags and
then re-read the avail index (virtio 1.2 §2.7.10); on x86 that store→load order needs an
mfence that pure Python cannot emit.

The ring helpers, where a profile of the ring benchmark showed Python's per-frame cost:

- `vu_walk()` walks one descriptor chain (direct or through an indirect table) with every
  check virtqueue.py makes in Python: head and next indices in the table, the chain no
  longer than its table (a loop), readable before writable, indirect rules (negotiated,
  not nested, not inside a chain, length a non-zero multiple of 16 and at most 16 × queue
  size), the indirect table inside guest memory (it may straddle adjacent regions). Each
  descriptor is read once into a local copy. A broken rule returns a negative VU_E_* code
  and its arguments in `err[]`, which Python turns into the same RingError text.

The region table (`struct vu_region`) is built by memory.py from the mapped regions; the
pointers stay valid while the buffers exported to cffi are (memory.py releases them before
it unmaps).
"""

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    void vu_fence(void);
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
    """
)
ffibuilder.set_source(
    "vhostuser._fast",
    r"""
    #include <stdint.h>
    #include <string.h>
    static void vu_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

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
            if (flags & F_WRITE)
                writable = 1;
            else if (writable)
                return VU_E_READ_AFTER_WRITE;
            else
                readable++;
            addr[count] = a;
            len[count] = l;
            count++;
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

    /* RFC 1071 sum of big-endian 16-bit words added to `sum`, folded to 16 bits. */
    static uint32_t vu_csum_partial(const uint8_t *buf, size_t len, uint32_t sum)
    {
        uint64_t acc = 0;
        while (len >= 8) {
            uint64_t w;
            memcpy(&w, buf, 8);
            acc += (w & 0xffffffffu) + (w >> 32);
            buf += 8;
            len -= 8;
        }
        while (len >= 2) {
            uint16_t h;
            memcpy(&h, buf, 2);
            acc += h;
            buf += 2;
            len -= 2;
        }
        if (len) {
            uint16_t h = 0;
            memcpy(&h, buf, 1);
            acc += h;
        }
        while (acc >> 16)
            acc = (acc & 0xffff) + (acc >> 16);
        acc = ((acc & 0xff) << 8) | (acc >> 8);  /* native (LE) words -> network order */
        acc += sum;
        while (acc >> 16)
            acc = (acc & 0xffff) + (acc >> 16);
        return (uint32_t)acc;
    }
    """,
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
