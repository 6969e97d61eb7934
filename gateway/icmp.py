"""ICMP and ICMPv6 echo to addresses that are not ours, through the host: the guest's
`ping` works wherever the host's does.

Each guest (address, echo id) is a flow with an id of ours. The host side is an
unprivileged ping socket per flow (`SOCK_DGRAM, IPPROTO_ICMP[V6]`: the kernel picks the id
and checks replies) where `net.ipv4.ping_group_range` lets us, else one raw socket per
family (root), where replies are matched by our id and by their source being the address
pinged. A reply goes back to the guest with its own id, from the address it pinged. Flows
idle for `IDLE` seconds are closed; at most `max_flows` live at once.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
from ipaddress import ip_address

from netstack.wire.icmpv4 import Icmpv4Packet, Icmpv4Repr

log = logging.getLogger("vhostnet.gateway")

IDLE = 60.0
_PROTO = {4: socket.IPPROTO_ICMP, 6: socket.IPPROTO_ICMPV6}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_REPLY = {4: 0, 6: 129}


class _Flow:
    __slots__ = ("key", "our_id", "sock", "last", "sent", "received")

    def __init__(self, key, our_id: int, sock, now: float) -> None:
        self.key = key  # (guest addr, guest id)
        self.our_id = our_id
        self.sock = sock  # its ping socket, or None (the family's raw socket)
        self.last = now
        self.sent = 0
        self.received = 0


class IcmpEcho:
    """Owned by the Gateway; every method runs with the runtime's lock held. `submit`
    sends at once (a ping socket never blocks, and a hop to the gateway's turn of the loop
    would add a wake-up to every round trip); replies arrive on the gateway's turn."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.flows: dict[tuple, _Flow] = {}
        self.by_id: dict[tuple, _Flow] = {}  # (version, our id) → flow (raw sockets)
        self.raw: dict[int, socket.socket] = {}
        self.mode: dict[int, str] = {}  # version → "ping" | "raw" | "none"
        # (version, our id, seq) → (the host address pinged, the address the guest pinged)
        self._dst: dict[tuple, tuple] = {}

    def submit(self, now: float, ip, icmp, target) -> None:
        """The guest's echo request to `target` (the host address for its destination)."""
        v = ip.src_addr.version
        mode = self._mode(v)
        if mode == "none":
            self.gw.count("icmp_unavailable")
            return
        key = (ip.src_addr, icmp.ident)
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self.gw.config.max_flows:
                self.gw.count("icmp_flow_limit")
                return
            flow = self._open(key, v, mode, now)
            if flow is None:
                return
        flow.last = now
        self._send(flow, v, target, ip.dst_addr, icmp.seq_no, bytes(icmp.data))

    def _mode(self, version: int) -> str:
        mode = self.mode.get(version)
        if mode is None:
            mode = "none"
            try:
                socket.socket(_FAMILY[version], socket.SOCK_DGRAM, _PROTO[version]).close()
                mode = "ping"
            except OSError:
                try:
                    s = socket.socket(_FAMILY[version], socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                      | socket.SOCK_CLOEXEC, _PROTO[version])
                    self.raw[version] = s
                    self.gw.selector.register(s, selectors.EVENT_READ, _Reader(self, version))
                    mode = "raw"
                except OSError as e:
                    log.warning("gateway: no ping or raw ICMP%s socket (%s): the guest's "
                                "ping reaches only us", "v6" if version == 6 else "", e)
            self.mode[version] = mode
        return mode

    def _open(self, key, v: int, mode: str, now: float) -> _Flow | None:
        sock = None
        if mode == "ping":
            try:
                sock = socket.socket(_FAMILY[v], socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                     | socket.SOCK_CLOEXEC, _PROTO[v])
                sock.bind(("::" if v == 6 else "0.0.0.0", 0))
                our_id = sock.getsockname()[1]
            except OSError as e:
                self.gw.count("icmp_socket_failed")
                log.debug("gateway: ping socket: %s", e)
                if sock is not None:
                    sock.close()
                return None
        else:
            while True:
                our_id = int.from_bytes(os.urandom(2), "big")
                if (v, our_id) not in self.by_id:
                    break
        flow = _Flow(key, our_id, sock, now)
        self.flows[key] = flow
        self.by_id[(v, our_id)] = flow
        if sock is not None:
            self.gw.selector.register(sock, selectors.EVENT_READ, _Reader(self, v, flow))
        self.gw.count("icmp_opened")
        return flow

    def _send(self, flow: _Flow, v: int, target, dst, seq: int, data: bytes) -> None:
        msg = self._echo(v, flow.our_id, seq, data)
        sock = flow.sock if flow.sock is not None else self.raw[v]
        sent = self._dst
        if len(sent) >= 8192:  # echoes never answered: the oldest go
            del sent[next(iter(sent))]
        sent[(v, flow.our_id, seq)] = (target, dst)
        try:
            sock.sendto(msg, (str(target), 0))
            flow.sent += 1
            self.gw.count("icmp_sent")
        except OSError as e:
            self.gw.count("icmp_send_failed")
            log.debug("gateway: ping %s: %s", target, e)

    @staticmethod
    def _echo(v: int, ident: int, seq: int, data: bytes) -> bytes:
        if v == 6:  # (the kernel fills an ICMPv6 checksum itself)
            return bytes((128, 0, 0, 0)) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") \
                + data
        r = Icmpv4Repr.echo_request(ident, seq, data)
        buf = bytearray(r.buffer_len())
        r.emit(Icmpv4Packet(buf), True)
        return bytes(buf)

    def reply(self, v: int, src_text: str, icmp: bytes) -> None:
        """An ICMP message from the host side (no IP header): an echo reply for a flow?"""
        if len(icmp) < 8 or icmp[0] != _REPLY[v]:
            return
        our_id = int.from_bytes(icmp[4:6], "big")
        seq = int.from_bytes(icmp[6:8], "big")
        flow = self.by_id.get((v, our_id))
        sent = self._dst.get((v, our_id, seq))
        if flow is None or sent is None:
            self.gw.count("icmp_reply_unexpected")
            return
        target, dst = sent
        if ip_address(src_text.split("%")[0]) != target:
            self.gw.count("icmp_reply_wrong_source")
            return
        del self._dst[(v, our_id, seq)]
        flow.received += 1
        self.gw.count("icmp_replies")
        guest, gid = flow.key
        self.gw.outbox.echo_reply(dst, guest, gid, seq, icmp[8:])

    def expire(self, now: float) -> None:
        for key, flow in list(self.flows.items()):
            if now - flow.last >= IDLE:
                self._close(key, flow)

    def _close(self, key, flow: _Flow) -> None:
        del self.flows[key]
        v = key[0].version
        self.by_id.pop((v, flow.our_id), None)
        for k in [k for k in self._dst if k[0] == v and k[1] == flow.our_id]:
            del self._dst[k]
        if flow.sock is not None:
            self.gw.selector.unregister(flow.sock)
            flow.sock.close()

    def close(self) -> None:
        for key, flow in list(self.flows.items()):
            self._close(key, flow)
        for s in self.raw.values():
            self.gw.selector.unregister(s)
            s.close()
        self.raw.clear()
        self.mode.clear()
        self._dst.clear()


class _Reader:
    """A host ICMP socket became readable: a flow's ping socket (`flow`), or the family's
    raw socket (flow None: it sees every ICMP message, an IPv4 one with its IP header)."""

    __slots__ = ("echo", "flow", "v")

    def __init__(self, echo: IcmpEcho, v: int, flow: _Flow | None = None) -> None:
        self.echo, self.flow, self.v = echo, flow, v

    @property
    def host(self):
        return self.echo.raw.get(self.v) if self.flow is None else self.flow.sock

    def on_event(self, now: float, mask: int) -> None:
        sock = self.host
        strip = self.flow is None and self.v == 4
        while sock is not None:
            try:
                data, peer = sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                self.echo.gw.count("icmp_host_error")
                continue
            if strip:
                if len(data) < 20:
                    continue
                data = data[(data[0] & 15) * 4:]
            self.echo.reply(self.v, peer[0], data)
