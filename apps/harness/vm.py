"""Boot the bundled Linux guest under QEMU and drive its serial console from Python.

This is the harness every end-to-end test and ``make demo`` use; the guest itself is built by
``ci/guest/build.py`` (a Debian cloud kernel plus a busybox initramfs, cached outside git).

Typical use::

    from apps.harness.vm import QemuVM, vhost_user_nic_args

    with QemuVM(nic_args=vhost_user_nic_args("/tmp/vhost.sock", server=True)) as vm:
        vm.wait_ready()
        vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -q -n")
        print(vm.run("ping -c1 10.0.2.2").output)

Theory of operation: QEMU's only serial port is a ``stdio`` chardev on a pipe; a reader thread
appends everything to ``console_log`` so QEMU never blocks. The guest's ``/init`` prints
``vhostnet-guest: ready (...)`` and then serves a busybox shell on ttyS0 with echo off and no
prompt, respawned if it exits. ``run(cmd)`` sends (base64 split into <= 3000-character lines,
because the tty's line limit is 4095 bytes)::

    __vhn=<base64 of cmd>; echo __VH""N_B_<n>__; eval "$(echo "$__vhn" | base64 -d)" </dev/null
    echo __VH""N_D_<n>_$?__

and returns what the guest printed between the two markers. The split quotes mean an echoed
command line can never look like a marker; the end marker has its own line so it still runs
when the shell abandons the first line (a syntax error: rc 2). If the command ends the shell
(``exit 3``), init's respawn line gives the rc. Commands run in the one long-lived shell, so
``cd`` and variables persist between calls; their stdin is /dev/null.

Legal call order: ``start()``, ``wait_ready()``, then any number of ``run()``/``run_ok()``,
then ``stop()`` (or ``kill()``); the context manager does start and stop for you (not
wait_ready). QEMU always gets shared guest memory (memfd, share=on) so a vhost-user NIC works,
and is killed at ``__exit__``, at interpreter exit, and (when started from the main thread) by
the kernel if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import ctypes
import dataclasses
import gzip
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # apps/harness/vm.py -> the checkout
BUILD_SCRIPT = REPO_ROOT / "ci" / "guest" / "build.py"
READY_RE = re.compile(rb"vhostnet-guest: ready \(kernel (\S+), (\d+) ms\)")
_BEGIN = "__VHN_B_{}__"
# The command's end, or the shell's: `exit` ends the console shell and init respawns it.
_DONE_RE = "__VHN_D_{}_(\\d+)__|vhostnet-guest: console shell exited \\((\\d+)\\)"
_seq = itertools.count(1)
_CHUNK = 3000  # base64 characters per console line (the tty's line limit is 4095)


class GuestError(RuntimeError):
    """The guest did not do what was asked in time (or QEMU died); the message ends with the
    last console lines."""


class GuestImageError(RuntimeError):
    """The guest image is missing and could not be built."""


@dataclasses.dataclass(frozen=True, slots=True)
class CommandResult:
    rc: int
    output: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def cache_dir() -> Path:
    """Where build.py keeps the image (same rule as ci/guest/build.py)."""
    base = os.environ.get("VHOSTNET_CACHE")
    if base:
        return Path(base).expanduser() / "guest"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "vhostnet" / "guest"


def qemu10() -> str | None:
    """A QEMU 10 to run beside the system's (Debian 12's 7.2): Debian 13's, in a root that
    ci/install.sh makes with debootstrap (~/.cache/vhostnet/trixie), run through bwrap
    with /tmp, /dev and the home directory bound in (sockets, memfds, the guest image).
    Returns the path of a wrapper script to pass as `QemuVM(qemu=...)`, or None when the
    root or bwrap is missing."""
    root = cache_dir().parent / "trixie"
    if not (root / "usr/bin/qemu-system-x86_64").exists() or shutil.which("bwrap") is None:
        return None
    wrapper = cache_dir().parent / "qemu10"
    home = os.path.expanduser("~")
    text = ("#!/bin/sh\n# QEMU 10 from the Debian 13 root (apps.harness.vm.qemu10)\n"
            f"exec bwrap --bind {root} / --proc /proc --dev-bind /dev /dev "
            f"--bind /tmp /tmp --bind {home} {home} --die-with-parent "
            '/usr/bin/qemu-system-x86_64 "$@"\n')
    if not wrapper.exists() or wrapper.read_text() != text:
        wrapper.write_text(text)
        wrapper.chmod(0o755)
    return str(wrapper)


def _source_hash() -> str | None:
    """build.py's hash of ci/guest/ (None when this is not a repo checkout)."""
    if not BUILD_SCRIPT.is_file():
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("_vhostnet_guest_build", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash()


FileData = bytes | str | tuple[bytes | str, int]


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """A kernel and initramfs to boot, plus files to add to the initramfs for one VM.

    ``extra_files`` maps guest paths to contents (``bytes``/``str``) or ``(contents, mode)``;
    without a mode, contents starting with ``#!`` are 0755, others 0644. They are appended as
    a second cpio archive (Linux unpacks concatenated archives), parent directories included.
    """

    kernel: Path
    initrd: Path
    kernel_version: str = ""
    extra_files: Mapping[str, FileData] = dataclasses.field(default_factory=dict)

    @classmethod
    def default(cls, extra_files: Mapping[str, FileData] | None = None) -> GuestImage:
        """The image built by ci/guest/build.py, (re)building it first if missing or stale."""
        out = cache_dir()
        manifest = _read_manifest(out)
        want = _source_hash()
        if manifest is None or (want is not None and manifest.get("source_hash") != want):
            if not BUILD_SCRIPT.is_file():
                raise GuestImageError(f"no guest image in {out} and no {BUILD_SCRIPT} to build one")
            proc = subprocess.run(
                [sys.executable, str(BUILD_SCRIPT), "--quiet"], capture_output=True, text=True
            )
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise GuestImageError(f"building the guest image failed: {err}")
            out = Path(proc.stdout.strip().splitlines()[-1])
            manifest = _read_manifest(out)
            if manifest is None:
                raise GuestImageError(f"{BUILD_SCRIPT} succeeded but {out} has no image")
        return cls(
            kernel=out / manifest["kernel"],
            initrd=out / manifest["initrd"],
            kernel_version=manifest["kernel_version"],
            extra_files=dict(extra_files or {}),
        )

    def with_files(self, files: Mapping[str, FileData]) -> GuestImage:
        """A copy of this image with more extra files (later ones win)."""
        return dataclasses.replace(self, extra_files={**self.extra_files, **files})

    def write_initrd(self, dest: Path) -> Path:
        """Write the base initrd plus the extra files to ``dest``; returns ``dest``."""
        data = self.initrd.read_bytes()
        data += b"\0" * (-len(data) % 4)
        data += gzip.compress(newc_archive(self.extra_files), mtime=0)
        dest.write_bytes(data)
        return dest


def _read_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not all((out / manifest.get(k, "")).is_file() for k in ("kernel", "initrd")):
        return None
    return manifest


def newc_archive(files: Mapping[str, FileData]) -> bytes:
    """A newc cpio archive holding ``files`` and their parent directories."""
    out = bytearray()
    ino = itertools.count(0x10000)

    def entry(name: str, mode: int, data: bytes = b"") -> None:
        fields = (next(ino), mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4) + data)
        out.extend(b"\0" * (-len(out) % 4))

    dirs: set[str] = set()
    for path, value in files.items():
        data, mode = value if isinstance(value, tuple) else (value, None)
        data = data.encode() if isinstance(data, str) else bytes(data)
        if mode is None:
            mode = 0o755 if data.startswith(b"#!") else 0o644
        parts = path.strip("/").split("/")
        if not parts[-1]:
            raise ValueError(f"bad guest path {path!r}")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entry(d, 0o040755)
        entry("/".join(parts), 0o100000 | (mode & 0o7777), data)
    entry("TRAILER!!!", 0)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def vhost_user_nic_args(
    socket_path: str | os.PathLike[str],
    *,
    server: bool = False,
    reconnect: int = 1,
    queues: int = 1,
    mac: str = "52:54:00:12:34:56",
    id: str = "n0",
    extra_device_opts: str = "",
    vectors: int | None = 0,
) -> list[str]:
    """QEMU arguments for a virtio-net NIC served by a vhost-user backend at ``socket_path``.

    ``server=False``: QEMU connects to our listening socket (and reconnects every
    ``reconnect`` s if it drops); ``server=True``: QEMU listens and we connect. ``vectors=0``
    (legacy INTx) by default: QEMU 7.2 under TCG crashes with MSI-X vhost-user NICs
    (``vectors=None`` leaves QEMU's default, MSI-X, which QEMU 10 handles).
    """
    chardev = f"socket,id=c_{id},path={socket_path}"
    chardev += ",server=on,wait=off" if server else (f",reconnect={reconnect}" if reconnect else "")
    netdev = f"vhost-user,id={id},chardev=c_{id}"
    device = f"virtio-net-pci,netdev={id}{'' if vectors is None else f',vectors={vectors}'}"
    device += f",mac={mac}"
    if queues > 1:
        netdev += f",queues={queues}"
        device += ",mq=on"
    if extra_device_opts:
        device += "," + extra_device_opts.lstrip(",")
    return ["-chardev", chardev, "-netdev", netdev, "-device", device]


