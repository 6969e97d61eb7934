"""`vhostnet demo`: boot the bundled Linux guest on our backend and show, step by step, what
crosses its NIC. Exits 0 when every step passed, else 1 with the failed step and the last
console lines.

The steps: start the backend and its stack, boot the guest, bring eth0 up, get a DHCP lease
from us, ping us, resolve a name through us, talk UDP to our apps, download and upload over
HTTP, configure IPv6 from our router advertisement and use it, and reach a server on the
host's loopback through the gateway (NAT). Each step is a function of the `Demo` (backend, guest, app) that returns a short result
line; the runner prints it with its timing. Plain text, one line per step, so it reads the
same on a terminal and in a CI log.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apps.harness.vm import GuestImage, QemuVM, vhost_user_nic_args
from vhostuser.server import VhostUserServer

GUEST_MAC = "52:54:00:12:34:56"


@dataclass
class Demo:
    accel: str = "tcg"
    keep: bool = False
    pcap: str | None = None
    out: Callable[[str], None] = print
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vhostnet-demo-")))
    server: VhostUserServer | None = None
    app: object = None
    vm: QemuVM | None = None
    stack: object = None

    @property
    def socket_path(self) -> str:
        return str(self.workdir / "vhostnet.sock")

    # -- steps -------------------------------------------------------------------------
    def step_backend(self) -> str:
        from apps.serve import make_server

        self.server, self.stack, self.app = make_server(socket_path=self.socket_path,
                                                        pcap=self.pcap)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        c = self.stack.config
        extra = f"; capturing to {self.pcap}" if self.pcap else ""
        return f"listening on {self.socket_path}; stack {c.address}, DNS {c.dns_ip}{extra}"

    def step_guest(self) -> str:
        image = GuestImage.default()
        self.vm = QemuVM(image, nic_args=vhost_user_nic_args(self.socket_path, mac=GUEST_MAC),
                         accel=self.accel)
        self.vm.start()
        ms = self.vm.wait_ready(timeout=120)
        return f"Linux {image.kernel_version} up in {ms} ms ({self.accel})"

    def step_link(self) -> str:
        vm = self.vm
        vm.run_ok("ip link set eth0 up")
        deadline = time.monotonic() + 10
        while vm.run_ok("cat /sys/class/net/eth0/operstate").strip() != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("eth0 did not come up")
            time.sleep(0.2)
        drv = vm.run_ok("basename $(readlink /sys/class/net/eth0/device/driver)").strip()
        return f"eth0 up, driver {drv}, mac {vm.run_ok('cat /sys/class/net/eth0/address').strip()}"

    def step_dhcp(self) -> str:
        out = self.vm.run_ok("udhcpc -i eth0 -n -q -t 5 -T 2 2>&1", timeout=60)
        m = re.search(r"lease of (\S+) obtained from (\S+), lease time (\d+)", out)
        if not m:
            raise RuntimeError(f"no lease: {out.strip()}")
        route = self.vm.run_ok("ip route | grep default").strip()
        return f"udhcpc got {m.group(1)} from {m.group(2)} for {m.group(3)} s; {route}"

    def step_ping(self) -> str:
        out = self.vm.run_ok("ping -c 10 -i 0.2 -q 10.0.2.2", timeout=30)
        m = re.search(r"(\d+)% packet loss.*?= ([\d.]+)/([\d.]+)/([\d.]+)", out, re.S)
        if not m or m.group(1) != "0":
            raise RuntimeError(out.strip())
        return f"10 pings to 10.0.2.2, 0% loss, rtt min/avg/max {m.group(2)}/{m.group(3)}/" \
               f"{m.group(4)} ms"

    def step_dns(self) -> str:
        out = self.vm.run_ok("nslookup gateway.vhostnet")
        addr = out.split("gateway.vhostnet", 1)[1]
        m = re.search(r"Address:\s*(\S+)", addr)
        if not m or m.group(1) != "10.0.2.2":
            raise RuntimeError(out.strip())
        return "nslookup gateway.vhostnet -> 10.0.2.2 (from the DNS at 10.0.2.3)"

    def step_udp(self) -> str:
        out = self.vm.run_ok("echo -n hello | vhn-udp 10.0.2.2 5555").strip()
        if out != "response_hello":
            raise RuntimeError(f"udpserver answered {out!r}")
        t0 = time.monotonic()
        out = self.vm.run_ok("vhn-udp -q -n 500 -s 64 10.0.2.2 7", timeout=60).strip()
        dt = time.monotonic() - t0
        if out != "500/500 replies":
            raise RuntimeError(f"echo: {out}")
        return f"udpserver:5555 said 'response_hello'; 500 echoes on port 7 in {dt:.2f} s"

    def step_download(self) -> str:
        n = 20 << 20
        want = hashlib.sha256(bytes(range(256)) * (n // 256)).hexdigest()
        t0 = time.monotonic()
        out = self.vm.run_ok(f"wget -q -O - http://10.0.2.2/bytes/{n} | sha256sum", timeout=300)
        dt = time.monotonic() - t0
        if out.split()[0] != want:
            raise RuntimeError(f"hash {out.split()[0]} != {want}")
        return f"wget of 20 MiB from our HTTP server: SHA-256 ok, {n * 8 / dt / 1e6:.0f} Mbit/s " \
               f"(incl. sha256sum in the guest)"

    def step_upload(self) -> str:
        # busybox wget --post-file sends strlen() of the file: base64 text, no NUL bytes
        self.vm.run_ok("head -c 7500000 /dev/urandom | base64 > /tmp/up", timeout=120)
        size, digest = self.vm.run_ok("wc -c < /tmp/up; sha256sum /tmp/up").split()[:2]
        t0 = time.monotonic()
        out = self.vm.run_ok("wget -q --post-file=/tmp/up -O - http://10.0.2.2/sink",
                             timeout=300)
        dt = time.monotonic() - t0
        if out.split()[:2] != [size, digest]:
            raise RuntimeError(f"we got {out.strip()!r}, the guest sent {size} {digest}")
        return f"POST of {int(size) / 1e6:.1f} MB to /sink: length and SHA-256 ok, " \
               f"{int(size) * 8 / dt / 1e6:.0f} Mbit/s"

    def step_ipv6(self) -> str:
        """SLAAC from our router advertisement, then ping6 and a download over IPv6."""
        vm = self.vm
        deadline = time.monotonic() + 30
        addr = ""
        while time.monotonic() < deadline:
            out = vm.run_ok("ip -6 addr show dev eth0 scope global")
            m = re.search(r"inet6 (fd00:10:0:2:[0-9a-f:]+)/64", out)
            if m and "tentative" not in out:
                addr = m.group(1)
                break
            time.sleep(0.5)
        if not addr:
            raise RuntimeError(f"no SLAAC address in fd00:10:0:2::/64 after 30 s:\n{out}")
        out = vm.run_ok("ping6 -c 5 -i 0.2 -q fd00:10:0:2::2", timeout=30)
        m = re.search(r"(\d+)% packet loss.*?= ([\d.]+)/([\d.]+)/([\d.]+)", out, re.S)
        if not m or m.group(1) != "0":
            raise RuntimeError(out.strip())
        n = 4 << 20
        want = hashlib.sha256(bytes(range(256)) * (n // 256)).hexdigest()
        got = vm.run_ok(f"wget -q -O - http://[fd00:10:0:2::2]/bytes/{n} | sha256sum",
                        timeout=120).split()[0]
        if got != want:
            raise RuntimeError(f"hash {got} != {want}")
        return f"SLAAC {addr}; 5 ping6 to fd00:10:0:2::2, 0% loss, avg {m.group(3)} ms; " \
               f"4 MiB over IPv6, SHA-256 ok"

    def step_gateway(self) -> str:
        """A server on the host's loopback (HTTP, the same routes as ours), reached by the
        guest through 10.0.2.2 on its port: NAT through our gateway and a host socket."""
        from apps.bench.vm import HostPeers

        peers = HostPeers()
        try:
            n = 8 << 20
            want = hashlib.sha256(bytes(range(256)) * (n // 256)).hexdigest()
            t0 = time.monotonic()
            got = self.vm.run_ok(f"wget -q -O - http://10.0.2.2:{peers.http_port}/bytes/{n} "
                                 "| sha256sum", timeout=300).split()[0]
            dt = time.monotonic() - t0
            if got != want:
                raise RuntimeError(f"hash {got} != {want}")
            opened = self.stack.gateway.status()["counters"].get("tcp_opened", 0)
        finally:
            peers.close()
        return f"wget of 8 MiB from a server on the host's 127.0.0.1:{peers.http_port}, via " \
               f"10.0.2.2: SHA-256 ok, {n * 8 / dt / 1e6:.0f} Mbit/s; {opened} NAT flow(s)"

    STEPS = [
        ("start the backend and the stack", step_backend),
        ("boot the guest in QEMU", step_guest),
        ("guest's virtio_net brings eth0 up", step_link),
        ("guest gets a DHCP lease from us", step_dhcp),
        ("guest pings us", step_ping),
        ("guest resolves a name through us", step_dns),
        ("guest talks UDP to our apps", step_udp),
        ("guest downloads over HTTP (hash checked)", step_download),
        ("guest uploads over HTTP (hash checked)", step_upload),
        ("guest gets IPv6 from our RA, uses it", step_ipv6),
        ("guest reaches the host through the gateway", step_gateway),
    ]

    # -- runner ------------------------------------------------------------------------
    def run(self) -> int:
        total = len(self.STEPS)
        t_all = time.monotonic()
        try:
            for i, (title, fn) in enumerate(self.STEPS, 1):
                t0 = time.monotonic()
                try:
                    result = fn(self)
                except Exception as e:  # report the step, the error and the console
                    self.out(f"[{i}/{total}] {title:.<44} FAILED ({time.monotonic() - t0:.2f} s)")
                    self.out(f"      {type(e).__name__}: {e}")
                    if self.vm is not None:
                        self.out("      last console lines:\n" + _indent(self.vm.tail(15)))
                    return 1
                self.out(f"[{i}/{total}] {title:.<44} ok ({time.monotonic() - t0:.2f} s)")
                self.out(f"      {result}")
            self.out(f"demo passed in {time.monotonic() - t_all:.1f} s")
            if self.keep and self.vm is not None:
                self.out("--keep: the VM keeps running; Ctrl-C ends it")
                try:
                    while self.vm.returncode is None:
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    pass
            return 0
        finally:
            self.close()

    def close(self) -> None:
        if self.vm is not None:
            self.vm.stop()
        if self.stack is not None:
            self.stack.stop()
        if self.server is not None:
            self.server.stop()
            time.sleep(0.05)
            self.server.close()
        if self.app is not None and self.app.pcap is not None:
            self.app.pcap.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class NetbootDemo(Demo):
    """`vhostnet demo --netboot`: the guest boots from us, with no -kernel on QEMU's line.
    QEMU's NIC ROM (iPXE) leases, fetches our script, the kernel and the initrd over HTTP,
    and Linux comes up and leases again. Each step waits for what the capture hook sees
    cross the NIC (iPXE's requests), the DHCP server's counters, or the console."""

    events: dict[str, float] = field(default_factory=dict)  # what, when it was seen first
    t_boot: float = 0.0

    def _watch(self, direction: str, frame) -> None:
        if direction != "guest-tx" or len(frame) < 60:
            return
        data = bytes(frame)
        i = data.find(b"GET /boot/")
        if i >= 0:
            name = data[i + 10:data.find(b" ", i + 10)].decode(errors="replace")
            self.events.setdefault(name, time.monotonic())

    def _wait(self, what: Callable[[], object], timeout: float, why: str):
        deadline = time.monotonic() + timeout
        while not (value := what()):
            if time.monotonic() > deadline:
                raise RuntimeError(why)
            if self.vm is not None and self.vm.returncode is not None:
                raise RuntimeError(f"QEMU exited ({self.vm.returncode})")
            time.sleep(0.02)
        return value

    def step_backend(self) -> str:
        from apps.serve import make_server
        from apps.servers.boot import BootConfig
        from apps.stack import StackConfig

        image = GuestImage.default()
        self.image = image
        boot = BootConfig(kernel=str(image.kernel), initrd=str(image.initrd),
                          append=QemuVM(image).kernel_append())
        self.server, self.stack, self.app = make_server(
            socket_path=self.socket_path, pcap=self.pcap, stack_config=StackConfig(boot=boot))
        self.app.add_frame_hook(self._watch)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        mib = {n: f.stat().st_size / 2**20 for n, f in (("kernel", image.kernel),
                                                        ("initrd", image.initrd))}
        extra = f"; capturing to {self.pcap}" if self.pcap else ""
        return (f"serving the kernel ({mib['kernel']:.1f} MiB), initrd ({mib['initrd']:.1f} "
                f"MiB) and an iPXE script at {self.stack.config.boot_base_url}{extra}")

    def step_rom(self) -> str:
        self.vm = QemuVM(self.image, netboot=True, accel=self.accel,
                         nic_args=vhost_user_nic_args(self.socket_path, mac=GUEST_MAC))
        self.t_boot = time.monotonic()
        self.vm.start()
        dhcp = self.stack.dhcp
        self._wait(lambda: dhcp.stats.acks, 60, "iPXE got no DHCP lease in 60 s")
        (lease,) = dhcp.leases()
        return f"QEMU -boot n; iPXE leased {lease.address}, told {dhcp.config.ipxe_boot_file}"

    def step_script(self) -> str:
        self._wait(lambda: "boot.ipxe" in self.events, 30, "iPXE did not fetch the script")
        return "GET /boot/boot.ipxe (kernel, initrd and command line; relative URLs)"

    def step_kernel(self) -> str:
        self._wait(lambda: "initrd" in self.events, 120, "the kernel download did not end")
        dt = self.events["initrd"] - self.events.get("kernel", self.events["boot.ipxe"])
        size = self.image.kernel.stat().st_size
        return f"GET /boot/kernel: {size / 2**20:.1f} MiB in {dt:.1f} s " \
               f"({size * 8 / dt / 1e6:.0f} Mbit/s into iPXE)"

    def step_userspace(self) -> str:
        ms = self.vm.wait_ready(timeout=180)
        return f"GET /boot/initrd, then Linux {self.image.kernel_version} in userspace " \
               f"({ms} ms after the kernel started; {time.monotonic() - self.t_boot:.1f} s " \
               "from QEMU's start)"

    STEPS = [
        ("start the backend with the boot files", step_backend),
        ("NIC's ROM (iPXE) leases from us", step_rom),
        ("iPXE fetches our script", step_script),
        ("iPXE fetches the kernel over HTTP", step_kernel),
        ("the initrd, then Linux reaches userspace", step_userspace),
        ("guest's virtio_net brings eth0 up", Demo.step_link),
        ("guest leases again, from its own udhcpc", Demo.step_dhcp),
        ("guest pings us", Demo.step_ping),
    ]


def _indent(text: str) -> str:
    return "\n".join("        " + line for line in text.splitlines())


def main(accel: str = "tcg", keep: bool = False, pcap: str | None = None,
         netboot: bool = False) -> int:
    cls = NetbootDemo if netboot else Demo
    return cls(accel=accel, keep=keep, pcap=pcap, out=lambda s: print(s, flush=True)).run()


if __name__ == "__main__":
    sys.exit(main())
