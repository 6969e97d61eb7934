"""A read-only TFTP server for network boot (RFC 1350; options RFC 2347, blksize RFC 2348,
timeout and tsize RFC 2349, windowsize RFC 7440): the sans-I/O `TftpServer` engine, and
`TftpServerSocket`, which runs it inside our stack on UDP port 69.

The engine never touches a socket or a clock. The caller hands it each datagram that arrived
on port 69 or on a session port, `handle(now, local, client, data)`, and sends the
`Datagram`s it returns; `poll_at()` says when the next retransmission falls due and
`on_timer(now)` performs it (and ends the sessions that ran out of tries). It does read
files, block by block with `os.pread`: a file is the one thing a TFTP server must touch.

Theory of operation
-------------------

A transfer is a session, keyed by the server port it runs on (its TID, RFC 1350 §4; the
caller says which ports are free through `port_in_use`, and the engine picks one at random in
49152-65535) and by the client endpoint. Every datagram the session sends comes from
(the address the RRQ was sent to, its port), so a client that pins the server by address and
port (all of them do) gets everything from one place.

Blocks are counted with absolute indices 1, 2, 3... inside the engine; the wire carries the
index modulo 65536, so block numbers roll over from 65535 to 0 (files past 32 MiB at
512-byte blocks), as tftp-hpa's server does and as curl, tftp-hpa, atftp and busybox
expect (tests/netns/test_tftp.py). Block 0 is the OACK when options were
accepted. A session holds a window `[base, next)`: `base` is the first block not yet
acknowledged, `next` the first not yet sent. Sending fills the window up to
`base + windowsize` blocks (only block 0 while the OACK is outstanding: RFC 2347 wants its
ACK before any data), never past the last block. The last block is the first one shorter
than the block size, so a file whose size is a multiple of it ends with an empty block and
an empty file is one empty DATA.

An ACK names a wire block number `b`. It is in the window when some sent, unacknowledged
index `a` in `[base, next)` has `a % 65536 == b` (a window is shorter than 32768 blocks,
so there is at most one). Then `base` becomes `a + 1`, and the window restarts there: blocks after
`a` that were in flight are sent again (RFC 7440 §4: the receiver acknowledges the last
block it got in order, and the sender starts the next window after it). An ACK for `a` =
the last block ends the session. Any other ACK (a duplicate of one already taken, a block
never sent) is ignored: answering a duplicate ACK with data is the Sorcerer's Apprentice
syndrome (RFC 1123 §4.2.3.1), which doubles the traffic for every duplicate ever made.

Retransmission is on the timer alone: `timeout` seconds (the negotiated RFC 2349 value, else
`config.timeout`) after a window went out with no ACK moving it, the window is sent again
from `base`. No backoff: RFC 2349 makes the timeout the client's choice. After
`config.retries` retransmissions of one window the session ends in silence (no ERROR: the
peer stopped answering, and RFC 1350 §7 has each side detect a dead transfer by its own
timeout anyway).

Every batch of datagrams the engine returns for one (local, client) pair supersedes any it
returned for that pair before that the caller has not sent yet: a session's batch always
starts at `base` (or after everything acknowledged), so the caller may keep one bounded queue
per pair and replace it (TftpServerSocket does).

Requests (to port 69):

- WRQ: ERROR 2 "read-only server".
- Modes `octet` and `netascii`; any other (`mail` included) is ERROR 4.
- Options (RFC 2347; unknown ones ignored, out-of-range or non-numeric values ignored, which
  RFC 2347 allows a server): `blksize` 8..65464, answered with the smaller of the request and
  what the link carries without fragments (the `max_blksize` of the call, capped by
  `config.max_blksize`; RFC 2348 lets the server answer smaller); `timeout` 1..255 s, echoed
  and used; `tsize` answered with the file size (octet only: the netascii size would need a
  pass over the whole file, and RFC 2349 lets the server leave tsize out; and never for an
  empty file, because curl (7.88) takes "tsize 0" in an OACK for an illegal answer and
  fails the download, while the one empty DATA block says the size anyway); `windowsize`
  1..65535, answered with at most `config.max_windowsize`. With any option accepted the
  session opens with an OACK in the client's option order; without, with DATA 1.
- A client that answers the OACK with ERROR (8 or any other) ends the session.
- A second RRQ from the client endpoint of a live session: the same request, before the
  client acknowledged anything, is the client retransmitting its RRQ (our reply was lost or
  slow) and is ignored, the session's timer resends; otherwise the client started over (a
  reboot reusing its port, another file) and the new session replaces the old one.
- Beyond `config.max_sessions` live sessions a request gets ERROR 0 "too many sessions".
- Refusals come from a fresh random port, as from a forked tftpd: the reply is the first
  packet of a would-be transfer (RFC 1350 §4), and port 69 keeps taking requests only.

Paths: the file name's bytes (latin-1, see netstack.wire.tftp) name a path below `root`.
Empty and "." components are dropped (so "/x" from iPXE, "x" and "//x" all name root/x);
any ".." component, or a backslash (a Windows separator that would mean something else
here), is ERROR 2. Symbolic links are followed when they lead to a place inside the root
(`os.path.realpath`, checked against the resolved root) and refused with ERROR 2 when they
lead out; the resolved path is then opened one component at a time from a descriptor of the
root with O_NOFOLLOW, so a link swapped in between the check and the open fails instead of
escaping. Missing → ERROR 1; a directory, device or FIFO (opened O_NONBLOCK, so a FIFO
cannot block us) → ERROR 2. A file is opened when its RRQ arrives, read with `os.pread` one
block at a time, and closed when the session ends, however it ends. Files are assumed not
to change during a transfer: the size is taken at open, and a short read ends the transfer.

Files the operator names (`files`: the boot files of `vhostnet serve --boot-kernel`, a path
or bytes we made) are served under those names, ahead of the root's own (a leading "/" is
dropped); they are not confined to the root, the guest cannot name any other, and bytes are
read through a memfd like any file. `root` may then be None: those files alone.

Netascii (RFC 1350 §5, RFC 764): LF goes out as CR LF and CR as CR NUL, converted while
reading. A block boundary may fall between the two bytes of one expansion; the session keeps,
for each block of the window, where in the file it starts and the byte carried over from the
previous block, so any block of the window can be built again for a retransmission.

Malformed datagrams are dropped and counted; a datagram to a session's port from any other
endpoint gets ERROR 5 (unknown transfer ID) and does not touch the session (an ERROR from a
stranger gets nothing: errors are never answered, or two servers could volley forever).
`stats` counts everything else.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import stat
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from netstack.socket.addr import ANY6, IpAddress, overlaps, parse_addr
from netstack.socket.errors import AddrInUse, Unaddressable
from netstack.socket.set import Socket, SocketSet
from netstack.socket.udp import EPHEMERAL_FIRST, EPHEMERAL_LAST
from netstack.wire import Error as WireError
from netstack.wire import tftp
from netstack.wire.ipv4 import IpProtocol
from netstack.wire.tftp import (
    AckRepr,
    ErrorCode,
    ErrorRepr,
    Mode,
    OackRepr,
    Opcode,
    RequestRepr,
)
from netstack.wire.udp import HEADER_LEN as UDP_HEADER_LEN
from netstack.wire.udp import UdpPacket, UdpRepr

log = logging.getLogger(__name__)

Endpoint = tuple[IpAddress, int]

_DATA_HEADER = struct.Struct("!HH")
_NUMBER = re.compile(r"[0-9]{1,10}")  # an option value; 10 digits cap int() at 2**34
_UDP = int(IpProtocol.UDP)
IPV4_OVERHEAD = 20 + UDP_HEADER_LEN + tftp.HEADER_LEN  # IPv4 header without options
IPV6_OVERHEAD = 40 + UDP_HEADER_LEN + tftp.HEADER_LEN
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Datagram(NamedTuple):
    """One UDP payload to send from `src` (our address and port) to `dst`."""

    src: Endpoint
    dst: Endpoint
    data: bytes


@dataclass(frozen=True, slots=True)
class TftpServerConfig:
    """Limits and defaults. `max_blksize` caps the block size whatever the link allows
    (1468: an Ethernet frame's worth over IPv4); `timeout` is the retransmission timeout
    when the client does not negotiate one; after `retries` retransmissions of one window a
    session ends."""

    max_blksize: int = 1500 - IPV4_OVERHEAD
    max_windowsize: int = 64
    timeout: float = 1.0
    retries: int = 5
    max_sessions: int = 64

    def __post_init__(self) -> None:
        if not tftp.MIN_BLKSIZE <= self.max_blksize <= tftp.MAX_BLKSIZE:
            raise ValueError(f"max_blksize {self.max_blksize} is not in 8..65464")
        if not 1 <= self.max_windowsize <= tftp.MAX_WINDOWSIZE:
            raise ValueError(f"max_windowsize {self.max_windowsize} is not in 1..65535")
        if self.max_windowsize >= 0x8000:
            raise ValueError("max_windowsize must stay below half the block number space")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.retries < 0:
            raise ValueError("retries must not be negative")
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")


@dataclass(slots=True)
class TftpStats:
    sessions_started: int = 0
    sessions_completed: int = 0  # the last block acknowledged
    sessions_timed_out: int = 0
    sessions_aborted: int = 0  # the client sent an ERROR (a refused OACK included)
    sessions_replaced: int = 0  # a new RRQ from the same client endpoint
    refused: Counter[str] = field(default_factory=Counter)  # requests refused, by reason
    malformed: int = 0  # datagrams that did not parse
    unexpected: int = 0  # well-formed but meaningless where they came (ACK to port 69...)
    unknown_tid: int = 0  # datagrams to a session port from another endpoint
    duplicate_requests: int = 0  # RRQs retransmitted by a client (ignored)
    acks_ignored: int = 0  # duplicate, old or never-sent blocks
    bytes_sent: int = 0  # DATA payload handed out, retransmissions included
    retransmits: int = 0  # packets sent again (timer or a mid-window ACK)


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


def _number(value: str | None) -> int | None:
    if value is None or _NUMBER.fullmatch(value) is None:
        return None
    return int(value)


def _netascii(data: bytes) -> bytes:
    # CR first: the CRs that LF → CR LF adds must not become CR NUL
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def _show(ep: Endpoint) -> str:
    addr, port = ep
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


class _Session:
    """One transfer: the file, the negotiated parameters and the window (see the module
    docstring). `marks` (netascii only) maps a block index to (file offset, carried byte)."""

    __slots__ = ("local", "client", "request", "fd", "size", "blksize", "windowsize",
                 "timeout", "netascii", "oack", "base", "next", "last", "deadline", "tries",
                 "high", "progressed", "marks", "started", "sent")

    def __init__(self, local: Endpoint, client: Endpoint, request: RequestRepr, fd: int,
                 size: int, blksize: int, windowsize: int, timeout: float,
                 oack: bytes | None, now: float) -> None:
        self.local, self.client, self.request = local, client, request
        self.fd, self.size = fd, size
        self.blksize, self.windowsize, self.timeout = blksize, windowsize, timeout
        self.netascii = request.mode == Mode.NETASCII
        self.oack = oack
        self.base = self.next = 0 if oack is not None else 1
        self.high = self.next  # one past the highest block ever sent
        # octet: known from the size (a short read lowers it); netascii: found on the way
        self.last: int | None = None if self.netascii else size // blksize + 1
        self.marks: dict[int, tuple[int, bytes]] = {1: (0, b"")}
        self.deadline = now + timeout
        self.tries = 0
        self.progressed = False  # an ACK moved the window
        self.started = now
        self.sent = 0  # file bytes acknowledged so far (for the log)

    def block(self, index: int) -> bytes:
        """The data of block `index` (1-based); a short one is the last."""
        bs = self.blksize
        if not self.netascii:
            offset = (index - 1) * bs
            data = os.pread(self.fd, max(0, min(bs, self.size - offset)), offset)
            if len(data) < bs and (self.last is None or index < self.last):
                self.last = index
            return data
        offset, carry = self.marks[index]
        room = bs - len(carry)
        src = os.pread(self.fd, max(0, min(room, self.size - offset)), offset)
        # the most source bytes whose expansion fits in `room`: each byte gives 1 or 2
        lo, hi = 0, len(src)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if mid + src.count(b"\r", 0, mid) + src.count(b"\n", 0, mid) <= room:
                lo = mid
            else:
                hi = mid - 1
        out = carry + _netascii(src[:lo])
        if len(out) == bs:
            self.marks[index + 1] = (offset + lo, b"")
        elif lo < len(src):  # one byte short, and the next byte expands to two: split it
            pair = _netascii(src[lo : lo + 1])
            out += pair[:1]
            self.marks[index + 1] = (offset + lo + 1, pair[1:])
        else:
            self.last = index
        return out

    def packet(self, index: int) -> tuple[bytes, int]:
        """(the wire packet for block `index`, its data length): the OACK for block 0."""
        if index == 0:
            return self.oack, 0
        data = self.block(index)
        return _DATA_HEADER.pack(Opcode.DATA, index & 0xFFFF) + data, len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TftpServer:
    """The engine (see the module docstring). `root`: the directory served, read-only.
    `port_in_use(port)`: whether a port is taken by someone else (the socket set's other
    UDP sockets); the engine itself avoids its live sessions' ports. `rng`: for the session
    ports, seedable for tests.

    >>> import os, tempfile
    >>> from ipaddress import ip_address
    >>> from netstack.wire.tftp import AckRepr, Opcode, RequestRepr, parse
    >>> with tempfile.TemporaryDirectory() as root:
    ...     with open(os.path.join(root, "hello.txt"), "wb") as f:
    ...         _ = f.write(b"hi")
    ...     server = TftpServer(root)
    ...     client = (ip_address("10.0.2.15"), 1024)
    ...     out = server.handle(0.0, (ip_address("10.0.2.2"), 69), client,
    ...                         RequestRepr(Opcode.RRQ, "/hello.txt").to_bytes())
    ...     print(parse(out[0].data), out[0].src[1] != 69, server.poll_at())
    ...     print(server.handle(0.1, out[0].src, client, AckRepr(1).to_bytes()),
    ...           server.sessions)
    DataRepr(block=1, data=b'hi') True 1.0
    [] 0
    """

    def __init__(self, root: str | os.PathLike | None, config: TftpServerConfig | None = None,
                 *, files: Mapping[str, os.PathLike | bytes] | None = None,
                 port_in_use: Callable[[int], bool] | None = None,
                 rng: random.Random | None = None) -> None:
        real = None
        if root is not None:
            real = os.path.realpath(os.fsencode(root))
            if not os.path.isdir(real):
                raise ValueError(f"TFTP root {root!r} is not a directory")
        elif not files:
            raise ValueError("a TFTP server needs a root directory or files to serve")
        self.root = real  # resolved, as bytes; None: only `files`
        # files the operator named (the boot files: a path, or bytes we made), served at
        # the root under these names ahead of the directory's own
        self.files = {name.encode("latin-1"): src for name, src in (files or {}).items()}
        self.config = config if config is not None else TftpServerConfig()
        self.port_in_use = port_in_use
        self.rng = rng if rng is not None else random.Random()
        self.stats = TftpStats()
        self._by_port: dict[int, _Session] = {}
        self._by_client: dict[Endpoint, _Session] = {}

    # -- the caller's interface -----------------------------------------------------------
    @property
    def sessions(self) -> int:
        """How many transfers are live."""
        return len(self._by_port)

    def has_port(self, port: int) -> bool:
        """Is `port` a live session's? (Datagrams to it belong to the engine.)"""
        return port in self._by_port

    def session_local(self, port: int) -> Endpoint | None:
        s = self._by_port.get(port)
        return s.local if s is not None else None

    def handle(self, now: float, local: Endpoint, client: Endpoint, data,
               max_blksize: int | None = None) -> list[Datagram]:
        """A datagram `data` from `client` arrived at `local` (port 69, or a session's
        port): what to send. `max_blksize` is the largest block the link carries unfragmented
        from `local` (the socket derives it from the MTU and the address family)."""
        try:
            msg = tftp.parse(data)
        except WireError as e:
            self.stats.malformed += 1
            log.debug("TFTP: malformed datagram from %s: %s", _show(client), e)
            return []
        session = self._by_port.get(local[1])
        if session is not None:
            return self._session_packet(now, session, client, msg)
        if isinstance(msg, RequestRepr):
            return self._request(now, local, client, msg, max_blksize)
        self.stats.unexpected += 1
        log.debug("TFTP: %s from %s to a port with no transfer", type(msg).__name__,
                  _show(client))
        return []

    def poll_at(self) -> float | None:
        """When `on_timer` next has work (a retransmission or a give-up), or None."""
        return min((s.deadline for s in self._by_port.values()), default=None)

    def on_timer(self, now: float) -> list[Datagram]:
        """Retransmit every window whose timeout passed; end the sessions out of tries."""
        out: list[Datagram] = []
        for s in [s for s in self._by_port.values() if s.deadline <= now]:
            s.tries += 1
            if s.tries > self.config.retries:
                self._end(now, s, "timed out")
                continue
            log.debug("TFTP %s: timeout, resending from block %d (try %d)",
                      _show(s.client), s.base, s.tries)
            s.next = s.base
            out += self._send(now, s)
        return out

    def close(self) -> None:
        """End every session (their files are closed)."""
        for s in list(self._by_port.values()):
            self._end(None, s, "server closed")

    # -- requests -------------------------------------------------------------------------
    def _request(self, now: float, local: Endpoint, client: Endpoint, req: RequestRepr,
                 max_blksize: int | None) -> list[Datagram]:
        cfg = self.config
        old = self._by_client.get(client)
        try:
            if req.opcode == Opcode.WRQ:
                raise _Refused(ErrorCode.ACCESS_VIOLATION, "read-only server", "write")
            if req.mode not in (Mode.OCTET, Mode.NETASCII):
                raise _Refused(ErrorCode.ILLEGAL_OPERATION,
                               f"transfer mode {req.mode!r} not supported", "mode")
            if old is not None:
                if old.request == req and not old.progressed:
                    self.stats.duplicate_requests += 1
                    log.debug("TFTP %s: RRQ again before any ACK, ignored", _show(client))
                    return []
                self.stats.sessions_replaced += 1
                self._end(now, old, "replaced by a new request")
            if len(self._by_port) >= cfg.max_sessions:
                raise _Refused(ErrorCode.NOT_DEFINED, "too many sessions", "too_many")
            port = self._free_port()
            if port is None:
                raise _Refused(ErrorCode.NOT_DEFINED, "no free port", "no_port")
            fd, size = self._open(req.filename)
        except _Refused as r:
            self.stats.refused[r.reason] += 1
            log.debug("TFTP %s %r from %s refused: %s", req.opcode.name, req.filename,
                      _show(client), r.message)
            src = (local[0], self._free_port() or local[1])
            return [Datagram(src, client, ErrorRepr(r.code, r.message).to_bytes())]

        # options (RFC 2347), answered in the client's order
        limit = min(cfg.max_blksize, max_blksize or cfg.max_blksize)
        limit = max(limit, tftp.MIN_BLKSIZE)
        blksize, windowsize, timeout = tftp.DEFAULT_BLKSIZE, 1, cfg.timeout
        accepted: list[tuple[str, str]] = []
        for name, value in req.options:
            n = _number(value)
            if n is None:
                continue
            if name == "blksize" and tftp.MIN_BLKSIZE <= n <= tftp.MAX_BLKSIZE:
                blksize = min(n, limit)
                accepted.append((name, str(blksize)))
            elif name == "timeout" and tftp.MIN_TIMEOUT <= n <= tftp.MAX_TIMEOUT:
                timeout = float(n)
                accepted.append((name, str(n)))
            elif name == "tsize" and req.mode == Mode.OCTET and size > 0:
                accepted.append((name, str(size)))
            elif name == "windowsize" and tftp.MIN_WINDOWSIZE <= n <= tftp.MAX_WINDOWSIZE:
                windowsize = min(n, cfg.max_windowsize)
                accepted.append((name, str(windowsize)))
        oack = OackRepr(tuple(accepted)).to_bytes() if accepted else None
        s = _Session((local[0], port), client, req, fd, size, blksize, windowsize, timeout,
                     oack, now)
        self._by_port[port] = s
        self._by_client[client] = s
        self.stats.sessions_started += 1
        log.info("TFTP %r (%s) to %s from port %d: %d bytes, blksize %d, windowsize %d%s",
                 req.filename, req.mode, _show(client), port, size, blksize, windowsize,
                 f", options {dict(accepted)}" if accepted else "")
        return self._send(now, s)

    def _free_port(self) -> int | None:
        span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
        start = self.rng.randrange(span)
        taken = self.port_in_use
        for i in range(span):
            port = EPHEMERAL_FIRST + (start + i) % span
            if port not in self._by_port and (taken is None or not taken(port)):
                return port
        return None

    def _open_named(self, source: os.PathLike | bytes) -> tuple[int, int]:
        """(fd, size) of one of the operator's `files`: bytes go through a memfd, so every
        session reads by fd alike."""
        try:
            if isinstance(source, bytes):
                fd = os.memfd_create("tftp", os.MFD_CLOEXEC)
                os.write(fd, source)
            else:
                fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            raise _Refused(ErrorCode.FILE_NOT_FOUND, "file not found", "not_found") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise _Refused(ErrorCode.ACCESS_VIOLATION, "not a regular file", "not_file")
        return fd, st.st_size

    def _open(self, filename: str) -> tuple[int, int]:
        """(fd, size) of the regular file `filename` names below the root; `_Refused`."""
        name = filename.encode("latin-1")
        named = self.files.get(name.lstrip(b"/"))
        if named is not None:
            return self._open_named(named)
        if self.root is None:
            raise _Refused(ErrorCode.FILE_NOT_FOUND, "file not found", "not_found")
        if b"\\" in name:
            raise _Refused(ErrorCode.ACCESS_VIOLATION, "access violation", "path")
        parts = [p for p in name.split(b"/") if p not in (b"", b".")]
        if b".." in parts:
            raise _Refused(ErrorCode.ACCESS_VIOLATION, "access violation", "path")
        root = self.root
        prefix = root if root.endswith(b"/") else root + b"/"
        real = os.path.realpath(os.path.join(root, *parts))
        if not real.startswith(prefix):
            if real == root:
                raise _Refused(ErrorCode.ACCESS_VIOLATION, "not a regular file", "not_file")
            raise _Refused(ErrorCode.ACCESS_VIOLATION, "access violation", "outside_root")
        comps = real[len(prefix):].split(b"/")
        fd = -1
        try:
            dfd = os.open(root, _O_DIR)
            try:
                for comp in comps[:-1]:
                    nfd = os.open(comp, _O_DIR, dir_fd=dfd)
                    os.close(dfd)
                    dfd = nfd
                fd = os.open(comps[-1], _O_FILE, dir_fd=dfd)
            finally:
                os.close(dfd)
            st = os.fstat(fd)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                raise _Refused(ErrorCode.FILE_NOT_FOUND, "file not found",
                               "not_found") from None
            raise _Refused(ErrorCode.ACCESS_VIOLATION, "access violation", "access") from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise _Refused(ErrorCode.ACCESS_VIOLATION, "not a regular file", "not_file")
        return fd, st.st_size

    # -- sessions -------------------------------------------------------------------------
    def _session_packet(self, now: float, s: _Session, client: Endpoint, msg
                        ) -> list[Datagram]:
        if client != s.client:
            self.stats.unknown_tid += 1
            log.debug("TFTP: %s from %s to the port of %s's transfer", type(msg).__name__,
                      _show(client), _show(s.client))
            if isinstance(msg, ErrorRepr):
                return []
            error = ErrorRepr(ErrorCode.UNKNOWN_TID, "unknown transfer ID").to_bytes()
            return [Datagram(s.local, client, error)]
        if isinstance(msg, ErrorRepr):
            self.stats.sessions_aborted += 1
            self._end(now, s, f"client error {int(msg.code)} {msg.message!r}")
            return []
        if not isinstance(msg, AckRepr):
            self.stats.unexpected += 1
            log.debug("TFTP %s: unexpected %s, ignored", _show(client), type(msg).__name__)
            return []
        # the one index in [base, next) with this wire number, if any (see the docstring)
        a = s.base + ((msg.block - s.base) & 0xFFFF)
        if a >= s.next:
            self.stats.acks_ignored += 1
            log.debug("TFTP %s: ACK %d outside the window [%d, %d), ignored",
                      _show(client), msg.block, s.base, s.next)
            return []
        if a == s.last:
            s.sent = s.size
            self.stats.sessions_completed += 1
            self._end(now, s, "done")
            return []
        if s.netascii:
            for i in range(s.base, a + 1):
                s.marks.pop(i, None)
        s.base = a + 1
        s.next = s.base  # go-back-N: anything after `a` went astray
        s.tries = 0
        s.progressed = True
        s.sent = min(s.size, a * s.blksize)
        return self._send(now, s)

    def _send(self, now: float, s: _Session) -> list[Datagram]:
        """Fill the window from `s.next`; resets the timer."""
        limit = s.base + (1 if s.base == 0 else s.windowsize)
        out = []
        stats = self.stats
        while s.next < limit and (s.last is None or s.next <= s.last):
            packet, n = s.packet(s.next)
            out.append(Datagram(s.local, s.client, packet))
            stats.bytes_sent += n
            if s.next < s.high:
                stats.retransmits += 1
            s.next += 1
        if s.next > s.high:
            s.high = s.next
        s.deadline = now + s.timeout
        return out

    def _end(self, now: float | None, s: _Session, why: str) -> None:
        s.close()
        port = s.local[1]
        if self._by_port.get(port) is s:
            del self._by_port[port]
        if self._by_client.get(s.client) is s:
            del self._by_client[s.client]
        if why == "timed out":
            self.stats.sessions_timed_out += 1
        took = "" if now is None else f" in {now - s.started:.3f} s"
        log.info("TFTP %r to %s: %s after %d of %d bytes%s", s.request.filename,
                 _show(s.client), why, s.sent, s.size, took)


class TftpServerSocket(Socket):
    """A `TftpServer` on UDP port 69 of `addresses` (IPv4 and/or IPv6, each a specific
    address of ours: a reply must come from the address its request went to, which a
    socket bound to "any" could not tell from a broadcast), taking the datagrams of every
    live session's port too.

    The interface offers each UDP datagram to the sockets of kind "udp" in turn; `accepts`
    claims port 69 on our addresses and each live session's port on the address its request
    went to. What the engine answers waits for `dispatch` in one queue per (local, client)
    pair, each new batch for a pair replacing what is still queued for it (the engine's
    contract, see its docstring), so a session never has more than a window queued, and a
    datagram `emit` could not take (device full) stays at the head of its queue for the next
    dispatch. Pairs take turns, one datagram each. `max_queued` bounds the total (a flood of
    requests, each answered by an ERROR, cannot grow it either), past which datagrams are
    dropped and counted in `tx_dropped` (TFTP's retransmission recovers them). `mtu` is the
    link's IP MTU: the largest block offered is what fits in one datagram of it
    (MTU − IP header − UDP header − 4: 1468 over IPv4, 1448 over IPv6 at 1500).

    Session ports avoid the ports of the other UDP sockets of the set. A UdpSocket bound
    later to an ephemeral port cannot see a live session's port, so it may get one, but the
    demux asks us first when we were added first; sessions are short.
    """

    __slots__ = ("server", "addresses", "port", "mtu", "max_queued", "ttl", "tx_dropped",
                 "_queue", "_queued", "_listening", "_port", "_addr", "v6only")
    KIND = "udp"

    def __init__(self, server: TftpServer, addresses: Iterable, *, port: int = tftp.PORT,
                 mtu: int = 1500, max_queued: int | None = None) -> None:
        super().__init__()
        addrs = frozenset(parse_addr(a) for a in addresses)
        if not addrs:
            raise Unaddressable("a TFTP server needs at least one address")
        for a in addrs:
            if a.is_unspecified or a.is_multicast or (a.version == 6 and a.ipv4_mapped):
                raise Unaddressable(f"a TFTP server cannot listen on {a}")
        self.server = server
        self.addresses = addrs
        self.port = port
        self.mtu = mtu
        cfg = server.config
        self.max_queued = max_queued if max_queued is not None else \
            cfg.max_sessions * (cfg.max_windowsize + 1) + 256
        self.ttl = 64
        self.tx_dropped = 0
        self._queue: dict[tuple[Endpoint, Endpoint], deque[bytes]] = {}
        self._queued = 0
        self._listening = True
        # what UdpSocket's clash check reads of every UDP socket in the set: port 69 held on
        # every address, so no UdpSocket binds it beside us
        self._port, self._addr, self.v6only = port, ANY6, False
        server.port_in_use = self._port_taken

    @property
    def endpoint(self) -> Endpoint:
        """Port 69 on our first address (what tools listing UDP ports show)."""
        return (min(self.addresses, key=lambda a: (a.version, a)), self.port)

    @property
    def is_open(self) -> bool:
        return self._listening

    def close(self) -> None:
        """End every session and drop what is queued; the socket accepts nothing more."""
        self._listening = False
        self.server.close()
        self._queue.clear()
        self._queued = 0

    def _check_unique(self, sockets: SocketSet) -> None:
        for other in sockets.of_kind(self.KIND):
            if other is self or getattr(other, "_port", None) != self.port:
                continue
            for a in self.addresses:
                if overlaps(other._addr, getattr(other, "v6only", False), a, False):
                    raise AddrInUse(f"UDP port {self.port} is in use on {a}")

    def _port_taken(self, port: int) -> bool:
        if port == self.port:
            return True
        sockets = self._set
        if sockets is None:
            return False
        for other in sockets.of_kind(self.KIND):
            if other is self:
                continue
            ep = getattr(other, "endpoint", None)
            if ep is not None and ep[1] == port:
                return True
            has = getattr(other, "claims_port", None)
            if has is not None and has(port):
                return True
        return False

    def claims_port(self, port: int) -> bool:
        """Port 69 or a live session's port (for other TFTP sockets choosing theirs)."""
        return port == self.port or self.server.has_port(port)

    # -- the socket protocol ----------------------------------------------------------
    def accepts(self, ip_repr, udp_repr) -> bool:
        if not self._listening:
            return False
        port = udp_repr.dst_port
        if port == self.port:
            return ip_repr.dst_addr in self.addresses
        local = self.server.session_local(port)
        return local is not None and local[0] == ip_repr.dst_addr

    def process(self, now: float, ip_repr, udp_repr, payload: memoryview, src_hw=None) -> None:
        dst = ip_repr.dst_addr
        overhead = IPV6_OVERHEAD if dst.version == 6 else IPV4_OVERHEAD
        out = self.server.handle(now, (dst, udp_repr.dst_port),
                                 (ip_repr.src_addr, udp_repr.src_port), payload,
                                 max_blksize=self.mtu - overhead)
        self._enqueue(out)

    def _enqueue(self, datagrams: list[Datagram]) -> None:
        if not datagrams:
            return
        batches: dict[tuple[Endpoint, Endpoint], list[bytes]] = {}
        for d in datagrams:
            batches.setdefault((d.src, d.dst), []).append(d.data)
        queue = self._queue
        for key, batch in batches.items():
            old = queue.pop(key, None)
            if old is not None:
                self._queued -= len(old)
            room = self.max_queued - self._queued
            if room < len(batch):
                self.tx_dropped += len(batch) - max(room, 0)
                batch = batch[:max(room, 0)]
            if batch:
                queue[key] = deque(batch)
                self._queued += len(batch)

    def dispatch(self, now: float, emit) -> None:
        self._enqueue(self.server.on_timer(now))
        queue = self._queue
        while queue:
            key = next(iter(queue))
            (src_addr, sport), (dst_addr, dport) = key
            q = queue[key]
            data = q[0]
            n = len(data)

            def fill(buf, src, csum, sport=sport, dport=dport, dst=dst_addr, data=data, n=n):
                UdpRepr(sport, dport).emit(UdpPacket(buf), src, dst, n, data, csum)

            if not emit(dst_addr, _UDP, UDP_HEADER_LEN + n, fill, src_addr, ttl=self.ttl):
                break
            q.popleft()
            self._queued -= 1
            del queue[key]  # round robin: the pair goes to the back of the line
            if q:
                queue[key] = q

    def poll_at(self, now: float) -> float | None:
        if self._queue:
            return now
        return self.server.poll_at()
