"""`make stress`: the data path under full load, for as long as you like.

Three parts, each failing loudly (exit status 1, the first broken invariant printed):

- **dpdk** — DPDK's testpmd (a C virtio driver no one here wrote) against our backend:
  txonly, rxonly and io forwarding, 64 and 1500-byte frames, over every driver path DPDK
  offers us (mergeable RX, plain, in-order, vectorized RX), on our C and Python ring
  paths. Per run: no queue declared broken, testpmd counts no error, every frame testpmd
  sent is counted by us, every RX buffer we filled is read by testpmd but at most a
  ring's worth, and what io forwards back is what we sent. Skipped with a message where
  dpdk-testpmd is not installed.
- **race** — our front-end in this process against our backend in another, both ring
  directions at once: frames of random sizes with sequence numbers go out in random
  batches and come back from an echo backend, checked byte for byte and in order. A
  second CPU writes ring entries and then the index while we read them, as a real
  driver does; a lost notification shows as a stall (no progress for STALL seconds).
  Over the C and Python ring paths, with and without EVENT_IDX, and with our C and
  Python front-end paths.
- **ring** — `vhostnet bench ring` N times in a row (it once crashed 2 runs in 7).

    python -m apps.bench.stress                  # everything: 30 s per DPDK case, ~25 min
    python -m apps.bench.stress dpdk --seconds 5
    python -m apps.bench.stress race --seconds 120
    python -m apps.bench.stress ring --runs 50
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import struct
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass

STALL = 5.0  # seconds without progress that count as a lost notification

# testpmd virtio-user configurations and the driver paths each must select
DPDK_CONFIGS: dict[str, dict] = {
    "mergeable": {"mrg_rxbuf": True, "in_order": False, "vectorized": False},
    "plain": {"mrg_rxbuf": False, "in_order": False, "vectorized": False},
    "in-order": {"mrg_rxbuf": True, "in_order": True, "vectorized": False},
    "in-order-plain": {"mrg_rxbuf": False, "in_order": True, "vectorized": False},
    "vectorized": {"mrg_rxbuf": False, "in_order": False, "vectorized": True},
    # packed rings (vhostuser/packed.py: the per-frame Python path, no C batches yet)
    "packed": {"mrg_rxbuf": True, "in_order": False, "vectorized": False, "packed": True},
    "packed-plain": {"mrg_rxbuf": False, "in_order": True, "vectorized": False,
                     "packed": True},
}
DPDK_PATHS: dict[str, tuple[str, str]] = {  # config -> (Tx path, Rx path) testpmd logs
    "mergeable": ("standard", "mergeable buffer"),
    "plain": ("standard", "standard"),
    "in-order": ("inorder", "inorder"),
    "in-order-plain": ("inorder", "inorder"),
    "vectorized": ("standard", "vectorized"),
    "packed": ("packed ring standard", "packed ring mergeable buffer"),
    "packed-plain": ("packed ring standard", "packed ring standard"),
}


class StressFailure(AssertionError):
    """A broken invariant under load."""


# -- dpdk -----------------------------------------------------------------------------
def dpdk_case(mode: str, size: int, config: str, seconds: float, ring: str = "c"):
    """One testpmd run against our backend; raises StressFailure on a broken invariant
    or when testpmd did not take the driver paths the configuration asks for."""
    from apps.harness.dpdk import run_vhostnet

    run = run_vhostnet(mode, size, seconds, ring=ring, **DPDK_CONFIGS[config])
    problems = run.problems()
    want = DPDK_PATHS[config]
    if run.paths != want:
        problems.append(f"testpmd took the {run.paths[0]} Tx / {run.paths[1]} Rx paths, "
                        f"not {want[0]} / {want[1]}")
    if problems:
        raise StressFailure(f"dpdk {mode} {size} B {config} (ring {ring}): "
                            + "; ".join(problems))
    return run


def dpdk_matrix(seconds: float, rings=("c", "python"), modes=("txonly", "rxonly", "io"),
                sizes=(64, 1500), configs=tuple(DPDK_CONFIGS), log=print) -> list:
    runs = []
    for ring, config, mode, size in itertools.product(rings, configs, modes, sizes):
        run = dpdk_case(mode, size, config, seconds, ring)
        log(f"dpdk  ring={ring:<6} {config:<15} {mode:<6} {size:>5} B  "
            f"{run.frames_per_s:>10.0f} frames/s  ok")
        runs.append(run)
    return runs


# -- race -----------------------------------------------------------------------------
ETHERTYPE = 0x88B5  # IEEE local experimental
_SEQ = struct.Struct("!Q")


_HEAD = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02" + ETHERTYPE.to_bytes(2, "big")
_FILL = bytes(range(256)) * 40  # 10 KiB: frames up to 9 KiB + an offset


def race_frame(seq: int, size: int) -> bytes:
    """Frame `seq`: Ethernet header, the sequence number, then bytes that start at an
    offset derived from it (up to 9000 bytes)."""
    start = seq & 0xFF
    return _HEAD + _SEQ.pack(seq) + _FILL[start:start + size - 22]


@dataclass
class RaceResult:
    ring: str
    frontend: str
    event_idx: bool
    frames: int
    bytes: int
    seconds: float


def race(seconds: float, ring: str = "c", *, frontend: str = "c", event_idx: bool = True,
         seed: int = 0, max_size: int = 1514, window: int = 96) -> RaceResult:
    """Echo frames through our backend (another process, ring path `ring`) for
    `seconds`: random sizes 60..max_size, random batches, at most `window` in flight.
    Every frame must come back, unchanged and in order; no stall, no ring error, and
    the backend's count must equal ours."""
    from apps.bench import _start_backend, _stop_backend
    from vhostuser.features import Feature, bit
    from vhostuser.frontend import (
        DEFAULT_FEATURES,
        FrontendError,
        GuestMemoryArea,
        MiB,
        NetFrontend,
    )

    rng = random.Random(seed)
    features = DEFAULT_FEATURES if event_idx else DEFAULT_FEATURES & ~bit(
        Feature.RING_F_EVENT_IDX)
    sent = received = nbytes = 0
    with tempfile.TemporaryDirectory(prefix="vhn-race-") as d:
        path = os.path.join(d, "race.sock")
        proc = _start_backend("echo", path, 0, ring)
        counts = None
        try:
            fe = NetFrontend(path, queue_size=256, features=features,
                             memory=GuestMemoryArea(((0, 32 * MiB),)))
            fe.connect()
            fe.start()
            hdr = fe.hdr_len
            if frontend == "c":
                tx = fe.tx_batch(max_size + hdr, 256)
                rx = fe.rx_batch(2048, 256)  # mergeable: big frames span buffers
            else:
                fe.post_rx_buffers(256, size=2048)
            pending: list[bytes] = []  # sent, not yet back, in order
            t0 = last = time.monotonic()
            while True:
                now = time.monotonic()
                if now - t0 >= seconds and not pending:
                    break
                if now - last > STALL:
                    raise StressFailure(
                        f"race ring={ring} frontend={frontend} event_idx={event_idx}: no "
                        f"progress for {STALL:.0f} s ({sent} sent, {received} back, "
                        f"{len(pending)} in flight): a lost notification?")
                room = window - len(pending)
                if now - t0 < seconds and room > 0:
                    k = rng.randint(1, min(room, 32))
                    frames = [race_frame(sent + i, rng.randint(60, max_size))
                              for i in range(k)]
                    if frontend == "c":
                        tx.reap()
                        n = tx.send(b"".join(frames), array("I", map(len, frames)))
                    else:
                        fe.reap_tx()
                        n = len(fe.send_frames(frames))
                    pending.extend(frames[:n])
                    sent += n
                if frontend == "c":
                    n, got = rx.reap(256, 256 * max_size)
                    if n != len(got):
                        raise StressFailure(f"race: {n} frames reaped, {len(got)} copied")
                else:
                    got = fe.recv_frames(0)
                for frame in got:
                    if not pending:
                        raise StressFailure(f"race: a frame came back that was never sent "
                                            f"({len(frame)} bytes)")
                    want = pending.pop(0)
                    if frame != want:
                        seq = _SEQ.unpack_from(frame, 14)[0] if len(frame) >= 22 else None
                        raise StressFailure(
                            f"race ring={ring} frontend={frontend}: frame {received} came "
                            f"back as {len(frame)} bytes (seq {seq}), sent {len(want)}")
                    received += 1
                    nbytes += len(frame)
                if got or (frontend == "c" and n):
                    last = time.monotonic()
                elif pending:
                    if frontend == "c":
                        rx.wait(0.01)
                    else:
                        time.sleep(0.0005)
                if sent and not pending:
                    last = time.monotonic()
            dt = time.monotonic() - t0
            fe.close()
            counts = _stop_backend(proc)
        except FrontendError as e:  # the backend broke a ring rule our driver checks
            raise StressFailure(f"race ring={ring} frontend={frontend} event_idx="
                                f"{event_idx}: {e}") from e
        finally:
            if counts is None:
                proc.kill()
                proc.wait(5)
    if counts["ring_errors"] or counts["drops"]:
        raise StressFailure(f"race ring={ring}: the backend counted {counts['ring_errors']} "
                            f"ring errors, drops {counts['drops']}")
    if counts["guest_tx_frames"] != sent:
        raise StressFailure(f"race ring={ring}: sent {sent}, the backend counted "
                            f"{counts['guest_tx_frames']}")
    return RaceResult(ring, frontend, event_idx, received, nbytes, dt)


