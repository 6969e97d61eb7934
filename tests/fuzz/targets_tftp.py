"""Fuzz target for the read-only TFTP server (netstack/socket/tftp_server.py), beside
tests/fuzz/targets.py.

- `tftp`: one `TftpServer` engine per input, over a directory made once per process
  (`_Root`: files of 0, 1, 511, 512, 513 bytes and ~70 KiB, a subdirectory, symlinks that
  stay inside, one to a file outside holding `MARKER`, one to the parent, a dangling one,
  a loop, a FIFO) and an operator's `files=` mapping (one bytes entry, one path entry, one
  name the root has too). The input is a script of events (see `_EVENTS`): requests from
  a few client endpoints (IPv4 and IPv6) to port 69 or to a live session's port (the ports
  are learnt from the engine's replies), structured (RRQ, WRQ, any opcode; names from
  `_Root.names`, traversal attempts included, or raw bytes; modes; options with values in and
  out of range; padding, garbage, a missing NUL) or raw bytes; ACKs around the window
  (duplicates, the last block, 0 and 65535, from the client or a stranger); ERRORs; DATA,
  OACK and unknown opcodes; and the clock, moved to or short of the next deadline or far
  past it, with `on_timer`.

A model of the engine's contract (its module docstring) predicts every reply exactly:
refusals (code, from a fresh port in 49152-65535 that is neither 69 nor a live session's
nor one `port_in_use` claims), the OACK (the options the request earns, in its order), each
window (from the first unacknowledged block, filled up to the window or the last block;
DATA bytes equal to the file's, or its netascii conversion's, at the block's offset, and
never longer than the negotiated block size), duplicate RRQs ignored, ERROR 5 to strangers,
retransmissions and give-ups on the timer. Every datagram must parse
(`netstack.wire.tftp.parse`) and none may carry `MARKER`. After every event: the live
session ports are the model's, at most `max_sessions`, `poll_at()` is the earliest
deadline (None iff no session), and the process holds one fd per session more than before
the input; after `close()`, none. The engine must never raise.
"""

from __future__ import annotations

import atexit
import errno
import os
import random
import shutil
import stat
import struct
import tempfile
from ipaddress import IPv4Address, IPv6Address

from netstack.socket.tftp_server import TftpServer, TftpServerConfig
from netstack.socket.udp import EPHEMERAL_FIRST, EPHEMERAL_LAST
from netstack.wire import Error as WireError
from netstack.wire import tftp as wtftp
from netstack.wire.tftp import AckRepr, ErrorRepr, OackRepr, Opcode, RequestRepr
from tests.fuzz.targets_gateway import _Input  # the fuzzer's bytes as small numbers

CONFIG = TftpServerConfig(max_sessions=4, retries=2, timeout=1.0, max_windowsize=16)
SERVER4, SERVER6 = IPv4Address("10.0.2.2"), IPv6Address("fd00:10:0:2::2")
CLIENTS = ((IPv4Address("10.0.2.15"), 1024), (IPv4Address("10.0.2.15"), 1025),
           (IPv4Address("10.0.2.16"), 2000), (IPv4Address("10.0.2.17"), 69),
           (IPv6Address("fd00:10:0:2::15"), 1024), (IPv6Address("fe80::15"), 3000))
MARKER = b"SECRET"  # in the file outside the root only
MAX_BLKSIZES = (None, 1468, 1448, 8, 5, 600, 65464)
MODES = (b"octet", b"OCTET", b"netascii", b"NetAscii", b"mail", b"binary", b"")
OPTION_NAMES = (b"blksize", b"BLKSIZE", b"timeout", b"tsize", b"windowsize", b"WindowSize",
                b"multicast", b"rollover", b"")
VALUES = (b"0", b"1", b"7", b"8", b"9", b"255", b"256", b"511", b"512", b"513", b"1024",
          b"1448", b"1468", b"1469", b"65464", b"65465", b"65535", b"65536", b"4294967296",
          b"99999999999", b"0000000008", b"-1", b"+8", b" 8", b"8 ", b"0x10", b"", b"\xb2",
          b"16", b"2", b"4")
_DATA = struct.Struct("!HH")
_U16 = struct.Struct("!H")


