"""The gateway: NAT from the guest to the host and the world.

The seam to the stack is small: the interface calls `tcp()` and `udp()` (on the runtime's
thread, its lock held) for a segment or datagram no socket of ours took, to an address
that is not ours or to the mapped gateway address; they answer "taken" or "not mine" (then
the interface answers as before: RST, port unreachable). What the gateway sends to the
guest goes through its TCP sockets (real `TcpSocket`s in the set, answering from the
address the guest asked for) and the `Outbox`.

The seam to the loop: one thread of ours owns every host socket in a selector (epoll),
and takes the runtime's lock to move bytes; the runtime's thread tells it about new flows
and about TCP sockets that changed (their wakers) through an eventfd. Host sockets are
non-blocking and nothing is read from one unless the guest's side has room.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import resource
import selectors
import threading
from collections import Counter, deque

from gateway.dns import DnsForwarder, parse_server, resolv_conf_servers
from gateway.hostfwd import format_endpoint
from gateway.icmp import IcmpEcho
from gateway.outbox import Outbox
from gateway.policy import LOOPBACK4, LOOPBACK6, GatewayConfig, Policy
from gateway.tcp import TcpFlow
from gateway.udp import UdpFlow
from netstack.wire.tcp import ACK, FIN, RST, SYN

log = logging.getLogger("vhostnet.gateway")

JOIN_TIMEOUT = 1.0


def _room_for_fds(need: int) -> None:
    """Raise our soft fd limit toward `need` (each flow holds a host socket): a flood that
    fills the flow table must not leave the process without fds for anything else."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        want = soft
    if want < need:
        log.warning("gateway: %d fds allowed, %d wanted for --max-flows: flows past the limit "
                    "get a RST (raise ulimit -n)", want, need)


