"""`vhostnet bench boot`: network boot and TFTP on the bundled guest, ours against libslirp.

Boot time: wall seconds from QEMU's start to the guest's ready marker (`QemuVM.wait_ready`,
`ready_seconds`), the median of `repeat` boots of each variant (the variants take turns,
so a drift of the machine's speed touches them all alike):

kernel — `-kernel/-initrd` on our vhost-user NIC: the baseline every test boots; nothing
         crosses the NIC before Linux runs.
http   — `-boot n` from us: `vhostnet serve --boot-kernel K --boot-initrd I --boot-append A`;
         QEMU's iPXE leases from us, fetches our script, the kernel and the initrd by HTTP.
tftp   — `-boot n` from us by TFTP alone: `--tftp DIR --bootfile tftpboot.ipxe`, DIR holding
         copies of the kernel and initrd and a script naming them relatively (as
         tests/e2e/test_netboot.py does); iPXE fetches all three by TFTP.
slirp  — `-boot n` from QEMU's `-netdev user,tftp=DIR,bootfile=tftpboot.ipxe` (libslirp),
         the same DIR.

Every NIC is a virtio-net-pci with QEMU's default ROM, the same iPXE for every variant:
efi-virtio.rom from Debian's ipxe-qemu on QEMU 7.2 (`default_rom()` asks QEMU's `info qtree`
and the JSON records it). It is not named on the command line: QEMU patches the PCI IDs of
its default ROM only, and this ROM says 1af4:1041 (a modern-only virtio-net) where the
transitional NIC is 1af4:1000, so `romfile=efi-virtio.rom` spelt out makes SeaBIOS skip the
ROM and `-boot n` finds nothing to boot. `vhostnet serve` runs in its own process, as for
`bench vm`, fresh for each boot. The kernel's download is timed from its request to the
initrd's request (iPXE asks for the initrd as soon as the kernel is in), both seen as the
server opening the file: every variant serves the copies in DIR (--boot-kernel names them
too), and an inotify watch on DIR (IN_OPEN) stamps each open, with nothing in the data path
of either backend (our TFTP and HTTP servers and slirp's TFTP open a file when it is asked
for).

What the servers granted (blksize, windowsize: their OACKs): ours from `vhostnet serve`'s
info log (`--log-format json`, the TFTP server's line for each request); slirp's from one
more, untimed netboot from slirp with a capture (`-object filter-dump`, 96 bytes of each
frame), in which the guest then repeats each download command on the small script file: a
capture costs QEMU a write per frame, so no timed run has one.

TFTP download: a file of `size_mib` MiB of random bytes in DIR, fetched by the booted guest
of the last tftp and slirp boots (eth0 up, a lease from udhcpc, an untimed fetch of the
script first: ARP, the server's first session) into its tmpfs, timed inside the guest as
`bench vm` times wget (the guest's monotonic clock around the command, two clock reads taken
off), then SHA-256 checked there: busybox `tftp -b 1468` (window 1: busybox has no
windowsize), and `vhn-tftp -b 1468 -w 16` and `-w 1` (ci/guest/tools/vhn-tftp.c, RFC 7440).
slirp gets `-w 1` only when it granted a window to `-w 16` (libslirp 4.7 answers no
windowsize, so its `-w 16` run is a window-1 run already). The blksize and windowsize shown
are what the server answered (its OACK).

Call order: `bench_boot(...)` returns a `BootBench`; `print_boot(result)` prints it;
`dataclasses.asdict(result)` is its JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apps.bench.vm import GUEST_MEMORY_MB, _timed, stop_process
from apps.harness.vm import GuestError, GuestImage, QemuVM, vhost_user_nic_args

GUEST_MAC = "52:54:00:12:34:56"
BOOT_FILE = "tftpboot.ipxe"
KERNEL, INITRD = "vmlinuz", "initrd.img"  # the copies in DIR
BIG = "big.bin"  # the download
HOST = "10.0.2.2"  # ours and slirp's, alike
BLKSIZE = 1468  # what busybox is asked for, and vhn-tftp: 1500 - IP, UDP, TFTP headers
# (variant, what the table calls it)
VARIANTS = (
    ("kernel", "-kernel/-initrd, ours"),
    ("http", "-boot n, HTTP from ours"),
    ("tftp", "-boot n, TFTP from ours"),
    ("slirp", "-boot n, TFTP from slirp"),
)
# (client, window asked or None, the guest command: {f} the file, {out} where it goes)
CLIENTS = (
    ("busybox", None, f"tftp -g -r {{f}} -l {{out}} -b {BLKSIZE} {HOST}"),
    ("vhn-tftp", 16, f"vhn-tftp -v -b {BLKSIZE} -w 16 -o {{out}} {HOST} {{f}}"),
    ("vhn-tftp", 1, f"vhn-tftp -v -b {BLKSIZE} -w 1 -o {{out}} {HOST} {{f}}"),
)


@dataclass
class BootResult:
    variant: str
    label: str
    boot_s: float  # median wall seconds from QEMU's start to the ready marker
    boots_s: list[float]
    kernel_s: float | None = None  # median, the kernel's first open to the initrd's
    kernels_s: list[float] = field(default_factory=list)
    kernel_mbit_s: float | None = None
    # TFTP: what the server answered iPXE's kernel request (its OACK), e.g. blksize
    kernel_options: dict[str, str] | None = None


@dataclass
class TftpResult:
    backend: str  # ours or slirp
    client: str  # busybox or vhn-tftp
    window_asked: int | None  # vhn-tftp's -w; None: busybox, which cannot ask
    blksize: int | None  # what the server granted (512 with no OACK); None: unknown
    windowsize: int | None  # likewise (1 when the OACK has none)
    options: dict[str, str] | None  # the server's OACK, whole ({}: none; None: unknown)
    seconds: float
    mbit_s: float
    sha256_ok: bool


@dataclass
class BootBench:
    repeat: int
    size_mib: int
    kernel_bytes: int
    initrd_bytes: int
    rom: str = ""  # virtio-net-pci's ROM, QEMU's default (info qtree)
    boot: list[BootResult] = field(default_factory=list)
    tftp: list[TftpResult] = field(default_factory=list)
    # boot_s, kernel_s, kernel_mbit_s: variant -> value / slirp's; tftp_seconds and
    # tftp_mbit_s: "backend client [-w N]" -> value / slirp's with the same client (and
    # the same -w, else slirp's other vhn-tftp run)
    ratios_to_slirp: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- the backends ------------------------------------------------------------------------

def _serve(work: Path, args: list[str], tag: str) -> tuple[subprocess.Popen, Path, Path]:
    """`vhostnet serve` in its own process with its info log as JSON lines in a file;
    (process, socket, log) once the socket listens."""
    sock, log = work / f"{tag}.sock", work / f"{tag}.log"
    for p in (sock, log):
        p.unlink(missing_ok=True)
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "apps.cli", "serve", "--socket-path", str(sock),
             "--no-control", "--log-level", "info", "--log-format", "json", *args],
            stdout=subprocess.DEVNULL, stderr=logf)
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"vhostnet serve {' '.join(args)} did not listen: "
                               f"{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, sock, log


def _log_lines(log: Path) -> list[tuple[float, str]]:
    """(unix time, message) of each JSON line of a serve log."""
    out = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
            out.append((float(rec["ts"]), str(rec["msg"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


_TFTP_LINE = re.compile(r"TFTP '(?P<name>[^']*)' \(\w+\) to \S+ from port \d+: \d+ bytes, "
                        r"blksize (?P<blk>\d+), windowsize (?P<win>\d+)"
                        r"(?:, options (?P<opts>\{.*\}))?$")


def _our_requests(log: Path) -> list[tuple[float, str, dict[str, str]]]:
    """The TFTP requests our serve log shows, in order: (when, the file, the options the
    server answered: {} for none)."""
    import ast

    out = []
    for ts, msg in _log_lines(log):
        if m := _TFTP_LINE.search(msg):
            opts = ast.literal_eval(m["opts"]) if m["opts"] else {}
            out.append((ts, m["name"], {str(k): str(v) for k, v in opts.items()}))
    return out


class OpenWatch:
    """Stamps each file opened in a directory (inotify IN_OPEN), from a thread: `opens`
    holds (time.time(), file name) in order. Linux only; `close()` stops it."""

    IN_OPEN = 0x20

    def __init__(self, directory: Path) -> None:
        import ctypes
        import threading

        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, str(directory).encode(),
                                                 self.IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {directory}")
        self.opens: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            now = time.time()
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            off = 0
            while off + 16 <= len(data):
                _, mask, _, n = struct.unpack_from("iIII", data, off)
                name = data[off + 16:off + 16 + n].split(b"\0", 1)[0].decode(errors="replace")
                off += 16 + n
                if mask & self.IN_OPEN and name:
                    self.opens.append((now, name))

    def since(self, t0: float) -> list[tuple[float, str]]:
        return [(t, n) for t, n in list(self.opens) if t >= t0]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.fd)


def _pcap_tftp(path: Path) -> list[tuple[float, int, int, bytes]]:
    """The UDP datagrams of a classic pcap file that QEMU's filter-dump wrote: (time,
    source port, destination port, payload, possibly cut short)."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24:
        return []
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack_from(endian + "IIII", data, off)
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        udp = 14 + (frame[14] & 15) * 4
        sport, dport = struct.unpack_from("!HH", frame, udp)
        out.append((sec + usec / 1e6, sport, dport, frame[udp + 8:]))
    return out


