/* The internet checksum's folded sum (RFC 1071), shared by netstack/_fast_build.py and
   vhostuser/_fast_build.py (each exports it under its own name: the two packages do not
   import each other). */
#ifndef VHN_CSUM_H
#define VHN_CSUM_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The sum of `len` bytes as big-endian 16-bit words (an odd trailing byte padded), added
   to `sum` and folded to 16 bits, so callers can chain partial sums (pseudo-header +
   header + payload). */
static inline uint32_t vhn_csum_partial(const uint8_t *buf, size_t len, uint32_t sum)
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
    /* acc is the sum of native (little-endian) words: swap to network order (RFC 1071's
       byte-order independence), then add the caller's running sum */
    acc = ((acc & 0xff) << 8) | (acc >> 8);
    acc += sum;
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
    return (uint32_t)acc;
}
#endif