class Gateway:
    """NAT for one stack. `start()` runs its thread; `close()` resets every flow, closes
    every host socket and detaches from the interface."""

    # bytes read from host sockets and not yet acknowledged by the guest, all TCP flows
    # together: a guest that stops acknowledging on thousands of flows cannot make us hold
    # more (the rest waits in the host's kernel)
    TX_BUDGET = 256 << 20

    def __init__(self, runtime, config: GatewayConfig | None = None, *, gateway4=None,
                 gateway6=None, tcp_options: dict | None = None) -> None:
        self.config = config = config or GatewayConfig()
        config.check()
        self.runtime = runtime
        self.sockets = runtime.sockets
        self.iface = runtime.iface
        self.policy = Policy(config, gateway4, gateway6)
        self._visible = {host: guest for guest, host in self.policy.loopback.items()}
        self.tcp_options = tcp_options or {}
        self.stats: Counter[str] = Counter()
        self.tcp_flows: dict[tuple, TcpFlow] = {}
        self.tx_held = 0  # see TX_BUDGET
        self.udp_flows: dict[tuple, UdpFlow] = {}
        self.paused: set[UdpFlow] = set()
        self.selector = selectors.DefaultSelector()
        self._new: deque[TcpFlow] = deque()
        self._poked: set[TcpFlow] = set()
        self._later: set[TcpFlow] = set()
        self._resume = False
        self._signalled = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.selector.register(self._wake_fd, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._next_expiry = 0.0
        self._dns_tick = 0.0
        self._loop = None  # attach_loop's remove_reader
        _room_for_fds(3 * config.max_flows + 512)
        self.icmp = IcmpEcho(self)
        self.dns: DnsForwarder | None = None
        if config.dns and not config.restrict:  # (restrict: nothing leaves, queries neither)
            servers = ([parse_server(t) for t in config.dns_forward] if config.dns_forward
                       else resolv_conf_servers())
            if servers:
                self.dns = DnsForwarder(self, servers)
        with runtime.lock:
            self.outbox = Outbox()
            self.sockets.add(self.outbox)
            self.outbox.set_waker(self._outbox_room)
            self.iface.gateway = self

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] += n

    # -- called by the interface (runtime thread, lock held) ------------------------------
    def _target(self, proto: str, dst):
        """The host address for a guest's destination, or None: ours (not the mapped
        gateway address), or refused by the policy (counted by reason)."""
        if self.iface.has_ip_addr(dst) and not self.policy.maps_loopback(dst):
            return None
        target = self.policy.target(proto, dst)
        if isinstance(target, str):
            self.count(f"{proto}_refused_{target}")
            return None
        return target

    def tcp(self, now: float, ip, seg) -> bool:
        """A segment no socket took: a SYN to elsewhere opens a flow. True: taken."""
        key = (ip.src_addr, seg.src_port, ip.dst_addr, seg.dst_port)
        flow = self.tcp_flows.get(key)
        if flow is not None:  # still connecting (an open flow's socket takes its segments)
            if seg.flags & RST and flow.state == "connecting":
                self.count("tcp_guest_gave_up")
                flow.close_host(rst=False)
                flow.state = "closed"
                self.forget_tcp(flow)
            return True  # (a retransmitted SYN: the answer comes with the connect)
        if not seg.flags & SYN or seg.flags & (ACK | RST | FIN):
            return False
        target = self._target("tcp", ip.dst_addr)
        if target is None:
            return False
        if len(self.tcp_flows) >= self.config.max_flows:
            self.count("tcp_flow_limit")
            return True  # dropped, as a full conntrack table drops
        flow = TcpFlow(self, key, ip, dataclasses.replace(seg, payload=b""), target, now)
        self.tcp_flows[key] = flow
        self._new.append(flow)
        self._signal()
        return True

    def udp(self, now: float, ip, udp_repr, payload) -> bool:
        """A datagram no socket took: to elsewhere, it goes out through the guest port's
        flow. True: taken."""
        dst = ip.dst_addr
        target = self._target("udp", dst)
        if target is None:
            return False
        key = (ip.src_addr, udp_repr.src_port)
        flow = self.udp_flows.get(key)
        if flow is None:
            if len(self.udp_flows) >= self.config.max_flows:
                self.count("udp_flow_limit")
                return True
            flow = UdpFlow(self, key, now)
            if not flow.open():
                return True
            self.udp_flows[key] = flow
            self.count("udp_opened")
        # sent at once (a non-blocking socket; a full one drops, as a full NIC queue
        # would): a hop to the gateway's turn of the loop would add a wake-up to every
        # request and answer
        flow.send(now, target, udp_repr.dst_port, payload, dst)
        return True

    def icmp_echo(self, now: float, ip, icmp) -> bool:
        """An echo request to an address that is not ours: through the host's ping or raw
        socket. False: refused by policy (dropped, never answered in its name)."""
        target = self._target("icmp", ip.dst_addr)
        if target is None:
            return False
        self.icmp.submit(now, ip, icmp, target)
        return True

    def poke(self, flow: TcpFlow) -> None:
        """A flow's TCP socket may have changed (its waker)."""
        self._poked.add(flow)
        self._signal()

    def poke_later(self, flow: TcpFlow) -> None:
        """A flow held back by TX_BUDGET: looked at again on the next timer tick."""
        self._later.add(flow)

    def _outbox_room(self) -> None:
        if self.paused:
            self._resume = True
            self._signal()

    def _signal(self) -> None:
        if not self._signalled:
            self._signalled = True
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:  # closed
                pass

    # -- bookkeeping ------------------------------------------------------------------------
    def forget_tcp(self, flow: TcpFlow) -> None:
        if self.tcp_flows.get(flow.key) is flow:
            del self.tcp_flows[flow.key]
        self._poked.discard(flow)
        self._later.discard(flow)

    def hostfwd_source(self, peer) -> tuple | None:
        """A forwarded connection's client as the guest should see it: its own address
        and port (the loopback: the address mapped to it), or None (ours) when it cannot
        be shown on the guest's link."""
        try:
            ip = ipaddress.ip_address(peer[0].split("%")[0])
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            ip = self._visible.get(LOOPBACK4 if ip.version == 4 else LOOPBACK6)
        elif ip.is_multicast or ip.is_unspecified or ip.is_link_local:
            return None
        return None if ip is None else (ip, peer[1])

    def guest_visible(self, host_addr):
        """The address the guest sees for a host-side peer (the loopback: mapped)."""
        if host_addr.is_loopback:
            return self._visible.get(host_addr)
        return host_addr

    # -- in the vhost-user server's loop (no thread of ours) ------------------------------
    def attach_loop(self, add_reader, remove_reader) -> None:
        """Run in another loop instead of a thread of ours: our selector's fd is watched
        by it (`add_reader(fd, callback)`, as `VhostUserServer.add_reader`), and its
        app's poll calls `tick(now)` (whose deadline it honours). No thread hop between
        a host socket and the guest's rings: the loop that reads one writes the other."""
        if self._thread is not None:
            raise RuntimeError("the gateway runs its own thread already")
        self._loop = remove_reader
        add_reader(self.selector.fileno(), self.run_ready)

    def run_ready(self) -> None:
        """The loop saw our selector readable: handle what is ready, without waiting."""
        rt = self.runtime
        with rt.lock:
            try:
                self._step(rt.clock(), self.selector.select(0))
            except Exception:
                log.exception("gateway: step failed")
                self.count("gateway_errors")

    def tick(self, now: float) -> float:
        """Timers (flow expiry, DNS retries) when due; the next time to call again."""
        if now >= self._next_tick:
            with self.runtime.lock:
                self._step(now, ())
        return self._next_tick

    @property
    def _next_tick(self) -> float:
        if self.dns is not None and self.dns.pending:
            return min(self._next_expiry, self._dns_tick)
        return self._next_expiry

    # -- our thread ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="vhostnet-gateway",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        sel, rt = self.selector, self.runtime
        while not self._stopping:
            try:
                events = sel.select(0.25 if self.dns is not None and self.dns.pending else 1.0)
            except (OSError, ValueError):  # closed under us
                return
            with rt.lock:
                if self._stopping:
                    return
                try:
                    self._step(rt.clock(), events)
                except Exception:  # a bug must not stop every flow: log it, go on
                    log.exception("gateway: step failed")
                    self.count("gateway_errors")
            rt.wake()

    def _step(self, now: float, events) -> None:
        for key, mask in events:
            flow = key.data
            if flow is None:
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass
            elif flow.host is not None:
                flow.on_event(now, mask)
        self._signalled = False
        new = self._new
        while new:
            flow = new.popleft()
            if flow.state == "connecting" and flow.host is None:
                flow.start()
        if self._poked:
            poked, self._poked = self._poked, set()
            for flow in poked:
                flow.pump()
        if self._resume:
            self._resume = False
            paused, self.paused = self.paused, set()
            for flow in paused:
                flow.resume()
        if self.dns is not None and self.dns.pending and now >= self._dns_tick:
            self._dns_tick = now + 0.25
            self.dns.expire(now)
        if now >= self._next_expiry:
            self._next_expiry = now + 1.0
            self._expire(now)

    def _expire(self, now: float) -> None:
        if self._later:
            later, self._later = self._later, set()
            for flow in later:
                flow.pump()
        self.icmp.expire(now)
        for flow in [f for f in self.tcp_flows.values() if f.state == "connecting"]:
            flow.expire(now)
        timeout = self.config.udp_timeout
        for key, flow in list(self.udp_flows.items()):
            if flow.host is not None and now - flow.last >= timeout:
                self.count("udp_expired")
                self._close_udp(key, flow)

    def _close_udp(self, key, flow: UdpFlow) -> None:
        flow.close()
        self.paused.discard(flow)
        if self.udp_flows.get(key) is flow:
            del self.udp_flows[key]

    def reset(self) -> None:
        """End every flow (the guest went away): TCP reset both ways, host sockets closed.
        Call with the runtime's lock held."""
        for flow in list(self.tcp_flows.values()):
            if flow.state == "connecting":
                flow.close_host(rst=False)
                flow.state = "closed"
                self.forget_tcp(flow)
            else:
                flow.abort()
        for key, flow in list(self.udp_flows.items()):
            self._close_udp(key, flow)
        self.icmp.close()
        self._new.clear()

    def close(self) -> None:
        thread, self._thread = self._thread, None
        self._stopping = True
        self._signal()
        if thread is not None:
            thread.join(JOIN_TIMEOUT)
        if self._loop is not None:
            self._loop(self.selector.fileno())
            self._loop = None
        with self.runtime.lock:
            self.reset()
            if self.iface.gateway is self:
                self.iface.gateway = None
            if self.dns is not None:
                self.dns.close()
            self.icmp.close()
            handle = self.sockets.handle_of(self.outbox)
            if handle is not None:
                self.sockets.remove(handle)
        self.selector.close()
        fd, self._wake_fd = self._wake_fd, -1
        if fd >= 0:
            os.close(fd)

    # -- what `vhostnet status` shows ------------------------------------------------------
    def status(self, now: float | None = None, flows: int = 200) -> dict:
        with self.runtime.lock:
            now = self.runtime.clock() if now is None else now
            listed = [f.status(now) for f in list(self.tcp_flows.values())[:flows]]
            listed += [f.status(now) for f in list(self.udp_flows.values())[:flows]]
            return {"tcp_flows": len(self.tcp_flows), "udp_flows": len(self.udp_flows),
                    "icmp_flows": len(self.icmp.flows),
                    "icmp_mode": {f"v{v}": m for v, m in self.icmp.mode.items()},
                    "outbox_dropped": self.outbox.dropped, "counters": dict(self.stats),
                    "flows": listed,
                    "dns_servers": [format_endpoint(a, p)
                                    for a, p in (self.dns.servers if self.dns else [])],
                    "loopback": {str(g): str(h) for g, h in self.policy.loopback.items()}}
