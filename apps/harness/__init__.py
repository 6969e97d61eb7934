"""What drives the peers we did not write: QEMU with the bundled guest (`vm`), DPDK's
testpmd (`dpdk`), and the pytest plugin built on them (`testing`); and our own backend as
a process to kill, restart and watch (`backend`)."""
