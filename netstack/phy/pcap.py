"""Packet capture: write frames as classic pcap (or pcapng), streaming, flushed per frame.

- `PcapSink(file_or_path, *, snaplen=65535, start=None, format=None)`: a capture file;
  `write(frame, now, direction)` appends one record and flushes, so a reader on a FIFO
  (`tcpdump -r -`, `tshark -r -`, `scapy.utils.PcapReader`) sees it at once.
- `PcapWriter(device, file_or_path, ...)`: a device wrapping `device`; every frame received
  and transmitted goes to a `PcapSink`.

Classic pcap: magic 0xa1b2c3d4, version 2.4, microsecond timestamps, LINKTYPE_ETHERNET (1).
pcapng (chosen when the path ends in `.pcapng`, or with `format="pcapng"`): one section, one
Ethernet interface, Enhanced Packet Blocks with the `epb_flags` direction (inbound = RX,
outbound = TX), microsecond timestamps.

Timestamps: the stack's `now` is monotonic, a capture wants dates. The first frame is stamped
`start` (wall-clock seconds; default: `time.time()` when the sink is opened) and every later
frame `start + (now - first_now)`. Passing `start` makes the output deterministic.

Opening a FIFO for writing blocks until a reader opens it (POSIX); start the reader first or
open the sink from a thread. The sink closes only files it opened itself. The path "-" means
standard output (`sys.stdout.buffer`, left open): `vhostnet serve --pcap - | tshark -r -`.

Rotation (`rotate=SIZE` bytes, a path only; `parse_size("100M")` reads CLI sizes): when the
next record would push the current file past SIZE, it is closed and the capture goes on in
FILE.1, then FILE.2, ...; every piece starts with its own header, so each is a valid capture
on its own and the pieces in order hold every frame in order. A piece always takes at least
one frame (a frame bigger than SIZE gets a piece of its own). `files` lists the pieces.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import time
from typing import BinaryIO

from . import Device, Direction
from .tracer import Tracer

PCAP_MAGIC = 0xA1B2C3D4
PCAP_VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 65535

_PCAP_HEADER = struct.Struct("<IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, net
_PCAP_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len

# pcapng block types and options
_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_ENDOFOPT = 0
_OPT_COMMENT = 1
_OPT_EPB_FLAGS = 2
_EPB_INBOUND = 0b01
_EPB_OUTBOUND = 0b10


def _pad4(n: int) -> int:
    return (-n) & 3


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes in `text`: a number with an optional k/M/G suffix (powers of 1024), e.g. 10k,
    100M, 1G, 4096; an optional trailing "B"/"iB" is accepted. Raises ValueError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (e.g. 10k, 100M, 1G)")
    n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return n


def _pcapng_block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapSink:
    """A capture file: `write(frame, now, direction)` appends one frame and flushes."""

    def __init__(
        self,
        file_or_path: BinaryIO | str | os.PathLike[str],
        *,
        snaplen: int = DEFAULT_SNAPLEN,
        start: float | None = None,
        format: str | None = None,
        flush: bool = True,
        rotate: int | None = None,
        comment: str | None = None,
    ) -> None:
        if not 0 < snaplen <= 0x3FFFFFFF:
            raise ValueError(f"snaplen must be in 1..0x3fffffff, got {snaplen}")
        if rotate is not None and rotate <= 0:
            raise ValueError(f"rotate must be a positive size in bytes, got {rotate}")
        self.path: str | None = None
        self.files: list[str] = []
        if isinstance(file_or_path, (str, os.PathLike)) and os.fspath(file_or_path) != "-":
            path = os.fspath(file_or_path)
            if format is None:
                format = "pcapng" if path.endswith(".pcapng") else "pcap"
            self._file: BinaryIO = open(path, "wb")  # closed in close()
            self._owned = True
            self.path = path
            self.files.append(path)
        else:
            if rotate is not None:
                raise ValueError("rotate needs a file path (not standard output or a stream)")
            self._file = sys.stdout.buffer if file_or_path == "-" else file_or_path
            self._owned = False
        format = format or "pcap"
        if format not in ("pcap", "pcapng"):
            raise ValueError(f"format must be 'pcap' or 'pcapng', got {format!r}")
        self.format = format
        self.snaplen = snaplen
        self.comment = comment  # pcapng: the section's opt_comment (what was captured)
        self.frames = 0
        self._flush_each = flush
        self._start = time.time() if start is None else start
        self._first_now: float | None = None
        self._closed = False
        self.rotate = rotate
        self._piece_bytes = 0  # bytes in the current piece
        self._piece_frames = 0
        self._write_header()

    def _write_header(self) -> None:
        header = self._header()
        self._file.write(header)
        self._file.flush()
        self._piece_bytes = len(header)
        self._piece_frames = 0

    def _next_piece(self) -> None:
        """Close the current piece and go on in FILE.N (N = 1, 2, ...)."""
        assert self.path is not None
        self._file.close()
        path = f"{self.path}.{len(self.files)}"
        self._file = open(path, "wb")  # closed in close() or the next rotation
        self.files.append(path)
        self._write_header()

    def _header(self) -> bytes:
        if self.format == "pcap":
            return _PCAP_HEADER.pack(
                PCAP_MAGIC, *PCAP_VERSION, 0, 0, self.snaplen, LINKTYPE_ETHERNET
            )
        # Section Header Block: byte-order magic, version 1.0, section length unknown (-1).
        options = b""
        if self.comment:
            text = self.comment.encode()
            options = (struct.pack("<HH", _OPT_COMMENT, len(text)) + text
                       + bytes(_pad4(len(text))) + struct.pack("<HH", _OPT_ENDOFOPT, 0))
        shb = _pcapng_block(_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)
                            + options)
        # Interface Description Block: linktype, reserved, snaplen; default tsresol is 10^-6.
        idb = _pcapng_block(_IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, self.snaplen))
        return shb + idb

    def _timestamp_us(self, now: float) -> int:
        if self._first_now is None:
            self._first_now = now
        return max(0, round((self._start + (now - self._first_now)) * 1_000_000))

    def write(
        self,
        frame: bytes | bytearray | memoryview,
        now: float,
        direction: Direction | str | None = None,
        orig_len: int | None = None,
    ) -> None:
        """Append `frame` seen at `now`; `direction` ("rx"/"tx") is kept in pcapng only.
        `orig_len`: the frame's length on the wire when `frame` is a cut of it (a capture
        taken with a snaplen elsewhere); default `len(frame)`."""
        if self._closed:
            raise ValueError("write to a closed PcapSink")
        frame = memoryview(frame).cast("B")
        orig_len = len(frame) if orig_len is None else max(orig_len, len(frame))
        data = frame[: self.snaplen]
        ts = self._timestamp_us(now)
        if self.format == "pcap":
            sec, usec = divmod(ts, 1_000_000)
            record = _PCAP_RECORD.pack(sec & 0xFFFFFFFF, usec, len(data), orig_len) + data
        else:
            record = self._epb(data, orig_len, ts, direction)
        if (
            self.rotate is not None
            and self._piece_frames
            and self._piece_bytes + len(record) > self.rotate
        ):
            self._next_piece()
        self._file.write(record)
        self._piece_bytes += len(record)
        self._piece_frames += 1
        self.frames += 1
        if self._flush_each:
            self._file.flush()

    def _epb(
        self, data: memoryview, orig_len: int, ts: int, direction: Direction | str | None
    ) -> bytes:
        options = b""
        if direction is not None:
            flags = _EPB_INBOUND if Direction(direction) is Direction.RX else _EPB_OUTBOUND
            options = struct.pack("<HHI", _OPT_EPB_FLAGS, 4, flags) + struct.pack(
                "<HH", _OPT_ENDOFOPT, 0
            )
        body = b"".join(
            (
                struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), orig_len),
                bytes(data),
                b"\0" * _pad4(len(data)),
                options,
            )
        )
        return _pcapng_block(_EPB, body)

    def flush(self) -> None:
        if not self._closed:
            self._file.flush()

    def close(self) -> None:
        """Flush; close the file if the sink opened it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.flush()
        finally:
            if self._owned:
                self._file.close()

    def __enter__(self) -> PcapSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PcapWriter(Tracer):
    """A device wrapping `inner` that records every received and transmitted frame.

    `close()` closes the capture only; the inner device stays open.
    """

    def __init__(
        self,
        inner: Device,
        file_or_path: BinaryIO | str | os.PathLike[str],
        *,
        snaplen: int = DEFAULT_SNAPLEN,
        start: float | None = None,
        format: str | None = None,
        flush: bool = True,
        rotate: int | None = None,
    ) -> None:
        self.sink = PcapSink(file_or_path, snaplen=snaplen, start=start, format=format,
                             flush=flush, rotate=rotate)
        sink = self.sink
        super().__init__(inner, lambda direction, frame, now: sink.write(frame, now, direction))

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