RACE_CASES = [(ring, fe, ev) for ring in ("c", "python") for fe in ("c", "python")
              for ev in (True, False)]


def race_all(seconds: float, log=print) -> list[RaceResult]:
    out = []
    for i, (ring, fe, ev) in enumerate(RACE_CASES):
        r = race(seconds, ring, frontend=fe, event_idx=ev, seed=i)
        log(f"race  ring={ring:<6} frontend={fe:<6} event_idx={'on' if ev else 'off':<3} "
            f"{r.frames:>9} frames echoed ({r.frames / r.seconds:>8.0f}/s)  ok")
        out.append(r)
    return out


# -- ring -----------------------------------------------------------------------------
def ring_repeat(runs: int, seconds: float = 1.0, log=print) -> None:
    """`vhostnet bench ring` (every size, both directions) `runs` times."""
    from apps.bench import bench_ring

    for i in range(runs):
        t = time.monotonic()
        try:
            results = bench_ring(seconds)
        except Exception as e:
            raise StressFailure(f"bench ring run {i + 1} of {runs}: {e}") from e
        slowest = min(r.frames_per_s for r in results)
        log(f"ring  run {i + 1:>3}/{runs}  ok ({time.monotonic() - t:.0f} s, slowest "
            f"{slowest:.0f} frames/s)")


# -- the command ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m apps.bench.stress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="*", choices=["dpdk", "race", "ring", []],
                   metavar="PART", help="dpdk, race, ring (default: all three)")
    p.add_argument("--seconds", type=float, default=30.0,
                   help="per DPDK case and per race case (default 30)")
    p.add_argument("--runs", type=int, default=50, help="ring: bench runs (default 50)")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.runs <= 0:
        p.error("--seconds and --runs must be positive")
    parts = args.parts or ["dpdk", "race", "ring"]
    t0 = time.monotonic()
    try:
        if "dpdk" in parts:
            from apps.harness.dpdk import testpmd_path

            if testpmd_path() is None:
                print("dpdk  skipped: dpdk-testpmd is not installed (apt-get install "
                      "dpdk-dev)", flush=True)
            else:
                dpdk_matrix(args.seconds, log=lambda s: print(s, flush=True))
        if "race" in parts:
            race_all(args.seconds, log=lambda s: print(s, flush=True))
        if "ring" in parts:
            ring_repeat(args.runs, log=lambda s: print(s, flush=True))
    except StressFailure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(f"stress: all held ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