# -- the root, once per process ----------------------------------------------------------
def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _Root:
    def __init__(self) -> None:
        top = tempfile.mkdtemp(prefix="vhn-fuzz-tftp-")
        atexit.register(shutil.rmtree, top, True)
        root, outside = os.path.join(top, "root"), os.path.join(top, "outside")
        os.mkdir(root)
        os.mkdir(outside)
        os.mkdir(os.path.join(root, "sub"))
        gen = random.Random(1350)
        sizes = {"empty": 0, "one": 1, "f511": 511, "f512": 512, "f513": 513,
                 "big": 70 * 1024 + 123, "sub/inner": 2000, "kernel": 100}
        for name, n in sizes.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(gen.randbytes(n))
        secret = os.path.join(outside, "secret")
        with open(secret, "wb") as f:
            f.write(b"TOPSECRET\n" * 100)
        boot = os.path.join(outside, "vmlinuz")
        with open(boot, "wb") as f:
            f.write(gen.randbytes(3000))
        os.symlink("sub/inner", os.path.join(root, "link_in"))
        os.symlink("sub", os.path.join(root, "link_dir"))
        os.symlink(secret, os.path.join(root, "link_out"))
        os.symlink("..", os.path.join(root, "link_up"))
        os.symlink("nowhere", os.path.join(root, "dangling"))
        os.symlink("loop", os.path.join(root, "loop"))
        os.mkfifo(os.path.join(root, "fifo"))
        self.root, self.secret = root, secret
        self.real = os.path.realpath(os.fsencode(root))
        self.files = {"boot/bytes.bin": gen.randbytes(1030), "kernel": boot}
        self.file_bytes = {k.encode("latin-1"): v if isinstance(v, bytes) else _read(v)
                           for k, v in self.files.items()}
        self.contents: dict[bytes, bytes] = {}
        for d, _dirs, names in os.walk(self.real):
            for n in names:
                p = os.path.join(d, n)
                if stat.S_ISREG(os.lstat(p).st_mode):
                    self.contents[p] = _read(p)
        for data in [*self.contents.values(), *self.file_bytes.values()]:
            assert MARKER not in data
        self._netascii: dict[bytes, bytes] = {}
        self.names = (
            "empty", "one", "f511", "f512", "f513", "big", "sub/inner", "/sub/inner",
            "sub//./inner", "link_in", "link_dir/inner", "link_out", "link_up/outside/secret",
            "link_up/root/one", "dangling", "loop", "fifo", "sub", "link_dir", "", "/", ".",
            "../secret", "../outside/secret", "/../x", "sub/../../x", "sub/../one", "..",
            "/etc/passwd", "//big", "\\big", "sub\\inner", "one\0evil", "one\0octet",
            "kernel", "/kernel", "boot/bytes.bin", "/boot/bytes.bin", "//boot/bytes.bin",
            "BIG", "big/", "one/x", "x" * 300, "nope", "secret", secret, os.path.join(root, "one"),
            os.fsdecode(self.real) + "/../outside/secret", "./big", "sub/./inner/",
        )

    def netascii(self, data: bytes) -> bytes:
        got = self._netascii.get(data)
        if got is None:
            got = data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
            if len(self._netascii) < 64:
                self._netascii[data] = got
        return got

    def resolve(self, filename: str) -> bytes | int:
        """What RRQ `filename` must get: the file's bytes, or the ERROR code."""
        b = filename.encode("latin-1")
        named = self.file_bytes.get(b.lstrip(b"/"))
        if named is not None:
            return named
        if b"\\" in b:
            return 2
        parts = [p for p in b.split(b"/") if p not in (b"", b".")]
        if b".." in parts:
            return 2
        real = os.path.realpath(os.path.join(self.real, *parts))
        if real == self.real or not real.startswith(self.real + b"/"):
            return 2
        try:
            st = os.stat(real)
        except OSError as e:
            return 1 if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG) else 2
        if not stat.S_ISREG(st.st_mode):
            return 2
        return self.contents[real]


_ROOT: _Root | None = None


def _root() -> _Root:
    global _ROOT
    if _ROOT is None:
        _ROOT = _Root()
    return _ROOT


# -- the input ---------------------------------------------------------------------------
def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the model ---------------------------------------------------------------------------
def _number(value: str) -> int | None:
    if value.isascii() and value.isdigit() and 1 <= len(value) <= 10:
        return int(value)
    return None


