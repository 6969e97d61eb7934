"""`vhostnet serve --fd N` (vhost-user backend program conventions): an inherited socket,
connected (socketpair) or listening."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from vhostuser.frontend import NetFrontend


def test_serve_on_an_inherited_connected_socket():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--fd",
                             str(theirs.fileno()), "--log-level", "warning"],
                            pass_fds=(theirs.fileno(),), stdout=subprocess.DEVNULL)
    theirs.close()
    try:
        fe = NetFrontend(sock=ours)
        fe.connect()
        fe.start()
        fe.post_rx_buffers(8)
        # the stack behind it answers an ARP request for 10.0.2.2
        arp = (b"\xff" * 6 + bytes.fromhex("525400123456") + b"\x08\x06"
               + bytes.fromhex("0001080006040001") + bytes.fromhex("525400123456")
               + bytes([10, 0, 2, 15]) + bytes(6) + bytes([10, 0, 2, 2])).ljust(60, b"\0")
        fe.send_frame(arp)
        # (the stack's IPv6 router advertisements and NDP may come first)
        deadline = time.monotonic() + 5
        arp_replies = []
        while not arp_replies and time.monotonic() < deadline:
            frames = fe.recv_frames(timeout=max(0.0, deadline - time.monotonic()))
            arp_replies = [f for f in frames if f[12:14] == b"\x08\x06" and f[21] == 2]
        assert arp_replies
        fe.close()
    finally:
        proc.terminate()
        assert proc.wait(5) == 0


def test_serve_on_an_inherited_listening_socket(tmp_path):
    path = str(tmp_path / "l.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(1)
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--raw", "--fd",
                             str(lst.fileno())], pass_fds=(lst.fileno(),),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lst.close()
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                fe = NetFrontend(path)
                fe.connect()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert fe.backend_features
        fe.close()
    finally:
        proc.terminate()
        proc.wait(5)
