"""The pytest plugin (apps/harness/testing.py) as a user writes tests with it: the README example."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.qemu


def test_guest_fetches_our_page(vhostnet_vm):
    out = vhostnet_vm.run_ok("wget -q -O - http://10.0.2.2/")
    assert "vhostnet" in out


def test_stack_sees_the_lease_and_the_capture_fills(vhostnet_vm, vhostnet_stack):
    assert [str(lease.address) for lease in vhostnet_stack.stack.dhcp.leases()] == ["10.0.2.15"]
    vhostnet_vm.run_ok("ping -c 2 10.0.2.2")
    assert vhostnet_stack.pcap.stat().st_size > 24 + 4 * 60  # header + a few frames


@pytest.mark.vhostnet_vm(dhcp=False)
def test_marker_leaves_eth0_unconfigured(vhostnet_vm):
    assert "inet " not in vhostnet_vm.run_ok("ip addr show dev eth0")
