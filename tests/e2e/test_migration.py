"""Live migration (TCG, the bundled Linux guest, QEMU 10): QEMU migrates a running guest
to a second QEMU on this host while the guest downloads from our HTTP app in a loop, each
QEMU attached to its own vhostnet backend.

Checked: QEMU negotiates logging with us and we mark pages; the destination's rings
resume where the source's stopped (this found that SET_STATUS 0, which QEMU 7.2 sends
before GET_VRING_BASE, made us answer base 0: the destination declared every ring
inconsistent); every download the guest finished before, during and after has the right
SHA-256 and length; downloads go on through the destination's backend; a fresh 1 MB
download is exact; no transmit timeout in the guest's kernel.

What this test cannot show on its own: that the log is needed. It passes with our marks
switched off, because QEMU marks the used rings dirty itself when it stops them, and the
frames in flight belong to the TCP connection that dies (the destination's backend is
another stack). Page by page, every write is shown logged in tests/vhostuser/
test_dirty_log.py. The stronger test — both QEMUs on one backend process, the connection
surviving — needs one process serving several sockets: not done yet.

QEMU 7.2 is left out: its TCG migration corrupted the guest's memory (a kernel oops in
list handling) in 1 of 12 migrations with no NIC at all.
"""

from __future__ import annotations

import socket
import time

import pytest

from apps.harness.vm import QemuVM, Qmp, qemu10, vhost_user_nic_args
from tests.e2e.conftest import GUEST_MAC, Served
from tests.e2e.test_guest_tcp import pattern_sha256

pytestmark = pytest.mark.qemu

SIZE = 2_000_000
LOOP = ("(while [ ! -e /tmp/stop ]; do timeout 30 wget -q -O /tmp/d "
        f"http://10.0.2.2/bytes/{SIZE} && echo $(sha256sum < /tmp/d | cut -c1-64)-"
        "$(wc -c < /tmp/d) >> /tmp/sums; done) "
        ">/dev/null 2>&1 &")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sums(vm: QemuVM) -> list[str]:
    return vm.run_ok("cat /tmp/sums 2>/dev/null; true", timeout=60).split()


def test_guest_migrates_between_backends_while_downloading(guest_image, tmp_path):
    binary, vectors = qemu10(), None
    if binary is None:
        pytest.skip("QEMU 10 is not installed: ci/install.sh makes its Debian 13 root")
    a, b = Served(str(tmp_path / "a.sock")), Served(str(tmp_path / "b.sock"))
    port = _free_port()
    src = dst = None
    try:
        src = QemuVM(guest_image, qemu=binary, nic_args=vhost_user_nic_args(
            a.server.socket_path, mac=GUEST_MAC, vectors=vectors),
            extra_args=["-qmp", f"unix:{tmp_path}/src.qmp,server=on,wait=off"]).start()
        src.wait_ready(timeout=120)
        src.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2 >/dev/null 2>&1",
                   timeout=60)
        dst = QemuVM(guest_image, qemu=binary, nic_args=vhost_user_nic_args(
            b.server.socket_path, mac=GUEST_MAC, vectors=vectors),
            extra_args=["-qmp", f"unix:{tmp_path}/dst.qmp,server=on,wait=off",
                        "-incoming", f"tcp:127.0.0.1:{port}"]).start()
        src.run_ok(LOOP)
        deadline = time.monotonic() + 60
        while len(_sums(src)) < 2:  # downloads under way and finishing
            assert time.monotonic() < deadline, "no download finished before migrating"
            time.sleep(1)
        before = len(_sums(src))

        # the destination listens once it answers on its monitor (a migration sent
        # before that fails with the connection refused)
        dq = Qmp(tmp_path / "dst.qmp", timeout=60)
        assert dq.execute("query-status")["status"] == "inmigrate"
        dq.close()
        qmp = Qmp(tmp_path / "src.qmp")
        qmp.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        t0 = time.monotonic()
        qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        dev = a.server.conn.backend
        logged = False
        while True:
            st = qmp.execute("query-migrate")
            logged = logged or dev.logging
            if st.get("status") in ("completed", "failed", "cancelled"):
                break
            assert time.monotonic() - t0 < 180, f"migration not done in 180 s: {st}"
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert st["status"] == "completed", st
        ram = st.get("ram", {})
        print(f"migrated in {took:.1f} s: {ram.get('transferred')} bytes, "
              f"{ram.get('dirty-sync-count')} dirty syncs, "
              f"{dev.dirty_log.marked if dev.dirty_log else 0} log marks")
        # QEMU told us to log and we did (the log was mapped and written)
        assert logged and dev.counters["log_starts"] >= 1
        assert dev.dirty_log is not None and dev.dirty_log.marked > 0
        assert dev.dirty_log.outside == 0
        qmp.close()
        src.kill()

        # the guest runs on: downloads go on through the destination's backend
        dst.run_ok(":", timeout=60)
        after = len(_sums(dst))
        assert after >= before
        deadline = time.monotonic() + 90
        while len(_sums(dst)) < after + 3:
            assert time.monotonic() < deadline, "downloads did not go on after migrating"
            time.sleep(2)
        dst.run_ok("touch /tmp/stop")
        sums = _sums(dst)
        want = f"{pattern_sha256(SIZE)}-{SIZE}"
        bad = [(i, s) for i, s in enumerate(sums) if s != want]
        assert sums and not bad, f"{len(sums)} downloads, {before} before migrating; bad: {bad}"
        out = dst.run_ok("wget -q -O - http://10.0.2.2/bytes/1000000 | sha256sum", timeout=120)
        assert out.split()[0] == pattern_sha256(1000000), out
        kernel = dst.run_ok("dmesg")
        assert "timed out" not in kernel and "NETDEV WATCHDOG" not in kernel, kernel[-3000:]
        be = b.server.conn.backend
        assert not any(q.broken for q in be.queues)
        assert not any(q.broken for q in dev.queues)
    finally:
        for vm in (src, dst):
            if vm is not None:
                vm.kill()
        a.stop()
        b.stop()
