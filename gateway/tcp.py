"""A guest's TCP connection to an address that is not ours, carried by a host socket.

The guest's SYN opens a non-blocking host socket to the same address and port (or the
host's loopback, for the mapped gateway address). Only when that connect succeeds do we
answer the SYN, from the address the guest asked for (as libslirp and passt do): a
refused or failed connect gives the guest a RST, and retransmitted SYNs meanwhile are
dropped. Then bytes are copied both ways with back-pressure and no buffer of our own:

- guest → host: the guest's bytes stay in our TCP socket's receive buffer (its window
  closes as it fills) until the host socket takes them (`peek`, `send`, `consume`);
- host → guest: we read from the host socket only as much as our TCP socket's send
  buffer has room for, so a slow guest leaves the bytes in the host's kernel.

FIN both ways becomes a half-close on the other side (`shutdown(SHUT_WR)`, `close`); a RST
either way resets the other side (a host socket closed with SO_LINGER 0 sends one).
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct

from gateway.hostfwd import format_endpoint
from netstack.socket.errors import TableFull
from netstack.socket.tcp.socket import TcpSocket, rst_reply
from netstack.socket.tcp.state import State

log = logging.getLogger("vhostnet.gateway")

CHUNK = 256 * 1024
# What a flow may hold for the guest (its TCP send buffer, grown only as it fills; all
# flows together hold at most Gateway.TX_BUDGET). The bytes in flight to a TCG guest, not
# our CPU, bound a download: the guest acknowledges every few hundred kB, milliseconds
# apart, and our process sat two thirds idle with 1 MiB. Measured through the gateway
# (QEMU 10, 200 MiB, two runs each, 2026-12-07): 1 MiB 1,180-1,740 Mbit/s, 2 MiB
# 1,730-1,815, 4 MiB 1,710-2,370, 6 MiB 1,560-1,745, 8 MiB 1,740-1,800, 16 MiB
# 1,020-1,245 (more than the guest takes at once only costs copies through the caches).
FLOW_TX_BUFFER = 4 << 20
# The window we offer the guest for an upload (its TCP receive buffer, also grown only as
# it fills), for the same reason. Measured the same way, 100 MiB up: 256 KiB (our
# sockets' default) 384-571 Mbit/s, 1 MiB 637-966, 4 MiB 491-817.
FLOW_RX_BUFFER = 1 << 20
_LINGER_RST = struct.pack("ii", 1, 0)


class TcpFlow:
    __slots__ = ("gw", "key", "ip", "seg", "host_addr", "host", "tcp", "handle", "state",
                 "host_eof", "host_wr_closed", "up", "down", "since", "deadline", "events",
                 "local", "held")

    def __init__(self, gw, key: tuple, ip, seg, host_addr, now: float) -> None:
        self.gw = gw
        self.key = key  # (guest addr, guest port, dst addr, dst port)
        self.ip = ip  # the SYN's IP header (src: the guest, dst: what it asked for)
        self.seg = seg  # the SYN (payload dropped)
        self.host_addr = host_addr
        self.host: socket.socket | None = None
        self.tcp: TcpSocket | None = None
        self.handle: int | None = None
        self.state = "connecting"
        self.host_eof = False
        self.host_wr_closed = False
        self.up = 0  # bytes guest → host
        self.down = 0  # bytes host → guest
        self.since = now
        self.deadline = now + gw.config.connect_timeout
        self.events = 0
        self.local = None  # the host socket's own address, once connected
        self.held = 0  # our send queue when last looked at (the gateway's tx_held)

    # -- the host side --------------------------------------------------------------------
    def start(self) -> None:
        fam = socket.AF_INET6 if self.host_addr.version == 6 else socket.AF_INET
        try:
            host = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC)
        except OSError as e:  # out of fds: the guest gets a RST and may retry
            self.gw.count("tcp_host_socket_failed")
            log.debug("gateway: no host socket for %s: %s", self.key, e)
            self.fail(e.errno)
            return
        self.host = host
        host.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = host.connect_ex((str(self.host_addr), self.key[3]))
        if err not in (0, errno.EINPROGRESS):
            self.fail(err)
            return
        self._interest(selectors.EVENT_WRITE)

    def on_event(self, now: float, mask: int) -> None:
        if self.state == "connecting":
            err = self.host.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(err)
            else:
                self._connected(now)
            return
        self.pump()

    def _connected(self, now: float) -> None:
        gw = self.gw
        tcp = TcpSocket(**gw.tcp_options)
        src, dst = self.ip.src_addr, self.ip.dst_addr
        tcp.answer_syn(now, (dst, self.key[3]), (src, self.key[1]), self.seg)
        try:
            self.handle = gw.sockets.add(tcp)
        except TableFull:
            gw.count("tcp_table_full")
            self.fail(errno.EMFILE)
            return
        self.tcp = tcp
        self.seg = None
        self.state = "open"
        try:
            self.local = self.host.getsockname()[:2]
        except OSError:
            self.local = None
        tcp.set_waker(lambda: gw.poke(self))
        gw.count("tcp_opened")
        self._interest(0)
        self.pump()

    def fail(self, err: int | None) -> None:
        """The connect failed: the guest's SYN gets a RST."""
        gw = self.gw
        name = errno.errorcode.get(err or 0, "error").lower()
        gw.count(f"tcp_connect_{name}")
        reply = rst_reply(self.ip, self.seg)
        if reply is not None:
            gw.outbox.tcp(self.ip.dst_addr, self.ip.src_addr, reply)
        self.close_host(rst=False)
        self.state = "closed"
        gw.forget_tcp(self)

    def expire(self, now: float) -> None:
        if self.state == "connecting" and now >= self.deadline:
            self.fail(errno.ETIMEDOUT)

    # -- copying ---------------------------------------------------------------------------
    def pump(self) -> None:
        """Move what can move both ways, then ask the selector for what we wait on."""
        tcp, host = self.tcp, self.host
        if tcp is None or host is None:
            return
        if tcp.state is State.CLOSED:  # the guest reset (or we gave up on it)
            self.gw.count("tcp_guest_reset")
            self.finish(rst=True)
            return
        try:
            # guest → host
            if not self.host_wr_closed:
                while tcp.recv_queue:
                    data = tcp.peek(CHUNK)
                    try:
                        n = host.send(data)
                    except BlockingIOError:
                        n = 0
                    if n:
                        tcp.consume(n)
                        self.up += n
                    if n < len(data):
                        break
                if not tcp.recv_queue and not tcp.may_recv:  # the guest's FIN
                    host.shutdown(socket.SHUT_WR)
                    self.host_wr_closed = True
            # host → guest
            gw = self.gw
            while not self.host_eof and tcp.may_send:
                self._account()
                room = min(tcp.send_capacity - tcp.send_queue, gw.TX_BUDGET - gw.tx_held)
                if room <= 0:
                    if tcp.send_queue == 0:  # the budget is spent elsewhere: try later
                        gw.poke_later(self)
                    break
                try:
                    data = host.recv(min(room, CHUNK))
                except BlockingIOError:
                    break
                if not data:
                    self.host_eof = True
                    tcp.close()  # our FIN
                    break
                tcp.send(data)
                self.down += len(data)
            self._account()
        except OSError as e:  # the host reset, or the network said no
            self.gw.count("tcp_host_reset")
            log.debug("gateway: %s: host side %s", self.key, e)
            tcp.abort()
            self.finish(rst=False)
            return
        if self.host_eof and self.host_wr_closed:
            self.finish(rst=False)  # both FINs crossed: our socket finishes on its own
            return
        want = 0
        if not self.host_eof and tcp.may_send and tcp.send_queue < tcp.send_capacity \
                and self.gw.tx_held < self.gw.TX_BUDGET:
            want |= selectors.EVENT_READ
        if tcp.recv_queue and not self.host_wr_closed:
            want |= selectors.EVENT_WRITE
        self._interest(want)

    def _account(self) -> None:
        q = self.tcp.send_queue if self.tcp is not None else 0
        self.gw.tx_held += q - self.held
        self.held = q

    def _interest(self, events: int) -> None:
        if events == self.events or self.host is None:
            return
        sel = self.gw.selector
        if self.events == 0:
            sel.register(self.host, events, self)
        elif events == 0:
            sel.unregister(self.host)
        else:
            sel.modify(self.host, events, self)
        self.events = events

    def finish(self, rst: bool) -> None:
        """Close the host socket (with a RST when `rst`) and hand our TCP socket to the
        runtime, which reaps it once its FIN handshake or TIME-WAIT is done."""
        self.close_host(rst)
        self.gw.tx_held -= self.held
        self.held = 0
        if self.handle is not None:
            self.tcp.set_waker(None)
            self.gw.runtime.release_socket(self.handle)
            self.handle = None
        self.state = "closed"
        self.gw.forget_tcp(self)

    def close_host(self, rst: bool) -> None:
        host, self.host = self.host, None
        if host is None:
            return
        if self.events:
            self.gw.selector.unregister(host)
            self.events = 0
        if rst:
            try:
                host.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        host.close()

    def abort(self) -> None:
        """Shutdown: both sides reset."""
        if self.tcp is not None and self.handle is not None:
            self.tcp.abort()
        self.finish(rst=True)

    def status(self, now: float) -> dict:
        g, gp, d, dp = self.key
        return {"proto": "tcp", "guest": format_endpoint(g, gp), "dst": format_endpoint(d, dp),
                "host_local": format_endpoint(*self.local) if self.local else None,
                "host_remote": format_endpoint(self.host_addr, dp),
                "state": self.state if self.tcp is None else self.tcp.state.name,
                "up": self.up, "down": self.down, "age": round(now - self.since, 1)}

