"""Compiler flags for the cffi helpers (netstack/_fast_build.py, vhostuser/_fast_build.py).

`VHOSTNET_SANITIZE=1` builds them with AddressSanitizer and UndefinedBehaviorSanitizer
(any UB aborts), for the fuzz targets (`make fuzz-sanitize`); Python itself is not
sanitized, so such a build runs only with a sanitizer runtime preloaded
(tests/fuzz/sanitize.py)."""

from __future__ import annotations

import os

CSRC = os.path.dirname(os.path.abspath(__file__))


def flags() -> dict:
    """set_source keyword arguments: include_dirs for csrc/, and the flags."""
    if os.environ.get("VHOSTNET_SANITIZE") == "1":
        # compiled only: the runtime comes preloaded (atheris's asan_with_fuzzer.so, which
        # has UBSan's handlers and libFuzzer's coverage hooks), not linked in
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
        return {"include_dirs": [CSRC],
                "extra_compile_args": ["-O1", "-g", "-fno-omit-frame-pointer", *san]}
    return {"include_dirs": [CSRC], "extra_compile_args": ["-O2"]}
