"""A seeded lossy network simulation, as smoltcp's netsim: two of our stacks joined by a
`loopback_pair`, each end wrapped in a `FaultInjector` (loss, reordering, duplication and a
one-way delay), driven in lockstep on a simulated clock. No threads and no real time: the
same seed gives the same run, and a 10 MiB transfer takes simulated seconds but real
fractions of one.

Every case moves 10 MiB from A to B, checks that exactly those bytes arrive (SHA-256), and
records the goodput in simulated time. The figures are compared with the snapshot
`tests/data/tcp_netsim.json`: a case more than 30 % slower than its snapshot fails (the
table is printed either way). `NETSIM_UPDATE=1 pytest tests/test_tcp_netsim.py` rewrites the
snapshot.

Both ISNs sit just below 2^32, so every transfer crosses the sequence-number wrap."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netstack.iface import Interface, InterfaceConfig
from netstack.phy.fault import FaultInjector
from netstack.phy.loopback import loopback_pair
from netstack.socket.set import SocketSet
from netstack.socket.tcp import TcpSocket
from netstack.socket.tcp.state import State
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr

SNAPSHOT = Path(__file__).parent / "data" / "tcp_netsim.json"
UPDATE = os.environ.get("NETSIM_UPDATE") == "1"
TOLERANCE = 0.30  # fail below 70 % of the snapshot's goodput

A_IP, B_IP = "10.0.0.1", "10.0.0.2"
PORT = 80
MiB = 1 << 20
SIZE = 10 * MiB
DELAY = 0.005  # per FaultInjector lane: each frame crosses two, so 10 ms one way, 20 ms RTT
SIM_LIMIT = 3600.0  # simulated seconds before a run counts as stuck
STEP_LIMIT = 2_000_000


@dataclass(frozen=True)
class Case:
    name: str
    drop: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    both_ends: bool = True  # faults on both ends (data and ACKs), else on B's end only


CASES = [
    Case("loss0"),
    Case("loss1", drop=0.01),
    Case("loss5", drop=0.05),
    Case("loss10", drop=0.10),
    Case("loss1-reorder5", drop=0.01, reorder=0.05),
    Case("reorder10-dup5", reorder=0.10, duplicate=0.05),
    Case("loss5-reorder5-dup5", drop=0.05, reorder=0.05, duplicate=0.05),
    Case("loss5-one-end", drop=0.05, both_ends=False),
]

_results: dict[str, dict] = {}


def _isn(base: int):
    """ISNs a little below 2^32 (the transfer wraps), the same every run."""
    def isn(now, local, remote) -> int:
        return (base - 1000) & 0xFFFFFFFF
    return isn


class Sim:
    """Two interfaces, two socket sets, one wire, one clock."""

    def __init__(self, case: Case, seed: int) -> None:
        da, db = loopback_pair()
        fault = {"drop": case.drop, "reorder": case.reorder, "duplicate": case.duplicate,
                 "interval": 0.05}
        self.dev_a = (FaultInjector(da, seed=seed, delay=DELAY, **fault) if case.both_ends
                      else FaultInjector(da, seed=seed, delay=DELAY))
        self.dev_b = FaultInjector(db, seed=seed + 1, delay=DELAY, **fault)
        self.iface_a = _iface(1, A_IP)
        self.iface_b = _iface(2, B_IP)
        self.set_a, self.set_b = SocketSet(), SocketSet()
        self.now = 0.0
        self.steps = 0

    def poll(self) -> None:
        """Poll both sides at `now` until neither has anything more to do at this time."""
        while True:
            self.steps += 1
            busy = self.iface_a.poll(self.now, self.dev_a, self.set_a)
            busy = self.iface_b.poll(self.now, self.dev_b, self.set_b) or busy
            if not busy:
                return

    def advance(self) -> None:
        """Jump the clock to the next deadline of either side (or its devices)."""
        times = [t for t in (self.iface_a.poll_at(self.now, self.set_a),
                             self.iface_b.poll_at(self.now, self.set_b),
                             self.dev_a.poll_at(), self.dev_b.poll_at()) if t is not None]
        assert times, "both sides idle with the transfer unfinished"
        self.now = max(self.now, min(times))
        if min(times) <= self.now:  # something due now: move a tick so time passes
            self.now += 1e-6


def _iface(last: int, ip: str) -> Interface:
    return Interface(InterfaceConfig(EthernetAddress(bytes([2, 0, 0, 0, 0, last])),
                                     [Ipv4Cidr.parse(ip + "/24")]))


def transfer(case: Case, seed: int = 1) -> dict:
    """Move SIZE bytes A -> B; the figures of the run."""
    sim = Sim(case, seed)
    server, client = TcpSocket(), TcpSocket()
    server.isn_fn, client.isn_fn = _isn(0), _isn(0x80000000 * 2)
    server.listen((IPv4Address(B_IP), PORT))
    sim.set_b.add(server)
    sim.set_a.add(client)
    client.connect(sim.now, (IPv4Address(A_IP), 49152), (IPv4Address(B_IP), PORT))

    data = memoryview(random.Random(seed).randbytes(SIZE))
    sent, got = 0, hashlib.sha256()
    received = 0
    started = None
    while True:
        sim.poll()
        if started is None and client.state is State.ESTABLISHED:
            started = sim.now
        if sent < SIZE and client.may_send:
            sent += client.send(data[sent:sent + 256 * 1024])
            if sent == SIZE:
                client.close()
        while server.can_recv():
            chunk = server.recv()
            got.update(chunk)
            received += len(chunk)
        if received == SIZE and not server.may_recv:  # B saw A's FIN after every byte
            break
        assert server.state is not State.CLOSED or received == 0 or received == SIZE, \
            f"connection lost after {received} bytes: {server.error}"
        assert sim.now < SIM_LIMIT and sim.steps < STEP_LIMIT, \
            f"stuck: {received} of {SIZE} bytes by t={sim.now:.1f} s ({sim.steps} polls)"
        sim.poll()
        sim.advance()
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()
    elapsed = sim.now - started
    faults = sim.dev_a.stats, sim.dev_b.stats
    return {
        "goodput_mib_s": round(SIZE / MiB / elapsed, 4),
        "sim_seconds": round(elapsed, 3),
        "dropped": sum(s.rx.dropped + s.tx.dropped for s in faults),
        "retransmits": sum(v for k, v in client.stats.items() if "retrans" in k),
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_transfer_arrives_exactly(case: Case):
    result = transfer(case)
    _results[case.name] = result
    if case.drop:
        assert result["dropped"] > 0
    snapshot = _load().get(case.name)
    if UPDATE or snapshot is None:
        return
    floor = snapshot["goodput_mib_s"] * (1 - TOLERANCE)
    assert result["goodput_mib_s"] >= floor, (
        f"{case.name}: {result['goodput_mib_s']} MiB/s simulated, snapshot "
        f"{snapshot['goodput_mib_s']} (more than {TOLERANCE:.0%} worse)")


def _load() -> dict:
    if SNAPSHOT.exists():
        return json.loads(SNAPSHOT.read_text())
    return {}


@pytest.fixture(scope="module", autouse=True)
def table():
    """Print the table after the module; rewrite the snapshot under NETSIM_UPDATE=1."""
    yield
    if not _results:
        return
    snapshot = _load()
    print(f"\n{'case':<22}{'MiB/s':>9}{'snapshot':>10}{'sim s':>9}{'dropped':>9}{'rtx':>7}")
    for name, r in _results.items():
        old = snapshot.get(name, {}).get("goodput_mib_s", "-")
        print(f"{name:<22}{r['goodput_mib_s']:>9}{old:>10}{r['sim_seconds']:>9}"
              f"{r['dropped']:>9}{r['retransmits']:>7}")
    if UPDATE:
        snapshot.update(_results)
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
