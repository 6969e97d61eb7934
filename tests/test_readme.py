"""The README's snippets run, so none can drift again (the Python API one failed as
written with a NameError and left a stale socket file): each ```python block runs for
real against the bundled guest, and the QEMU line it tells users to paste is the one
`vhostnet serve` prints."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.harness.vm import QemuVM, vhost_user_nic_args

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_the_readme_has_the_snippets_these_tests_run():
    assert len(blocks("python")) == 2
    assert any("make_server" in b for b in blocks("python"))
    assert any("def test_" in b for b in blocks("python"))


def test_the_qemu_line_is_the_one_serve_prints(tmp_path):
    """The README's QEMU command has the options `vhostnet serve` prints to paste."""
    readme_qemu = next(b for b in blocks("sh") if "qemu-system-x86_64" in b)
    sock = tmp_path / "v.sock"
    p = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--socket-path",
                          str(sock), "--no-control"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    out = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            out.append(line)
            if line.startswith("The stack:"):
                break
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    printed = "".join(out).replace(str(sock), "/tmp/vhostnet.sock")

    def options(text: str) -> set[str]:
        return set(re.findall(r"-(?:object|machine|chardev|netdev|device) (\S+)", text))

    assert options(printed) and options(printed) <= options(readme_qemu), (printed,
                                                                           readme_qemu)


@pytest.mark.qemu
def test_the_python_api_snippet_serves_the_guest(tmp_path, guest_image_for_readme):
    snippet = next(b for b in blocks("python") if "make_server" in b)
    sock = tmp_path / "vhostnet.sock"
    script = tmp_path / "snippet.py"
    script.write_text(snippet.replace("/tmp/vhostnet.sock", str(sock)))
    (tmp_path / "hello.txt").write_text("served by the README's snippet\n")
    p = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() < deadline, "the snippet made no socket"
            time.sleep(0.1)
        with QemuVM(guest_image_for_readme, nic_args=vhost_user_nic_args(sock)) as vm:
            vm.wait_ready(timeout=120)
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            out = vm.run_ok("wget -q -O - http://10.0.2.2:8000/hello.txt")
            assert out.strip() == "served by the README's snippet"
    finally:
        p.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = p.communicate(timeout=15)
    assert "Error" not in err.replace("KeyboardInterrupt", ""), err
    assert not sock.exists(), "the snippet left its socket file behind"


@pytest.mark.qemu
def test_the_pytest_plugin_snippet_passes(tmp_path):
    """The README's pytest example, as a user's test file, run by pytest with the
    plugin installing vhostnet registered."""
    snippet = next(b for b in blocks("python") if "def test_" in b)
    (tmp_path / "test_readme_example.py").write_text(snippet)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(tmp_path / "test_readme_example.py")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 passed" in p.stdout, p.stdout


@pytest.fixture(scope="module")
def guest_image_for_readme():
    from apps.harness.vm import GuestImage

    return GuestImage.default()