class QmpError(RuntimeError):
    """QEMU's monitor answered with an error, or not at all."""


class Qmp:
    """A QMP client: give QEMU ``-qmp unix:PATH,server=on,wait=off`` and
    ``Qmp(PATH).execute("query-migrate")``. Events that arrive meanwhile are kept in
    ``events``."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        import socket

        self.events: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(os.fspath(path))
                break
            except OSError as exc:
                s.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"no QMP socket at {path}: {exc}") from None
                time.sleep(0.05)
        self._sock = s
        self._file = s.makefile("rwb")
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self._file.readline()
        if not line:
            raise QmpError("QEMU closed its QMP socket")
        return json.loads(line)

    def execute(self, command: str, **arguments: object) -> object:
        msg: dict = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def close(self) -> None:
        self._file.close()
        self._sock.close()


_live: set[QemuVM] = set()
_live_lock = threading.Lock()


@atexit.register
def _kill_all() -> None:
    with _live_lock:
        vms = list(_live)
    for vm in vms:
        vm.kill()


def _pdeathsig_hook():
    """A preexec_fn asking the kernel to SIGKILL QEMU when its parent thread dies. Resolved
    here, in the parent: the child must not dlopen between fork and exec."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class QemuVM:
    """One QEMU process booting ``image`` with its serial console driven from Python."""

    def __init__(
        self,
        image: GuestImage | None = None,
        *,
        nic_args: Sequence[str] = (),
        memory_mb: int = 256,
        accel: str = "tcg",
        cpus: int = 1,
        extra_args: Sequence[str] = (),
        append_extra: str = "",
        qemu: str = "qemu-system-x86_64",
        reboot: bool = False,
        netboot: bool = False,
    ) -> None:
        self.image = image
        # netboot=True: no -kernel/-initrd, `-boot n`: the NIC's ROM (iPXE) boots what the
        # network serves; serve it `image.kernel`, the initrd and `kernel_append()`
        self.netboot = netboot
        # reboot=True: no -no-reboot, so a guest `reboot -f` restarts the machine; each
        # wait_ready() then waits for the next boot marker after the last one it saw
        self.reboot = reboot
        self._ready_end = 0
        self.nic_args = list(nic_args)
        self.memory_mb = memory_mb
        self.accel = accel
        self.cpus = cpus
        self.extra_args = list(extra_args)
        self.append_extra = append_extra
        self.qemu = qemu
        self.boot_ms: int | None = None  # guest uptime at the ready marker
        self.ready_seconds: float | None = None  # wall time from start() to the marker
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._readers: list[threading.Thread] = []
        self._stderr = bytearray()
        self._tmpdir: str | None = None
        self._t_start = 0.0
        self._write_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def kernel_append(self) -> str:
        """The guest kernel's command line (what a network boot must pass too)."""
        append = "console=ttyS0 panic=-1 quiet"
        if self.append_extra:
            append += " " + self.append_extra
        return append

    def command_line(self, initrd: Path) -> list[str]:
        """The full QEMU command line (for logs and debugging)."""
        assert self.image is not None
        append = self.kernel_append()
        nic = self.nic_args or ["-nic", "none"]
        boot = (["-boot", "n"] if self.netboot else
                ["-kernel", str(self.image.kernel), "-initrd", str(initrd), "-append", append])
        mem = self.memory_mb
        return [
            self.qemu, "-nodefaults", "-display", "none",
            *([] if self.reboot else ["-no-reboot"]),
            "-accel", self.accel, "-smp", str(self.cpus), "-m", f"{mem}M",
            "-object", f"memory-backend-memfd,id=mem,size={mem}M,share=on",
            "-machine", "memory-backend=mem",
            "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
            *boot, *nic, *self.extra_args,
        ]  # fmt: skip

    def start(self) -> QemuVM:
        if self._proc is not None:
            raise RuntimeError("QemuVM already started")
        if self.image is None:
            self.image = GuestImage.default()
        if shutil.which(self.qemu) is None and not os.path.exists(self.qemu):
            raise GuestError(f"{self.qemu} not found (apt-get install qemu-system-x86)")
        initrd = self.image.initrd
        if self.image.extra_files and not self.netboot:
            self._tmpdir = tempfile.mkdtemp(prefix="vhostnet-vm-")
            initrd = self.image.write_initrd(Path(self._tmpdir) / "initrd.cpio.gz")
        cmd = self.command_line(initrd)
        in_main = threading.current_thread() is threading.main_thread()
        self._t_start = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_pdeathsig_hook() if in_main else None,
        )
        with _live_lock:
            _live.add(self)
        for stream, sink, name in (
            (self._proc.stdout, self._buf, "console"),
            (self._proc.stderr, self._stderr, "stderr"),
        ):
            t = threading.Thread(
                target=self._reader, args=(stream, sink, name == "console"),
                name=f"qemu-{self._proc.pid}-{name}", daemon=True,
            )  # fmt: skip
            t.start()
            self._readers.append(t)
        return self

    def _reader(self, stream, sink: bytearray, is_console: bool) -> None:
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if chunk:
                    sink.extend(chunk)
                elif is_console:
                    self._eof = True
                self._cond.notify_all()
            if not chunk:
                return

    def stop(self, timeout: float = 10) -> int | None:
        """Power the guest off through the console; kill QEMU if it is not gone in time."""
        proc = self._proc
        # Before the ready marker nobody reads the console (e.g. QEMU still waits for the
        # vhost-user backend to connect), so asking politely would only cost the timeout.
        if proc is not None and proc.poll() is None and self.boot_ms is not None:
            try:
                self._write(b"\npoweroff -f\n")
                proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        return self.returncode

    def kill(self) -> None:
        """Kill QEMU now (idempotent) and clean up."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for t in self._readers:
                t.join(2)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
        with _live_lock:
            _live.discard(self)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for QEMU to exit by itself (e.g. after a ``vhostnet.run=`` script)."""
        if self._proc is None:
            raise RuntimeError("QemuVM not started")
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise GuestError(self._explain(f"QEMU still running after {timeout}s")) from exc
        for t in self._readers:
            t.join(2)
        return rc

    def __enter__(self) -> QemuVM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    # -- console -----------------------------------------------------------------------------

    @property
    def console_log(self) -> str:
        """Everything the guest wrote to its console so far (``\\r\\n`` turned into ``\\n``)."""
        with self._cond:
            data = bytes(self._buf)
        return data.decode(errors="replace").replace("\r\n", "\n")

    @property
    def qemu_stderr(self) -> str:
        with self._cond:
            return self._stderr.decode(errors="replace")

    def tail(self, n: int = 30) -> str:
        """The last ``n`` console lines."""
        return "\n".join(self.console_log.splitlines()[-n:])

    def _explain(self, what: str) -> str:
        rc = self.returncode
        msg = f"{what}"
        if rc is not None:
            msg += f" (QEMU exited with {rc})"
        err = self.qemu_stderr.strip()
        if err:
            msg += "\n--- qemu stderr ---\n" + "\n".join(err.splitlines()[-10:])
        return msg + "\n--- last console lines ---\n" + self.tail()

    def expect(
        self, pattern: bytes | re.Pattern[bytes], timeout: float, start: int = 0
    ) -> re.Match[bytes]:
        """Wait until ``pattern`` appears in the raw console bytes at or after offset ``start``."""
        rx = re.compile(pattern) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._buf, start)
                if m:
                    return m
                if self._eof or self._proc is None:
                    raise GuestError(self._explain(f"console closed waiting for {rx.pattern!r}"))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestError(
                        self._explain(f"timed out after {timeout}s waiting for {rx.pattern!r}")
                    )
                self._cond.wait(left)

    def _write(self, data: bytes) -> None:
        if self._proc is None or self._proc.stdin is None:
            raise RuntimeError("QemuVM not started")
        with self._write_lock:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()

    def wait_ready(self, timeout: float = 60) -> int:
        """Wait for the boot marker; returns the guest's uptime at that point in ms. In shell
        mode, also round-trips one command so the console shell is known to be listening.
        With ``reboot=True``, each call waits for the marker after the one the last call saw."""
        m = self.expect(READY_RE, timeout, self._ready_end if self.reboot else 0)
        self._ready_end = m.end()
        self.boot_ms = int(m.group(2))
        self.ready_seconds = time.monotonic() - self._t_start
        if "vhostnet.run=" not in self.append_extra:
            self.run(":", timeout=max(5.0, timeout - self.ready_seconds))
        return self.boot_ms

    def run(self, cmd: str, timeout: float = 30) -> CommandResult:
        """Run ``cmd`` in the guest shell; its output (stdout and stderr) and exit status.

        On timeout the command is interrupted (Ctrl-C on the console) so the shell stays
        usable, and GuestError carries the last console lines.
        """
        n = next(_seq)
        t0 = time.monotonic()
        with self._cond:
            start = len(self._buf)
        b64 = base64.b64encode(cmd.encode()).decode()
        chunks = [b64[i : i + _CHUNK] for i in range(0, len(b64), _CHUNK)] or [""]
        lines = [f"__vhn={chunks[0]}"] + [f'__vhn="$__vhn"{c}' for c in chunks[1:]]
        lines[-1] += f'; echo __VH""N_B_{n}__; eval "$(echo "$__vhn" | base64 -d)" </dev/null'
        lines.append(f'echo __VH""N_D_{n}_$?__')  # own line: runs even if eval's line aborts
        line = "\n".join(lines) + "\n"
        try:
            self._write(line.encode())
        except OSError as exc:
            raise GuestError(self._explain(f"cannot write to the console: {exc}")) from exc
        begin_re = re.compile(re.escape(_BEGIN.format(n).encode()) + rb"\r?\n")
        try:
            begin = self.expect(begin_re, timeout, start)
            left = timeout - (time.monotonic() - t0)
            done = self.expect(re.compile(_DONE_RE.format(n).encode()), left, begin.end())
        except GuestError as exc:
            if self.returncode is None:
                try:
                    self._write(b"\x03")
                except OSError:
                    pass
            raise GuestError(f"command {cmd!r}: {exc}") from None
        with self._cond:
            output = self._buf[begin.end() : done.start()].decode(errors="replace")
        if done.group(2) is not None:
            self._await_respawn(t0 + max(timeout, 15.0))
        return CommandResult(int(done.group(1) or done.group(2)), output.replace("\r\n", "\n"))

    def _await_respawn(self, deadline: float) -> None:
        """The command ended the console shell; init starts a new one, which may drop what
        was typed before it set the tty up. Probe until it answers, so the next `run` is
        not lost."""
        while True:
            try:
                self.run(":", timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return
            except GuestError:
                if time.monotonic() > deadline:
                    raise

    def run_ok(self, cmd: str, timeout: float = 30) -> str:
        """Run ``cmd``; its output, or GuestError if it exits nonzero."""
        res = self.run(cmd, timeout)
        if res.rc != 0:
            raise GuestError(self._explain(f"command {cmd!r} exited {res.rc}:\n{res.output}"))
        return res.output


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m apps.harness.vm [--shell | --run CMD] [--socket PATH [--server]]``."""
    ap = argparse.ArgumentParser(prog="python -m apps.harness.vm", description="Boot the test guest.")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--shell", action="store_true", help="attach stdin/stdout to the guest")
    what.add_argument("--run", metavar="CMD", help="run CMD in the guest, print, exit with rc")
    ap.add_argument("--socket", help="add a vhost-user NIC on this socket")
    ap.add_argument("--server", action="store_true", help="QEMU listens on --socket")
    ap.add_argument("--accel", default="tcg")
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args(argv)
    nic = vhost_user_nic_args(args.socket, server=args.server) if args.socket else ()
    with QemuVM(nic_args=nic, accel=args.accel) as vm:
        print(f"qemu pid {vm.pid}: booting...", file=sys.stderr)
        vm.wait_ready(args.timeout)
        print(f"guest ready: {vm.boot_ms} ms guest uptime, {vm.ready_seconds:.1f} s wall",
              file=sys.stderr)  # fmt: skip
        if args.run is not None:
            res = vm.run(args.run, args.timeout)
            sys.stdout.write(res.output)
            return res.rc
        if not args.shell:
            print(vm.console_log)
            return 0
        vm.run("PS1='guest# '")
        with vm._cond:
            offset = len(vm._buf)

        def pump() -> None:
            nonlocal offset
            while vm.returncode is None:
                with vm._cond:
                    vm._cond.wait(0.2)
                    data = bytes(vm._buf[offset:])
                    offset += len(data)
                if data:
                    sys.stdout.buffer.write(data.replace(b"\r\n", b"\n"))
                    sys.stdout.flush()

        threading.Thread(target=pump, daemon=True).start()
        for line in sys.stdin.buffer:
            vm._write(line)
            if vm.returncode is not None:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