def _tftp_options(payload: bytes) -> dict[str, str]:
    """The name/value pairs of an OACK (or of an RRQ after its file name and mode)."""
    parts = payload.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return {parts[i].decode(errors="replace").lower(): parts[i + 1].decode(errors="replace")
            for i in range(0, len(parts) - 1, 2)}


def _slirp_requests(pcap: Path) -> list[tuple[float, str, dict[str, str] | None]]:
    """The RRQs in slirp's capture, in order: (when, the file, slirp's OACK options; {}
    when it answered with DATA at once, None when the capture has no answer)."""
    packets = _pcap_tftp(pcap)
    out = []
    for i, (ts, sport, dport, payload) in enumerate(packets):
        if dport != 69 or payload[:2] != b"\0\1":
            continue
        name = payload[2:].split(b"\0", 1)[0].decode(errors="replace").lstrip("/")
        answer = None
        for _, _, dport2, reply in packets[i + 1:]:
            if dport2 == sport and reply[:2] in (b"\0\3", b"\0\5", b"\0\6"):
                answer = _tftp_options(reply[2:]) if reply[:2] == b"\0\6" else {}
                break
        out.append((ts, name, answer))
    return out


# -- one boot ----------------------------------------------------------------------------

@dataclass
class _Boot:
    seconds: float
    kernel_s: float | None
    kernel_options: dict[str, str] | None  # ours: from the log; slirp: with a capture only
    then: object = None  # what `then` returned


