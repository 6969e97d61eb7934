"""The vhostnet program around the libraries (vhostuser, netstack, gateway).

At the top, the commands: `cli` (the `vhostnet` entry point), `serve` and `stack` (the
backend with its default stack), `bridge`, `get`, `demo`, and `common` (what they share).
Then one folder per job:

- `servers/`: the example servers the guest finds on our stack (echo, HTTP, ...);
- `control/`: the control socket behind `vhostnet status|faults|capture`;
- `harness/`: QEMU with the bundled guest, DPDK's testpmd, `serve` as a process to kill,
  the pytest plugin;
- `bench/`: `vhostnet bench`, `make stress` and `make soak`.
"""
