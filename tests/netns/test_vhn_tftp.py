"""The guest's TFTP client (ci/guest/tools/vhn-tftp.c), compiled for the host, against a
server we did not write: atftpd (0.8, which grants windowsize, RFC 7440) on the loopback of
a namespace of our own, before `vhostnet bench boot` trusts its figures.

What it must do: follow the OACK (blksize and windowsize as granted; 512 bytes and window 1
when the OACK leaves an option out, atftpd's bare OACK granting none included, or when a
plain request gets DATA at once), roll block numbers over
past 65535, survive lost datagrams both ways (a few percent dropped by nftables, where it is
installed), and fail with a non-zero status on an ERROR or a silent server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.netns.conftest import wait_until

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("atftpd") is None,
                                 reason="atftpd is not installed (apt-get install atftpd)"),
              pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")]

SOURCE = Path(__file__).resolve().parents[2] / "ci" / "guest" / "tools" / "vhn-tftp.c"
MiB = 1 << 20


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> str:
    exe = tmp_path_factory.mktemp("vhn-tftp") / "vhn-tftp"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(SOURCE)], check=True,
                   timeout=120)
    return str(exe)


# atftpd instances: address -> what it is told not to grant
SERVERS = {"127.0.0.1": [],
           "127.0.0.2": ["--no-windowsize"],
           "127.0.0.3": ["--no-blksize", "--no-windowsize", "--no-tsize", "--no-timeout"]}


class Atftpd:
    """atftpd in namespace `ns`, serving `root` on port 69 of each address of SERVERS."""

    def __init__(self, ns: str, root: Path) -> None:
        self.ns, self.root = ns, root
        self.procs = []
        for addr, extra in SERVERS.items():
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "atftpd", "--daemon", "--no-fork", "--user", "root",
                 "--group", "root", "--port", "69", "--bind-address", addr,
                 "--retry-timeout", "1", *extra, str(root)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: all(f"{a}:69" in self._sockets() for a in SERVERS), 10)

    def _sockets(self) -> str:
        return subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-uln"],
                              capture_output=True, text=True).stdout

    def put(self, name: str, size: int) -> str:
        data = hashlib.sha256(name.encode()).digest() * (size // 32 + 1)
        data = data[:size]
        (self.root / name).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(5)


@pytest.fixture
def server(tmp_path):
    ns = f"vhn-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    srv = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        root = tmp_path / "srv"
        root.mkdir()
        os.chmod(root, 0o777)
        os.chmod(tmp_path, 0o755)
        srv = Atftpd(ns, root)
        yield srv
    finally:
        if srv is not None:
            srv.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def fetch(client: str, server: Atftpd, tmp_path: Path, *args: str, host: str = "127.0.0.1",
          timeout: float = 120) -> subprocess.CompletedProcess:
    """`vhn-tftp -v OPTIONS -o tmp_path/got HOST FILE` in the namespace (FILE: the last of
    `args`)."""
    *opts, name = args
    return subprocess.run(["ip", "netns", "exec", server.ns, client, "-v", *opts, "-o",
                           str(tmp_path / "got"), host, name],
                          capture_output=True, text=True, timeout=timeout)


def got_sha(tmp_path: Path) -> str:
    return hashlib.sha256((tmp_path / "got").read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1468, 1469, 3 * MiB + 7])
@pytest.mark.parametrize("opts, blksize, window", [
    ((), 512, 1),
    (("-b", "1468"), 1468, 1),
    (("-b", "1468", "-w", "16"), 1468, 16),
    (("-w", "4", "-t", "2"), 512, 4),
])
def test_fetches_every_edge_size_as_negotiated(client, server, tmp_path, size, opts, blksize,
                                               window):
    sha = server.put("f", size)
    out = fetch(client, server, tmp_path, *opts, "f")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{size} bytes in ") and out.stdout.endswith(" s\n")
    assert got_sha(tmp_path) == sha
    assert f"blksize {blksize}, windowsize {window}," in out.stderr, out.stderr
    assert ("no OACK" in out.stderr) == (not opts)


@pytest.mark.parametrize("host, oack, blksize", [
    ("127.0.0.2", "vhn-tftp: OACK blksize=1468\n", 1468),  # no windowsize granted
    ("127.0.0.3", "vhn-tftp: OACK\n", 512),  # nothing granted: a bare OACK
])
def test_an_oack_without_the_options_falls_back(client, server, tmp_path, host, oack, blksize):
    """An option the OACK leaves out is not in force: window 1 (and 512-byte blocks)."""
    sha = server.put("f", 100_000)
    out = fetch(client, server, tmp_path, "-b", "1468", "-w", "16", "f", host=host)
    assert out.returncode == 0, out.stderr
    assert oack in out.stderr and f"blksize {blksize}, windowsize 1," in out.stderr, out.stderr
    assert got_sha(tmp_path) == sha


@pytest.mark.parametrize("opts", [("-b", "64", "-w", "64"), ("-b", "64")])
def test_block_numbers_roll_over(client, server, tmp_path, opts):
    size = 65537 * 64 + 3  # block 65536 is block 0 on the wire
    sha = server.put("wrap", size)
    out = fetch(client, server, tmp_path, *opts, "wrap")
    assert out.returncode == 0, out.stderr
    assert "65538 blocks" in out.stderr and got_sha(tmp_path) == sha


def test_errors_and_silence_fail(client, server, tmp_path):
    out = fetch(client, server, tmp_path, "nosuch")
    assert out.returncode == 1 and "server error 1" in out.stderr
    out = fetch(client, server, tmp_path, "-t", "1", "f", host="127.0.0.9")  # nobody there
    assert out.returncode == 1 and "no answer from 127.0.0.9" in out.stderr
    bad = subprocess.run([client, "-w", "0", "127.0.0.1", "f"], capture_output=True, text=True)
    assert bad.returncode == 2 and "bad windowsize" in bad.stderr


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed (nftables)")
@pytest.mark.parametrize("opts", [("-b", "1468", "-w", "16"), ("-b", "1024", "-w", "8")])
def test_survives_lost_datagrams(client, server, tmp_path, opts):
    """3 % of the datagrams dropped both ways (atftpd resends after 1 s): every byte
    arrives all the same."""
    for cmd in (["add", "table", "inet", "t"],
                ["add", "chain", "inet", "t", "in",
                 "{ type filter hook input priority 0; }"],
                ["add", "rule", "inet", "t", "in", "meta", "l4proto", "udp", "numgen",
                 "random", "mod", "100", "<", "3", "drop"]):
        subprocess.run(["ip", "netns", "exec", server.ns, "nft", *cmd], check=True)
    sha = server.put("f", 2 * MiB)
    out = fetch(client, server, tmp_path, *opts, "f", timeout=240)
    assert out.returncode == 0, out.stderr
    assert got_sha(tmp_path) == sha
