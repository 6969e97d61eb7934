"""`vhostnet capture` end to end: a backend (`make_server` with a control socket and a pcap,
in a thread), the Python front-end as its guest sending DHCP, ARP, ping and TCP, and the
command as a subprocess printing tcpdump's lines for them (apps/capture/decode.py); the
same frames, from the pcap the backend wrote, read by tcpdump itself. Then -v, -x,
--json and --vnet (the virtio_net_hdr of each frame, with offloads negotiated)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from apps.capture.decode import Decoder
from apps.control import ControlClient, format_frame
from apps.serve import make_server
from apps.stack import StackConfig
from tests.vhostuser.conftest import make_frontend
from vhostuser.features import Feature, bits
from vhostuser.frontend import DEFAULT_FEATURES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G, S, BCAST = "52:54:00:12:34:56", "52:55:0a:00:02:02", "ff:ff:ff:ff:ff:ff"
TCPDUMP = shutil.which("tcpdump")
OFFLOADS = bits(Feature.NET_F_CSUM, Feature.NET_F_GUEST_CSUM)
RECORD = re.compile(r"\d\d:\d\d:\d\d\.\d{6} (guest>|>guest) (vnet \[[^]]*\] )?")


class Backend:
    """`vhostnet serve` in a thread: control socket, pcap of every frame, and a Python
    front-end attached as the guest (with `features`)."""

    def __init__(self, tmp_path, features: int = DEFAULT_FEATURES) -> None:
        self.path = str(tmp_path / "v.sock")
        self.ctl = self.path + ".ctl"
        self.pcap = str(tmp_path / "v.pcap")
        self.server, self.stack, self.app = make_server(
            stack_config=StackConfig(), socket_path=self.path, start_apps=False,
            control=self.ctl, pcap=self.pcap)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.fe = make_frontend(self.path, features=features)
        self.fe.post_rx_buffers(64)
        deadline = time.monotonic() + 5
        while self.server.device is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def captures(self) -> int:
        with ControlClient(self.ctl) as c:
            return c.request({"cmd": "status"})["status"]["captures"]

    def stop(self) -> None:
        self.fe.close()
        self.server.stop()
        self.thread.join(5)
        self.app.control.close()
        self.server.close()
        if self.app.pcap is not None:
            self.app.pcap.close()


@pytest.fixture
def backend(tmp_path):
    b = Backend(tmp_path)
    yield b
    b.stop()


class Capture:
    """`vhostnet capture ARGS` running: its output lines as they come."""

    def __init__(self, backend: Backend, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apps.cli", "capture", "--control", backend.ctl, *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 15
        while not backend.captures():
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                self.proc.stderr.read()
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, *words: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not all(any(w in line for line in self.lines) for w in words):
            assert time.monotonic() < deadline, (words, self.lines)
            time.sleep(0.05)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=10)
        self.reader.join(5)
        return err

    def records(self) -> list[str]:
        """The frames' text without time, arrow and vnet header (continuation lines of
        -v and -x joined with newlines, as tcpdump's)."""
        out: list[str] = []
        for line in self.lines:
            m = RECORD.match(line)
            if m:
                out.append(line[m.end():])
            elif out:
                out[-1] += "\n" + line
        return out