def _kernel_timing(opens: list[tuple[float, str]]) -> float | None:
    """Seconds from the kernel's first open to the initrd's, or None."""
    t_k = next((t for t, name in opens if name == KERNEL), None)
    t_i = next((t for t, name in opens if name == INITRD), None)
    return None if t_k is None or t_i is None or t_i < t_k else round(t_i - t_k, 3)


def _boot(variant: str, image: GuestImage, root: Path, work: Path, watch: OpenWatch,
          then: Callable[[QemuVM, Callable[[], list]], object] | None = None,
          capture: bool = False) -> _Boot:
    """Boot `variant` once; with `then`, run it on the booted guest before the teardown
    (it gets the VM and a function returning the TFTP requests seen so far, with the
    options granted: our log's, or with `capture` (slirp) the capture's)."""
    append = QemuVM(image).kernel_append()
    proc = None
    pcap = work / "slirp.pcap"
    try:
        if variant == "slirp":
            pcap.unlink(missing_ok=True)
            nic = ["-netdev", f"user,id=n0,tftp={root},bootfile={BOOT_FILE}",
                   "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}"]
            if capture:
                nic += ["-object", f"filter-dump,id=f0,netdev=n0,file={pcap},maxlen=96"]

            def requests():
                return _slirp_requests(pcap)
        else:
            args = {"kernel": [],
                    "http": ["--boot-kernel", str(root / KERNEL), "--boot-initrd",
                             str(root / INITRD), "--boot-append", append],
                    "tftp": ["--tftp", str(root), "--bootfile", BOOT_FILE]}[variant]
            proc, sock, log = _serve(work, args, variant)
            nic = vhost_user_nic_args(sock, mac=GUEST_MAC)

            def requests():
                return _our_requests(log)
        vm = QemuVM(image, netboot=variant != "kernel", nic_args=nic,
                    memory_mb=GUEST_MEMORY_MB)
        try:
            t0 = time.time()
            vm.start()
            vm.wait_ready(timeout=180)
            seconds = vm.ready_seconds
            kernel_s = None if variant == "kernel" else _kernel_timing(watch.since(t0))
            options = None
            if variant in ("tftp", "slirp"):  # what the server granted iPXE for the kernel
                options = next((o for _, name, o in requests() if name == KERNEL), None)
            out = _Boot(round(seconds, 3), kernel_s, options)
            if then is not None:
                out.then = then(vm, requests)
            return out
        finally:
            vm.stop()
    finally:
        if proc is not None:
            stop_process(proc)


