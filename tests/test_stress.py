"""`make stress` in seconds: the race (our front-end and an echo backend in two processes,
both rings at once, every frame checked) on every path, the repeated ring bench, and the
command's checks. The DPDK part runs in tests/vhostuser/test_dpdk.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apps.bench.stress import RACE_CASES, StressFailure, race, race_frame, ring_repeat


@pytest.mark.parametrize("ring,frontend,event_idx", RACE_CASES)
def test_race_echoes_every_frame_in_order(ring, frontend, event_idx):
    r = race(1.0, ring, frontend=frontend, event_idx=event_idx, seed=7)
    assert r.frames > 500
    assert r.bytes >= 60 * r.frames


def test_race_with_frames_that_span_rx_buffers():
    """9000-byte frames over 2 KiB RX buffers: each frame merges up to 5 buffers."""
    r = race(1.0, "c", max_size=9000, window=40)
    assert r.frames > 100


def test_race_frames_carry_their_sequence_number():
    a, b = race_frame(1, 60), race_frame(2, 1514)
    assert len(a) == 60 and len(b) == 1514
    assert a[14:22] == (1).to_bytes(8, "big") and a[22:] != b[22:60]


def test_ring_bench_repeated():
    ring_repeat(2, seconds=0.2, log=lambda s: None)


def test_a_stall_is_a_failure(monkeypatch):
    """Frames that stop coming back (a lost notification looks the same) fail the race
    within STALL seconds instead of hanging it."""
    import apps.bench.stress

    monkeypatch.setattr(apps.bench.stress, "STALL", 1.0)

    def no_reap(self, *a, **k):  # the front-end never looks at RX: no progress
        return 0, []

    from vhostuser.frontend import RxBatch

    monkeypatch.setattr(RxBatch, "reap", no_reap)
    with pytest.raises(StressFailure, match="no progress"):
        race(5.0, "c")


@pytest.mark.parametrize("argv,message", [
    (["--seconds", "0"], "must be positive"),
    (["--runs", "-1"], "must be positive"),
    (["nonsense"], "invalid choice"),
])
def test_bad_arguments_are_one_line_errors(argv, message):
    p = subprocess.run([sys.executable, "-m", "apps.bench.stress", *argv], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr
