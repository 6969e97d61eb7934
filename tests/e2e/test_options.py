"""Options as the guest sees them: `--address` moves every default with it (the DHCP
pool, the DNS server, the names and their PTR records, as slirp's net= does), and
`--mtu` reaches the guest through QEMU's host_mtu=, which the printed QEMU line has."""

from __future__ import annotations

import pytest

from apps.harness.vm import QemuVM, vhost_user_nic_args
from apps.stack import StackConfig
from tests.e2e.conftest import GUEST_MAC, Served

pytestmark = pytest.mark.qemu


def test_address_moves_the_derived_defaults(tmp_path, guest_image):
    served = Served(str(tmp_path / "vhost.sock"), StackConfig(address="192.168.50.1/24"))
    try:
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(served.server.socket_path,
                                                              mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            out = vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2 2>&1",
                            timeout=60)
            assert "192.168.50.15" in out, out
            assert "192.168.50.15/24" in vm.run_ok("ip -4 addr show eth0")
            assert "192.168.50.3" in vm.run_ok("cat /etc/resolv.conf")
            for name, addr in (("gateway.vhostnet", "192.168.50.1"),
                               ("dns.vhostnet", "192.168.50.3")):
                out = vm.run_ok(f"nslookup -type=A {name} 192.168.50.3")
                assert f"Address: {addr}" in out.partition("Name:")[2], out
            out = vm.run_ok("nslookup 192.168.50.1 192.168.50.3")
            assert "gateway.vhostnet" in out, out
            vm.run_ok("ping -c 2 192.168.50.1")
    finally:
        served.stop()


def test_mtu_reaches_the_guest_with_host_mtu(tmp_path, guest_image):
    served = Served(str(tmp_path / "vhost.sock"), StackConfig(mtu=9000))
    try:
        nic = vhost_user_nic_args(served.server.socket_path, mac=GUEST_MAC,
                                  extra_device_opts="host_mtu=9000")
        with QemuVM(guest_image, nic_args=nic) as vm:
            vm.wait_ready(timeout=120)
            assert vm.run_ok("cat /sys/class/net/eth0/mtu").strip() == "9000"
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            # a datagram of 8972 bytes (9000 with its headers) crosses unfragmented
            out = vm.run_ok("ping -c 2 -s 8972 10.0.2.2")
            assert " 0% packet loss" in out, out
    finally:
        served.stop()
