"""`vhostnet bench vm`: one TCG Linux guest, one workload, several network backends.

The backends, each behind the same virtio-net-pci NIC of the same guest (apps/harness/vm.py):

ours  — `vhostnet serve` in its own process, a vhost-user NIC; the guest talks to our stack
        at 10.0.2.2 (HTTP on 80, UDP echo on 7).
gateway — `vhostnet serve` as for ours, but the guest reaches the same host-side peers as
        slirp's (127.0.0.1, through 10.0.2.2 on their ports): every byte crosses our
        gateway's NAT and a host socket, as with slirp and passt.
slirp — QEMU's `-netdev user` (libslirp); the guest reaches the host's loopback through
        10.0.2.2, where this process runs the same HTTP routes (`/bytes/N`, `POST /sink`,
        from apps/servers/http.py) on a ThreadingHTTPServer and a UDP echo, both on 127.0.0.1.
tap   — `-netdev tap,script=no,downscript=no` into a network namespace this benchmark
        creates and removes: the Linux kernel at 10.0.2.2, the same peers run inside it
        (root and `ip` needed; the guest gets 10.0.2.15/24 by hand).
passt-vu — passt's vhost-user mode (`passt --vhost-user`, Debian 13's, from the root
        ci/install.sh makes, run through bwrap), set up as for passt; it needs QEMU 10
        (`--qemu 10`, which then runs every backend's guest for a fair comparison).
passt — passt (https://passt.top) behind `-netdev stream` on its unix socket, when the
        `passt` binary is installed (otherwise skipped with a note). passt runs in a network
        namespace of ours with the same peers: a veth pair there is its template interface
        (10.0.2.15/24, default route via 10.0.2.2, which the other end holds), so its DHCP
        gives the guest 10.0.2.15 and the gateway 10.0.2.2, which passt maps to the
        namespace's loopback (TCP/UDP) — the host side. The namespace's
        net.ipv4.ping_group_range lets passt's ping sockets carry the guest's echo requests
        (root and `ip` needed). passt's own defaults otherwise, e.g. its 65520-byte MTU.

The workload, timed inside the guest (the kernel's monotonic clock, read from
/proc/timer_list: busybox `date` has no %N; the cost of two reads is measured and taken off):
TCP download (`wget -O /dev/null .../bytes/N`), TCP upload (`wget --post-file` of a file in
tmpfs to `/sink`), ping RTT (`ping -c 20 -i 0.2`, the average) and UDP 64-byte
request/response rate (`vhn-udp -q -n N -s 64`, one datagram in flight) and HTTP
requests/s (a shell loop of N `wget -q -O /dev/null .../bytes/64`, a new TCP connection
each; every request also spawns a busybox wget in the TCG guest, a cost the same for every
backend, so the rate is a lower bound that understates the differences), and ping through
the backend's NAT (the same ping to 198.51.100.2, a namespace this benchmark creates behind
a veth from the backend's host side — ours for vhostnet and slirp, passt's namespace for
passt — and removes; root only, "-" otherwise and for tap, which has no NAT). Throughput is
measured with busybox wget, never `dd | nc` (that measures nc). Results are a table of
backend × metric with ratios to slirp, and JSON.

Call order: `bench_vm(...)` returns a `VmBench`; `print_vm(result)` prints it;
`dataclasses.asdict(result)` is its JSON.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from apps.harness.vm import GuestError, QemuVM, vhost_user_nic_args
from apps.servers.http import CHUNK, pattern_chunks, sink

BACKENDS = ("ours", "gateway", "slirp", "tap", "passt", "passt-vu")
# the QEMU every backend's guest runs on: None, the system's (Debian 12's 7.2, NICs on INTx);
# set by bench_vm(qemu="10") to Debian 13's QEMU 10 (apps.harness.vm.qemu10; MSI-X)
_QEMU: str | None = None
GUEST_MEMORY_MB = 512  # the upload file lives in the guest's tmpfs
# the metrics, in table order: (key, column title, format, higher is better)
METRICS = (
    ("download_mbit_s", "down Mbit/s", "{:.1f}", True),
    ("upload_mbit_s", "up Mbit/s", "{:.1f}", True),
    ("ping_avg_ms", "ping ms", "{:.3f}", False),
    ("http_req_per_s", "HTTP req/s", "{:.1f}", True),
    ("udp_rr_per_s", "UDP rr/s", "{:.0f}", True),
    ("ping_nat_ms", "ping NAT ms", "{:.3f}", False),
)
# The "internet" of the ping NAT column: a namespace of our own behind a veth from the
# backend's host side (documentation addresses, removed after each backend)
WORLD_HOST, WORLD_PEER = "198.51.100.1", "198.51.100.2"
HTTP_BODY = 64  # bytes per HTTP response in the requests/s loop


@dataclass
class BackendResult:
    backend: str
    download_mbit_s: float
    upload_mbit_s: float
    ping_avg_ms: float
    udp_rr_per_s: float
    http_req_per_s: float
    download_s: float
    upload_s: float
    udp_replies: int
    udp_sent: int
    http_requests: int
    http_s: float
    boot_s: float
    # the guest pinging a namespace peer (WORLD_PEER) through the backend's NAT, where the
    # backend has one and we may make namespaces (root); None otherwise
    ping_nat_ms: float | None = None


@dataclass
class VmBench:
    size_mib: int
    ping_count: int
    udp_count: int
    http_count: int = 0
    results: list[BackendResult] = field(default_factory=list)
    # backend -> why it was not measured (e.g. passt not installed)
    skipped: dict[str, str] = field(default_factory=dict)
    # metric -> backend -> value / slirp's value (for ping, lower is better all the same)
    ratios_to_slirp: dict[str, dict[str, float]] = field(default_factory=dict)
    qemu: str = "system"  # the QEMU every guest ran on: "system" (7.2 here) or "10"


# -- host-side peers for slirp -----------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    """apps/servers/http.py's `/bytes/N` and `POST /sink` on a plain kernel socket."""

    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass

    def _reply(self, status: int, body_len: int, chunks) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(body_len))
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(chunk)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        count = self.path[len("/bytes/"):] if self.path.startswith("/bytes/") else ""
        if not count.isdigit():
            self._reply(404, 0, ())
            return
        self._reply(200, int(count), pattern_chunks(int(count)))

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/sink":
            self._reply(404, 0, ())
            return
        left = int(self.headers.get("Content-Length", "0"))

        def body():
            nonlocal left
            while left > 0:
                data = self.rfile.read(min(left, CHUNK))
                if not data:
                    return
                left -= len(data)
                yield data

        resp = sink(body())
        data = b"".join(resp.body)
        self._reply(resp.status, len(data), (data,))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that went away (a backend killed by the soak) is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HostPeers:
    """The HTTP server and the UDP echo on 127.0.0.1 (ephemeral ports), each in a thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.http = _Server((host, 0), _Handler)
        self.http_port = self.http.server_address[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, 0))
        self.udp_port = self.udp.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.http.serve_forever, daemon=True),
                         threading.Thread(target=self._echo, daemon=True)]
        for t in self._threads:
            t.start()

    def _echo(self) -> None:
        self.udp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.udp.sendto(data, addr)

    def close(self) -> None:
        self._stop.set()
        self.http.shutdown()
        self.http.server_close()
        for t in self._threads:
            t.join(2)
        self.udp.close()


# -- our backend (a separate process) ----------------------------------------------------

def start_ours(socket_path: str, timeout: float = 20) -> subprocess.Popen:
    """`vhostnet serve --socket-path P --no-control`, returned once the socket listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "serve", "--socket-path", socket_path,
         "--no-control", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(socket_path):
        if proc.poll() is not None:
            raise RuntimeError(f"vhostnet serve exited {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("vhostnet serve did not listen in time")
        time.sleep(0.05)
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- the guest side ----------------------------------------------------------------------

# the guest's monotonic clock in ns (busybox date has no %N)
_NOW = "now() { grep -m1 'now at' /proc/timer_list | cut -d' ' -f3; }"
_NS_RE = re.compile(r"^ns=(\d+)$", re.M)
_PING_RE = re.compile(r"min/avg/max = [\d.]+/([\d.]+)/")
_UDP_RE = re.compile(r"(\d+)/(\d+) replies")


def _timed(vm: QemuVM, cmd: str, timeout: float) -> tuple[float, str]:
    """Run `cmd` in the guest; (seconds by the guest's clock, its output)."""
    out = vm.run_ok(f"{_NOW}; t0=$(now); {cmd}; rc=$?; t1=$(now); echo; echo ns=$((t1 - t0)); "
                    f"[ $rc = 0 ]",
                    timeout)
    m = _NS_RE.search(out)
    if m is None:
        raise GuestError(f"no timing in the output of {cmd!r}: {out!r}")
    return int(m.group(1)) / 1e9, out[: m.start()]


def run_workload(vm: QemuVM, backend: str, host: str, http_port: int, udp_port: int,
                 size_mib: int, ping_count: int, udp_count: int, http_count: int,
                 boot_s: float, nat: bool = False) -> BackendResult:
    """The workload against `host` from a guest whose eth0 is up; one BackendResult.
    `nat`: the backend's NAT reaches WORLD_PEER (see `_world`): ping it too."""
    nbytes = size_mib << 20
    url = f"http://{host}:{http_port}"
    slow = max(60.0, size_mib * 4.0)  # the generous per-command timeout
    # no NUL bytes: busybox wget reads the post file into memory and sends strlen() of it
    vm.run_ok(f"dd if=/dev/zero bs=1M count={size_mib} 2>/dev/null | tr '\\0' x >/tmp/f",
              slow)
    overhead, _ = _timed(vm, ":", 30)  # two clock reads
    # one untimed warm-up each way: ARP, the server's first connection, wget's page cache
    vm.run_ok(f"wget -q -O /dev/null {url}/bytes/65536", 30)
    down_s, _ = _timed(vm, f"wget -q -O /dev/null {url}/bytes/{nbytes}", slow)
    up_s, out = _timed(vm, f"wget -q --post-file=/tmp/f -O - {url}/sink", slow)
    if not out.strip().startswith(str(nbytes)):
        raise GuestError(f"{backend}: /sink answered {out!r}, expected {nbytes} bytes")
    vm.run_ok("rm -f /tmp/f")
    down_s, up_s = max(down_s - overhead, 1e-6), max(up_s - overhead, 1e-6)
    ping = vm.run_ok(f"ping -c {ping_count} -i 0.2 {host}", ping_count * 0.2 + 30)
    m = _PING_RE.search(ping)
    if m is None:
        raise GuestError(f"{backend}: no ping summary in {ping!r}")
    udp_s, out = _timed(vm, f"vhn-udp -q -n {udp_count} -s 64 {host} {udp_port}", slow)
    m2 = _UDP_RE.search(out)
    if m2 is None:
        raise GuestError(f"{backend}: no vhn-udp summary in {out!r}")
    replies = int(m2.group(1))
    udp_s = max(udp_s - overhead, 1e-6)
    # HTTP requests/s: a fresh wget (and TCP connection) per request; stops at the first error
    http_s, out = _timed(
        vm, f"i=0; while [ $i -lt {http_count} ]; do "
            f"wget -q -O /dev/null {url}/bytes/{HTTP_BODY} || break; i=$((i + 1)); done; "
            f"echo requests=$i; [ $i = {http_count} ]", slow)
    http_s = max(http_s - overhead, 1e-6)
    ping_nat = None
    if nat:
        out = vm.run_ok(f"ping -c {ping_count} -i 0.2 {WORLD_PEER}", ping_count * 0.2 + 30)
        m3 = _PING_RE.search(out)
        if m3 is None:
            raise GuestError(f"{backend}: no ping summary for {WORLD_PEER} in {out!r}")
        ping_nat = float(m3.group(1))
    return BackendResult(
        backend=backend, download_mbit_s=nbytes * 8 / down_s / 1e6,
        upload_mbit_s=nbytes * 8 / up_s / 1e6, ping_avg_ms=float(m.group(1)),
        udp_rr_per_s=replies / udp_s, http_req_per_s=http_count / http_s,
        download_s=round(down_s, 4), upload_s=round(up_s, 4),
        udp_replies=replies, udp_sent=int(m2.group(2)), http_requests=http_count,
        http_s=round(http_s, 4), boot_s=round(boot_s, 2), ping_nat_ms=ping_nat)


def _vm(nic: list[str]) -> QemuVM:
    kw = {"qemu": _QEMU} if _QEMU else {}
    return QemuVM(nic_args=nic, memory_mb=GUEST_MEMORY_MB, **kw)


def _vectors() -> int | None:
    return None if _QEMU else 0  # MSI-X with QEMU 10; INTx on 7.2 (its TCG crash)


def _boot(vm: QemuVM) -> float:
    t0 = time.monotonic()
    vm.wait_ready(timeout=120)
    vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2 >/dev/null 2>&1", 60)
    return time.monotonic() - t0


@contextmanager
def _world(host_ns: str | None = None):
    """A namespace holding WORLD_PEER behind a veth from `host_ns` (None: ours), the
    "internet" a backend's NAT reaches for the ping NAT column. Yields True, or False where
    we may not make namespaces (not root); removed on the way out."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield False
        return
    tag = f"vhnb{os.getpid() % 100000}"
    ns, near, far = f"{tag}w", f"{tag}wh", f"{tag}wp"
    _ip("netns", "add", ns)
    try:
        pre = [] if host_ns is None else ["-n", host_ns]
        _ip(*pre, "link", "add", near, "type", "veth", "peer", "name", far, "netns", ns)
        _ip(*pre, "addr", "add", f"{WORLD_HOST}/24", "dev", near)
        _ip(*pre, "link", "set", near, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{WORLD_PEER}/24", "dev", far)
        _ip("-n", ns, "link", "set", far, "up")
        yield True
    finally:  # (the veth pair goes with the namespace)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _bench_vhostnet(backend: str, http_port: int, udp_port: int, size_mib: int,
                    ping_count: int, udp_count: int, http_count: int) -> BackendResult:
    """`vhostnet serve` in its own process, the guest on its vhost-user NIC, the workload
    against 10.0.2.2 on the given ports."""
    with tempfile.TemporaryDirectory(prefix="vhostnet-benchvm-") as d:
        path = os.path.join(d, "vhost.sock")
        proc = start_ours(path)
        try:
            with _world() as nat, _vm(vhost_user_nic_args(path, vectors=_vectors())) as vm:
                boot_s = _boot(vm)
                return run_workload(vm, backend, "10.0.2.2", http_port, udp_port, size_mib,
                                    ping_count, udp_count, http_count, boot_s, nat)
        finally:
            stop_process(proc)


def bench_ours(size_mib: int, ping_count: int, udp_count: int,
               http_count: int) -> BackendResult:
    """Our own apps: HTTP on 80, UDP echo on 7."""
    return _bench_vhostnet("ours", 80, 7, size_mib, ping_count, udp_count, http_count)


def bench_gateway(size_mib: int, ping_count: int, udp_count: int,
                  http_count: int) -> BackendResult:
    """slirp's peers on the host's loopback, reached through our gateway."""
    peers = HostPeers()
    try:
        return _bench_vhostnet("gateway", peers.http_port, peers.udp_port, size_mib,
                               ping_count, udp_count, http_count)
    finally:
        peers.close()


def bench_slirp(size_mib: int, ping_count: int, udp_count: int,
               http_count: int) -> BackendResult:
    peers = HostPeers()
    try:
        nic = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
        with _world() as nat, _vm(nic) as vm:
            boot_s = _boot(vm)
            return run_workload(vm, "slirp", "10.0.2.2", peers.http_port, peers.udp_port,
                                size_mib, ping_count, udp_count, http_count, boot_s, nat)
    finally:
        peers.close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def bench_tap(size_mib: int, ping_count: int, udp_count: int,
             http_count: int) -> BackendResult:
    """`-netdev tap` into a network namespace of our own, where the Linux kernel answers at
    10.0.2.2 and `python -m apps.bench.vm peers` runs the host-side HTTP server and UDP echo.
    QEMU creates the TAP in our namespace; once it holds it, the TAP moves to the new one."""
    tag = f"vhnb{os.getpid() % 100000}"
    ns, tap = f"{tag}ns", f"{tag}t"
    _ip("netns", "add", ns)
    peers = None
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        peers, http_port, udp_port = _ns_peers(ns)
        nic = ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
               "-device", "virtio-net-pci,netdev=n0"]
        with _vm(nic) as vm:
            t0 = time.monotonic()
            vm.wait_ready(timeout=120)
            _ip("link", "set", tap, "netns", ns)
            _ip("-n", ns, "addr", "add", "10.0.2.2/24", "dev", tap)
            _ip("-n", ns, "link", "set", tap, "up")
            vm.run_ok("ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0")
            boot_s = time.monotonic() - t0
            return run_workload(vm, "tap", "10.0.2.2", http_port, udp_port, size_mib,
                                ping_count, udp_count, http_count, boot_s)
    finally:
        if peers is not None:
            peers.stdin.close()
            stop_process(peers)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _ns_peers(ns: str) -> tuple[subprocess.Popen, int, int]:
    """`python -m apps.bench.vm peers` inside namespace `ns`: (process, HTTP port, UDP port)."""
    peers = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                              "apps.bench.vm", "peers"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = peers.stdout.readline().split()
    if len(line) != 3:
        stop_process(peers)
        raise RuntimeError(f"the peers in namespace {ns} did not start")
    return peers, int(line[1]), int(line[2])


def passt_missing() -> str | None:
    """Why the passt backend cannot run here, or None."""
    if shutil.which("passt") is None:
        return "passt is not installed (apt-get install passt; https://passt.top)"
    if os.geteuid() != 0:
        return "needs root (a network namespace of its own)"
    return None


def bench_passt(size_mib: int, ping_count: int, udp_count: int,
                http_count: int, vhost_user: bool = False) -> BackendResult:
    """passt in a network namespace of our own (see the module docstring), QEMU connected to
    its unix socket with `-netdev stream`; the peers run in the same namespace."""
    tag = f"vhnb{os.getpid() % 100000}"
    ns, veth, peer = f"{tag}pns", f"{tag}a", f"{tag}b"
    _ip("netns", "add", ns)
    peers = passt = None
    try:
        with tempfile.TemporaryDirectory(prefix="vhostnet-benchvm-") as d:
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "add", veth, "type", "veth", "peer", "name", peer)
            _ip("-n", ns, "addr", "add", "10.0.2.15/24", "dev", veth)
            _ip("-n", ns, "addr", "add", "10.0.2.2/32", "dev", peer)
            _ip("-n", ns, "link", "set", veth, "up")
            _ip("-n", ns, "link", "set", peer, "up")
            _ip("-n", ns, "route", "add", "default", "via", "10.0.2.2", "dev", veth)
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                            "net.ipv4.ping_group_range=0 2147483647"],
                           check=True, capture_output=True)
            peers, http_port, udp_port = _ns_peers(ns)
            sock, log = os.path.join(d, "passt.sock"), os.path.join(d, "passt.log")
            with open(log, "w") as logf:
                # -f: foreground, -1: exit when QEMU goes, -4: IPv4 only, --runas: the socket
                # lives in our private directory
                if vhost_user:  # Debian 13's passt, in its root (bwrap: it makes a userns)
                    argv = ["bwrap", "--bind", _trixie(), "/", "--proc", "/proc", "--dev-bind",
                            "/dev", "/dev", "--bind", d, d, "--die-with-parent", "passt",
                            "--vhost-user"]
                else:
                    argv = ["passt"]
                passt = subprocess.Popen(
                    ["ip", "netns", "exec", ns, *argv, "-f", "-e", "-q", "-1", "-4",
                     "--runas", "0:0", "-s", sock],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if passt.poll() is not None or time.monotonic() > deadline:
                    with open(log) as f:
                        msg = "".join(ln for ln in f if "syslog" not in ln)
                    raise RuntimeError(f"passt did not listen on {sock}: {msg[-2000:]}")
                time.sleep(0.05)
            nic = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}",
                   "-device", "virtio-net-pci,netdev=n0"]
            if vhost_user:
                nic = vhost_user_nic_args(sock, vectors=None, reconnect=0)
            with _world(ns) as nat, _vm(nic) as vm:
                boot_s = _boot(vm)
                return run_workload(vm, "passt-vu" if vhost_user else "passt", "10.0.2.2",
                                    http_port, udp_port, size_mib, ping_count, udp_count,
                                    http_count, boot_s, nat)
    finally:
        for proc in (passt, peers):
            if proc is not None:
                if proc.stdin is not None:
                    proc.stdin.close()
                stop_process(proc)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _trixie() -> str:
    from apps.harness.vm import cache_dir

    return str(cache_dir().parent / "trixie")


def passt_vu_missing() -> str | None:
    if not os.path.exists(os.path.join(_trixie(), "usr/bin/passt")):
        return "no passt in the Debian 13 root (make install puts it there)"
    if shutil.which("bwrap") is None:
        return "bwrap is not installed"
    if _QEMU is None:
        return "passt's vhost-user mode needs QEMU 10: --qemu 10"
    if os.geteuid() != 0:
        return "needs root (a network namespace of its own)"
    return None


def bench_passt_vu(size_mib: int, ping_count: int, udp_count: int,
                   http_count: int) -> BackendResult:
    return bench_passt(size_mib, ping_count, udp_count, http_count, vhost_user=True)


RUNNERS = {"ours": bench_ours, "gateway": bench_gateway, "slirp": bench_slirp, "tap": bench_tap, "passt": bench_passt,
           "passt-vu": bench_passt_vu}
# backend -> a function telling why it cannot run here (None: it can); such backends are
# skipped with that note instead of failing the run
PREREQUISITES = {"passt": passt_missing, "passt-vu": passt_vu_missing}


def bench_vm(size_mib: int = 100, backends=BACKENDS, ping_count: int = 20,
             udp_count: int = 2000, http_count: int = 500, qemu: str | None = None) -> VmBench:
    """Each backend in turn, in a fresh guest; a backend whose PREREQUISITES say it cannot
    run here (passt not installed) is left out with the reason in `skipped`."""
    unknown = [b for b in backends if b not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; of {', '.join(BACKENDS)}")
    global _QEMU
    _QEMU = None
    if qemu == "10":
        from apps.harness.vm import qemu10

        _QEMU = qemu10()
        if _QEMU is None:
            raise ValueError("--qemu 10: no Debian 13 root (make install makes it) or no bwrap")
    elif qemu not in (None, "7.2", "system"):
        raise ValueError(f"--qemu {qemu}: 10, or system (the default)")
    out = VmBench(size_mib, ping_count, udp_count, http_count)
    out.qemu = "10" if _QEMU else "system"
    for name in backends:
        why = PREREQUISITES.get(name, lambda: None)()
        if why is not None:
            out.skipped[name] = why
            continue
        out.results.append(RUNNERS[name](size_mib, ping_count, udp_count, http_count))
    base = next((r for r in out.results if r.backend == "slirp"), None)
    if base is not None:
        for key, _, _, _ in METRICS:
            ref = getattr(base, key)
            if ref is None:  # (not measured: ping NAT as a user)
                continue
            out.ratios_to_slirp[key] = {
                r.backend: round(getattr(r, key) / ref, 3) if ref else 0.0
                for r in out.results if getattr(r, key) is not None}
    return out


def print_vm(res: VmBench) -> None:
    print(f"vm: TCG guest on QEMU {res.qemu}, {res.size_mib} MiB each way, ping x{res.ping_count}, "
          f"UDP 64 B x{res.udp_count}, HTTP GET of {HTTP_BODY} B x{res.http_count} (a wget "
          f"each); (x.xx) = ratio to slirp")
    cols = [title for _, title, _, _ in METRICS]
    print(f"{'backend':<8} " + " ".join(f"{c:>18}" for c in cols))
    for r in res.results:
        cells = []
        for key, _, fmt, _ in METRICS:
            value = getattr(r, key)
            cell = "-" if value is None else fmt.format(value)
            ratio = res.ratios_to_slirp.get(key, {}).get(r.backend)
            if ratio is not None:
                cell += f" ({ratio:.2f})"
            cells.append(f"{cell:>18}")
        print(f"{r.backend:<8} " + " ".join(cells))
    for name, why in res.skipped.items():
        print(f"{name:<8} skipped: {why}")


def main() -> int:
    """`python -m apps.bench.vm peers`: HostPeers on all addresses (bench_tap runs it in its
    namespace); prints `ports HTTP UDP`, serves until stdin closes."""
    if sys.argv[1:] != ["peers"]:
        print("usage: python -m apps.bench.vm peers", file=sys.stderr)
        return 2
    peers = HostPeers("0.0.0.0")
    print(f"ports {peers.http_port} {peers.udp_port}", flush=True)
    sys.stdin.read()
    peers.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
