"""Network boot end to end: QEMU started with `-boot n` and no `-kernel`, its NIC's own ROM
(Debian's ipxe-qemu: iPXE, a virtio driver we did not write) gets a lease from us, fetches
what we serve and boots the bundled guest to userspace, which then leases again.

The capture (our --pcap, read by scapy) shows each step: DHCP with iPXE's user class and
our boot file, then HTTP (or TFTP) for the script, the kernel and the initrd."""

from __future__ import annotations

import time

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import TCP, UDP
from scapy.utils import rdpcap

from apps.harness.vm import GuestImage, QemuVM, vhost_user_nic_args
from apps.servers.boot import BootConfig
from apps.stack import StackConfig
from tests.e2e.conftest import GUEST_MAC, Served

pytestmark = pytest.mark.qemu


def dhcp_options(pkt) -> dict:
    return {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple) and len(o) == 2}


def http_requests(frames) -> list[str]:
    """The request lines the guest sent over HTTP, in order."""
    lines = []
    for p in frames:
        if TCP in p and p[TCP].dport == 80:
            data = bytes(p[TCP].payload)
            if data.startswith(b"GET "):
                lines.append(data.split(b"\r\n", 1)[0].decode())
    return lines


def boot(tmp_path, boot_config: BootConfig, image: GuestImage, timeout: float = 180):
    """Serve `boot_config`, start a VM with -boot n, wait for the guest's ready marker;
    (served, vm, seconds to ready)."""
    served = Served(str(tmp_path / "vhost.sock"), StackConfig(boot=boot_config),
                    pcap=str(tmp_path / "boot.pcap"))
    vm = QemuVM(image, netboot=True,
                nic_args=vhost_user_nic_args(served.server.socket_path, mac=GUEST_MAC))
    try:
        t0 = time.monotonic()
        vm.start()
        vm.wait_ready(timeout=timeout)
        return served, vm, time.monotonic() - t0
    except BaseException:
        vm.stop()
        served.stop()
        raise


def test_ipxe_boots_the_kernel_and_initrd_we_serve_over_http(tmp_path, capsys) -> None:
    image = GuestImage.default()
    probe = QemuVM(image)
    config = BootConfig(kernel=str(image.kernel), initrd=str(image.initrd),
                        append=probe.kernel_append())
    served, vm, seconds = boot(tmp_path, config, image)
    try:
        # userspace is up and leases again from us; the link works both ways
        vm.run_ok("ip link set eth0 up")
        out = vm.run_ok("udhcpc -i eth0 -n -q -t 5 -T 2 2>&1", timeout=60)
        assert "10.0.2.15" in out, out
        assert "bytes from 10.0.2.2" in vm.run_ok("ping -c 1 -W 5 10.0.2.2", timeout=20)
    finally:
        vm.stop()
        served.stop()
    frames = rdpcap(str(tmp_path / "boot.pcap"))
    # iPXE's DHCP: its user class, our answer naming the script, from us as next server
    ipxe = [p for p in frames if BOOTP in p and p[BOOTP].op == 1
            and dhcp_options(p).get("user_class") == b"iPXE"]
    assert ipxe, "no DHCP request from iPXE in the capture"
    answers = [p for p in frames if BOOTP in p and p[BOOTP].op == 2
               and p[BOOTP].xid == ipxe[0][BOOTP].xid]
    assert answers and all(dhcp_options(p)["boot-file-name"]
                           == b"http://10.0.2.2/boot/boot.ipxe" for p in answers)
    assert answers[0][BOOTP].siaddr == "10.0.2.2"
    # then the script, the kernel and the initrd over HTTP, each answered 200
    assert http_requests(frames)[:3] == ["GET /boot/boot.ipxe HTTP/1.1",
                                         "GET /boot/kernel HTTP/1.1",
                                         "GET /boot/initrd HTTP/1.1"]
    oks = [p for p in frames if TCP in p and p[TCP].sport == 80
           and bytes(p[TCP].payload).startswith(b"HTTP/1.1 200")]
    assert len(oks) >= 3
    # and the booted guest's own udhcpc (no user class) got its lease
    assert any(BOOTP in p and p[BOOTP].op == 1 and UDP in p
               and "user_class" not in dhcp_options(p) for p in frames)
    with capsys.disabled():
        print(f"\n  netboot over HTTP: -boot n to the guest's userspace in {seconds:.1f} s")


def test_ipxe_boots_over_ipv6_alone(tmp_path, capsys) -> None:
    """No DHCPv4 (--no-dhcp): iPXE configures itself by SLAAC, its DHCPv6
    Information-request asks for the boot file URL (RFC 5970), and it boots over HTTP to
    our IPv6 address once its DHCPv4 attempts give up."""
    from scapy.layers.dhcp6 import DHCP6_Reply, DHCP6OptBootFileUrl
    from scapy.layers.inet6 import IPv6

    image = GuestImage.default()
    config = BootConfig(kernel=str(image.kernel), initrd=str(image.initrd),
                        append=QemuVM(image).kernel_append())
    served = Served(str(tmp_path / "vhost.sock"), StackConfig(dhcp=False, boot=config),
                    pcap=str(tmp_path / "boot.pcap"))
    vm = QemuVM(image, netboot=True,
                nic_args=vhost_user_nic_args(served.server.socket_path, mac=GUEST_MAC))
    try:
        t0 = time.monotonic()
        vm.start()
        vm.wait_ready(timeout=180)
        seconds = time.monotonic() - t0
    finally:
        vm.stop()
        served.stop()
    frames = rdpcap(str(tmp_path / "boot.pcap"))
    urls = [p[DHCP6OptBootFileUrl].optdata for p in frames
            if DHCP6_Reply in p and DHCP6OptBootFileUrl in p]
    assert urls and urls[0] == b"http://[fd00:10:0:2::2]/boot/boot.ipxe"
    gets = [p for p in frames if TCP in p and p[TCP].dport == 80
            and bytes(p[TCP].payload).startswith(b"GET /boot/")]
    assert len(gets) >= 3 and all(IPv6 in p for p in gets)
    assert not any(BOOTP in p and p[BOOTP].op == 2 for p in frames)  # no DHCPv4 answer
    with capsys.disabled():
        print(f"\n  netboot over IPv6 alone: -boot n to userspace in {seconds:.1f} s "
              "(iPXE's DHCPv4 gives up after ~15 s)")


