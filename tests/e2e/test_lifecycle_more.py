"""More lifecycle under a real guest (QEMU 7.2, TCG, the bundled Linux guest): a guest reboot
on the same backend, and a `vhostnet bridge` restart that the guest's TCP connection to a peer
in the namespace survives (the peer's TAP is persistent, so only the backend goes away)."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys

import pytest

from apps.harness.vm import QemuVM, vhost_user_nic_args
from tests.e2e.conftest import GUEST_MAC, Served
from tests.e2e.test_lifecycle_qemu import lease, rx_bytes, wait_for
from tests.test_bridge import (
    GUEST_IP,
    NS_IP,
    REPO,
    needs_root,
    needs_tun,
    netns,  # noqa: F401  (the fixture)
    ns_python,
    unique,
    wait_path,
)

pytestmark = pytest.mark.qemu

MiB = 1 << 20


def test_guest_reboot_gets_a_new_lease(guest_image, tmp_path):
    sock = str(tmp_path / "vhost.sock")
    served = Served(sock)
    vm = QemuVM(guest_image, nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC), reboot=True)
    try:
        vm.start()
        first = vm.wait_ready(timeout=120)
        assert "-no-reboot" not in vm.command_line(guest_image.initrd)
        lease(vm)
        out = vm.run_ok("ping -c 2 -W 5 10.0.2.2", timeout=60)
        assert " 0% packet loss" in out, out
        backend = served.server.conn.backend
        before = backend.counters["messages"]
        # returns at once; the machine restarts a moment later
        vm.run_ok("(sleep 0.5; reboot -f) >/dev/null 2>&1 &")
        second = vm.wait_ready(timeout=120)
        assert vm.returncode is None  # the same QEMU
        assert vm.console_log.count("vhostnet-guest: ready") == 2
        assert second > 0 and first > 0
        # QEMU reset the device and set it up again (on the same or a new connection)
        assert served.server.conn is not None
        assert served.server.conn.backend.counters["messages"] > (
            before if served.server.conn.backend is backend else 0)
        lease(vm)
        out = vm.run_ok("ping -c 2 -W 5 10.0.2.2", timeout=60)
        assert " 0% packet loss" in out, out
    finally:
        vm.kill()
        served.stop()


SIZE = 16 * MiB
CHUNK = 256 * 1024

THROTTLED_SENDER = """
import random, socket, sys, time
data = random.Random(11).randbytes(int(sys.argv[3]))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
s.settimeout(120)
c, _ = s.accept()
step = int(sys.argv[4])
for i in range(0, len(data), step):
    c.sendall(data[i:i + step])
    time.sleep(0.05)
c.close()
print("sent", flush=True)
"""


def start_bridge(netns: str, tap: str, sock, log) -> subprocess.Popen:  # noqa: F811
    """`vhostnet bridge --existing` run inside the namespace, on its persistent TAP."""
    with open(log, "a") as err:
        p = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "apps.cli", "bridge",
             "--tap", tap, "--existing", "--socket-path", str(sock)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    wait_path(sock, p)
    return p


@needs_root
@needs_tun
@pytest.mark.netns
def test_bridge_restart_keeps_the_guests_tcp_to_the_namespace(guest_image, netns,  # noqa: F811
                                                              tmp_path):
    sock = tmp_path / "bridge.sock"
    log = tmp_path / "bridge.err"
    tap = unique("vhnbr")
    ns = ["ip", "-n", netns]
    subprocess.run([*ns, "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    subprocess.run([*ns, "addr", "add", f"{NS_IP}/24", "dev", tap], check=True)
    bridge = start_bridge(netns, tap, sock, log)
    sender = None
    vm = QemuVM(guest_image, nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC))
    try:
        vm.start()
        vm.wait_ready(timeout=120)
        vm.run_ok(f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0")
        out = vm.run_ok(f"ping -c 2 -W 5 {NS_IP}", timeout=60)
        assert " 0% packet loss" in out, out

        want = hashlib.sha256(random.Random(11).randbytes(SIZE)).hexdigest()
        sender = ns_python(netns, THROTTLED_SENDER, NS_IP, "5001", str(SIZE), str(CHUNK))
        base = rx_bytes(vm)
        # (nc's stdin a silent pipe: a background job reading the console would eat the
        # harness's next commands — the shell then waits on half a line, or gets EOF)
        vm.run_ok(f"(sleep 3600 | nc {NS_IP} 5001 | sha256sum > /tmp/h) >/dev/null 2>&1 &")
        wait_for(lambda: rx_bytes(vm) > base + 2 * MiB, 30, "the transfer to get going")
        assert sender.poll() is None, "the transfer ended before the restart"

        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(5) == 0
        assert tap in subprocess.run([*ns, "-o", "link", "show"], capture_output=True,
                                     text=True, check=True).stdout  # persistent: still there
        mid = rx_bytes(vm)
        bridge = start_bridge(netns, tap, sock, log)

        assert sender.stdout.readline().strip() == "sent", sender.stderr.read()
        assert sender.wait(30) == 0
        wait_for(lambda: vm.run_ok("cat /tmp/h 2>/dev/null", timeout=90).strip() != "", 90,
                 "the guest to hash the whole stream")
        got = vm.run_ok("cat /tmp/h").split()[0]
        assert got == want
        assert mid < base + SIZE  # the restart really was mid-transfer
    finally:
        vm.kill()
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait()
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()