def guest_traffic(fe) -> None:
    """What a guest says first: DHCP, ARP for the gateway, a ping, a TCP SYN to a closed
    port (our stack resets it)."""
    e = Ether(src=G, dst=S) / IP(src="10.0.2.15", dst="10.0.2.2")
    for frame in (
        Ether(src=G, dst=BCAST) / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex("525400123456"), xid=0x1234)
        / DHCP(options=[("message-type", "discover"), ("param_req_list", [1, 3, 6]), "end"]),
        Ether(src=G, dst=BCAST) / ARP(op=1, hwsrc=G, psrc="10.0.2.15", pdst="10.0.2.2"),
        e / ICMP(id=0x77, seq=1) / Raw(b"x" * 56),
        e / TCP(sport=40000, dport=81, flags="S", seq=1000,
                options=[("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)]),
    ):
        fe.send_frame(bytes(frame))
        time.sleep(0.05)


@pytest.mark.parametrize("verbose", [(), ("-v",)], ids=["plain", "-v"])
def test_cli_capture_prints_tcpdumps_lines(backend, tmp_path, verbose):
    cap = Capture(backend, *verbose)
    try:
        guest_traffic(backend.fe)
        cap.wait_for("BOOTP/DHCP, Reply", "ICMP echo reply", "Flags [R.]", "is-at")
    finally:
        err = cap.stop()
    assert "frame(s) shown" in err
    text = "\n".join(cap.lines)
    for seen in () if verbose else ("guest> 52:54:00:12:34:56 > ff:ff:ff:ff:ff:ff, ethertype IPv4 (0x0800), "
                 "length 291: 0.0.0.0.68 > 255.255.255.255.67: BOOTP/DHCP, Request from "
                 "52:54:00:12:34:56, length 249",
                 ">guest 52:55:0a:00:02:02 > 52:54:00:12:34:56, ethertype ARP (0x0806), "
                 "length 42: Reply 10.0.2.2 is-at 52:55:0a:00:02:02, length 28",
                 "10.0.2.15 > 10.0.2.2: ICMP echo request, id 119, seq 1, length 64",
                 "10.0.2.2 > 10.0.2.15: ICMP echo reply, id 119, seq 1, length 64",
                 "10.0.2.15.40000 > 10.0.2.2.81: Flags [S], seq 1000",
                 "options [mss 1460,sackOK,nop,wscale 7,eol], length 0",
                 "10.0.2.2.81 > 10.0.2.15.40000: Flags [R.], seq 0, ack 1001, win 0, length 0"):
        assert seen in text, text
    if verbose:
        assert ("10.0.2.15.40000 > 10.0.2.2.81: Flags [S], cksum 0x9788 (correct), seq 1000"
                in text)
        assert "DHCP-Message (53), length 1: Offer" in text
        assert "Your-IP 10.0.2.15" in text and "Server-ID (54), length 4: 10.0.2.2" in text
        assert "(tos 0x0, ttl 64, id" in text
    if TCPDUMP is None:
        return
    # the same frames, as the backend wrote them to its pcap, read by tcpdump
    backend.stop()
    backend.stop = lambda: None
    out = subprocess.run([TCPDUMP, "-n", "-e", "-t", *verbose, "-r", backend.pcap],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    theirs: list[str] = []
    for line in out.splitlines():
        if line[:1] in (" ", "\t") and theirs:
            theirs[-1] += "\n" + line
        else:
            theirs.append(line)
    ours = cap.records()
    assert ours and ours == theirs[-len(ours):]


def test_cli_capture_hex_and_json(backend):
    cap = Capture(backend, "-x", "--count", "2")
    backend.fe.send_frame(bytes(Ether(src=G, dst=BCAST)
                                / ARP(op=1, hwsrc=G, psrc="10.0.2.15", pdst="10.0.2.2")))
    cap.proc.wait(10)
    cap.stop()
    assert "\t0x0000:  ffff ffff ffff 5254 0012 3456 0806 0001  ......RT..4V...." in cap.lines
    cap = Capture(backend, "--json", "--count", "2")
    backend.fe.send_frame(bytes(Ether(src=G, dst=BCAST)
                                / ARP(op=1, hwsrc=G, psrc="10.0.2.15", pdst="10.0.2.2")))
    cap.proc.wait(10)
    cap.stop()
    recs = [json.loads(line) for line in cap.lines]
    assert [r["dir"] for r in recs] == ["guest-tx", "guest-rx"]
    for r in recs:
        assert r["summary"] == Decoder().decode(bytes.fromhex(r["frame"]), r["len"])
        assert "vnet" not in r  # (only when asked for)
    assert recs[0]["summary"].endswith("Request who-has 10.0.2.2 tell 10.0.2.15, length 28")


def udp_with_partial_checksum(fe) -> None:
    """A UDP datagram whose checksum the guest leaves to the device (NEEDS_CSUM)."""
    frame = Ether(src=G, dst=S) / IP(src="10.0.2.15", dst="10.0.2.2") / UDP(sport=4000,
                                                                          dport=7) / b"hi"
    hdr = struct.pack("<BBHHHH", 1, 0, 0, 0, 34, 6) + bytes(fe.hdr_len - 10)
    fe.send_frame(bytes(frame), hdr=hdr)


def test_capture_vnet_records_carry_the_header_both_ways(tmp_path):
    b = Backend(tmp_path, DEFAULT_FEATURES | OFFLOADS)
    try:
        with ControlClient(b.ctl) as c, ControlClient(b.ctl) as plain:
            frames, others = c.frames(timeout=5, vnet=True), plain.frames(timeout=5)
            udp_with_partial_checksum(b.fe)
            b.fe.send_frame(bytes(Ether(src=G, dst=S) / IP(src="10.0.2.15", dst="10.0.2.2")
                                  / TCP(sport=4000, dport=81, flags="S")))
            recs = [next(frames) for _ in range(3)]
            assert "vnet" not in next(others)
    finally:
        b.stop()
    assert [r["dir"] for r in recs] == ["guest-tx", "guest-tx", "guest-rx"]
    # the guest's header, as it sent it; ours, with the TCP checksum left to the guest
    assert struct.unpack("<BBHHHH", bytes.fromhex(recs[0]["vnet"])) == (1, 0, 0, 0, 34, 6)
    assert recs[1]["vnet"] == "00" * 10
    assert struct.unpack("<BBHHHH", bytes.fromhex(recs[2]["vnet"])) == (1, 0, 0, 0, 34, 16)
    dec = Decoder()
    assert " guest> vnet [flags NEEDS_CSUM, gso_type NONE, csum_start 34, csum_offset 6] " \
           "52:54:00:12:34:56 > 52:55:0a:00:02:02" in format_frame(recs[0], dec)
    assert ">guest vnet [flags NEEDS_CSUM, gso_type NONE, csum_start 34, csum_offset 16] " \
           "52:55:0a:00:02:02 > 52:54:00:12:34:56" in format_frame(recs[2], dec)


def test_cli_capture_vnet(tmp_path):
    b = Backend(tmp_path, DEFAULT_FEATURES | OFFLOADS)
    try:
        cap = Capture(b, "--vnet", "-v", "--count", "1")
        udp_with_partial_checksum(b.fe)
        cap.proc.wait(10)
        cap.stop()
    finally:
        b.stop()
    first = cap.lines[0]
    assert " guest> vnet [flags NEEDS_CSUM, gso_type NONE, csum_start 34, csum_offset 6] " \
           "52:54:00:12:34:56 > 52:55:0a:00:02:02, ethertype IPv4 (0x0800), length 44: " \
           "(tos 0x0, ttl 64, id 1, offset 0, flags [none], proto UDP (17), length 30)" in first
    assert cap.lines[1] == "    10.0.2.15.4000 > 10.0.2.2.7: UDP, length 2"


def test_capture_request_checks_vnet(backend):
    with ControlClient(backend.ctl) as c:
        c.sock.sendall(b'{"cmd": "capture", "vnet": "yes"}\n')
        reply = c.read()
    assert reply == {"ok": False, "error": "vnet is true or false"}


def test_cli_capture_help_teaches_the_decoding_flags():
    r = subprocess.run([sys.executable, "-m", "apps.cli", "capture", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # (however argparse wrapped it)
    for words in ("tcpdump -n -e", "-v, --verbose", "-vvv DNS TTLs", "-x, --hex",
                  "tcpdump -XX", "--vnet", "NEEDS_CSUM", "gso_size", '"summary"'):
        assert words in text, words


@pytest.mark.parametrize("name", ["w.pcapng", "w.pcap"])
def test_cli_capture_writes_while_it_prints(backend, tmp_path, name):
    """-w FILE: the frames shown are also written (pcapng with directions, or pcap),
    with their own times and lengths; tshark and scapy read the file back, and it holds
    what the backend's own --pcap holds for the same frames."""
    from scapy.utils import rdpcap

    out = tmp_path / name
    cap = Capture(backend, "-w", str(out), "--filter", "icmp")
    try:
        guest_traffic(backend.fe)
        cap.wait_for("ICMP echo reply")
    finally:
        err = cap.stop()
    assert f"written to {out}" in err, err
    ours = rdpcap(str(out))
    assert [p[ICMP].type for p in ours] == [8, 0]
    theirs = [p for p in rdpcap(backend.pcap) if p.haslayer(ICMP)]
    assert [bytes(p) for p in ours] == [bytes(p) for p in theirs]
    assert all(abs(float(a.time) - float(b.time)) < 0.01 for a, b in zip(ours, theirs, strict=True))
    if shutil.which("tshark"):
        r = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "icmp.type",
                            "-e", "frame.packet_flags_direction"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        rows = [ln.split("\t") for ln in r.stdout.split("\n") if ln]
        assert [row[0] for row in rows] == ["8", "0"]
        if name.endswith(".pcapng"):  # the request came in to us, the reply went out
            assert [row[1] for row in rows] == ["0x00000001", "0x00000002"], rows


def test_cli_capture_write_errors_are_one_line(backend, tmp_path):
    for argv, words in ((["-w", str(tmp_path / "no" / "x.pcapng")], "No such file"),
                        (["--rotate", "1M"], "--rotate needs -w FILE")):
        r = subprocess.run([sys.executable, "-m", "apps.cli", "capture", "--control",
                            backend.ctl, *argv], cwd=REPO, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
