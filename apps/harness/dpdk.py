"""DPDK's testpmd as a peer of our backend, in two roles.

- **Front-end**: its virtio-user PMD is a C virtio driver no one here wrote, driving our
  rings at full rate from another process (`--vdev net_virtio_user0,path=SOCK`). What it
  negotiates is set by devargs: `mrg_rxbuf`, `in_order`, `vectorized`, `packed_vq`.
- **Reference backend**: its vhost PMD (`--vdev net_vhost0,iface=SOCK`) serves the same
  virtio-user front-end, so `vhostnet bench dpdk` can give our frames/s as a ratio of
  DPDK's own in the same run.

testpmd runs interactively with its prompt on a pipe: `start`, then `stop`, which prints
the forwarding statistics we parse (`PortStats`). Memory comes from `--no-huge` (memfd,
which virtio-user shares with the backend), or from hugepages when `hugepages=True`.
Each process gets its own `--file-prefix`, so several can run at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

TESTPMD = "dpdk-testpmd"
PROMPT = "testpmd> "
MODES = ("txonly", "rxonly", "io")


class TestpmdError(RuntimeError):
    """testpmd failed to start, or did not answer as expected."""


def testpmd_path() -> str | None:
    """The testpmd binary (Debian's dpdk-dev package), or None."""
    return shutil.which(TESTPMD)


@dataclass(frozen=True)
class PortStats:
    """testpmd's accumulated forward statistics (`stop`), in packets."""

    rx: int
    rx_dropped: int
    tx: int
    tx_dropped: int


@dataclass(frozen=True)
class PortCounters:
    """The port's own counters (`show port stats`) since it started: unlike the
    forward statistics, they include what `start` flushed from the RX queue."""

    rx: int
    rx_errors: int
    rx_nombuf: int
    tx: int
    tx_errors: int


_PORT = re.compile(
    r"RX-packets:\s*(\d+).*?RX-errors:\s*(\d+).*?RX-nombuf:\s*(\d+).*?"
    r"TX-packets:\s*(\d+)\s+TX-errors:\s*(\d+)", re.S)


def parse_port_stats(text: str) -> PortCounters:
    m = _PORT.search(text)
    if m is None:
        raise TestpmdError(f"no port statistics in testpmd's output: {text[-2000:]!r}")
    return PortCounters(*(int(x) for x in m.groups()))


_STATS = re.compile(
    r"Accumulated forward statistics.*?RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+).*?"
    r"TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)", re.S)


def parse_stats(text: str) -> PortStats:
    """The accumulated statistics block of `stop`'s output."""
    m = _STATS.search(text)
    if m is None:
        raise TestpmdError(f"no forward statistics in testpmd's output: {text[-2000:]!r}")
    return PortStats(*(int(x) for x in m.groups()))


def virtio_user_vdev(path: str, *, queue_size: int = 256, mrg_rxbuf: bool = True,
                     in_order: bool = False, vectorized: bool = False,
                     packed: bool = False) -> str:
    """The --vdev of a virtio-user port on the vhost-user socket `path`."""
    return (f"net_virtio_user0,path={path},queues=1,queue_size={queue_size},"
            f"mrg_rxbuf={int(mrg_rxbuf)},in_order={int(in_order)},"
            f"vectorized={int(vectorized)},packed_vq={int(packed)}")


def vhost_vdev(path: str) -> str:
    """The --vdev of DPDK's vhost PMD listening on `path` (the reference backend)."""
    return f"net_vhost0,iface={path},queues=1"


class Testpmd:
    """One interactive testpmd process with one port (`vdev`), forwarding on one core.

    `lcores` is the EAL core list; the forwarding core is the one after the main core
    (`main_lcore`, default the first listed). `txpkts` sets the frame length of txonly.
    """

    def __init__(self, vdev: str, *, mode: str = "io", txpkts: int = 64,
                 lcores: str = "0,1", main_lcore: int | None = None,
                 memory_mb: int = 1024, mbufs: int = 8192, hugepages: bool = False,
                 prefix: str | None = None, timeout: float = 30.0,
                 binary: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"forward mode {mode!r}: one of {', '.join(MODES)}")
        binary = binary or testpmd_path()
        if binary is None:
            raise TestpmdError(f"{TESTPMD} is not installed (Debian: apt-get install "
                               "dpdk-dev)")
        self.prefix = prefix or f"vhn{os.getpid()}_{id(self) & 0xFFFF:x}"
        eal = ["-l", lcores, "--no-pci", "--file-prefix", self.prefix, "--vdev", vdev,
               "--log-level", "lib.eal:error", "--log-level", "pmd.net.virtio.init:info"]
        if main_lcore is not None:
            eal += ["--main-lcore", str(main_lcore)]
        if not hugepages:
            eal += ["--no-huge", "-m", str(memory_mb)]
        app = ["-i", f"--forward-mode={mode}", f"--txpkts={txpkts}", "--nb-cores=1",
               f"--total-num-mbufs={mbufs}", "--no-lsc-interrupt"]
        # stdout is a pipe: line-buffered by stdbuf, or the statistics `stop` prints
        # would wait in stdio's buffer until exit (the prompt is written unbuffered)
        stdbuf = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        self.argv = [*stdbuf, binary, *eal, "--", *app]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._out = bytearray()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._wait_prompt(0, timeout)
        except TestpmdError:
            self.kill()
            raise

    # -- the pipe ----------------------------------------------------------------------
    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._out += b"\0EOF"
                    self._cond.notify_all()
                    return
                self._out += chunk
                self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return self._out.replace(b"\0EOF", b"").decode(errors="replace")

    def _wait_prompt(self, start: int, timeout: float) -> str:
        """The output from byte `start` up to the next prompt."""
        deadline = time.monotonic() + timeout
        want = PROMPT.encode()
        with self._cond:
            while True:
                at = self._out.find(want, start)
                if at >= 0:
                    return self._out[start:at].decode(errors="replace")
                if self._out.endswith(b"\0EOF"):
                    raise TestpmdError(f"testpmd exited ({self.proc.poll()}): "
                                       f"{self.output[-3000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestpmdError(f"testpmd gave no prompt in {timeout:.0f} s: "
                                       f"{self.output[-3000:]}")
                self._cond.wait(left)

    def command(self, line: str, timeout: float = 30.0) -> str:
        """Run one testpmd command; its output."""
        with self._cond:
            start = len(self._out)
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise TestpmdError(f"testpmd is gone: {self.output[-3000:]}") from None
        return self._wait_prompt(start, timeout)

    # -- forwarding --------------------------------------------------------------------
    def start(self) -> None:
        self.command("start")

    def stop(self) -> PortStats:
        """Stop forwarding (the port stays up); the statistics since `start`."""
        return parse_stats(self.command("stop"))

    def paths(self) -> tuple[str, str]:
        """The Tx and Rx paths the virtio PMD chose ("standard", "inorder", "mergeable
        buffer", "vectorized", ...), from its log; ("", "") when it logged none."""
        text = self.output
        tx = re.findall(r"using (.+?) Tx path", text)
        rx = re.findall(r"using (.+?) Rx path", text)
        return (tx[-1] if tx else "", rx[-1] if rx else "")

    def port_stats(self) -> PortCounters:
        return parse_port_stats(self.command("show port stats 0"))

    def close(self, timeout: float = 15.0) -> int:
        """`quit` (stops and closes the port: GET_VRING_BASE and the disconnect);
        killed if it does not exit in time. Returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(2)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        self.proc.wait(5)

    def __enter__(self) -> Testpmd:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- runs: testpmd's virtio-user against our backend, or against DPDK's vhost PMD -------
@dataclass
class DpdkRun:
    """One timed run of testpmd's virtio-user port against a backend."""

    backend: str  # "vhostnet" (ring: c or python) or "dpdk-vhost"
    mode: str  # testpmd's forward mode on the virtio-user side
    size: int  # frame bytes
    vdev: str
    seconds: float
    stats: PortStats  # the virtio-user side's, over the timed window
    port: PortCounters  # the virtio-user port's, since it started
    counts: dict | None  # our backend's (apps.bench.run_backend), None for DPDK's
    frames_per_s: float
    paths: tuple[str, str] = ("", "")  # the virtio PMD's Tx and Rx paths

    def problems(self, queue_size: int = 256) -> list[str]:
        """What breaks the run's invariants: no queue declared broken, frames counted on
        both sides agree, frames forwarded back unchanged. Empty when it held."""
        c, s, p = self.counts, self.stats, self.port
        out = []
        if p.rx_errors or p.tx_errors:
            out.append(f"testpmd counted {p.rx_errors} RX and {p.tx_errors} TX errors")
        if self.mode == "txonly" and s.tx == 0:
            out.append("testpmd sent nothing")
        if self.mode in ("rxonly", "io") and s.rx == 0:
            out.append("testpmd received nothing")
        if c is None:
            return out
        if c["ring_errors"]:
            out.append(f"the backend declared a queue broken ({c['ring_errors']} ring "
                       "errors)")
        if self.mode in ("txonly", "io"):
            if c["guest_tx_frames"] != p.tx:
                out.append(f"testpmd sent {p.tx} frames, the backend counted "
                           f"{c['guest_tx_frames']}")
            elif self.mode == "txonly" and c["guest_tx_bytes"] != p.tx * self.size:
                out.append(f"{c['guest_tx_bytes']} bytes in {p.tx} frames of {self.size}")
        if self.mode in ("rxonly", "io"):
            # written to the used ring and not (yet) read by testpmd: at most a ring
            unread = c["rx_used"] - p.rx
            if not 0 <= unread <= queue_size:
                out.append(f"the backend wrote {c['rx_used']} RX buffers, testpmd "
                           f"received {p.rx} frames")
        if self.mode == "io" and c["mismatched"]:
            out.append(f"{c['mismatched']} frames came back different")
        return out


def _timed(virtio: Testpmd, seconds: float) -> tuple[PortStats, float]:
    virtio.start()
    t0 = time.monotonic()
    time.sleep(seconds)
    stats = virtio.stop()
    return stats, time.monotonic() - t0


def _rate(mode: str, stats: PortStats, dt: float) -> float:
    return (stats.tx if mode == "txonly" else stats.rx) / dt


def _pin(pid: int, cpu: int) -> None:
    """Keep a backend on `cpu`, away from the virtio-user side's forwarding core (the
    second one), as DPDK's vhost PMD forwards on its own core; nothing on one CPU."""
    import contextlib

    if (os.cpu_count() or 1) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu})


