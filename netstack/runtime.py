"""The runtime: the one thread that owns the interface, its device and its sockets.

An `RLock` (`runtime.lock`) guards the interface and every socket; whoever holds it may
touch them. Two ways to run:

(a) `start()`: a thread of our own runs a `selectors` loop over the device's readiness fd
    (when the device has `fileno()`, e.g. TAP) and a wake eventfd, and sleeps exactly as
    long as `Interface.poll_at` allows: no sleep-and-poll. `stop()` (or `close()`) ends
    it within a second.
(b) An external loop drives it as an App (the vhost-user server): `attach(device)`,
    `detach()`, `poll(now) -> deadline | None` (monotonic seconds), and `set_waker(fn)`
    so that threads queueing data can wake that loop.

Application threads use `netstack.net` sockets (or `with runtime.lock:` plus the sans-I/O
sockets, then `runtime.wake()`). Socket wakers run on the runtime's thread with the lock
held, which is what `threading.Condition(runtime.lock)` needs.

Example (mode b, with nothing attached yet):

>>> from netstack.iface import Interface, InterfaceConfig
>>> from netstack.wire.ethernet import EthernetAddress
>>> rt = Runtime(Interface(InterfaceConfig(EthernetAddress(b"\\x02" * 6))))
>>> rt.poll(0.0) is None
True
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from collections import Counter
from collections.abc import Callable

from netstack.iface.interface import Interface
from netstack.ratelog import LogLimiter
from netstack.socket.set import Socket, SocketSet

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 1.0


class Runtime:
    def __init__(self, iface: Interface, device=None, sockets: SocketSet | None = None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.iface = iface
        self.device = device
        self.sockets = sockets if sockets is not None else SocketSet()
        self.clock = clock
        self.lock = threading.RLock()
        self.stats: Counter = Counter()
        self._waker: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_fd: int | None = None
        self._sel: selectors.BaseSelector | None = None
        self._dev_fd: int | None = None
        self._released: set[int] = set()  # handles their applications let go of
        self._reap_check: list[int] = []  # released handles to look at on the next poll
        self._errlog = LogLimiter(log)

    # -- the App shape (driven by an external loop) ---------------------------------------
    def attach(self, device) -> None:
        with self.lock:
            self.device = device
        self.wake()

    def detach(self) -> None:
        with self.lock:
            self.device = None
        self.wake()

    def poll(self, now: float) -> float | None:
        """Do the pending work (bounded); return when to call again, or None."""
        with self.lock:
            device = self.device
            if device is None:
                return None
            try:
                self.iface.poll(now, device, self.sockets)
            except Exception as e:  # a bug; keep serving, but say so (not once a frame)
                self.stats["poll_errors"] += 1
                self._errlog.error((type(e), str(e)[:200]), "netstack: interface poll "
                                   "failed: %s: %s", type(e).__name__, e, exc_info=True)
            if self._reap_check or self.sockets.closed:
                self._reap(now)
            at = self.iface.poll_at(now, self.sockets)
            dev_poll_at = getattr(device, "poll_at", None)
            if dev_poll_at is not None:
                d = dev_poll_at()
                if d is not None and (at is None or d < at):
                    at = max(d, now)
            return at

    def set_waker(self, fn: Callable[[], None] | None) -> None:
        """`fn()` wakes the external loop driving `poll` (any thread may call it)."""
        self._waker = fn

    def wake(self) -> None:
        """Make the loop poll soon: call after queueing data from another thread."""
        # (the sockets an application changed marked themselves dirty: see SocketSet)
        fd = self._wake_fd
        if fd is not None:
            try:
                os.eventfd_write(fd, 1)
            except OSError:  # closed under us by stop()
                pass
        elif self._waker is not None:
            self._waker()

    # -- sockets --------------------------------------------------------------------------
    def add_socket(self, sock: Socket) -> int:
        with self.lock:
            handle = self.sockets.add(sock)
        self.wake()
        return handle

    def remove_socket(self, handle: int) -> Socket:
        with self.lock:
            return self.sockets.remove(handle)

    def release_socket(self, handle: int) -> None:
        """Hand a socket its application has let go of (closed) to the runtime: it stays in
        the set while it still has work (a TCP FIN handshake, TIME-WAIT, a queued RST) and
        is removed by `poll` once `is_open` is False and `poll_at` is None."""
        with self.lock:
            if handle in self.sockets:
                self._released.add(handle)
                self._reap_check.append(handle)
                orphan = getattr(self.sockets.get(handle), "orphan", None)
                if orphan is not None:  # TCP: no longer waits forever on its peer
                    orphan(self.clock())
        self.wake()

    def _reap(self, now: float) -> None:
        """Remove the released sockets that are done: each is looked at when released
        and when it enters CLOSED (SocketSet.closed), never in a scan of all of them."""
        sockets = self.sockets
        check, self._reap_check = self._reap_check, []
        if sockets.closed:
            released = self._released
            for sock in sockets.closed:
                h = sockets.handle_of(sock)
                if h in released:
                    check.append(h)
            sockets.closed = []
        for handle in check:
            if handle not in sockets:
                self._released.discard(handle)
                continue
            sock = sockets.get(handle)
            if getattr(sock, "is_open", False):
                continue  # it comes back through `closed`
            if sock.poll_at(now) is not None:
                self._reap_check.append(handle)  # a last RST to send: next poll
                continue
            sockets.remove(handle)
            self._released.discard(handle)

    def udp_bind(self, addr=("0.0.0.0", 0), **kwargs):
        """A std::net-style `netstack.net.UdpSocket` bound to `addr` = (host, port) ("::":
        both families unless `v6only=True`)."""
        from netstack.net import UdpSocket

        return UdpSocket.bind(self, addr, **kwargs)

    def tcp_listen(self, addr=("0.0.0.0", 0), backlog: int = 128, **kwargs):
        """A std::net-style `netstack.net.TcpListener` listening on `addr` = (host, port)
        ("::": both families unless `v6only=True`)."""
        from netstack.net import TcpListener

        return TcpListener.bind(self, addr, backlog, **kwargs)

    def tcp_connect(self, addr, timeout: float | None = None, **kwargs):
        """A std::net-style `netstack.net.TcpStream` connected to `addr` = (host, port)."""
        from netstack.net import TcpStream

        return TcpStream.connect(self, addr, timeout, **kwargs)

    # -- our own thread -------------------------------------------------------------------
    def start(self) -> None:
        """Run the loop in a thread of our own."""
        if self._thread is not None:
            raise RuntimeError("runtime already started")
        self._stopping = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_fd, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="netstack-runtime", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _sync_device_fd(self) -> None:
        device = self.device
        fileno = getattr(device, "fileno", None)
        fd = fileno() if fileno is not None else None
        if fd == self._dev_fd:
            return
        if self._dev_fd is not None:
            self._sel.unregister(self._dev_fd)
        self._dev_fd = fd
        if fd is not None:
            self._sel.register(fd, selectors.EVENT_READ)

    def _run(self) -> None:
        sel = self._sel
        wake_fd = self._wake_fd
        clock = self.clock
        while not self._stopping:
            with self.lock:
                self._sync_device_fd()
            deadline = self.poll(clock())
            if self._stopping:
                break
            timeout = None if deadline is None else max(0.0, deadline - clock())
            for key, _ in sel.select(timeout):
                if key.fd == wake_fd:
                    try:
                        os.eventfd_read(wake_fd)
                    except BlockingIOError:
                        pass

    def stop(self) -> None:
        """End the thread (joined within a second) and close our fds. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self.wake()
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            log.error("netstack runtime thread did not stop within %.1f s", JOIN_TIMEOUT)
            return
        self._thread = None
        self._sel.close()
        self._sel = None
        self._dev_fd = None
        fd, self._wake_fd = self._wake_fd, None
        os.close(fd)

    close = stop

    def __enter__(self) -> Runtime:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
