"""`vhostnet serve`: the vhost-user backend with the TCP/IP stack behind it.

The vhost-user server owns the one loop (socket, eventfds, signals); the stack's `Runtime`
is its App (`attach/detach/poll`), and app threads (echo, udpserver, user code) wake that
loop through `runtime.set_waker(server.wake)`. A pcap sink, when asked for, sits on the
device's raw-frame hook: it sees exactly what crossed the virtqueues.
"""

from __future__ import annotations

import logging
import time

from apps.stack import Stack, StackConfig, build_stack
from netstack.phy.pcap import PcapSink
from vhostuser.backend import BackendConfig
from vhostuser.server import VhostUserServer

log = logging.getLogger("vhostnet")


class StackApp:
    """The App the vhost-user server drives: the stack's runtime, plus the capture hook."""

    def __init__(self, stack: Stack, pcap: PcapSink | None = None) -> None:
        self.stack = stack
        self.pcap = pcap
        self.device = None

    def attach(self, device) -> None:
        self.device = device
        if self.pcap is not None:
            sink = self.pcap

            def capture(direction: str, frame) -> None:
                # guest-tx is what the stack receives ("rx"), guest-rx what it sends
                sink.write(frame, time.monotonic(), "rx" if direction == "guest-tx" else "tx")

            device.on_frame = capture
        self.stack.runtime.attach(device)

    def detach(self) -> None:
        self.stack.runtime.detach()
        self.device = None

    def poll(self, now: float):
        return self.stack.runtime.poll(now)


def make_server(*, stack_config: StackConfig | None = None, backend: BackendConfig | None = None,
                socket_path: str | None = None, connect_path: str | None = None,
                fd: int | None = None, pcap: str | None = None,
                start_apps: bool = True) -> tuple[VhostUserServer, Stack, StackApp]:
    stack = build_stack(stack_config)
    sink = PcapSink(pcap) if pcap else None
    app = StackApp(stack, sink)
    server = VhostUserServer(socket_path=socket_path, connect_path=connect_path, fd=fd,
                             config=backend or BackendConfig(mtu=stack.config.mtu), app=app)
    stack.runtime.set_waker(server.wake)
    if start_apps and stack.config.apps:
        stack.start_apps()
    return server, stack, app
