"""Network boot: what `vhostnet serve --tftp/--bootfile/--boot-kernel` hands a VM booting
with `-boot n`.

QEMU's NIC ROM is iPXE. It asks DHCP for a boot file, and its DHCP request carries the user
class "iPXE", so the DHCP server (netstack/socket/dhcp_server.py) can name a different file
to iPXE than to a plain PXE ROM. With `--boot-kernel`, iPXE gets the URL of a script we
write (`ipxe_script`), which fetches the kernel and initrd from our HTTP app (`/boot/...`)
and boots them: no TFTP, no files to lay out. With `--bootfile NAME` every client is told
NAME (a file under `--tftp DIR`, or a URL), the classic PXE setup; when both are given,
iPXE gets the script and PXE ROMs get NAME (the usual chainload: undionly.kpxe by TFTP,
then the script by HTTP). The same `boot_files` are served by TFTP as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SCRIPT = "boot.ipxe"  # the names under /boot/ (HTTP) and at the TFTP root
KERNEL = "kernel"
INITRD = "initrd"

FileSource = Path | bytes  # what a boot file is: a file on the host, or bytes we made


@dataclass
class BootConfig:
    """The network-boot options. `check()` says in one line what is wrong."""

    tftp_dir: str | None = None
    bootfile: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.tftp_dir or self.bootfile or self.kernel)

    def check(self) -> None:
        if self.tftp_dir is not None and not os.path.isdir(self.tftp_dir):
            raise ValueError(f"--tftp {self.tftp_dir}: not a directory")
        if (self.initrd or self.append) and not self.kernel:
            raise ValueError("--boot-initrd and --boot-append need --boot-kernel FILE")
        for opt, path in (("--boot-kernel", self.kernel), ("--boot-initrd", self.initrd)):
            if path is None:
                continue
            if not os.path.isfile(path):
                raise ValueError(f"{opt} {path}: no such file")
            if not os.access(path, os.R_OK):
                raise ValueError(f"{opt} {path}: not readable")
        if self.bootfile is not None and not 0 < len(self.bootfile.encode()) <= 255:
            raise ValueError("--bootfile: give a name of 1 to 255 bytes")
        if any(c in self.append for c in "\r\n"):
            raise ValueError("--boot-append: one line of kernel arguments")

    def boot_files(self, base_url: str) -> dict[str, FileSource]:
        """The files under /boot/ (HTTP) and at the TFTP root: the script, the kernel and
        the initrd, when `--boot-kernel` is given; else none."""
        if not self.kernel:
            return {}
        files: dict[str, FileSource] = {
            SCRIPT: ipxe_script(initrd=self.initrd is not None, append=self.append),
            KERNEL: Path(self.kernel),
        }
        if self.initrd:
            files[INITRD] = Path(self.initrd)
        return files

    def bootfile_url(self) -> str | None:
        """--bootfile when it is a URL (DHCPv6 names only URLs, RFC 5970), else None."""
        b = self.bootfile
        return b if b and "://" in b else None

    def dhcp_names(self, base_url: str) -> tuple[str | None, str | None]:
        """(the boot file named to every client, the one named to iPXE instead)."""
        return self.bootfile, (base_url + SCRIPT) if self.kernel else None


def ipxe_script(*, initrd: bool, append: str = "") -> bytes:
    """The iPXE script that boots our kernel (and initrd). Its URLs are relative: iPXE
    resolves them against the script's own, so one script serves whoever fetched it, by
    HTTP over IPv4 or IPv6 or by TFTP. The initrd is named and `initrd=` passed, which
    Linux's EFI stub needs and BIOS boots ignore; a multiboot ELF given as the kernel is
    loaded by the same `kernel` line (iPXE tells the formats apart)."""
    args = (f"initrd={INITRD} " if initrd else "") + append
    lines = ["#!ipxe",
             "echo vhostnet: fetching the kernel",
             f"kernel {KERNEL} {args}".rstrip()]
    if initrd:
        lines.append(f"initrd --name {INITRD} {INITRD}")
    lines += ["echo vhostnet: booting", "boot"]
    return ("\n".join(lines) + "\n").encode()


def file_size(source: FileSource) -> int:
    return len(source) if isinstance(source, bytes) else source.stat().st_size


def read_chunks(source: FileSource, chunk: int = 256 * 1024):
    """The file's bytes in pieces (a 64 MiB kernel is never read whole)."""
    if isinstance(source, bytes):
        yield source
        return
    with open(source, "rb") as f:
        while data := f.read(chunk):
            yield data


def summary(config: BootConfig, address: str, ipv6_address: str | None = None) -> str:
    """What `vhostnet serve` prints about network boot: what each client is told and the
    QEMU option that makes a VM boot from us."""
    parts = []
    if config.kernel:
        parts.append(f"iPXE boots {config.kernel}"
                     + (f" with {config.initrd}" if config.initrd else "")
                     + f" (http://{address}/boot/{SCRIPT})")
    if config.bootfile:
        parts.append(f"DHCP names {config.bootfile}"
                     + (" to PXE ROMs" if config.kernel else ""))
    if config.tftp_dir:
        v6 = f" and [{ipv6_address}]:69" if ipv6_address else ""
        parts.append(f"TFTP serves {config.tftp_dir}"
                     + (" and the boot files" if config.kernel else "") + f" on {address}:69{v6}")
    return ("Network boot: " + "; ".join(parts)
            + ". Add -boot n to QEMU's line (no -kernel) to boot from it.")
