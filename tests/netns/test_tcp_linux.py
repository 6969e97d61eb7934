"""Bulk TCP between the Linux kernel's stack (in a namespace of our own) and ours, over the
TAP, verified by SHA-256 in both directions: a Linux client sending to our `TcpListener`,
and our `TcpStream` sending to a Linux server. Then the same with our side of the TAP made
lossy (`FaultInjector`: loss, reordering, duplication) and with window scaling, timestamps
and SACK turned off in the namespace; and a SYN to a closed port refused by our RST.

Data is a deterministic pattern (a 64 KiB block from `random.Random(seed)` repeated), so
both ends compute the digest without shipping the bytes. Throughput is printed (`-s`)."""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from netstack.net import TcpListener, TcpStream
from netstack.phy.fault import FaultInjector
from tests.netns.conftest import KERNEL_IP, OUR_IP, PYTHON, Link, readline

pytestmark = pytest.mark.netns

MiB = 1 << 20
BLOCK = 64 * 1024
PORT = 8080

# Helpers shared by the in-namespace programs and the test: the same pattern on both sides.
PATTERN = f"""
import hashlib, random
def pattern(seed):
    return random.Random(seed).randbytes({BLOCK})
def chunks(total, seed):
    block = pattern(seed)
    mv = memoryview(block)
    while total:
        n = min(total, len(block))
        yield mv[:n]
        total -= n
"""

LINUX_SENDER = PATTERN + f"""
import socket, sys, time
total, seed = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("{OUR_IP}", {PORT}), timeout=60)
t0 = time.monotonic()
for chunk in chunks(total, seed):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""  # our close: everything was read
print(time.monotonic() - t0)
"""

LINUX_RECEIVER = f"""
import hashlib, socket, time
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("{KERNEL_IP}", {PORT}))
ls.listen(1)
print("ready", flush=True)
c, _ = ls.accept()
c.settimeout(60)
h, n = hashlib.sha256(), 0
buf = bytearray(1 << 20)
while k := c.recv_into(buf):
    h.update(memoryview(buf)[:k])
    n += k
c.close()
print(n, h.hexdigest(), flush=True)
"""

