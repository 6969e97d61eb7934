"""cffi build script for the libpcap binding of apps/capture/bpf.py (run by setup.py
through `cffi_modules`; links libpcap, so `libpcap-dev` must be installed to build).

libpcap compiles a pcap-filter expression (`pcap_compile` on a `pcap_open_dead` handle)
into a classic BPF program; `bpf_filter()` runs it over one frame. Two helpers of ours:

- `vbpf_select()` runs a set of programs over a batch of frames given as pointers and
  lengths and writes a match flag per frame (1 when any program accepts it; a NULL frame
  is never selected). Its signature is vhostuser's `vu_select_fn`: the device passes
  the frames of a TX batch straight from guest memory, so a capture filter that drops
  everything costs one C call per batch and no Python per frame. It prefetches a few
  frames ahead: the frames were just written by the guest on another CPU.
- `vbpf_match()`: one program, one frame (what `Filter.matches` calls).
"""

import os
import sys

from cffi import FFI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "csrc"))
from build_flags import flags as _build_flags  # noqa: E402  (csrc/: shared by the builds)

ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef struct pcap pcap_t;
    struct bpf_insn { unsigned short code; unsigned char jt; unsigned char jf;
                      uint32_t k; };
    struct bpf_program { unsigned int bf_len; struct bpf_insn *bf_insns; };
    #define DLT_EN10MB ...
    #define PCAP_NETMASK_UNKNOWN ...
    pcap_t *pcap_open_dead(int linktype, int snaplen);
    int pcap_compile(pcap_t *p, struct bpf_program *fp, const char *str, int optimize,
                     uint32_t netmask);
    char *pcap_geterr(pcap_t *p);
    void pcap_freecode(struct bpf_program *fp);
    void pcap_close(pcap_t *p);
    const char *pcap_lib_version(void);

    struct vbpf_set { uint32_t n; const struct bpf_insn **progs; };
    uint32_t vbpf_select(const void *ctx, const uint8_t *const *frames,
                         const uint32_t *lens, uint32_t count, uint8_t *out);
    int vbpf_match(const struct bpf_insn *prog, const char *frame, uint32_t len);
    """
)
ffibuilder.set_source(
    "apps.capture._bpf",
    r"""
    #include <stdint.h>
    #include <pcap/pcap.h>

    struct vbpf_set { uint32_t n; const struct bpf_insn **progs; };

    static int vbpf_match(const struct bpf_insn *prog, const char *frame, uint32_t len)
    {
        return bpf_filter(prog, (const u_char *)frame, len, len) != 0;
    }

    static uint32_t vbpf_select(const void *ctx, const uint8_t *const *frames,
                                const uint32_t *lens, uint32_t count, uint8_t *out)
    {
        const struct vbpf_set *s = ctx;
        uint32_t n = 0;
        for (uint32_t i = 0; i < count; i++) {
            if (i + 4 < count && frames[i + 4])
                __builtin_prefetch(frames[i + 4]);
            uint8_t m = 0;
            const uint8_t *f = frames[i];
            if (f)
                for (uint32_t j = 0; j < s->n && !m; j++)
                    m = bpf_filter(s->progs[j], f, lens[i], lens[i]) != 0;
            out[i] = m;
            n += m;
        }
        return n;
    }
    """,
    libraries=["pcap"],
    **_build_flags(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