class _Session:
    def __init__(self, port: int, local, client, req: RequestRepr, content: bytes,
                 max_blksize: int | None, now: float, root: _Root) -> None:
        cfg = CONFIG
        self.port, self.local, self.client, self.req = port, local, client, req
        limit = max(min(cfg.max_blksize, max_blksize or cfg.max_blksize), wtftp.MIN_BLKSIZE)
        self.bs, self.ws, self.timeout = wtftp.DEFAULT_BLKSIZE, 1, cfg.timeout
        accepted = []
        for name, value in req.options:
            n = _number(value)
            if n is None:
                continue
            if name == "blksize" and 8 <= n <= 65464:
                self.bs = min(n, limit)
                accepted.append((name, str(self.bs)))
            elif name == "timeout" and 1 <= n <= 255:
                self.timeout = float(n)
                accepted.append((name, str(n)))
            elif name == "tsize" and req.mode == "octet" and content:
                accepted.append((name, str(len(content))))
            elif name == "windowsize" and 1 <= n <= 65535:
                self.ws = min(n, cfg.max_windowsize)
                accepted.append((name, str(self.ws)))
        self.oack = OackRepr(tuple(accepted)).to_bytes() if accepted else None
        self.stream = content if req.mode == "octet" else root.netascii(content)
        self.last = len(self.stream) // self.bs + 1
        self.base = 0 if self.oack is not None else 1
        self.tries, self.progressed = 0, False
        self.deadline = now + self.timeout

    def window(self) -> list[bytes]:
        end = min(self.base + (1 if self.base == 0 else self.ws), self.last + 1)
        return [self.packet(i) for i in range(self.base, end)]

    def window_end(self) -> int:
        return min(self.base + (1 if self.base == 0 else self.ws), self.last + 1)

    def packet(self, i: int) -> bytes:
        if i == 0:
            return self.oack
        bs = self.bs
        return _DATA.pack(Opcode.DATA, i & 0xFFFF) + self.stream[(i - 1) * bs:i * bs]


class _World:
    def __init__(self, flags: int) -> None:
        self.root = _root()
        taken = (lambda p: p % 5 == 0) if flags & 1 else None
        self.taken = taken
        self.engine = TftpServer(self.root.root, CONFIG, files=self.root.files,
                                 port_in_use=taken, rng=random.Random(flags))
        self.now = 1000.0
        self.sessions: dict[int, _Session] = {}  # by port, in the engine's order
        self.by_client: dict[tuple, _Session] = {}

    # -- helpers --------------------------------------------------------------------------
    def session(self, b: int) -> _Session | None:
        if not self.sessions:
            return None
        return list(self.sessions.values())[b % len(self.sessions)]

    def _drop(self, s: _Session) -> None:
        del self.sessions[s.port]
        if self.by_client.get(s.client) is s:
            del self.by_client[s.client]

    def _fresh_port(self, port: int, what: str) -> None:
        if not EPHEMERAL_FIRST <= port <= EPHEMERAL_LAST or port == wtftp.PORT:
            raise AssertionError(f"{what} from port {port}")
        if port in self.sessions:
            raise AssertionError(f"{what} from port {port}, a live session's")
        if self.taken is not None and self.taken(port):
            raise AssertionError(f"{what} from port {port}, which port_in_use claims")

    @staticmethod
    def _check_sent(out) -> None:
        for d in out:
            try:
                wtftp.parse(d.data)
            except WireError as e:
                raise AssertionError(f"the engine sent a malformed datagram {d}: {e}") from e
            if MARKER in d.data:
                raise AssertionError(f"the secret outside the root was sent: {d}")
            if d.src[1] == wtftp.PORT:
                raise AssertionError(f"a datagram from port 69: {d}")

    def _expect(self, out, want: list, what: str) -> None:
        if list(out) != want:
            raise AssertionError(f"{what}: the engine sent {out}, expected {want}")

    def _expect_window(self, out, s: _Session, what: str) -> None:
        for d in out:
            if d.data[:2] == b"\0\3" and len(d.data) - 4 > s.bs:
                raise AssertionError(f"{what}: DATA of {len(d.data) - 4} bytes, blksize {s.bs}")
        self._expect(out, [(s.local, s.client, p) for p in s.window()], what)

    # -- events ---------------------------------------------------------------------------
    def deliver(self, port: int, client, data: bytes, max_blksize: int | None = None) -> None:
        s = self.sessions.get(port)
        if s is not None:
            local = s.local
        else:
            port = wtftp.PORT
            local = (SERVER4 if client[0].version == 4 else SERVER6, port)
        out = self.engine.handle(self.now, local, client, data, max_blksize=max_blksize)
        self._check_sent(out)
        try:
            msg = wtftp.parse(data)
        except WireError:
            self._expect(out, [], "a malformed datagram")
            return
        if s is not None:
            self._session_packet(out, s, client, msg)
        elif isinstance(msg, RequestRepr):
            self._request(out, local, client, msg, max_blksize)
        else:
            self._expect(out, [], f"{type(msg).__name__} to port 69")

    def _session_packet(self, out, s: _Session, client, msg) -> None:
        if client != s.client:
            want = [] if isinstance(msg, ErrorRepr) else \
                [(s.local, client, ErrorRepr(5, "unknown transfer ID").to_bytes())]
            self._expect(out, want, "a stranger at a session's port")
            return
        if isinstance(msg, ErrorRepr):
            self._drop(s)
            self._expect(out, [], "an ERROR from the client")
            return
        if not isinstance(msg, AckRepr):
            self._expect(out, [], f"{type(msg).__name__} to a session")
            return
        b = msg.block
        if not s.base <= b < s.window_end():
            self._expect(out, [], f"ACK {b} outside [{s.base}, {s.window_end()})")
            return
        if b == s.last:
            self._drop(s)
            self._expect(out, [], "the last ACK")
            return
        s.base, s.tries, s.progressed = b + 1, 0, True
        s.deadline = self.now + s.timeout
        self._expect_window(out, s, f"ACK {b}")

    def _request(self, out, local, client, req: RequestRepr, max_blksize) -> None:
        code = None
        if req.opcode == Opcode.WRQ:
            code = 2
        elif req.mode not in ("octet", "netascii"):
            code = 4
        else:
            old = self.by_client.get(client)
            if old is not None:
                if old.req == req and not old.progressed:
                    self._expect(out, [], "a retransmitted RRQ")
                    return
                self._drop(old)
            if len(self.sessions) >= CONFIG.max_sessions:
                code = 0
            else:
                got = self.root.resolve(req.filename)
                if isinstance(got, int):
                    code = got
        if not out:
            raise AssertionError(f"no answer to {req}")
        src = out[0].src
        self._fresh_port(src[1], f"the answer to {req}")
        if src[0] != local[0]:
            raise AssertionError(f"the answer to {req} from {src}, not {local[0]}")
        if code is not None:
            want = [(src, client, ErrorRepr(code, "").to_bytes()[:4])]
            self._expect([(d.src, d.dst, d.data[:4]) for d in out], want, f"refusing {req}")
            return
        s = _Session(src[1], src, client, req, got, max_blksize, self.now, self.root)
        self.sessions[s.port] = s
        self.by_client[client] = s
        self._expect_window(out, s, f"opening {req}")

    def timer(self) -> None:
        out = self.engine.on_timer(self.now)
        self._check_sent(out)
        want = []
        for s in list(self.sessions.values()):
            if s.deadline > self.now:
                continue
            s.tries += 1
            if s.tries > CONFIG.retries:
                self._drop(s)
                continue
            s.deadline = self.now + s.timeout
            want += [(s.local, s.client, p) for p in s.window()]
        self._expect(out, want, f"on_timer({self.now})")

    def check(self, fds: int) -> None:
        e = self.engine
        if e.sessions > CONFIG.max_sessions:
            raise AssertionError(f"{e.sessions} sessions, past max_sessions")
        if e.sessions != len(self.sessions) or not all(map(e.has_port, self.sessions)):
            raise AssertionError(f"the engine's {e.sessions} sessions are not the model's "
                                 f"{sorted(self.sessions)}")
        want = min((s.deadline for s in self.sessions.values()), default=None)
        if e.poll_at() != want:
            raise AssertionError(f"poll_at() {e.poll_at()}, expected {want}")
        if _fds() != fds + e.sessions:
            raise AssertionError(f"{_fds() - fds} fds open for {e.sessions} sessions")


