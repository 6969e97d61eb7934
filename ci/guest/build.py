#!/usr/bin/env python3
"""Build the bundled Linux guest (kernel + busybox initramfs) that QEMU tests boot.

Usage: python ci/guest/build.py [--quiet] [--force] [--cache DIR]

The image lands in ``${VHOSTNET_CACHE:-${XDG_CACHE_HOME:-~/.cache}/vhostnet}/guest/`` (outside
git) and is rebuilt only when its inputs change: this script, every file under ``ci/guest/``,
the Debian cloud kernel package (name and version) and the busybox binary. Steps:

1. find the kernel package behind ``linux-image-cloud-amd64`` (``apt-get update`` only when
   apt-cache knows none), ``apt-get download`` it and ``dpkg-deb -x`` it;
2. copy ``vmlinuz``; pick the NIC modules (``NIC_MODULES``, in load order);
3. write ``initrd.cpio.gz``, a newc archive built here in Python: busybox and its applet links,
   the modules, ``/init`` (``ci/guest/init``), the udhcpc default script, ``/etc`` basics;
4. write ``manifest.json`` (kernel version, files, input hash) last, so a present manifest
   means a complete image.

Progress goes to stderr (unless ``--quiet``); the last line on stdout is the image directory.
Any failure prints one ``build.py: error: ...`` line and exits 2. Stdlib only: this runs before
the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
#: Modules for a virtio-net NIC, in load order (each needs the ones before it).
NIC_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
)
#: Extra small modules worth having in the guest (loaded after the NIC ones).
EXTRA_MODULES = ("veth", "tun", "8021q")
MANIFEST_VERSION = 1


class BuildError(Exception):
    """A build step failed; the message is the one line the user sees."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The guest image directory: ``$VHOSTNET_CACHE/guest`` or ``$XDG_CACHE_HOME/vhostnet/guest``."""
    if override:
        return Path(override).expanduser() / "guest"
    base = os.environ.get("VHOSTNET_CACHE")
    if base:
        return Path(base).expanduser() / "guest"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "vhostnet" / "guest"


def source_hash() -> str:
    """Hash of this script and every file under ci/guest/ (names, contents, exec bits)."""
    h = hashlib.sha256()
    for path in sorted(p for p in HERE.rglob("*") if p.is_file()):
        rel = path.relative_to(HERE)
        if "__pycache__" in rel.parts:
            continue
        h.update(f"{rel}\0{os.access(path, os.X_OK)}\0".encode())
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


class Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(
                f"build.py: [{time.monotonic() - self.t0:5.1f}s] {msg}", file=sys.stderr, flush=True
            )


def run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BuildError(f"{cmd[0]} not found (install it: apt-get install {cmd[0]})") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BuildError(f"{' '.join(cmd)} failed ({proc.returncode}): {last}")
    return proc.stdout


def find_kernel_package(log: Log) -> tuple[str, str]:
    """(package, version) of the current cloud kernel; runs apt-get update if unknown."""

    def lookup() -> tuple[str, str] | None:
        if shutil.which("apt-cache") is None:
            raise BuildError("apt-cache not found: the guest is built from Debian packages")
        proc = subprocess.run(
            ["apt-cache", "depends", KERNEL_META_PACKAGE], capture_output=True, text=True
        )
        for line in proc.stdout.splitlines():
            dep = line.strip()
            if dep.startswith("Depends:") and "linux-image-" in dep:
                pkg = dep.split(":", 1)[1].strip()
                show = subprocess.run(
                    ["apt-cache", "show", "--no-all-versions", pkg], capture_output=True, text=True
                )
                for field in show.stdout.splitlines():
                    if field.startswith("Version:"):
                        return pkg, field.split(":", 1)[1].strip()
        return None

    found = lookup()
    if found is None:
        log("apt-cache knows no kernel package; running apt-get update")
        run(["apt-get", "update", "-qq"])
        found = lookup()
    if found is None:
        raise BuildError(f"no kernel package found (apt-cache depends {KERNEL_META_PACKAGE})")
    return found


