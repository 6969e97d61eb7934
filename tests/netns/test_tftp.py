"""Our TFTP server against clients we did not write, run in a namespace over a TAP: curl,
tftp-hpa, atftp and busybox tftp fetch files of every edge size, by SHA-256.

    kernel (namespace NS)  clients        TAP      us: TftpServerSocket on 10.55.0.2:69
    10.55.0.1/24, fd00:69::1/64    <-------------> (and [fd00:69::2]:69), serving tmp_path

Each test records the requests the server saw (file name, mode, options as the client sent
them): what real clients do is half of what these tests are for. What they showed (kept
true by the assertions below):

- curl (7.88) sends the URL path without its leading "/", mode octet, and always the
  options tsize 0, blksize (512 unless --tftp-blksize) and timeout 6. It fails a download
  whose OACK says "tsize 0" (so the server leaves tsize out for an empty file), and its
  error messages are a stale "getpeername() failed" (curl PR #11332): its exit code says
  which ERROR it got.
- tftp-hpa's client (5.2) sends the name exactly as typed ("/f" stays "/f") and no options
  at all: 512-byte blocks, lockstep. In netascii mode (its default) it converts CR LF and
  CR NUL back, so any file, random bytes included, survives the round trip.
- atftp (0.8) sends only what `--option` asks (blksize, windowsize, timeout) and
  acknowledges one window at a time (RFC 7440); `--option "tsize enable"` goes out as the
  value "enable", not "0", which the server ignores as not a number.
- busybox tftp always sends tsize 0, and blksize when `-b` is not 512 (it refuses `-b`
  below 24, and fails "remote filename is too long" when the request does not fit in one
  block of that size).
- Block numbers roll over from 65535 to 0: checked here with curl (the 40 MiB file,
  81,921 blocks of 512 bytes) and atftp (65,537 blocks of 8 bytes, 64 to a window).
  busybox (`-b 64`, 4 MiB) and tftp-hpa (32 MiB + 100 bytes) rolled over too when tried by
  hand, but they take 12-14 s of lockstep round trips each, so they are not run here.

Clients that are not installed are skipped, each with its reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time

import pytest

from netstack.socket.tftp_server import TftpServer, TftpServerSocket
from netstack.wire import Error
from netstack.wire.ipv6 import Ipv6Cidr
from netstack.wire.tftp import AckRepr, OackRepr, RequestRepr, parse
from tests.netns.conftest import OUR_IP, Link, wait_until

pytestmark = pytest.mark.netns

OUR6 = "fd00:69::2"
KERNEL6 = "fd00:69::1"
SIZES = [0, 1, 511, 512, 513, 1 << 20]
MiB = 1 << 20
CURLE_TFTP_NOTFOUND = 68  # curl's exit codes for ERROR 1 and ERROR 2
CURLE_TFTP_PERM = 69


def need(binary: str):
    return pytest.mark.skipif(shutil.which(binary) is None,
                              reason=f"{binary} is not installed (apt-get install "
                                     f"{ {'tftp': 'tftp-hpa'}.get(binary, binary)})")


class RecordingServer(TftpServer):
    """A TftpServer that keeps every request it was sent, the OACKs it answered, the
    addresses it answered from and a count of the ACKs it got (read under the runtime
    lock)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[RequestRepr] = []
        self.oacks: list[OackRepr] = []
        self.acks = 0
        self.sources: set = set()  # the addresses replies came from

    def handle(self, now, local, client, data, max_blksize=None):
        try:
            msg = parse(data)
        except Error:
            msg = None
        if isinstance(msg, RequestRepr):
            self.requests.append(msg)
        elif isinstance(msg, AckRepr):
            self.acks += 1
        out = super().handle(now, local, client, data, max_blksize)
        for d in out:
            self.sources.add(d.src[0])
            reply = parse(d.data)
            if isinstance(reply, OackRepr):
                self.oacks.append(reply)
        return out


