"""`vhostnet serve`: the vhost-user backend with the TCP/IP stack behind it.

The vhost-user server owns the one loop (socket, eventfds, signals); the stack's `Runtime`
is its App (`attach/detach/poll`), and app threads (echo, udpserver, user code) wake that
loop through `runtime.set_waker(server.wake)`. A pcap sink, when asked for, sits on the
device's raw-frame hook: it sees exactly what crossed the virtqueues (with `pcap_filter`,
only the frames that pcap-filter expression accepts, as `tcpdump -w` with a filter).
Live captures (the control socket) hang on the same hook, each with its own filter
(apps/capture/hooks.py).
"""

from __future__ import annotations

import logging
import time

from apps.capture import hooks
from apps.capture.bpf import Filter
from apps.stack import Stack, StackConfig, build_stack
from netstack.phy.fault import FaultInjector
from netstack.phy.pcap import PcapSink
from vhostuser.backend import BackendConfig
from vhostuser.server import VhostUserServer

log = logging.getLogger("vhostnet")


class StackApp(hooks.FrameHooks):
    """The App the vhost-user server drives: the stack's runtime, plus the capture hooks
    and, when asked for, a `FaultInjector` between the runtime and the device.
    `pcap_filter`: the frames the pcap sink gets (None: all)."""

    def __init__(self, stack: Stack, pcap: PcapSink | None = None,
                 pcap_filter: Filter | None = None) -> None:
        self.stack = stack
        self.pcap = pcap
        self.pcap_filter = pcap_filter
        self.device = None
        # the knobs of the fault injector (None: no faults; `match` as the expression
        # given), and the live injector
        self.fault_knobs: dict | None = None
        self.faults: FaultInjector | None = None
        # callables (direction, frame) fed the frames at the virtqueue (control capture)
        self._init_frame_hooks()
        self.pcap_error: str | None = None  # why the capture stopped, if it did
        self.control = None  # the ControlServer, when make_server was given `control`
        self.hostfwd = None  # the HostForwarder, when make_server was given `hostfwd`

    def attach(self, device) -> None:
        self.device = device
        self._sync_frame_hook()
        self.stack.runtime.attach(self._wrap(device))

    def detach(self) -> None:
        gw = self.stack.gateway
        if gw is not None:  # the guest went away: its flows with it
            with self.stack.runtime.lock:
                gw.reset()
        self.stack.runtime.detach()
        self.device = None
        self.faults = None

    def _wrap(self, device):
        if self.fault_knobs is None:
            self.faults = None
            return device
        self.faults = FaultInjector(device, **_injector_knobs(self.fault_knobs))
        return self.faults

    def set_faults(self, knobs: dict | None) -> None:
        """Faults on with these `FaultInjector` knobs (None: off), on the live link too;
        `match` is a pcap-filter expression (the frames the faults apply to; "" for
        all). Changes the knobs of a running injector in place (its counters go on); off
        drops the frames it held. ValueError/TypeError for bad knobs (a bad expression
        with libpcap's message), and nothing changes."""
        if knobs is None:
            self.fault_knobs = None
            if self.faults is not None and self.device is not None:
                self.stack.runtime.attach(self._wrap(self.device))
            self.faults = None
            return
        compiled = _injector_knobs(knobs)  # a bad expression raises here
        shown = {k: v for k, v in knobs.items() if k != "match"}
        if compiled.get("match") is not None:  # ("" turns the match off)
            shown["match"] = knobs["match"]
        if self.faults is not None:
            self.faults.configure(**compiled)
            before = {k: v for k, v in (self.fault_knobs or {}).items()
                      if not (k == "match" and "match" in knobs)}
            self.fault_knobs = {**before, **shown}
            return
        FaultInjector(None, **compiled)  # validates
        self.fault_knobs = shown
        if self.device is not None:
            self.stack.runtime.attach(self._wrap(self.device))

    def _frame_consumers(self) -> list[hooks.Consumer]:
        """The pcap sink (its frames: `pcap_filter`'s), then the frame hooks."""
        consumers = super()._frame_consumers()
        if self.pcap is not None:
            consumers.insert(0, (self._write_pcap, self.pcap_filter))
        return consumers

    def _write_pcap(self, direction: str, frame) -> None:
        sink = self.pcap
        if sink is None:
            return
        # guest-tx is what the stack receives ("rx"), guest-rx what it sends
        try:
            sink.write(frame, time.monotonic(), "rx" if direction == "guest-tx" else "tx")
        except (OSError, ValueError) as e:
            self._capture_failed(sink, e)

    def _capture_failed(self, sink: PcapSink, e: Exception) -> None:
        """The pcap sink cannot be written (its reader exited: EPIPE; a full disk): the
        capture stops, the traffic goes on. One log line; `status` shows it."""
        if self.pcap is not sink:
            return
        self.pcap = None
        self.pcap_error = f"{type(e).__name__}: {e}"
        log.error("pcap capture stopped after %d frames: %s; the guest's traffic goes on",
                  sink.frames, self.pcap_error)
        try:
            sink.close()
        except (OSError, ValueError):
            pass
        if sink.path is None:  # standard output: nobody reads it any more
            from apps.common import silence_stdout

            silence_stdout()
        self._sync_frame_hook()

    def poll(self, now: float):
        deadline = self.stack.runtime.poll(now)
        gw = self.stack.gateway
        if gw is not None and gw._thread is None:
            at = gw.tick(now)
            deadline = at if deadline is None else min(deadline, at)
        return deadline


