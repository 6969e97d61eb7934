"""pcap-filter expressions (tcpdump's filter language, `man 7 pcap-filter`), compiled and
run by libpcap: the one filter of `vhostnet capture --filter`, `serve --pcap-filter` and
`faults --match`.

`Filter.compile(expr)` compiles for Ethernet frames as `tcpdump -r FILE EXPR` does for an
Ethernet pcap (`pcap_open_dead(DLT_EN10MB, 262144)`, `pcap_compile` with optimisation
and no netmask, so `ip broadcast` is refused as tcpdump refuses it on a file); a bad
expression raises ValueError with libpcap's own message. `filter.matches(frame)` runs the
program over one frame (bytes, or a memoryview, not copied) with libpcap's
`bpf_filter()`; the empty expression matches everything without calling it.

`Selector(filters)` is the same over a batch, in C: the device (vhostuser's
`set_frame_hook(hook, select)`) hands it the frames of a batch straight from guest
memory and calls the hook only for the frames some filter accepts, so frames a filter
drops cost one BPF run each and no Python.

>>> f = Filter.compile("udp port 53 and not host 10.0.2.3")
>>> dns = bytes.fromhex(  # 10.0.2.15:54321 > 10.0.2.2:53, a query for "a."
...     "52550a00020252540012345608004500002f00010000401162ad0a00020f0a000202"
...     "d4310035001b0edf00000100000100000000000001610000010001")
>>> f.matches(dns), Filter.compile("tcp").matches(dns), Filter.compile("").matches(b"")
(True, False, True)
>>> Filter.compile("tcp port http or")
Traceback (most recent call last):
ValueError: can't parse filter expression: syntax error
"""

from __future__ import annotations

from collections.abc import Iterable

try:
    from apps.capture._bpf import ffi as _ffi
    from apps.capture._bpf import lib as _lib
except ImportError:  # pragma: no cover - only without the C build (make install)
    _ffi = _lib = None

SNAPLEN = 262144  # what tcpdump uses; a matching program returns it (non-zero)


class Filter:
    """One compiled pcap-filter expression (`expr`, as given). `matches(frame)` says
    whether a frame (bytes, bytearray or memoryview, from its Ethernet header on) passes;
    calling the filter does the same."""

    __slots__ = ("expr", "_prog", "_insns", "matches", "__weakref__")

    def __init__(self, expr: str, prog) -> None:
        self.expr = expr
        self._prog = prog  # struct bpf_program * (freed by pcap_freecode), None: everything
        self._insns = None if prog is None else prog.bf_insns
        # per instance, every name it needs bound: the call costs one C call (~0.2 µs)
        # and, for a memoryview, one cffi from_buffer (no copy)
        self.matches = _match_all if prog is None else _matcher(self._insns, prog)

    @classmethod
    def compile(cls, expr: str | None) -> Filter:
        """Compile `expr` for Ethernet frames. An empty (or blank) expression, or None,
        matches every frame. ValueError with libpcap's message for a bad one."""
        expr = expr or ""
        if not isinstance(expr, str):
            raise TypeError(f"a filter expression is a string, not {type(expr).__name__}")
        if not expr.strip():
            return cls(expr, None)
        if _lib is None:  # pragma: no cover
            raise RuntimeError("the libpcap binding apps.capture._bpf is not built "
                               "(`make install`, with libpcap-dev installed)")
        handle = _lib.pcap_open_dead(_lib.DLT_EN10MB, SNAPLEN)
        if handle == _ffi.NULL:  # pragma: no cover
            raise MemoryError("pcap_open_dead failed")
        try:
            prog = _ffi.new("struct bpf_program *")
            if _lib.pcap_compile(handle, prog, expr.encode(), 1,
                                 _lib.PCAP_NETMASK_UNKNOWN) != 0:
                raise ValueError(_ffi.string(_lib.pcap_geterr(handle)).decode(
                    errors="replace"))
        finally:
            _lib.pcap_close(handle)
        return cls(expr, _ffi.gc(prog, _lib.pcap_freecode))

    @property
    def everything(self) -> bool:
        """True for the empty expression (no program: every frame matches)."""
        return self._prog is None

    @property
    def instructions(self) -> int:
        """The length of the BPF program (0 for the empty expression)."""
        return 0 if self._prog is None else self._prog.bf_len

    def __call__(self, frame: bytes | bytearray | memoryview) -> bool:
        """`matches(frame)`: whether the frame (from its Ethernet header on) passes."""
        return self.matches(frame)

    def __repr__(self) -> str:
        return f"Filter.compile({self.expr!r})"


def _match_all(frame: bytes | bytearray | memoryview) -> bool:
    return True


def _matcher(insns, prog):
    """`Filter.matches` for a program: it keeps `prog` (the owner of `insns`) alive, so
    the bound method alone may outlive its Filter (as FaultInjector's `match`)."""
    def matches(frame: bytes | bytearray | memoryview, _match=_lib.vbpf_match,
                _from_buffer=_ffi.from_buffer, _bytes=bytes, _len=len, _prog=prog) -> bool:
        """Whether the frame (from its Ethernet header on) passes the filter."""
        if type(frame) is not _bytes:
            frame = _from_buffer(frame)
        return _match(insns, frame, _len(frame)) != 0

    return matches


class Selector:
    """Filters as one C batch predicate: a frame is selected when any of them matches it.
    `c_fn`/`c_ctx` are the addresses vhostuser's `set_frame_hook` takes (a
    `vu_select_fn` and its first argument); the object keeps the programs alive."""

    __slots__ = ("filters", "c_fn", "c_ctx", "_set", "_progs")

    def __init__(self, filters: Iterable[Filter]) -> None:
        self.filters = tuple(filters)
        if not self.filters or any(f.everything for f in self.filters):
            raise ValueError("a Selector needs filters that are not empty (an empty one "
                             "selects every frame: no selector is needed)")
        if _lib is None:  # pragma: no cover
            raise RuntimeError("the libpcap binding apps.capture._bpf is not built")
        self._progs = _ffi.new("const struct bpf_insn *[]", [f._insns for f in self.filters])
        self._set = _ffi.new("struct vbpf_set *", {"n": len(self.filters),
                                                   "progs": self._progs})
        self.c_fn = int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, "vbpf_select")))
        self.c_ctx = int(_ffi.cast("uintptr_t", self._set))

    def select(self, frames: list[bytes]) -> list[bool]:
        """Run the C predicate over `frames` (for tests): one flag per frame."""
        n = len(frames)
        keep = [_ffi.from_buffer(f) for f in frames]
        ptrs = _ffi.new("uint8_t *[]", [_ffi.cast("uint8_t *", k) for k in keep] or 1)
        lens = _ffi.new("uint32_t[]", [len(f) for f in frames] or 1)
        out = _ffi.new("uint8_t[]", max(1, n))
        _lib.vbpf_select(self._set, ptrs, lens, n, out)
        return [bool(out[i]) for i in range(n)]

    def __repr__(self) -> str:
        return f"Selector({list(self.filters)!r})"