def build_multiboot(tmp_path):
    """tests/data/multiboot/hello.S assembled and linked (binutils), or a skip."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) are not installed")
    src = Path(__file__).parent.parent / "data" / "multiboot" / "hello.S"
    obj, elf = tmp_path / "hello.o", tmp_path / "hello.elf"
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True, timeout=60)
    subprocess.run(["ld", "-m", "elf_i386", "-N", "-Ttext=0x100000", "-o", str(elf), str(obj)],
                   check=True, timeout=60)
    return elf


def test_ipxe_boots_a_multiboot_elf_with_its_command_line(tmp_path) -> None:
    """A unikernel-style multiboot ELF as --boot-kernel: iPXE loads it from the same script
    and passes --boot-append; it prints its command line on the serial port and powers the
    machine off (QEMU's isa-debug-exit: status 33)."""
    elf = build_multiboot(tmp_path)
    served = Served(str(tmp_path / "vhost.sock"),
                    StackConfig(boot=BootConfig(kernel=str(elf), append="vhostnet=yes n=42")))
    vm = QemuVM(GuestImage.default(), netboot=True,
                nic_args=vhost_user_nic_args(served.server.socket_path, mac=GUEST_MAC),
                extra_args=["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    try:
        vm.start()
        vm.expect(rb"vhostnet-multiboot: hello, cmdline=\S*kernel vhostnet=yes n=42", timeout=120)
        assert vm.wait(timeout=30) == 33
    finally:
        vm.stop()
        served.stop()


def test_ipxe_boots_by_tftp_alone_and_the_guest_fetches_by_tftp(tmp_path, capsys) -> None:
    """The classic PXE layout, as -netdev user,tftp=DIR,bootfile=FILE: --tftp DIR
    --bootfile tftpboot.ipxe, a script whose relative names iPXE fetches by TFTP from us
    too. Then the booted guest's busybox tftp fetches the kernel again (SHA-256)."""
    import hashlib
    import shutil

    image = GuestImage.default()
    root = tmp_path / "tftp"
    root.mkdir()
    shutil.copy(image.kernel, root / "vmlinuz")
    shutil.copy(image.initrd, root / "initrd.img")
    append = QemuVM(image).kernel_append()
    (root / "tftpboot.ipxe").write_text(
        f"#!ipxe\nkernel vmlinuz initrd=initrd.img {append}\n"
        "initrd --name initrd.img initrd.img\nboot\n")
    served, vm, seconds = boot(tmp_path, BootConfig(tftp_dir=str(root),
                                                    bootfile="tftpboot.ipxe"), image,
                               timeout=300)
    try:
        vm.run_ok("ip link set eth0 up")
        vm.run_ok("udhcpc -i eth0 -n -q -t 5 -T 2 2>&1", timeout=60)
        t0 = time.monotonic()
        vm.run_ok("tftp -g -r vmlinuz -l /tmp/k -b 1468 10.0.2.2", timeout=120)
        fetch_s = time.monotonic() - t0
        got = vm.run_ok("sha256sum /tmp/k").split()[0]
        from apps.control import _boot_status

        with served.stack.runtime.lock:
            status = _boot_status(served.stack)
    finally:
        vm.stop()
        served.stop()
    tftp = status["tftp"]  # what `vhostnet status` shows: iPXE's three files, busybox's one
    assert status["bootfile"] == "tftpboot.ipxe" and tftp["sessions"] == 0
    assert tftp["sessions_completed"] == 4 and tftp["sessions_timed_out"] == 0
    data = (root / "vmlinuz").read_bytes()
    assert got == hashlib.sha256(data).hexdigest()
    frames = rdpcap(str(tmp_path / "boot.pcap"))
    rrqs = [bytes(p[UDP].payload)[2:].split(b"\0", 1)[0] for p in frames
            if UDP in p and p[UDP].dport == 69 and bytes(p[UDP].payload)[:2] == b"\0\1"]
    assert rrqs[:3] == [b"tftpboot.ipxe", b"vmlinuz", b"initrd.img"], rrqs
    assert not http_requests(frames)
    with capsys.disabled():
        print(f"\n  netboot over TFTP: -boot n to userspace in {seconds:.1f} s; busybox tftp "
              f"fetched {len(data) / 2**20:.1f} MiB in {fetch_s:.1f} s "
              f"({len(data) * 8 / fetch_s / 1e6:.0f} Mbit/s at blksize 1468)")
