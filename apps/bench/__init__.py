"""`vhostnet bench`: benchmarks, printed as a table and written as JSON.

ring — the Python front-end (vhostuser.frontend) against our backend over the real rings,
in two processes: frames/s and Gbit/s per frame size and direction, and the backend's CPU
time per frame (its process CPU time / frames, read from /proc, so a slow front-end does
not hide a slow backend). The front-end drives the rings with its batched C path
(TxBatch/RxBatch: N frames per call, one avail idx store and at most one kick per batch;
RX frames checked against what the source sends on a sample of calls) unless
`--ring-frontend python` asks for the per-frame Python path (send_frames/recv_packets). The backend runs `python -m apps.bench backend MODE` with a
RawFrameApp: `sink` drops what the guest sends, `source` fills every RX buffer the guest
posts with frames of the asked size.

stack, memory — our TCP/IP stack's throughput (loopback, and over a TAP against Linux) and
the backend's resident memory; see apps/bench/stack.py.

vm, boot — a TCG Linux guest on our backend and on QEMU's slirp (and others): see
apps/bench/vm.py and apps/bench/boot.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import asdict, dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads: nanoseconds on a CPU from schedstat (a
    short run of a fast backend is a few clock ticks; utime + stime round it to 10 ms)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):  # no schedstat (kernel without it)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


@dataclass
class RingResult:
    direction: str  # "guest->backend" or "backend->guest"
    frame_size: int
    frames: int
    seconds: float
    frames_per_s: float
    gbit_per_s: float
    backend_cpu_us_per_frame: float
    frontend: str = "c"  # "c": TxBatch/RxBatch; "python": send_frames/recv_packets
    ring: str = "split"  # the virtqueue layout: "split" or "packed"
    capture_filter: str | None = None  # a control-socket capture with this filter ran
    captured: int = 0  # the frames that capture received


# -- the backend side (a subprocess) ----------------------------------------------------
def run_backend(mode: str, socket_path: str, size: int, path: str = "c",
                control: str | None = None) -> None:
    """Serve one front-end after another as `sink` (counts and drops what the guest
    sends), `source` (fills every RX buffer with `size`-byte frames) or `echo` (sends
    every frame back). `path`: the ring
    code, "c" (the batched C helpers) or "python" (the per-frame Python path). With
    `control`, a control socket there (apps/control: `vhostnet capture` attaches). On
    SIGTERM prints one JSON line of counts: frames and bytes the guest sent us (and in
    `source` mode how many differ from the frame it sends: a guest forwarding what it
    receives sends them back), frames given to the device for the guest, RX used
    entries written, ring errors (a queue declared broken) and the drops by reason.
    A `socket_path` of "connect:PATH" connects to a front-end listening there (DPDK's
    virtio-user with server=1), retrying, instead of listening."""
    import vhostuser.virtqueue as virtqueue
    from vhostuser.server import VhostUserServer, install_signal_handlers

    if path not in ("c", "python"):
        raise ValueError(f"ring path {path!r}: c or python")
    virtqueue.USE_C = virtqueue.HAVE_C and path == "c"
    frame = bytes(range(256)) * (size // 256 + 1)
    frame = frame[:size]
    nbatch = 256 if size <= 1514 else 1  # frames per call (a ring's worth at 256)
    packed, packed_lens = frame * nbatch, array("I", [size] * nbatch)
    counts = {"guest_tx_frames": 0, "guest_tx_bytes": 0, "guest_rx_frames": 0,
              "rx_used": 0, "mismatched": 0, "ring_errors": 0, "drops": {}}

    from apps.capture.hooks import FrameHooks

    class Sink(FrameHooks):  # control-socket captures attach through the frame hooks
        def __init__(self) -> None:
            self._init_frame_hooks()

        def attach(self, device) -> None:
            self.device = device
            self._sync_frame_hook()

        def detach(self) -> None:
            dev = self.device
            self.device = None
            if dev is not None:
                counts["guest_rx_frames"] += dev.stats["guest_rx_frames"]
                counts["rx_used"] += sum(q.stats.used for q in dev.queues[0::2])
                counts["kicks"] = counts.get("kicks", 0) + sum(q.stats.kicks
                                                               for q in dev.queues)
                counts["calls"] = counts.get("calls", 0) + sum(q.stats.notified
                                                               for q in dev.queues)
                counts["ring_errors"] += dev.drops["ring_error"]
                for k, v in dev.drops.items():
                    counts["drops"][k] = counts["drops"].get(k, 0) + v

        def _drain(self, dev) -> None:  # counted, never touched: as testpmd's rxonly
            frames, nbytes = dev.stats["guest_tx_frames"], dev.stats["guest_tx_bytes"]
            dev.discard_tx()
            counts["guest_tx_frames"] += dev.stats["guest_tx_frames"] - frames
            counts["guest_tx_bytes"] += dev.stats["guest_tx_bytes"] - nbytes

        def poll(self, now):
            if self.device is not None:
                self._drain(self.device)
            return None

    class Source(Sink):
        """Fills the guest's RX buffers; checks that what comes back (a guest that
        forwards what it receives) is the frame it sent."""

        def _drain(self, dev) -> None:
            def batch(frames) -> None:
                counts["guest_tx_frames"] += len(frames)
                counts["guest_tx_bytes"] += frames.nbytes
                counts["mismatched"] += sum(f != frame for f in frames)

            dev.drain_tx_batches(batch)

        def poll(self, now):
            dev = self.device
            if dev is None:
                return None
            self._drain(dev)
            rxq = dev.queues[0]
            # fill every buffer, a batch per call; the frames left in the backlog ask for
            # the next kick. Bounded: a driver that frees buffers as fast as we fill them
            # (the per-frame path of a packed ring) must not keep the TX ring's used
            # descriptors from being published (the server's flush comes after us)
            for _ in range(8):
                if not (rxq.ready and rxq.enabled) or dev.has_backlog:
                    return None
                if not dev.send_packed(packed, packed_lens):
                    return None
            return now  # (more to fill: straight back after the flush)

    class Echo(Sink):
        """Sends every frame the guest sends straight back, a batch at a time."""

        def poll(self, now):
            dev = self.device
            if dev is None:
                return None
            out: list[bytes] = []

            def one(f) -> None:
                counts["guest_tx_frames"] += 1
                counts["guest_tx_bytes"] += len(f)
                out.append(bytes(f))

            # no more than the backlog holds: what the guest has no buffer for waits
            while not dev.has_backlog and dev.drain_tx(one, limit=128):
                dev.send_frames(out)
                out.clear()
            return None

    apps_by_mode = {"sink": Sink, "source": Source, "echo": Echo}
    if mode not in apps_by_mode:
        raise ValueError(f"backend mode {mode!r}: one of {', '.join(apps_by_mode)}")
    app = apps_by_mode[mode]()
    if socket_path.startswith("connect:"):
        server = VhostUserServer(connect_path=socket_path[len("connect:"):], app=app)
    else:
        server = VhostUserServer(socket_path=socket_path, app=app)
    ctl = None
    if control is not None:
        from apps.control import ControlServer

        ctl = ControlServer(server, app, control)
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers(server)
    print("ready", flush=True)
    try:
        server.serve_forever()
    finally:
        if ctl is not None:
            ctl.close()
        server.close()
        if app.device is not None:
            app.detach()
        print(json.dumps(counts), flush=True)


# -- the front-end side -----------------------------------------------------------------
def _start_backend(mode: str, path: str, size: int, ring: str = "c",
                   stderr=None, control: str | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "apps.bench", "backend", mode, path,
                             str(size), ring, *([control] if control else [])],
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("benchmark backend did not start")
    return proc


def _stop_backend(proc: subprocess.Popen) -> dict:
    """SIGTERM the backend; its counts (see run_backend)."""
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    lines = out.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"benchmark backend exited ({proc.returncode}) without its "
                           "counts") from None


def _source_frame(size: int) -> bytes:
    """What `run_backend("source", ...)` sends."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def _ring_frontend(path: str, ring: str):
    """Our front-end on `path` with `ring` layout rings, connected and started."""
    from vhostuser.features import Feature, bit
    from vhostuser.frontend import DEFAULT_FEATURES, GuestMemoryArea, MiB, NetFrontend

    features = DEFAULT_FEATURES | (bit(Feature.F_RING_PACKED) if ring == "packed" else 0)
    fe = NetFrontend(path, queue_size=1024, memory=GuestMemoryArea(((0, 64 * MiB),)),
                     features=features)
    fe.connect()
    fe.start()
    if fe.has_feature(Feature.F_RING_PACKED) != (ring == "packed"):
        raise RuntimeError(f"the backend did not negotiate {ring} rings")
    return fe


