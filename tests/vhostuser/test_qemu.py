"""The real thing: QEMU 7.2 (TCG) boots the bundled Linux guest with its virtio-net NIC served
by our back-end; the guest's own virtio_net driver moves frames both ways."""

from __future__ import annotations

import queue
import time

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from apps.harness.vm import GuestImage, QemuVM, vhost_user_nic_args
from tests.vhostuser.conftest import ServerThread

pytestmark = pytest.mark.qemu

GUEST_MAC = "52:54:00:12:34:56"
OUR_MAC = "52:55:0a:00:02:02"
GUEST_IP = "10.0.2.15"
OUR_IP = "10.0.2.2"


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return GuestImage.default()


def answer_arp(server: ServerThread, frames: list[bytes]) -> None:
    """Play the host at OUR_IP: answer the guest's ARP requests for it."""
    for raw in frames:
        pkt = Ether(raw)
        if ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == OUR_IP:
            reply = Ether(src=OUR_MAC, dst=pkt.src) / ARP(
                op=2, hwsrc=OUR_MAC, psrc=OUR_IP, hwdst=pkt.src, pdst=pkt[ARP].psrc)
            server.inject(bytes(reply))


def wait_frame(server: ServerThread, pred, timeout: float = 10.0) -> Ether:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            raw = server.app.frames.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(raw)
        answer_arp(server, [raw])
        pkt = Ether(raw)
        if pred(pkt):
            return pkt
    raise AssertionError(f"expected frame not seen; got {[Ether(f).summary() for f in seen]}")


def rx_packets(vm: QemuVM) -> int:
    return int(vm.run_ok("cat /sys/class/net/eth0/statistics/rx_packets"))


def operstate(vm: QemuVM, want: str = "up", timeout: float = 10.0) -> str:
    """The guest's view of eth0's link, waiting up to `timeout` for `want`."""
    deadline = time.monotonic() + timeout
    while True:
        state = vm.run_ok("cat /sys/class/net/eth0/operstate").strip()
        if state == want or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def guest_up(vm: QemuVM) -> None:
    vm.run_ok(f"ip link set eth0 up && ip addr add {GUEST_IP}/24 dev eth0")


def test_guest_nic_frames_both_ways_and_backend_restart(image, tmp_path):
    sock = str(tmp_path / "vhost.sock")
    server = ServerThread(sock)
    try:
        with QemuVM(image, nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=90)
            assert vm.run_ok("cat /sys/class/net/eth0/address").strip() == GUEST_MAC
            guest_up(vm)
            assert operstate(vm) == "up"
            # a frame from the guest arrives: its ARP request for a host on the segment
            vm.run("ping -c 1 -W 1 10.0.2.99")
            arp = wait_frame(server, lambda p: ARP in p and p[ARP].pdst == "10.0.2.99")
            assert arp.src == GUEST_MAC and arp[ARP].psrc == GUEST_IP
            # frames we inject are counted by the guest's driver
            before = rx_packets(vm)
            for i in range(10):
                server.inject(bytes(Ether(src=OUR_MAC, dst=GUEST_MAC, type=0x88B5)
                                    / (bytes([i]) * 100)))
            deadline = time.monotonic() + 10
            while rx_packets(vm) < before + 10 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert rx_packets(vm) >= before + 10
            # both ways at IP level: we ping the guest, its kernel answers
            server.inject(bytes(Ether(src=OUR_MAC, dst=GUEST_MAC) / IP(src=OUR_IP, dst=GUEST_IP)
                                / ICMP(id=7, seq=1) / b"vhostnet"))
            reply = wait_frame(server, lambda p: ICMP in p and p[ICMP].type == 0)
            assert reply[IP].src == GUEST_IP and reply[ICMP].id == 7
            assert bytes(reply[ICMP].payload) == b"vhostnet"

            # the backend goes away and comes back on the same socket: QEMU reconnects
            # (reconnect=1) and the guest's link carries traffic again, no guest action
            server.stop()
            server = ServerThread(sock)
            assert server.app.attached.wait(15), "QEMU did not reconnect"
            time.sleep(1.0)
            server.inject(bytes(Ether(src=OUR_MAC, dst=GUEST_MAC) / IP(src=OUR_IP, dst=GUEST_IP)
                                / ICMP(id=8, seq=2) / b"again"))
            reply = wait_frame(server, lambda p: ICMP in p and p[ICMP].type == 0, timeout=15)
            assert reply[ICMP].id == 8
            assert operstate(vm) == "up"
            # and the guest's own traffic flows out again
            vm.run("ping -c 1 -W 1 10.0.2.98")
            wait_frame(server, lambda p: ARP in p and p[ARP].pdst == "10.0.2.98")
    finally:
        server.stop()
