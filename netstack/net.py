"""std::net-style sockets for application threads, on top of a `Runtime`.

`UdpSocket`, `TcpListener` and `TcpStream` behave like Rust's `std::net` types (and mostly
like Python's socket module): addresses are `(str, int)` tuples, calls block until done
unless a timeout or non-blocking mode says otherwise, and failures raise the OSErrors Python
programmers expect: `TimeoutError` when a timeout runs out, `BlockingIOError` (EAGAIN) in
non-blocking mode, `OSError(EBADF)` after `close()`, `OSError(EMSGSIZE)` for a datagram
that cannot fit, `OSError(EADDRINUSE)` on a port clash, `ConnectionRefusedError` when a
connection attempt is answered by a RST, `ConnectionResetError` when an open connection is
reset, `BrokenPipeError` when writing after our side (or the connection) was shut down.

Addresses of both families. An address given is `(host, port)` or, for IPv6, Python's
`(host, port, flowinfo, scope_id)`; the host is a literal ("10.0.2.15", "fd00::1",
"fe80::1%eth0": a zone or scope id is accepted and ignored, we have one interface) or ""
(the unspecified address of the socket's family). Addresses returned (`local_addr`,
`peer_addr`, `recv_from`, `accept`) are `SocketAddrV4(host, port)` or
`SocketAddrV6(host, port, flowinfo, scope_id)`: named tuples, so `host, port = addr` still
works for IPv4 and an IPv6 address looks like the 4-tuple of an AF_INET6 socket.

Dual stack, as Linux. A socket's family is that of the address it was bound (or, for a
stream, connected) to: "::" is IPv6, and takes IPv4 too unless `v6only=True`
(IPV6_V6ONLY); "0.0.0.0" is IPv4 only; a specific address, its family only. `::` clashes
with 0.0.0.0 on one port unless it is v6-only. An IPv6 socket reports IPv4 peers as
AF_INET6 sockets do on Linux, IPv4-mapped: `SocketAddrV6("::ffff:10.0.2.2", port, 0, 0)`,
and takes such addresses as destinations (sent as IPv4).

Blocking calls wait on a `threading.Condition` built on the runtime's lock; the sans-I/O
socket's waker notifies it from the runtime thread when data arrives or room frees up.

    with Runtime(iface, device) as rt:
        sock = rt.udp_bind(("0.0.0.0", 0))
        sock.set_read_timeout(1.0)
        sock.send_to(b"ping", ("10.0.2.2", 7))
        data, addr = sock.recv_from(2048)

        listener = TcpListener.bind(rt, ("0.0.0.0", 8080))
        stream, peer = listener.accept()
        stream.write_all(stream.read(4096))

Readiness file descriptors. Every socket here has `fileno()`: a real fd that a `selectors`
selector, `select.poll` or an asyncio loop can watch, readable exactly when a read would
not block (data, EOF, a pending error, a connection to accept) and writable exactly when a
write would not block (room in the transmit buffer, or an error/shutdown that makes the
write fail at once). It is one end (`app`) of an AF_UNIX stream socketpair whose other end
(`ctl`) we keep; both non-blocking, `app` with the smallest send buffer the kernel allows:

- readable ⇔ one byte sent `ctl → app` is waiting in `app`; cleared by draining `app`;
- not writable ⇔ `app`'s send buffer is full of bytes sent `app → ctl`; made writable
  again by draining `ctl` (the kernel reports POLLOUT once `app`'s queued bytes are read).

The two directions are independent, so one fd carries both conditions. The state is kept
by `Readiness.set(readable, writable)` (syscalls only on a change), called with the runtime
lock held both by the waker (runtime thread) and after every application-side operation.
The fd is made on the first `fileno()` call, so code that never selects pays nothing. It is
never read or written by the application: it only signals.
"""

from __future__ import annotations

import _socket
import errno
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from netstack.runtime import Runtime
from netstack.socket import addr as _addr
from netstack.socket import udp as _udp
from netstack.socket.errors import (
    AddrInUse,
    BufferFull,
    TableFull,
    TooLarge,
    Unaddressable,
)
from netstack.socket.set import PacketBuffer
from netstack.socket.tcp import listener as _tcpl
from netstack.socket.tcp import socket as _tcp
from netstack.socket.tcp.state import SYNCHRONIZED, State

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id)


class SocketAddrV4(NamedTuple):
    """An IPv4 socket address, as Python's AF_INET `(host, port)`."""

    host: str
    port: int


class SocketAddrV6(NamedTuple):
    """An IPv6 socket address, as Python's AF_INET6 `(host, port, flowinfo, scope_id)`."""

    host: str
    port: int
    flowinfo: int = 0
    scope_id: int = 0


SocketAddr = SocketAddrV4 | SocketAddrV6

