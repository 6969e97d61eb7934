"""Packed virtqueues with a Linux guest (`-device virtio-net-pci,...,packed=on`) on QEMU 7.2
(INTx) and QEMU 10 (MSI-X): the rings are negotiated packed, and a lease, ping, a 16 MiB
download and an 8 MiB upload (by SHA-256) go through them, the RX buffers filled by the C
batch path. DPDK's virtio-user with
packed_vq=1 is in tests/vhostuser/test_dpdk.py; the ring rules in test_packed.py there."""

from __future__ import annotations

import pytest

from apps.harness.vm import GuestImage, QemuVM, qemu10, vhost_user_nic_args
from tests.e2e.conftest import GUEST_MAC, Served
from tests.e2e.test_guest_tcp import pattern_sha256
from vhostuser.features import Feature
from vhostuser.packed import PackedVirtqueue

pytestmark = pytest.mark.qemu

MiB = 1 << 20


@pytest.mark.parametrize("qemu", ["7.2", "10"])
def test_linux_guest_on_packed_rings(tmp_path, qemu):
    binary, vectors = "qemu-system-x86_64", 0
    if qemu == "10":
        binary, vectors = qemu10(), None
        if binary is None:
            pytest.skip("QEMU 10 is not installed: ci/install.sh makes its Debian 13 root "
                        "(debootstrap, bwrap)")
    served = Served(str(tmp_path / "vhost.sock"))
    try:
        nic = vhost_user_nic_args(served.server.socket_path, mac=GUEST_MAC, vectors=vectors,
                                  extra_device_opts="packed=on")
        with QemuVM(GuestImage.default(), nic_args=nic, qemu=binary) as vm:
            vm.wait_ready(timeout=180)
            out = vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2 2>&1",
                            timeout=60)
            assert "10.0.2.15" in out, out
            be = served.server.conn.backend
            assert be.acked_features >> Feature.F_RING_PACKED & 1
            assert all(isinstance(q, PackedVirtqueue) for q in be.queues)
            assert " 0% packet loss" in vm.run_ok("ping -c 3 -W 5 10.0.2.2", timeout=60)
            n = 16 * MiB
            out = vm.run_ok(f"wget -q -O - http://10.0.2.2/bytes/{n} | sha256sum", timeout=180)
            assert out.split()[0] == pattern_sha256(n), out
            m = 8 * MiB
            digest = vm.run_ok(f"head -c {m + m // 64} /dev/urandom | tr -d '\\000' | "
                               f"head -c {m} > /tmp/up && sha256sum /tmp/up",
                               timeout=120).split()[0]
            out = vm.run_ok("wget -q --post-file=/tmp/up -O - http://10.0.2.2/sink",
                            timeout=180)
            assert out.split() == [str(m), digest], out
            assert not any(q.broken or q.stats.errors for q in be.queues)
            # the RX buffers were filled by the C batch helpers (vu_rx_batch), not only
            # frame by frame (the stack takes guest frames one at a time: TX is per frame)
            rx = be.queues[0].stats
            assert rx.batched > rx.popped // 2, (rx.batched, rx.popped)
            assert not be.net.drops["ring_error"]
    finally:
        served.stop()
