"""`vhostnet bridge`: the guest's NIC on a TAP in a network namespace we create (and always
remove). The real thing boots the bundled Linux guest in QEMU, attached to `vhostnet bridge`
run as a subprocess, and has it talk to the namespace's kernel stack: pings both ways and
4 MiB over TCP each way, checked by SHA-256. Smaller tests pin the App with a fake guest,
the server's `add_reader` hook and the CLI's error sentences."""

from __future__ import annotations

import doctest
import hashlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether

import apps.bridge
from apps.bridge import TapBridge

REPO = Path(__file__).resolve().parent.parent
NS_IP = "10.77.0.1"
GUEST_IP = "10.77.0.2"
GUEST_MAC = "52:54:00:12:34:56"

# the host's ping, or busybox's (the same applet the guest has)
PING = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_NET_ADMIN)")
needs_tun = pytest.mark.skipif(not os.path.exists("/dev/net/tun"),
                               reason="/dev/net/tun is missing")


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


def ns_links(ns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture
def netns():
    name = unique("vhn-br-")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout


def test_docstring_examples():
    result = doctest.testmod(apps.bridge)
    assert result.attempted > 0 and result.failed == 0


# -- the server's extra-fd hook ----------------------------------------------------------

class PipeApp:
    """Reads the pipe the server watches for it; records what it read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.got: list[bytes] = []
        self.event = threading.Event()

    def attach(self, device) -> None: ...

    def detach(self) -> None: ...

    def poll(self, now: float):
        try:
            data = os.read(self.fd, 100)
        except BlockingIOError:
            return None
        self.got.append(data)
        self.event.set()
        return None


def test_server_add_reader_runs_the_app_when_the_fd_is_readable(tmp_path):
    from vhostuser.server import VhostUserServer

    r, w = os.pipe()
    os.set_blocking(r, False)
    app = PipeApp(r)
    calls = []
    server = VhostUserServer(socket_path=str(tmp_path / "s.sock"), app=app)
    server.add_reader(r, lambda: calls.append(1))
    with pytest.raises(KeyError):
        server.add_reader(r)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        app.event.clear()
        app.got.clear()
        os.write(w, b"frame")
        assert app.event.wait(2), "the app was not polled for a readable fd"
        assert app.got == [b"frame"] and calls
    finally:
        server.stop()
        thread.join(2)
        assert server.remove_reader(r) and not server.remove_reader(r)
        server.close()
        os.close(r)
        os.close(w)
    assert not thread.is_alive()


# -- the App with a fake guest and the kernel of a namespace ----------------------------

class FakeGuest:
    """Shaped like VirtioNetDevice for TapBridge: frames to "send from the guest", and the
    frames the bridge delivered to it."""

    def __init__(self) -> None:
        self.outbox: list[bytes] = []
        self.inbox: list[bytes] = []

    def drain_tx(self, handler, limit: int = 1 << 30) -> int:
        n = 0
        while self.outbox and n < limit:
            handler(memoryview(self.outbox.pop(0)))
            n += 1
        return n

    def transmit(self, now: float = 0.0):
        return object()

    def send(self, frame) -> bool:
        self.inbox.append(bytes(frame))
        return True


def pump(bridge: TapBridge, guest: FakeGuest, until, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bridge.poll(time.monotonic())
        if until():
            return
        select.select([bridge.tap.fileno()], [], [], 0.05)
    raise AssertionError(f"timed out; counters {dict(bridge.counters)}, "
                         f"inbox {[Ether(f).summary() for f in guest.inbox]}")


@needs_root
@needs_tun
@pytest.mark.netns
def test_bridge_moves_frames_between_a_guest_and_the_kernel(netns):
    from netstack.phy.tap import TapDevice

    tap = TapDevice(unique("vhnbr"), netns=netns, mtu=1500)
    try:
        tap.add_address(f"{NS_IP}/24")
        tap.up()
        bridge = TapBridge(tap)
        guest = FakeGuest()
        bridge.attach(guest)
        arp = Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=GUEST_MAC, psrc=GUEST_IP, pdst=NS_IP)
        guest.outbox.append(bytes(arp))
        guest.outbox.append(bytes(Ether(src=GUEST_MAC, dst=tap.mac, type=0x88B5))
                            + bytes(1501))  # one byte over the MTU: dropped, counted

        def answered() -> bool:
            return any(ARP in Ether(f) and Ether(f)[ARP].op == 2 for f in guest.inbox)

        pump(bridge, guest, answered)
        reply = next(Ether(f) for f in guest.inbox if ARP in Ether(f) and Ether(f)[ARP].op == 2)
        assert reply[ARP].psrc == NS_IP and reply.dst == GUEST_MAC
        assert reply.src == tap.mac
        assert bridge.counters["guest_to_tap_frames"] == 1
        assert bridge.counters["guest_oversize"] == 1
        assert bridge.counters["tap_to_guest_frames"] >= 1

        # the guest goes away: frames from the kernel are counted as tap_no_guest
        bridge.detach()
        subprocess.run(["ip", "netns", "exec", netns, *PING, "-c", "1", "-W", "1",
                        "10.77.0.9"], capture_output=True, check=False)
        pump(bridge, guest, lambda: bridge.counters["tap_no_guest"] > 0)
    finally:
        tap.close()
    assert tap.name not in ns_links(netns)


# -- the CLI's sentences -------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apps.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_cli_help_teaches():
    out = run_cli("bridge", "--help")
    assert out.returncode == 0
    assert "ip netns add" in out.stdout and "--tap NAME" in out.stdout
    assert "bridge" in run_cli("--help").stdout


def test_cli_missing_namespace_is_said_clearly(tmp_path):
    ns = unique("vhn-br-missing-")
    out = run_cli("bridge", "--tap", "vhnbrx", "--netns", ns,
                  "--socket-path", str(tmp_path / "s.sock"))
    assert out.returncode == 1
    assert f"network namespace {ns!r} does not exist" in out.stderr
    assert f"ip netns add {ns}" in out.stderr
    assert not (tmp_path / "s.sock").exists()


@needs_root
@pytest.mark.netns
def test_cli_refuses_existing_in_a_namespace(tmp_path, netns):
    out = run_cli("bridge", "--tap", "vhnbrx", "--netns", netns, "--existing",
                  "--socket-path", str(tmp_path / "s.sock"))
    assert out.returncode == 1 and "--existing works in our namespace only" in out.stderr


def test_cli_requires_tap():
    out = run_cli("bridge")
    assert out.returncode == 1 and "--tap NAME is required" in out.stderr


# -- the real thing: QEMU's guest and the namespace's kernel -------------------------------

NS_SENDER = """
import random, socket, sys
data = random.Random(7).randbytes(4 << 20)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
s.settimeout(120)
c, _ = s.accept()
c.sendall(data)
c.close()
"""

NS_RECEIVER = """
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
s.settimeout(120)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while chunk := c.recv(65536):
    h.update(chunk)
    n += len(chunk)
print(h.hexdigest(), n, flush=True)
c.close()
"""


def ns_python(ns: str, script: str, *args: str) -> subprocess.Popen:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


def wait_path(path: Path, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"vhostnet bridge exited {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@needs_root
@needs_tun
@pytest.mark.qemu
@pytest.mark.netns
def test_guest_joins_the_namespace_through_the_tap(netns, tmp_path):
    from apps.harness.vm import GuestImage, QemuVM, vhost_user_nic_args

    sock = tmp_path / "bridge.sock"
    tap = unique("vhnbr")
    log_out, log_err = tmp_path / "bridge.out", tmp_path / "bridge.err"
    with open(log_out, "w") as out, open(log_err, "w") as err:
        bridge = subprocess.Popen(
            [sys.executable, "-m", "apps.cli", "bridge", "--tap", tap, "--netns", netns,
             "--address", f"{NS_IP}/24", "--socket-path", str(sock)],
            cwd=REPO, stdout=out, stderr=err)
    try:
        wait_path(sock, bridge)
        assert tap in ns_links(netns)
        with QemuVM(GuestImage.default(), nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            vm.run_ok(f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0")

            ping = vm.run(f"ping -c 5 -i 0.2 -W 3 {NS_IP}", timeout=60)
            assert " 0% packet loss" in ping.output, ping.output
            ping = subprocess.run(["ip", "netns", "exec", netns, *PING, "-c", "5", "-i",
                                   "0.2", "-W", "3", GUEST_IP], capture_output=True,
                                  text=True, timeout=60)
            assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr

            # namespace -> guest: 4 MiB of deterministic bytes, hashed by the guest
            want = hashlib.sha256(random.Random(7).randbytes(4 << 20)).hexdigest()
            sender = ns_python(netns, NS_SENDER, NS_IP, "5001")
            try:
                got = vm.run_ok(f"nc {NS_IP} 5001 | sha256sum", timeout=240)
                assert got.split()[0] == want, got
                assert sender.wait(30) == 0
            finally:
                sender.kill()
                sender.wait()

            # guest -> namespace: 4 MiB from the guest's urandom, hashed on both sides
            vm.run_ok("dd if=/dev/urandom of=/tmp/f bs=1k count=4096 2>/dev/null")
            sent = vm.run_ok("sha256sum /tmp/f").split()[0]
            receiver = ns_python(netns, NS_RECEIVER, NS_IP, "5002")
            try:
                vm.run_ok(f"nc {NS_IP} 5002 < /tmp/f", timeout=240)
                digest, n = receiver.stdout.readline().split()
                assert (digest, int(n)) == (sent, 4 << 20)
            finally:
                receiver.kill()
                receiver.wait()

            # a frame over the guest's MTU from the namespace is dropped and counted
            subprocess.run(["ip", "-n", netns, "link", "set", tap, "mtu", "2000"], check=True)
            subprocess.run(["ip", "netns", "exec", netns, *PING, "-c", "1", "-W", "1",
                            "-s", "1800", GUEST_IP], capture_output=True, check=False)

            # SIGTERM with the guest still attached: gone within 2 s, TAP and socket file
            # removed, counters logged
            t0 = time.monotonic()
            bridge.send_signal(signal.SIGTERM)
            assert bridge.wait(2) == 0
            assert time.monotonic() - t0 < 2
        assert tap not in ns_links(netns)
        assert not sock.exists()
        stderr = log_err.read_text()
        assert "bridge stopped" in stderr and "tap_oversize=1" in stderr, stderr
        assert "guest_oversize" not in stderr and "guest_no_buffer" not in stderr, stderr
        assert f"path={sock}" in log_out.read_text()  # the QEMU options to paste
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()


@needs_root
@needs_tun
@pytest.mark.netns
def test_sigint_without_a_guest_removes_tap_and_socket(netns, tmp_path):
    sock = tmp_path / "bridge.sock"
    tap = unique("vhnbr")
    bridge = subprocess.Popen([sys.executable, "-m", "apps.cli", "bridge", "--tap", tap,
                               "--netns", netns, "--socket-path", str(sock)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_path(sock, bridge)
        assert tap in ns_links(netns)
        t0 = time.monotonic()
        bridge.send_signal(signal.SIGINT)
        assert bridge.wait(2) == 0, bridge.stderr.read()
        assert time.monotonic() - t0 < 2
        assert tap not in ns_links(netns) and not sock.exists()
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()


@needs_root
@needs_tun
@pytest.mark.netns
def test_status_and_capture_reach_a_bridge(netns, tmp_path):
    """`vhostnet bridge` has a control socket as `serve` does: status shows the device,
    capture the frames crossing the guest's NIC (it had none: status failed)."""
    from tests.vhostuser.conftest import make_frontend

    sock = tmp_path / "bridge.sock"
    bridge = subprocess.Popen([sys.executable, "-m", "apps.cli", "bridge", "--tap",
                               unique("vhnbs"), "--netns", netns, "--socket-path", str(sock)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_path(sock, bridge)
        wait_path(Path(f"{sock}.ctl"), bridge)
        fe = make_frontend(str(sock))
        try:
            # (the kernel behind the TAP sends its own frames too: IPv6 DAD, MLD)
            cap = subprocess.Popen([sys.executable, "-m", "apps.cli", "capture",
                                    "--socket-path", str(sock), "--count", "1",
                                    "--filter", "arp"], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 10
            st = {}
            while time.monotonic() < deadline:
                r = subprocess.run([sys.executable, "-m", "apps.cli", "status", "--socket-path",
                                    str(sock), "--json"], cwd=REPO, capture_output=True,
                                   text=True, timeout=30)
                assert r.returncode == 0, r.stderr
                st = json.loads(r.stdout)
                if st.get("captures"):
                    break
                time.sleep(0.1)
            assert st["device"]["queues"][1]["started"], st
            fe.send_frame(b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01\x08\x06" + bytes(46))
            out, err = cap.communicate(timeout=20)
            assert cap.returncode == 0 and "guest>" in out, (out, err)
        finally:
            fe.close()
    finally:
        bridge.send_signal(signal.SIGINT)
        bridge.wait(5)
