"""`--pcap` at the virtqueue: the capture holds exactly what the guest sent and got, and
real tools (tshark, scapy) read it."""

from __future__ import annotations

import subprocess

import pytest
from scapy.utils import rdpcap

from apps.harness.vm import QemuVM, vhost_user_nic_args
from tests.e2e.conftest import GUEST_MAC, Served

pytestmark = pytest.mark.qemu


def test_pcap_of_a_guest_session(tmp_path, guest_image):
    pcap = tmp_path / "session.pcap"
    served = Served(str(tmp_path / "vhost.sock"), pcap=str(pcap))
    try:
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(served.server.socket_path,
                                                              mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            vm.run_ok("ping -c 5 -i 0.1 10.0.2.2")
            dev = served.server.device
            counted = dev.stats["guest_tx_frames"] + dev.stats["guest_rx_frames"]
    finally:
        served.stop()
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "icmp.type",
                          "-e", "dhcp.option.dhcp", "-Y", "icmp or dhcp"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[0] for r in rows if r[0]].count("8") == 5  # echo requests from the guest
    assert [r[0] for r in rows if r[0]].count("0") == 5  # our replies
    dhcp = [r[1] for r in rows if len(r) > 1 and r[1]]
    assert dhcp[:4] == ["1", "2", "3", "5"]  # DISCOVER OFFER REQUEST ACK
    frames = rdpcap(str(pcap))
    assert len(frames) >= counted - 2  # frames after the counters were read may follow
    assert all(bytes(f)[:6] in (bytes.fromhex("525400123456"), b"\xff" * 6,
                                bytes.fromhex("52550a000202")) or bytes(f)[0] & 1
               for f in frames)


def test_a_pcap_reader_that_exits_stops_the_capture_not_the_traffic(tmp_path, guest_image):
    """`vhostnet serve --pcap - | tcpdump -c 3 -r -`: when the reader has had enough, the
    next write gets EPIPE. That took the interface poll down on every frame (the guest's
    ping 100 % lost, ~35,000 tracebacks in 25 s). Now the capture stops with one log line,
    `status` says so, and the guest's traffic goes on."""
    import json
    import os
    import sys

    sock = str(tmp_path / "vhost.sock")
    ctl = str(tmp_path / "vhost.ctl")
    err = open(tmp_path / "err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--socket-path",
                             sock, "--control", ctl, "--pcap", "-"],
                            stdout=subprocess.PIPE, stderr=err, cwd=os.getcwd())
    try:
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            head = proc.stdout.read(24 + 3 * 16)  # the header and a few frames' worth
            assert head[:4] == b"\xd4\xc3\xb2\xa1"  # pcap magic (little-endian)
            proc.stdout.close()  # the reader exits
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            out = vm.run_ok("ping -c 20 -i 0.1 10.0.2.2", timeout=60)
            assert " 0% packet loss" in out, out
            status = json.loads(subprocess.run(
                [sys.executable, "-m", "apps.cli", "status", "--control", ctl, "--json"],
                capture_output=True, text=True, timeout=30, check=True).stdout)
            assert status["pcap"]["writing"] is False
            assert "BrokenPipeError" in status["pcap"]["stopped"]
    finally:
        proc.terminate()
        proc.wait(10)
    err.seek(0)
    log = err.read()
    assert log.count("pcap capture stopped") == 1, log
    assert "Traceback" not in log, log
    assert len(log.splitlines()) < 40, log
