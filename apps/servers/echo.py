"""UDP echo (RFC 862) on port 7: every datagram goes back to its sender. A complete
program on the public API (`netstack.net`): read it as an example."""

from __future__ import annotations

import threading

from netstack.runtime import Runtime


def serve_udp(runtime: Runtime, stop: threading.Event, port: int = 7) -> None:
    with runtime.udp_bind(("::", port)) as sock:  # both families
        sock.set_read_timeout(0.5)
        while not stop.is_set():
            try:
                data, peer = sock.recv_from(65535)
            except TimeoutError:
                continue
            sock.send_to(data, peer)
