"""Lifecycle (ADVERSARIAL.md cases 24–25): --connect mode, the `vhostnet serve` process and
its signals and socket file, RESET_DEVICE and restart at the SET_VRING_BASE index, and a
suspended device (every ring stopped by GET_VRING_BASE) that touches nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.vhostuser.conftest import RecordingApp, ServerThread, make_frontend, recv_n
from tests.vhostuser.test_protocol import frame_of
from vhostuser.features import Feature
from vhostuser.frontend import (
    DEFAULT_PROTOCOL_FEATURES,
    FrontendError,
    GuestMemoryArea,
    NetFrontend,
)
from vhostuser.protocol import Message, ProtocolFeature, Request, feature_names, pack_mem_table
from vhostuser.server import VhostUserServer

VHOSTNET = str(Path(sys.executable).with_name("vhostnet"))
MiB = 1 << 20


def wait_for(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def exchange(fe: NetFrontend, app: RecordingApp, inject, seed: int) -> None:
    """One frame each way."""
    fe.post_rx_buffers(4)
    out = frame_of(300, seed)
    fe.send_frame(out)
    assert app.received(1) == [out]
    back = frame_of(200, seed + 1)
    inject(back)
    assert fe.recv_frames(timeout=3) == [back]


# ---------------------------------------------------------------------------------------
# --connect mode


class ConnectServer:
    def __init__(self, path: str) -> None:
        self.app = RecordingApp()
        self.server = VhostUserServer(connect_path=path, app=self.app)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def inject(self, frame: bytes) -> None:
        self.app.to_guest.put(frame)
        self.server.wake()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.server.close()


def test_connect_mode_waits_then_reconnects(tmp_path):
    path = str(tmp_path / "qemu.sock")
    srv = ConnectServer(path)  # nothing listens yet: it retries
    listener = None
    try:
        time.sleep(0.7)
        assert srv.server.conn is None
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(5)
        for round_ in range(3):
            conn, _ = listener.accept()  # the back-end came to us
            fe = NetFrontend(sock=conn)
            try:
                fe.connect()
                fe.start()
                exchange(fe, srv.app, srv.inject, 10 * round_)
            finally:
                fe.close()  # QEMU goes away: the back-end must come back
        assert srv.server.connections_served == 3
        # QEMU restarts: the listening socket itself disappears and comes back
        listener.close()
        os.unlink(path)
        time.sleep(0.7)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(5)
        conn, _ = listener.accept()
        fe = NetFrontend(sock=conn)
        try:
            fe.connect()
            fe.start()
            exchange(fe, srv.app, srv.inject, 77)
        finally:
            fe.close()
    finally:
        if listener is not None:
            listener.close()
        srv.stop()


# ---------------------------------------------------------------------------------------
# The `vhostnet serve` process


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([VHOSTNET, "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_socket(path: str, proc: subprocess.Popen) -> None:
    def ready() -> bool:
        assert proc.poll() is None, proc.stderr.read()
        if not os.path.exists(path):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            return False
        finally:
            s.close()
        return True

    wait_for(ready, 10, "the socket")


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=5)


def test_print_capabilities():
    """The vhost-user backend program convention (type "net"), and in x-vhostnet what
    GET_FEATURES will answer with these options: offloads with the stack, MQ with
    --queues > 1 (it said neither)."""
    from vhostuser.backend import BackendConfig, VhostUserBackend

    def caps(*argv: str) -> dict:
        out = subprocess.run([VHOSTNET, *argv, "--print-capabilities"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
        return json.loads(out)

    c = caps("serve")
    assert c["type"] == "net"
    ours = c["x-vhostnet"]
    assert {"F_VERSION_1", "NET_F_CSUM", "NET_F_HOST_TSO4", "NET_F_GUEST_TSO6",
            "F_IN_ORDER"} <= set(ours["features"])
    assert "NET_F_MQ" not in ours["features"]
    assert "REPLY_ACK" in ours["protocol-features"]
    c4 = caps("serve", "--queues", "4")["x-vhostnet"]
    assert "NET_F_MQ" in c4["features"] and c4["queue-pairs"] == 4
    offered = VhostUserBackend(BackendConfig(queue_pairs=4)).features_offered
    assert set(c4["features"]) == set(feature_names(offered, Feature))
    assert "NET_F_CSUM" not in caps("serve", "--raw")["x-vhostnet"]["features"]
    assert "NET_F_CSUM" not in caps("bridge")["x-vhostnet"]["features"]


@pytest.mark.parametrize("argv", [["serve", "--print-capabilities"], ["--help"],
                                  ["serve", "--help"], ["bridge", "--print-capabilities"],
                                  ["status", "--control", "/nonexistent.ctl"]])
def test_output_into_a_closed_pipe_exits_quietly(argv):
    """`vhostnet serve --print-capabilities | head -3`: the output meets a closed pipe
    (here a reader that is gone before we write: `| true`); no BrokenPipeError
    traceback, and no 'Exception ignored' when Python flushes stdout at exit."""
    p = subprocess.run(f"{VHOSTNET} {' '.join(argv)} | true", shell=True,
                       capture_output=True, text=True, timeout=30)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert "Exception ignored" not in p.stderr, p.stderr


def test_serve_prints_qemu_options_and_sigterm_under_traffic(tmp_path, procs):
    path = str(tmp_path / "v.sock")
    p = spawn("--socket-path", path, "--log-level", "warning")
    procs.append(p)
    wait_socket(path, p)
    fe = make_frontend(path)
    stop = threading.Event()
    sent = [0]

    def traffic() -> None:
        try:
            while not stop.is_set():
                fe.send_frames([frame_of(1400, i) for i in range(32)])
                fe.reap_tx()
                sent[0] += 32
        except FrontendError:
            pass  # the back-end went away under us

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        wait_for(lambda: sent[0] >= 2000, 20, "traffic")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=5)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        t.join(5)
        fe.close()
    assert elapsed < 2.0, f"SIGTERM took {elapsed:.2f} s"
    assert p.returncode == 0, err
    assert not os.path.exists(path), "socket file left behind"
    assert f"path={path},reconnect=1" in out
    assert "-netdev vhost-user,id=n0,chardev=c0" in out
    assert "share=on" in out


def test_stale_socket_from_killed_process_is_replaced(tmp_path, procs):
    path = str(tmp_path / "v.sock")
    p = spawn("--socket-path", path)
    procs.append(p)
    wait_socket(path, p)
    p.kill()
    p.wait(5)
    assert os.path.exists(path)  # SIGKILL: nothing cleaned up
    p2 = spawn("--socket-path", path)
    procs.append(p2)
    wait_socket(path, p2)
    fe = make_frontend(path)
    try:
        fe.post_rx_buffers(4)
        fe.send_frame(frame_of(100))
        fe.wait_tx_done(timeout=3)
    finally:
        fe.close()
    p2.send_signal(signal.SIGINT)
    p2.wait(5)
    assert p2.returncode == 0 and not os.path.exists(path)


def test_second_serve_on_a_path_in_use_fails_clearly(tmp_path, procs):
    path = str(tmp_path / "v.sock")
    p = spawn("--socket-path", path)
    procs.append(p)
    wait_socket(path, p)
    r = subprocess.run([VHOSTNET, "serve", "--socket-path", path], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode != 0
    assert "another process serves" in r.stderr and path in r.stderr
    assert "Traceback" not in r.stderr
    # the first one is untouched and still serves
    assert os.path.exists(path) and p.poll() is None
    fe = make_frontend(path)
    try:
        fe.send_frame(frame_of(100))
        fe.wait_tx_done(timeout=3)
    finally:
        fe.close()


# ---------------------------------------------------------------------------------------
# RESET_DEVICE and restart; suspended rings


def _used_ids(fe: NetFrontend, index: int, start: int, end: int) -> list[int]:
    vq = fe.vq(index)
    out = []
    for k in range(start, end):
        slot = 4 + 8 * (k % vq.size)
        out.append(int.from_bytes(fe.mem.read(vq.used_gpa + slot, 4), "little"))
    return out


@pytest.mark.parametrize("new_memory", [False, True], ids=["same-table", "new-table"])
def test_reset_device_then_restart_resumes_at_base(server, sock_path, new_memory):
    mem = GuestMemoryArea([(0, 16 * MiB)])
    fe = make_frontend(sock_path, memory=mem)
    try:
        be = server.server.conn.backend
        tx, rx = fe.tx_vq(), fe.rx_vq()
        first = [frame_of(100, i) for i in range(5)]
        fe.send_frames(first)
        assert server.app.received(5) == first
        fe.wait_tx_done(2)
        fe.post_rx_buffers(6)
        server.inject(frame_of(150, 1))
        server.inject(frame_of(150, 2))
        assert fe.recv_frames(timeout=3) + fe.recv_frames(timeout=0.3) == [
            frame_of(150, 1), frame_of(150, 2)]
        bases = fe.stop()
        assert bases == [2, 5]
        # while stopped the guest queues more frames: they wait for the restart
        later = [frame_of(120, 10 + i) for i in range(3)]
        fe.send_frames(later)
        fe.call(Request.RESET_DEVICE)
        assert not any(q.configured for q in be.queues)
        if new_memory:
            # the same RAM offered again at another place in the front-end's address
            # space (a new SET_MEM_TABLE maps afresh; the old mapping goes)
            old_regions = list(be.memory.regions)
            for r in mem.regions:
                r.uaddr += 0x1000_0000_0000
            fe.set_mem_table()
            assert all(r._map is None for r in old_regions)
        fe.start()  # NUM, BASE from GET_VRING_BASE, ADDR, KICK, CALL, ENABLE
        assert server.app.received(3) == later
        fe.wait_tx_done(2)  # every used id names an outstanding chain: none twice
        assert tx.used_idx == 8
        ids = _used_ids(fe, 1, 0, 8)
        assert len(set(ids[5:])) == 3
        more = [frame_of(130, 20 + i) for i in range(4)]
        for f in more:
            server.inject(f)
        assert recv_n(fe, 4) == more
        assert rx.used_idx == 6
        time.sleep(0.1)
        assert server.app.frames.empty()  # nothing replayed
    finally:
        fe.close()
        mem.close()


def test_suspended_rings_touch_nothing(server, sock_path):
    fe = make_frontend(sock_path)
    try:
        be = server.server.conn.backend
        fe.post_rx_buffers(16)
        server.inject(frame_of(100, 1))
        assert fe.recv_frames(timeout=3) == [frame_of(100, 1)]
        fe.send_frame(frame_of(100, 2))
        assert server.app.received(1) == [frame_of(100, 2)]
        fe.wait_tx_done(2)
        fe.stop()
        assert be.suspended
        # the guest goes on: posts TX frames, kicks; the network sends frames
        for i in range(5):
            fe.send_frame(frame_of(100, 30 + i))
        for vq in fe.vqs:
            vq.drain_call()
        snapshot = fe.mem.read(0, fe.mem.regions[0].size)
        for i in range(50):
            server.inject(frame_of(100, 40 + i))
        for vq in fe.vqs:
            vq.kick()
        fe.request(Message(Request.GET_FEATURES))  # a message in between, too
        time.sleep(0.5)
        assert fe.mem.read(0, fe.mem.regions[0].size) == snapshot, "guest memory written"
        for vq in fe.vqs:
            assert vq.drain_call() == 0, f"call eventfd of ring {vq.index} signalled"
        assert server.app.frames.empty()
        # and it resumes exactly where it stopped
        fe.start()
        assert server.app.received(5) == [frame_of(100, 30 + i) for i in range(5)]
        got = []
        while True:
            chunk = fe.recv_frames(timeout=1)
            if not chunk:
                break
            got.extend(chunk)
        assert got == [frame_of(100, 40 + i) for i in range(50)]
    finally:
        fe.close()


def test_killed_mid_message_then_reconnect(sock_path):
    s = ServerThread(sock_path)
    try:
        for _ in range(3):
            fe = NetFrontend(sock_path)
            fe.connect()
            payload = pack_mem_table([r.describe() for r in fe.mem.regions])
            msg = Message(Request.SET_MEM_TABLE, payload=payload).encode()
            fe.send_raw(msg[:20], fe.mem.fds())  # QEMU dies here
            fe.sock.close()
            fe.close()
            fe = make_frontend(sock_path)
            exchange(fe, s.app, s.inject, 5)
            fe.close()
        wait_for(lambda: s.server.counters["truncated_messages"] == 3, what="counted")
    finally:
        s.stop()


def _restart_backend(s: ServerThread, fe: NetFrontend, sock_path: str,
                     mem: GuestMemoryArea) -> tuple[ServerThread, NetFrontend]:
    """The back-end goes away and a new one comes up on the same path; a new front-end
    session takes over `fe`'s rings as they are in `mem` (the caller sets its bases and
    starts it)."""
    s.stop()
    vqs = fe.vqs
    fe.sock.close()
    fe.sock = None
    s = ServerThread(sock_path)
    fe2 = NetFrontend(sock_path, memory=mem)
    fe2.connect()
    fe2.vqs = vqs
    return s, fe2


def test_backend_restarted_while_guest_transmits(sock_path):
    """The back-end process goes away mid-traffic and a new one comes up on the same
    path; the front-end reconnects with its rings as they are (QEMU takes the bases from
    the used index) and every frame the guest queues afterwards arrives exactly once."""
    mem = GuestMemoryArea()
    s = ServerThread(sock_path)
    fe = make_frontend(sock_path, memory=mem)
    try:
        fe.send_frames([frame_of(100, i) for i in range(20)])
        assert len(s.app.received(20)) == 20
        fe.send_frames([frame_of(100, 100 + i) for i in range(10)])  # in flight
        s, fe2 = _restart_backend(s, fe, sock_path, mem)
        vqs = fe2.vqs
        fe2.vring_bases = {vq.index: vq.used_idx for vq in vqs}
        # the 10 queued during the restart are taken now, once each (counted before the
        # start: the new back-end may take them at once)
        n_inflight = (vqs[1].avail_idx - vqs[1].used_idx) & 0xFFFF
        fe2.start()
        got = s.app.received(n_inflight) if n_inflight else []
        fe2.send_frames([frame_of(100, 200 + i) for i in range(10)])
        got += s.app.received(10)
        assert got[-10:] == [frame_of(100, 200 + i) for i in range(10)]
        assert len(set(got)) == len(got)
        fe2.wait_tx_done(3)
        time.sleep(0.1)
        assert s.app.frames.empty()
        fe.vqs = []
        fe2.close()
    finally:
        fe.close()
        s.stop()
        mem.close()


def test_restarted_backend_given_base_zero_resumes_from_the_used_ring(sock_path):
    """DPDK's virtio-user in server mode reconnects to a restarted back-end with base 0
    whatever its rings hold. Its used ring is what the driver saw: the new back-end
    resumes there (as DPDK's vhost library does) instead of declaring the ring broken
    (the avail index 300 ahead of base 0 is more than a ring's worth) or replaying old
    chains."""
    mem = GuestMemoryArea()
    s = ServerThread(sock_path)
    fe = make_frontend(sock_path, memory=mem)
    try:
        for k in range(6):  # 300 frames: the indices pass the queue size
            batch = [frame_of(100, 50 * k + i) for i in range(50)]
            fe.send_frames(batch)
            assert s.app.received(50) == batch
            fe.wait_tx_done(3)
        s, fe2 = _restart_backend(s, fe, sock_path, mem)
        fe2.vring_bases = {vq.index: 0 for vq in fe2.vqs}
        fe2.start()
        fe2.send_frames([frame_of(100, 500 + i) for i in range(10)])
        assert s.app.received(10) == [frame_of(100, 500 + i) for i in range(10)]
        fe2.wait_tx_done(3)
        be = s.server.conn.backend
        assert not any(q.broken for q in be.queues)
        assert be.queues[1].stats.resyncs == 1
        time.sleep(0.1)
        assert s.app.frames.empty()  # nothing replayed
        fe.vqs = []
        fe2.close()
    finally:
        fe.close()
        s.stop()
        mem.close()


@pytest.mark.parametrize("reply_ack", [True, False], ids=["reply-ack", "no-reply-ack"])
def test_stop_start_with_the_same_kick_eventfds(sock_path, reply_ack):
    """QEMU keeps its kick eventfds across a vhost stop/start (guest reset, RESET_DEVICE)
    and sends the same ones again; the back-end's new fd for a ring often gets the number
    the old one had. Kicks after the restart must still be seen."""
    pf = DEFAULT_PROTOCOL_FEATURES & ~(1 << ProtocolFeature.STATUS)
    if not reply_ack:
        pf &= ~(1 << ProtocolFeature.REPLY_ACK)
    s = ServerThread(sock_path)
    fe = make_frontend(sock_path, protocol_features=pf)
    try:
        fe.get_features()
        for r in range(4):
            fe.send_frame(frame_of(100, r))
            assert s.app.received(1) == [frame_of(100, r)]
            fe.wait_tx_done(2)
            fe.stop()
            if r % 2:
                fe.call(Request.RESET_DEVICE)
            fe.start()
            fe.get_features()  # all of start() handled before the guest transmits
            fe.send_frame(frame_of(100, 50 + r))
            assert s.app.received(1) == [frame_of(100, 50 + r)]
            fe.wait_tx_done(2)
    finally:
        fe.close()
        s.stop()


def test_serve_refuses_a_path_that_is_not_a_socket(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("precious")
    r = subprocess.run([VHOSTNET, "serve", "--socket-path", str(path)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode != 0
    assert "not a socket" in r.stderr and "Traceback" not in r.stderr
    assert path.read_text() == "precious"
