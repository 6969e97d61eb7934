"""The debugging surface of a running `vhostnet serve`: its control socket, the
`vhostnet status | faults | capture` commands that talk to it, and JSON log lines.

The control socket is a unix stream socket (default `<socket-path>.ctl`) served on the
vhost-user server's one loop: every read and write is non-blocking, so a slow or stuck
client never holds up the data path. The protocol is JSON lines: one request object per
line, one reply object per line, each reply with `"ok"` (and `"error"` when false).

Requests:

- `{"cmd": "status"}` -> `{"ok": true, "status": {...}}`: the negotiated features and
  protocol features, the queues (index, size, started, enabled, last_avail_idx, used_idx,
  kicks, notifications, errors), device stats and drops, backend and server counters, the
  interface's stats and ARP table, the sockets (kind, local and remote endpoint, TCP
  state), DHCP leases and the faults; under `"ipv6"`, our IPv6 addresses (link-local
  first), the default router, the neighbor cache (address, MAC, RFC 4861 state, router
  flag), path MTUs from Packet Too Big, and what the router advertiser (prefixes, RDNSS,
  MTU, adverts sent, solicitations) and the DHCPv6 server counted.
- `{"cmd": "faults"}` -> `{"ok": true, "faults": {"enabled", "knobs", "stats"}}`; with
  `"set": {knob: value, ...}` faults go on (or change) on the live link first, with
  `"off": true` they go off. Knobs are `FaultInjector`'s (`drop`, `delay`, `reorder`,
  `duplicate`, `corrupt`, `corrupt_skip`, `rate_limit`, `interval`, `max_size`, `seed`)
  and `match`, a pcap-filter expression: the faults damage only the frames it accepts
  ("" for all; a bad one fails the request with libpcap's message, nothing changed);
  `loss` and `rate` are accepted for `drop` and `rate_limit`.
- `{"cmd": "capture"}` (optional `"snaplen": N`, `"filter": EXPR`) -> `{"ok": true,
  "capturing": true}`, then one line per frame crossing the virtqueues until the client
  hangs up: `{"ts": unix time, "dir": "guest-tx" | "guest-rx", "len": N, "frame": hex,
  "lost": N}`. `guest-tx` is a frame the guest sent, `guest-rx` one it was given. `EXPR`
  is a pcap-filter expression (tcpdump's syntax, compiled by libpcap: see
  apps/capture/bpf.py; a bad one fails the request with libpcap's message): the server
  runs it before a frame is encoded or queued, and sends only the frames it accepts.
  Those that find more than `CAPTURE_BUFFER` bytes waiting for a slow client are not
  sent (`lost` counts them). The client decodes what it gets (apps/capture/decode.py).
  With `"vnet": true` each record also has `"vnet": hex`, the first 10 bytes of the
  virtio_net_hdr the frame crossed the rings with (flags, gso_type, hdr_len, gso_size,
  csum_start, csum_offset, little-endian): the guest's for `guest-tx`, ours for
  `guest-rx`; all zeros when no offload was negotiated.

Sessions go like this (a stack `StackApp`, a `VhostUserServer` built by `make_server`):

>>> import json, os, socket, tempfile
>>> from apps.serve import make_server
>>> d = tempfile.mkdtemp()
>>> server, stack, app = make_server(socket_path=os.path.join(d, "v.sock"),
...                                  start_apps=False, control=os.path.join(d, "v.ctl"))
>>> c = socket.socket(socket.AF_UNIX); c.connect(os.path.join(d, "v.ctl"))
>>> c.sendall(b'{"cmd": "faults", "set": {"loss": 0.5}}\\n')
>>> for _ in range(3): server.run_once(0.01)
>>> json.loads(c.recv(65536))["faults"]["knobs"]
{'drop': 0.5}
>>> c.close(); app.control.close(); server.close()
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict

from apps.capture.bpf import Filter

log = logging.getLogger("vhostnet.control")

MAX_REQUEST = 64 * 1024  # a request line longer than this closes the connection
CAPTURE_BUFFER = 4 << 20  # bytes of capture lines kept for one slow client
KNOB_ALIASES = {"loss": "drop", "rate": "rate_limit"}


def default_control_path(socket_path: str | None) -> str:
    """Where `serve --socket-path PATH` puts its control socket: PATH.ctl."""
    return (socket_path or "vhostnet.sock") + ".ctl"


class ControlError(Exception):
    """A request the control server cannot answer (its message goes back as `error`)."""


# -- the server side (runs on the vhost-user server's loop) -------------------------------
class _Client:
    __slots__ = ("sock", "fd", "inbuf", "out", "hook", "lost", "snaplen", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.out = bytearray()
        self.hook: Callable[[str, memoryview], None] | None = None
        self.lost = 0
        self.snaplen: int | None = None
        self.closed = False


class ControlServer:
    """The control socket of one `VhostUserServer` with a `StackApp` (or any App: the
    stack's parts are reported when the app has them). Build it before `serve_forever`
    or on the loop's thread; `close()` removes the socket file."""

    def __init__(self, server, app, path: str) -> None:
        self.server = server
        self.app = app
        self.path = path
        self.started = time.time()
        self.clients: dict[int, _Client] = {}
        self.listener = _listen(path)
        self.listener.setblocking(False)
        server.add_reader(self.listener.fileno(), self._on_accept)
        from apps.capture.extcap import register

        # listed by `vhostnet extcap` (Wireshark, tshark -D) while we serve
        self.registered = register(path)

    # -- connections --------------------------------------------------------------------
    def _on_accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("control socket accept: %s", e)
                return
            sock.setblocking(False)
            client = _Client(sock)
            self.clients[client.fd] = client
            self.server.add_reader(client.fd, lambda c=client: self._on_client(c))

    def _on_client(self, c: _Client) -> None:
        self._flush(c)
        while not c.closed:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(c)
                return
            if not data:
                self._drop(c)
                return
            c.inbuf += data
            while not c.closed and b"\n" in c.inbuf:
                line, _, rest = c.inbuf.partition(b"\n")
                c.inbuf = bytearray(rest)
                if line.strip():
                    self._reply(c, self._handle_line(c, bytes(line)))
            if len(c.inbuf) > MAX_REQUEST:
                self._reply(c, {"ok": False, "error": "request line too long"})
                self._flush(c)
                self._drop(c)
                return

    def _reply(self, c: _Client, obj: dict) -> None:
        c.out += json.dumps(obj, default=str).encode() + b"\n"
        self._flush(c)

    def _flush(self, c: _Client) -> None:
        if c.closed:
            return
        while c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(c)
                return
            del c.out[:n]
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.server.want_writable(c.fd, bool(c.out))

    def _drop(self, c: _Client) -> None:
        if c.closed:
            return
        c.closed = True
        if c.hook is not None:
            self._remove_hook(c.hook)
            c.hook = None
        self.server.remove_reader(c.fd)
        self.clients.pop(c.fd, None)
        c.sock.close()

    def close(self) -> None:
        """Stop serving: close every client and the listener, remove the socket file."""
        from apps.capture.extcap import unregister

        unregister(self.registered)
        self.registered = None
        for c in list(self.clients.values()):
            self._drop(c)
        if self.listener is not None:
            self.server.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    # -- requests -----------------------------------------------------------------------
    def _handle_line(self, c: _Client, line: bytes) -> dict:
        try:
            req = json.loads(line)
        except ValueError as e:
            return {"ok": False, "error": f"not JSON: {e}"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": 'a request is an object with "cmd"'}
        handler = getattr(self, f"_cmd_{req['cmd']}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown cmd {req['cmd']!r} "
                                          "(status, faults, capture)"}
        try:
            return {"ok": True, **handler(c, req)}
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug here must not take the backend (and the VM) down
            log.exception("control request %r failed", req.get("cmd"))
            return {"ok": False, "error": f"internal error: {e!r}"}

    def _cmd_status(self, c: _Client, req: dict) -> dict:
        return {"status": self.status()}

    def _cmd_faults(self, c: _Client, req: dict) -> dict:
        set_faults = getattr(self.app, "set_faults", None)
        if set_faults is None:
            raise ControlError("this backend has no stack to inject faults into (--raw)")
        if req.get("off"):
            set_faults(None)
        knobs = req.get("set")
        if knobs is not None:
            if not isinstance(knobs, dict):
                raise ControlError('"set" is an object of fault knobs')
            knobs = {KNOB_ALIASES.get(k, k): v for k, v in knobs.items()}
            if "match" in knobs:
                try:
                    Filter.compile(knobs["match"])
                except (TypeError, ValueError) as e:
                    raise ControlError(BAD_MATCH + " ".join(str(e).split())) from None
            try:
                set_faults(knobs)
            except (TypeError, ValueError) as e:
                raise ControlError(str(e)) from None
            log.info("faults on: %s", self.app.fault_knobs)
        elif req.get("off"):
            log.info("faults off")
        return {"faults": self.faults()}

    def _cmd_capture(self, c: _Client, req: dict) -> dict:
        if not hasattr(self.app, "add_frame_hook"):
            raise ControlError("this backend cannot capture (no frame hooks)")
        if c.hook is not None:
            raise ControlError("this connection captures already")
        snaplen = req.get("snaplen")
        if snaplen is not None and (not isinstance(snaplen, int) or snaplen <= 0):
            raise ControlError("snaplen is a positive number of bytes")
        expr = req.get("filter")
        if expr is not None and not isinstance(expr, str):
            raise ControlError("filter is a pcap-filter expression (a string)")
        try:
            match = Filter.compile(expr) if expr else None
        except ValueError as e:  # libpcap's own words, one line
            raise ControlError(" ".join(str(e).split())) from None
        c.snaplen = snaplen
        vnet = req.get("vnet", False)
        if not isinstance(vnet, bool):
            raise ControlError("vnet is true or false")
        app = self.app

        # `match` runs first (add_frame_hook): the frames it rejects cost one BPF run,
        # in C over a whole batch where the device can
        def hook(direction: str, frame: memoryview) -> None:
            if c.closed:
                return
            if len(c.out) > CAPTURE_BUFFER:
                c.lost += 1
                return
            data = frame[:c.snaplen] if c.snaplen else frame
            # the device's header for this frame (vhostuser/net.py: set before the hook)
            head = (f', "vnet": "{bytes(getattr(app.device, "frame_vnet", b"")).hex()}"'
                    if vnet else "")
            c.out += (f'{{"ts": {time.time():.6f}, "dir": "{direction}", "len": {len(frame)}, '
                      f'"frame": "{bytes(data).hex()}", "lost": {c.lost}{head}}}\n').encode()
            self._flush(c)

        c.hook = hook
        self.app.add_frame_hook(hook, match)
        return {"capturing": True}

    def _remove_hook(self, hook) -> None:
        remove = getattr(self.app, "remove_frame_hook", None)
        if remove is not None:
            remove(hook)

    # -- what is reported ---------------------------------------------------------------
    def faults(self) -> dict:
        inj = getattr(self.app, "faults", None)
        knobs = getattr(self.app, "fault_knobs", None)
        return {"enabled": knobs is not None, "knobs": knobs or {},
                "stats": asdict(inj.stats) if inj is not None else None}

    def status(self) -> dict:
        """Everything `vhostnet status` shows, as plain JSON-able data."""
        from vhostuser.features import Feature
        from vhostuser.protocol import ProtocolFeature, feature_names

        srv = self.server
        out: dict = {
            "pid": os.getpid(),
            "socket_path": srv.socket_path or srv.connect_path,
            "control_path": self.path,
            "uptime": round(time.time() - self.started, 3),
            "connections_served": srv.connections_served,
            "server_counters": dict(srv.counters),
            "connected": srv.conn is not None,
            # every socket front-ends reach us on; the active one's device carries the stack
            "ports": [{"path": p.name, "connected": p.conn is not None,
                       "active": p.conn is not None and p.conn is srv.conn}
                      for p in srv.ports],
            "device": None,
        }
        conn = srv.conn
        if conn is not None:
            be, net = conn.backend, conn.backend.net
            out["device"] = {
                "features": feature_names(be.acked_features, Feature),
                "protocol_features": feature_names(be.acked_protocol, ProtocolFeature),
                "features_set": be.features_set,
                "status": be.status,
                "mtu": be.mtu,
                "queues": [{
                    "index": q.index, "kind": "tx" if q.index % 2 else "rx", "size": q.size,
                    "started": q.started, "enabled": q.enabled, "broken": q.broken,
                    "polling": q.polling, "last_avail_idx": q.last_avail_idx,
                    "used_idx": q.used_idx, "kicks": q.stats.kicks,
                    "notifications": q.stats.notified, "errors": q.stats.errors,
                    "popped": q.stats.popped, "batched": q.stats.batched,
                    "used": q.stats.used, "resyncs": q.stats.resyncs,
                } for q in be.queues],
                "stats": dict(net.stats),
                "drops": dict(net.drops),
                "backend_counters": dict(be.counters),
                # live migration: whether the front-end logs our writes, and the log
                "dirty_log": {"logging": be.logging,
                              "pages": be.dirty_log.pages if be.dirty_log else 0,
                              "marks": be.dirty_log.marked if be.dirty_log else 0,
                              "outside": be.dirty_log.outside if be.dirty_log else 0},
            }
        out["captures"] = sum(1 for c in self.clients.values() if c.hook is not None)
        stack = getattr(self.app, "stack", None)
        if stack is not None:
            with stack.runtime.lock:
                out.update(_stack_status(stack))
            out["faults"] = self.faults()
            pcap = getattr(self.app, "pcap", None)
            out["pcap"] = {"writing": pcap is not None,
                           "frames": pcap.frames if pcap is not None else None,
                           "stopped": getattr(self.app, "pcap_error", None)}
        return out


def _socket_entry(handle: int, sock) -> dict:
    """One socket, by shape: TCP sockets and listeners have local_endpoint (and
    remote_endpoint, state); UDP sockets have endpoint."""
    entry = {"handle": handle, "kind": sock.KIND or "?", "type": type(sock).__name__,
             "local": None, "remote": None, "state": None}
    local = getattr(sock, "local_endpoint", None)
    if local is None and not callable(getattr(sock, "endpoint", None)):
        local = getattr(sock, "endpoint", None)
    entry["local"] = _endpoint(local)
    remote = getattr(sock, "remote_endpoint", None)
    entry["remote"] = _endpoint(remote) if remote and remote[1] else None
    state = getattr(sock, "state", None)
    if state is not None and hasattr(state, "name"):
        entry["state"] = state.name
    elif hasattr(sock, "is_listening"):
        entry["state"] = "LISTEN" if sock.is_listening else "CLOSED"
        entry["pending"] = sock.pending
        entry["half_open"] = sock.half_open
    return entry


def _endpoint(ep) -> str | None:
    if not ep:
        return None
    addr, port = ep[:2]
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def _in(when: float, now: float) -> float | None:
    """Seconds from `now` to `when` (None for no timer, i.e. infinity)."""
    return None if when == float("inf") else round(when - now, 1)


def _neighbors(iface, now: float) -> list[dict]:
    """The ARP table: address, MAC, seconds left."""
    return [{"address": str(a), "mac": str(mac), "expires_in": _in(exp, now)}
            for a, mac, exp in sorted(iface.neighbors.entries())]


def _ipv6_status(stack, iface, now: float) -> dict:
    """The IPv6 side: our addresses (link-local first), the neighbor cache with the RFC 4861
    states, path MTUs learnt from Packet Too Big, and what our router advertiser and
    DHCPv6 server did."""
    from netstack.socket.dhcpv6_server import Dhcpv6ServerSocket
    from netstack.socket.router_adv import RouterAdvertiser

    out: dict = {"enabled": bool(getattr(iface, "ipv6_enabled", False)),
                 "addresses": [], "link_local": None, "default_router": None,
                 "neighbors": [], "path_mtu": [], "router_adv": None, "dhcpv6_server": None}
    if not out["enabled"]:
        return out
    out["addresses"] = [str(c) for c in iface.ipv6_addrs]
    out["link_local"] = str(iface.link_local6)
    router = iface.ipv6_default_router
    out["default_router"] = None if router is None else str(router)
    for e in sorted(iface.neighbors6.entries(), key=lambda e: e["address"]):
        out["neighbors"].append({"address": str(e["address"]), "state": e["state"].name,
                                 "mac": None if e["mac"] is None else str(e["mac"]),
                                 "router": e["router"], "queued": e["queued"],
                                 "timer_in": _in(e["timer"], now)})
    for dst, mtu, expiry in sorted(iface.path_mtus()):
        if expiry > now:
            out["path_mtu"].append({"destination": str(dst), "mtu": mtu,
                                    "expires_in": _in(expiry, now)})
    for _, sock in stack.sockets.items():
        if isinstance(sock, RouterAdvertiser):
            c = sock.config
            out["router_adv"] = {"prefixes": [str(p) for p in c.prefixes],
                                 "rdnss": [str(a) for a in c.rdnss], "mtu": c.mtu,
                                 "router_lifetime": c.router_lifetime,
                                 "other_config": c.other_config, "sent": sock.sent,
                                 "solicitations": sock.solicitations}
        elif isinstance(sock, Dhcpv6ServerSocket):
            out["dhcpv6_server"] = asdict(sock.server.stats)
    return out


def _stack_status(stack) -> dict:
    iface = stack.iface
    sockets = []
    for handle, sock in stack.sockets.items():
        sockets.append(_socket_entry(handle, sock))
    now = time.monotonic()
    inow = iface.now  # the interface's clock: its timers count in it
    leases = []
    if stack.dhcp is not None:
        for le in stack.dhcp.leases():
            leases.append({"mac": str(le.mac), "address": str(le.address),
                           "state": le.state.value, "hostname": le.hostname,
                           "expires_in": round(le.expires - now, 1)})
    return {
        "interface": {"mac": str(iface.hardware_addr),
                      "addresses": [str(a) for a in iface.ip_addrs],
                      "neighbors": _neighbors(iface, inow),
                      "stats": dict(iface.stats)},
        "ipv6": _ipv6_status(stack, iface, inow),
        "runtime": dict(getattr(stack.runtime, "stats", {})),
        "sockets": sockets,
        "dhcp_leases": leases,
        "gateway": _gateway_status(stack),
        "boot": _boot_status(stack),
    }


def _boot_status(stack) -> dict | None:
    """Network boot: what DHCP names, the boot files, and the TFTP server's counters."""
    from netstack.socket.tftp_server import TftpServerSocket

    boot = getattr(stack.config, "boot", None)
    if boot is None or not boot.enabled:
        return None
    dhcp = stack.dhcp.config if stack.dhcp is not None else None
    out: dict = {"bootfile": dhcp.boot_file if dhcp else None,
                 "ipxe_bootfile": dhcp.ipxe_boot_file if dhcp else None,
                 "files": sorted(stack.boot_files), "tftp_root": boot.tftp_dir, "tftp": None}
    for sock in stack.sockets.of_kind("udp"):
        if isinstance(sock, TftpServerSocket):
            stats = asdict(sock.server.stats)
            stats["refused"] = dict(sock.server.stats.refused)
            out["tftp"] = {"sessions": sock.server.sessions, **stats}
    return out


def _gateway_status(stack) -> dict | None:
    gw = getattr(stack, "gateway", None)
    if gw is None:
        return None
    out = gw.status()
    # the ports our own apps hold on the gateway address: the rest go to the host
    out["our_tcp_ports"] = sorted(stack.sockets.tcp_listen)
    out["our_udp_ports"] = sorted({s.endpoint[1] for s in stack.sockets.of_kind("udp")
                                   if getattr(s, "endpoint", None)})
    return out


def _listen(path: str) -> socket.socket:
    """Bind `path`, replacing a stale socket file (nobody answers on it) but never a live
    one or a file that is not a socket."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not removed")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise OSError(errno.EADDRINUSE, f"another backend's control socket is {path}")
        finally:
            probe.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(8)
    return s


# -- the client side ----------------------------------------------------------------------
class ControlClient:
    """A blocking client of the control socket."""

    def __init__(self, path: str, timeout: float | None = 5.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except FileNotFoundError:
            self.sock.close()
            raise ControlError(f"no backend control socket at {path} (is `vhostnet serve` "
                               "running? give its --socket-path or --control)") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise ControlError(f"nobody answers on {path}: the backend that made it is "
                               "gone") from None
        except OSError as e:
            self.sock.close()
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        self._file = self.sock.makefile("rb")

    def request(self, req: dict) -> dict:
        """Send one request; return its reply (ControlError for an error reply)."""
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        reply = self.read()
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "request failed"))
        return reply

    def read(self) -> dict:
        line = self._file.readline()
        if not line:
            raise ControlError("the backend closed the control connection")
        return json.loads(line)

    def frames(self, snaplen: int | None = None, timeout: float | None = None,
               filter: str | None = None, vnet: bool = False) -> Iterator[dict]:
        """Start a capture now (of the frames the pcap-filter expression `filter`
        accepts, evaluated by the backend); return an iterator of the frame records as
        they come (forever; with `timeout`, socket.timeout when none came for that
        long). ControlError with libpcap's message for a bad expression. With `vnet`,
        the records carry the frames' virtio_net_hdr."""
        req: dict = {"cmd": "capture"}
        if snaplen:
            req["snaplen"] = snaplen
        if filter:
            req["filter"] = filter
        if vnet:
            req["vnet"] = True
        self.request(req)
        self.sock.settimeout(timeout)
        return iter(self.read, None)

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_frame(rec: dict, decoder=None) -> str:
    """One capture record as tcpdump prints a packet: the local time, the direction
    (`guest>` a frame the guest sent, `>guest` one it was given), the virtio_net_hdr when
    the record carries it, then the frame decoded by `decoder` (an
    apps.capture.decode.Decoder: its -v/-x, and what it keeps between the frames of one
    capture; a fresh one when None). -v and -x add lines, as tcpdump's do.

    >>> rec = {"ts": 0.5, "dir": "guest-tx", "len": 42, "frame": "ff" * 6 + "525400123456"
    ...        "08060001080006040001525400123456" "0a00020f000000000000" "0a000202"}
    >>> format_frame(rec)[8:]
    '.500000 guest> 52:54:00:12:34:56 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), \
length 42: Request who-has 10.0.2.2 tell 10.0.2.15, length 28'
    """
    from apps.capture.decode import Decoder, vnet_summary

    if decoder is None:
        decoder = Decoder()
    ts = time.strftime("%H:%M:%S", time.localtime(rec["ts"])) + f"{rec['ts'] % 1:.6f}"[1:]
    arrow = "guest>" if rec["dir"] == "guest-tx" else ">guest"
    vnet = f"{vnet_summary(bytes.fromhex(rec['vnet']))} " if rec.get("vnet") else ""
    return f"{ts} {arrow} {vnet}{decoder.decode(bytes.fromhex(rec['frame']), rec['len'])}"


# -- structured logs ----------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (unix seconds), level, logger, msg (and exc when
    the record carries an exception)."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": round(record.created, 6), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def setup_logging(level: str, fmt: str = "plain") -> None:
    """Configure the root logger for `serve`: plain text lines, or JSON lines."""
    if fmt == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    else:
        logging.basicConfig(level=getattr(logging, level.upper()),
                            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")


# -- the commands -------------------------------------------------------------------------
def _path(args: argparse.Namespace) -> str:
    return args.control or default_control_path(args.socket_path)


def _fail(msg: str) -> int:
    print(f"vhostnet: {msg}", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with ControlClient(_path(args)) as c:
            st = c.request({"cmd": "status"})["status"]
    except ControlError as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(format_status(st))
    return 0


def _counters(d: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((d or {}).items())) or "-"


def format_status(st: dict) -> str:
    """The readable summary `vhostnet status` prints."""
    lines = [f"backend pid {st['pid']} on {st['socket_path']} (control {st['control_path']}), "
             f"up {st['uptime']:.0f}s, {st['connections_served']} connection(s) served"]
    closed = {k: v for k, v in (st.get("server_counters") or {}).items() if k != "handovers"}
    if closed:
        lines.append(f"  closed connections: {_counters(closed)}")
    ports = st.get("ports") or []
    if len(ports) > 1:
        lines.append("  sockets: " + ", ".join(
            f"{p['path']} ({'active' if p['active'] else 'connected' if p['connected'] else 'idle'})"
            for p in ports) + f"; stack moved {st['server_counters'].get('handovers', 0)} time(s)")
    dev = st.get("device")
    if dev is None:
        lines.append("front-end: not connected (waiting for QEMU)")
    else:
        lines.append(f"front-end: connected, status {dev['status']:#x}, mtu {dev['mtu']}")
        lines.append(f"  features: {' '.join(dev['features']) or '-'}")
        lines.append(f"  protocol features: {' '.join(dev['protocol_features']) or '-'}")
        lines.append("  queue kind size started enabled avail  used  kicks notif errors")
        for q in dev["queues"]:
            lines.append(f"  {q['index']:5d} {q['kind']:>4} {q['size']:4d} "
                         f"{'yes' if q['started'] else 'no':>7} "
                         f"{'yes' if q['enabled'] else 'no':>7} {q['last_avail_idx']:5d} "
                         f"{q['used_idx']:5d} {q['kicks']:6d} {q['notifications']:5d} "
                         f"{q['errors']:6d}")
        lines.append(f"  device: {_counters(dev['stats'])}")
        lines.append(f"  drops: {_counters(dev['drops'])}")
        lines.append(f"  backend: {_counters(dev['backend_counters'])}")
    pcap = st.get("pcap") or {}
    if pcap.get("stopped"):
        lines.append(f"pcap: stopped ({pcap['stopped']}); the traffic went on")
    elif pcap.get("writing"):
        lines.append(f"pcap: writing, {pcap['frames']} frames")
    if "interface" in st:
        i = st["interface"]
        v6 = st.get("ipv6") or {}
        lines.append(f"interface {i['mac']} {' '.join(i['addresses'])}")
        if v6.get("enabled"):
            lines.append(f"  ipv6: {' '.join(v6['addresses'])}"
                         + (f" (default router {v6['default_router']})"
                            if v6.get("default_router") else ""))
        elif v6:
            lines.append("  ipv6: off")
        lines.append(f"  stats: {_counters(i['stats'])}")
        arp = i.get("neighbors", [])
        lines.append(f"ARP ({len(arp)}):" if arp else "ARP: empty")
        for n in arp:
            lines.append(f"  {n['address']:15} {n['mac']} expires in {n['expires_in']:.0f}s")
        if v6.get("enabled"):
            lines.extend(_format_ipv6(v6))
        lines.append(f"sockets ({len(st['sockets'])}):")
        for s in st["sockets"]:
            lines.append(f"  {s['handle']:4d} {s['kind']:4} {s.get('local') or '*':21} "
                         f"{s.get('remote') or '':21} {s.get('state') or ''} "
                         f"({s['type']})".rstrip())
        leases = st["dhcp_leases"]
        lines.append(f"DHCP leases ({len(leases)}):" if leases else "DHCP leases: none")
        for le in leases:
            lines.append(f"  {le['address']:15} {le['mac']} {le['state']:7} "
                         f"{le['hostname'] or ''} expires in {le['expires_in']:.0f}s")
        lines.extend(_format_gateway(st.get("gateway")))
        boot = st.get("boot")
        if boot is not None:
            names = [f"DHCP names {boot['bootfile']}" if boot["bootfile"] else "",
                     f"iPXE gets {boot['ipxe_bootfile']}" if boot["ipxe_bootfile"] else ""]
            lines.append("network boot: " + "; ".join(n for n in names if n)
                         + (f"; files {', '.join(boot['files'])}" if boot["files"] else ""))
            if boot["tftp"] is not None:
                lines.append(f"  TFTP ({boot['tftp_root'] or 'boot files only'}): "
                             f"{_counters({k: v for k, v in boot['tftp'].items() if v})}")
        f = st["faults"]
        if f["enabled"]:
            lines.append(f"faults: ON {_counters(f['knobs'])}")
            if f["stats"]:
                for d in ("rx", "tx"):
                    nonzero = {k: v for k, v in f["stats"][d].items() if v}
                    lines.append(f"  {d}: {_counters(nonzero)}")
        else:
            lines.append("faults: off")
    return "\n".join(lines)


def _format_gateway(gw: dict | None) -> list[str]:
    if gw is None:
        return ["gateway: off (guests reach only our apps)"]
    maps = ", ".join(f"{g} -> {h}" for g, h in gw["loopback"].items()) or "off"
    lines = [f"gateway: {gw['tcp_flows']} TCP and {gw['udp_flows']} UDP flows; host loopback "
             f"{maps}; ours: TCP {','.join(map(str, gw['our_tcp_ports'])) or '-'}, "
             f"UDP {','.join(map(str, gw['our_udp_ports'])) or '-'}",
             f"  counters: {_counters(gw['counters'])}"]
    for f in gw["flows"]:
        lines.append(f"  {f['proto']} {f['guest']:>21} -> {f['dst'] or '-':21} host "
                     f"{f.get('host_local') or '-'} -> {f.get('host_remote') or '-'} "
                     f"{f['state']} up {f['up']} down {f['down']} age {f['age']}s")
    return lines


def _format_ipv6(v6: dict) -> list[str]:
    lines = []
    nd = v6["neighbors"]
    lines.append(f"IPv6 neighbors ({len(nd)}):" if nd else "IPv6 neighbors: none")
    width = max([25, *(len(n["address"]) for n in nd)])
    for n in nd:
        flags = " router" if n["router"] else ""
        if n["queued"]:
            flags += f" queued {n['queued']}"
        if n["timer_in"] is not None:
            flags += f" timer {n['timer_in']:.0f}s"
        lines.append(f"  {n['address']:{width}} {n['mac'] or '(unresolved)':17} "
                     f"{n['state']:10}{flags}".rstrip())
    ra = v6.get("router_adv")
    if ra is not None:
        extra = [f"RDNSS {' '.join(ra['rdnss'])}"] if ra["rdnss"] else []
        if ra["mtu"]:
            extra.append(f"MTU {ra['mtu']}")
        lines.append(f"router adverts: {' '.join(ra['prefixes']) or 'no prefix'}"
                     + (f" ({', '.join(extra)})" if extra else "")
                     + f"; {ra['sent']} sent, {ra['solicitations']} solicitation(s)")
    if v6.get("dhcpv6_server") is not None:
        lines.append(f"DHCPv6 server: {_counters(v6['dhcpv6_server'])}")
    pm = v6["path_mtu"]
    if pm:
        lines.append(f"path MTU ({len(pm)}):")
        for p in pm:
            lines.append(f"  {p['destination']:{width}} {p['mtu']:5d} "
                         f"expires in {p['expires_in']:.0f}s")
    return lines


# the injector's knobs by the option that sets them (what the user typed is what they read)
FAULT_OPTIONS = {"drop": "--loss", "delay": "--delay", "reorder": "--reorder",
                 "duplicate": "--duplicate", "corrupt": "--corrupt", "max_size": "--max-size",
                 "seed": "--seed", "rate_limit": "--rate", "match": "--match"}


BAD_MATCH = "bad match expression: "  # the faults request's error (libpcap's words follow)


def _user_words(text: str) -> str:
    """An injector message or knob list in the options' words ("drop" is --loss)."""
    for knob, opt in sorted(FAULT_OPTIONS.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"\b{knob}\b", opt.lstrip("-"), text)
    return text


def cmd_faults(args: argparse.Namespace) -> int:
    knobs: dict = {}
    for name, knob in (("loss", "drop"), ("delay", "delay"), ("reorder", "reorder"),
                       ("duplicate", "duplicate"), ("corrupt", "corrupt"),
                       ("max_size", "max_size"), ("seed", "seed")):
        value = getattr(args, name)
        if value is not None:
            knobs[knob] = value
    if args.corrupt is not None:
        knobs["corrupt_skip"] = 14  # keep the Ethernet header: damage what the stack parses
    if args.rate is not None:
        knobs["rate_limit"], knobs["interval"] = args.rate, 1.0
    if args.match is not None:
        knobs["match"] = args.match
    if args.off and knobs:
        return _fail("--off turns faults off; give it alone")
    req: dict = {"cmd": "faults"}
    if args.off:
        req["off"] = True
    elif knobs:
        req["set"] = knobs
    try:
        with ControlClient(_path(args)) as c:
            faults = c.request(req)["faults"]
    except ControlError as e:
        msg = str(e)
        if msg.startswith(BAD_MATCH):  # libpcap's words, untouched
            return _fail(f"bad --match {args.match!r}: {msg[len(BAD_MATCH):]}")
        return _fail(_user_words(msg))
    if args.json:
        print(json.dumps(faults, indent=2))
    elif faults["enabled"]:
        shown = {FAULT_OPTIONS.get(k, k).lstrip("-"): v for k, v in faults["knobs"].items()
                 if k not in ("interval", "corrupt_skip")}
        print(f"faults ON: {_counters(shown)}")
        for d, label in (("rx", "guest -> stack"), ("tx", "stack -> guest")):
            if faults["stats"]:
                print(f"  {label}: {_counters(faults['stats'][d])}")
    else:
        print("faults off")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from apps.capture.decode import Decoder

    # (--json records carry the frame's hex already: their summary gets no hex dump)
    decoder = Decoder(args.verbose, hexdump=args.hex and not args.json)
    seen = 0
    lost = 0
    sink = None
    if args.write:
        from netstack.phy.pcap import PcapSink

        fmt = "pcap" if args.write.endswith(".pcap") else "pcapng"
        try:  # a file we cannot write is refused before the capture starts
            open(args.write, "wb").close()
        except OSError as e:
            return _fail(f"-w {args.write}: {e.strerror}")

        def open_sink(start: float) -> PcapSink:  # the frames' own times, exactly
            return PcapSink(args.write, format=fmt, rotate=args.rotate, start=start)
    elif args.rotate is not None:
        return _fail("--rotate needs -w FILE")
    try:
        with ControlClient(_path(args)) as c:
            try:
                frames = c.frames(args.snaplen, filter=args.filter, vnet=args.vnet)
            except ControlError as e:  # the backend compiled the filter: libpcap's words
                if args.filter:
                    return _fail(f"bad --filter {args.filter!r}: {e}")
                raise
            for rec in frames:
                lost = rec.get("lost", 0)
                if args.write:  # guest-tx is what our side receives, as --pcap has it
                    if sink is None:
                        sink = open_sink(rec["ts"])
                    sink.write(bytes.fromhex(rec["frame"]), rec["ts"],
                               "rx" if rec["dir"] == "guest-tx" else "tx",
                               orig_len=rec["len"])
                if args.json:
                    rec["summary"] = decoder.decode(bytes.fromhex(rec["frame"]), rec["len"])
                    print(json.dumps(rec), flush=True)
                else:
                    print(format_frame(rec, decoder), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
    except ControlError as e:
        if seen:
            print(f"vhostnet: {e}", file=sys.stderr)
            return 0
        return _fail(str(e))
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout.close()
        return 0
    finally:
        if args.write and sink is None:
            sink = open_sink(time.time())  # no frame: a valid empty capture
        if sink is not None:
            sink.close()
    written = f"; written to {', '.join(sink.files)}" if sink is not None else ""
    print(f"{seen} frame(s) shown" + (f"; {lost} lost by a slow reader" if lost else "")
          + written, file=sys.stderr)
    return 0


def _size_arg(text: str) -> int:
    from netstack.phy.pcap import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_target(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--control", metavar="PATH",
                   help="the backend's control socket (as given to `serve --control`)")
    g.add_argument("--socket-path", metavar="PATH",
                   help="the backend's vhost-user socket; its control socket is PATH.ctl "
                        "(default: ./vhostnet.sock, so ./vhostnet.sock.ctl)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_parser(sub) -> None:
    """Register `status`, `faults` and `capture` on the `vhostnet` subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    st = sub.add_parser(
        "status", help="show what a running backend negotiated and counted",
        formatter_class=raw,
        description="Ask a running `vhostnet serve` (over its control socket) for its "
                    "state: the features and protocol features QEMU negotiated, every "
                    "virtqueue (size, started/enabled, ring indices, kicks, "
                    "notifications, errors), device and backend counters and drops, the "
                    "stack's interface stats and ARP table, its IPv6 side (addresses, "
                    "neighbors with their NDP states, router adverts, DHCPv6, path MTUs), "
                    "its sockets with their TCP states, DHCP leases and the faults in force.",
        epilog="examples:\n  vhostnet status                          # ./vhostnet.sock\n"
               "  vhostnet status --socket-path /tmp/vm.sock\n"
               "  vhostnet status --json | jq .device.queues\n"
               "  vhostnet status --json | jq .ipv6.neighbors")
    _add_target(st)
    st.set_defaults(func=cmd_status)

    f = sub.add_parser(
        "faults", help="damage the live link on purpose: loss, delay, reorder, ...",
        formatter_class=raw,
        description="Turn the fault injector between the stack and the guest's NIC on, "
                    "change it, or turn it off, while the guest runs. Every fault applies "
                    "to both directions, per frame. Without options: show the faults and "
                    "what they did (passed, dropped, delayed, ... per direction).",
        epilog="examples:\n  vhostnet faults --loss 0.05 --delay 0.02 --reorder 0.01\n"
               "  vhostnet faults --rate 100        # at most 100 frames/s each way\n"
               "  vhostnet faults --loss 0.3 --match 'tcp port 5432'\n"
               "  vhostnet faults                   # what is on, and its counters\n"
               "  vhostnet faults --off")
    _add_target(f)
    f.add_argument("--loss", type=float, metavar="P", help="drop each frame with probability P")
    f.add_argument("--delay", type=float, metavar="SECONDS", help="hold every frame this long")
    f.add_argument("--reorder", type=float, metavar="P",
                   help="hold a frame back behind the next one with probability P")
    f.add_argument("--duplicate", type=float, metavar="P",
                   help="deliver a frame twice with probability P")
    f.add_argument("--corrupt", type=float, metavar="P",
                   help="flip one byte past the Ethernet header with probability P")
    f.add_argument("--rate", type=int, metavar="FRAMES",
                   help="at most FRAMES frames per second each way; the rest are dropped")
    f.add_argument("--max-size", type=int, metavar="BYTES", help="drop longer frames")
    f.add_argument("--seed", type=int, help="seed of the injector's randomness")
    f.add_argument("--match", metavar="EXPR",
                   help="damage only the frames this pcap-filter expression accepts "
                        "(tcpdump's syntax, both directions); the others pass untouched "
                        "(counted as unmatched); '' for all frames again")
    f.add_argument("--off", action="store_true", help="no faults any more")
    f.set_defaults(func=cmd_faults)

    c = sub.add_parser(
        "capture", help="print the frames crossing the guest's NIC, live",
        formatter_class=raw,
        description="Print one line per frame crossing the virtqueues of a running "
                    "backend: time, direction (guest> the guest sent it, >guest it was "
                    "given), then the frame as `tcpdump -n -e` prints it: MACs, "
                    "EtherType, addresses and ports, ICMP/ICMPv6 types, TCP flags, "
                    "seq/ack/win and options, DNS, DHCP, TFTP... (-v, -vv, -vvv and -x "
                    "as tcpdump's -v, -vv, -vvv and -XX). Ctrl-C ends it. The backend "
                    "filters (--filter: tcpdump's pcap-filter syntax, compiled by "
                    "libpcap and run before a frame leaves the backend) and streams the "
                    "raw frames; decoding happens here.",
        epilog="examples:\n  vhostnet capture\n  vhostnet capture --filter 'tcp port 80'\n"
               "  vhostnet capture --filter 'udp and not port 53' --count 10\n"
               "  vhostnet capture --filter 'icmp6 or (tcp[tcpflags] & tcp-syn != 0)'\n"
               "  vhostnet capture -v --filter 'udp port 67 or udp port 68'  # DHCP options\n"
               "  vhostnet capture -x --count 1                  # and the frame in hex\n"
               "  vhostnet capture --vnet --filter tcp           # offloads: GSO, csum\n"
               "  vhostnet capture --json > frames.jsonl   # each with its line: \"summary\"\n"
               "  vhostnet capture -w session.pcapng        # watch and keep: tshark -r it")
    _add_target(c)
    c.add_argument("--filter", metavar="EXPR",
                   help="show only the frames this pcap-filter expression accepts, as "
                        "tcpdump's (man 7 pcap-filter), e.g. 'tcp port 80 or icmp6'")
    c.add_argument("--count", type=int, metavar="N", help="stop after N matching frames")
    c.add_argument("--snaplen", type=int, metavar="BYTES",
                   help="ask the backend for at most BYTES of each frame")
    c.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail, as tcpdump's -v: IP ttl/id/flags/length, "
                        "checksums (a partial one the guest left to the device shows as "
                        "incorrect), DHCP and NDP options, DNS answer names; -vv adds a "
                        "DNS response's question, -vvv DNS TTLs")
    c.add_argument("-x", "--hex", action="store_true",
                   help="the whole frame in hex and ASCII below its line (tcpdump -XX)")
    c.add_argument("--vnet", action="store_true",
                   help="show each frame's virtio_net_hdr: flags (NEEDS_CSUM, "
                        "DATA_VALID), gso_type (NONE, TCPV4, TCPV6, UDP), hdr_len, "
                        "gso_size, csum_start and csum_offset, as the guest sent it "
                        "(guest>) or we gave it (>guest)")
    c.add_argument("-w", "--write", metavar="FILE",
                   help="also write every frame shown to FILE while printing its line: "
                        "pcapng with each frame's direction (FILE.pcap: classic pcap), "
                        "for Wireshark or tshark -r")
    c.add_argument("--rotate", metavar="SIZE", type=_size_arg, default=None,
                   help="with -w FILE: go on in FILE.1, FILE.2, ... when FILE would exceed "
                        "SIZE (e.g. 10k, 100M), each a whole capture, as serve --pcap-rotate")
    c.set_defaults(func=cmd_capture)
