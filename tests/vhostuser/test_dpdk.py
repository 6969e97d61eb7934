"""DPDK's virtio-user PMD (testpmd, a C virtio driver no one here wrote) against our
backend at full rate: every forward mode, frame size and driver path DPDK offers us, on
our C ring path and (fewer cases) the Python one. `make stress` runs the same cases
for 30 s each; here each runs a second.

What each run must show (apps.harness.dpdk.DpdkRun.problems): no queue declared broken, no
error counted by testpmd, every frame testpmd sent counted by us (exactly), every RX
buffer we filled read by testpmd but at most a ring's worth still unread at the end,
and in io mode every frame forwarded back unchanged; and testpmd must have taken the
driver paths the configuration asks for (in-order, vectorized RX, ...)."""

from __future__ import annotations

import pytest

from apps.bench.stress import DPDK_CONFIGS, dpdk_case
from apps.harness import dpdk

needs_testpmd = pytest.mark.skipif(
    dpdk.testpmd_path() is None, reason="dpdk-testpmd is not installed (apt-get install dpdk-dev; "
    "ci/install.sh installs it)")

MODES = ["txonly", "rxonly", "io"]


@needs_testpmd
@pytest.mark.parametrize("size", [64, 1500])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", list(DPDK_CONFIGS))
def test_testpmd_virtio_user_at_full_rate(config, mode, size):
    run = dpdk_case(mode, size, config, 1.0, ring="c")
    assert run.frames_per_s > 10_000


@needs_testpmd
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", ["mergeable", "in-order-plain"])
def test_testpmd_on_the_python_ring_path(config, mode):
    run = dpdk_case(mode, 64, config, 1.0, ring="python")
    assert run.frames_per_s > 1_000


@needs_testpmd
def test_dpdk_vhost_reference_runs():
    """The reference `vhostnet bench dpdk` compares with: the same virtio-user port
    against DPDK's own vhost PMD."""
    for mode in ("txonly", "rxonly"):
        run = dpdk.run_dpdk_vhost(mode, 64, 0.5)
        assert run.problems() == []
        assert run.frames_per_s > 10_000


# testpmd's output as 22.11 prints it (the parsers are what the runs above rely on)
STOP_OUTPUT = """Telling cores to stop...
Waiting for lcores to finish...

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 12             RX-dropped: 0             RX-total: 12
  TX-packets: 1589568        TX-dropped: 67489888      TX-total: 69079456
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 12             RX-dropped: 3             RX-total: 15
  TX-packets: 1589568        TX-dropped: 67489888      TX-total: 69079456
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++
"""
PORT_OUTPUT = """
  ######################## NIC statistics for port 0  ########################
  RX-packets: 2934528    RX-missed: 0          RX-bytes:  187809792
  RX-errors: 1
  RX-nombuf:  2
  TX-packets: 256        TX-errors: 4          TX-bytes:  16384
"""


def test_testpmd_output_parsers():
    assert dpdk.parse_stats(STOP_OUTPUT) == dpdk.PortStats(12, 3, 1589568, 67489888)
    assert dpdk.parse_port_stats(PORT_OUTPUT) == dpdk.PortCounters(2934528, 1, 2, 256, 4)
    with pytest.raises(dpdk.TestpmdError):
        dpdk.parse_stats("Port 0 is closed")
    with pytest.raises(dpdk.TestpmdError):
        dpdk.parse_port_stats("")


@needs_testpmd
@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_virtio_user_server_mode_survives_20_backend_kills(packed):
    """DPDK's virtio-user in server mode takes a restarted backend back with base 0 for
    rings whose used index is far beyond it; we resume from the used ring (split) or
    where the descriptors' flags say we were (packed). Before that, the first reconnect
    left the queue broken ("avail index ... ahead of 0")."""
    run = dpdk.run_restarts(20, packed=packed)
    assert run.problems(deadline=2.0) == [], run.log[-2000:]
    assert max(run.recovered_s) < 2.0
