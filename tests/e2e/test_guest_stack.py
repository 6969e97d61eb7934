"""The Linux guest behind our backend uses our stack: DHCP, ping, DNS, UDP to our apps,
ICMP port unreachable for closed ports."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.qemu


def test_dhcp_lease_with_router_and_dns(leased_vm, served):
    vm = leased_vm
    addr = vm.run_ok("ip -4 addr show dev eth0")
    assert "inet 10.0.2.15/24" in addr, addr
    assert "default via 10.0.2.2" in vm.run_ok("ip route")
    assert "nameserver 10.0.2.3" in vm.run_ok("cat /etc/resolv.conf")
    leases = served.stack.dhcp.leases()
    assert [str(lease.address) for lease in leases] == ["10.0.2.15"]


def test_ping_100_no_loss(leased_vm):
    out = leased_vm.run_ok("ping -c 100 -i 0.05 -q 10.0.2.2", timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received, (\d+)% packet loss", out)
    assert m and m.group(1) == m.group(2) == "100" and m.group(3) == "0", out


def test_ping_large_fragmented(leased_vm):
    out = leased_vm.run_ok("ping -c 3 -s 4000 10.0.2.2", timeout=30)
    assert "3 packets received" in out, out


def test_dns_names(leased_vm):
    out = leased_vm.run_ok("nslookup gateway.vhostnet 10.0.2.3")
    assert "10.0.2.2" in out.split("gateway.vhostnet", 1)[1], out
    out = leased_vm.run("nslookup nosuchname.vhostnet 10.0.2.3")
    assert out.rc != 0 or "NXDOMAIN" in out.output or "can't find" in out.output, out


def test_udp_to_our_apps(leased_vm):
    vm = leased_vm
    out = vm.run_ok("echo -n hello | vhn-udp 10.0.2.2 5555")
    assert out == "response_hello", out
    out = vm.run_ok("echo -n ping | vhn-udp 10.0.2.2 7")
    assert out == "ping", out
    out = vm.run_ok("vhn-udp -q -n 200 -s 1400 10.0.2.2 7", timeout=60)
    assert out.strip() == "200/200 replies", out


def test_closed_udp_port_gets_port_unreachable(leased_vm, served):
    """traceroute's probes to 10.0.2.2's high ports: none of ours, so the gateway sends
    them to the host's loopback, where they are closed too; the host kernel's port
    unreachable comes back to the guest from 10.0.2.2 (with --no-gateway our interface
    answers it itself: tests/netns/test_linux_stack.py)."""
    gw = served.stack.gateway
    before = gw.status()["counters"].get("udp_unreachable_relayed", 0)
    res = leased_vm.run("traceroute -n -m 1 -q 1 -w 2 10.0.2.2", timeout=20)
    assert "10.0.2.2" in res.output and "*" not in res.output, res.output
    assert gw.status()["counters"].get("udp_unreachable_relayed", 0) > before, gw.status()
