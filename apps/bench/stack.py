"""`vhostnet bench stack` and `vhostnet bench memory`.

stack — our TCP/IP stack's throughput:
  * two of our stacks over `loopback_pair` (each with its own Runtime thread): TCP bulk in
    one direction (Mbit/s; the receiver's byte count must equal the sender's) and
    request/response (64-byte request, 64-byte response, one connection, nodelay: trans/s);
  * our stack on a TAP against the Linux kernel in a namespace made (and removed) for the
    run, as smoltcp's examples/benchmark.rs measures: `reader` (a Python sink in the
    namespace reads what we send) and `writer` (a Python source in the namespace writes to
    us), Mbit/s. Needs root; skipped with a line saying so otherwise.

memory — resident set sizes (VmRSS from /proc/PID/status):
  * `vhostnet serve` (backend + stack) idle, nothing attached, then with the Python
    front-end (vhostuser.frontend.NetFrontend) attached;
  * the stack alone in a subprocess (`python -m apps.bench.stack conns N SECONDS`): two
    stacks over loopback_pair idle, holding N established connections (both ends in that
    one process), and its peak during a bulk transfer with those connections open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass

MiB = 1 << 20
A_IP, B_IP = "10.9.0.1", "10.9.0.2"
KERNEL_IP, OUR_IP = "10.56.0.1", "10.56.0.2"
OUR_MAC = "52:55:0a:00:38:02"
PORT = 5001
CHUNK = 64 * 1024

TARGET_IDLE_MIB = 80
TARGET_CONNS_MIB = 300
TARGET_TAP_MBIT = 1000


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process, KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# -- two stacks over an in-memory link ---------------------------------------------------
class LoopbackStacks:
    """Two of our stacks (A_IP, B_IP) over loopback_pair, each run by its Runtime thread."""

    def __init__(self) -> None:
        from netstack.iface import Interface, InterfaceConfig
        from netstack.phy.loopback import waking_pair
        from netstack.runtime import Runtime
        from netstack.wire.ethernet import EthernetAddress
        from netstack.wire.ipv4 import Ipv4Cidr

        self.ends = waking_pair()
        rts = []
        for i, (ip, dev) in enumerate(((A_IP, self.ends[0]), (B_IP, self.ends[1]))):
            mac = EthernetAddress(bytes([2, 0, 0, 0, 0, i + 1]))
            rts.append(Runtime(Interface(InterfaceConfig(mac, [Ipv4Cidr.parse(ip + "/24")])),
                               dev))
        self.a, self.b = rts
        for rt in rts:
            rt.start()

    def close(self) -> None:
        for rt in (self.a, self.b):
            rt.stop()
        for end in self.ends:
            end.close()

    def __enter__(self) -> LoopbackStacks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bulk(client_rt, server_rt, server_ip: str, seconds: float, port: int = PORT
          ) -> tuple[int, float]:
    """Client writes for `seconds`, then shuts down; the server counts. (bytes, elapsed)."""
    from netstack.net import TcpListener, TcpStream

    listener = TcpListener.bind(server_rt, ("0.0.0.0", port))
    listener.set_timeout(10.0)
    got: dict = {}

    def sink() -> None:
        try:
            s, _ = listener.accept()
            s.set_read_timeout(30.0)
            n, buf = 0, bytearray(MiB)
            with s:
                while k := s.read_into(buf):
                    n += k
            got["n"], got["end"] = n, time.perf_counter()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            got["error"] = e

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    try:
        chunk = bytes(CHUNK)
        sent = 0
        with TcpStream.connect(client_rt, (server_ip, port), timeout=5.0) as c:
            c.set_write_timeout(30.0)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                c.write_all(chunk)
                sent += len(chunk)
            c.shutdown("write")
            t.join(60.0)
    finally:
        listener.close()
    if "error" in got:
        raise got["error"]
    if got.get("n") != sent:
        raise RuntimeError(f"bulk: sent {sent} bytes, received {got.get('n')}")
    return sent, got["end"] - t0


@dataclass
class StackResult:
    name: str
    unit: str
    value: float
    bytes: int = 0
    transactions: int = 0
    seconds: float = 0.0
    target: str = ""
    offload: bool | None = None  # TAP results: whether the TAP had checksum/TSO offloads


def loopback_bulk(seconds: float) -> StackResult:
    with LoopbackStacks() as s:
        n, dt = _bulk(s.a, s.b, B_IP, seconds)
    return StackResult("loopback bulk (A->B)", "Mbit/s", n * 8 / dt / 1e6, bytes=n,
                       seconds=dt)


def loopback_rr(seconds: float, size: int = 64) -> StackResult:
    from netstack.net import TcpListener, TcpStream

    with LoopbackStacks() as s:
        listener = TcpListener.bind(s.b, ("0.0.0.0", PORT))
        listener.set_timeout(10.0)

        def server() -> None:
            srv, _ = listener.accept()
            srv.set_nodelay(True)
            srv.set_read_timeout(30.0)
            with srv:
                try:
                    while True:
                        srv.write_all(srv.read_exact(size))
                except (EOFError, OSError):
                    pass

        t = threading.Thread(target=server, daemon=True)
        t.start()
        req = bytes(size)
        n = 0
        with TcpStream.connect(s.a, (B_IP, PORT), timeout=5.0, nodelay=True) as c:
            c.set_read_timeout(10.0)
            t0 = time.perf_counter()
            while (dt := time.perf_counter() - t0) < seconds:
                c.write_all(req)
                if len(c.read_exact(size)) != size:
                    raise RuntimeError("short response")
                n += 1
            c.shutdown("write")
        t.join(10.0)
        listener.close()
    return StackResult(f"loopback req/resp ({size} B)", "trans/s", n / dt, transactions=n,
                       seconds=dt)


# -- our stack on a TAP against Linux in a namespace --------------------------------------
LINUX_SINK = f"""
import socket, sys
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("{KERNEL_IP}", {PORT}))
ls.listen(1)
print("ready", flush=True)
c, _ = ls.accept()
c.settimeout(60)
n, buf = 0, bytearray(1 << 20)
while k := c.recv_into(buf):
    n += k
