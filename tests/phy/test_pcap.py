"""netstack.phy.pcap: captures readable by scapy and tshark, pcapng directions, live FIFOs."""

from __future__ import annotations

import io
import os
import select
import shutil
import struct
import subprocess
import threading

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.utils import PcapNgReader, PcapReader, rdpcap

from netstack.phy import Device, Direction
from netstack.phy.loopback import Loopback
from netstack.phy.pcap import PcapSink, PcapWriter

START = 1_700_000_000.25  # a fixed wall-clock date for the first frame

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed")

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


def frames() -> list[bytes]:
    return [
        bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst="10.0.0.2")),
        bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()),
        bytes(
            Ether(src=MAC_B, dst=MAC_A)
            / IP(src="10.0.0.2", dst="10.0.0.1")
            / UDP(sport=5353, dport=53)
            / (b"x" * 1400)
        ),
        bytes(
            Ether(src=MAC_A, dst=MAC_B) / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest()
        ),
    ]


def send(dev, data: bytes, now: float) -> None:
    dev.transmit(now).consume(len(data), lambda buf: buf.__setitem__(slice(None), data))


def loop_through(dev, now0: float = 100.0) -> list[tuple[float, bytes]]:
    """Send every frame and receive it back; the capture sees each twice (TX, then RX)."""
    expected = []
    for i, f in enumerate(frames()):
        now = now0 + i
        send(dev, f, now)
        got = dev.receive(now + 0.5)[0].consume(bytes)
        assert got == f
        expected += [(now, f), (now + 0.5, f)]
    return expected


