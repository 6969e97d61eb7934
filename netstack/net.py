"""std::net-style sockets for application threads, on top of a `Runtime`.

`UdpSocket` behaves like Rust's `std::net::UdpSocket` (and mostly like Python's socket
module): addresses are `(str, int)` tuples, calls block until done unless a read timeout
or non-blocking mode says otherwise, and failures raise the OSErrors Python programmers
expect: `TimeoutError` when a read timeout runs out, `BlockingIOError` (EAGAIN) in
non-blocking mode, `OSError(EBADF)` after `close()`, `OSError(EMSGSIZE)` for a datagram
that cannot fit, `OSError(EADDRINUSE)` on a port clash.

Blocking calls wait on a `threading.Condition` built on the runtime's lock; the sans-I/O
socket's waker notifies it from the runtime thread when data arrives or room frees up.

    with Runtime(iface, device) as rt:
        sock = rt.udp_bind(("0.0.0.0", 0))
        sock.set_read_timeout(1.0)
        sock.send_to(b"ping", ("10.0.2.2", 7))
        data, addr = sock.recv_from(2048)
"""

from __future__ import annotations

import errno
import threading
import time
from ipaddress import IPv4Address

from netstack.runtime import Runtime
from netstack.socket import udp as _udp
from netstack.socket.errors import (
    AddrInUse,
    BufferFull,
    TooLarge,
    Unaddressable,
)
from netstack.socket.set import PacketBuffer

Address = tuple[str, int]


def _endpoint(addr) -> tuple[IPv4Address, int]:
    try:
        host, port = addr
        host = "0.0.0.0" if host in ("", None) else host
        ip = IPv4Address(host)
    except (TypeError, ValueError):
        raise OSError(errno.EINVAL, f"not an IPv4 (host, port) address: {addr!r}") from None
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise OverflowError("port must be 0-65535.")
    return ip, port


def _to_address(ep: tuple[IPv4Address, int]) -> Address:
    return (str(ep[0]), ep[1])


class UdpSocket:
    """A UDP socket usable from any thread. Create it with `UdpSocket.bind(runtime, addr)`
    or `runtime.udp_bind(addr)`."""

    def __init__(self, runtime: Runtime, sock: _udp.UdpSocket, handle: int) -> None:
        self._rt = runtime
        self._sock = sock
        self._handle = handle
        self._cond = threading.Condition(runtime.lock)
        self._read_timeout: float | None = None
        self._write_timeout: float | None = None
        self._nonblocking = False
        self._peer: tuple[IPv4Address, int] | None = None
        self._closed = False
        sock.set_waker(self._cond.notify_all)

    @classmethod
    def bind(cls, runtime: Runtime, addr: Address = ("0.0.0.0", 0), *, rx_packets: int = 256,
             rx_bytes: int = 1 << 20, tx_packets: int = 256,
             tx_bytes: int = 1 << 20) -> UdpSocket:
        """Bind a new socket to `addr` (port 0: an ephemeral port)."""
        ip, port = _endpoint(addr)
        sock = _udp.UdpSocket(PacketBuffer(rx_packets, rx_bytes), PacketBuffer(tx_packets, tx_bytes))
        with runtime.lock:
            if ip != _udp.UNSPECIFIED and not runtime.iface.has_ip_addr(ip):
                raise OSError(errno.EADDRNOTAVAIL, f"{ip} is not an address of the interface")
            handle = runtime.sockets.add(sock)
            try:
                sock.bind((ip, port))
            except AddrInUse:
                runtime.sockets.remove(handle)
                raise OSError(errno.EADDRINUSE, "Address already in use") from None
            return cls(runtime, sock, handle)

    # -- options --------------------------------------------------------------------------
    def set_read_timeout(self, secs: float | None) -> None:
        """None blocks forever; a positive number of seconds makes reads raise
        TimeoutError after that long. Zero is refused (use `set_nonblocking`)."""
        if secs is not None and secs <= 0:
            raise ValueError("a read timeout must be positive or None")
        self._read_timeout = secs

    def read_timeout(self) -> float | None:
        return self._read_timeout

    def set_write_timeout(self, secs: float | None) -> None:
        """How long `send_to` waits for room in the transmit buffer (None: forever)."""
        if secs is not None and secs <= 0:
            raise ValueError("a write timeout must be positive or None")
        self._write_timeout = secs

    def set_nonblocking(self, nonblocking: bool) -> None:
        self._nonblocking = bool(nonblocking)

    def settimeout(self, secs: float | None) -> None:
        """Python's socket semantics: None blocks, 0 is non-blocking, else a timeout."""
        if secs == 0:
            self._nonblocking = True
        else:
            self._nonblocking = False
            self.set_read_timeout(secs)
            self.set_write_timeout(secs)

    def local_addr(self) -> Address:
        with self._rt.lock:
            self._check_open()
            return _to_address(self._sock.endpoint)

    getsockname = local_addr

    def peer_addr(self) -> Address:
        if self._peer is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return _to_address(self._peer)

    getpeername = peer_addr

    def connect(self, addr: Address) -> None:
        """Fix the destination of `send` and receive only from `addr`."""
        ip, port = _endpoint(addr)
        if port == 0 or ip == _udp.UNSPECIFIED:
            raise OSError(errno.EINVAL, f"cannot connect to {addr!r}")
        self._check_open()
        self._peer = (ip, port)

    # -- data -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    def _wait(self, deadline: float | None) -> None:
        """Wait for the waker (lock held); raise when non-blocking or the time is up."""
        if self._nonblocking:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if deadline is None:
            self._cond.wait()
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self._cond.wait(remaining)

    def send_to(self, data, addr: Address) -> int:
        """Queue one datagram to `addr`; returns its length."""
        ep = _endpoint(addr)
        n = len(data)
        with self._rt.lock:
            deadline = self._deadline(self._write_timeout)
            while True:
                self._check_open()
                try:
                    self._sock.send_to(data, ep)
                    break
                except BufferFull:
                    self._wait(deadline)
                except TooLarge:
                    raise OSError(errno.EMSGSIZE, "Message too long") from None
                except Unaddressable as e:
                    raise OSError(errno.EINVAL, str(e)) from None
        self._rt.wake()
        return n

    sendto = send_to

    def send(self, data) -> int:
        if self._peer is None:
            raise OSError(errno.EDESTADDRREQ, "Destination address required")
        return self.send_to(data, _to_address(self._peer))

    def recv_from(self, bufsize: int) -> tuple[bytes, Address]:
        """Receive one datagram (cut to `bufsize` bytes, the rest discarded)."""
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        with self._rt.lock:
            deadline = self._deadline(self._read_timeout)
            sock = self._sock
            while True:
                self._check_open()
                while sock.can_recv():
                    data, src, _truncated = sock.recv_from(bufsize)
                    if self._peer is None or src == self._peer:
                        return data, _to_address(src)
                self._wait(deadline)

    recvfrom = recv_from

    def recv(self, bufsize: int) -> bytes:
        return self.recv_from(bufsize)[0]

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

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._sock.endpoint}"
        return f"<netstack.net.UdpSocket {state}>"