def _capture_client(control: str, expr: str) -> tuple[threading.Thread, list]:
    """`vhostnet capture --filter EXPR` on the backend's control socket, in a thread that
    counts the frames it gets (in `counted[0]`) until the backend closes the socket."""
    from apps.control import ControlClient, ControlError

    client = ControlClient(control)
    frames = client.frames(filter=expr)
    counted = [0]

    def read() -> None:
        try:
            for _ in frames:
                counted[0] += 1
        except (ControlError, OSError, ValueError):
            pass
        finally:
            client.close()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, counted


def ring_guest_to_backend(size: int, seconds: float, frontend: str = "c",
                          backend: str = "c", ring: str = "split",
                          capture_filter: str | None = None,
                          rate: int | None = None) -> RingResult:
    """Frames of `size` bytes to the sink, 256 (16 above 1514 bytes) per batch: with the
    C path as many as there are free buffers per call, the ring kept full; with the
    Python path one batch at a time, each waited for. Every frame sent must have reached
    the sink (its count and bytes), and no queue may have been declared broken.
    `backend`: the backend's ring path, "c" or "python"; `ring`: "split" or "packed"
    (our front-end drives packed rings frame by frame: its C batches are split-only; the
    backend takes its C batches on both layouts). `capture_filter`: a control-socket
    capture with that pcap-filter expression is attached to the backend throughout.
    `rate`: frames per second (C front-end only), sent a millisecond's worth at a time,
    instead of as fast as the backend takes them."""
    if ring == "packed":
        frontend = "python"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.sock")
        control = os.path.join(d, "bench.ctl") if capture_filter is not None else None
        proc = _start_backend("sink", path, size, backend, control=control)
        counts = None
        captured = [0]
        try:
            reader = None
            if control is not None:
                reader, captured = _capture_client(control, capture_filter)
            fe = _ring_frontend(path, ring)
            frame = bytes(size)
            batch = 256 if size <= 1514 else 16
            frames = 0
            if frontend == "c":
                buf = size + fe.hdr_len
                tx = fe.tx_batch(buf, max(1, min(1024, RX_BUFFER_BUDGET // buf)))
                data, lens = frame * batch, array("I", [size] * batch)
            cpu0 = _cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            if frontend == "c" and rate:
                per_ms = max(1, rate // 1000)
                data, lens = frame * per_ms, array("I", [size] * per_ms)
                due = t0
                while due - t0 < seconds:
                    tx.reap()
                    frames += tx.send(data, lens)
                    due += per_ms / rate
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                tx.flush(timeout=5)
            elif frontend == "c":
                while time.perf_counter() - t0 < seconds:
                    tx.reap()
                    n = tx.send(data, lens)
                    frames += n
                    if not n:  # ring full: sleep until 3/4 of it is done
                        tx.wait(0.002)
                tx.flush(timeout=5)
            else:
                while time.perf_counter() - t0 < seconds:
                    fe.send_frames([frame] * batch)
                    fe.wait_tx_done(timeout=5)
                    frames += batch
            dt = time.perf_counter() - t0
            cpu = _cpu_seconds(proc.pid) - cpu0
            fe.close()
            counts = _stop_backend(proc)
            if reader is not None:
                reader.join(5)
        finally:
            if counts is None:
                proc.kill()
                proc.wait(5)
    _check_counts(f"guest->backend {size}", counts, frames, frames * size)
    return RingResult("guest->backend", size, frames, dt, frames / dt,
                      frames * size * 8 / dt / 1e9, cpu / frames * 1e6, frontend, ring,
                      capture_filter, captured[0])


def _check_counts(what: str, counts: dict, frames: int, nbytes: int) -> None:
    """The sink got exactly what the front-end sent, and no queue broke."""
    if counts["ring_errors"]:
        raise RuntimeError(f"{what}: the backend declared a queue broken "
                           f"({counts['ring_errors']} ring errors)")
    got = (counts["guest_tx_frames"], counts["guest_tx_bytes"])
    if got != (frames, nbytes):
        raise RuntimeError(f"{what}: sent {frames} frames ({nbytes} bytes), the backend "
                           f"counted {got[0]} ({got[1]} bytes)")


RX_BUFFER = 4096  # the default: MRG_RXBUF merges frames over several such buffers
RX_BUFFER_BUDGET = 40 << 20  # bytes of RX buffers posted at most (the guest has 64 MiB)


RX_SAMPLE_EVERY = 64  # the C path copies and checks one frame every this many calls


def ring_backend_to_guest(size: int, seconds: float, rx_buffer: int | None = None,
                          frontend: str = "c", backend: str = "c",
                          ring: str = "split") -> RingResult:
    """Frames from the backend into RX buffers of 4 KiB (merged with MRG_RXBUF), or with
    `rx_buffer`, of that many bytes plus the virtio-net header each (65536: one buffer per
    64 KiB frame, as a Linux guest with big buffers posts). The C path counts frames and
    bytes (each frame's length must be `size`) and compares one frame's contents with the
    source's every RX_SAMPLE_EVERY calls; the Python path copies every frame. Our
    front-end drives packed rings frame by frame (see ring_guest_to_backend)."""
    if ring == "packed":
        frontend = "python"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.sock")
        proc = _start_backend("source", path, size, backend)
        counts = None
        try:
            fe = _ring_frontend(path, ring)
            frames = 0
            cpu0 = _cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            if rx_buffer is None:
                buf, count = RX_BUFFER, 512
            else:
                buf = rx_buffer + fe.hdr_len
                count = max(1, min(512, RX_BUFFER_BUDGET // buf))
            if frontend == "c":
                rx = fe.rx_batch(buf, count)
                want, calls = _source_frame(size), 0
                while time.perf_counter() - t0 < seconds:
                    sample = calls % RX_SAMPLE_EVERY == 0
                    n, got = rx.reap(1, size) if sample else rx.reap()
                    calls += 1
                    if got and got[0] != want:
                        raise RuntimeError(f"backend->guest {size}: a frame differs from "
                                           "what the source sent")
                    frames += n
                    if not n:
                        rx.wait(0.002)
                if fe.counters.rx_bytes != frames * size:
                    raise RuntimeError(f"backend->guest {size}: {fe.counters.rx_bytes} bytes "
                                       f"in {frames} frames")
            else:
                fe.post_rx_buffers(count, size=buf)
                while time.perf_counter() - t0 < seconds:
                    frames += len(fe.recv_packets(timeout=2))
            dt = time.perf_counter() - t0
            cpu = _cpu_seconds(proc.pid) - cpu0
            fe.close()
            counts = _stop_backend(proc)
        finally:
            if counts is None:
                proc.kill()
                proc.wait(5)
    if counts["ring_errors"]:
        raise RuntimeError(f"backend->guest {size}: the backend declared a queue broken")
    if counts["guest_rx_frames"] < frames:
        raise RuntimeError(f"backend->guest {size}: {frames} frames received, the backend "
                           f"delivered {counts['guest_rx_frames']}")
    return RingResult("backend->guest", size, frames, dt, frames / dt,
                      frames * size * 8 / dt / 1e9, cpu / max(frames, 1) * 1e6, frontend, ring)


def bench_ring(seconds: float, sizes=(64, 1500, 65536),
               rx_buffer: int | None = None, frontend: str = "c",
               backend: str = "c", rings=("split", "packed"),
               capture_filter: str | None = None, rate: int | None = None
               ) -> list[RingResult]:
    """`frontend`: "c" (the batched TxBatch/RxBatch path) or "python" (per frame);
    `backend`: the backend's ring path, the same two; `rings`: the layouts, side by side
    (our front-end drives packed rings frame by frame). With `capture_filter` (a
    pcap-filter expression) or `rate` (frames/s), guest->backend only: with a capture
    filter, each case without a capture and then with a control-socket capture of that
    filter attached, for the cost of the capture."""
    out = []
    for size in sizes:
        for ring in rings:
            if capture_filter is None and rate is None:
                out.append(ring_guest_to_backend(size, seconds, frontend, backend, ring))
                out.append(ring_backend_to_guest(size, seconds, rx_buffer, frontend,
                                                 backend, ring))
                continue
            for flt in (None, capture_filter) if capture_filter is not None else (None,):
                out.append(ring_guest_to_backend(size, seconds, frontend, backend, ring,
                                                 flt, rate))
    return out


@dataclass
class DpdkResult:
    direction: str  # "guest->backend" (testpmd txonly) or "backend->guest" (rxonly)
    frame_size: int
    vhostnet_frames_per_s: float
    dpdk_vhost_frames_per_s: float
    ratio: float
    ring: str = "split"  # the virtqueue layout (virtio-user's packed_vq)


def bench_dpdk(seconds: float, sizes=(64, 1500), repeat: int = 3,
               rings=("split", "packed")) -> list[DpdkResult]:
    """testpmd's virtio-user port (mergeable RX buffers, its default; split or packed
    rings) against our backend (a sink that counts what the guest sends, or a source
    filling every RX buffer, on the C ring path) and against DPDK's vhost PMD in a
    second testpmd, alternately `repeat` times in the same run; the medians of frames/s
    as testpmd counts them (runs on this kind of machine vary by a third)."""
    import statistics

    from apps.harness.dpdk import run_dpdk_vhost, run_vhostnet

    out = []
    for ring in rings:
        packed = ring == "packed"
        for size in sizes:
            for mode, direction in (("txonly", "guest->backend"),
                                    ("rxonly", "backend->guest")):
                ours, ref = [], []
                for _ in range(repeat):
                    run = run_vhostnet(mode, size, seconds, packed=packed)
                    problems = run.problems()
                    if problems:
                        raise RuntimeError(f"dpdk {ring} {direction} {size}: "
                                           + "; ".join(problems))
                    ours.append(run.frames_per_s)
                    ref.append(run_dpdk_vhost(mode, size, seconds,
                                              packed=packed).frames_per_s)
                a, b = statistics.median(ours), statistics.median(ref)
                out.append(DpdkResult(direction, size, a, b, a / b, ring))
    return out


def print_dpdk(results: list[DpdkResult]) -> None:
    print(f"{'dpdk virtio-user':<16} {'layout':>6} {'size':>6} {'vhostnet/s':>11} "
          f"{'DPDK vhost/s':>13} {'ratio':>6}")
    for r in results:
        print(f"{r.direction:<16} {r.ring:>6} {r.frame_size:>6} "
              f"{r.vhostnet_frames_per_s:>11.0f} {r.dpdk_vhost_frames_per_s:>13.0f} "
              f"{r.ratio:>6.2f}")


def print_ring(results: list[RingResult]) -> None:
    print(f"{'ring':<16} {'layout':>6} {'size':>6} {'frames/s':>10} {'Gbit/s':>8} "
          f"{'backend µs/frame':>17}  front-end")
    for r in results:
        print(f"{r.direction:<16} {r.ring:>6} {r.frame_size:>6} {r.frames_per_s:>10.0f} "
              f"{r.gbit_per_s:>8.3f} {r.backend_cpu_us_per_frame:>17.2f}  "
              + ("C batches" if r.frontend == "c" else "Python, per frame")
              + (f"; capture {r.capture_filter!r} ({r.captured} captured)"
                 if r.capture_filter is not None else ""))


BENCHMARKS = """benchmarks (WHAT):
  ring    frames/s, Gbit/s and backend CPU µs/frame over the real virtqueues, per frame
          size (--sizes), direction and ring layout (--rings: split and packed side by
          side), our Python front-end against our backend
  stack   our TCP/IP stack: TCP bulk (Mbit/s) and 64-byte request/response (trans/s)
          between two stacks over loopback; with root, against Linux over a TAP (--no-tap
          skips it)
  memory  resident memory of `vhostnet serve` idle and attached, and of the stack
          holding --connections TCP connections open
  dpdk    DPDK's testpmd with its virtio-user port (a C virtio driver) against our
          backend and against DPDK's own vhost PMD in the same run: frames/s and the
          ratio, at 64 and 1500 B (--sizes) both ways, split and packed rings (--rings);
          needs dpdk-testpmd (dpdk-dev)
  table   a table of --sockets TCP connections (a third in TIME-WAIT) opened by
          handshakes: the cost of a segment for an unknown 4-tuple and for a live
          connection, and of a poll with nothing due, against 10 sockets; memory per
          connection; the build time
  vm      a Linux guest under TCG: TCP download/upload, ping RTT, UDP request rate and
          HTTP requests/s, timed inside the guest, on our backend, QEMU's slirp, a TAP and
          passt when installed (--backends); ratios to slirp. HTTP requests/s is a loop of
          busybox wget, one process and one TCP connection per request: the process spawn
          costs every backend the same, so it is a lower bound that understates differences
  boot    network boot of the same guest: seconds from QEMU's start to the guest's ready
          marker for -kernel/-initrd on our NIC, -boot n by HTTP and by TFTP from us, and
          -boot n by TFTP from slirp (-netdev user,tftp=,bootfile=), the median of --repeat
          boots (default 2), with the kernel's download time; then a --size-mib file (default
          64 MiB) fetched into the guest by busybox tftp and by vhn-tftp with windowsize 16
          and 1, from us and from slirp: seconds and Mbit/s, ratios to slirp

examples:
  vhostnet bench                          # ring, 2 s per measurement
  vhostnet bench all --json bench.json    # everything, one JSON (make bench; a few minutes)
  vhostnet bench ring --sizes 64,1500 --seconds 1 --json ring.json
  vhostnet bench ring --sizes 64 --rings split --rate 100000 \\
      --capture-filter 'ether host 00:00:00:00:00:01'   # what a capture costs
  vhostnet bench dpdk --seconds 5
  vhostnet bench stack --no-tap
  vhostnet bench vm --smoke --backends ours,slirp
  vhostnet bench boot --json boot.json     # ~6 minutes; --smoke: one boot each, 4 MiB
"""


def _rings(text: str) -> str:
    parts = text.split(",")
    if not parts or any(p not in ("split", "packed") for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give split, packed or split,packed")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The parser of `vhostnet bench` (and `python -m apps.bench`)."""
    p = argparse.ArgumentParser(prog="vhostnet bench", description=__doc__, epilog=BENCHMARKS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="ring", metavar="WHAT",
                   choices=["ring", "dpdk", "vm", "boot", "stack", "memory", "table", "all",
                            "backend"],
                   help="ring (default), dpdk, stack, memory, table, vm, boot, or all of them "
                        "in turn (what `make bench` runs): see below")
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=2.0, help="per measurement (default 2)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--sizes", help="frame sizes (default 64,1500,65536; dpdk: 64,1500)")
    p.add_argument("--size-mib", type=int, default=None,
                   help="vm: MiB each way (default 100; 2 with --smoke); boot: the TFTP "
                        "download (default 64; 4 with --smoke)")
    p.add_argument("--backends", default="ours,gateway,slirp,tap,passt",
                   help="vm: of ours,gateway,slirp,tap,passt,passt-vu (tap, passt: root, a "
                        "netns; passt skipped with a note when not installed; passt-vu needs "
                        "--qemu 10); default all but passt-vu. boot: ours and/or slirp")
    p.add_argument("--qemu", default=None, metavar="VERSION",
                   help="vm: 10 runs every guest on Debian 13's QEMU 10 (needed by passt-vu, "
                        "passt's vhost-user mode); default the system's")
    p.add_argument("--http-count", type=int, default=500,
                   help="vm: HTTP requests for requests/s (default 500; 50 with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="vm: 2 MiB, fewer pings, datagrams and HTTP requests; boot: one "
                        "boot of each variant, 4 MiB")
    p.add_argument("--connections", type=int, default=1000,
                   help="memory: TCP connections to hold open (default 1000)")
    p.add_argument("--no-tap", action="store_true", help="stack: skip the TAP/namespace part")
    p.add_argument("--sockets", type=int, default=100_000,
                   help="table: connections in the big table (default 100000)")
    p.add_argument("--rx-buffer", type=int, metavar="BYTES",
                   help="ring: the guest posts RX buffers of BYTES plus the virtio-net header "
                        "(65536: one buffer per 64 KiB frame, as a Linux guest with big "
                        "buffers); default 4 KiB buffers, big frames merged over several")
    p.add_argument("--ring-frontend", choices=["c", "python"], default="c",
                   help="ring: the front-end's data path: c (default; batched, C helpers, "
                        "so the backend is what is measured) or python (per frame, the "
                        "old path, for comparison)")
    p.add_argument("--rings", default="split,packed", type=_rings,
                   help="ring, dpdk: the virtqueue layouts, split and/or packed (default "
                        "both, side by side)")
    p.add_argument("--repeat", type=int, default=None,
                   help="dpdk: runs of each side, alternating; medians (default 3). boot: "
                        "boots of each variant, in turns; medians (default 2; 1 with --smoke)")
    p.add_argument("--ring-backend", choices=["c", "python"], default="c",
                   help="ring: the backend's data path: c (default; the batched C helpers) "
                        "or python (the per-frame Python path they replace)")
    p.add_argument("--capture-filter", metavar="EXPR",
                   help="ring: guest->backend without and then with a `vhostnet capture "
                        "--filter EXPR` attached to the backend (e.g. 'ether host "
                        "00:00:00:00:00:01', which drops everything): the capture's cost")
    p.add_argument("--rate", type=int, metavar="FRAMES",
                   help="ring: guest->backend only, FRAMES per second (a millisecond's "
                        "worth at a time) instead of as fast as the backend goes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.what == "backend":
        mode, path, size, *ring = args.rest
        run_backend(mode, path, int(size), *ring)
        return 0
    if args.what == "all":
        out = {}
        for part in ("ring", "dpdk", "stack", "memory", "table", "vm", "boot"):
            print(f"== {part}", flush=True)
            out.update(_run(part, args, argv))
            print(flush=True)
    else:
        out = _run(args.what, args, argv)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**out, "machine": os.uname().nodename,
                       "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=2)
        print(f"results written to {args.json}")
    return 0


def _run(what: str, args: argparse.Namespace, argv: list[str] | None) -> dict:
    """Run one benchmark, print its table, return its results for the JSON."""
    if what == "vm":
        from apps.bench.vm import bench_vm, print_vm

        size = args.size_mib or (2 if args.smoke else 100)  # explicit options win
        given = argv or sys.argv  # --smoke's defaults yield to explicit options
        http_count = 50 if args.smoke and "--http-count" not in given else args.http_count
        vm = bench_vm(size, args.backends.split(","), ping_count=5 if args.smoke else 20,
                      udp_count=200 if args.smoke else 2000, http_count=http_count,
                      qemu=args.qemu)
        print_vm(vm)
        out = {"vm": asdict(vm)}
    elif what == "boot":
        from apps.bench.boot import bench_boot, print_boot

        boot = bench_boot(args.repeat or (1 if args.smoke else 2),
                          args.size_mib or (4 if args.smoke else 64), args.backends.split(","),
                          progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
        print_boot(boot)
        out = {"boot": asdict(boot)}
    elif what == "stack":
        from apps.bench.stack import bench_stack, print_stack

        out = {"stack": bench_stack(args.seconds, tap=not args.no_tap)}
        print_stack(out["stack"])
    elif what == "dpdk":
        from apps.harness.dpdk import testpmd_path

        if testpmd_path() is None:
            print("dpdk: skipped, dpdk-testpmd is not installed (apt-get install dpdk-dev)")
            return {"dpdk": None}
        sizes = _sizes(args.sizes, (64, 1500))
        results = bench_dpdk(args.seconds, sizes, args.repeat or 3, args.rings.split(","))
        print_dpdk(results)
        out = {"dpdk": [asdict(r) for r in results]}
    elif what == "table":
        from apps.bench.table import bench_table, print_table

        if args.sockets < 100:
            raise SystemExit("vhostnet bench: --sockets must be at least 100")
        out = {"table": bench_table(args.sockets, min(args.sockets, 10_000))}
        print_table(out["table"])
    elif what == "memory":
        from apps.bench.stack import bench_memory, print_memory

        out = {"memory": bench_memory(args.seconds, args.connections)}
        print_memory(out["memory"])
    else:
        sizes = _sizes(args.sizes, (64, 1500, 65536))
        kw = {}  # only what differs from bench_ring's defaults
        if args.rx_buffer:
            kw["rx_buffer"] = args.rx_buffer
        if args.ring_frontend != "c":
            kw["frontend"] = args.ring_frontend
        if args.ring_backend != "c":
            kw["backend"] = args.ring_backend
        rings = tuple(args.rings.split(","))
        if rings != ("split", "packed"):
            kw["rings"] = rings
        if args.capture_filter is not None:
            kw["capture_filter"] = args.capture_filter
        if args.rate:
            kw["rate"] = args.rate
        results = bench_ring(args.seconds, sizes, **kw)
        print_ring(results)
        out = {"ring": [asdict(r) for r in results]}
    return out


def _sizes(text: str | None, default: tuple[int, ...]) -> list[int]:
    if text is None:
        return list(default)
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise SystemExit(f"vhostnet bench: --sizes {text!r}: comma-separated byte counts, "
                         "e.g. 64,1500") from None
    if any(not 60 <= n <= 65536 for n in sizes):
        raise SystemExit(f"vhostnet bench: --sizes {text!r}: each size must be 60..65536")
    return sizes
