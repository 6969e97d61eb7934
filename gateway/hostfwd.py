"""Host port forwarding, as QEMU's `-netdev user,hostfwd=...`: a real socket on the host
whose connections (TCP) or datagrams (UDP) are carried through our stack to the guest.

Rules use QEMU's syntax, `[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`:

>>> parse_hostfwd("tcp::8080-:80")
HostFwd(proto='tcp', host_addr='127.0.0.1', host_port=8080, guest_addr=None, guest_port=80)
>>> parse_hostfwd("udp:0.0.0.0:5353-10.0.2.15:53").guest_addr
'10.0.2.15'
>>> parse_hostfwd("tcp:[::1]:8080-[fd00:10:0:2:5054:ff:fe12:3456]:80")
HostFwd(proto='tcp', host_addr='::1', host_port=8080, guest_addr='fd00:10:0:2:5054:ff:fe12:3456', guest_port=80)
>>> try:
...     parse_hostfwd("tcp::8080")
... except HostFwdError as e:
...     print(e)
invalid host forwarding rule 'tcp::8080' (Bad host port separator)
>>> try:
...     parse_hostfwd("tcp::8080-fe80::15:80")
... except HostFwdError as e:
...     print(e)
invalid host forwarding rule 'tcp::8080-fe80::15:80' (Bad guest address: an IPv6 address goes in brackets, [fe80::15])

Parsed as QEMU 7.2's `slirp_hostfwd` does (an empty protocol is tcp; addresses as
`inet_aton` reads them; ports as `strtol` base 0, so 0x50 and 0120 are 80), with two
differences: HOSTADDR defaults to 127.0.0.1, not QEMU's 0.0.0.0 (say 0.0.0.0 to expose the
guest to the network), and a port with trailing characters is refused, where QEMU ignores
them. GUESTADDR defaults to the guest's DHCP address (the first lease, 10.0.2.15).

IPv6: either address may be an IPv6 literal in brackets, as QEMU's own address syntax
(`tcp:[::1]:8080-[fd00:10:0:2::15]:80`; a zone is allowed, `[fe80::1%lo]`, and ignored on the
guest side: our stack has one interface). An IPv6 HOSTADDR makes the host socket AF_INET6
(`[::]` takes IPv4 too, unless the host's `bindv6only` says otherwise); an IPv6 GUESTADDR
makes the stack-side TCP connection or UDP socket IPv6. The two sides are independent:
`tcp:[::1]:8080-10.0.2.15:80` and `tcp:127.0.0.1:8080-[fd00:10:0:2::15]:80` both work.

TCP: a thread accepts on the host socket; each connection opens a `netstack.net.TcpStream`
to the guest and two pump threads copy both ways. A FIN on one side becomes a shutdown of
writing on the other (half-close); a failure (the guest refuses or resets, the host
resets) resets both. UDP: one thread relays each host peer's datagrams from a stack
socket of its own (connected to the guest's port, so only its replies come back) and the
replies to that peer; a peer idle for `udp_idle` seconds loses its socket.

The client's address: with the gateway (the default) a connection or a peer's datagrams
reach the guest from the real client's address and port (a client on the host's
loopback: from the gateway address standing for it, 10.0.2.2), which libslirp cannot do;
`--hostfwd-masquerade` makes them all come from our address, as before.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass

from netstack.net import TcpStream, UdpSocket
from netstack.runtime import Runtime

log = logging.getLogger("vhostnet.hostfwd")

DEFAULT_HOST_ADDR = "127.0.0.1"
CONNECT_TIMEOUT = 15.0  # seconds for the guest to answer our SYN
UDP_IDLE = 60.0  # seconds a UDP peer's mapping lives without traffic
_BUF = 65536
# a connect from the client's address cannot even start: use ours
_NOT_FROM_CLIENT = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ENETUNREACH,
                    errno.EAFNOSUPPORT, errno.EINVAL)


class HostFwdError(ValueError):
    """A hostfwd rule that does not parse; the message names the rule and the reason."""


@dataclass(frozen=True, slots=True)
class HostFwd:
    """One rule. `guest_addr` None: the guest's DHCP address."""

    proto: str  # "tcp" or "udp"
    host_addr: str
    host_port: int  # 0: any free port
    guest_addr: str | None
    guest_port: int


def _strtoi(text: str) -> int | None:
    """C's strtol(text, &end, 0) over all of `text` (leading blanks and a sign allowed,
    0x hex, 0 octal); None when it is not a whole number."""
    s = text.lstrip(" \t\n\r\f\v")
    sign = 1
    if s[:1] in ("+", "-"):
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    base = 10
    if s[:2].lower() == "0x" and len(s) > 2:
        base, s = 16, s[2:]
    elif s[:1] == "0" and len(s) > 1:
        base, s = 8, s[1:]
    if not s or not s.isascii() or not s.isalnum():
        return None
    try:
        return sign * int(s, base)
    except ValueError:
        return None