# -- the steps ---------------------------------------------------------------------------
def _port_and_client(w: _World, b: int, c: int) -> tuple[int, tuple]:
    """Port 69 (b even) or a live session's port; the session's client (c < 0x80) or any
    client of the same family."""
    s = w.session(b >> 1) if b & 1 else None
    if s is None:
        return wtftp.PORT, CLIENTS[c % len(CLIENTS)]
    if c < 0x80:
        return s.port, s.client
    same = [x for x in CLIENTS if x[0].version == s.client[0].version]
    return s.port, same[c % len(same)]


def _pick(inp: _Input, table: tuple) -> bytes:
    b = inp.u8()
    if b < 0xF0:
        return table[b % len(table)]
    return inp.take(inp.u8() % 32)


def _request(w: _World, inp: _Input) -> None:
    flags = inp.u8()
    port, client = _port_and_client(w, inp.u8() if flags & 0x80 else 0, inp.u8())
    kind = (flags >> 5) & 3
    opcode = inp.u8() if kind == 3 else (1, 1, 2)[kind]
    b = inp.u8()
    if b < 0xF0:
        name = w.root.names[b % len(w.root.names)].encode("latin-1")
    else:
        name = inp.take(inp.u8() % 64)
    body = bytearray(_U16.pack(opcode) + name + b"\0" + _pick(inp, MODES) + b"\0")
    for _ in range(flags & 7):
        body += _pick(inp, OPTION_NAMES) + b"\0"
        v = inp.u8()
        if v < 0xE0:
            body += VALUES[v % len(VALUES)]
        elif v < 0xF0:
            body += str(inp.u16() * (v - 0xDF)).encode()
        else:
            body += inp.take(inp.u8() % 16)
        body += b"\0"
    tail = (flags >> 3) & 3
    if tail == 1:
        body += b"\0" * (inp.u8() % 4 + 1)
    elif tail == 2:
        del body[-1:]
    elif tail == 3:
        body += inp.take(inp.u8() % 16)
    w.deliver(port, client, bytes(body), MAX_BLKSIZES[inp.u8() % len(MAX_BLKSIZES)])


