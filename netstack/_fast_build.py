"""cffi build script for netstack's C helpers (run by setup.py through `cffi_modules`).

Only what a profile showed to matter lives here: the internet checksum, which pure Python
computes at ~50 MB/s and C at several GB/s.
"""

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    uint32_t ns_csum_partial(const uint8_t *buf, size_t len, uint32_t sum);
    """
)
ffibuilder.set_source(
    "netstack._fast",
    r"""
    #include <stdint.h>
    #include <string.h>

    /* RFC 1071 sum of 16-bit big-endian words, folded to 32 bits so callers can chain
       partial sums (pseudo-header + header + payload). An odd trailing byte is padded. */
    static uint32_t ns_csum_partial(const uint8_t *buf, size_t len, uint32_t sum)
    {
        uint64_t acc = 0;
        while (len >= 8) {
            uint64_t w;
            memcpy(&w, buf, 8);
            /* sum native 32-bit halves; byte order is fixed up after folding */
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
        /* acc is the sum of native (little-endian) words: swap to network order
           (RFC 1071 byte-order independence), then add the caller's running sum */
        acc = ((acc & 0xff) << 8) | (acc >> 8);
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
