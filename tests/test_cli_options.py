"""Every `vhostnet serve` option is checked before anything starts: a bad value is one
line on stderr and exit status 2 (it used to start, then fail on every frame), and the
defaults that follow --address do."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from apps.stack import StackConfig


@pytest.mark.parametrize("argv,message", [
    (["--mtu", "10"], "--mtu 10: must be 68..65535"),
    (["--mtu", "70000"], "--mtu 70000: must be 68..65535"),
    (["--mtu", "1000"], "--mtu 1000: must be 1280..65535"),
    (["--dns-address", "8.8.8.8"], "--dns-address 8.8.8.8: not a host address in 10.0.2.0/24"),
    (["--dns-address", "nonsense"], "--dns-address nonsense"),
    (["--address", "10.0.2.2"], "--address 10.0.2.2: give our address with its prefix"),
    (["--address", "10.0.2.300/24"], "--address 10.0.2.300/24"),
    (["--address", "10.0.2.0/24"], "network address"),
    (["--address", "10.0.2.2/31"], "leaves no room"),
    (["--address", "192.168.50.1/24", "--dhcp-range", "10.0.2.15"],
     "--dhcp-range 10.0.2.15: not a host address in 192.168.50.0/24"),
    (["--dhcp-range", "10.0.2.2"], "that is our own address"),
    (["--dhcp-range", "10.0.2.15,999"], "240 addresses from 10.0.2.15"),
    (["--dhcp-range", "10.0.2.15,many"], "COUNT must be a number"),
    (["--queues", "0"], "--queues must be 1..127"),
    (["--allow-outbound", "10.0.0.0/33"], "--allow-outbound 10.0.0.0/33"),
    (["--deny-outbound", "example.com"], "--deny-outbound example.com"),
    (["--dns-forward", "1.2.3.4:99999"], "--dns-forward 1.2.3.4:99999"),
    (["--dns-forward", "::1"], "--dns-forward ::1: an IPv6 address goes in brackets"),
    (["--map-host-loopback", "localhost"], "--map-host-loopback localhost"),
    (["--max-flows", "0"], "--max-flows 0: must be at least 1"),
    (["--udp-timeout", "0"], "--udp-timeout 0.0: must be positive"),
])
def test_bad_values_are_one_line_errors(tmp_path, argv, message):
    p = subprocess.run([sys.executable, "-m", "apps.cli", "serve", "--socket-path",
                        str(tmp_path / "s.sock"), "--no-control", *argv],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.sock").exists()


def test_mtu_without_ipv6_may_go_below_1280():
    StackConfig(mtu=576, ipv6=False).check()
    with pytest.raises(ValueError, match="1280"):
        StackConfig(mtu=576).check()


@pytest.mark.parametrize("address,dns,first", [
    ("10.0.2.2/24", "10.0.2.3", "10.0.2.15"),
    ("192.168.50.1/24", "192.168.50.3", "192.168.50.15"),
    ("172.16.0.3/16", "172.16.0.4", "172.16.0.15"),
    ("10.1.1.1/29", "10.1.1.3", "10.1.1.2"),  # 8 addresses: the first free host
    ("10.1.1.1/30", "10.1.1.1", "10.1.1.2"),  # no room for a separate DNS address
])
def test_defaults_follow_the_address(address, dns, first):
    c = StackConfig(address=address)
    c.check()
    assert (str(c.dns_ip), str(c.dhcp_first)) == (dns, first)


def test_the_qemu_line_carries_host_mtu(tmp_path):
    """The guest learns --mtu only from QEMU's host_mtu= on -device: the printed QEMU
    line has it when the MTU is not 1500, and says why."""
    lines = {}
    for mtu in (1500, 9000):
        p = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--socket-path",
                              str(tmp_path / f"{mtu}.sock"), "--no-control", "--mtu",
                              str(mtu)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
        out = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            out.append(line)
            if line.startswith("The stack:"):
                break
        p.send_signal(signal.SIGTERM)
        p.wait(10)
        lines[mtu] = "".join(out)
    assert "host_mtu" not in lines[1500]
    assert "-device virtio-net-pci,netdev=n0,vectors=0,host_mtu=9000" in lines[9000]
    assert "mtu 9000" in lines[9000]
