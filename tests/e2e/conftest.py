"""Fixtures for end-to-end tests: `vhostnet serve`'s server and stack in a thread, and the
bundled Linux guest booted in QEMU attached to it."""

from __future__ import annotations

import threading

import pytest

from apps.harness.vm import GuestImage, QemuVM, vhost_user_nic_args
from apps.serve import make_server
from apps.stack import StackConfig

GUEST_MAC = "52:54:00:12:34:56"


class Served:
    def __init__(self, path: str, stack_config: StackConfig | None = None,
                 pcap: str | None = None) -> None:
        self.server, self.stack, self.app = make_server(stack_config=stack_config,
                                                        socket_path=path, pcap=pcap)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stack.stop()
        self.server.stop()
        self.thread.join(5)
        self.server.close()
        if self.app.pcap is not None:
            self.app.pcap.close()


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    return GuestImage.default()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("e2e") / "vhost.sock")
    s = Served(path)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def vm(served, guest_image):
    with QemuVM(guest_image, nic_args=vhost_user_nic_args(served.server.socket_path,
                                                          mac=GUEST_MAC)) as vm:
        vm.wait_ready(timeout=120)
        yield vm


@pytest.fixture(scope="module")
def leased_vm(vm):
    """The guest with eth0 configured by our DHCP server (udhcpc)."""
    vm.run_ok("ip link set eth0 up")
    out = vm.run_ok("udhcpc -i eth0 -n -q -t 5 -T 2 2>&1", timeout=60)
    vm.dhcp_output = out
    return vm
