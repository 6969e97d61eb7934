"""DNS forwarding: queries for names our responder does not own go to the host's
resolvers (`nameserver` lines of /etc/resolv.conf, or `--dns-forward ADDR[:PORT]`).

Each query leaves with an id of ours (random, unique among those in flight) and its
answer comes back to the guest unchanged but for the guest's own id, from the address
the guest asked (our DNS address). An answer is accepted only from the server the query
went to, with our id. No answer within `TRY_TIMEOUT` seconds: the next server; none in
`TOTAL_TIMEOUT`: SERVFAIL. At most `MAX_PENDING` queries are in flight; more are dropped
and counted (the guest's resolver retries). Malformed queries never get here: the
responder answers them FORMERR itself.

A truncated answer (TC) is relayed as it is; the guest's resolver then asks again over
TCP (RFC 7766), which `serve_tcp` answers on port 53: our names from the responder, the
rest forwarded over TCP to the same servers, SERVFAIL when none answers.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import socket
from dataclasses import dataclass

from netstack.wire.dns import Rcode

log = logging.getLogger("vhostnet.gateway")

TRY_TIMEOUT = 1.0
TOTAL_TIMEOUT = 3.0  # (a stub resolver gives up after 5 s: SERVFAIL comes first)
MAX_PENDING = 1024


def parse_server(text: str) -> tuple[str, int]:
    """"ADDR", "ADDR:PORT", "[V6]", "[V6]:PORT" → (address, port); ValueError otherwise."""
    t = text.strip()
    port = 53
    if t.startswith("["):
        addr, sep, rest = t[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text}: an IPv6 address goes in brackets, [::1]:53")
        if rest:
            port = int(rest[1:])
    elif t.count(":") == 1:
        addr, p = t.split(":")
        port = int(p)
    elif ":" in t:
        raise ValueError("an IPv6 address goes in brackets, [::1] or [::1]:53")
    else:
        addr = t
    ipaddress.ip_address(addr)
    if not 0 < port < 65536:
        raise ValueError(f"{text}: port {port} out of range")
    return addr, port


def resolv_conf_servers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        out.append(parse_server(parts[1].split("%")[0]))
                    except ValueError:
                        continue
    except OSError:
        pass
    return out


@dataclass
class _Pending:
    guest_id: int
    query: bytes  # with our id
    parsed: object  # the guest's DnsRepr (for a SERVFAIL)
    reply_sock: object  # the DnsServerSocket it came to
    guest: tuple
    server: int  # index into servers
    sent_at: float
    started: float


class DnsForwarder:
    """Owned by the Gateway; every method runs with the runtime's lock held. `submit` sends
    at once (no hop to the gateway's turn of the loop); answers arrive on that turn."""

    def __init__(self, gw, servers: list[tuple[str, int]]) -> None:
        self.gw = gw
        self.servers = servers
        self.pending: dict[int, _Pending] = {}
        self.socks: dict[int, socket.socket] = {}  # by family

    def submit(self, data: bytes, parsed, reply_sock, guest: tuple, now: float) -> None:
        """A query from the guest, forwarded to the first server."""
        if len(self.pending) >= MAX_PENDING:
            self.gw.count("dns_dropped_busy")
            return
        qid = self._new_id()
        p = _Pending(int.from_bytes(data[:2], "big"), qid.to_bytes(2, "big") + data[2:],
                     parsed, reply_sock, guest, 0, now, now)
        self.pending[qid] = p
        self.gw.count("dns_forwarded")
        self._send(qid, p, now)

    def _sock(self, family: int) -> socket.socket | None:
        s = self.socks.get(family)
        if s is None:
            try:
                s = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC)
            except OSError:
                return None
            self.socks[family] = s
            self.gw.selector.register(s, selectors.EVENT_READ, self)
        return s

    def _new_id(self) -> int:
        while True:
            i = int.from_bytes(os.urandom(2), "big")
            if i not in self.pending:
                return i

    def _send(self, qid: int, p: _Pending, now: float) -> None:
        addr, port = self.servers[p.server]
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = self._sock(fam)
        p.sent_at = now
        if s is None:
            return
        try:
            s.sendto(p.query, (addr, port))
        except OSError as e:
            self.gw.count("dns_send_failed")
            log.debug("gateway: dns to %s:%d: %s", addr, port, e)

    def on_event(self, now: float, mask: int) -> None:
        for s in self.socks.values():
            while True:
                try:
                    data, peer = s.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError:
                    self.gw.count("dns_upstream_error")
                    continue
                if len(data) < 12:
                    self.gw.count("dns_answer_malformed")
                    continue
                qid = int.from_bytes(data[:2], "big")
                p = self.pending.get(qid)
                if p is None or not data[2] & 0x80:
                    self.gw.count("dns_answer_unexpected")
                    continue
                addr, port = self.servers[p.server]
                if (ipaddress.ip_address(peer[0].split("%")[0]), peer[1]) != \
                        (ipaddress.ip_address(addr), port):
                    self.gw.count("dns_answer_wrong_source")
                    continue
                del self.pending[qid]
                self.gw.count("dns_answered")
                self._reply(p, p.guest_id.to_bytes(2, "big") + data[2:])

    def _reply(self, p: _Pending, answer: bytes) -> None:
        try:
            p.reply_sock.send_to(answer, p.guest)
        except Exception as e:  # the socket closed, or its queue is full
            self.gw.count("dns_reply_dropped")
            log.debug("gateway: dns answer to %s dropped: %s", p.guest, e)

    def expire(self, now: float) -> None:
        for qid, p in list(self.pending.items()):
            if now - p.started >= TOTAL_TIMEOUT:
                del self.pending[qid]
                self.gw.count("dns_servfail")
                resp = p.reply_sock.responder._response(p.parsed, Rcode.SERVFAIL)
                self._reply(p, resp.to_bytes())
            elif now - p.sent_at >= TRY_TIMEOUT:
                p.server = (p.server + 1) % len(self.servers)
                self.gw.count("dns_retried")
                self._send(qid, p, now)

    @property
    def host(self):  # the gateway's event loop asks every registered object for it
        return self.socks or None

    def close(self) -> None:
        for s in self.socks.values():
            try:
                self.gw.selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self.socks.clear()
        self.pending.clear()


