"""One server, several sockets: the app follows the device whose rings started last while
the active one's were stopped (live migration's hand-over), with two front-ends of ours
standing in for the source and destination QEMUs."""

from __future__ import annotations

import threading
import time

from tests.vhostuser.conftest import RecordingApp, make_frontend
from tests.vhostuser.test_datapath import frame_of
from vhostuser.server import VhostUserServer


def wait_for(pred, timeout: float = 5.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


def exchange(fe, app: RecordingApp, server: VhostUserServer, seed: int) -> None:
    out = frame_of(200, seed)
    fe.send_frame(out)
    assert app.received(1) == [out]
    back = frame_of(300, seed + 1)
    app.to_guest.put(back)
    server.wake()
    assert fe.recv_frames(timeout=3) == [back]


def test_the_app_moves_to_the_device_that_starts_after_the_active_one_stopped(tmp_path):
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    app = RecordingApp()
    server = VhostUserServer(socket_path=a, app=app)
    server.add_port(socket_path=b)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    src = dst = None
    try:
        src = make_frontend(a)
        src.post_rx_buffers(8)
        wait_for(lambda: app.device is not None, what="attach")
        first = app.device
        exchange(src, app, server, 1)
        # the destination connects and sets up while the source still runs: nothing moves
        dst = make_frontend(b)
        dst.post_rx_buffers(8)
        time.sleep(0.1)
        assert app.device is first and server.counters["handovers"] == 0
        exchange(src, app, server, 3)
        # the source stops its rings, the destination (re)starts its own: hand-over
        src.stop()
        dst.stop()
        dst.start()
        wait_for(lambda: app.device is not first, what="hand-over")
        assert server.counters["handovers"] == 1
        assert server.conn.backend.net is app.device
        exchange(dst, app, server, 5)
        # the source going away changes nothing
        src.close()
        src = None
        time.sleep(0.1)
        exchange(dst, app, server, 7)
        # the last device going away detaches the app; a new one on the first socket
        # gets it back
        dst.close()
        dst = None
        wait_for(lambda: app.device is None, what="detach")
        src = make_frontend(a)
        src.post_rx_buffers(4)
        wait_for(lambda: app.device is not None, what="attach again")
        exchange(src, app, server, 9)
    finally:
        for fe in (src, dst):
            if fe is not None:
                fe.close()
        server.stop()
        t.join(5)
        server.close()
    assert not (tmp_path / "a.sock").exists() and not (tmp_path / "b.sock").exists()


def test_serve_also_listen(tmp_path):
    """`vhostnet serve --also-listen`: both sockets served, `status` lists them; a second
    socket that cannot be made is a one-line error and leaves no socket file behind."""
    import json
    import signal
    import subprocess

    from tests.vhostuser.test_lifecycle import VHOSTNET, spawn, wait_socket

    a, b, ctl = tmp_path / "a.sock", tmp_path / "b.sock", tmp_path / "ctl"
    bad = subprocess.run([VHOSTNET, "serve", "--socket-path", str(a), "--no-control",
                          "--also-listen", str(tmp_path / "no" / "b.sock")],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert bad.stderr.startswith("vhostnet: cannot serve: cannot listen on ")
    assert "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert not a.exists()

    proc = spawn("--socket-path", str(a), "--also-listen", str(b), "--control", str(ctl))
    try:
        wait_socket(str(a), proc)
        wait_socket(str(b), proc)
        fe = make_frontend(str(b))
        try:
            out = subprocess.run([VHOSTNET, "status", "--control", str(ctl), "--json"],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            ports = json.loads(out.stdout)["ports"]
            assert [(p["path"], p["connected"], p["active"]) for p in ports] == [
                (str(a), False, False), (str(b), True, True)]
        finally:
            fe.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert not a.exists() and not b.exists()
