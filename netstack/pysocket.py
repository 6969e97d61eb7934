"""A class compatible with Python's `socket.socket`, on our stack, so stdlib code runs on it.

    from netstack.pysocket import socket, set_default_runtime

    set_default_runtime(rt)          # or socket(..., runtime=rt)
    with socket() as s:              # AF_INET, SOCK_STREAM
        s.settimeout(5.0)
        s.connect(("10.0.2.2", 80))
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        reply = s.makefile("rb").read()

What it is. `socket(family=AF_INET, type=SOCK_STREAM, proto=0, *, runtime=None)` wraps the
std::net-style sockets of `netstack.net`: a `TcpStream` once connected or accepted, a
`TcpListener` once listening, a `UdpSocket` (SOCK_DGRAM) once bound (sending or connecting
binds an ephemeral port, as the kernel does). Calls follow CPython's semantics: timeouts
(`settimeout`, `setdefaulttimeout`; `sendall`'s timeout is for the whole call), non-blocking
mode (BlockingIOError; `connect` raises EINPROGRESS and completes in the background, then
SO_ERROR tells the outcome), `makefile` through `socket.SocketIO` with the same reference
counting (a file made by `makefile` keeps the connection open after `close()`), and the
OSErrors of `netstack.net` (ConnectionRefusedError, ConnectionResetError, BrokenPipeError,
TimeoutError, EADDRINUSE, EADDRNOTAVAIL, ENOTCONN, EISCONN...).

`fileno()` is the readiness fd of `netstack.net` (see its docstring): readable when a read
or an accept would not block, writable when a send would not block or a non-blocking
connect has finished. It is for `selectors`/`select`/asyncio only; never read, write,
`os.sendfile` or `socket.fromfd` it (so not `loop.sock_sendfile` or `transport` sendfile).
`detach()` and `dup()` are not supported (there is no kernel socket).

Names. Hosts are IP literals, or names added with `add_host(name, ip)` (or `patch(...,
hosts=...)`); our stack has no resolver, and the host's resolver knows nothing of our
network, so any other name raises `socket.gaierror`.

IPv6 (AF_INET6), as on Linux. Addresses are `(host, port)` or `(host, port, flowinfo,
scope_id)` in, 4-tuples out (`netstack.net.SocketAddrV6`); a zone ("fe80::1%eth0") or a
scope id is accepted and ignored (one interface). A socket bound to "::" (or "") takes both
families unless `setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 1)` was set before binding; IPv4
peers then show as "::ffff:a.b.c.d", and such mapped addresses are accepted as
destinations (sent as IPv4). An IPv4 literal or name given to an AF_INET6 socket is taken
as its mapped address; an IPv6 literal given to an AF_INET socket raises gaierror.
`getaddrinfo` answers AF_INET6 for IPv6 literals (and `add_host` names bound to one).

Options. SO_REUSEADDR (a port whose old connections linger in TIME-WAIT can be bound),
TCP_NODELAY, SO_KEEPALIVE (with TCP_KEEPIDLE as the idle time, default 7200 s),
SO_RCVBUF/SO_SNDBUF (buffer sizes of sockets opened afterwards; read back as set), SO_LINGER
(on with a zero time: `close()` resets), SO_ERROR, SO_TYPE, SO_ACCEPTCONN, SO_DOMAIN,
SO_PROTOCOL; SO_REUSEPORT, SO_BROADCAST, SO_OOBINLINE, TCP_KEEPINTVL, TCP_KEEPCNT, IP_TOS and
IP_TTL are accepted and ignored; anything else raises OSError(ENOPROTOOPT).

Running stdlib servers and clients on the stack:

- `patch(runtime)`: a context manager that, for its duration, replaces `socket.socket`,
  `socket.create_connection`, `socket.getfqdn` and `socket.getaddrinfo` (our names first,
  then the host's resolver) in the `socket` module and in every module that imported them
  by name (`http.client` looks `socket.create_connection` up per connection), so
  `socketserver`, `http.server`, `http.client`, `urllib.request` and asyncio's own
  `open_connection` use our stack. Patches nest. It is process-wide: every thread sees it.
  AF_UNIX sockets and sockets made from an fd (`socket.socketpair`, `socket.fromfd`,
  asyncio's self-pipe) stay real kernel sockets; AF_INET6 sockets are ours too (an
  `http.server` with `address_family = AF_INET6` serves both families on "::").
- `make_server_class(socketserver.TCPServer, runtime)`: a subclass whose listening socket
  is ours, with no global patching (for UDPServer, HTTPServer, ThreadingHTTPServer too).
- asyncio: `await open_connection(runtime, host, port)` and `await start_server(cb,
  runtime, host, port)` return asyncio streams (the loop watches our readiness fds); the
  `loop.sock_*` coroutines work on a non-blocking `socket` of ours as on a kernel socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import socket as _std
import struct
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address

from netstack import net as _net
from netstack.net import Readiness, TcpListener, TcpStream, UdpSocket
from netstack.runtime import Runtime
from netstack.socket.tcp.state import SYNCHRONIZED

# -- the names stdlib code takes from the socket module -----------------------------------
AF_INET = _std.AF_INET
AF_INET6 = _std.AF_INET6
AF_UNIX = _std.AF_UNIX
SOCK_STREAM = _std.SOCK_STREAM
SOCK_DGRAM = _std.SOCK_DGRAM
SOCK_NONBLOCK = getattr(_std, "SOCK_NONBLOCK", 0)
SOCK_CLOEXEC = getattr(_std, "SOCK_CLOEXEC", 0)
IPPROTO_IP = _std.IPPROTO_IP
IPPROTO_TCP = _std.IPPROTO_TCP
IPPROTO_UDP = _std.IPPROTO_UDP
IPPROTO_IPV6 = _std.IPPROTO_IPV6
IPV6_V6ONLY = _std.IPV6_V6ONLY
SOL_SOCKET = _std.SOL_SOCKET
SO_REUSEADDR = _std.SO_REUSEADDR
SO_REUSEPORT = getattr(_std, "SO_REUSEPORT", 15)
SO_KEEPALIVE = _std.SO_KEEPALIVE
SO_RCVBUF = _std.SO_RCVBUF
SO_SNDBUF = _std.SO_SNDBUF
SO_ERROR = _std.SO_ERROR
SO_TYPE = _std.SO_TYPE
SO_LINGER = _std.SO_LINGER
SO_BROADCAST = _std.SO_BROADCAST
SO_ACCEPTCONN = _std.SO_ACCEPTCONN
SO_OOBINLINE = _std.SO_OOBINLINE
SO_DOMAIN = getattr(_std, "SO_DOMAIN", 39)
SO_PROTOCOL = getattr(_std, "SO_PROTOCOL", 38)
TCP_NODELAY = _std.TCP_NODELAY
TCP_KEEPIDLE = getattr(_std, "TCP_KEEPIDLE", 4)
TCP_KEEPINTVL = getattr(_std, "TCP_KEEPINTVL", 5)
TCP_KEEPCNT = getattr(_std, "TCP_KEEPCNT", 6)
IP_TOS = _std.IP_TOS
IP_TTL = _std.IP_TTL
SHUT_RD = _std.SHUT_RD
SHUT_WR = _std.SHUT_WR
SHUT_RDWR = _std.SHUT_RDWR
MSG_PEEK = _std.MSG_PEEK
MSG_DONTWAIT = getattr(_std, "MSG_DONTWAIT", 0x40)
SOMAXCONN = _std.SOMAXCONN
error = OSError
timeout = TimeoutError
gaierror = _std.gaierror
getdefaulttimeout = _std.getdefaulttimeout
setdefaulttimeout = _std.setdefaulttimeout
SocketIO = _std.SocketIO
_GLOBAL_DEFAULT_TIMEOUT = _std._GLOBAL_DEFAULT_TIMEOUT

_real_socket = _std.socket
_real_create_connection = _std.create_connection
_real_getfqdn = _std.getfqdn
_real_getaddrinfo = _std.getaddrinfo

_IGNORED_OPTIONS = {
    (SOL_SOCKET, SO_REUSEPORT), (SOL_SOCKET, SO_BROADCAST), (SOL_SOCKET, SO_OOBINLINE),
    (IPPROTO_TCP, TCP_KEEPINTVL), (IPPROTO_TCP, TCP_KEEPCNT), (IPPROTO_IP, IP_TOS),
    (IPPROTO_IP, IP_TTL),
}
_STORED_OPTIONS = {
    (SOL_SOCKET, SO_REUSEADDR), (SOL_SOCKET, SO_KEEPALIVE), (SOL_SOCKET, SO_RCVBUF),
    (SOL_SOCKET, SO_SNDBUF), (IPPROTO_TCP, TCP_NODELAY), (IPPROTO_TCP, TCP_KEEPIDLE),
    (IPPROTO_IPV6, IPV6_V6ONLY),
} | _IGNORED_OPTIONS
_TCP_ONLY = {IPPROTO_TCP}
TCP_BUFFER = 256 * 1024
UDP_BUFFER = 1 << 20
DEFAULT_BACKLOG = min(SOMAXCONN, 128)

# -- the default runtime and names ---------------------------------------------------------
_default_runtime: Runtime | None = None
_hosts: dict[str, str] = {}


def set_default_runtime(runtime: Runtime | None) -> None:
    """The runtime `socket()` uses when none is given (None: no default)."""
    global _default_runtime
    _default_runtime = runtime


def get_default_runtime() -> Runtime | None:
    return _default_runtime


def add_host(name: str, ip: str) -> None:
    """Resolve `name` to the IP address `ip` (our stack has no resolver)."""
    _hosts[name.lower()] = str(ip_address(ip))


def _literal(host: str) -> str | None:
    try:
        return str(ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


def _resolve(host, hosts: Mapping[str, str] = _hosts, v6: bool = False) -> str:
    """An address literal for `host`, in the socket's family: for AF_INET6 (`v6`) IPv4
    answers come back IPv4-mapped; for AF_INET an IPv6 one raises gaierror."""
    if host in ("", None):
        return "::" if v6 else "0.0.0.0"
    if host == "<broadcast>" and not v6:
        return "255.255.255.255"
    if not isinstance(host, str):
        raise TypeError(f"str expected for a host, not {type(host).__name__}")
    ip = _literal(host) or hosts.get(host.lower()) or _hosts.get(host.lower())
    if ip is None:
        raise gaierror(_std.EAI_NONAME, "Name or service not known")
    if ":" in ip:
        if not v6:
            raise gaierror(_std.EAI_ADDRFAMILY if hasattr(_std, "EAI_ADDRFAMILY")
                           else _std.EAI_FAMILY, "Address family for hostname not supported")
        return ip
    return f"::ffff:{ip}" if v6 else ip


def _address(address, hosts: Mapping[str, str] = _hosts, v6: bool = False) -> tuple[str, int]:
    if v6:
        if not isinstance(address, tuple) or not 2 <= len(address) <= 4:
            raise TypeError("AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])")
    elif not isinstance(address, tuple) or len(address) != 2:
        raise TypeError("AF_INET address must be a pair (host, port)")
    host, port = address[:2]
    if not isinstance(port, int):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    return _resolve(host, hosts, v6), port


def getfqdn(name: str = "", hosts: Mapping[str, str] = _hosts) -> str:
    """`socket.getfqdn` without the host's resolver: a name from `add_host` for an address
    we know, else `name` itself."""
    if name in ("", "0.0.0.0", "::"):
        return "localhost"
    for known, ip in list(hosts.items()) + list(_hosts.items()):
        if ip == name:
            return known
    return name


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0,
                hosts: Mapping[str, str] = _hosts) -> list:
    """`socket.getaddrinfo` for IP literals and `add_host` names (AF_INET answers for IPv4,
    AF_INET6 ones, with 4-tuple addresses, for IPv6 or when AF_INET6 is asked); other names
    go to the host's resolver (their answers are of no use on our stack)."""
    if family not in (0, AF_INET, AF_INET6) or \
            (host is not None and not isinstance(host, str)):
        return _real_getaddrinfo(host, port, family, type, proto, flags)
    try:
        ip = _resolve(host, hosts, family == AF_INET6)
    except gaierror:
        return _real_getaddrinfo(host, port, family, type, proto, flags)
    v6 = ":" in ip
    if port is None:
        port = 0
    elif isinstance(port, (str, bytes)):
        port = port.decode() if isinstance(port, bytes) else port
        port = int(port) if port.isdigit() else _std.getservbyname(port)
    kinds = [type] if type else [SOCK_STREAM, SOCK_DGRAM]
    fam = _std.AddressFamily.AF_INET6 if v6 else _std.AddressFamily.AF_INET
    addr = (ip, port, 0, 0) if v6 else (ip, port)
    return [(fam, _std.SocketKind(kind),
             proto or (IPPROTO_TCP if kind == SOCK_STREAM else IPPROTO_UDP), "", addr)
            for kind in kinds]


