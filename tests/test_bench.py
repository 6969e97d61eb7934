"""The benchmarks never rot: a short smoke of `vhostnet bench` in CI (seconds, not minutes)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_ring_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "ring", "--seconds",
                           "0.3", "--sizes", "64,65536", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["ring"]
    assert {(r["direction"], r["frame_size"]) for r in results} == {
        ("guest->backend", 64), ("backend->guest", 64),
        ("guest->backend", 65536), ("backend->guest", 65536)}
    assert all(r["frames"] > 0 and r["backend_cpu_us_per_frame"] > 0 for r in results)
    assert "frames/s" in proc.stdout