def run_vhostnet(mode: str, size: int, seconds: float, *, ring: str = "c",
                 queue_size: int = 256, mrg_rxbuf: bool = True, in_order: bool = False,
                 vectorized: bool = False, packed: bool = False,
                 hugepages: bool = False) -> DpdkRun:
    """testpmd's virtio-user port in `mode` against our backend (`python -m apps.bench
    backend`: a sink for txonly, a source of `size`-byte frames for rxonly and io, whose
    frames io forwards back). After `stop` the port stays up a moment so that we take
    what testpmd counted as sent, then `quit`; our counts come when we are stopped."""
    import tempfile

    from apps.bench import _start_backend, _stop_backend

    with tempfile.TemporaryDirectory(prefix="vhn-dpdk-") as d:
        path = os.path.join(d, "vhost.sock")
        proc = _start_backend("sink" if mode == "txonly" else "source", path, size, ring)
        counts = None
        try:
            _pin(proc.pid, 0)
            vdev = virtio_user_vdev(path, queue_size=queue_size, mrg_rxbuf=mrg_rxbuf,
                                    in_order=in_order, vectorized=vectorized,
                                    packed=packed)
            with Testpmd(vdev, mode=mode, txpkts=size, hugepages=hugepages) as virtio:
                stats, dt = _timed(virtio, seconds)
                time.sleep(0.3)  # what testpmd sent before `stop` reaches us
                port = virtio.port_stats()
                paths = virtio.paths()
            counts = _stop_backend(proc)
        finally:
            if counts is None:
                proc.kill()
                proc.wait(5)
    return DpdkRun(f"vhostnet-{ring}", mode, size, vdev, dt, stats, port, counts,
                   _rate(mode, stats, dt), paths)


