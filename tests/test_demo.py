"""`vhostnet demo` end to end, as a newcomer runs it (a subprocess, real QEMU)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.qemu


def test_demo_passes_and_reports_every_step():
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "demo"], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    steps = [line for line in lines if line.startswith("[")]
    assert steps and all(line.rstrip().endswith("s)") and " ok (" in line for line in steps)
    assert lines[-1].startswith("demo passed in")


def test_netboot_demo_boots_the_guest_from_us_and_reports_every_step():
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "demo", "--netboot"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    steps = [line for line in lines if line.startswith("[")]
    assert len(steps) == 8 and all(" ok (" in line for line in steps)
    text = proc.stdout
    assert "told http://10.0.2.2/boot/boot.ipxe" in text and "GET /boot/kernel" in text
    assert "in userspace" in text and "udhcpc got 10.0.2.15" in text
    assert lines[-1].startswith("demo passed in")