# -- the downloads -----------------------------------------------------------------------

_VHN_RE = re.compile(r"^(\d+) bytes in [\d.]+ s$", re.M)
_VHN_IN_FORCE = re.compile(r"vhn-tftp: blksize (\d+), windowsize (\d+),")


def _downloads(backend: str, nbytes: int, sha256: str) -> Callable:
    """What `_boot` runs on the guest of the last tftp or slirp boot: the clients in turn,
    each timed in the guest, its file hashed there. The options granted come from our log
    (ours) or, for slirp, from the probe boot afterwards (see `_probe`); what vhn-tftp
    says was in force decides whether slirp gets a -w 1 run."""

    def run(vm: QemuVM, requests: Callable[[], list]) -> list[TftpResult]:
        if "vhn-tftp" not in vm.run_ok("command -v vhn-tftp || echo none"):
            raise GuestError("the guest has no vhn-tftp: an image built before "
                             "ci/guest/tools/vhn-tftp.c (GuestImage.default() rebuilds it)")
        vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2 >/dev/null 2>&1", 60)
        vm.run_ok(f"tftp -g -r {BOOT_FILE} -l /dev/null {HOST}", 60)  # ARP, a first session
        overhead, _ = _timed(vm, ":", 30)
        slow = max(120.0, nbytes / 2**20 * 6)
        out: list[TftpResult] = []
        windows: dict[int, int] = {}  # vhn-tftp's -w -> the window it ran with
        for client, window, cmd in CLIENTS:
            if backend == "slirp" and window == 1 and windows.get(16, 1) == 1:
                continue  # slirp granted no window to -w 16: that run was a window-1 run
            seen = len([r for r in requests() if r[1] == BIG])
            line = cmd.format(f=BIG, out="/tmp/f")
            try:
                secs, text = _timed(vm, f"{line} 2>/tmp/e", slow)
            except GuestError as e:
                err = vm.run("cat /tmp/e").output.strip()
                raise GuestError(f"{backend}: {line} failed: {err}") from e
            err = vm.run_ok("cat /tmp/e")
            got = vm.run_ok("sha256sum /tmp/f; rm -f /tmp/f /tmp/e").split()[0]
            if client == "vhn-tftp":
                m = _VHN_RE.search(text)
                if m is None or int(m.group(1)) != nbytes:
                    raise GuestError(f"{backend}: {line} said {text!r}")
                if m := _VHN_IN_FORCE.search(err):
                    windows[window] = int(m.group(2))
            reqs = [r for r in requests() if r[1] == BIG][seen:]
            options = reqs[0][2] if reqs else None  # (slirp: filled in by the probe)
            blksize = windowsize = None
            if options is not None:
                blksize = int(options.get("blksize", 512))
                windowsize = int(options.get("windowsize", 1))
            elif m := _VHN_IN_FORCE.search(err):  # what vhn-tftp saw in force
                blksize, windowsize = int(m.group(1)), int(m.group(2))
            secs = max(secs - overhead, 1e-6)
            out.append(TftpResult(
                backend=backend, client=client, window_asked=window, blksize=blksize,
                windowsize=windowsize, options=options, seconds=round(secs, 3),
                mbit_s=round(nbytes * 8 / secs / 1e6, 2), sha256_ok=got == sha256))
        return out

    return run


def _probe(rows: list[TftpResult]) -> Callable:
    """What `_boot` runs on the untimed slirp boot with a capture: each of `rows`' download
    commands again, on the small script file; slirp's answer (OACK options) to each."""

    def run(vm: QemuVM, requests: Callable[[], list]) -> list[dict[str, str] | None]:
        vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2 >/dev/null 2>&1", 60)
        seen = len([r for r in requests() if r[1] == BOOT_FILE])
        for r in rows:
            cmd = next(c for client, w, c in CLIENTS if (client, w) == (r.client,
                                                                         r.window_asked))
            vm.run_ok(cmd.format(f=BOOT_FILE, out="/dev/null") + " 2>/dev/null", 60)
        got = [o for _, name, o in requests() if name == BOOT_FILE][seen:]
        return got if len(got) == len(rows) else [None] * len(rows)

    return run