# -- the socket ---------------------------------------------------------------------------
class socket:
    """`socket.socket` on a netstack `Runtime` (AF_INET or AF_INET6; SOCK_STREAM or
    SOCK_DGRAM)."""

    _bound_runtime: Runtime | None = None  # set on the classes `bound_socket_class` makes
    _hosts: Mapping[str, str] = {}

    def __new__(cls, family=-1, type=-1, proto=-1, fileno=None, *, runtime=None):
        if fileno is not None or family not in (-1, AF_INET, AF_INET6):
            # socketpair(), fromfd(), AF_UNIX... under `patch`: a real kernel socket
            return _real_socket(family, type, proto, fileno)
        return super().__new__(cls)

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None, *,
                 runtime: Runtime | None = None) -> None:
        if family == -1:
            family = AF_INET
        if family not in (AF_INET, AF_INET6):
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        if type == -1:
            type = SOCK_STREAM
        flags = type & (SOCK_NONBLOCK | SOCK_CLOEXEC)
        kind = type & ~flags
        if kind not in (SOCK_STREAM, SOCK_DGRAM):
            raise OSError(errno.ESOCKTNOSUPPORT, "Socket type not supported")
        if proto in (-1, None):
            proto = 0
        if proto not in (0, IPPROTO_TCP if kind == SOCK_STREAM else IPPROTO_UDP):
            raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
        rt = runtime or self._bound_runtime or _default_runtime
        if rt is None:
            raise OSError(errno.ENETDOWN, "no netstack runtime: pass runtime= or call "
                                          "netstack.pysocket.set_default_runtime(rt)")
        self._rt = rt
        self._family = _std.AddressFamily(family)
        self._type = _std.SocketKind(kind)
        self._proto = proto
        self._timeout: float | None = 0.0 if flags & SOCK_NONBLOCK else getdefaulttimeout()
        self._impl: TcpStream | TcpListener | UdpSocket | None = None
        self._local: tuple[IPv4Address | IPv6Address, int] | None = None  # not listening
        self._v6 = family == AF_INET6
        self._ready: Readiness | None = None
        self._opts: dict[tuple[int, int], int] = {}
        self._linger: tuple[int, int] = (0, 0)
        self._closed = False  # close() called (CPython's _closed)
        self._real_closed = False  # the connection is gone too
        self._io_refs = 0

    # -- attributes -----------------------------------------------------------------------
    @property
    def family(self) -> _std.AddressFamily:
        return self._family

    @property
    def type(self) -> _std.SocketKind:
        return self._type

    @property
    def proto(self) -> int:
        return self._proto

    @property
    def runtime(self) -> Runtime:
        return self._rt

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @property
    def _stream(self) -> bool:
        return self._type == SOCK_STREAM

    def __repr__(self) -> str:
        fd = self.fileno() if self._ready is not None else None
        s = (f"<netstack.pysocket.socket{' [closed]' if self._real_closed else ''} fd={fd}, "
             f"family={self._family.name}, type={self._type.name}, proto={self._proto}")
        if not self._real_closed:
            with contextlib.suppress(OSError):
                s += f", laddr={self.getsockname()}"
            with contextlib.suppress(OSError):
                s += f", raddr={self.getpeername()}"
        return s + ">"

    def __enter__(self) -> socket:
        return self

    def __exit__(self, *exc) -> None:
        if not self._closed:
            self.close()

    def __getstate__(self):
        raise TypeError(f"cannot pickle {self.__class__.__name__!r} object")

    # -- readiness ------------------------------------------------------------------------
    def fileno(self) -> int:
        """The readiness fd (see the module docstring); -1 once closed."""
        if self._real_closed:
            return -1
        with self._rt.lock:
            if self._ready is None:
                self._ready = Readiness()
                if self._impl is not None and not self._impl.closed:
                    self._impl._use_readiness(self._ready)
                else:
                    self._idle_readiness()
            return self._ready.fileno()

    def _idle_readiness(self) -> None:
        """The fd of a socket with nothing open: a datagram socket may send."""
        if self._ready is not None:
            self._ready.set(False, not self._stream)

    def _adopt(self, impl) -> None:
        impl.settimeout(self._timeout)
        with self._rt.lock:
            self._impl = impl
            if self._ready is not None:
                impl._use_readiness(self._ready)

    # -- checks ---------------------------------------------------------------------------
    def _check(self) -> None:
        if self._real_closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def _nb(self, flags: int) -> bool | None:
        return True if flags & MSG_DONTWAIT else None

    def _tcp_stream(self) -> TcpStream:
        self._check()
        impl = self._impl
        if not isinstance(impl, TcpStream) or impl.closed:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return impl

    def _udp(self) -> UdpSocket:
        """The datagram socket, bound to an ephemeral port first if need be."""
        self._check()
        if self._impl is None:
            self._bind_udp(("::" if self._v6 else "0.0.0.0", 0))
        return self._impl

    def _bind_udp(self, address) -> None:
        rx = self._opts.get((SOL_SOCKET, SO_RCVBUF), UDP_BUFFER)
        tx = self._opts.get((SOL_SOCKET, SO_SNDBUF), UDP_BUFFER)
        self._adopt(UdpSocket.bind(self._rt, address, rx_bytes=max(rx, 2048),
                                   tx_bytes=max(tx, 65536), v6only=self._v6only))

    @property
    def _v6only(self) -> bool:
        return bool(self._opts.get((IPPROTO_IPV6, IPV6_V6ONLY)))

    def _tcp_options(self) -> dict:
        opts = {
            "rx_buffer_size": max(self._opts.get((SOL_SOCKET, SO_RCVBUF), TCP_BUFFER), 2048),
            "tx_buffer_size": max(self._opts.get((SOL_SOCKET, SO_SNDBUF), TCP_BUFFER), 2048),
            "keep_alive": self._keepalive(),
        }
        return opts

    def _keepalive(self) -> float | None:
        if not self._opts.get((SOL_SOCKET, SO_KEEPALIVE)):
            return None
        return float(self._opts.get((IPPROTO_TCP, TCP_KEEPIDLE), _net.DEFAULT_KEEPALIVE))

    # -- binding, listening, connecting ---------------------------------------------------
    def bind(self, address) -> None:
        self._check()
        host, port = _address(address, self._hosts, self._v6)
        if self._impl is not None or self._local is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        if not self._stream:
            self._bind_udp((host, port))
            return
        ip, port = _net._endpoint((host, port))
        v6only = self._v6only
        if v6only and ip.version == 6 and ip.ipv4_mapped is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        rt = self._rt
        with rt.lock:
            _net._check_local(rt, ip)
            if port == 0:
                port = _net.tcp_ephemeral_port(rt, ip, v6only)
            elif _net._tcp_port_in_use(rt, ip, port, self._reuse_addr, v6only=v6only):
                raise OSError(errno.EADDRINUSE, "Address already in use")
        self._local = (ip, port)

    @property
    def _reuse_addr(self) -> bool:
        return bool(self._opts.get((SOL_SOCKET, SO_REUSEADDR)))

    def listen(self, backlog: int = DEFAULT_BACKLOG) -> None:
        self._check()
        if not self._stream:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        backlog = max(1, min(int(backlog), SOMAXCONN))
        impl = self._impl
        if isinstance(impl, TcpListener):
            impl.set_backlog(backlog)
            return
        if impl is not None and not impl.closed:
            raise OSError(errno.EINVAL, "Invalid argument")
        local = (str(self._local[0]), self._local[1]) if self._local else \
            ("::" if self._v6 else "0.0.0.0", 0)
        opts = self._tcp_options()
        opts["nagle"] = not self._opts.get((IPPROTO_TCP, TCP_NODELAY))
        listener = TcpListener.bind(self._rt, local, backlog, reuse_addr=self._reuse_addr,
                                    v6only=self._v6only, **opts)
        self._adopt(listener)

    def accept(self) -> tuple[socket, tuple[str, int]]:
        self._check()
        impl = self._impl
        if not isinstance(impl, TcpListener):
            raise OSError(errno.EINVAL, "Invalid argument")
        stream, addr = impl.accept()
        sock = type(self)(self._family, self._type, self._proto, runtime=self._rt)
        sock._opts = dict(self._opts)  # inherited, as the kernel does
        sock._linger = self._linger
        if getdefaulttimeout() is None and self._timeout:
            sock._timeout = None  # CPython: accepted sockets block unless a default says
        sock._adopt(stream)
        return sock, addr

    def _accept(self):  # CPython's private name, used by some subclasses
        return self.accept()

    def connect(self, address) -> None:
        self._check()
        addr = _address(address, self._hosts, self._v6)
        if not self._stream:
            self._udp().connect(addr)
            return
        impl = self._impl
        if isinstance(impl, TcpListener):
            raise OSError(errno.EINVAL, "Invalid argument")
        if isinstance(impl, TcpStream) and not impl.closed:
            if impl.connecting:
                if self._timeout == 0:
                    raise OSError(errno.EALREADY, "Operation already in progress")
                self._finish(impl)
                return
            err = impl.take_error()
            if err is not None:
                self._drop_stream()
                raise err
            if impl.state in SYNCHRONIZED:
                raise OSError(errno.EISCONN, "Transport endpoint is already connected")
            self._drop_stream()
        local = (str(self._local[0]), self._local[1]) if self._local else None
        stream = TcpStream._open(self._rt, addr, local, reuse_addr=self._reuse_addr,
                                 nodelay=bool(self._opts.get((IPPROTO_TCP, TCP_NODELAY))),
                                 v6=self._v6, v6only=self._v6only, **self._tcp_options())
        self._adopt(stream)
        if self._linger == (1, 0):
            stream.set_linger_abort(True)
        if self._timeout == 0:
            raise BlockingIOError(errno.EINPROGRESS, "Operation now in progress")
        self._finish(stream)

    def _finish(self, stream: TcpStream) -> None:
        try:
            stream._finish_connect(stream._deadline(self._timeout))
        except OSError:
            self._drop_stream()
            raise

    def _drop_stream(self) -> None:
        impl, self._impl = self._impl, None
        if impl is not None:
            impl.close()
        with self._rt.lock:
            self._idle_readiness()

    def connect_ex(self, address) -> int:
        try:
            self.connect(address)
        except gaierror:
            raise
        except TimeoutError as e:
            return e.errno or errno.EWOULDBLOCK
        except OSError as e:
            return e.errno or errno.EIO
        return 0

    # -- data -----------------------------------------------------------------------------
    def send(self, data, flags: int = 0) -> int:
        self._check()
        if not self._stream:
            return self._udp().send(data)
        impl = self._impl
        if not isinstance(impl, TcpStream) or impl.closed:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return impl.write(data, nonblocking=self._nb(flags))

    def sendall(self, data, flags: int = 0) -> None:
        if not self._stream:
            self.send(data, flags)
            return
        stream = self._tcp_stream()
        mv = memoryview(data).cast("B")
        deadline = stream._deadline(self._timeout or None)
        nb = self._nb(flags)
        while len(mv):
            n = stream.write(mv, nonblocking=nb, deadline=deadline)
            mv = mv[n:]

    def sendto(self, data, flags_or_addr, addr=None) -> int:
        address = flags_or_addr if addr is None else addr
        self._check()
        if self._stream:
            return self.send(data)
        return self._udp().send_to(data, _address(address, self._hosts, self._v6),
                                   nonblocking=self._nb(0 if addr is None else flags_or_addr))

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        """Like CPython's fallback: read the file and `sendall` it."""
        if offset:
            file.seek(offset)
        total = 0
        while count is None or total < count:
            want = 65536 if count is None else min(65536, count - total)
            chunk = file.read(want)
            if not chunk:
                break
            self.sendall(chunk)
            total += len(chunk)
        if hasattr(file, "seek"):
            file.seek(offset + total)
        return total

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._check()
        if not self._stream:
            return self._udp().recv_from(bufsize, nonblocking=self._nb(flags),
                                         peek=bool(flags & MSG_PEEK))[0]
        return self._tcp_stream().read(bufsize, nonblocking=self._nb(flags),
                                       peek=bool(flags & MSG_PEEK))

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        self._check()
        mv = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes:
            if nbytes > len(mv):
                raise ValueError("buffer too small for requested bytes")
            mv = mv[:nbytes]
        if not self._stream:
            return self._udp().recv_from_into(mv, nonblocking=self._nb(flags))[0]
        if flags & MSG_PEEK:
            data = self.recv(len(mv), flags)
            mv[:len(data)] = data
            return len(data)
        return self._tcp_stream().read_into(mv, nonblocking=self._nb(flags))

    def recvfrom(self, bufsize: int, flags: int = 0):
        self._check()
        if not self._stream:
            return self._udp().recv_from(bufsize, nonblocking=self._nb(flags),
                                         peek=bool(flags & MSG_PEEK))
        return self.recv(bufsize, flags), None

    def recvfrom_into(self, buffer, nbytes: int = 0, flags: int = 0):
        self._check()
        if not self._stream:
            return self._udp().recv_from_into(buffer, nbytes, nonblocking=self._nb(flags))
        return self.recv_into(buffer, nbytes, flags), None

    # -- files ----------------------------------------------------------------------------
    def makefile(self, mode: str = "r", buffering: int | None = None, *, encoding=None,
                 errors=None, newline=None):
        """As CPython's `socket.makefile` (a `socket.SocketIO` plus io buffering)."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing
        binary = "b" in mode
        rawmode = ("r" if reading else "") + ("w" if writing else "")
        raw = SocketIO(self, rawmode)
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered streams must be binary")
            return raw
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if binary:
            return buffer
        encoding = io.text_encoding(encoding)
        text = io.TextIOWrapper(buffer, encoding, errors, newline)
        text.mode = mode
        return text

    def _decref_socketios(self) -> None:
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            self.close()

    # -- timeouts -------------------------------------------------------------------------
    def settimeout(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value
        if self._impl is not None:
            self._impl.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # -- options --------------------------------------------------------------------------
    def setsockopt(self, level: int, optname: int, value, optlen: int | None = None) -> None:
        self._check()
        key = (level, optname)
        if key == (SOL_SOCKET, SO_LINGER):
            onoff, secs = struct.unpack("ii", bytes(value)[:8])
            self._linger = (1 if onoff else 0, secs)
            if isinstance(self._impl, TcpStream):
                self._impl.set_linger_abort(self._linger == (1, 0))
            return
        if key not in _STORED_OPTIONS or (level in _TCP_ONLY and not self._stream) or \
                (level == IPPROTO_IPV6 and not self._v6):
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        if key == (IPPROTO_IPV6, IPV6_V6ONLY) and (self._impl is not None or self._local):
            raise OSError(errno.EINVAL, "Invalid argument")  # Linux: only before bind
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = int.from_bytes(bytes(value)[:4].ljust(4, b"\0"), sys.byteorder, signed=True)
        value = int(value)
        self._opts[key] = value
        impl = self._impl
        if isinstance(impl, TcpStream) and not impl.closed:
            if key == (IPPROTO_TCP, TCP_NODELAY):
                impl.set_nodelay(bool(value))
            elif key in ((SOL_SOCKET, SO_KEEPALIVE), (IPPROTO_TCP, TCP_KEEPIDLE)):
                impl.set_keepalive(self._keepalive())

    def getsockopt(self, level: int, optname: int, buflen: int | None = None):
        self._check()
        key = (level, optname)
        if key == (SOL_SOCKET, SO_LINGER):
            packed = struct.pack("ii", *self._linger)
            return packed[:buflen] if buflen else self._linger[0]
        if key == (SOL_SOCKET, SO_ERROR):
            value = 0
            if isinstance(self._impl, TcpStream):
                err = self._impl.take_error()
                value = err.errno if err is not None else 0
        elif key == (SOL_SOCKET, SO_TYPE):
            value = int(self._type)
        elif key == (SOL_SOCKET, SO_DOMAIN):
            value = int(self._family)
        elif key == (SOL_SOCKET, SO_PROTOCOL):
            value = self._proto or (IPPROTO_TCP if self._stream else IPPROTO_UDP)
        elif key == (SOL_SOCKET, SO_ACCEPTCONN):
            value = int(isinstance(self._impl, TcpListener) and not self._impl.closed)
        elif key in _STORED_OPTIONS and not (level in _TCP_ONLY and not self._stream) and \
                not (level == IPPROTO_IPV6 and not self._v6):
            default = 0
            if key in ((SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF)):
                default = TCP_BUFFER if self._stream else UDP_BUFFER
            elif key == (IPPROTO_TCP, TCP_KEEPIDLE):
                default = int(_net.DEFAULT_KEEPALIVE)
            value = self._opts.get(key, default)
        else:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        if buflen:
            return struct.pack("i", value)[:buflen]
        return value

    # -- names ----------------------------------------------------------------------------
    def getsockname(self) -> tuple[str, int]:
        self._check()
        impl = self._impl
        if impl is not None and not impl.closed:
            return impl.local_addr()
        if self._local is not None:
            return _net._to_address(self._local, self._v6)
        return _net.SocketAddrV6("::", 0) if self._v6 else _net.SocketAddrV4("0.0.0.0", 0)

    def getpeername(self) -> tuple[str, int]:
        self._check()
        impl = self._impl
        if isinstance(impl, (TcpStream, UdpSocket)) and not impl.closed:
            return impl.peer_addr()
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    # -- closing --------------------------------------------------------------------------
    def shutdown(self, how: int) -> None:
        self._check()
        if not self._stream:
            self.getpeername()  # ENOTCONN unless connected; otherwise nothing to do
            return
        self._tcp_stream().shutdown(how)

    def close(self) -> None:
        """Close; the connection stays while files from `makefile` are open (as CPython)."""
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def _real_close(self) -> None:
        if self._real_closed:
            return
        self._real_closed = True
        impl, self._impl = self._impl, None
        if impl is not None:
            impl.close()
        with self._rt.lock:
            ready, self._ready = self._ready, None
            if ready is not None:
                ready.set(True, True)  # anyone still selecting on it wakes up
                ready.close()

    def __del__(self) -> None:
        if getattr(self, "_real_closed", True):
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        try:
            self._real_close()
        except Exception:  # noqa: BLE001 - a finalizer must not raise (interpreter exit)
            pass

    def detach(self) -> int:
        raise OSError(errno.EOPNOTSUPP, "netstack sockets have no kernel socket to detach")

    def dup(self) -> socket:
        raise OSError(errno.EOPNOTSUPP, "netstack sockets cannot be duplicated")


# -- module-level helpers -----------------------------------------------------------------
def create_connection(address, timeout=_GLOBAL_DEFAULT_TIMEOUT, source_address=None, *,
                      all_errors: bool = False, runtime: Runtime | None = None,
                      socket_class: type[socket] = socket) -> socket:
    """`socket.create_connection` on our stack (one address to try: an AF_INET6 socket
    for an IPv6 literal or name)."""
    host = address[0]
    family = AF_INET
    if isinstance(host, str) and host not in ("", "<broadcast>"):
        ip = _literal(host) or socket_class._hosts.get(host.lower()) or _hosts.get(host.lower())
        if ip is not None and ":" in ip:
            family = AF_INET6
    sock = socket_class(family, SOCK_STREAM, runtime=runtime)
    try:
        if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_socket_class(runtime: Runtime, hosts: Mapping[str, str] | None = None) -> type[socket]:
    """A subclass of `socket` whose instances use `runtime` (and `hosts`) by default."""
    attrs = {"_bound_runtime": runtime, "_hosts": dict(hosts or {}),
             "__module__": __name__, "__qualname__": "socket"}
    return type("socket", (socket,), attrs)


_patch_lock = threading.RLock()
_REAL = {"socket": _real_socket, "create_connection": _real_create_connection,
         "getfqdn": _real_getfqdn, "getaddrinfo": _real_getaddrinfo}
_installed = dict(_REAL)  # what `patch` put in place (the real objects outside any patch)


@contextlib.contextmanager
def patch(runtime: Runtime | None = None, *,
          hosts: Mapping[str, str] | None = None) -> Iterator[type[socket]]:
    """Make stdlib networking use `runtime` (default: the default runtime) while the block
    runs; yields the socket class in use. See the module docstring for what is replaced."""
    rt = runtime or _default_runtime
    if rt is None:
        raise ValueError("patch() needs a runtime (or set_default_runtime first)")
    hosts = {k.lower(): str(ip_address(v)) for k, v in (hosts or {}).items()}
    cls = bound_socket_class(rt, hosts)

    def patched_create_connection(address, timeout=_GLOBAL_DEFAULT_TIMEOUT,
                                  source_address=None, *, all_errors=False):
        return create_connection(address, timeout, source_address, all_errors=all_errors,
                                 socket_class=cls)

    def patched_getfqdn(name=""):
        return getfqdn(name, hosts)

    def patched_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        return getaddrinfo(host, port, family, type, proto, flags, hosts)

    new = {"socket": cls, "create_connection": patched_create_connection,
           "getfqdn": patched_getfqdn, "getaddrinfo": patched_getaddrinfo}
    with _patch_lock:
        # what to replace: the real objects and, when nested, the outer patch's
        replacements = {}
        for name, value in new.items():
            replacements[id(_REAL[name])] = value
            replacements[id(_installed[name])] = value
        saved: list[tuple[object, str, object]] = []
        outer = dict(_installed)

        def swap(obj, name: str, value) -> None:
            saved.append((obj, name, obj.__dict__[name]))
            setattr(obj, name, value)

        try:
            for name, value in new.items():
                swap(_std, name, value)
            for mod_name, mod in list(sys.modules.items()):
                if mod is None or mod is _std or mod_name == __name__:
                    continue
                d = getattr(mod, "__dict__", None)
                if not isinstance(d, dict):
                    continue
                for name, value in list(d.items()):
                    repl = replacements.get(id(value))  # ids of live objects: identity
                    if repl is not None:
                        swap(mod, name, repl)
            _installed.update(new)
            yield cls
        finally:
            for obj, name, value in reversed(saved):
                setattr(obj, name, value)
            _installed.clear()
            _installed.update(outer)


def make_server_class(base: type, runtime: Runtime, *,
                      hosts: Mapping[str, str] | None = None) -> type:
    """A subclass of the socketserver class `base` (TCPServer, UDPServer, HTTPServer,
    ThreadingHTTPServer...) whose socket is one of ours on `runtime`; nothing global is
    patched. An HTTPServer's `server_name` comes from `getfqdn` without the host's resolver."""
    import http.server
    import socketserver

    cls = bound_socket_class(runtime, hosts)

    class Server(base):
        def __init__(self, server_address, RequestHandlerClass, bind_and_activate=True):
            super().__init__(server_address, RequestHandlerClass, bind_and_activate=False)
            self.socket.close()  # the kernel socket base made; ours replaces it
            self.socket = cls(self.address_family, self.socket_type)
            if bind_and_activate:
                try:
                    self.server_bind()
                    self.server_activate()
                except BaseException:
                    self.server_close()
                    raise

        def server_bind(self):
            if isinstance(self, http.server.HTTPServer):
                socketserver.TCPServer.server_bind(self)
                host, port = self.server_address[:2]
                self.server_name = getfqdn(host, cls._hosts)
                self.server_port = port
            else:
                super().server_bind()

    Server.__name__ = Server.__qualname__ = f"Netstack{base.__name__}"
    return Server


# -- asyncio ------------------------------------------------------------------------------
async def open_connection(runtime: Runtime, host: str, port: int, *,
                          limit: int = 2 ** 16, **kwds):
    """`asyncio.open_connection` on our stack: (StreamReader, StreamWriter)."""
    loop = asyncio.get_running_loop()
    ip = _resolve(host)
    sock = socket(AF_INET6 if ":" in ip else AF_INET, SOCK_STREAM, runtime=runtime)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (ip, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=limit, **kwds)


async def start_server(client_connected_cb, runtime: Runtime, host: str = "0.0.0.0",
                       port: int = 0, *, backlog: int = 100, limit: int = 2 ** 16, **kwds):
    """`asyncio.start_server` on our stack: an `asyncio.Server` listening on (host, port)
    (an IPv6 host, "::" included, makes it an AF_INET6 socket)."""
    family = AF_INET6 if host and ":" in (_literal(host) or "") else AF_INET
    sock = socket(family, SOCK_STREAM, runtime=runtime)
    try:
        sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return await asyncio.start_server(client_connected_cb, sock=sock, limit=limit,
                                      backlog=backlog, **kwds)


__all__ = [
    "AF_INET", "AF_INET6", "IPPROTO_IPV6", "IPV6_V6ONLY", "SHUT_RD", "SHUT_RDWR", "SHUT_WR", "SOCK_DGRAM", "SOCK_STREAM", "add_host",
    "bound_socket_class", "create_connection", "error", "gaierror", "get_default_runtime",
    "getaddrinfo", "getdefaulttimeout", "getfqdn", "make_server_class", "open_connection",
    "patch", "set_default_runtime", "setdefaulttimeout", "socket", "start_server", "timeout",
]
