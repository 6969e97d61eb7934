"""Multiqueue with QEMU and the Linux guest: `vhostnet serve --queues N` with QEMU's
`-netdev vhost-user,...,queues=N -device virtio-net-pci,...,mq=on` and two vCPUs.

QEMU runs one vhost device per queue pair over the one connection, and each sends its
memory table (ADD_MEM_REG per region with CONFIGURE_MEM_SLOTS): the backend refused the
second copy as an overlap, QEMU fell back to userspace virtio and the guest got no
lease. Here the guest must get its lease, download from both vCPUs at once (hashes
exact), and its frames must reach us on more than one TX queue — as `vhostnet status`
shows them. On QEMU 7.2 (Debian 12's, INTx: its MSI-X crashes under TCG) and QEMU 10
(Debian 13's from the root ci/install.sh makes, with MSI-X)."""

from __future__ import annotations

import pytest

from apps.harness.vm import QemuVM, qemu10, vhost_user_nic_args
from apps.stack import StackConfig
from tests.e2e.conftest import GUEST_MAC
from tests.e2e.test_guest_tcp import pattern_sha256
from vhostuser.backend import BackendConfig

pytestmark = pytest.mark.qemu

MiB = 1 << 20


QEMUS = {"7.2": ("qemu-system-x86_64", 0), "10": (None, None)}  # binary, vectors


@pytest.mark.parametrize("qemu", list(QEMUS))
@pytest.mark.parametrize("pairs", [2, 4])
def test_multiqueue_guest_uses_several_queue_pairs(tmp_path, guest_image, pairs, qemu):
    binary, vectors = QEMUS[qemu]
    if qemu == "10":
        binary = qemu10()
        if binary is None:
            pytest.skip("QEMU 10 is not installed: ci/install.sh makes its Debian 13 root "
                        "(debootstrap, bwrap)")
    import threading

    from apps.control import ControlClient
    from apps.serve import make_server

    path = str(tmp_path / "mq.sock")
    ctl = str(tmp_path / "mq.ctl")
    server, stack, app = make_server(stack_config=StackConfig(), socket_path=path,
                                     control=ctl,
                                     backend=BackendConfig(queue_pairs=pairs))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        nic = vhost_user_nic_args(path, mac=GUEST_MAC, queues=pairs, vectors=vectors)
        with QemuVM(guest_image, nic_args=nic, cpus=2, qemu=binary) as vm:
            vm.wait_ready(timeout=180)
            assert "falling back on userspace virtio" not in vm.qemu_stderr
            vm.run_ok("ip link set eth0 up")
            vm.run_ok("udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            # Linux turns on min(vCPUs, pairs) of them (ethtool -L would change it)
            queues = vm.run_ok("ls /sys/class/net/eth0/queues").split()
            assert {f"tx-{i}" for i in range(min(pairs, 2))} <= set(queues), queues
            # a download pinned to each vCPU: XPS sends each CPU's frames on its queue
            n = 4 * MiB
            out = vm.run_ok(
                f"(taskset -c 0 wget -q -O - http://10.0.2.2/bytes/{n} | sha256sum "
                f"> /tmp/a &); taskset -c 1 wget -q -O - http://10.0.2.2/bytes/{n} "
                f"| sha256sum; sleep 1; while ! [ -s /tmp/a ]; do sleep 1; done; "
                f"cat /tmp/a", timeout=600)
            sums = [line.split()[0] for line in out.splitlines() if line.strip()]
            assert sums == [pattern_sha256(n)] * 2, out
            with ControlClient(ctl) as c:
                status = c.request({"cmd": "status"})["status"]
            queues = status["device"]["queues"]
            busy = [q["index"] for q in queues if q["kind"] == "tx" and q["popped"]]
            assert len(busy) >= 2, queues
            assert not any(q["broken"] for q in queues)
    finally:
        stack.stop()
        server.stop()
        thread.join(5)
        server.close()
        if app.control is not None:
            app.control.close()