# -- the whole ---------------------------------------------------------------------------

def _layout(root: Path, image: GuestImage, append: str, size_mib: int) -> str:
    """DIR: the kernel and initrd copied, the script, the download; its SHA-256."""
    shutil.copyfile(image.kernel, root / KERNEL)
    shutil.copyfile(image.initrd, root / INITRD)
    (root / BOOT_FILE).write_text(f"#!ipxe\nkernel {KERNEL} initrd={INITRD} {append}\n"
                                  f"initrd --name {INITRD} {INITRD}\nboot\n")
    h = hashlib.sha256()
    with open(root / BIG, "wb") as f:
        for _ in range(size_mib):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


def default_rom() -> str:
    """The ROM QEMU gives a virtio-net-pci by default, from its `info qtree` ("?" when it
    cannot tell)."""
    try:
        out = subprocess.run(
            ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-S", "-monitor", "stdio",
             "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"],
            input="info qtree\nquit\n", capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r'dev: virtio-net-pci.*?romfile = "([^"]*)"', out, re.S)
    return m.group(1) if m else "?"


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def bench_boot(repeat: int = 2, size_mib: int = 64, backends=("ours", "slirp"),
               progress: Callable[[str], None] | None = None) -> BootBench:
    """The four boot variants, `repeat` times each in turns, then the downloads on the
    guests of the last tftp and slirp boots. `backends`: ours (kernel, http, tftp) and/or
    slirp; other names are for `bench vm` and ignored here."""
    if repeat < 1 or size_mib < 1:
        raise ValueError("bench boot: --repeat and --size-mib must be at least 1")
    if shutil.which("qemu-system-x86_64") is None:
        raise RuntimeError("bench boot: qemu-system-x86_64 is not installed")
    say = progress or (lambda s: None)
    image = GuestImage.default()  # (rebuilt first when ci/guest/ changed: vhn-tftp)
    variants = [(v, label) for v, label in VARIANTS
                if (v == "slirp" and "slirp" in backends)
                or (v != "slirp" and "ours" in backends)]
    res = BootBench(repeat, size_mib, image.kernel.stat().st_size, image.initrd.stat().st_size,
                    default_rom())
    with tempfile.TemporaryDirectory(prefix="vhostnet-benchboot-") as d:
        work = Path(d)
        root = work / "tftp"
        root.mkdir()
        sha = _layout(root, image, QemuVM(image).kernel_append(), size_mib)
        runs: dict[str, list[_Boot]] = {v: [] for v, _ in variants}
        watch = OpenWatch(root)
        try:
            for i in range(repeat):
                for v, label in variants:
                    then = (_downloads("ours" if v == "tftp" else "slirp", size_mib << 20, sha)
                            if i == repeat - 1 and v in ("tftp", "slirp") else None)
                    say(f"boot {i + 1}/{repeat}: {label}"
                        + (f", then {size_mib} MiB by TFTP" if then else ""))
                    b = _boot(v, image, root, work, watch, then)
                    runs[v].append(b)
                    res.tftp += b.then or []
            probe = None
            slirp_rows = [r for r in res.tftp if r.backend == "slirp"]
            if "slirp" in runs:
                say("untimed: -boot n, TFTP from slirp with a capture (what slirp grants)")
                probe = _boot("slirp", image, root, work, watch, _probe(slirp_rows),
                              capture=True)
                runs["slirp"][-1].kernel_options = probe.kernel_options
                for r, options in zip(slirp_rows, probe.then, strict=True):
                    if options is not None:
                        r.options = options
                        r.blksize = int(options.get("blksize", 512))
                        r.windowsize = int(options.get("windowsize", 1))
        finally:
            watch.close()
        for v, label in variants:
            boots = runs[v]
            kernel = [b.kernel_s for b in boots if b.kernel_s]
            k = _median(kernel)
            res.boot.append(BootResult(
                v, label, _median([b.seconds for b in boots]), [b.seconds for b in boots],
                k, kernel, round(res.kernel_bytes * 8 / k / 1e6, 2) if k else None,
                boots[-1].kernel_options if v in ("tftp", "slirp") else None))
    _ratios(res)
    _notes(res)
    return res


def _key(r: TftpResult) -> str:
    return f"{r.backend} {r.client}" + (f" -w {r.window_asked}" if r.window_asked else "")


