"""`vhostnet bench vm` never rots: a smoke run (2 MiB, ours and slirp) through the CLI,
in a real TCG guest; every number is positive and every datagram came back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]


def test_vm_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "vm", "--smoke",
                           "--backends", "ours,slirp", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vm = json.loads(out.read_text())["vm"]
    assert vm["size_mib"] == 2
    results = {r["backend"]: r for r in vm["results"]}
    assert set(results) == {"ours", "slirp"}
    for r in results.values():
        for key in ("download_mbit_s", "upload_mbit_s", "ping_avg_ms", "udp_rr_per_s"):
            assert r[key] > 0, (r["backend"], key, r)
        assert r["udp_replies"] == r["udp_sent"] == 200, r
    assert vm["ratios_to_slirp"]["download_mbit_s"]["slirp"] == 1.0
    assert "UDP rr/s" in proc.stdout and "ours" in proc.stdout