def _injector_knobs(knobs: dict) -> dict:
    """The FaultInjector's arguments for these knobs: `match` (an expression) compiled
    to its `Filter.matches`, None for "" (ValueError with libpcap's message)."""
    out = dict(knobs)
    if "match" in out:
        expr = out["match"]
        if expr is not None and not isinstance(expr, str):
            raise ValueError(f"match is a pcap-filter expression, not {expr!r}")
        flt = Filter.compile(expr)
        out["match"] = None if flt.everything else flt.matches
    return out


def make_server(*, stack_config: StackConfig | None = None, backend: BackendConfig | None = None,
                socket_path: str | None = None, connect_path: str | None = None,
                fd: int | None = None, pcap: str | None = None,
                pcap_rotate: int | None = None, pcap_filter: str | None = None,
                start_apps: bool = True,
                control: str | None = None,
                hostfwd: list | None = None,
                hostfwd_masquerade: bool = False) -> tuple[VhostUserServer, Stack, StackApp]:
    """The server, its stack and the App between them; with `control`, a control socket
    at that path (`app.control`, see apps/control/__init__.py: close it before the server); with
    `hostfwd` (QEMU-style rule strings or `gateway.hostfwd.HostFwd`), host ports forwarded
    to the guest (`app.hostfwd`, see gateway/hostfwd.py: close it before the server);
    with `pcap_filter` (a pcap-filter expression), only what it accepts goes to `pcap`
    (ValueError with libpcap's message for a bad one, before anything starts)."""
    flt = Filter.compile(pcap_filter) if pcap_filter else None
    stack = build_stack(stack_config, gateway_thread=False)
    sink = PcapSink(pcap, rotate=pcap_rotate) if pcap else None  # pcap "-": stdout
    app = StackApp(stack, sink, flt)
    server = VhostUserServer(socket_path=socket_path, connect_path=connect_path, fd=fd,
                             config=backend or BackendConfig(mtu=stack.config.mtu), app=app)
    stack.runtime.set_waker(server.wake)
    if stack.gateway is not None:  # host sockets in the same loop as the rings
        stack.gateway.attach_loop(server.add_reader, server.remove_reader)
    if control is not None:
        from apps.control import ControlServer

        try:
            app.control = ControlServer(server, app, control)
        except OSError:
            server.close()
            raise
    if hostfwd:
        from gateway.hostfwd import HostForwarder

        try:
            gw = stack.gateway
            source = None if gw is None or hostfwd_masquerade else gw.hostfwd_source
            app.hostfwd = HostForwarder(stack.runtime, hostfwd, str(stack.config.dhcp_first),
                                        source=source)
        except (OSError, ValueError):
            if app.control is not None:
                app.control.close()
            server.close()
            raise
    if start_apps and (stack.config.apps or stack.boot_files):
        stack.start_apps()
    return server, stack, app
