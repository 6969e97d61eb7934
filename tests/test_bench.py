"""The benchmarks never rot: a short smoke of `vhostnet bench` in CI (seconds, not minutes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_ring_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "ring", "--seconds",
                           "0.3", "--sizes", "64,65536", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["ring"]
    assert sorted((r["direction"], r["frame_size"], r["ring"]) for r in results) == sorted(
        (d, size, ring) for d in ("guest->backend", "backend->guest") for size in (64, 65536)
        for ring in ("split", "packed"))
    assert {r["frontend"] for r in results if r["ring"] == "packed"} == {"python"}
    assert all(r["frames"] > 0 and r["backend_cpu_us_per_frame"] > 0 for r in results)
    assert "frames/s" in proc.stdout


def test_help_names_every_benchmark_and_option(capsys):
    """`vhostnet bench --help` is the bench parser's help (argparse's REMAINDER alone
    would refuse a leading option); -h and the older `bench -- --help` too."""
    from apps.cli import main

    for argv in (["bench", "--help"], ["bench", "-h"], ["bench", "--", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: vhostnet bench")
        for word in ("ring ", "dpdk ", "stack ", "memory ", "table ", "vm ", "frames/s", "--seconds", "--sizes",
                     "--connections", "--no-tap", "--smoke", "examples:"):
            assert word in out, word
    main_help = subprocess.run([sys.executable, "-m", "apps.cli", "--help"],
                               capture_output=True, text=True, timeout=30).stdout
    assert "vhostnet bench --help" in main_help


def test_options_before_the_benchmark_reach_it(monkeypatch):
    import apps.bench
    from apps.cli import main

    seen = {}
    monkeypatch.setattr(apps.bench, "bench_ring",
                        lambda seconds, sizes: seen.update(seconds=seconds, sizes=sizes) or [])
    assert main(["bench", "--seconds", "0.5", "--sizes", "64", "ring"]) == 0
    assert seen == {"seconds": 0.5, "sizes": [64]}
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--nonsense"])
    assert exc.value.code == 2


def test_bench_all_runs_every_part_into_one_json(tmp_path):
    """`make bench` = `vhostnet bench all --json`: every benchmark in turn, one JSON (a quick
    version here: short ring and stack, 50 connections, the VM and boot smokes on our
    backend)."""
    import json

    from apps.bench import main

    out = tmp_path / "all.json"
    assert main(["all", "--seconds", "0.3", "--sizes", "64", "--no-tap", "--connections", "50",
                 "--sockets", "300", "--repeat", "1",
                 "--smoke", "--backends", "ours", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"ring", "dpdk", "stack", "memory", "table", "vm", "boot", "machine",
            "time"} <= set(data)
    big = data["table"]["big"]
    assert big["sockets"] == 301 and big["time_wait"] == 100
    assert big["unknown_segment_us"] > 0 and big["bytes_per_connection"] > 0
    assert data["ring"] and data["vm"]
    # --backends ours: our three boots (no slirp, so no ratios), the downloads from us
    assert [b["variant"] for b in data["boot"]["boot"]] == ["kernel", "http", "tftp"]
    assert data["boot"]["repeat"] == 1 and data["boot"]["size_mib"] == 4
    assert all(r["backend"] == "ours" and r["sha256_ok"] for r in data["boot"]["tftp"])
    from apps.harness.dpdk import testpmd_path

    if testpmd_path() is not None:  # one size both ways, ours against DPDK's vhost
        assert {(r["direction"], r["frame_size"]) for r in data["dpdk"]} == {
            ("guest->backend", 64), ("backend->guest", 64)}
        assert all(r["ratio"] > 0 for r in data["dpdk"])


@pytest.mark.parametrize("backend", ["c", "python"])
def test_ring_holds_at_full_rate_with_big_frames(backend):
    """The front-end reaps used.idx while the backend publishes it, as fast as both go
    (64 KiB frames: the most publishes per byte of work). Publishing with
    struct.pack_into zeroed the word before writing it, so the front-end read used.idx 0
    ("more than the queue size past the last reaped") within a second, every run. Every
    frame sent must also reach the sink, with no queue declared broken."""
    from apps.bench import ring_guest_to_backend

    for _ in range(3):
        r = ring_guest_to_backend(65536, 0.7, backend=backend)
        assert r.frames > 0


@pytest.mark.parametrize("sizes", ["64,abc", "10", "70000"])
def test_bad_sizes_are_one_line_errors(sizes):
    p = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "ring", "--sizes", sizes],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "--sizes" in p.stderr and "Traceback" not in p.stderr