SHUT_RD, SHUT_WR, SHUT_RDWR = 0, 1, 2
_SHUT_NAMES = {"read": SHUT_RD, "write": SHUT_WR, "both": SHUT_RDWR}
EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535
DEFAULT_KEEPALIVE = 7200.0  # Linux's tcp_keepalive_time
_CONNECTING = (State.SYN_SENT, State.SYN_RECEIVED)
_rng = random.Random()
_ANY = IPv4Address(0)
_ANY6 = IPv6Address(0)
IpAddress = IPv4Address | IPv6Address


def _endpoint(addr, v6: bool = False) -> tuple[IpAddress, int]:
    """(ip, port) from `(host, port)` or `(host, port, flowinfo, scope_id)`; an empty host is
    0.0.0.0, or :: when `v6`."""
    try:
        if isinstance(addr, tuple) and len(addr) == 4:
            host, port, _flowinfo, _scope = addr
        else:
            host, port = addr
        ip = _addr.parse_addr(host, _ANY6 if v6 else _ANY)
    except (TypeError, ValueError, Unaddressable):
        raise OSError(errno.EINVAL, f"not a (host, port) address: {addr!r}") from None
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise OverflowError("port must be 0-65535.")
    return ip, port


def _to_address(ep: tuple[IpAddress, int], v6: bool = False) -> SocketAddr:
    """The SocketAddr of an endpoint; `v6` (an IPv6 socket) shows IPv4 ones mapped."""
    ip, port = ep
    if ip.version == 6 and ip.ipv4_mapped is None:
        return SocketAddrV6(str(ip), port)
    ip = _addr.unmap(ip)
    if v6 or ip.version == 6:
        return SocketAddrV6(f"::ffff:{ip}", port)  # dotted, as Linux prints it
    return SocketAddrV4(str(ip), port)


def _check_local(runtime: Runtime, ip: IpAddress) -> None:
    ip = _addr.unmap(ip)
    if not ip.is_unspecified and not runtime.iface.has_ip_addr(ip):
        raise OSError(errno.EADDRNOTAVAIL, f"{ip} is not an address of the interface")


# -- readiness ----------------------------------------------------------------------------
class Readiness:
    """A file descriptor readable/writable exactly as `set` says (see the module docstring).

    Starts not readable and not writable. Not thread-safe: the runtime lock guards it.

    >>> import select
    >>> r = Readiness()
    >>> select.select([r], [r], [], 0)
    ([], [], [])
    >>> r.set(readable=True, writable=False)
    >>> select.select([r], [r], [], 0) == ([r], [], [])
    True
    >>> r.set(readable=False, writable=True)
    >>> select.select([r], [r], [], 0) == ([], [r], [])
    True
    >>> r.close()
    """

    __slots__ = ("_app", "_ctl", "readable", "writable")
    _FILL = b"\0" * 4096

    def __init__(self) -> None:
        app, ctl = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        app.setblocking(False)
        ctl.setblocking(False)
        app.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, 1)  # the kernel's minimum
        self._app, self._ctl = app, ctl
        self.readable = False
        self.writable = True
        self.set(False, False)

    def fileno(self) -> int:
        return self._app.fileno()

    def set(self, readable: bool, writable: bool) -> None:
        if readable != self.readable:
            if readable:
                self._ctl.send(b"r")
            else:
                _drain(self._app)
            self.readable = readable
        if writable != self.writable:
            if writable:
                _drain(self._ctl)
            else:
                while True:
                    try:
                        self._app.send(self._FILL)
                    except BlockingIOError:
                        break
            self.writable = writable

    def close(self) -> None:
        self._app.close()
        self._ctl.close()

    @property
    def closed(self) -> bool:
        return self._app.fileno() < 0


def _drain(sock) -> None:
    while True:
        try:
            if not sock.recv(65536):
                return
        except BlockingIOError:
            return


def _weak_waker(obj: _Waitable) -> Callable[[], None]:
    """A waker that does not keep `obj` alive: the set holds the sans-I/O socket, the
    socket its waker, and a dropped application socket must still be collected (and
    closed by `__del__`, as dropping a std::net socket closes it)."""
    ref = weakref.ref(obj)

    def wake() -> None:
        target = ref()
        if target is not None:
            target._on_wake()

    return wake


