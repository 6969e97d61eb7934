"""Fixtures for tests against the Linux kernel's stack: a network namespace `vhn-<random>`
of our own, a TAP whose kernel side lives in it, and our Interface + Runtime on the other
end of the TAP, polled by the runtime's own thread.

    kernel (namespace NS)        TAP         us (this process)
    10.55.0.1/24  <-----------------------> Interface 10.55.0.2/24, 52:55:0a:00:37:02

Commands run in the namespace with `ip netns exec NS ...` (`Link.run`, `Link.python`,
`Link.spawn`), always with a timeout. Teardown always runs, failure or not, in this order:
spawned processes killed (by their own pid), runtime stopped, capture closed, TAP closed,
namespace deleted.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

from netstack.iface import Interface, InterfaceConfig
from netstack.phy.pcap import PcapWriter
from netstack.phy.tap import TapDevice
from netstack.runtime import Runtime
from netstack.socket.icmp import IcmpSocket
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.icmpv4 import Icmpv4Message, Icmpv4Repr
from netstack.wire.ipv4 import Ipv4Cidr

KERNEL_IP = "10.55.0.1"
OUR_IP = "10.55.0.2"
OUR_MAC = "52:55:0a:00:37:02"
PYTHON = sys.executable  # the venv's python, run inside the namespace
COMMAND_TIMEOUT = 30.0
# iputils ping when installed, else busybox's (same options for what we use: -c -i -s -W).
PING = ("ping",) if shutil.which("ping") else ("busybox", "ping")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespace tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (modprobe tun)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if PING == ("busybox", "ping") and shutil.which("busybox") is None:
        return "neither ping nor busybox is installed"
    return None


def pytest_collection_modifyitems(config, items) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=reason))


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll `predicate` until it returns something true; that value, or None at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def readline(proc: subprocess.Popen, timeout: float) -> str:
    """The next line `proc` prints (stripped); AssertionError if none comes in time. For
    processes that print a line at a time (python -u)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"{proc.args[4:]!r} printed nothing in {timeout} s")
    return proc.stdout.readline().strip()


@dataclass
class Link:
    """One namespace, its TAP and our stack on it. `device` is what the runtime polls: the
    TAP, or a PcapWriter around it."""

    ns: str
    tap: TapDevice
    device: object
    iface: Interface
    runtime: Runtime
    procs: list[subprocess.Popen] = field(default_factory=list)

    def _argv(self, argv) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *map(str, argv)]

    def run(self, *argv, timeout: float = COMMAND_TIMEOUT, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command in the namespace to completion; its text output."""
        return subprocess.run(self._argv(argv), capture_output=True, text=True,
                              timeout=timeout, check=check, input=input)

    def python(self, code: str, *args, timeout: float = COMMAND_TIMEOUT,
               check: bool = True) -> subprocess.CompletedProcess:
        """Run Python code in the namespace (the kernel's sockets, not ours)."""
        return self.run(PYTHON, "-c", code, *args, timeout=timeout, check=check)

    def spawn(self, *argv, **popen_kwargs) -> subprocess.Popen:
        """Start a long-running command in the namespace; killed at teardown."""
        popen_kwargs.setdefault("stdout", subprocess.PIPE)
        popen_kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self._argv(argv), start_new_session=True, **popen_kwargs)
        self.procs.append(proc)
        return proc

    def spawn_python(self, code: str, *args, ready: str = "ready",
                     timeout: float = 10.0) -> subprocess.Popen:
        """Start Python code in the namespace and wait until it prints the `ready` line
        (so its socket is bound before we send)."""
        proc = self.spawn(PYTHON, "-u", "-c", code, *args, text=True)
        line = readline(proc, timeout)
        if line != ready:
            proc.wait(2.0)
            raise AssertionError(f"expected {ready!r}, got {line!r}: {proc.stderr.read()}")
        return proc

    def kill_processes(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)  # its own session: pgid == pid
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(2.0)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def ping(self, dst: str, count: int, *options: str, timeout: float = COMMAND_TIMEOUT
             ) -> tuple[int, int]:
        """The kernel pings `dst`: (transmitted, received)."""
        out = self.run(*PING, "-c", count, *options, dst, timeout=timeout, check=False)
        m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out.stdout)
        if m is None:
            raise AssertionError(f"ping said: {out.stdout}{out.stderr}")
        return int(m[1]), int(m[2])

    def add_socket(self, sock) -> int:
        return self.runtime.add_socket(sock)

    def counter(self, name: str) -> int:
        with self.runtime.lock:
            return self.iface.stats[name]


