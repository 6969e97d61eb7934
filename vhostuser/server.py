"""The runtime of the back-end: sockets, eventfds, signals and one selector loop.

Everything protocol-shaped lives in backend.py (sans-I/O); this module only moves bytes
and fds between the unix socket and `VhostUserBackend.handle`, waits on kick eventfds,
and calls the application (`App`) whenever there may be work: after kicks, on its timer,
or when another thread calls `wake()`.

Connection modes (vhost-user "backend program conventions"): listen on `socket_path`
(QEMU connects, `reconnect=1` brings it back after we restart), `connect_path` (QEMU
listens with `server=on`; we retry until it is there and again after it goes away), or an
inherited `fd` (a listening or a connected socket). One device per connection; on
disconnect everything is torn down and the next connection is served.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from vhostuser.backend import BackendConfig, VhostUserBackend
from vhostuser.errors import ProtocolError
from vhostuser.net import VirtioNetDevice
from vhostuser.protocol import MAX_FDS, MessageDecoder
from vhostuser.virtqueue import Virtqueue

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.001  # for rings the front-end asked us to poll (no kick fd)
RECONNECT_INTERVAL = 0.5


class App(Protocol):
    """What runs on top of the device: the TCP/IP stack, or a raw-frame handler."""

    def attach(self, device: VirtioNetDevice) -> None: ...

    def detach(self) -> None: ...

    def poll(self, now: float) -> float | None:
        """Do all pending work; return the next deadline (monotonic seconds) or None."""
        ...


class RawFrameApp:
    """The simplest App: hands every frame the guest sends to `handler(frame, device)`,
    which may answer with `device.send(...)`; without a handler it only counts them
    (`VirtioNetDevice.discard_tx`: no frame reaches Python). Used by `vhostnet serve
    --raw` and tests."""

    def __init__(self, handler: Callable[[bytes, VirtioNetDevice], None] | None = None):
        self.handler = handler
        self.device: VirtioNetDevice | None = None
        self.frames = 0

    def attach(self, device: VirtioNetDevice) -> None:
        self.device = device

    def detach(self) -> None:
        self.device = None

    def poll(self, now: float) -> float | None:
        dev = self.device
        if dev is None:
            return None
        if self.handler is None:
            self.frames += dev.discard_tx(limit=4096)
            return None

        def one(frame: memoryview) -> None:
            self.frames += 1
            if self.handler is not None:
                self.handler(bytes(frame), dev)

        dev.drain_tx(one, limit=512)
        return None


class Connection:
    """One front-end connection and the device it drives."""

    def __init__(self, sock: socket.socket, config: BackendConfig) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.decoder = MessageDecoder()
        self.backend = VhostUserBackend(config)
        self.closed = False
        # why on_readable gave up, for the server's counters: "protocol_errors",
        # "too_many_fds", "truncated_messages" (None: an orderly hang-up)
        self.failure: str | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def on_readable(self) -> bool:
        """Read and handle every complete message; False when the connection is over."""
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, self.decoder.pending, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as e:
                log.info("front-end connection error: %s", e)
                return False
            if flags & getattr(socket, "MSG_CTRUNC", 8):
                for fd in fds:
                    os.close(fd)
                log.error("front-end sent more than %d fds with one message; closing",
                          MAX_FDS)
                self.failure = "too_many_fds"
                return False
            if not data:
                for fd in fds:
                    os.close(fd)
                if self.decoder.mid_message:
                    log.warning("front-end closed the connection in the middle of a message")
                    self.failure = "truncated_messages"
                else:
                    log.info("front-end closed the connection")
                return False
            try:
                for msg in self.decoder.feed(data, fds):
                    log.debug("<- %s flags=%#x size=%d fds=%d", msg.name, msg.flags,
                              len(msg.payload), len(msg.fds))
                    reply = self.backend.handle(msg)
                    if reply is not None:
                        self._send(reply.encode())
            except ProtocolError as e:
                log.error("vhost-user protocol violation, closing the connection: %s", e)
                self.failure = "protocol_errors"
                return False

    def _send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        self.sock.settimeout(2.0)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.decoder.close()
            self.backend.close()
            self.sock.close()


class Port:
    """One place front-ends reach us — a socket we listen on, a path we connect to, or an
    inherited fd — and the connection on it (one at a time)."""

    def __init__(self, socket_path: str | None = None, connect_path: str | None = None):
        self.socket_path = socket_path
        self.connect_path = connect_path
        self.listener: socket.socket | None = None
        self.conn: Connection | None = None
        self.next_connect = 0.0

    @property
    def name(self) -> str:
        return self.socket_path or self.connect_path or "inherited fd"


class VhostUserServer:
    """Serve vhost-user net devices until `stop()`: one connection at a time on each port.

    With several ports (`add_port`) the app still sees one device: the *active* one, the
    device whose rings started last while the active one's were stopped. That is live
    migration's hand-over (the source QEMU stops its rings before the destination starts
    its own): the stack behind stays, and so do the guest's connections. Rings of a
    device that is not active are left alone; several guests on one segment are not
    this (issue 17's switch)."""

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        connect_path: str | None = None,
        fd: int | None = None,
        config: BackendConfig | None = None,
        app: App | None = None,
    ) -> None:
        if sum(x is not None for x in (socket_path, connect_path, fd)) != 1:
            raise ValueError("give exactly one of socket_path, connect_path or fd")
        self.config = config or BackendConfig()
        self.app: App = app or RawFrameApp()
        self.sel = selectors.DefaultSelector()
        self.ports = [Port(socket_path, connect_path)]
        self._active: Connection | None = None
        self._inherited_fd = fd
        self._watched_kicks: dict[int, Virtqueue] = {}
        self._stop = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.sel.register(self._wake_fd, selectors.EVENT_READ, self._on_wake)
        self._work = True
        self.connections_served = 0
        # connections closed on a broken protocol (see Connection.failure), over all
        # connections: each backend's own counters go with its connection
        self.counters: Counter[str] = Counter()
        self.on_connect: Callable[[Connection], None] | None = None
        self.on_disconnect: Callable[[Connection], None] | None = None
        self._lock = threading.Lock()
        try:
            self._setup(self.ports[0])
        except BaseException:
            self.sel.close()
            os.close(self._wake_fd)
            raise

    # the first port's, as before there were several
    @property
    def socket_path(self) -> str | None:
        return self.ports[0].socket_path

    @property
    def connect_path(self) -> str | None:
        return self.ports[0].connect_path

    @property
    def listener(self) -> socket.socket | None:
        return self.ports[0].listener

    @property
    def conn(self) -> Connection | None:
        """The active connection: the one whose device the app is attached to."""
        return self._active

    def add_port(self, *, socket_path: str | None = None,
                 connect_path: str | None = None) -> Port:
        """Serve one more socket (listen on `socket_path`, or connect to `connect_path`)."""
        if (socket_path is None) == (connect_path is None):
            raise ValueError("give exactly one of socket_path and connect_path")
        port = Port(socket_path, connect_path)
        self._setup(port)
        self.ports.append(port)
        self._work = True
        return port

    # -- setup -----------------------------------------------------------------------
    def _setup(self, port: Port) -> None:
        if port.socket_path is not None:
            port.listener = self._listen(port.socket_path)
        elif port.connect_path is None and self._inherited_fd is not None:
            s = socket.socket(fileno=self._inherited_fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                port.listener = s
            else:
                self._adopt(port, s)
        if port.listener is not None:
            port.listener.setblocking(False)
            self.sel.register(port.listener, selectors.EVENT_READ,
                              lambda: self._on_accept(port))

    @staticmethod
    def _listen(path: str) -> socket.socket:
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not removed")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)  # stale socket file of a process that died
            except OSError:
                os.unlink(path)
            else:
                probe.close()
                raise OSError(errno.EADDRINUSE, f"another process serves {path}")
            finally:
                probe.close()
            log.info("removed %s: a socket file nobody listened on (a backend that died)",
                     path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(path)
            s.listen(4)
        except OSError as e:
            s.close()
            hint = " (its directory must exist)" if e.errno == errno.ENOENT else ""
            raise OSError(e.errno, f"cannot listen on {path}: {e.strerror}{hint}") from None
        return s

    # -- connections -----------------------------------------------------------------
    def _adopt(self, port: Port, sock: socket.socket) -> None:
        conn = Connection(sock, self.config)
        conn.backend.on_started = lambda q: self._queue_started(conn, q)
        conn.backend.on_kick_closing = self._unwatch_kick
        port.conn = conn
        self.connections_served += 1
        self.sel.register(conn.sock, selectors.EVENT_READ, lambda: self._on_conn(port))
        log.info("front-end connected%s", f" on {port.name}" if len(self.ports) > 1 else "")
        if self._active is None:
            self._activate(conn)
        if self.on_connect is not None:
            self.on_connect(conn)

    def _activate(self, conn: Connection | None) -> None:
        """Attach the app to `conn`'s device (none: detach it)."""
        self._active = conn
        if conn is None:
            self.app.detach()
        else:
            self.app.attach(conn.backend.net)

    def _drop(self, port: Port | None = None) -> None:
        if port is None:  # (the active connection's port)
            if self._active is None:
                return
            port = next(p for p in self.ports if p.conn is self._active)
        conn = port.conn
        if conn is None:
            return
        port.conn = None
        # (its kick fds are unwatched as conn.close() closes them: on_kick_closing)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        if conn is self._active:
            # another connected device carries the app on (a started one first)
            others = [p.conn for p in self.ports if p.conn is not None]
            others.sort(key=lambda c: c.backend.suspended)
            self._activate(others[0] if others else None)
        conn.close()
        log.info("front-end disconnected; device torn down")
        if self.on_disconnect is not None:
            self.on_disconnect(conn)
        port.next_connect = time.monotonic() + RECONNECT_INTERVAL
        # the next waiting front-end is accepted on the next loop turn

    def _on_accept(self, port: Port) -> None:
        if port.conn is not None:
            return  # one device per port at a time; the next waits in the backlog
        try:
            sock, _ = port.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._adopt(port, sock)

    def _try_connect(self, now: float) -> None:
        for port in self.ports:
            if port.conn is not None or port.connect_path is None or now < port.next_connect:
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(port.connect_path)
            except OSError as e:
                s.close()
                port.next_connect = now + RECONNECT_INTERVAL
                log.debug("connect %s: %s (retrying)", port.connect_path, e)
                continue
            self._adopt(port, s)

    def _on_conn(self, port: Port) -> None:
        conn = port.conn
        if conn is None:
            return
        try:
            alive = conn.on_readable()
        except Exception:  # a bug in our handler must not take the process down
            log.exception("internal error handling a vhost-user message; closing")
            conn.failure = "internal_errors"
            alive = False
        if not alive:
            if conn.failure is not None:
                self.counters[conn.failure] += 1
            self._drop(port)
            return
        self._sync_kicks(conn)
        self._work = True

    def _sync_kicks(self, conn: Connection) -> None:
        want = conn.backend.watch_fds()
        for fd in list(self._watched_kicks):
            q = self._watched_kicks[fd]
            if q in conn.backend.queues and (fd not in want or want[fd] is not q):
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(fd)
                del self._watched_kicks[fd]
        for fd, q in want.items():
            if fd not in self._watched_kicks:
                try:
                    self.sel.register(fd, selectors.EVENT_READ, self._kick_cb(conn, q))
                except (OSError, ValueError) as e:
                    log.warning("queue %d: kick fd %d cannot be watched: %s", q.index, fd, e)
                    continue
                self._watched_kicks[fd] = q

    def _unwatch_kick(self, fd: int) -> None:
        """The backend is about to close kick fd `fd`: stop waiting on it while it is
        still open (after the close, epoll_ctl DEL fails and the registration lingers)."""
        if self._watched_kicks.pop(fd, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(fd)

    def _kick_cb(self, conn: Connection, q: Virtqueue) -> Callable[[], None]:
        def cb() -> None:
            try:
                os.eventfd_read(q.kick_fd)
            except (BlockingIOError, OSError, TypeError):
                pass
            if not conn.closed:
                conn.backend.kicked(q)
            self._work = True

        return cb

    def _queue_started(self, conn: Connection, q: Virtqueue) -> None:
        self._work = True
        active = self._active
        if conn is not active and (active is None or active.backend.suspended):
            log.info("the device on another socket started its rings: the stack moves "
                     "to it (a migrated guest)")
            self.counters["handovers"] += 1
            self._activate(conn)

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake_fd)
        self._work = True

    # -- extra fds --------------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callable[[], None] | None = None) -> None:
        """Watch another fd (a TAP, a socket) with the loop: when it is readable, call
        `callback` (if any), then the app's poll, which is expected to read it. The watch
        is level-triggered: an fd left readable brings the loop back on its next turn.
        Call before `serve_forever` or from the loop's thread; `remove_reader` before
        closing the fd. ValueError/KeyError if `fd` is already watched, as selectors."""

        def ready() -> None:
            if callback is not None:
                callback()
            self._work = True

        self.sel.register(fd, selectors.EVENT_READ, ready)

    def want_writable(self, fd: int, on: bool = True) -> None:
        """For an fd watched with `add_reader`: also call its callback when the fd is
        writable (`on`), or again only when readable. Level-triggered: turn it off once
        the pending output is written. KeyError if `fd` is not watched."""
        key = self.sel.get_key(fd)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        if key.events != events:
            self.sel.modify(fd, events, key.data)

    def remove_reader(self, fd: int) -> bool:
        """Stop watching `fd`; False if it was not watched."""
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            return False
        return True

    # -- the loop --------------------------------------------------------------------
    def wake(self) -> None:
        """Ask the loop to call the app soon (thread-safe)."""
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake_fd, 1)

    def stop(self) -> None:
        self._stop = True
        self.wake()

    @property
    def device(self) -> VirtioNetDevice | None:
        return self.conn.backend.net if self.conn else None

    def _service(self, now: float) -> tuple[float | None, bool]:
        """Run the app and move frames until nothing is left (bounded, so a busy guest
        cannot starve the socket). Returns the app's deadline and whether work remains."""
        conn = self.conn
        if conn is None:
            return self.app.poll(now), False
        net = conn.backend.net
        deadline = None
        more = False
        for _ in range(64):
            net.flush_backlog()
            deadline = self.app.poll(now)
            net.flush()
            more = False
            for q in conn.backend.queues:
                if not q.ready:
                    continue
                # While a queue has work we come back to it ourselves: its notifications
                # stay off (used.flags NO_NOTIFY; with EVENT_IDX avail_event is left
                # behind), so a busy driver makes no kick syscall per batch. Only a
                # queue found idle is armed, and looked at once more after arming.
                if q.index % 2:  # TX: frames left unread, or new ones since we looked
                    if not q.serviceable:
                        continue  # not enabled yet: left alone until SET_VRING_ENABLE
                    if q.has_avail():
                        q.disable_notification()
                        more = True
                    # enable_notification arms avail_event at the index it reads; chains
                    # published between has_avail and that read bring no kick: has_avail
                    # once more (against the index just read) catches them
                    elif q.enable_notification() or q.has_avail():
                        more = True
                elif net.has_backlog:  # RX: frames waiting for buffers the guest adds
                    if q.avail_moved():  # posted since flush_backlog looked: try them
                        q.disable_notification()
                        more = True
                    elif q.enable_notification():
                        more = True
                    else:
                        # buffers posted after flush_backlog looked but before
                        # avail_event was re-armed bring no kick: try them now
                        net.flush_backlog()
                        more = more or not net.has_backlog
            if not more:
                break
            now = time.monotonic()
        return deadline, more

    def run_once(self, timeout: float | None = None) -> None:
        now = time.monotonic()
        deadline = None
        if self._work:
            self._work = False
            try:
                deadline, self._work = self._service(now)
            except Exception:  # a bug on the data path: drop this device, keep serving
                log.exception("internal error on the data path; closing the connection")
                self._drop()
        self._try_connect(now)
        waits = [timeout] if timeout is not None else []
        if deadline is not None:
            waits.append(max(0.0, deadline - time.monotonic()))
        if self.conn is not None and self.conn.backend.polled_queues():
            waits.append(POLL_INTERVAL)
            self._work = True
        for port in self.ports:
            if port.conn is None:
                if port.connect_path is not None:
                    waits.append(max(0.0, port.next_connect - now))
                elif port.listener is not None:
                    waits.append(0.5)
        wait = 0.0 if self._work else (min(waits) if waits else None)
        for key, _ in self.sel.select(wait):
            key.data()
        if deadline is not None and time.monotonic() >= deadline:
            self._work = True
        for port in self.ports:
            if port.conn is None and port.listener is not None:
                self._on_accept(port)

    def serve_forever(self) -> None:
        while not self._stop:
            self.run_once()

    def close(self) -> None:
        for port in self.ports:
            self._drop(port)
            if port.listener is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(port.listener)
                port.listener.close()
                port.listener = None
                if port.socket_path and os.path.exists(port.socket_path):
                    with contextlib.suppress(OSError):
                        os.unlink(port.socket_path)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self._wake_fd)
        with contextlib.suppress(OSError):
            os.close(self._wake_fd)
        self.sel.close()

    def __enter__(self) -> VhostUserServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def install_signal_handlers(server: VhostUserServer) -> None:
    """SIGTERM/SIGINT end `serve_forever` promptly (the loop wakes on its eventfd)."""

    def handler(signum, frame) -> None:
        log.info("signal %d: shutting down", signum)
        server.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
