"""PcapSink rotation (FILE, FILE.1, FILE.2, ... each a whole capture), parse_size, and
`vhostnet serve --pcap-rotate SIZE` / `--pcap -` (the capture alone on stdout)."""

from __future__ import annotations

import io
import os
import select
import signal
import struct
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from apps.cli import build_parser
from netstack.phy.pcap import PCAP_MAGIC, PcapSink, parse_size

START = 1_700_000_000.0


def numbered(n: int, size: int = 200) -> list[bytes]:
    """n distinct frames, the index in the UDP source port and the payload."""
    return [
        bytes(
            Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
            / IP(src="10.0.0.1", dst="10.0.0.2")
            / UDP(sport=1000 + i, dport=9)
            / i.to_bytes(4, "big").ljust(size, b"x")
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_rotation_pieces_are_whole_captures_holding_every_frame_in_order(tmp_path, fmt):
    path = tmp_path / f"cap.{fmt}"
    sent = numbered(100)
    limit = 4096
    with PcapSink(path, start=START, rotate=limit) as sink:
        for i, f in enumerate(sent):
            sink.write(f, 10.0 + i * 0.001, "rx" if i % 2 else "tx")
    files = [str(path)] + [f"{path}.{n}" for n in range(1, len(sink.files))]
    assert sink.files == files
    assert len(files) >= 5  # 100 frames of ~250 bytes in 4 KiB pieces
    got: list[bytes] = []
    times: list[float] = []
    for name in files:
        assert os.path.getsize(name) <= limit
        assert not os.path.exists(f"{path}.{len(files)}")
        pkts = rdpcap(name)  # each piece parses on its own: its own header
        assert len(pkts) > 0
        got += [bytes(p) for p in pkts]
        times += [float(p.time) for p in pkts]
    assert got == sent
    assert times == sorted(times)
    assert times[0] == pytest.approx(START)
    assert sink.frames == len(sent)


def test_each_pcap_piece_starts_with_the_classic_header(tmp_path):
    path = tmp_path / "cap.pcap"
    with PcapSink(path, rotate=1000, snaplen=1500) as sink:
        for f in numbered(20):
            sink.write(f, 1.0)
    for name in sink.files:
        with open(name, "rb") as fh:
            magic, major, minor, _, _, snaplen, link = struct.unpack("<IHHiIII", fh.read(24))
        assert (magic, major, minor, snaplen, link) == (PCAP_MAGIC, 2, 4, 1500, 1)


def test_a_frame_bigger_than_the_limit_gets_a_piece_of_its_own(tmp_path):
    path = tmp_path / "big.pcap"
    sent = numbered(3, size=1400)
    with PcapSink(path, rotate=100) as sink:
        for f in sent:
            sink.write(f, 1.0)
    assert len(sink.files) == 3
    assert [[bytes(p) for p in rdpcap(n)] for n in sink.files] == [[f] for f in sent]


def test_no_rotation_below_the_limit_and_none_without_rotate(tmp_path):
    with PcapSink(tmp_path / "a.pcap", rotate=10 << 20) as sink:
        for f in numbered(50):
            sink.write(f, 1.0)
    assert sink.files == [str(tmp_path / "a.pcap")]
    with PcapSink(tmp_path / "b.pcap") as sink:
        for f in numbered(50):
            sink.write(f, 1.0)
    assert sink.files == [str(tmp_path / "b.pcap")]
    assert sorted(os.listdir(tmp_path)) == ["a.pcap", "b.pcap"]


def test_rotate_needs_a_path_and_a_positive_size(tmp_path):
    with pytest.raises(ValueError, match="path"):
        PcapSink(io.BytesIO(), rotate=1000)
    with pytest.raises(ValueError, match="path"):
        PcapSink("-", rotate=1000)
    with pytest.raises(ValueError, match="positive"):
        PcapSink(tmp_path / "x.pcap", rotate=0)


@pytest.mark.parametrize(
    ("text", "n"),
    [("4096", 4096), ("10k", 10240), ("10K", 10240), ("100M", 100 << 20), ("1G", 1 << 30),
     ("2MB", 2 << 20), ("1.5k", 1536), ("64KiB", 64 << 10)],
)
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "k", "-1", "0", "10x", "1 0k"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_cli_accepts_pcap_rotate():
    args = build_parser().parse_args(["serve", "--pcap", "c.pcap", "--pcap-rotate", "100M"])
    assert args.pcap_rotate == 100 << 20
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--pcap", "c.pcap", "--pcap-rotate", "lots"])


def _vhostnet(*argv: str, **kw) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "apps.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_cli_pcap_rotate_without_a_file_is_an_error(tmp_path):
    for pcap in ([], ["--pcap", "-"]):
        p = _vhostnet("serve", "--socket-path", str(tmp_path / "s.sock"), "--no-control",
                      *pcap, "--pcap-rotate", "10k")
        out, err = p.communicate(timeout=20)
        assert p.returncode == 2
        assert b"--pcap-rotate needs --pcap FILE" in err
        assert out == b""


def _read_until(p: subprocess.Popen[bytes], stream, want: int | bytes, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    while (len(buf) < want) if isinstance(want, int) else (want not in buf):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {buf!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    return buf


def test_serve_pcap_dash_streams_the_capture_alone_on_stdout(tmp_path):
    sock = tmp_path / "s.sock"
    p = _vhostnet("serve", "--socket-path", str(sock), "--pcap", "-", cwd=tmp_path)
    try:
        err = _read_until(p, p.stderr, b"The stack:", 20)
        assert b"-chardev socket" in err  # the QEMU hint went to stderr
        out = _read_until(p, p.stdout, 24, 5)
        assert struct.unpack("<I", out[:4])[0] == PCAP_MAGIC
        assert not (tmp_path / "-").exists()
    finally:
        p.send_signal(signal.SIGTERM)
        rest, _ = p.communicate(timeout=10)
    assert p.returncode == 0
    assert len(out + rest) == 24  # no guest, no frames: the header and nothing else