def build_tools(log: Log) -> list[tuple[str, bytes]]:
    """Compile ci/guest/tools/*.c into static binaries for the guest (what busybox lacks,
    e.g. a UDP client)."""
    out = []
    cc = shutil.which("gcc") or shutil.which("cc")
    for src in sorted((HERE / "tools").glob("*.c")):
        if cc is None:
            raise BuildError("gcc not found: it builds the guest's tools (apt-get install gcc)")
        with tempfile.TemporaryDirectory() as tmp:
            exe = Path(tmp) / src.stem
            run([cc, "-static", "-O2", "-Wall", "-o", str(exe), str(src)])
            out.append((src.stem, exe.read_bytes()))
        log(f"tool: {src.stem}")
    return out


def busybox_id() -> str:
    if not BUSYBOX.is_file():
        raise BuildError(f"{BUSYBOX} missing (apt-get install busybox-static)")
    st = BUSYBOX.stat()
    return f"{st.st_size}:{int(st.st_mtime)}"


class Newc:
    """A newc ("070701") cpio archive written in memory, deterministic (uid 0, mtime 0)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.ino = 1
        self.names: list[str] = []

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        name = name.lstrip("/")
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        self.ino += 1
        self.out += b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out += name.encode() + b"\0"
        self.out += b"\0" * (-len(self.out) % 4)
        self.out += data
        self.out += b"\0" * (-len(self.out) % 4)
        if name != "TRAILER!!!":
            self.names.append("/" + name)

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.out += b"\0" * (-len(self.out) % 512)
        return bytes(self.out)


def modinfo_depends(ko: bytes) -> list[str]:
    """The ``depends=`` entry of a module's .modinfo section (names of modules it needs)."""
    start = ko.find(b"\0depends=")
    if start < 0:
        return []
    end = ko.index(b"\0", start + 1)
    value = ko[start + len(b"\0depends=") : end].decode()
    return [d.replace("-", "_") for d in value.split(",") if d]


def pick_modules(root: Path, kver: str, log: Log) -> list[tuple[str, Path]]:
    """(name, .ko path) for each wanted module and its dependencies, in load order."""
    moddir = root / "lib/modules" / kver
    builtin = {
        Path(line).name.split(".ko")[0].replace("-", "_")
        for line in (moddir / "modules.builtin").read_text().split()
    }
    index = {}
    for ko in (moddir / "kernel").rglob("*.ko"):
        index.setdefault(ko.name[:-3].replace("-", "_"), ko)
    picked: dict[str, Path] = {}

    def add(name: str, chain: tuple[str, ...]) -> bool:
        if name in picked or name in builtin:
            return True
        if name not in index or name in chain:
            return False
        deps = modinfo_depends(index[name].read_bytes())
        if not all(add(dep, chain + (name,)) for dep in deps):
            return False
        picked[name] = index[name]
        return True

    for name in NIC_MODULES + EXTRA_MODULES:
        if name in builtin:
            log(f"module {name}: built into the kernel")
        elif not add(name, ()):
            if name in NIC_MODULES:
                raise BuildError(f"kernel {kver} lacks module {name} (needed for virtio-net)")
            log(f"module {name}: not in this kernel, skipped")
    return list(picked.items())


