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

log = logging.getLogger("vhostnet.gateway")

MAX_DATAGRAM = 65535
READS_PER_EVENT = 64


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
        self.host = host
        self.local = host.getsockname()[:2]
        self.gw.selector.register(host, selectors.EVENT_READ, self)
        return True

    def send(self, now: float, host_addr, port: int, data: bytes) -> None:
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
            self.peers.add((host_addr, port))

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
                gw.count("udp_host_error")
                log.debug("gateway: udp %s: %s", self.key, e)
                continue
            src = gw.guest_visible(ipaddress.ip_address(peer[0].split("%")[0]))
            if src is None or src.version != guest.version:
                gw.count("udp_reply_unmappable")
                continue
            self.last = now
            self.down += len(data)
            outbox.udp(src, peer[1], guest, gport, data)

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
        return {"proto": "udp", "guest": f"{g}:{gp}" if g.version == 4 else f"[{g}]:{gp}",
                "dst": ", ".join(sorted(f"{a}:{p}" if a.version == 4 else f"[{a}]:{p}"
                                        for a, p in self.peers)),
                "host_local": f"{self.local[0]}:{self.local[1]}" if self.local else None,
                "state": "paused" if self.paused else "open",
                "up": self.up, "down": self.down, "age": round(now - self.since, 1),
                "idle": round(now - self.last, 1)}
