"""Fixtures: our back-end (VhostUserServer in a thread) and the Python front-end that
drives it over a real unix socket with real shared memory."""

from __future__ import annotations

import queue
import threading

import pytest

from vhostuser.backend import BackendConfig
from vhostuser.frontend import NetFrontend
from vhostuser.server import VhostUserServer


class RecordingApp:
    """Records every frame the guest sends; sends frames queued by the test thread.
    With `echo=True` every guest frame is sent straight back."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.device = None
        self.frames: queue.Queue[bytes] = queue.Queue()
        self.to_guest: queue.Queue[bytes] = queue.Queue()
        self.attached = threading.Event()

    def attach(self, device) -> None:
        self.device = device
        self.attached.set()

    def detach(self) -> None:
        self.device = None
        self.attached.clear()

    def poll(self, now: float):
        dev = self.device
        if dev is None:
            return None
        batch = []
        while True:
            try:
                batch.append(self.to_guest.get_nowait())
            except queue.Empty:
                break
        if batch:  # one vu_rx_batch call with the C helpers; else send() on each
            dev.send_frames(batch)

        def got(frame) -> None:
            data = bytes(frame)
            self.frames.put(data)
            if self.echo:
                dev.send(data)

        dev.drain_tx(got, limit=256)
        return None

    def received(self, n: int, timeout: float = 5.0) -> list[bytes]:
        out = []
        for _ in range(n):
            out.append(self.frames.get(timeout=timeout))
        return out


class ServerThread:
    def __init__(self, path: str, config: BackendConfig | None = None, echo: bool = False):
        self.app = RecordingApp(echo=echo)
        self.server = VhostUserServer(socket_path=path, config=config, app=self.app)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def inject(self, frame: bytes) -> None:
        self.app.to_guest.put(frame)
        self.server.wake()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(5)
        assert not self.thread.is_alive(), "server thread did not stop"
        self.server.close()


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "vhost.sock")


@pytest.fixture
def server(sock_path):
    s = ServerThread(sock_path)
    yield s
    s.stop()


@pytest.fixture
def echo_server(sock_path):
    s = ServerThread(sock_path, echo=True)
    yield s
    s.stop()


def recv_n(fe: NetFrontend, n: int, timeout: float = 3.0, what: str = "") -> list[bytes]:
    """Receive until at least `n` frames arrived (all of them returned, in order); a wait
    of `timeout` that brings nothing fails the test."""
    got: list[bytes] = []
    while len(got) < n:
        chunk = fe.recv_frames(timeout=timeout)
        assert chunk, f"{what}stalled after {len(got)} of {n} frames"
        got.extend(chunk)
    return got


def make_frontend(path: str, **kw) -> NetFrontend:
    fe = NetFrontend(path, **kw)
    fe.connect()
    fe.start()
    return fe


@pytest.fixture(params=["c", "python"])
def walker(request, monkeypatch):
    """Run a test with descriptor chains walked by the C helper (vu_walk) and again by
    the pure-Python walker it replaces: both must agree on every case."""
    import vhostuser.virtqueue as virtqueue

    if request.param == "c" and not virtqueue.HAVE_C:
        pytest.skip("vhostuser._fast not built")
    monkeypatch.setattr(virtqueue, "USE_C", request.param == "c")
    return request.param