def build_initrd(root: Path, kver: str, log: Log) -> tuple[bytes, list[str], list[str]]:
    """The gzipped initramfs; also the archive's file names and the module load order."""
    arc = Newc()
    for d in (
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "usr/share",
        "usr/share/udhcpc",
        "etc",
        "etc/udhcpc",
        "etc/vhostnet",
        "lib",
        "lib/modules",
        f"lib/modules/{kver}",
        "proc",
        "sys",
        "dev",
        "run",
        "root",
        "var",
        "var/run",
        "mnt",
    ):
        arc.dir(d)
    arc.dir("tmp", 0o1777)

    arc.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    applets = run([str(BUSYBOX), "--list-full"]).split()
    for applet in sorted(set(applets)):
        if applet.strip("/") != "bin/busybox":
            arc.symlink(applet, "/bin/busybox")
    log(f"busybox: {len(applets)} applets")

    modules = pick_modules(root, kver, log)
    for name, ko in modules:
        arc.file(f"lib/modules/{kver}/{name}.ko", ko.read_bytes())
    order = [name for name, _ in modules]
    arc.file("etc/vhostnet/modules", ("\n".join(order) + "\n").encode())
    log(f"modules: {' '.join(order)}")

    for name, binary in build_tools(log):
        arc.file(f"usr/bin/{name}", binary, 0o755)

    arc.file("init", (HERE / "init").read_bytes(), 0o755)
    # Debian's busybox looks in /etc/udhcpc, upstream's default in /usr/share/udhcpc
    script = (HERE / "udhcpc.script").read_bytes()
    arc.file("etc/udhcpc/default.script", script, 0o755)
    arc.file("usr/share/udhcpc/default.script", script, 0o755)
    arc.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    arc.file("etc/group", b"root:x:0:\n")
    arc.file("etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\tguest\n")
    arc.file("etc/hostname", b"guest\n")
    arc.file("etc/resolv.conf", b"")
    raw = arc.finish()
    return gzip.compress(raw, compresslevel=6, mtime=0), arc.names, order


def build(out: Path, *, force: bool, log: Log) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs: one builds, the others wait
        pkg, version = find_kernel_package(log)
        inputs = {
            "source": source_hash(),
            "kernel_package": f"{pkg}={version}",
            "busybox": busybox_id(),
        }
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
        manifest_path = out / "manifest.json"
        if not force and manifest_path.is_file():
            try:
                old = json.loads(manifest_path.read_text())
            except ValueError:
                old = {}
            if old.get("hash") == digest and all(
                (out / old[k]).is_file() for k in ("kernel", "initrd")
            ):
                log(f"up to date ({old['kernel_version']}, hash {digest})")
                return out

        log(f"building guest image {digest} from {pkg} {version}")
        for stale in out.glob(".build-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        manifest_path.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
            work = Path(tmp)
            debs = out / "debs"
            debs.mkdir(exist_ok=True)
            deb = next(debs.glob(f"{pkg}_{version.replace(':', '%3a')}_*.deb"), None)
            if deb is None:
                log(f"apt-get download {pkg}")
                run(["apt-get", "download", f"{pkg}={version}"], cwd=work)
                fetched = next(work.glob(f"{pkg}_*.deb"), None)
                if fetched is None:
                    raise BuildError(f"apt-get download {pkg} produced no .deb")
                for stale in debs.glob(f"{pkg.split('-')[0]}-*.deb"):
                    stale.unlink()
                deb = debs / fetched.name
                shutil.move(fetched, deb)
            log(f"dpkg-deb -x {deb.name}")
            root = work / "root"
            run(["dpkg-deb", "-x", str(deb), str(root)])
            vmlinuz = next((root / "boot").glob("vmlinuz-*"), None)
            if vmlinuz is None:
                raise BuildError(f"{deb.name} has no /boot/vmlinuz-*")
            kver = vmlinuz.name.removeprefix("vmlinuz-")
            initrd, names, order = build_initrd(root, kver, log)
            shutil.copyfile(vmlinuz, work / "vmlinuz")
            (work / "initrd.cpio.gz").write_bytes(initrd)
            os.replace(work / "vmlinuz", out / "vmlinuz")
            os.replace(work / "initrd.cpio.gz", out / "initrd.cpio.gz")
        manifest = {
            "version": MANIFEST_VERSION,
            "hash": digest,
            "source_hash": inputs["source"],
            "inputs": inputs,
            "kernel_version": kver,
            "kernel": "vmlinuz",
            "initrd": "initrd.cpio.gz",
            "initrd_bytes": len(initrd),
            "modules": order,
            "files": names,
        }
        tmp_manifest = out / "manifest.json.tmp"
        tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp_manifest, manifest_path)
        log(f"done: kernel {kver}, initrd {len(initrd) // 1024} KiB, {len(names)} files")
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--cache", metavar="DIR", help="cache root (default: $VHOSTNET_CACHE ...)")
    args = ap.parse_args(argv)
    log = Log(args.quiet)
    try:
        out = build(cache_dir(args.cache), force=args.force, log=log)
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
