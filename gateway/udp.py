"""A guest's UDP port talking to addresses that are not ours: one host socket per guest
(address, port), unconnected, so one flow carries a DNS client's queries to several
servers and each reply comes back to the guest from the address it was sent to (the host
loopback's replies from the mapped gateway address). A flow idle for `udp_timeout`
seconds is closed. Replies wait in the host socket while the outbox is full.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import struct

from gateway.hostfwd import format_endpoint
from netstack.wire.checksum import checksum

log = logging.getLogger("vhostnet.gateway")

MAX_DATAGRAM = 65535
READS_PER_EVENT = 64
_IP_RECVERR, _IPV6_RECVERR = 11, 25  # <linux/in.h>, <linux/in6.h>
_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err
_ORIGIN_ICMP, _ORIGIN_ICMP6 = 2, 3


class UdpFlow:
    __slots__ = ("gw", "key", "host", "last", "since", "up", "down", "paused", "peers",
                 "local")

    def __init__(self, gw, key: tuple, now: float) -> None:
        self.gw = gw
        self.key = key  # (guest addr, guest port)
        self.host: socket.socket | None = None
        self.last = now
        self.since = now
        self.up = 0
        self.down = 0
        self.paused = False
        self.peers: set = set()  # (host address, port) sent to, for status
        self.local = None

    def open(self) -> bool:
        v6 = self.key[0].version == 6
        try:
            host = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET,
                                 socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            host.bind(("::" if v6 else "0.0.0.0", 0))
        except OSError as e:
            self.gw.count("udp_host_socket_failed")
            log.debug("gateway: no host UDP socket for %s: %s", self.key, e)
            return False
        # ICMP errors for what we sent (a closed port...) come back on the error queue,
        # to be told to the guest as the host's kernel was told
        try:
            if v6:
                host.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                host.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        except OSError:
            pass
        self.host = host
        self.local = host.getsockname()[:2]
        self.gw.selector.register(host, selectors.EVENT_READ, self)
        return True

    def send(self, now: float, host_addr, port: int, data: bytes, dst=None) -> None:
        self.last = now
        try:
            self.host.sendto(data, (str(host_addr), port))
        except BlockingIOError:
            self.gw.count("udp_host_busy")
            return
        except OSError as e:
            self.gw.count("udp_send_failed")
            log.debug("gateway: udp %s -> %s:%d: %s", self.key, host_addr, port, e)
            return
        self.up += len(data)
        if len(self.peers) < 64:
            self.peers.add((dst if dst is not None else host_addr, port, host_addr))

    def on_event(self, now: float, mask: int) -> None:
        gw = self.gw
        outbox = gw.outbox
        guest, gport = self.key
        for _ in range(READS_PER_EVENT):
            if outbox.full:
                self.pause()
                return
            try:
                data, peer = self.host.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as e:  # an ICMP error for an earlier datagram, e.g. refused
                log.debug("gateway: udp %s: %s", self.key, e)
                self._errors()
                continue
            src = gw.guest_visible(ipaddress.ip_address(peer[0].split("%")[0]))
            if src is None or src.version != guest.version:
                gw.count("udp_reply_unmappable")
                continue
            self.last = now
            self.down += len(data)
            outbox.udp(src, peer[1], guest, gport, data)

    def _errors(self) -> None:
        """Relay the ICMP errors on the host socket's error queue to the guest, from the
        address it sent to, quoting its datagram (rebuilt: the kernel gives us its payload
        and destination)."""
        gw = self.gw
        guest, gport = self.key
        while True:
            try:
                data, anc, _flags, dst = self.host.recvmsg(512, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            for _level, kind, raw in anc:
                if kind not in (_IP_RECVERR, _IPV6_RECVERR) or len(raw) < _EE.size:
                    continue
                _errno, origin, itype, code, _pad, _info, _data = _EE.unpack_from(raw)
                want = (_ORIGIN_ICMP, 3) if guest.version == 4 else (_ORIGIN_ICMP6, 1)
                if (origin, itype) != want:
                    gw.count("udp_host_error")
                    continue
                src = gw.guest_visible(ipaddress.ip_address(dst[0].split("%")[0]))
                if src is None:
                    continue
                gw.count("udp_unreachable_relayed")
                gw.outbox.dst_unreachable(src, guest, code,
                                          _quote(guest, gport, src, dst[1], data))

    def pause(self) -> None:
        if not self.paused and self.host is not None:
            self.paused = True
            self.gw.selector.unregister(self.host)
            self.gw.paused.add(self)

    def resume(self) -> None:
        if self.paused and self.host is not None:
            self.paused = False
            self.gw.selector.register(self.host, selectors.EVENT_READ, self)

    def close(self) -> None:
        host, self.host = self.host, None
        if host is not None:
            if not self.paused:
                self.gw.selector.unregister(host)
            host.close()

    def status(self, now: float) -> dict:
        g, gp = self.key
        return {"proto": "udp", "guest": format_endpoint(g, gp),
                "dst": ", ".join(sorted(format_endpoint(a, p) for a, p, _h in self.peers)),
                "host_local": format_endpoint(*self.local) if self.local else None,
                "host_remote": ", ".join(sorted(format_endpoint(h, p)
                                                for _a, p, h in self.peers)),
                "state": "paused" if self.paused else "open",
                "up": self.up, "down": self.down, "age": round(now - self.since, 1),
                "idle": round(now - self.last, 1)}


def _quote(src, sport: int, dst, dport: int, payload: bytes) -> bytes:
    """The guest's datagram as it was on its link: IP header, UDP header, payload start."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload[:64]
    if src.version == 6:
        return struct.pack("!IHBB", 6 << 28, 8 + len(payload), 17, 64) + src.packed \
            + dst.packed + udp
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17,
                                0, src.packed, dst.packed))
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr) + udp
