"""`vhostnet bench vm` never rots: a smoke run (2 MiB, ours and slirp) through the CLI,
in a real TCG guest; every number is positive, every datagram came back and every HTTP
request was answered. passt gets its own smoke run where it is installed (and we are root);
where it cannot run, it is skipped with a note rather than failing the bench."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from apps.bench import vm as benchvm

no_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
METRIC_KEYS = ("download_mbit_s", "upload_mbit_s", "ping_avg_ms", "udp_rr_per_s",
               "http_req_per_s")


def _smoke(tmp_path, backends: str) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "vm", "--smoke",
                           "--backends", backends, "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())["vm"], proc.stdout


def _check(r: dict) -> None:
    for key in METRIC_KEYS:
        assert r[key] > 0, (r["backend"], key, r)
    # ping through the backend's NAT to a namespace the bench makes: root only
    if os.geteuid() == 0:
        assert r["ping_nat_ms"] > 0, r
    else:
        assert r["ping_nat_ms"] is None, r
    assert r["udp_replies"] == r["udp_sent"] == 200, r
    assert r["http_requests"] == 50 and r["http_s"] > 0, r


@pytest.mark.qemu
@no_qemu
def test_vm_bench_smoke(tmp_path):
    vm, stdout = _smoke(tmp_path, "ours,slirp")
    assert vm["size_mib"] == 2 and vm["http_count"] == 50
    results = {r["backend"]: r for r in vm["results"]}
    assert set(results) == {"ours", "slirp"}
    for r in results.values():
        _check(r)
    assert vm["ratios_to_slirp"]["download_mbit_s"]["slirp"] == 1.0
    assert vm["ratios_to_slirp"]["http_req_per_s"]["slirp"] == 1.0
    assert "UDP rr/s" in stdout and "HTTP req/s" in stdout and "ours" in stdout
    assert "ping NAT ms" in stdout
    left = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [n for n in left if n.startswith("vhnb")], f"the bench left namespaces: {left}"


@pytest.mark.qemu
@no_qemu
@pytest.mark.skipif(benchvm.passt_missing() is not None,
                    reason=f"passt: {benchvm.passt_missing()}")
def test_vm_bench_passt_smoke(tmp_path):
    vm, stdout = _smoke(tmp_path, "passt")
    assert [r["backend"] for r in vm["results"]] == ["passt"] and vm["skipped"] == {}
    _check(vm["results"][0])
    assert "passt" in stdout


def test_vm_bench_skips_a_missing_backend(monkeypatch, capsys):
    """A backend whose prerequisite is missing is skipped with the reason, in the JSON and
    the table; no guest boots."""
    monkeypatch.setitem(benchvm.PREREQUISITES, "passt", lambda: "passt is not installed")
    res = benchvm.bench_vm(2, ["passt"])
    assert res.results == [] and res.skipped == {"passt": "passt is not installed"}
    benchvm.print_vm(res)
    assert "passt    skipped: passt is not installed" in capsys.readouterr().out


def test_vm_bench_refuses_unknown_backends():
    with pytest.raises(ValueError, match="unknown backend"):
        benchvm.bench_vm(2, ["ours", "nope"])


def test_host_peers_take_a_client_going_away_quietly(capfd):
    """A client reset mid-download (the soak kills the backend that carried it) ends its
    request without a traceback on stderr; the server goes on serving."""
    peers = benchvm.HostPeers()
    try:
        c = socket.create_connection(("127.0.0.1", peers.http_port))
        c.sendall(b"GET /bytes/100000000 HTTP/1.0\r\n\r\n")
        c.recv(65536)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # an RST: the handler's next write fails
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", peers.http_port)) as c:
            c.sendall(b"GET /bytes/3 HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        assert data.endswith(b"\r\n\r\n\x00\x01\x02"), data
    finally:
        peers.close()
    assert "Traceback" not in capfd.readouterr().err