class Served:
    """tmp_path/srv served by our TFTP server on `link`; client downloads land in
    tmp_path/got."""

    def __init__(self, link: Link, tmp_path, ipv6: bool = False) -> None:
        self.link = link
        self.root = tmp_path / "srv"
        self.root.mkdir()
        self.out = tmp_path / "got"
        self.out.mkdir()
        self.server = RecordingServer(self.root)
        addrs = [OUR_IP]
        if ipv6:
            with link.runtime.lock:
                link.iface.set_ipv6_addrs([Ipv6Cidr.parse(OUR6 + "/64")])
            link.run("ip", "-6", "addr", "add", KERNEL6 + "/64", "dev", link.tap.name, "nodad")
            addrs.append(OUR6)
        self.sock = TftpServerSocket(self.server, addrs)
        link.add_socket(self.sock)

    def put(self, name: str, size: int, seed: int = 0) -> str:
        """A file of `size` pseudo-random bytes (text-like lines for netascii tests would
        hide conversion bugs: random bytes hold CRs and LFs in every position); its
        SHA-256."""
        h = hashlib.sha256()
        block = hashlib.sha256(f"{name}{seed}".encode()).digest() * (MiB // 32)
        with open(self.root / name, "wb") as f:
            left = size
            while left:
                chunk = block[: min(left, len(block))]
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
        return h.hexdigest()

    def sha(self, name: str) -> str:
        return hashlib.sha256((self.out / name).read_bytes()).hexdigest()

    def requests(self) -> list[RequestRepr]:
        with self.link.runtime.lock:
            return list(self.server.requests)

    def oacks(self) -> list[OackRepr]:
        with self.link.runtime.lock:
            return list(self.server.oacks)

    def settled(self) -> None:
        """Every session over (the client's last ACK arrived), no fd left open."""
        def done():
            with self.link.runtime.lock:
                return self.server.sessions == 0
        assert wait_until(done, 5.0), "a TFTP session is still open"

    def stats(self):
        with self.link.runtime.lock:
            return self.server.stats


@pytest.fixture
def served(link, tmp_path) -> Served:
    return Served(link, tmp_path)


def _fetch_all(served: Served, argv_for, sizes=SIZES) -> None:
    for size in sizes:
        name = f"f{size}.bin"
        want = served.put(name, size)
        out = served.link.run(*argv_for(name, str(served.out / name)), check=False)
        assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"
        assert served.sha(name) == want, f"{name}: content differs"
    served.settled()


# -- curl ----------------------------------------------------------------------------------
@need("curl")
@pytest.mark.parametrize("blksize", [None, 8, 1024, 1468, 9000])
def test_curl(served: Served, blksize):
    opts = [] if blksize is None else ["--tftp-blksize", str(blksize)]
    sizes = SIZES if blksize != 8 else [0, 1, 7, 8, 9, 4096]
    _fetch_all(served, lambda name, out: ["curl", "-sS", "--max-time", "30", *opts,
                                          f"tftp://{OUR_IP}/{name}", "-o", out], sizes)
    reqs = served.requests()
    assert [r.filename for r in reqs] == [f"f{s}.bin" for s in sizes]  # the "/" dropped
    r = reqs[0]
    assert r.mode == "octet" and r.option("tsize") == "0"
    assert r.option("blksize") == str(blksize or 512)
    # answered with what fits an Ethernet frame at most; no "tsize 0" for the empty file
    oacks = served.oacks()
    assert {o.option("blksize") for o in oacks} == {str(min(blksize or 512, 1468))}
    assert [o.option("tsize") for o in oacks] == [str(s) if s else None for s in sizes]
    st = served.stats()
    assert st.sessions_completed == len(sizes) and st.retransmits == 0


@need("curl")
def test_curl_missing_file_and_traversal(served: Served):
    served.put("ok.bin", 100)
    # curl 7.88 prints a stale getpeername() error instead of ours (curl PR #11332): its
    # exit code says which ERROR it got
    out = served.link.run("curl", "-sS", f"tftp://{OUR_IP}/nope", "-o",
                          str(served.out / "nope"), check=False)
    assert out.returncode == CURLE_TFTP_NOTFOUND, out.stderr
    out = served.link.run("curl", "-sS", "--path-as-is", f"tftp://{OUR_IP}/../etc/passwd",
                          "-o", str(served.out / "x"), check=False)
    assert out.returncode == CURLE_TFTP_PERM, out.stderr
    st = served.stats()
    assert st.refused["not_found"] == 1 and st.refused["path"] == 1
    assert served.server.sessions == 0


@need("curl")
def test_curl_over_ipv6(link, tmp_path):
    served = Served(link, tmp_path, ipv6=True)
    sizes = [0, 513, MiB]

    def argv(name, out):
        return ["curl", "-sS", "-g", "--max-time", "30", f"tftp://[{OUR6}]/{name}", "-o", out]

    _fetch_all(served, argv, sizes)
    reqs = served.requests()
    assert len(reqs) == len(sizes)
    with link.runtime.lock:  # every reply came from the address its request went to
        assert {str(a) for a in served.server.sources} == {OUR6}
    # over IPv6 the link carries 1448-byte blocks (a 40-byte header): asked for more, that
    out = link.run("curl", "-sS", "-g", "--tftp-blksize", "65464", "-w", "%{size_download}",
                   f"tftp://[{OUR6}]/f{MiB}.bin", "-o", str(served.out / "big6"))
    assert out.stdout == str(MiB)
    assert served.oacks()[-1].option("blksize") == "1448"
    out = link.run("curl", "-sS", "--tftp-blksize", "65464", "-w", "%{size_download}",
                   f"tftp://{OUR_IP}/f{MiB}.bin", "-o", str(served.out / "big4"))
    assert out.stdout == str(MiB)
    assert served.oacks()[-1].option("blksize") == "1468"  # and 1468 over IPv4
    served.settled()


# -- tftp-hpa ------------------------------------------------------------------------------
@need("tftp")
@pytest.mark.parametrize("mode", ["binary", "netascii"])
def test_tftp_hpa(served: Served, mode):
    # the names as iPXE writes them, with a leading "/"
    _fetch_all(served, lambda name, out: ["tftp", "-m", mode, OUR_IP, "-c", "get", "/" + name,
                                          out])
    reqs = served.requests()
    assert [r.filename for r in reqs] == [f"/f{s}.bin" for s in SIZES]
    assert all(r.options == () for r in reqs), reqs  # tftp-hpa sends no options
    assert {r.mode for r in reqs} == {"octet" if mode == "binary" else "netascii"}
    st = served.stats()
    assert st.sessions_completed == len(SIZES) and served.oacks() == []


# -- atftp ---------------------------------------------------------------------------------
@need("atftp")
@pytest.mark.parametrize("options", [
    [], ["blksize 1468"], ["blksize 1468", "windowsize 16"], ["windowsize 64"],
    ["blksize 512", "windowsize 4", "tsize enable"],
], ids=["none", "blksize", "blksize+window16", "window64", "window4+tsize"])
def test_atftp(served: Served, options):
    opts = [x for o in options for x in ("--option", o)]
    _fetch_all(served, lambda name, out: ["atftp", "--get", "-r", name, "-l", out, *opts,
                                          OUR_IP])
    reqs = served.requests()
    for o in options:
        name, value = o.split()
        assert reqs[0].option(name) == {"enable": "enable"}.get(value, value), reqs[0]
    oacks = served.oacks()
    numeric = {o.split()[0]: o.split()[1] for o in options if o.split()[1].isdigit()}
    if numeric:  # every numeric option answered as asked ("tsize enable" is no number)
        assert all(dict(oack.options) == numeric for oack in oacks), oacks
    else:
        assert oacks == []
    st = served.stats()
    assert st.sessions_completed == len(SIZES) and st.retransmits == 0
    window = int(numeric.get("windowsize", 1))
    if window > 1:  # one ACK a window (RFC 7440), not one a block
        with served.link.runtime.lock:
            acks = served.server.acks
        blocks = sum(s // int(numeric.get("blksize", 512)) + 1 for s in SIZES)
        assert acks < blocks / window * 1.5 + 2 * len(SIZES), (acks, blocks)


@need("atftp")
def test_atftp_window_across_the_block_number_wrap(served: Served):
    size = 65536 * 8 + 3  # 65,537 blocks of 8 bytes: the last is block 1 again
    want = served.put("wrap.bin", size)
    out = served.link.run("atftp", "--get", "-r", "wrap.bin", "-l", str(served.out / "wrap"),
                          "--option", "blksize 8", "--option", "windowsize 64", OUR_IP,
                          timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256((served.out / "wrap").read_bytes()).hexdigest() == want
    served.settled()
    st = served.stats()
    assert st.sessions_completed == 1 and st.bytes_sent >= size


# -- busybox -------------------------------------------------------------------------------
@need("busybox")
@pytest.mark.parametrize("blksize", [512, 1468])
def test_busybox_tftp(served: Served, blksize):
    help_ = served.link.run("busybox", "tftp", "--help", check=False)
    if "-g" not in help_.stdout + help_.stderr:
        pytest.skip("this busybox has no tftp get (-g)")
    _fetch_all(served, lambda name, out: ["busybox", "tftp", "-g", "-r", name, "-l", out,
                                          "-b", str(blksize), OUR_IP])
    reqs = served.requests()
    assert reqs[0].mode == "octet" and reqs[0].option("tsize") == "0"
    assert reqs[0].option("blksize") == (None if blksize == 512 else str(blksize))
    assert served.stats().sessions_completed == len(SIZES)


# -- one big file, past the block-number wrap ----------------------------------------------
@need("curl")
def test_40_mib_crosses_the_block_number_wrap(served: Served):
    size = 40 * MiB  # 81,921 blocks of 512 bytes: block 65535 is followed by block 0
    want = served.put("big.bin", size)
    start = time.monotonic()
    out = served.link.run("curl", "-sS", "--max-time", "120", "--tftp-blksize", "512",
                          f"tftp://{OUR_IP}/big.bin", "-o", str(served.out / "big.bin"),
                          timeout=150, check=False)
    took = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert os.path.getsize(served.out / "big.bin") == size
    assert served.sha("big.bin") == want
    served.settled()
    st = served.stats()
    assert st.sessions_completed == 1
    print(f"\n40 MiB at 512-byte blocks by curl: {took:.1f} s, "
          f"{size / took / MiB:.2f} MiB/s, {st.retransmits} retransmits")
