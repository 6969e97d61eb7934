"""Network-boot options: the checks' one-line errors, the iPXE script, the HTTP /boot/
route, and `vhostnet serve`'s flags. The real boot (QEMU's iPXE) is tests/e2e/test_netboot.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from apps.servers.boot import BootConfig, ipxe_script, summary
from apps.servers.http import Request, route
from apps.stack import StackConfig, build_stack

BASE = "http://10.0.2.2/boot/"


def test_checks_say_what_is_wrong(tmp_path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 1000)
    BootConfig(kernel=str(kernel)).check()
    for cfg, words in (
        (BootConfig(tftp_dir=str(tmp_path / "none")), "--tftp"),
        (BootConfig(kernel=str(tmp_path / "none")), "--boot-kernel"),
        (BootConfig(initrd=str(kernel)), "need --boot-kernel"),
        (BootConfig(kernel=str(kernel), initrd=str(tmp_path)), "--boot-initrd"),
        (BootConfig(bootfile="x" * 256), "--bootfile"),
        (BootConfig(kernel=str(kernel), append="a\nb"), "--boot-append"),
    ):
        with pytest.raises(ValueError, match=words):
            cfg.check()
    with pytest.raises(ValueError, match="--no-dhcp"):
        StackConfig(dhcp=False, ipv6=False, boot=BootConfig(kernel=str(kernel))).check()
    StackConfig(dhcp=False, boot=BootConfig(kernel=str(kernel))).check()  # DHCPv6 names it


def test_the_script_fetches_kernel_and_initrd_and_boots() -> None:
    script = ipxe_script(initrd=True, append="console=ttyS0 quiet").decode()
    lines = script.splitlines()
    assert lines[0] == "#!ipxe" and lines[-1] == "boot"
    # relative URLs: resolved against the script's own (HTTP, IPv6, TFTP alike)
    assert "kernel kernel initrd=initrd console=ttyS0 quiet" in lines
    assert "initrd --name initrd initrd" in lines
    bare = ipxe_script(initrd=False).decode()
    assert "kernel kernel" in bare.splitlines() and "initrd" not in bare


def get(files, path: str, method: str = "GET"):
    request = Request(method, path, "1.1", {"host": "10.0.2.2"})
    response = route(request, iter(()), files)
    return response.status, b"".join(response.body), response.length


def test_http_serves_the_boot_files_whole(tmp_path) -> None:
    kernel = tmp_path / "k"
    data = bytes(range(256)) * 5000  # several read chunks
    kernel.write_bytes(data)
    files = BootConfig(kernel=str(kernel), append="x=1").boot_files(BASE)
    status, body, length = get(files, "/boot/kernel")
    assert status == 200 and length == len(data)
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    status, body, _ = get(files, "/boot/boot.ipxe")
    assert status == 200 and body.startswith(b"#!ipxe") and b"x=1" in body
    assert get(files, "/boot/initrd")[0] == 404  # none given
    assert get(files, "/boot/../k")[0] == 404  # only the names we made
    assert get(files, "/boot/kernel", "POST")[0] == 405
    assert get(None, "/boot/kernel")[0] == 404  # no boot files: the route is not there
    kernel.unlink()
    assert get(files, "/boot/kernel")[0] == 500  # gone since: an error, not a crash


def test_the_stack_names_the_script_to_ipxe(tmp_path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    st = build_stack(StackConfig(boot=BootConfig(kernel=str(kernel), bootfile="undionly.kpxe")),
                     gateway_thread=False)
    try:
        assert st.dhcp.config.ipxe_boot_file == BASE + "boot.ipxe"
        assert st.dhcp.config.boot_file == "undionly.kpxe"
        assert set(st.boot_files) == {"boot.ipxe", "kernel"}
        line = summary(st.config.boot, "10.0.2.2")
        assert "iPXE boots" in line and "undionly.kpxe to PXE ROMs" in line and "-boot n" in line
        assert "(http://10.0.2.2/boot/boot.ipxe)" in line
        tftp = summary(BootConfig(tftp_dir="/srv"), "10.0.2.2", "fd00:10:0:2::2")
        assert "TFTP serves /srv on 10.0.2.2:69 and [fd00:10:0:2::2]:69" in tftp
    finally:
        st.stop()


@pytest.mark.parametrize("argv, words", [
    (["--boot-kernel", "/nonexistent/vmlinuz"], "--boot-kernel /nonexistent/vmlinuz: no such"),
    (["--boot-initrd", "/etc/hostname"], "need --boot-kernel"),
    (["--tftp", "/nonexistent"], "--tftp /nonexistent: not a directory"),
])
def test_serve_refuses_bad_boot_flags_in_one_line(tmp_path, argv, words) -> None:
    out = subprocess.run([sys.executable, "-m", "apps.cli", "serve", "--socket-path",
                          str(tmp_path / "s"), *argv], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert words in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
