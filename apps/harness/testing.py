"""A pytest plugin for VM integration tests (registered as `vhostnet` through the
`pytest11` entry point, so installing vhostnet is enough).

Fixtures:

- `vhostnet_stack`: a backend and its stack serving a fresh vhost-user socket (the default
  stack: we are 10.0.2.2, DHCP from 10.0.2.15, DNS 10.0.2.3, the example apps), capturing
  every frame to a pcap that is kept when the test fails (its path is printed in the report)
  and deleted when it passes.
- `vhostnet_vm`: the bundled Linux guest (or yours) booted in QEMU on that stack, eth0 up
  with a DHCP lease; `vm.run(cmd)` / `vm.run_ok(cmd)` run shell commands on its console.

Choose the guest per test with a marker:
`@pytest.mark.vhostnet_vm(kernel=..., initrd=..., qemu_args=[...], accel="kvm", dhcp=False)`.

    def test_guest_fetches_our_page(vhostnet_vm):
        out = vhostnet_vm.run_ok("wget -q -O - http://10.0.2.2/")
        assert "vhostnet" in out
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.harness.vm import GuestImage, QemuVM, vhost_user_nic_args
from apps.serve import make_server

GUEST_MAC = "52:54:00:12:34:56"


@dataclass
class StackHandle:
    """What `vhostnet_stack` yields: the server, the stack (`.runtime`, `.iface`, `.dhcp`,
    `.dns`), the vhost-user socket path and the capture file."""

    server: object
    stack: object
    app: object
    socket_path: str
    pcap: Path
    thread: threading.Thread

    def stop(self) -> None:
        self.stack.stop()
        self.server.stop()
        self.thread.join(5)
        self.server.close()
        if self.app.pcap is not None:
            self.app.pcap.close()


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "vhostnet_vm(kernel=None, initrd=None, qemu_args=(), accel='tcg', "
        "dhcp=True): the guest the vhostnet_vm fixture boots")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item._vhostnet_failed = report.failed
    return report


@pytest.fixture
def vhostnet_stack(request, tmp_path):
    pcap = tmp_path / "vhostnet.pcap"
    path = str(tmp_path / "vhostnet.sock")
    server, stack, app = make_server(socket_path=path, pcap=str(pcap), control=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="vhostnet")
    thread.start()
    handle = StackHandle(server, stack, app, path, pcap, thread)
    yield handle
    handle.stop()
    if getattr(request.node, "_vhostnet_failed", False):
        keep = Path(request.config.rootpath) / "vhostnet-pcaps" / f"{request.node.name}.pcap"
        keep.parent.mkdir(exist_ok=True)
        shutil.copy(pcap, keep)
        request.node.add_report_section("call", "vhostnet", f"capture kept: {keep}")


@pytest.fixture
def vhostnet_vm(request, vhostnet_stack):
    marker = request.node.get_closest_marker("vhostnet_vm")
    opts = dict(marker.kwargs) if marker else {}
    if opts.get("kernel") or opts.get("initrd"):
        base = GuestImage.default()
        image = GuestImage(Path(opts.get("kernel") or base.kernel),
                           Path(opts.get("initrd") or base.initrd))
    else:
        image = GuestImage.default()
    nic = vhost_user_nic_args(vhostnet_stack.socket_path, mac=GUEST_MAC)
    with QemuVM(image, nic_args=nic, accel=opts.get("accel", "tcg"),
                extra_args=tuple(opts.get("qemu_args", ()))) as vm:
        vm.wait_ready(timeout=120)
        if opts.get("dhcp", True):
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
        yield vm
