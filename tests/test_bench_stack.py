"""A short smoke of `vhostnet bench stack` and `vhostnet bench memory` (seconds, not
minutes): every figure is there and positive. The TAP part against Linux needs root."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from apps.bench.stack import tap_bench, tap_skip_reason


def _bench(tmp_path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "bench", *args, "--seconds",
                           "0.5", "--json", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_stack_bench_loopback_smoke(tmp_path):
    data, stdout = _bench(tmp_path, "stack", "--no-tap")
    results = {r["name"]: r for r in data["stack"]["results"]}
    assert set(results) == {"loopback bulk (A->B)", "loopback req/resp (64 B)"}
    assert results["loopback bulk (A->B)"]["bytes"] > 0
    assert results["loopback req/resp (64 B)"]["transactions"] > 0
    assert all(r["value"] > 0 for r in results.values())
    assert "Mbit/s" in stdout and "trans/s" in stdout


@pytest.mark.netns
@pytest.mark.skipif(tap_skip_reason() is not None, reason=str(tap_skip_reason()))
def test_stack_bench_tap_smoke():
    results = {r.name: r for r in tap_bench(0.5)}
    assert set(results) == {"tap reader (us->linux)", "tap writer (linux->us)"}
    assert all(r.value > 0 and r.bytes > 0 for r in results.values())


def test_memory_bench_smoke(tmp_path):
    data, stdout = _bench(tmp_path, "memory", "--connections", "100")
    mem = data["memory"]
    assert mem["serve_idle_kib"] > 0 and mem["serve_attached_kib"] > 0
    st = mem["stack"]
    assert st["connections"] == 100
    assert 0 < st["idle_kib"] <= st["with_conns_kib"] <= st["load_peak_kib"]
    assert st["load_mbit_per_s"] > 0
    assert "VmRSS" in stdout
