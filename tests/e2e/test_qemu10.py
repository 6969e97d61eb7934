"""The guest on QEMU 10 (Debian 13's, from the root ci/install.sh makes; MSI-X on, which
QEMU 7.2 cannot do under TCG): the core of the e2e suite again — every vhost-user message
QEMU 10 sends answered (none unknown, unsupported or refused), a DHCP lease, ping, DNS,
downloads and uploads by SHA-256 over IPv4 and IPv6 (SLAAC from our RA), and the gateway
to a server on the host's loopback."""

from __future__ import annotations

import time

import pytest

from apps.bench.vm import HostPeers
from apps.harness.vm import GuestImage, QemuVM, qemu10, vhost_user_nic_args
from tests.e2e.conftest import GUEST_MAC, Served
from tests.e2e.test_guest_tcp import pattern_sha256
from vhostuser.features import Feature

pytestmark = pytest.mark.qemu

MiB = 1 << 20
OUR_GLOBAL = "fd00:10:0:2::2"


@pytest.fixture(scope="module")
def served10(tmp_path_factory):
    s = Served(str(tmp_path_factory.mktemp("q10") / "vhost.sock"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def vm10(served10):
    binary = qemu10()
    if binary is None:
        pytest.skip("QEMU 10 is not installed: ci/install.sh makes its Debian 13 root "
                    "(debootstrap, bwrap)")
    nic = vhost_user_nic_args(served10.server.socket_path, mac=GUEST_MAC, vectors=None)
    with QemuVM(GuestImage.default(), nic_args=nic, qemu=binary) as vm:
        vm.wait_ready(timeout=180)
        vm.run_ok("ip link set eth0 up")
        vm.dhcp = vm.run_ok("udhcpc -i eth0 -n -q -t 5 -T 2 2>&1", timeout=60)
        yield vm


def test_every_message_answered_and_msix_in_use(vm10, served10):
    assert "10.0.2.15" in vm10.dhcp, vm10.dhcp
    be = served10.server.conn.backend
    assert not (be.counters["unknown_requests"] or be.counters["unsupported_requests"]
                or be.counters["invalid_requests"]), dict(be.counters)
    for f in (Feature.F_VERSION_1, Feature.NET_F_MRG_RXBUF, Feature.RING_F_EVENT_IDX):
        assert be.acked_features >> f & 1, f.name
    # the guest's driver took MSI-X vectors for the NIC (QEMU 7.2 needs vectors=0)
    irqs = vm10.run_ok("cat /proc/interrupts")
    assert "virtio0-input" in irqs or "virtio0-virtqueues" in irqs, irqs


def test_ping_and_dns(vm10):
    out = vm10.run_ok("ping -c 3 -W 5 10.0.2.2", timeout=60)
    assert " 0% packet loss" in out, out
    out = vm10.run_ok("nslookup gateway.vhostnet 10.0.2.3", timeout=30)
    assert "10.0.2.2" in out, out


def test_download_and_upload_by_hash(vm10):
    n = 16 * MiB
    out = vm10.run_ok(f"wget -q -O - http://10.0.2.2/bytes/{n} | sha256sum", timeout=180)
    assert out.split()[0] == pattern_sha256(n), out
    digest = vm10.run_ok(f"head -c {n + n // 64} /dev/urandom | tr -d '\\000' | head -c {n} "
                         "> /tmp/up && sha256sum /tmp/up", timeout=120).split()[0]
    out = vm10.run_ok("wget -q --post-file=/tmp/up -O - http://10.0.2.2/sink", timeout=180)
    assert out.split() == [str(n), digest], out


def test_ipv6_slaac_ping6_and_download(vm10):
    deadline = time.monotonic() + 20
    while "inet6 " not in (out := vm10.run_ok("ip -6 addr show dev eth0 scope global")) \
            or "tentative" in out:
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
    assert "fd00:10:0:2:" in out, out
    assert " 0% packet loss" in vm10.run_ok(f"ping6 -c 2 -W 5 {OUR_GLOBAL}", timeout=60)
    n = 4 * MiB
    out = vm10.run_ok(f"wget -q -O - http://[{OUR_GLOBAL}]/bytes/{n} | sha256sum",
                      timeout=120)
    assert out.split()[0] == pattern_sha256(n), out


def test_gateway_to_the_hosts_loopback(vm10):
    peers = HostPeers()  # /bytes/N on the host's 127.0.0.1, as the benchmarks use it
    try:
        n = MiB
        out = vm10.run_ok(f"wget -q -O - http://10.0.2.2:{peers.http_port}/bytes/{n} | "
                          "sha256sum", timeout=120)
        assert out.split()[0] == pattern_sha256(n), out
    finally:
        peers.close()