def tshark_fields(path, *fields: str) -> list[list[str]]:
    args = [TSHARK, "-r", str(path), "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def test_global_header_bytes(tmp_path):
    path = tmp_path / "h.pcap"
    PcapSink(path).close()
    assert path.read_bytes() == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def test_record_bytes():
    buf = io.BytesIO()
    sink = PcapSink(buf, start=10.5)
    sink.write(b"\xa5" * 3, now=7.0)
    sink.write(b"\x5a" * 2, now=8.25)
    assert not buf.closed  # the caller's file stays open
    body = buf.getvalue()[24:]
    assert body == (
        struct.pack("<IIII", 10, 500_000, 3, 3)
        + b"\xa5" * 3
        + struct.pack("<IIII", 11, 750_000, 2, 2)
        + b"\x5a" * 2
    )


def test_writer_is_a_device_and_forwards(tmp_path):
    inner = Loopback(mtu=9000)
    with PcapWriter(inner, tmp_path / "x.pcap") as dev:
        assert isinstance(dev, Device)
        assert dev.capabilities().mtu == 9000
        assert dev.receive(0.0) is None
        assert dev.poll_at() is None
        send(dev, b"abc", 0.0)
        assert dev.poll_at() is not None
        with pytest.raises(AttributeError):
            dev.fileno()  # a Loopback has no fd


def test_scapy_reads_every_frame_with_bytes_and_times(tmp_path):
    path = tmp_path / "cap.pcap"
    with PcapWriter(Loopback(), path, start=START) as dev:
        expected = loop_through(dev)
    pkts = rdpcap(str(path))
    assert [bytes(p) for p in pkts] == [f for _, f in expected]
    now0 = expected[0][0]
    for p, (now, _) in zip(pkts, expected, strict=True):
        assert float(p.time) == pytest.approx(START + now - now0, abs=1e-6)


@needs_tshark
def test_tshark_reads_lengths_and_ethertypes(tmp_path):
    path = tmp_path / "cap.pcap"
    with PcapWriter(Loopback(), path, start=START) as dev:
        expected = loop_through(dev)
    rows = tshark_fields(path, "frame.len", "eth.type", "frame.time_epoch")
    assert len(rows) == len(expected)
    for (length, ethertype, epoch), (_, f) in zip(rows, expected, strict=True):
        assert int(length) == len(f)
        assert int(ethertype, 16) == int.from_bytes(f[12:14], "big")
        assert float(epoch) >= START  # a real date, not 1970
    assert rows[0][2].startswith("1700000000.25")


@needs_tshark
def test_snaplen_truncates_but_keeps_original_length(tmp_path):
    path = tmp_path / "snap.pcap"
    big = frames()[2]
    with PcapSink(path, snaplen=100) as sink:
        sink.write(big, 0.0)
    (pkt,) = rdpcap(str(path))
    assert bytes(pkt) == big[:100]
    assert pkt.wirelen == len(big)
    assert tshark_fields(path, "frame.len", "frame.cap_len") == [[str(len(big)), "100"]]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        PcapSink(io.BytesIO(), snaplen=0)
    with pytest.raises(ValueError):
        PcapSink(io.BytesIO(), format="erf")
    sink = PcapSink(io.BytesIO())
    sink.close()
    sink.close()
    with pytest.raises(ValueError):
        sink.write(b"x", 0.0)


def test_pcapng_by_extension_with_directions(tmp_path):
    path = tmp_path / "cap.pcapng"
    with PcapWriter(Loopback(), path, start=START) as dev:
        assert dev.sink.format == "pcapng"
        expected = loop_through(dev)
    with PcapNgReader(str(path)) as reader:
        pkts = list(reader)
    assert [bytes(p) for p in pkts] == [f for _, f in expected]
    # TX (outbound = 2) then RX (inbound = 1) for every frame
    assert [p.direction for p in pkts] == [2, 1] * len(frames())
    assert float(pkts[0].time) == pytest.approx(START, abs=1e-6)


@needs_tshark
def test_pcapng_tshark_directions(tmp_path):
    path = tmp_path / "cap.pcapng"
    with PcapSink(path, start=START) as sink:
        for i, f in enumerate(frames()):
            sink.write(f, float(i), Direction.RX if i % 2 else Direction.TX)
        sink.write(b"\x01" * 61, 9.0)  # no direction, odd length: padded
    rows = tshark_fields(path, "frame.len", "eth.type", "frame.packet_flags_direction")
    assert [int(r[0]) for r in rows] == [len(f) for f in frames()] + [61]
    assert [int(r[2], 16) for r in rows[:4]] == [2, 1, 2, 1]  # outbound, inbound
    assert rows[4][2] == ""  # no epb_flags option


def test_fifo_reader_sees_frames_live(tmp_path):
    """A reader on a FIFO gets each frame before the next one is written (flush per frame)."""
    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    seen: list[bytes] = []
    arrived = threading.Semaphore(0)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            with open(fifo, "rb") as f, PcapReader(f) as pcap:
                for pkt in pcap:
                    seen.append(bytes(pkt))
                    arrived.release()
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            arrived.release()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    dev = PcapWriter(Loopback(), fifo)  # blocks until the reader has opened the FIFO
    try:
        for i, f in enumerate(frames()):
            send(dev, f, float(i))
            assert arrived.acquire(timeout=10), f"frame {i} not seen while the writer is open"
            assert not errors, errors
            assert seen[-1] == f
    finally:
        dev.close()
    t.join(timeout=10)
    assert not t.is_alive()
    assert seen == frames()


@needs_tshark
def test_tshark_reads_a_pipe_live():
    """`tshark -r -` (tcpdump -r - style) prints each frame as soon as it is written."""
    proc = subprocess.Popen(
        [TSHARK, "-r", "-", "-l", "-T", "fields", "-e", "frame.len", "-e", "eth.type"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        sink = PcapSink(proc.stdin)
        for i, f in enumerate(frames()):
            sink.write(f, float(i), Direction.TX)
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, f"tshark printed nothing for frame {i}"
            length, ethertype = proc.stdout.readline().decode().split()
            assert int(length) == len(f)
            assert int(ethertype, 16) == int.from_bytes(f[12:14], "big")
        sink.close()
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