def _ack(w: _World, inp: _Input) -> None:
    which, choice, c = inp.u8(), inp.u8(), inp.u8()
    s = w.session(which)
    if s is None:
        block = inp.u16()
        w.deliver(wtftp.PORT, CLIENTS[c % len(CLIENTS)], AckRepr(block).to_bytes())
        return
    k = choice % 12
    block = (s.base, s.window_end() - 1, s.base - 1, s.last, 65535, 0, None,
             s.base + choice // 12 % 8 - 2, s.window_end(), s.last + 1,
             s.window_end() - 1 - choice // 12 % 4, s.base + 65536)[k]
    if block is None:
        block = inp.u16()
    data = AckRepr(block & 0xFFFF).to_bytes()
    if c & 0x40:
        data += inp.take(c & 7)
    client = s.client
    if c & 0x80:
        same = [x for x in CLIENTS if x[0].version == s.client[0].version]
        client = same[c % len(same)]
    for _ in range(1 + (c >> 4 & 1)):  # sometimes twice: a duplicate
        w.deliver(s.port, client, data)


def _ack_window(w: _World, inp: _Input) -> None:
    """The session's client acknowledges everything sent (a transfer moves on)."""
    s = w.session(inp.u8())
    if s is not None:
        w.deliver(s.port, s.client, AckRepr((s.window_end() - 1) & 0xFFFF).to_bytes())


def _error(w: _World, inp: _Input) -> None:
    b, c, code = inp.u8(), inp.u8(), inp.u16()
    port, client = _port_and_client(w, b, c)
    msg = inp.take(b >> 4)
    w.deliver(port, client, _DATA.pack(Opcode.ERROR, code) + msg + (b"" if c & 0x40 else b"\0"))


def _other(w: _World, inp: _Input) -> None:
    b, c, block = inp.u8(), inp.u8(), inp.u16()
    port, client = _port_and_client(w, b, c)
    opcode = (Opcode.DATA, Opcode.OACK, 0, 7, 65535, Opcode.ACK)[(b >> 1) % 6]
    if opcode == Opcode.OACK:
        data = _U16.pack(opcode) + b"blksize\0" + str(block).encode() + b"\0"
    elif opcode == Opcode.ACK:
        data = _U16.pack(opcode) + bytes([block & 0xFF])  # one byte short
    else:
        data = _DATA.pack(opcode, block) + inp.take(c & 0x3F)
    w.deliver(port, client, data)


def _raw(w: _World, inp: _Input) -> None:
    b, c = inp.u8(), inp.u8()
    port, client = _port_and_client(w, b, c)
    w.deliver(port, client, inp.take(inp.u8()))


def _time(w: _World, inp: _Input) -> None:
    b = inp.u8()
    due = w.engine.poll_at()
    k = b % 5
    if k == 0 and due is not None:
        w.now = max(w.now, due)
    elif k == 1 and due is not None:
        w.now = max(w.now, due - 0.001)
    elif k == 2:
        w.now += (b >> 3) / 16
    elif k == 3:
        w.now += 300.0
    else:
        w.now += 1.0
    w.timer()


_EVENTS = (_request, _request, _ack, _ack, _ack_window, _ack_window, _error, _other, _raw,
           _time, _time)


def tftp(data: bytes) -> None:
    """Events from the input (its first byte seeds the port choice and says whether
    `port_in_use` claims every fifth port); see the module docstring for the checks."""
    if not data:
        return
    before = _fds()
    w = _World(data[0])
    try:
        inp = _Input(data[1:])
        while inp.more:
            _EVENTS[inp.u8() % len(_EVENTS)](w, inp)
            w.check(before)
    finally:
        w.engine.close()
    if w.engine.sessions or w.engine.poll_at() is not None:
        raise AssertionError("sessions left after close()")
    if _fds() != before:
        raise AssertionError(f"{_fds() - before} fds left open after close()")

