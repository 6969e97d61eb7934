"""`vhostnet demo`: boot the bundled Linux guest on our backend and show, step by step, what
crosses its NIC. Exits 0 when every step passed, else 1 with the failed step and the last
console lines.

Each step is a function of the `Demo` (backend, guest, app) that returns a short result
line; the runner prints it with its timing. Plain text, one line per step, so it reads the
same on a terminal and in a CI log.
"""

from __future__ import annotations

import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apps.vm import GuestImage, QemuVM, vhost_user_nic_args
from vhostuser.backend import BackendConfig
from vhostuser.server import VhostUserServer

GUEST_MAC = "52:54:00:12:34:56"


class FrameTap:
    """The demo's App until the stack is attached: records what the guest sends and sends
    what the demo queues, counting both ways."""

    def __init__(self) -> None:
        self.device = None
        self.from_guest: queue.Queue[bytes] = queue.Queue()
        self.to_guest: queue.Queue[bytes] = queue.Queue()
        self.sent = 0
        self.received = 0
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
        while not self.to_guest.empty():
            dev.send(self.to_guest.get_nowait())
            self.sent += 1

        def got(frame) -> None:
            self.received += 1
            self.from_guest.put(bytes(frame))

        dev.drain_tx(got, limit=256)
        return None


@dataclass
class Demo:
    accel: str = "tcg"
    keep: bool = False
    out: Callable[[str], None] = print
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vhostnet-demo-")))
    server: VhostUserServer | None = None
    vm: QemuVM | None = None
    tap: FrameTap = field(default_factory=FrameTap)

    @property
    def socket_path(self) -> str:
        return str(self.workdir / "vhostnet.sock")

    # -- steps -------------------------------------------------------------------------
    def step_backend(self) -> str:
        self.server = VhostUserServer(socket_path=self.socket_path, config=BackendConfig(),
                                      app=self.tap)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"listening on {self.socket_path}"

    def step_guest(self) -> str:
        image = GuestImage.default()
        self.vm = QemuVM(image, nic_args=vhost_user_nic_args(self.socket_path, mac=GUEST_MAC),
                         accel=self.accel)
        self.vm.start()
        ms = self.vm.wait_ready(timeout=120)
        if not self.tap.attached.wait(10):
            raise RuntimeError("QEMU did not connect to the backend")
        return f"Linux {image.kernel_version} up in {ms} ms ({self.accel})"

    def step_link(self) -> str:
        vm = self.vm
        vm.run_ok("ip link set eth0 up")
        deadline = time.monotonic() + 10
        while vm.run_ok("cat /sys/class/net/eth0/operstate").strip() != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("eth0 did not come up")
            time.sleep(0.2)
        drv = vm.run_ok("basename $(readlink /sys/class/net/eth0/device/driver)").strip()
        return f"eth0 up, driver {drv}, mac {vm.run_ok('cat /sys/class/net/eth0/address').strip()}"

    def step_guest_to_us(self) -> str:
        vm = self.vm
        vm.run_ok("ip addr add 10.0.2.15/24 dev eth0")
        vm.run("ping -c 2 -W 1 10.0.2.99")
        frame = self.tap.from_guest.get(timeout=10)
        return f"{self.tap.received} frames from the guest (first: {len(frame)} bytes, " \
               f"ethertype {frame[12:14].hex()})"

    def step_us_to_guest(self) -> str:
        vm = self.vm
        before = int(vm.run_ok("cat /sys/class/net/eth0/statistics/rx_packets"))
        frame = bytes.fromhex(GUEST_MAC.replace(":", "")) + bytes.fromhex("52550a000202") \
            + b"\x88\xb5" + b"hello from vhostnet".ljust(46, b".")
        for _ in range(10):
            self.tap.to_guest.put(frame)
        self.server.wake()
        deadline = time.monotonic() + 10
        while True:
            after = int(vm.run_ok("cat /sys/class/net/eth0/statistics/rx_packets"))
            if after - before >= 10:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"guest counted {after - before} of 10 frames")
            time.sleep(0.1)
        return f"guest's rx_packets went {before} -> {after}"

    STEPS = [
        ("start the vhost-user backend", step_backend),
        ("boot the guest in QEMU", step_guest),
        ("guest's virtio_net brings eth0 up", step_link),
        ("frames from the guest reach us", step_guest_to_us),
        ("frames we send reach the guest", step_us_to_guest),
    ]

    # -- runner ------------------------------------------------------------------------
    def run(self) -> int:
        total = len(self.STEPS)
        t_all = time.monotonic()
        try:
            for i, (title, fn) in enumerate(self.STEPS, 1):
                t0 = time.monotonic()
                try:
                    result = fn(self)
                except Exception as e:  # report the step, the error and the console
                    self.out(f"[{i}/{total}] {title:.<44} FAILED ({time.monotonic() - t0:.2f} s)")
                    self.out(f"      {type(e).__name__}: {e}")
                    if self.vm is not None:
                        self.out("      last console lines:\n" + _indent(self.vm.tail(15)))
                    return 1
                self.out(f"[{i}/{total}] {title:.<44} ok ({time.monotonic() - t0:.2f} s)")
                self.out(f"      {result}")
            self.out(f"demo passed in {time.monotonic() - t_all:.1f} s")
            if self.keep and self.vm is not None:
                self.out("--keep: the VM keeps running; Ctrl-C ends it")
                try:
                    while self.vm.returncode is None:
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    pass
            return 0
        finally:
            self.close()

    def close(self) -> None:
        if self.vm is not None:
            self.vm.stop()
        if self.server is not None:
            self.server.stop()
            time.sleep(0.05)
            self.server.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _indent(text: str) -> str:
    return "\n".join("        " + line for line in text.splitlines())


def main(accel: str = "tcg", keep: bool = False) -> int:
    return Demo(accel=accel, keep=keep, out=lambda s: print(s, flush=True)).run()


if __name__ == "__main__":
    sys.exit(main())