def _inet_aton(text: str) -> str | None:
    try:
        return socket.inet_ntoa(socket.inet_aton(text))
    except OSError:
        return None


def _inet6(text: str) -> str | None:
    """An IPv6 literal (with an optional `%zone`) in its compressed form; None when not."""
    addr, pct, zone = text.partition("%")
    if pct and not zone:
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        return None
    return socket.inet_ntop(socket.AF_INET6, packed) + (f"%{zone}" if pct else "")


def is_ipv6(addr: str) -> bool:
    """Whether a parsed rule's address is IPv6 (IPv4 ones never hold a colon)."""
    return ":" in addr


def _bracketed(text: str, what: str, fail) -> tuple[str, str]:
    """`[IPV6]:rest` -> (the address, rest); `text` starts with `[`."""
    inner, sep, rest = text[1:].partition("]")
    if not sep:
        raise fail(f"Missing ] after the {what} address")
    if not rest.startswith(":"):
        raise fail(f"Missing : after the {what} address" if what == "guest"
                   else "Missing : separator")
    addr = _inet6(inner)
    if addr is None:
        raise fail(f"Bad {what} address")
    return addr, rest[1:]


def _unbracketed_ipv6(text: str) -> str | None:
    """`ADDR:PORT` where ADDR is an IPv6 literal without its brackets: that ADDR."""
    addr = text.rpartition(":")[0]
    return addr if addr.count(":") >= 2 and _inet6(addr) else None


def parse_hostfwd(spec: str) -> HostFwd:
    """One `[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT` rule (an IPv6 address in
    brackets); HostFwdError with QEMU's reason when it does not parse."""

    def fail(reason: str) -> HostFwdError:
        return HostFwdError(f"invalid host forwarding rule {spec!r} ({reason})")

    proto, sep, rest = spec.partition(":")
    if not sep:
        raise fail("No : separators")
    if proto in ("tcp", ""):
        proto = "tcp"
    elif proto != "udp":
        raise fail("Bad protocol name")
    if rest.startswith("["):
        host_addr, rest = _bracketed(rest, "host", fail)
    else:
        bare = _unbracketed_ipv6(rest.partition("-")[0])
        if bare is not None:
            raise fail(f"Bad host address: an IPv6 address goes in brackets, [{bare}]")
        haddr, sep, rest = rest.partition(":")
        if not sep:
            raise fail("Missing : separator")
        host_addr = _inet_aton(haddr) if haddr else DEFAULT_HOST_ADDR
        if host_addr is None:
            raise fail("Bad host address")
    hport, sep, rest = rest.partition("-")
    if not sep:
        raise fail("Bad host port separator")
    host_port = _strtoi(hport)
    if host_port is None or not 0 <= host_port <= 65535:
        raise fail("Bad host port")
    guest_addr = None
    if rest.startswith("["):
        guest_addr, gport = _bracketed(rest, "guest", fail)
    else:
        bare = _unbracketed_ipv6(rest)
        if bare is not None:
            raise fail(f"Bad guest address: an IPv6 address goes in brackets, [{bare}]")
        gaddr, sep, gport = rest.partition(":")
        if not sep:
            raise fail("Missing guest address")
        if gaddr:
            guest_addr = _inet_aton(gaddr)
            if guest_addr is None:
                raise fail("Bad guest address")
    guest_port = _strtoi(gport)
    if guest_port is None or not 1 <= guest_port <= 65535:
        raise fail("Bad guest port")
    return HostFwd(proto, host_addr, host_port, guest_addr, guest_port)


def format_endpoint(addr, port: int) -> str:
    """`10.0.2.15:80`, `[fd00::15]:80`: as the rules write them (`addr` a string or an
    ip_address)."""
    addr = str(addr)
    return f"[{addr}]:{port}" if is_ipv6(addr) else f"{addr}:{port}"


def _host_socket(rule: HostFwd, kind: int) -> socket.socket:
    """The rule's host socket, bound: AF_INET6 for an IPv6 HOSTADDR."""
    family = socket.AF_INET6 if is_ipv6(rule.host_addr) else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((rule.host_addr, rule.host_port))
    except OSError:
        sock.close()
        raise
    return sock


