"""apps.harness.vm: the QEMU harness boots the bundled guest and drives its console (no NIC)."""

from __future__ import annotations

import gzip
import os
import shutil
import time

import pytest

from apps.harness.vm import GuestError, GuestImage, QemuVM, newc_archive, vhost_user_nic_args

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed"
)
TEST_SCRIPT = '#!/bin/sh\necho "extra-ok $*"\n'


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return GuestImage.default()


@pytest.fixture(scope="module")
def vm(image, request):
    t0 = time.monotonic()
    with QemuVM(image.with_files({"/etc/vhostnet/test.sh": TEST_SCRIPT})) as vm:
        vm.wait_ready(timeout=60)
        capman = request.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled():
            print(f"\nguest boot: {vm.boot_ms} ms guest uptime at the ready marker, "
                  f"{time.monotonic() - t0:.2f} s wall to first command (qemu pid {vm.pid})")  # fmt: skip
        yield vm
    assert vm.returncode is not None


@pytest.mark.qemu
@needs_qemu
def test_kernel_matches_manifest(vm, image):
    assert image.kernel_version
    assert vm.run_ok("uname -r").strip() == image.kernel_version


@pytest.mark.qemu
@needs_qemu
def test_exit_status(vm):
    assert vm.run("false").rc == 1
    assert vm.run("true").rc == 0
    assert vm.run("(exit 5)").rc == 5
    with pytest.raises(GuestError, match="exited 1"):
        vm.run_ok("false")


@pytest.mark.qemu
@needs_qemu
def test_long_output_comes_back_whole(vm):
    res = vm.run("seq 1 2000")
    assert res.rc == 0
    assert res.output.splitlines() == [str(i) for i in range(1, 2001)]


@pytest.mark.qemu
@needs_qemu
def test_long_command_and_state(vm):
    arg = "x" * 10000  # longer than the tty's 4095-byte line
    assert vm.run_ok(f"echo {arg} | wc -c").strip() == "10001"
    vm.run_ok("cd /tmp && VHN_VAR=kept")
    assert vm.run_ok('echo "$(pwd) $VHN_VAR"').strip() == "/tmp kept"
    assert vm.run("echo 'unterminated").rc == 2  # syntax error, shell carries on
    assert vm.run_ok("echo after").strip() == "after"


@pytest.mark.qemu
@needs_qemu
def test_virtio_net_driver_loaded(vm):
    assert vm.run("ls /sys/module/virtio_net").rc == 0
    assert "modules loaded:" in vm.console_log
    assert "eth0" not in vm.run_ok("ip -o link")  # -nic none


@pytest.mark.qemu
@needs_qemu
def test_extra_file_present_and_executable(vm):
    assert vm.run("test -x /etc/vhostnet/test.sh").rc == 0
    assert vm.run_ok("/etc/vhostnet/test.sh a b").strip() == "extra-ok a b"


@pytest.mark.qemu
@needs_qemu
def test_timeout_raises_with_console_lines_and_shell_survives(vm):
    with pytest.raises(GuestError) as err:
        vm.run("echo before-sleep; sleep 20", timeout=1)
    assert "timed out" in str(err.value)
    assert "before-sleep" in str(err.value)  # the last console lines
    assert vm.run_ok("echo alive").strip() == "alive"


@pytest.mark.qemu
@needs_qemu
def test_exit_respawns_shell(vm):
    assert vm.run("exit 3").rc == 3
    assert vm.run_ok("echo respawned").strip() == "respawned"


@pytest.mark.qemu
@needs_qemu
def test_run_mode_powers_off(image):
    extra = {"/etc/vhostnet/run.sh": "#!/bin/sh\necho run-mode-ok\nexit 4\n"}
    vm = QemuVM(image.with_files(extra), append_extra="vhostnet.run=/etc/vhostnet/run.sh")
    with vm:
        vm.wait_ready()
        assert vm.wait(timeout=30) == 0
        assert "run-mode-ok" in vm.console_log
        assert "/etc/vhostnet/run.sh exited 4" in vm.console_log
    with pytest.raises(ProcessLookupError):
        os.kill(vm.pid, 0)


def test_a_changed_guest_source_means_a_rebuild():
    """GuestImage.default() rebuilds the image when ci/guest/ changed: it finds build.py
    from the checkout (after apps/vm.py moved to apps/harness/ it looked in apps/ci/, found
    nothing, and kept a stale image forever: a new guest tool never reached the guest)."""
    import apps.harness.vm as harness

    assert harness.BUILD_SCRIPT.is_file(), harness.BUILD_SCRIPT
    want = harness._source_hash()
    assert want is not None and len(want) == 16
    assert (harness.REPO_ROOT / "ci" / "guest" / "tools" / "vhn-tftp.c").is_file()


def test_nic_args():
    args = vhost_user_nic_args("/tmp/s.sock")
    assert args[:2] == ["-chardev", "socket,id=c_n0,path=/tmp/s.sock,reconnect=1"]
    assert args[3] == "vhost-user,id=n0,chardev=c_n0"
    assert args[5] == "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:12:34:56"
    mq = vhost_user_nic_args("/s", server=True, queues=2, id="n1", extra_device_opts="mtu=9000")
    assert mq[1].endswith(",server=on,wait=off")
    assert mq[3].endswith(",queues=2")
    assert "vectors=0" in mq[5] and "mq=on" in mq[5] and mq[5].endswith(",mtu=9000")


def test_newc_archive_layout():
    arc = newc_archive({"/etc/vhostnet/a.sh": "#!/bin/sh\n", "b": (b"\x00\x01", 0o600)})
    assert len(arc) % 512 == 0
    names, pos = [], 0
    while True:
        assert arc[pos : pos + 6] == b"070701"
        mode, size, namesize = (
            int(arc[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in (1, 6, 11)
        )
        name = arc[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            break
        names.append((name, oct(mode), arc[pos : pos + size]))
        pos += size + (-(pos + size) % 4)
    assert names == [
        ("etc", "0o40755", b""),
        ("etc/vhostnet", "0o40755", b""),
        ("etc/vhostnet/a.sh", "0o100755", b"#!/bin/sh\n"),
        ("b", "0o100600", b"\x00\x01"),
    ]


@pytest.mark.qemu
def test_extra_initrd_is_base_plus_gzip_member(image, tmp_path):
    out = image.with_files({"/x": "y"}).write_initrd(tmp_path / "initrd")
    base = image.initrd.read_bytes()
    data = out.read_bytes()
    assert data.startswith(base)
    tail = data[len(base) :].lstrip(b"\0")
    assert gzip.decompress(tail).startswith(b"070701")