c.close()
print(n, flush=True)
"""

LINUX_SOURCE = f"""
import socket, sys, time
seconds = float(sys.argv[1])
s = socket.create_connection(("{OUR_IP}", {PORT}), timeout=60)
chunk = bytes({CHUNK})
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < seconds:
    s.sendall(chunk)
    n += len(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(n, flush=True)
"""


def tap_skip_reason() -> str | None:
    import shutil

    if os.geteuid() != 0:
        return "not root: the TAP/namespace benchmark needs CAP_NET_ADMIN"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    return None


def _ns_python(ns: str, code: str, *args) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-u", "-c", code,
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"namespace program failed: {err.strip()}")
    return out.strip().splitlines()[-1]


def tap_bench(seconds: float, offload: bool = True) -> list[StackResult]:
    """reader (Linux reads what we send) and writer (Linux writes to us), Mbit/s.
    `offload`: the TAP with checksum/TSO offloads (64 KiB TCP segments across it) when the
    kernel grants them, else plain frames; the result names say which was used."""
    from netstack.iface import Interface, InterfaceConfig
    from netstack.net import TcpListener, TcpStream
    from netstack.phy.tap import TapDevice, TapError
    from netstack.runtime import Runtime
    from netstack.wire.ethernet import EthernetAddress
    from netstack.wire.ipv4 import Ipv4Cidr

    ns = "vhnb-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    tap = runtime = None
    procs: list[subprocess.Popen] = []
    target = f">= {TARGET_TAP_MBIT} Mbit/s"
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=10)
        try:
            tap = TapDevice(netns=ns, offload=offload)
        except TapError:
            if not offload:
                raise
            tap = TapDevice(netns=ns)
        tap.add_address(f"{KERNEL_IP}/24")
        tap.up()
        iface = Interface(InterfaceConfig(hardware_addr=EthernetAddress.parse(OUR_MAC),
                                          ip_addrs=[Ipv4Cidr.parse(f"{OUR_IP}/24")]))
        runtime = Runtime(iface, tap)
        runtime.start()
        out = []

        # reader: we send, a Python sink in the namespace reads
        sink = _ns_python(ns, LINUX_SINK)
        procs.append(sink)
        if sink.stdout.readline().strip() != "ready":
            raise RuntimeError(f"namespace sink did not start: {sink.stderr.read()}")
        chunk = bytes(CHUNK)
        sent = 0
        with TcpStream.connect(runtime, (KERNEL_IP, PORT), timeout=5.0) as c:
            c.set_write_timeout(30.0)
            c.set_read_timeout(30.0)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                c.write_all(chunk)
                sent += len(chunk)
            c.shutdown("write")
            if c.read() != b"":
                raise RuntimeError("the sink sent data")
            dt = time.perf_counter() - t0
        n = int(_finish(sink, 30.0))
        if n != sent:
            raise RuntimeError(f"reader: sent {sent}, the sink read {n}")
        out.append(StackResult("tap reader (us->linux)", "Mbit/s", n * 8 / dt / 1e6, bytes=n,
                               seconds=dt, target=target, offload=tap.offload))

        # writer: a Python source in the namespace writes to us
        listener = TcpListener.bind(runtime, (OUR_IP, PORT))
        listener.set_timeout(10.0)
        src = _ns_python(ns, LINUX_SOURCE, seconds)
        procs.append(src)
        try:
            s, _ = listener.accept()
        finally:
            listener.close()
        got, buf = 0, bytearray(MiB)
        with s:
            s.set_read_timeout(30.0)
            t0 = time.perf_counter()
            while k := s.read_into(buf):
                got += k
            dt = time.perf_counter() - t0
        n = int(_finish(src, 30.0))
        if n != got:
            raise RuntimeError(f"writer: the source sent {n}, we read {got}")
        out.append(StackResult("tap writer (linux->us)", "Mbit/s", got * 8 / dt / 1e6,
                               bytes=got, seconds=dt, target=target, offload=tap.offload))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        if runtime is not None:
            runtime.stop()
        if tap is not None:
            tap.close()
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)


def bench_stack(seconds: float, tap: bool = True) -> dict:
    results = [loopback_bulk(seconds), loopback_rr(seconds)]
    skipped = None
    if tap:
        skipped = tap_skip_reason()
        if skipped is None:
            results += tap_bench(seconds)
    else:
        skipped = "not asked for"
    return {"results": [asdict(r) for r in results], "tap_skipped": skipped}


def print_stack(out: dict) -> None:
    print(f"{'stack':<30} {'value':>12} {'unit':<8} {'target':<16}")
    for r in out["results"]:
        print(f"{r['name']:<30} {r['value']:>12.1f} {r['unit']:<8} {r['target']:<16}")
    if out["tap_skipped"]:
        print(f"tap vs Linux: skipped ({out['tap_skipped']})")
    tap = [r for r in out["results"] if r.get("offload") is not None]
    if tap:
        how = ("with checksum/TSO offloads (64 KiB TCP segments)" if tap[0]["offload"]
               else "without offloads (1500-byte frames)")
        print(f"(tap: our stack on a TAP {how})")


# -- memory --------------------------------------------------------------------------------
def conns_child(n: int, seconds: float) -> dict:
    """In a subprocess: two stacks, N established connections, then a bulk transfer."""
    from netstack.net import TcpListener, TcpStream

    with LoopbackStacks() as s:
        time.sleep(0.2)
        idle = rss_kib()
        listener = TcpListener.bind(s.b, ("0.0.0.0", 7000), backlog=1024)
        listener.set_timeout(10.0)
        accepted: list = []

        def acceptor() -> None:
            while len(accepted) < n:
                accepted.append(listener.accept()[0])

        t = threading.Thread(target=acceptor, daemon=True)
        t.start()
        t0 = time.perf_counter()
        clients = [TcpStream.connect(s.a, (B_IP, 7000), timeout=10.0) for _ in range(n)]
        t.join(30.0)
        setup = time.perf_counter() - t0
        if len(accepted) != n:
            raise RuntimeError(f"{len(accepted)} of {n} connections accepted")
        time.sleep(0.2)
        with_conns = rss_kib()

        peak = [with_conns]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], rss_kib())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        nbytes, dt = _bulk(s.a, s.b, B_IP, seconds, port=7001)
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], rss_kib())
        for c in clients + accepted:
            c.set_linger_abort(True)
            c.close()
        listener.close()
    return {"connections": n, "idle_kib": idle, "with_conns_kib": with_conns,
            "load_peak_kib": peak[0], "setup_seconds": setup,
            "load_mbit_per_s": nbytes * 8 / dt / 1e6}


def _wait_path(path: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("vhostnet serve did not start")
        time.sleep(0.02)


def serve_rss(settle: float = 0.5) -> dict:
    """`vhostnet serve` idle, then with the Python front-end attached (KiB)."""
    from vhostuser.frontend import NetFrontend

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vhostnet.sock")
        proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--socket-path",
                                 path, "--no-control"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            _wait_path(path, proc, 20.0)
            time.sleep(settle)
            idle = rss_kib(proc.pid)
            fe = NetFrontend(path, queue_size=256)
            try:
                fe.connect()
                fe.start()
                time.sleep(settle)
                attached = rss_kib(proc.pid)
            finally:
                fe.close()
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return {"serve_idle_kib": idle, "serve_attached_kib": attached}


def bench_memory(seconds: float, connections: int = 1000) -> dict:
    out = serve_rss()
    proc = subprocess.run([sys.executable, "-m", "apps.bench.stack", "conns", str(connections),
                           str(seconds)], capture_output=True, text=True,
                          timeout=120 + seconds)
    if proc.returncode != 0:
        raise RuntimeError(f"the connections subprocess failed: {proc.stderr}")
    out["stack"] = json.loads(proc.stdout.strip().splitlines()[-1])
    st = out["stack"]
    st["per_connection_kib"] = (st["with_conns_kib"] - st["idle_kib"]) / connections
    return out


def print_memory(out: dict) -> None:
    st = out["stack"]
    n = st["connections"]
    mib = 1024.0
    rows = [
        ("serve idle (nothing attached)", out["serve_idle_kib"] / mib, "MiB",
         f"<= {TARGET_IDLE_MIB} MiB"),
        ("serve idle (NetFrontend attached)", out["serve_attached_kib"] / mib, "MiB",
         f"<= {TARGET_IDLE_MIB} MiB"),
        ("stack process idle (2 stacks)", st["idle_kib"] / mib, "MiB", ""),
        (f"stack process, {n} connections", st["with_conns_kib"] / mib, "MiB",
         f"<= {TARGET_CONNS_MIB} MiB"),
        ("  per connection (both ends)", st["per_connection_kib"], "KiB", ""),
        (f"stack process, {n} conns + bulk", st["load_peak_kib"] / mib, "MiB (peak)", ""),
    ]
    print(f"{'memory (VmRSS)':<36} {'value':>9} {'unit':<10} {'target':<14}")
    for name, v, unit, target in rows:
        print(f"{name:<36} {v:>9.1f} {unit:<10} {target:<14}")
    print(f"({n} connections set up in {st['setup_seconds']:.2f} s; bulk under them at "
          f"{st['load_mbit_per_s']:.0f} Mbit/s; the stack figures are two stacks over "
          "loopback_pair in one subprocess, not through the vhost-user device)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "conns":
        print(json.dumps(conns_child(int(sys.argv[2]), float(sys.argv[3]))), flush=True)
        sys.exit(0)
    print("usage: python -m apps.bench.stack conns N SECONDS", file=sys.stderr)
    sys.exit(2)