@dataclass
class RestartRun:
    """`run_restarts`: per kill, the seconds until frames moved both ways again."""

    recovered_s: list[float | None]  # None: not within the deadline
    port: PortCounters  # the virtio-user port's, over the whole run
    counts: dict  # the last backend's (apps.bench.run_backend)
    log: str  # what every backend wrote on stderr

    def problems(self, deadline: float) -> list[str]:
        out = [f"restart {i + 1}: frames did not move both ways within {deadline:.0f} s"
               for i, s in enumerate(self.recovered_s) if s is None or s > deadline]
        if self.port.rx_errors or self.port.tx_errors:
            out.append(f"testpmd counted {self.port.rx_errors} RX and "
                       f"{self.port.tx_errors} TX errors")
        if self.counts["ring_errors"] or "queue stopped" in self.log:
            out.append("a backend declared a queue broken")
        if self.counts["mismatched"]:
            out.append(f"{self.counts['mismatched']} frames came back different")
        return out


def run_restarts(kills: int, *, traffic_s: float = 0.5, deadline: float = 5.0,
                 size: int = 64, packed: bool = False) -> RestartRun:
    """testpmd's virtio-user port in server mode (`server=1`: it listens, we connect and
    it takes us back after a reconnect) in io mode, against our backend as a source: what
    we fill its RX ring with comes back on its TX ring, so frames cross both rings at full
    rate. The backend is killed (SIGKILL, mid-traffic) `kills` times and a new one started
    each time. virtio-user notices a dead backend and accepts a new one when its link
    status is read, so we ask for it (`show port info`) while waiting."""
    import tempfile

    from apps.bench import _start_backend, _stop_backend

    with tempfile.TemporaryDirectory(prefix="vhn-dpdk-") as d:
        path = os.path.join(d, "vhost.sock")
        target = "connect:" + path
        with open(os.path.join(d, "backend.log"), "w+") as log:
            proc = _start_backend("source", target, size, stderr=log)
            recovered: list[float | None] = []
            counts = None
            try:
                _pin(proc.pid, 0)
                # (the port's probe waits for a backend to connect: ours is already trying)
                with Testpmd(virtio_user_vdev(path, packed=packed) + ",server=1", mode="io",
                             txpkts=size) as virtio:
                    virtio.start()
                    for _ in range(kills):
                        time.sleep(traffic_s)
                        proc.kill()
                        proc.wait()
                        t0 = time.monotonic()
                        proc = _start_backend("source", target, size, stderr=log)
                        _pin(proc.pid, 0)
                        before = virtio.port_stats()
                        took = None
                        while time.monotonic() - t0 < deadline:
                            time.sleep(0.05)
                            virtio.command("show port info 0")
                            now = virtio.port_stats()
                            if now.rx > before.rx + 1000 and now.tx > before.tx + 1000:
                                took = time.monotonic() - t0
                                break
                        recovered.append(took)
                    time.sleep(traffic_s)
                    virtio.stop()
                    port = virtio.port_stats()
                counts = _stop_backend(proc)
            finally:
                if counts is None:
                    proc.kill()
                    proc.wait(5)
            log.seek(0)
            text = log.read()
    return RestartRun(recovered, port, counts, text)