LINUX_CONNECT_CLOSED = f"""
import socket
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("{OUR_IP}", 9))
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""

_ns: dict = {}
exec(PATTERN, _ns)  # noqa: S102 - the same helper text the namespace runs
chunks = _ns["chunks"]


def expected_digest(total: int, seed: int) -> str:
    h = hashlib.sha256()
    for chunk in chunks(total, seed):
        h.update(chunk)
    return h.hexdigest()


def set_sysctls(link: Link, **values: int) -> None:
    for name, value in values.items():
        link.run("sysctl", "-q", "-w", f"net.ipv4.{name}={value}")


def make_lossy(link: Link, seed: int, **faults: float) -> FaultInjector:
    """Put a FaultInjector between our interface and the TAP (both directions: frames the
    kernel sends us and frames we send it)."""
    device = FaultInjector(link.device, seed=seed, **faults)
    link.runtime.attach(device)
    return device


def linux_to_us(link: Link, total: int, seed: int, timeout: float) -> float:
    """The kernel sends `total` bytes to our listener; we hash. Our throughput in MiB/s."""
    listener = TcpListener.bind(link.runtime, (OUR_IP, PORT))
    listener.set_timeout(10.0)
    proc = link.spawn(PYTHON, "-u", "-c", LINUX_SENDER,
                      total, seed, text=True)
    try:
        stream, addr = listener.accept()
        assert addr[0] == KERNEL_IP
        start = time.monotonic()
        stream.set_read_timeout(timeout)
        h, n = hashlib.sha256(), 0
        buf = bytearray(MiB)
        with stream:
            while k := stream.read_into(buf):
                h.update(memoryview(buf)[:k])
                n += k
            elapsed = time.monotonic() - start
        assert proc.wait(timeout) == 0, proc.stderr.read()
    finally:
        listener.close()
    assert n == total
    assert h.hexdigest() == expected_digest(total, seed)
    return total / MiB / elapsed


def us_to_linux(link: Link, total: int, seed: int, timeout: float) -> float:
    """We send `total` bytes to a kernel server that hashes. Throughput in MiB/s."""
    proc = link.spawn_python(LINUX_RECEIVER)
    start = time.monotonic()
    with TcpStream.connect(link.runtime, (KERNEL_IP, PORT), timeout=5.0) as stream:
        stream.set_write_timeout(timeout)
        for chunk in chunks(total, seed):
            stream.write_all(chunk)
        stream.shutdown("write")
        stream.set_read_timeout(timeout)
        assert stream.read() == b""  # the server's FIN after it read everything
        line = readline(proc, timeout)
    elapsed = time.monotonic() - start
    n, digest = line.split()
    assert int(n) == total
    assert digest == expected_digest(total, seed)
    return total / MiB / elapsed


def report(name: str, direction: str, total: int, rate: float) -> None:
    print(f"\n{name}: {direction} {total / MiB:.0f} MiB at {rate:.1f} MiB/s")


# -- clean link -------------------------------------------------------------------------
CLEAN_SIZE = 100 * MiB


def test_linux_sends_to_us(link: Link):
    rate = linux_to_us(link, CLEAN_SIZE, seed=1, timeout=30.0)
    report("clean", "linux->us", CLEAN_SIZE, rate)


def test_we_send_to_linux(link: Link):
    rate = us_to_linux(link, CLEAN_SIZE, seed=2, timeout=30.0)
    report("clean", "us->linux", CLEAN_SIZE, rate)


# -- lossy link, Linux's TCP options off -------------------------------------------------
LOSSY_SIZE = 8 * MiB
MIN_LOSSY_RATE = 2.0  # MiB/s; ~20 when fast retransmit works, ~1 when it does not
OPTIONS_OFF = {"tcp_window_scaling": 0, "tcp_timestamps": 0, "tcp_sack": 0}

CASES = [
    pytest.param({}, {"drop": 0.01, "reorder": 0.01}, id="loss1-reorder"),
    pytest.param(OPTIONS_OFF, {}, id="noopts"),
    pytest.param(OPTIONS_OFF, {"drop": 0.01, "reorder": 0.01}, id="noopts-loss1-reorder"),
    pytest.param({"tcp_sack": 0}, {"drop": 0.01, "duplicate": 0.01}, id="nosack-loss1-dup"),
    pytest.param({"tcp_timestamps": 0}, {"drop": 0.03, "reorder": 0.02},
                 id="nots-loss3-reorder"),
]


@pytest.mark.parametrize(("sysctls", "faults"), CASES)
@pytest.mark.parametrize("direction", ["linux->us", "us->linux"])
def test_lossy(link: Link, sysctls: dict, faults: dict, direction: str, request):
    set_sysctls(link, **sysctls)
    device = make_lossy(link, seed=len(request.node.name), **faults) if faults else None
    seed = random.Random(request.node.name).randrange(1 << 30)
    if direction == "linux->us":
        rate = linux_to_us(link, LOSSY_SIZE, seed, timeout=40.0)
    else:
        rate = us_to_linux(link, LOSSY_SIZE, seed, timeout=40.0)
    report(request.node.callspec.id, direction, LOSSY_SIZE, rate)
    if direction == "linux->us":
        # Without SACK, Linux recovers by fast retransmit only if it gets one duplicate
        # ACK per out-of-order segment; one per poll left it to the timer (< 1.5 MiB/s).
        assert rate > MIN_LOSSY_RATE, f"{rate:.1f} MiB/s: recovering by timeouts?"
    if device is not None and faults.get("drop"):
        assert device.stats.rx.dropped + device.stats.tx.dropped > 0


# -- refused ---------------------------------------------------------------------------
def test_linux_connect_to_closed_port_is_refused(link: Link):
    out = link.python(LINUX_CONNECT_CLOSED)
    assert out.stdout.strip() == "refused", out.stdout + out.stderr


def test_linux_connect_after_listener_closed_is_refused(link: Link):
    listener = TcpListener.bind(link.runtime, (OUR_IP, 9))
    listener.close()
    out = link.python(LINUX_CONNECT_CLOSED)
    assert out.stdout.strip() == "refused", out.stdout + out.stderr
