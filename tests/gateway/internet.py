"""The "internet" of the gateway tests: a network namespace the test makes, behind a veth
from the host (198.51.100.1 and 2001:db8:1::1 on our side, .2 and ::2 in it), running
`tests.gateway.peer`; removed afterwards. Nothing sent to it leaves the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

NET4, PEER4 = "198.51.100.1/24", "198.51.100.2"
NET6, PEER6 = "2001:db8:1::1/64", "2001:db8:1::2"
HTTP, UDP = 8080, 7007
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=check)


def spawn_peer(argv_prefix: list[str], *args: str) -> subprocess.Popen:
    """`python -m tests.gateway.peer ARGS` (after `argv_prefix`, e.g. `ip netns exec NS`),
    returned once it is ready."""
    proc = subprocess.Popen([*argv_prefix, sys.executable, "-u", "-m", "tests.gateway.peer",
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"peer did not start: {line!r} {proc.stderr.read()}")
    return proc


def stop_peer(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(5)
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()


@contextmanager
def internet_namespace(*, ipv6: bool = True, routes: tuple[str, ...] = ()) -> Iterator[str]:
    """The namespace (its name) with the peer on HTTP and UDP (IPv6 too unless `ipv6` is
    False); `routes` are more prefixes the host sends into it (which it drops)."""
    ns = "vhn-inet-" + uuid.uuid4().hex[:8]
    host_if, ns_if = "vhi" + uuid.uuid4().hex[:8], "vhn" + uuid.uuid4().hex[:8]
    _ip("netns", "add", ns)
    proc = None
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _ip("addr", "add", NET4, "dev", host_if)
        if ipv6:
            _ip("-6", "addr", "add", NET6, "dev", host_if, "nodad")
        _ip("link", "set", host_if, "up")
        for prefix in routes:
            _ip("route", "add", prefix, "via", PEER4)
        inns = ["ip", "netns", "exec", ns]
        cmds = [["ip", "addr", "add", f"{PEER4}/24", "dev", ns_if]]
        if ipv6:
            cmds.append(["ip", "-6", "addr", "add", f"{PEER6}/64", "dev", ns_if, "nodad"])
        cmds += [["ip", "link", "set", ns_if, "up"], ["ip", "link", "set", "lo", "up"]]
        for cmd in cmds:
            subprocess.run([*inns, *cmd], check=True, timeout=30, capture_output=True)
        proc = spawn_peer(inns, str(HTTP), str(UDP), *(() if ipv6 else ("0.0.0.0", "-")))
        yield ns
    finally:
        if proc is not None:
            stop_peer(proc)
        for prefix in routes:
            _ip("route", "del", prefix, check=False)
        _ip("link", "del", host_if, check=False)
        _ip("netns", "del", ns, check=False)