class _Waitable:
    """What the blocking sockets share: the Condition on the runtime lock, timeouts,
    non-blocking mode, and the readiness fd. Subclasses define `_readiness()` ->
    (readable, writable), called with the lock held, and `close()`; a socket dropped
    without `close()` is closed when it is collected."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._cond = threading.Condition(runtime.lock)
        self._read_timeout: float | None = None
        self._write_timeout: float | None = None
        self._nonblocking = False
        self._closed = False
        self._ready: Readiness | None = None
        self._own_ready = True

    def _readiness(self) -> tuple[bool, bool]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or not hasattr(self, "_handle"):
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finalizer must not raise (interpreter exit)
            pass

    def _on_wake(self) -> None:
        """The sans-I/O socket's waker: runtime thread, lock held."""
        self._cond.notify_all()
        ready = self._ready
        if ready is not None:
            ready.set(*self._readiness())

    def _refresh(self) -> None:
        """After an application-side change (lock held)."""
        ready = self._ready
        if ready is not None:
            ready.set(*self._readiness())

    def fileno(self) -> int:
        """A readiness fd (see the module docstring), or -1 once closed."""
        with self._rt.lock:
            if self._closed:
                return -1
            if self._ready is None:
                self._ready = Readiness()
                self._own_ready = True
                self._refresh()
            return self._ready.fileno()

    def _use_readiness(self, ready: Readiness) -> None:
        """Signal on `ready` (owned by the caller, e.g. a `netstack.pysocket.socket` whose
        fd must not change when it connects); lock held."""
        self._ready = ready
        self._own_ready = False
        self._refresh()

    def _release_readiness(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None and self._own_ready:
            ready.close()

    # -- timeouts -------------------------------------------------------------------------
    def set_read_timeout(self, secs: float | None) -> None:
        """None blocks forever; a positive number of seconds makes reads raise
        TimeoutError after that long. Zero is refused (use `set_nonblocking`)."""
        if secs is not None and secs <= 0:
            raise ValueError("a read timeout must be positive or None")
        self._read_timeout = secs

    def read_timeout(self) -> float | None:
        return self._read_timeout

    def set_write_timeout(self, secs: float | None) -> None:
        """How long a write waits for room in the transmit buffer (None: forever)."""
        if secs is not None and secs <= 0:
            raise ValueError("a write timeout must be positive or None")
        self._write_timeout = secs

    def write_timeout(self) -> float | None:
        return self._write_timeout

    def set_nonblocking(self, nonblocking: bool) -> None:
        self._nonblocking = bool(nonblocking)

    def settimeout(self, secs: float | None) -> None:
        """Python's socket semantics: None blocks, 0 is non-blocking, else a timeout for
        reads and writes alike."""
        if secs is not None and secs < 0:
            raise ValueError("Timeout value out of range")
        if secs == 0:
            self._nonblocking = True
        else:
            self._nonblocking = False
            self.set_read_timeout(secs)
            self.set_write_timeout(secs)

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    def _wait(self, deadline: float | None, nonblocking: bool | None = None) -> None:
        """Wait for the waker (lock held); raise when non-blocking or the time is up."""
        if self._nonblocking if nonblocking is None else nonblocking:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if deadline is None:
            self._cond.wait()
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self._cond.wait(remaining)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- UDP ----------------------------------------------------------------------------------
class UdpSocket(_Waitable):
    """A UDP socket usable from any thread. Create it with `UdpSocket.bind(runtime, addr)`
    or `runtime.udp_bind(addr)`."""

    def __init__(self, runtime: Runtime, sock: _udp.UdpSocket, handle: int) -> None:
        super().__init__(runtime)
        self._sock = sock
        self._handle = handle
        self._peer: tuple[IpAddress, int] | None = None  # unmapped
        self._v6 = False  # an IPv6 socket (bound to an IPv6 address)
        sock.set_waker(_weak_waker(self))

    @classmethod
    def bind(cls, runtime: Runtime, addr: Address = ("0.0.0.0", 0), *, rx_packets: int = 256,
             rx_bytes: int = 1 << 20, tx_packets: int = 256, tx_bytes: int = 1 << 20,
             v6only: bool = False, transparent: bool = False) -> UdpSocket:
        """Bind a new socket to `addr` (port 0: an ephemeral port; "::" both families
        unless `v6only`). `transparent` (Linux's IP_TRANSPARENT): the address need not be
        ours (host forwarding sends from the real client's address)."""
        ip, port = _endpoint(addr)
        sock = _udp.UdpSocket(PacketBuffer(rx_packets, rx_bytes), PacketBuffer(tx_packets, tx_bytes))
        with runtime.lock:
            if not transparent:
                _check_local(runtime, ip)
            handle = _add(runtime, sock)
            try:
                sock.bind((ip, port), v6only=v6only)
            except AddrInUse:
                runtime.sockets.remove(handle)
                raise OSError(errno.EADDRINUSE, "Address already in use") from None
            except Unaddressable as e:
                runtime.sockets.remove(handle)
                raise OSError(errno.EINVAL, str(e)) from None
            obj = cls(runtime, sock, handle)
            obj._v6 = ip.version == 6
            return obj

    @property
    def family6(self) -> bool:
        """Is this an IPv6 socket (addresses shown as SocketAddrV6)?"""
        return self._v6

    @property
    def v6only(self) -> bool:
        return self._sock.v6only

    def _readiness(self) -> tuple[bool, bool]:
        if self._closed:
            return True, True
        return self._sock.can_recv(), self._sock.can_send()

    def local_addr(self) -> Address:
        with self._rt.lock:
            self._check_open()
            return _to_address(self._sock.endpoint, self._v6)

    getsockname = local_addr

    def peer_addr(self) -> Address:
        if self._peer is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return _to_address(self._peer, self._v6)

    getpeername = peer_addr

    def connect(self, addr: Address) -> None:
        """Fix the destination of `send` and receive only from `addr`."""
        ip, port = _endpoint(addr)
        ip = _addr.unmap(ip)
        if port == 0 or ip.is_unspecified:
            raise OSError(errno.EINVAL, f"cannot connect to {addr!r}")
        self._check_open()
        self._peer = (ip, port)

    # -- data -----------------------------------------------------------------------------
    def send_to(self, data, addr: Address, *, nonblocking: bool | None = None) -> int:
        """Queue one datagram to `addr`; returns its length."""
        ep = _endpoint(addr)
        n = len(data)
        with self._rt.lock:
            deadline = self._deadline(self._write_timeout)
            while True:
                self._check_open()
                try:
                    self._sock.send_to(bytes(data), ep)
                    break
                except BufferFull:
                    self._wait(deadline, nonblocking)
                except TooLarge:
                    raise OSError(errno.EMSGSIZE, "Message too long") from None
                except Unaddressable as e:
                    raise OSError(errno.EINVAL, str(e)) from None
            self._refresh()
        self._rt.wake()
        return n

    sendto = send_to

    def send(self, data) -> int:
        if self._peer is None:
            raise OSError(errno.EDESTADDRREQ, "Destination address required")
        return self.send_to(data, _to_address(self._peer))

    def recv_from(self, bufsize: int, *, nonblocking: bool | None = None,
                  peek: bool = False) -> tuple[bytes, Address]:
        """Receive one datagram (cut to `bufsize` bytes, the rest discarded)."""
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        with self._rt.lock:
            deadline = self._deadline(self._read_timeout)
            sock = self._sock
            while True:
                self._check_open()
                while sock.can_recv():
                    if peek:
                        data, src = sock.peek_from()
                        if self._peer is None or src == self._peer:
                            return data[:bufsize], _to_address(src, self._v6)
                        sock.recv_from(0)
                        continue
                    data, src, _truncated = sock.recv_from(bufsize)
                    if self._peer is None or src == self._peer:
                        self._refresh()
                        return data, _to_address(src, self._v6)
                self._refresh()
                self._wait(deadline, nonblocking)

    recvfrom = recv_from

    def recv(self, bufsize: int) -> bytes:
        return self.recv_from(bufsize)[0]

    def recv_from_into(self, buf, nbytes: int = 0, *,
                       nonblocking: bool | None = None) -> tuple[int, Address]:
        """Receive one datagram into `buf` (its first `nbytes`, 0: all of it)."""
        mv = memoryview(buf).cast("B")
        if nbytes:
            if nbytes < 0 or nbytes > len(mv):
                raise ValueError("nbytes is greater than the length of the buffer")
            mv = mv[:nbytes]
        data, addr = self.recv_from(len(mv), nonblocking=nonblocking)
        mv[:len(data)] = data
        return len(data), addr

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close; threads blocked in this socket get OSError(EBADF). Idempotent."""
        with self._rt.lock:
            if self._closed:
                return
            self._closed = True
            self._sock.set_waker(None)
            self._sock.close()
            if self._handle in self._rt.sockets:
                self._rt.sockets.remove(self._handle)
            self._cond.notify_all()
            self._refresh()
            self._release_readiness()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._sock.endpoint}"
        return f"<netstack.net.UdpSocket {state}>"


# -- TCP ----------------------------------------------------------------------------------
_TCP_ERRORS = {
    "refused": (ConnectionRefusedError, errno.ECONNREFUSED, "Connection refused"),
    "reset": (ConnectionResetError, errno.ECONNRESET, "Connection reset by peer"),
    "timed out": (TimeoutError, errno.ETIMEDOUT, "Connection timed out"),
}


def tcp_error(what: str) -> OSError:
    """The OSError for a TcpSocket's `error` ("refused", "reset", "timed out")."""
    cls, code, text = _TCP_ERRORS.get(what, (OSError, errno.EIO, what))
    return cls(code, text)


def _add(runtime: Runtime, sock) -> int:
    """Add to the runtime's table (lock held); a full table is EMFILE, as when a process
    has opened all the files it may."""
    try:
        return runtime.sockets.add(sock)
    except TableFull as e:
        raise OSError(errno.EMFILE, f"Too many open sockets: {e}") from None


def _tcp_port_in_use(runtime: Runtime, ip: IpAddress, port: int, reuse_addr: bool,
                     remote=None, v6only: bool = False) -> bool:
    """Does a TCP socket of the runtime hold `port` on `ip` (the dual-stack rules of
    `netstack.socket.addr`)? With `reuse_addr` (Linux's SO_REUSEADDR) only a listener or a
    connection to the same `remote` clashes; without it any open socket on the port
    (TIME-WAIT included) does."""
    ip = _addr.unmap(ip)
    if remote is not None and reuse_addr:
        # with SO_REUSEADDR only a listener or the same connection clashes: look those up
        conns, listeners = runtime.sockets.tcp_lookup(port, remote[0], remote[1])
        candidates = (*conns, *listeners)
    else:
        candidates = tuple(runtime.sockets.tcp_ports.get(port, ()))  # this port only
    for other in candidates:
        if not other.is_open:
            continue
        ep = other.local_endpoint
        if ep is None or ep[1] != port:
            continue
        if not _addr.overlaps(ep[0], getattr(other, "v6only", False), ip, v6only):
            continue
        oremote = getattr(other, "remote_endpoint", None)
        if oremote is None or not reuse_addr or (remote is not None and oremote == remote):
            return True
    return False


def tcp_ephemeral_port(runtime: Runtime, ip: IpAddress = _ANY, v6only: bool = False) -> int:
    """A TCP port free on `ip` (lock held), from 49152-65535."""
    span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
    start = _rng.randrange(span)
    for i in range(span):
        port = EPHEMERAL_FIRST + (start + i) % span
        if not _tcp_port_in_use(runtime, ip, port, False, v6only=v6only):
            return port
    raise OSError(errno.EADDRINUSE, "no free ephemeral TCP port")


def _shut_how(how) -> int:
    if isinstance(how, str):
        try:
            return _SHUT_NAMES[how.lower()]
        except KeyError:
            raise ValueError(f"shutdown: {how!r} is not read/write/both") from None
    how = int(how)
    if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
        raise OSError(errno.EINVAL, "Invalid argument")
    return how


class TcpStream(_Waitable):
    """One TCP connection usable from any thread: `TcpStream.connect(runtime, addr)` or
    from `TcpListener.accept()`.

    Reads return b"" at EOF (the peer's FIN, or after `shutdown("read")`); a connection
    reset raises ConnectionResetError once (later reads see EOF, writes BrokenPipeError).
    `close()` sends a FIN after the queued data (a RST if received data was never read, as
    Linux does); the runtime keeps the connection until the FIN handshake is done."""

    def __init__(self, runtime: Runtime, sock: _tcp.TcpSocket, handle: int) -> None:
        super().__init__(runtime)
        self._sock = sock
        self._handle = handle
        self._error_taken = False
        self._shut_wr = False
        self._linger_abort = False
        self._v6 = False  # an IPv6 socket (addresses shown as SocketAddrV6)
        sock.set_waker(_weak_waker(self))

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def connect(cls, runtime: Runtime, addr: Address, timeout: float | None = None, *,
                local_addr: Address | None = None, nodelay: bool = False,
                keep_alive: float | None = None, transparent: bool = False,
                **socket_options) -> TcpStream:
        """Open a connection to `addr`, waiting at most `timeout` seconds (None: until the
        SYN retries run out). `socket_options` go to `netstack.socket.tcp.TcpSocket`
        (rx_buffer_size, tx_buffer_size, congestion, ...). `transparent` (Linux's
        IP_TRANSPARENT): `local_addr` need not be ours — host forwarding connects from the
        real client's address; the peer's answers must reach us (it routes via us, and the
        gateway makes the interface take unicast to any address)."""
        if timeout is not None and timeout <= 0:
            raise ValueError("a connect timeout must be positive or None")
        stream = cls._open(runtime, addr, local_addr, nodelay=nodelay, keep_alive=keep_alive,
                           transparent=transparent, **socket_options)
        stream._finish_connect(cls._deadline(timeout))
        return stream

    @classmethod
    def _open(cls, runtime: Runtime, addr: Address, local_addr: Address | None = None, *,
              reuse_addr: bool = False, nodelay: bool = False, keep_alive: float | None = None,
              readiness: Readiness | None = None, v6: bool = False, v6only: bool = False,
              transparent: bool = False, **socket_options) -> TcpStream:
        """Queue the SYN and return at once (the stream is connecting). The stream is an
        IPv6 socket if `addr` or `local_addr` is IPv6 (IPv4-mapped included), or `v6`."""
        rip, rport = _endpoint(addr)
        lip, lport = _endpoint(local_addr) if local_addr is not None else (_ANY, 0)
        is_v6 = v6 or rip.version == 6 or lip.version == 6
        rip = _addr.unmap(rip)
        if rport == 0 or rip.is_unspecified:
            raise OSError(errno.EINVAL, f"cannot connect to {addr!r}")
        lip = _addr.unmap(lip)
        if lip.is_unspecified:
            if rip.version == 6 and not is_v6:
                raise OSError(errno.EAFNOSUPPORT, "an IPv4 socket cannot reach an IPv6 address")
            if rip.version == 4 and v6only:
                raise OSError(errno.ENETUNREACH, "Network is unreachable")
        elif lip.version != rip.version:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        sock = _tcp.TcpSocket(nagle=not nodelay, keep_alive=keep_alive, **socket_options)
        with runtime.lock:
            if not transparent:
                _check_local(runtime, lip)
            if lip.is_unspecified:
                # the interface's source address selection for the destination's family
                source_for = getattr(runtime.iface, "_source_for" if rip.version == 4
                                     else "_source6_for", None)
                src = source_for(rip) if source_for is not None else None
                if src is None:
                    raise OSError(errno.ENETUNREACH, "Network is unreachable")
                lip = src
            if lport and _tcp_port_in_use(runtime, lip, lport, reuse_addr, (rip, rport)):
                raise OSError(errno.EADDRINUSE, "Address already in use")
            handle = _add(runtime, sock)
            try:
                sock.connect(runtime.clock(), (lip, lport), (rip, rport))
            except AddrInUse:
                runtime.sockets.remove(handle)
                raise OSError(errno.EADDRINUSE, "Address already in use") from None
            except Unaddressable as e:
                runtime.sockets.remove(handle)
                raise OSError(errno.EINVAL, str(e)) from None
            stream = cls(runtime, sock, handle)
            stream._v6 = is_v6
            if readiness is not None:
                stream._use_readiness(readiness)
        runtime.wake()
        return stream

    def _finish_connect(self, deadline: float | None, nonblocking: bool = False) -> None:
        """Wait until the handshake is done; on failure close and raise."""
        with self._rt.lock:
            try:
                while True:
                    self._check_open()
                    sock = self._sock
                    if sock.state in SYNCHRONIZED:
                        return
                    if sock.state is State.CLOSED:
                        self._error_taken = True
                        raise tcp_error(sock.error or "refused")
                    self._wait(deadline, nonblocking)
            except BlockingIOError:
                raise
            except BaseException:
                self._abort_close()
                raise

    @property
    def connecting(self) -> bool:
        return self._sock.state in _CONNECTING and not self._closed

    # -- state ----------------------------------------------------------------------------
    def _pending_error(self) -> str | None:
        err = self._sock.error
        return None if err is None or self._error_taken else err

    def take_error(self) -> OSError | None:
        """The pending error (once), as std's `take_error`; None if there is none."""
        with self._rt.lock:
            err = self._pending_error()
            if err is None:
                return None
            self._error_taken = True
            self._refresh()
            return tcp_error(err)

    def _raise_pending(self) -> None:
        err = self._pending_error()
        if err is not None:
            self._error_taken = True
            self._refresh()
            raise tcp_error(err)

    def _readiness(self) -> tuple[bool, bool]:
        if self._closed:
            return True, True
        s = self._sock
        if self._pending_error() is not None:
            return True, True
        if s.state in _CONNECTING:
            return False, False
        readable = s.can_recv() or not s.may_recv
        # writable with a low-water mark (a quarter of the buffer free), as Linux's
        # sk_stream_is_writeable, so a selecting writer is not woken for every ACK
        writable = not s.may_send or \
            s.tx_capacity - s.send_queue >= max(1, s.tx_capacity // 4)
        return readable, writable

    def local_addr(self) -> Address:
        with self._rt.lock:
            self._check_open()
            ep = self._sock.local_endpoint
            if ep is None:
                ep = (_ANY6 if self._v6 else _ANY, 0)
            return _to_address(ep, self._v6)

    def peer_addr(self) -> Address:
        with self._rt.lock:
            self._check_open()
            ep = self._sock.remote_endpoint
            if ep is None or self._sock.state not in SYNCHRONIZED:
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
            return _to_address(ep, self._v6)

    @property
    def family6(self) -> bool:
        """Is this an IPv6 socket (addresses shown as SocketAddrV6)?"""
        return self._v6

    def set_nodelay(self, nodelay: bool) -> None:
        with self._rt.lock:
            self._sock.set_nodelay(bool(nodelay))
        self._rt.wake()

    def nodelay(self) -> bool:
        return not self._sock.nagle

    def set_keepalive(self, interval: float | None) -> None:
        """Keep-alive probes after `interval` idle seconds (None: off)."""
        with self._rt.lock:
            self._sock.set_keep_alive(interval)
        self._rt.wake()

    def set_linger_abort(self, abort: bool) -> None:
        """SO_LINGER with a zero timeout: `close()` resets the connection."""
        self._linger_abort = bool(abort)

    @property
    def state(self) -> State:
        return self._sock.state

    # -- reading --------------------------------------------------------------------------
    def read(self, n: int = 65536, *, nonblocking: bool | None = None,
             peek: bool = False) -> bytes:
        """Up to `n` bytes; b"" at EOF. Blocks until some arrive (or the read timeout)."""
        if n < 0:
            raise ValueError("negative buffersize in recv")
        with self._rt.lock:
            deadline = self._deadline(self._read_timeout)
            while True:
                self._check_open()
                s = self._sock
                if s.can_recv() and n:
                    if peek:
                        return s.peek(n)
                    data = s.recv(n)
                    self._after_read()
                    return data
                self._raise_pending()
                if n == 0 or (s.state not in _CONNECTING and not s.may_recv):
                    return b""
                self._wait(deadline, nonblocking)

    recv = read

    def read_into(self, buf, *, nonblocking: bool | None = None) -> int:
        """Read into `buf`; the number of bytes (0 at EOF or for an empty buffer)."""
        mv = memoryview(buf).cast("B")
        with self._rt.lock:
            deadline = self._deadline(self._read_timeout)
            while True:
                self._check_open()
                s = self._sock
                if s.can_recv() and len(mv):
                    n = s.recv_into(mv)
                    self._after_read()
                    return n
                self._raise_pending()
                if not len(mv) or (s.state not in _CONNECTING and not s.may_recv):
                    return 0
                self._wait(deadline, nonblocking)

    recv_into = read_into

    def _after_read(self) -> None:
        self._refresh()
        self._rt.wake()  # the window opened: the runtime may owe the peer an update

    def read_exact(self, n: int) -> bytes:
        """Exactly `n` bytes; EOF first raises EOFError ("failed to fill whole buffer")."""
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        while got < n:
            k = self.read_into(mv[got:])
            if k == 0:
                raise EOFError(f"failed to fill whole buffer: {got} of {n} bytes")
            got += k
        return bytes(buf)

    def read_to_end(self) -> bytes:
        out = bytearray()
        while chunk := self.read(1 << 20):
            out += chunk
        return bytes(out)

    # -- writing --------------------------------------------------------------------------
    def write(self, data, *, nonblocking: bool | None = None,
              deadline: float | None = None) -> int:
        """Queue as much of `data` as fits, waiting for room if none; return the count."""
        mv = memoryview(data).cast("B")
        if not len(mv):
            with self._rt.lock:
                self._check_open()
            return 0
        with self._rt.lock:
            if deadline is None:
                deadline = self._deadline(self._write_timeout)
            while True:
                self._check_open()
                s = self._sock
                self._raise_pending()
                if self._shut_wr:
                    raise BrokenPipeError(errno.EPIPE, "Broken pipe")
                if s.state not in _CONNECTING:
                    if not s.may_send:
                        raise BrokenPipeError(errno.EPIPE, "Broken pipe")
                    n = s.send(mv)
                    if n:
                        self._refresh()
                        break
                self._wait(deadline, nonblocking)
        self._rt.wake()
        return n

    send = write

    def write_all(self, data, *, timeout: float | None = None) -> None:
        """Write everything (one `timeout` for the whole, else the write timeout per
        wait). On an error part of `data` may have been queued."""
        mv = memoryview(data).cast("B")
        deadline = self._deadline(timeout)
        while len(mv):
            n = self.write(mv, deadline=deadline)
            mv = mv[n:]

    def flush(self) -> None:
        """A no-op, as std's: written bytes are queued for the runtime already."""
        with self._rt.lock:
            self._check_open()

    def wait_sent(self, timeout: float | None = None) -> None:
        """Block until everything written was acknowledged by the peer."""
        with self._rt.lock:
            deadline = self._deadline(timeout)
            while self._sock.send_queue and self._sock.state in SYNCHRONIZED:
                self._raise_pending()
                self._wait(deadline, False)

    # -- closing --------------------------------------------------------------------------
    def shutdown(self, how="both") -> None:
        """Shut down reading ("read"/SHUT_RD: later reads see EOF), writing
        ("write"/SHUT_WR: a FIN after the queued data) or both."""
        how = _shut_how(how)
        with self._rt.lock:
            self._check_open()
            s = self._sock
            if s.state not in SYNCHRONIZED and s.state not in _CONNECTING:
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
            if how in (SHUT_RD, SHUT_RDWR):
                s.shutdown_read()
            if how in (SHUT_WR, SHUT_RDWR) and not self._shut_wr:
                self._shut_wr = True
                s.close()
            self._cond.notify_all()
            self._refresh()
        self._rt.wake()

    def _abort_close(self) -> None:
        """Close with a RST (lock held)."""
        self._linger_abort = True
        self.close()

    def close(self) -> None:
        """Close; threads blocked in this stream get OSError(EBADF). Idempotent."""
        with self._rt.lock:
            if self._closed:
                return
            self._closed = True
            s = self._sock
            s.set_waker(None)
            if self._linger_abort or s.recv_queue:
                s.abort()
            else:
                s.close()
            self._cond.notify_all()
            self._refresh()
            self._release_readiness()
        self._rt.release_socket(self._handle)

    def __repr__(self) -> str:
        s = self._sock
        state = "closed" if self._closed else f"{s.state} {s.local_endpoint} -> {s.remote_endpoint}"
        return f"<netstack.net.TcpStream {state}>"


class TcpListener(_Waitable):
    """A listening TCP socket usable from any thread: `TcpListener.bind(runtime, addr)`."""

    def __init__(self, runtime: Runtime, listener: _tcpl.TcpListener, handle: int) -> None:
        super().__init__(runtime)
        self._listener = listener
        self._handle = handle
        self._v6 = False  # an IPv6 socket (addresses shown as SocketAddrV6)
        listener.set_waker(_weak_waker(self))

    @classmethod
    def bind(cls, runtime: Runtime, addr: Address = ("0.0.0.0", 0), backlog: int = 128, *,
             reuse_addr: bool = True, readiness: Readiness | None = None, v6only: bool = False,
             **socket_options) -> TcpListener:
        """Listen on `addr` (port 0: an ephemeral port; "::": connections of both
        families unless `v6only`). `reuse_addr` (std sets SO_REUSEADDR) lets a port with
        connections left (TIME-WAIT) be bound again; another listener on the port always
        clashes. `socket_options` are for the accepted `TcpSocket`s (rx_buffer_size,
        tx_buffer_size, nagle, ...)."""
        ip, port = _endpoint(addr)
        if backlog <= 0:
            backlog = 1
        listener = _tcpl.TcpListener(backlog, **socket_options)
        with runtime.lock:
            _check_local(runtime, ip)
            if port == 0:
                port = tcp_ephemeral_port(runtime, ip, v6only)
            elif _tcp_port_in_use(runtime, ip, port, reuse_addr, v6only=v6only):
                raise OSError(errno.EADDRINUSE, "Address already in use")
            try:
                listener.listen((ip, port), backlog, v6only=v6only)
            except Unaddressable as e:
                raise OSError(errno.EINVAL, str(e)) from None
            handle = _add(runtime, listener)
            obj = cls(runtime, listener, handle)
            obj._v6 = ip.version == 6
            if readiness is not None:
                obj._use_readiness(readiness)
        runtime.wake()
        return obj

    def _readiness(self) -> tuple[bool, bool]:
        if self._closed:
            return True, True
        return self._listener.can_accept(), False

    def set_timeout(self, secs: float | None) -> None:
        """How long `accept` waits (None: forever)."""
        self.set_read_timeout(secs)

    def set_backlog(self, backlog: int) -> None:
        with self._rt.lock:
            self._listener.backlog = max(1, backlog)

    def local_addr(self) -> Address:
        with self._rt.lock:
            self._check_open()
            return _to_address(self._listener.local_endpoint, self._v6)

    @property
    def family6(self) -> bool:
        """Is this an IPv6 socket (addresses shown as SocketAddrV6)?"""
        return self._v6

    @property
    def v6only(self) -> bool:
        return self._listener.v6only

    def accept(self, *, nonblocking: bool | None = None) -> tuple[TcpStream, Address]:
        """The next connection and its peer's address; blocks until one is established."""
        with self._rt.lock:
            deadline = self._deadline(self._read_timeout)
            while True:
                self._check_open()
                child = self._listener.accept()
                if child is not None:
                    self._refresh()
                    stream = TcpStream(self._rt, child, child.handle)
                    stream._v6 = self._v6
                    return stream, _to_address(child.remote_endpoint, self._v6)
                self._refresh()
                self._wait(deadline, nonblocking)

    def incoming(self) -> Iterator[TcpStream]:
        """Accepted streams, forever (until `close`, which ends the iteration)."""
        while True:
            try:
                stream, _ = self.accept()
            except OSError as e:
                if self._closed and e.errno == errno.EBADF:
                    return
                raise
            yield stream

    def close(self) -> None:
        """Stop listening: unaccepted connections are reset; accepted ones carry on."""
        with self._rt.lock:
            if self._closed:
                return
            self._closed = True
            self._listener.set_waker(None)
            self._listener.close()
            self._cond.notify_all()
            self._refresh()
            self._release_readiness()
        self._rt.release_socket(self._handle)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._listener.local_endpoint}"
        return f"<netstack.net.TcpListener {state}>"


__all__ = [
    "Address",
    "Readiness",
    "SHUT_RD",
    "SHUT_RDWR",
    "SHUT_WR",
    "SocketAddr",
    "SocketAddrV4",
    "SocketAddrV6",
    "TcpListener",
    "TcpStream",
    "UdpSocket",
    "tcp_error",
    "tcp_ephemeral_port",
]
