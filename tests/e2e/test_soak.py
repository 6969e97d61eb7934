"""`make soak` in seconds: the soak's whole path (the guest's transfer loops checked by
SHA-256, to our apps and through NAT, under `vhostnet faults`; a SIGKILL and restart; the
control socket polled every second; the drain and the verdict) on a few transfers for 42 s.
The RSS slope limit is loosened: a new backend's first half minute is its warm-up."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from apps.bench.soak import main, slope

SMOKE = ["--minutes", "0.7", "--transfers", "6", "--kills", "1", "--timeout", "8",
         "--every", "12", "--loss", "0.005", "--reorder", "0.005", "--duplicate", "0.005",
         "--max-rss-slope", "100"]


@pytest.mark.qemu
def test_soak_smoke_passes():
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "apps.bench.soak", *SMOKE],
                         capture_output=True, text=True, timeout=300)
    print(res.stdout, res.stderr, f"smoke: {time.monotonic() - t0:.0f} s", sep="\n")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "soak: PASS" in res.stdout and "kills 1: device back" in res.stdout


@pytest.mark.parametrize("args,error", [
    (["--minutes", "0"], "--minutes must be > 0"),
    (["--kills", "100"], "--kills 100 do not fit"),
    (["--loss", "2"], "probabilities in [0, 1]"),
    (["--minutes", "0.5", "--timeout", "20"], "at most a quarter of the run"),
])
def test_a_bad_option_is_one_line(capsys, args, error):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert error in err and err.count("\n") == 1, err


def test_slope_is_the_least_squares_fit():
    assert slope([(0, 5), (1, 5), (2, 5)]) == 0
    assert round(slope([(0, 0), (1, 2), (2, 1), (3, 3)]), 6) == 0.8
    assert slope([(1, 1)]) == 0
