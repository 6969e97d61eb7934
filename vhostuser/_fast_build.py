"""cffi build script for vhostuser's C helpers (run by setup.py through `cffi_modules`).

`fence()` is a full memory barrier: the device must publish `avail_event`/used flags and
then re-read the avail index (virtio 1.2 §2.7.10); on x86 that store→load order needs an
mfence that pure Python cannot emit.
"""

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    void vu_fence(void);
    """
)
ffibuilder.set_source(
    "vhostuser._fast",
    r"""
    static void vu_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    """,
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
