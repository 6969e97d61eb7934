"""cffi build script for vhostuser's C helpers (run by setup.py through `cffi_modules`).

`vu_csum_partial()` is the internet checksum's folded sum: the device completes partial
checksums (virtio NEEDS_CSUM) when the guest's offloads meet a stack that wants whole ones.

`fence()` is a full memory barrier: the device must publish `avail_event`/used flags and
then re-read the avail index (virtio 1.2 §2.7.10); on x86 that store→load order needs an
mfence that pure Python cannot emit.
"""

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    void vu_fence(void);
    uint32_t vu_csum_partial(const uint8_t *buf, size_t len, uint32_t sum);
    """
)
ffibuilder.set_source(
    "vhostuser._fast",
    r"""
    #include <stdint.h>
    #include <string.h>
    static void vu_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

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