def _read_msg(sock: socket.socket) -> bytes:
    """One length-prefixed DNS message from a host TCP socket (EOFError: closed)."""
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("closed")
            buf += chunk
        return buf

    return exact(int.from_bytes(exact(2), "big"))


def forward_tcp(servers: list[tuple[str, int]], query: bytes,
                timeout: float = TOTAL_TIMEOUT) -> bytes | None:
    """The answer to `query` over TCP from the first server that gives one, or None."""
    for addr, port in servers:
        try:
            with socket.create_connection((addr, port), timeout=timeout) as s:
                s.sendall(len(query).to_bytes(2, "big") + query)
                answer = _read_msg(s)
        except (OSError, EOFError) as e:
            log.debug("gateway: dns over tcp to %s:%d: %s", addr, port, e)
            continue
        if len(answer) >= 12 and answer[:2] == query[:2]:
            return answer
    return None


def serve_tcp(runtime, stop, responder, servers: list[tuple[str, int]], counters) -> None:
    """DNS over TCP on our port 53 (both families), a thread per connection (apps.servers.tcpapps
    .serve_tcp): each length-prefixed query answered or forwarded in turn."""
    from apps.servers.tcpapps import serve_tcp as accept_loop
    from netstack.socket.services import forwardable

    def handle(stream) -> None:
        while True:
            try:
                n = int.from_bytes(stream.read_exact(2), "big")
                query = stream.read_exact(n)
            except EOFError:
                return
            parsed = forwardable(responder, query) if servers else None
            if parsed is None:
                answer = responder.handle_bytes(query)
                if answer is None:
                    continue
            else:
                counters["dns_forwarded_tcp"] += 1
                answer = forward_tcp(servers, query)
                if answer is None:
                    counters["dns_servfail"] += 1
                    answer = responder._response(parsed, Rcode.SERVFAIL).to_bytes()
            stream.write_all(len(answer).to_bytes(2, "big") + answer)

    accept_loop(runtime, stop, 53, handle, max_connections=64, idle_timeout=30.0)
