"""`vhostnet serve`'s IPv6 options: --ipv6-prefix is validated (SLAAC needs a /64) and
reaches the stack; --no-ipv6 leaves the stack IPv4-only."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv6Address

from apps.cli import _stack_config, build_parser
from apps.stack import build_stack


def _args(*argv):
    return build_parser().parse_args(["serve", "--socket-path", "/tmp/x.sock", *argv])


def test_prefix_reaches_the_stack():
    stack = build_stack(_stack_config(_args("--ipv6-prefix", "fd00:99:1:2::/64")))
    addrs = [c.address for c in stack.iface.ipv6_addrs]
    assert IPv6Address("fd00:99:1:2::2") in addrs and IPv6Address("fd00:99:1:2::3") in addrs


def test_no_ipv6():
    stack = build_stack(_stack_config(_args("--no-ipv6")))
    assert stack.iface.ipv6_addrs == [] and not stack.iface.ipv6_enabled


def test_bad_prefixes_are_refused_with_a_reason():
    for bad, why in (("fd00::/48", "SLAAC needs a /64"), ("10.0.0.0/64", "not an IPv6 prefix")):
        p = subprocess.run([sys.executable, "-m", "apps.cli", "serve", "--socket-path",
                            "/tmp/never.sock", "--ipv6-prefix", bad],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and why in p.stderr, p.stderr