def _slirp_peer(res: BootBench, r: TftpResult) -> TftpResult | None:
    """slirp's row for the same client and window asked, else for the same client."""
    same = [s for s in res.tftp if s.backend == "slirp" and s.client == r.client]
    return next((s for s in same if s.window_asked == r.window_asked), None) or (
        same[0] if same else None)


def _ratios(res: BootBench) -> None:
    base = next((b for b in res.boot if b.variant == "slirp"), None)
    if base is not None:
        for key in ("boot_s", "kernel_s", "kernel_mbit_s"):
            ref = getattr(base, key)
            if ref:
                res.ratios_to_slirp[key] = {b.variant: round(getattr(b, key) / ref, 3)
                                            for b in res.boot if getattr(b, key)}
    for key in ("seconds", "mbit_s"):
        out = {}
        for r in res.tftp:
            peer = _slirp_peer(res, r)
            if peer is not None and getattr(peer, key):
                out[_key(r)] = round(getattr(r, key) / getattr(peer, key), 3)
        if out:
            res.ratios_to_slirp[f"tftp_{key}"] = out


def _notes(res: BootBench) -> None:
    for b in res.boot:
        if b.variant != "kernel" and b.kernel_s is None:
            res.notes.append(f"{b.variant}: the kernel's download could not be timed (no "
                             "request for it, or for the initrd, in the log or capture)")
    bad = [_key(r) for r in res.tftp if not r.sha256_ok]
    if bad:
        res.notes.append("SHA-256 mismatch: " + ", ".join(bad))
    slirp = [r for r in res.tftp if r.backend == "slirp" and r.window_asked]
    if slirp and all(r.windowsize == 1 for r in slirp):
        oack = slirp[0].options
        res.notes.append("slirp granted no windowsize"
                         + ("" if oack is None else " (its OACK: " + (", ".join(
                             f"{k}={v}" for k, v in oack.items()) or "none") + ")")
                         + ": vhn-tftp -w 16 ran at window 1, so -w 1 was not run on it")


def print_boot(res: BootBench) -> None:
    mib = res.kernel_bytes / 2**20
    print(f"boot: bundled guest under TCG, {res.rom}, kernel {mib:.1f} MiB, initrd "
          f"{res.initrd_bytes / 2**20:.1f} MiB; median of {res.repeat}; (x.xx) = ratio to "
          "slirp's TFTP boot")
    print(f"{'variant':<26} {'boot s':>14} {'kernel s':>14} {'kernel Mbit/s':>15}  "
          "TFTP options (kernel)")
    ratios = res.ratios_to_slirp

    def cell(value, key, name, fmt, width):
        if value is None:
            return f"{'-':>{width}}"
        text = fmt.format(value)
        r = ratios.get(key, {}).get(name)
        return f"{text + (f' ({r:.2f})' if r is not None else ''):>{width}}"

    for b in res.boot:
        opts = " ".join(f"{k}={v}" for k, v in (b.kernel_options or {}).items())
        if b.kernel_options == {}:
            opts = "(none: 512-byte blocks)"
        print(f"{b.label:<26} {cell(b.boot_s, 'boot_s', b.variant, '{:.2f}', 14)} "
              f"{cell(b.kernel_s, 'kernel_s', b.variant, '{:.2f}', 14)} "
              f"{cell(b.kernel_mbit_s, 'kernel_mbit_s', b.variant, '{:.1f}', 15)}  {opts}".rstrip())
    if res.tftp:
        print(f"tftp: {res.size_mib} MiB of random bytes into the guest's tmpfs, timed in the "
              "guest, SHA-256 checked; (x.xx) = ratio to slirp with the same client")
        print(f"{'backend':<7} {'client':<24} {'blksize':>7} {'window':>6} {'seconds':>14} "
              f"{'Mbit/s':>14}  SHA-256")
        for r in res.tftp:
            k = _key(r)
            what = (f"tftp -b {BLKSIZE}" if r.client == "busybox"
                    else f"vhn-tftp -b {BLKSIZE} -w {r.window_asked}")
            print(f"{r.backend:<7} {what:<24} {r.blksize or '?':>7} {r.windowsize or '?':>6} "
                  f"{cell(r.seconds, 'tftp_seconds', k, '{:.2f}', 14)} "
                  f"{cell(r.mbit_s, 'tftp_mbit_s', k, '{:.1f}', 14)}  "
                  + ("ok" if r.sha256_ok else "MISMATCH"))
    for note in res.notes:
        print(f"note: {note}")

