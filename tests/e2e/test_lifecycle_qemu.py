"""Lifecycle under a real guest (QEMU 7.2, TCG, the bundled Linux guest): the backend killed
and restarted mid-download, QEMU killed mid-download, the guest's driver reloaded, `--connect`
mode across a QEMU restart, and two VMs on two backends at once."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest

from apps.harness.vm import QemuVM, vhost_user_nic_args
from apps.serve import make_server
from tests.e2e.conftest import GUEST_MAC, Served
from tests.e2e.test_guest_tcp import pattern_sha256

pytestmark = pytest.mark.qemu

MiB = 1 << 20
DHCP = "ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2 2>&1"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def boot(image, sock: str, **nic) -> QemuVM:
    """A started, ready VM (the caller kills it; `with` works too: stop is idempotent)."""
    vm = QemuVM(image, nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC, **nic)).start()
    try:
        vm.wait_ready(timeout=120)
    except BaseException:
        vm.kill()
        raise
    return vm


@contextlib.contextmanager
def booted(image, sock: str, **nic):
    vm = boot(image, sock, **nic)
    try:
        yield vm
    finally:
        vm.kill()


def lease(vm: QemuVM) -> str:
    out = vm.run_ok(DHCP, timeout=60)
    assert "10.0.2.15" in out, out
    return out


def rx_bytes(vm: QemuVM) -> int:
    return int(vm.run_ok("cat /sys/class/net/eth0/statistics/rx_bytes"))


def start_big_download(vm: QemuVM) -> None:
    """A 50 GB wget in the background (longer than its `timeout 20` at any speed the
    guest reaches: 200 MB once finished before the backend could be stopped); waits until
    bytes flow."""
    # under `timeout 20`: a receiver whose peer vanished sends nothing, so no RST from a
    # restarted stack may ever end it, and this busybox wget has no read timeout (-T)
    vm.run_ok("(timeout 20 wget -O /dev/null http://10.0.2.2/bytes/50000000000 "
              ">/tmp/big.log 2>&1 &)")
    base = rx_bytes(vm)
    wait_for(lambda: rx_bytes(vm) > base + 2 * MiB, 60, "the download to get going")


def test_backend_restart_mid_download(guest_image, tmp_path):
    sock = str(tmp_path / "vhost.sock")
    served = Served(sock)
    vm = None
    try:
        vm = boot(guest_image, sock)
        lease(vm)
        start_big_download(vm)
        served.stop()
        served = Served(sock)
        wait_for(lambda: served.server.conn is not None, 20, "QEMU to reconnect")
        wait_for(lambda: any(q.ready for q in served.server.conn.backend.queues), 20,
                 "QEMU to set the rings up again")
        # no guest action: the link carries traffic again
        out = vm.run_ok("wget -q -O - http://10.0.2.2/bytes/100000 | sha256sum", timeout=120)
        assert out.split()[0] == pattern_sha256(100000), out
        out = vm.run_ok("ping -c 2 -W 5 10.0.2.2", timeout=60)
        assert " 0% packet loss" in out, out
        # the interrupted download's connection was to the old stack: it is gone
        wait_for(lambda: not vm.run("pidof wget").ok, 60,
                 "the interrupted wget to give up")
        log = vm.run_ok("cat /tmp/big.log")
        assert "100%" not in log, log
    finally:
        if vm is not None:
            vm.kill()
        served.stop()


def test_qemu_killed_mid_download(guest_image, tmp_path):
    sock = str(tmp_path / "vhost.sock")
    served = Served(sock)
    try:
        baseline = fd_count()
        vm = boot(guest_image, sock)
        try:
            lease(vm)
            start_big_download(vm)
            assert served.server.conn is not None
            # the device holds fds of its own (memory regions, kick/call eventfds)
            assert fd_count() > baseline + 3
        finally:
            vm.kill()
        wait_for(lambda: served.server.conn is None, 20, "the backend to drop the device")
        fds: list[int] = []

        def back_to_baseline() -> bool:
            fds.append(fd_count())
            return fds[-1] <= baseline

        try:
            wait_for(back_to_baseline, 20, "fds to return to the baseline")
        except AssertionError:
            pytest.fail(f"fd leak: baseline {baseline}, now {fds[-1]}: "
                        f"{sorted(os.listdir('/proc/self/fd'), key=int)}")
        with booted(guest_image, sock) as vm2:
            lease(vm2)
            out = vm2.run_ok("ping -c 2 -W 5 10.0.2.2", timeout=60)
            assert " 0% packet loss" in out, out
    finally:
        served.stop()


def test_guest_driver_reload(guest_image, tmp_path):
    sock = str(tmp_path / "vhost.sock")
    served = Served(sock)
    try:
        with booted(guest_image, sock) as vm:
            lease(vm)
            vm.run_ok("ping -c 1 -W 5 10.0.2.2", timeout=60)
            ifindex = vm.run_ok("cat /sys/class/net/eth0/ifindex")
            backend = served.server.conn.backend
            before = backend.counters["messages"]
            vm.run_ok("rmmod virtio_net && insmod /lib/modules/$(uname -r)/virtio_net.ko",
                      timeout=60)
            wait_for(lambda: vm.run("ip link show eth0").ok, 30, "eth0 to come back")
            assert vm.run_ok("cat /sys/class/net/eth0/ifindex") != ifindex  # a new netdev
            # the same connection, the device stopped and set up again by QEMU
            assert served.server.connections_served == 1
            assert served.server.conn.backend is backend
            assert backend.counters["messages"] > before + 8, backend.counters
            lease(vm)
            out = vm.run_ok("ping -c 2 -W 5 10.0.2.2", timeout=60)
            assert " 0% packet loss" in out, out
            out = vm.run_ok("wget -q -O - http://10.0.2.2/bytes/1000000 | sha256sum",
                            timeout=120)
            assert out.split()[0] == pattern_sha256(1000000), out
    finally:
        served.stop()


class Connecting:
    """`make_server(connect_path=...)` in a thread: we connect to QEMU and retry."""

    def __init__(self, path: str) -> None:
        self.server, self.stack, self.app = make_server(connect_path=path)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stack.stop()
        self.server.stop()
        self.thread.join(5)
        self.server.close()


def test_connect_mode_across_qemu_restart(guest_image, tmp_path):
    sock = str(tmp_path / "qemu.sock")
    backend = Connecting(sock)  # before QEMU listens: it retries
    try:
        with booted(guest_image, sock, server=True) as vm:
            lease(vm)
            assert backend.server.connections_served == 1
            vm.kill()
        wait_for(lambda: backend.server.conn is None, 20, "the backend to drop the device")
        with booted(guest_image, sock, server=True) as vm:
            lease(vm)
            out = vm.run_ok("ping -c 2 -W 5 10.0.2.2", timeout=60)
            assert " 0% packet loss" in out, out
            assert backend.server.connections_served == 2
    finally:
        backend.stop()


def test_two_vms_two_backends(guest_image, tmp_path):
    socks = [str(tmp_path / f"vhost{i}.sock") for i in range(2)]
    served = [Served(s) for s in socks]
    vms = [QemuVM(guest_image, nic_args=vhost_user_nic_args(s, mac=GUEST_MAC)) for s in socks]
    try:
        for vm in vms:
            vm.start()
        for vm in vms:
            vm.wait_ready(timeout=120)
        for vm in vms:
            lease(vm)
        n = 5 * MiB
        results: list[str | BaseException] = [""] * 2

        def fetch(i: int) -> None:
            try:
                results[i] = vms[i].run_ok(
                    f"wget -q -O - http://10.0.2.2/bytes/{n} | sha256sum", timeout=300)
            except BaseException as e:  # reported below
                results[i] = e

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(320)
        want = pattern_sha256(n)
        for r in results:
            if isinstance(r, BaseException):
                raise r
            assert r.split()[0] == want, r
    finally:
        for vm in vms:
            vm.kill()
        for s in served:
            s.stop()
