"""`vhostnet bench boot` never rots: a smoke run through the CLI (one boot of each variant,
a 4 MiB file), in real TCG guests; every boot timed, every kernel download timed, every file
arrived whole. And the parts that read what the backends did: our serve log's lines (made
here by the real TFTP server, so a changed log format fails here, not in a
six-minute run), a QEMU filter-dump capture, and the inotify watch that times the kernel's
download."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess
import sys
import time
from ipaddress import IPv4Address

import pytest

from apps.bench import boot as benchboot

no_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")


@pytest.mark.qemu
@no_qemu
def test_boot_bench_smoke(tmp_path):
    out = tmp_path / "boot.json"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "boot", "--smoke",
                           "--json", str(out)], capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())["boot"]
    assert res["repeat"] == 1 and res["size_mib"] == 4 and res["rom"].endswith(".rom")
    boots = {b["variant"]: b for b in res["boot"]}
    assert list(boots) == ["kernel", "http", "tftp", "slirp"]
    for b in boots.values():
        assert len(b["boots_s"]) == 1 and b["boot_s"] > 0, b
    assert boots["kernel"]["kernel_s"] is None
    for v in ("http", "tftp", "slirp"):  # the kernel's download, from our log or the capture
        assert boots[v]["kernel_s"] > 0 and boots[v]["kernel_mbit_s"] > 0, boots[v]
    assert boots["http"]["kernel_options"] is None
    for v in ("tftp", "slirp"):  # iPXE asks for a blksize; both servers grant one (slirp's
        # answer from the untimed boot with a capture)
        assert int(boots[v]["kernel_options"]["blksize"]) > 512, boots[v]
    rows = {(r["backend"], r["client"], r["window_asked"]): r for r in res["tftp"]}
    assert {("ours", "busybox", None), ("ours", "vhn-tftp", 16), ("ours", "vhn-tftp", 1),
            ("slirp", "busybox", None), ("slirp", "vhn-tftp", 16)} <= set(rows)
    for r in rows.values():
        assert r["sha256_ok"] and r["seconds"] > 0 and r["mbit_s"] > 0, r
        assert r["options"] is not None and r["blksize"] >= 512, r  # slirp's: the probe
    assert rows[("ours", "vhn-tftp", 16)]["windowsize"] == 16
    assert rows[("ours", "vhn-tftp", 16)]["blksize"] == 1468
    assert rows[("ours", "busybox", None)]["windowsize"] == 1
    ratios = res["ratios_to_slirp"]
    assert ratios["boot_s"]["slirp"] == 1.0 and ratios["tftp_mbit_s"]["slirp busybox"] == 1.0
    assert "ours vhn-tftp -w 16" in ratios["tftp_mbit_s"]
    assert "boot s" in proc.stdout and "Mbit/s" in proc.stdout
    assert "TFTP from slirp" in proc.stdout and "MISMATCH" not in proc.stdout


def test_our_log_lines_are_read(tmp_path, caplog):
    """The TFTP server's line for each request, as `vhostnet serve --log-format json`
    writes it, gives the time and the options granted."""
    from apps.control import JsonFormatter
    from netstack.socket.tftp_server import TftpServer

    (tmp_path / "vmlinuz").write_bytes(b"k" * 5000)
    (tmp_path / "tftpboot.ipxe").write_bytes(b"#!ipxe\n")
    server = TftpServer(tmp_path)
    local, client = (IPv4Address("10.0.2.2"), 69), (IPv4Address("10.0.2.15"), 2000)
    with caplog.at_level(logging.INFO):
        server.handle(100.0, local, client, b"\0\1tftpboot.ipxe\0octet\0")
        server.handle(101.0, local, (client[0], 2001),
                      b"\0\1vmlinuz\0octet\0blksize\0001432\0tsize\0000\0")
    log = tmp_path / "serve.log"
    fmt = JsonFormatter()
    log.write_text("not json\n" + "".join(fmt.format(r) + "\n" for r in caplog.records))
    reqs = benchboot._our_requests(log)
    assert [(name, opts) for _, name, opts in reqs] == [
        ("tftpboot.ipxe", {}), ("vmlinuz", {"blksize": "1432", "tsize": "5000"})]
    assert reqs[0][0] == round(caplog.records[0].created, 6)


def test_opens_are_stamped_in_order(tmp_path):
    """The inotify watch sees each file opened in the directory (a read as a server does,
    and a write), and the kernel's time is from its first open to the initrd's."""
    watch = benchboot.OpenWatch(tmp_path)
    try:
        t0 = time.time()
        (tmp_path / "vmlinuz").write_bytes(b"k")
        time.sleep(0.3)
        for name in ("vmlinuz", "initrd.img", "vmlinuz"):
            if name == "initrd.img":
                (tmp_path / name).write_bytes(b"i")
            with open(tmp_path / name, "rb") as f:
                f.read()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
                len(watch.since(t0)) < 3 or watch.since(t0)[-1][1] != "vmlinuz"):
            time.sleep(0.05)
        opens = watch.since(t0)
    finally:
        watch.close()
    names = [n for i, (_, n) in enumerate(opens) if i == 0 or opens[i - 1][1] != n]
    assert names == ["vmlinuz", "initrd.img", "vmlinuz"]  # (the kernel merges repeats)
    kernel_s = benchboot._kernel_timing(opens)
    assert 0.25 < kernel_s < 2
    assert benchboot._kernel_timing(opens[:2]) is None  # no initrd: no figure


def _frame(sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2]))
    return b"\xff" * 6 + b"\x52" * 6 + b"\x08\x00" + ip + udp


def test_slirp_capture_is_read(tmp_path):
    """A classic pcap as QEMU's filter-dump writes it (host order, frames cut at maxlen):
    the RRQs in order with their times, and what the server answered each."""
    records = [
        (1.0, _frame(2000, 69, b"\0\1tftpboot.ipxe\0octet\0")),
        (1.1, _frame(69, 2000, b"\0\3\0\1#!ipxe")),  # DATA at once: no OACK
        (2.0, _frame(2001, 69, b"\0\1/vmlinuz\0octet\0blksize\0001432\0tsize\0000\0")),
        (2.0, _frame(69, 9999, b"\0\6blksize\0008\0")),  # another client's
        (2.1, _frame(69, 2001, b"\0\6blksize\0001428\0tsize\00014190528\0")),
        (2.2, _frame(2001, 69, b"\0\4\0\0")),
        (5.5, _frame(2002, 69, b"\0\1initrd.img\0octet\0")),
        (5.6, b"\x00" * 20),  # not IPv4
    ]
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1)
    for ts, frame in records:
        cut = frame[:96]
        data += struct.pack("<IIII", int(ts), round(ts % 1 * 1e6), len(cut), len(frame)) + cut
    pcap = tmp_path / "x.pcap"
    pcap.write_bytes(data)
    reqs = benchboot._slirp_requests(pcap)
    assert [(name, opts) for _, name, opts in reqs] == [
        ("tftpboot.ipxe", {}), ("vmlinuz", {"blksize": "1428", "tsize": "14190528"}),
        ("initrd.img", None)]
    assert benchboot._slirp_requests(tmp_path / "none.pcap") == []


def test_ratios_pair_each_row_with_slirps_same_client():
    T = benchboot.TftpResult
    res = benchboot.BootBench(1, 4, 1, 1)
    res.boot = [benchboot.BootResult("tftp", "t", 20.0, [20.0], 8.0, [8.0], 14.0),
                benchboot.BootResult("slirp", "s", 10.0, [10.0], 1.0, [1.0], 112.0)]
    res.tftp = [T("ours", "busybox", None, 1468, 1, {}, 2.0, 16.0, True),
                T("ours", "vhn-tftp", 16, 1468, 16, {}, 0.5, 64.0, True),
                T("ours", "vhn-tftp", 1, 1468, 1, {}, 2.0, 16.0, True),
                T("slirp", "busybox", None, 1428, 1, {}, 1.0, 32.0, True),
                T("slirp", "vhn-tftp", 16, 1428, 1, {"blksize": "1428"}, 1.0, 32.0, True)]
    benchboot._ratios(res)
    benchboot._notes(res)
    assert res.ratios_to_slirp["boot_s"] == {"tftp": 2.0, "slirp": 1.0}
    assert res.ratios_to_slirp["tftp_mbit_s"] == {
        "ours busybox": 0.5, "ours vhn-tftp -w 16": 2.0, "ours vhn-tftp -w 1": 0.5,
        "slirp busybox": 1.0, "slirp vhn-tftp -w 16": 1.0}
    assert any("slirp granted no windowsize" in n for n in res.notes)
