"""The C helpers under AddressSanitizer and UndefinedBehaviorSanitizer, for the fuzz targets
that reach them (`python -m tests.fuzz --sanitize`, `make fuzz-sanitize`).

`build()` compiles both cffi modules with VHOSTNET_SANITIZE=1 (csrc/build_flags.py: ASan,
UBSan, any UB aborts; gcc, as setuptools builds them) into build/sanitize/, beside the
normal build, which stays as it is. A target process started with `env()` preloads the
sanitizer runtime (Python itself is not instrumented) and, through `activate()`, imports
the sanitized modules in place of the normal ones: each package's search path gets
build/sanitize/PACKAGE first."""

from __future__ import annotations

import os
import runpy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "build", "sanitize")
SCRIPTS = ("netstack/_fast_build.py", "vhostuser/_fast_build.py")
# the targets whose inputs reach C code: the ring walkers and batches, the checksum
TARGETS = ("split_ring", "packed_ring", "checksum")


def build() -> None:
    saved = os.environ.get("VHOSTNET_SANITIZE")
    os.environ["VHOSTNET_SANITIZE"] = "1"
    try:
        for script in SCRIPTS:
            ffi = runpy.run_path(os.path.join(REPO, script))["ffibuilder"]
            ffi.compile(tmpdir=BUILD)
    finally:
        if saved is None:
            del os.environ["VHOSTNET_SANITIZE"]
        else:
            os.environ["VHOSTNET_SANITIZE"] = saved


def runtime() -> str:
    """atheris's ASan runtime with libFuzzer linked in (its UBSan handlers too): gcc's
    libasan would also catch errors, but it takes over the coverage hooks atheris feeds
    libFuzzer through, and the fuzzing goes blind."""
    import atheris

    path = os.path.join(atheris.path(), "asan_with_fuzzer.so")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing (atheris installed without clang's "
                           "sanitizer runtimes): cannot run sanitized")
    return path


def env() -> dict:
    """The environment of a process that runs the sanitized modules."""
    return {**os.environ, "LD_PRELOAD": runtime(), "VHN_FUZZ_SANITIZED": BUILD,
            # leaks: CPython's own allocations are not ours to report
            "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}


def activate() -> bool:
    """In a process started with `env()`: import the sanitized modules from here on."""
    where = os.environ.get("VHN_FUZZ_SANITIZED")
    if not where:
        return False
    import netstack
    import vhostuser

    for pkg in (netstack, vhostuser):
        pkg.__path__.insert(0, os.path.join(where, pkg.__name__))
    return True