def run_dpdk_vhost(mode: str, size: int, seconds: float, *, queue_size: int = 256,
                   mrg_rxbuf: bool = True, packed: bool = False,
                   hugepages: bool = False) -> DpdkRun:
    """The same virtio-user port against DPDK's vhost PMD in a second testpmd (rxonly
    when the virtio side sends, txonly when it receives), forwarding on the other core."""
    import tempfile

    peer = {"txonly": "rxonly", "rxonly": "txonly"}.get(mode)
    if peer is None:
        raise ValueError(f"the DPDK reference runs txonly or rxonly, not {mode}")
    with tempfile.TemporaryDirectory(prefix="vhn-dpdk-") as d:
        path = os.path.join(d, "vhost.sock")
        with Testpmd(vhost_vdev(path), mode=peer, txpkts=size, main_lcore=1,
                     hugepages=hugepages) as vhost:
            vhost.start()
            vdev = virtio_user_vdev(path, queue_size=queue_size, mrg_rxbuf=mrg_rxbuf,
                                    packed=packed)
            with Testpmd(vdev, mode=mode, txpkts=size, hugepages=hugepages) as virtio:
                stats, dt = _timed(virtio, seconds)
                port = virtio.port_stats()
                paths = virtio.paths()
            vhost.stop()
    return DpdkRun("dpdk-vhost", mode, size, vdev, dt, stats, port, None,
                   _rate(mode, stats, dt), paths)