# -- TCP ----------------------------------------------------------------------------------
class _TcpConnection:
    """One host connection and its stream to the guest, pumped by two threads; the last
    pump to finish closes both. A failure anywhere resets both sides."""

    def __init__(self, fwd: TcpForward, conn: socket.socket, peer) -> None:
        self.fwd = fwd
        self.conn = conn
        self.peer = peer
        self.stream: TcpStream | None = None
        self._lock = threading.Lock()
        self._done = 0
        self._aborted = False
        self._sending = False  # the down pump is in conn.sendall

    def run(self) -> None:
        """The connection's thread: connect to the guest, then pump guest -> host."""
        fwd = self.fwd
        try:
            self.stream = self._connect()
        except OSError as e:  # refused, timed out, unreachable: the host sees a close
            log.info("hostfwd %s: %s -> %s: %s", fwd.rule.proto, self.peer,
                     format_endpoint(*fwd.guest), e)
            self._close_host()
            fwd.forget(self)
            return
        if self._aborted or fwd.closing:  # close() ran while we connected
            self._aborted = False
            self.abort()
        threading.Thread(target=self._pump, args=(True,), daemon=True,
                         name=f"hostfwd-up-{self.peer}").start()
        self._pump(False)

    def _connect(self) -> TcpStream:
        """To the guest, from the client's own address and port when the forward has a
        `source` for it (else, or when that cannot be used, from our address)."""
        fwd = self.fwd
        local = fwd.source(self.peer) if fwd.source is not None else None
        if local is not None:
            try:
                return TcpStream.connect(fwd.runtime, fwd.guest, fwd.connect_timeout,
                                         nodelay=True, local_addr=local, transparent=True)
            except OSError as e:
                if e.errno not in _NOT_FROM_CLIENT:
                    raise
                log.debug("hostfwd %s: from our address (%s)", self.peer, e)
        return TcpStream.connect(fwd.runtime, fwd.guest, fwd.connect_timeout, nodelay=True)

    def _pump(self, up: bool) -> None:
        conn, stream = self.conn, self.stream
        try:
            if up:  # host -> guest
                while data := conn.recv(_BUF):
                    stream.write_all(data)
                if not self._aborted:
                    stream.shutdown("write")
            else:  # guest -> host
                while data := stream.read(_BUF):
                    self._sending = True
                    conn.sendall(data)
                    self._sending = False
                if not self._aborted:
                    conn.shutdown(socket.SHUT_WR)
        except OSError as e:
            if not self._aborted:
                log.debug("hostfwd %s %s: %s", self.peer, "up" if up else "down", e)
            self.abort()
        finally:
            with self._lock:
                self._done += 1
                last = self._done == 2
            if last:
                stream.close()
                self._close_host()
                self.fwd.forget(self)

    def abort(self) -> None:
        """Reset both sides and wake both pumps. Idempotent, any thread."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
        try:  # a RST when closed; SHUT_RD wakes a pump in recv without sending a FIN,
            # SHUT_WR one stuck in sendall (a FIN then, before the RST)
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.conn.shutdown(socket.SHUT_RDWR if self._sending else socket.SHUT_RD)
        except OSError:
            pass
        if self.stream is not None:
            self.stream.set_linger_abort(True)
            self.stream.close()

    def _close_host(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass


class TcpForward:
    """A host TCP listener whose connections go to `guest` = (addr, port) on our stack."""

    def __init__(self, runtime: Runtime, rule: HostFwd, guest: tuple[str, int], *,
                 connect_timeout: float = CONNECT_TIMEOUT, source=None) -> None:
        self.runtime = runtime
        self.rule = rule
        self.guest = guest
        self.connect_timeout = connect_timeout
        # peer -> the (address, port) the guest sees the connection come from, or None
        self.source = source
        self.closing = False
        self._conns: set[_TcpConnection] = set()
        self._lock = threading.Lock()
        sock = _host_socket(rule, socket.SOCK_STREAM)
        try:
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"hostfwd-tcp-{self.address[1]}")
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:  # shut down by close()
                return
            if self.closing:
                conn.close()
                return
            c = _TcpConnection(self, conn, peer)
            with self._lock:
                self._conns.add(c)
            threading.Thread(target=c.run, daemon=True, name=f"hostfwd-{peer}").start()

    def forget(self, c: _TcpConnection) -> None:
        with self._lock:
            self._conns.discard(c)

    def close(self) -> None:
        """Stop accepting and reset the open connections."""
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
        except OSError:
            pass
        self._thread.join(1.0)
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.abort()


# -- UDP ----------------------------------------------------------------------------------
class _UdpPeer:
    __slots__ = ("addr", "sock", "last")

    def __init__(self, addr, sock: UdpSocket, now: float) -> None:
        self.addr, self.sock, self.last = addr, sock, now


class UdpForward:
    """A host UDP socket relayed to `guest` = (addr, port): one stack socket per host peer,
    replies back to that peer, mappings dropped after `idle` seconds without traffic."""

    def __init__(self, runtime: Runtime, rule: HostFwd, guest: tuple[str, int], *,
                 idle: float = UDP_IDLE, source=None) -> None:
        self.runtime = runtime
        self.rule = rule
        self.guest = guest
        self.idle = idle
        self.source = source  # as TcpForward's
        self.peers: dict[tuple, _UdpPeer] = {}  # host peer (AF_INET or AF_INET6) -> its mapping
        self.stats = {"to_guest": 0, "to_host": 0, "dropped": 0}
        sock = _host_socket(rule, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._any = "::" if is_ipv6(guest[0]) else "0.0.0.0"  # the stack sockets' bind
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(sock, selectors.EVENT_READ, None)
        self._sel.register(self._stop_fd, selectors.EVENT_READ, "stop")
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"hostfwd-udp-{self.address[1]}")
        self._thread.start()

    def _loop(self) -> None:
        sel = self._sel
        try:
            while True:
                timeout = None
                if self.peers:
                    oldest = min(p.last for p in self.peers.values())
                    timeout = max(0.0, oldest + self.idle - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.data == "stop":
                        return
                    if key.data is None:
                        self._from_host()
                    else:
                        self._from_guest(key.data)
                self._expire(time.monotonic())
        finally:
            for peer in list(self.peers.values()):
                self._drop(peer)

    def _from_host(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(_BUF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ECONNREFUSED from an earlier reply's ICMP
                log.debug("hostfwd udp %s: %s", self.address, e)
                continue
            now = time.monotonic()
            peer = self.peers.get(addr)
            if peer is None:
                s = self._stack_socket(addr)
                s.connect(self.guest)
                peer = self.peers[addr] = _UdpPeer(addr, s, now)
                self._sel.register(s, selectors.EVENT_READ, peer)
            peer.last = now
            try:
                peer.sock.send_to(data, self.guest, nonblocking=True)
                self.stats["to_guest"] += 1
            except OSError:  # full transmit queue, or too large: UDP drops it
                self.stats["dropped"] += 1

    def _stack_socket(self, addr):
        """The stack socket for a new host peer: bound to the peer's own address and port
        when the forward has a `source` for it, else to ours."""
        local = self.source(addr) if self.source is not None else None
        if local is not None and (local[0].version == 6) == is_ipv6(self.guest[0]):
            try:
                return self.runtime.udp_bind(local, transparent=True)
            except OSError as e:
                log.debug("hostfwd udp %s: from our address (%s)", addr, e)
        return self.runtime.udp_bind((self._any, 0))

    def _from_guest(self, peer: _UdpPeer) -> None:
        while True:
            try:
                data, _src = peer.sock.recv_from(_BUF, nonblocking=True)
            except BlockingIOError:
                return
            except OSError:
                self._drop(peer)
                return
            peer.last = time.monotonic()
            try:
                self.sock.sendto(data, peer.addr)
                self.stats["to_host"] += 1
            except OSError:
                self.stats["dropped"] += 1

    def _expire(self, now: float) -> None:
        for peer in [p for p in self.peers.values() if now - p.last >= self.idle]:
            self._drop(peer)

    def _drop(self, peer: _UdpPeer) -> None:
        if self.peers.get(peer.addr) is peer:
            del self.peers[peer.addr]
        try:
            self._sel.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()

    def close(self) -> None:
        try:
            os.eventfd_write(self._stop_fd, 1)
        except OSError:
            return  # closed already
        self._thread.join(2.0)
        self._sel.close()
        self.sock.close()
        os.close(self._stop_fd)


# -- all of them ---------------------------------------------------------------------------
class HostForwarder:
    """The forwards of one stack. Opens every host socket at once (OSError, with the
    ones already open closed, when one cannot be bound); `close()` ends them all."""

    def __init__(self, runtime: Runtime, rules, default_guest: str, **options) -> None:
        rules = [parse_hostfwd(r) if isinstance(r, str) else r for r in rules]
        self.forwards: list[TcpForward | UdpForward] = []
        for rule in rules:
            guest = (rule.guest_addr or default_guest, rule.guest_port)
            try:
                if rule.proto == "tcp":
                    fwd = TcpForward(runtime, rule, guest, connect_timeout=options.get(
                        "connect_timeout", CONNECT_TIMEOUT), source=options.get("source"))
                else:
                    fwd = UdpForward(runtime, rule, guest,
                                     idle=options.get("udp_idle", UDP_IDLE),
                                     source=options.get("source"))
            except OSError as e:
                self.close()
                raise OSError(e.errno, f"hostfwd {rule.proto}:"
                                       f"{format_endpoint(rule.host_addr, rule.host_port)}: "
                                       f"{e.strerror}") from None
            self.forwards.append(fwd)
            log.info("hostfwd %s %s -> %s", rule.proto, format_endpoint(*fwd.address),
                     format_endpoint(*guest))

    def address(self, i: int = 0) -> tuple[str, int]:
        """The host address forward `i` is bound to (its port when the rule said 0)."""
        return self.forwards[i].address

    def close(self) -> None:
        for fwd in self.forwards:
            fwd.close()
        self.forwards = []