class Pinger:
    """Echo requests from our ICMP socket, blocking for the matching reply."""

    def __init__(self, runtime: Runtime, ident: int) -> None:
        self.runtime = runtime
        self.ident = ident
        self.sock = IcmpSocket()
        self.sock.bind(ident)
        self.cond = threading.Condition(runtime.lock)
        self.sock.set_waker(self.cond.notify_all)
        runtime.add_socket(self.sock)

    def ping(self, dst: str, seq: int, data: bytes, timeout: float = 2.0
             ) -> tuple[Icmpv4Repr, IPv4Address] | None:
        """The echo reply with this sequence number and its sender, or None at timeout."""
        with self.runtime.lock:
            self.sock.send_echo_request(IPv4Address(dst), seq, data)
        self.runtime.wake()
        deadline = time.monotonic() + timeout
        with self.runtime.lock:
            while True:
                while self.sock.can_recv():
                    reply, src = self.sock.recv_repr()
                    if reply.msg_type == Icmpv4Message.ECHO_REPLY and reply.seq_no == seq:
                        return Icmpv4Repr.echo_reply(reply.ident, reply.seq_no,
                                                     bytes(reply.data)), src
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Make namespaces `vhn-<random>`; every one is deleted at teardown."""
    from pyroute2 import netns as pyr_netns

    made: list[str] = []

    def make() -> str:
        name = "vhn-" + uuid.uuid4().hex[:10]
        pyr_netns.create(name)
        made.append(name)
        return name

    yield make
    for name in made:
        pyr_netns.remove(name)
        assert name not in pyr_netns.listnetns(), f"namespace {name} left behind"


@pytest.fixture
def make_link(make_netns) -> Iterator[Callable[..., Link]]:
    """`make_link(kernel_addr=..., our_addrs=..., pcap=None, offload=True)`: a namespace
    with a TAP up in it (kernel side `kernel_addr`, None for none) and our stack running on
    the TAP with `our_addrs` (empty for a DHCP client). `pcap`: a path to capture every
    frame to. `offload`: the TAP's checksum/TSO offloads (TCP as 64 KiB segments), as the
    stack bench runs it; tests/netns/test_tap_offload.py covers offload=False too."""
    with ExitStack() as stack:

        def make(kernel_addr: str | None = f"{KERNEL_IP}/24",
                 our_addrs: tuple[str, ...] = (f"{OUR_IP}/24",),
                 pcap: str | os.PathLike | None = None, offload: bool = True) -> Link:
            ns = make_netns()
            tap = TapDevice(netns=ns, offload=offload)
            stack.callback(tap.close)
            if kernel_addr is not None:
                tap.add_address(kernel_addr)
            tap.up()
            device = tap
            if pcap is not None:
                device = PcapWriter(tap, pcap)
                stack.callback(device.close)
            iface = Interface(InterfaceConfig(
                hardware_addr=EthernetAddress.parse(OUR_MAC),
                ip_addrs=[Ipv4Cidr.parse(a) for a in our_addrs]))
            runtime = Runtime(iface, device)
            link = Link(ns, tap, device, iface, runtime)
            runtime.start()
            stack.callback(runtime.stop)
            stack.callback(link.kill_processes)  # callbacks run last-in first-out
            return link

        yield make


@pytest.fixture
def link(make_link) -> Link:
    """The default link: kernel 10.55.0.1/24, us 10.55.0.2/24."""
    return make_link()


@pytest.fixture
def pinger(link) -> Pinger:
    return Pinger(link.runtime, ident=0x3702)
