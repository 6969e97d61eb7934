"""`vhostnet extcap`: running backends as live Wireshark interfaces. tshark (which we did
not write) lists a backend after `vhostnet extcap --install` and captures from it with a
capture filter the backend runs; the pcapng it writes is read back by tshark and scapy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from apps.capture import extcap
from apps.serve import make_server
from apps.stack import StackConfig
from tests.vhostuser.conftest import make_frontend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TSHARK = shutil.which("tshark")
G, S = "52:54:00:12:34:56", "52:55:0a:00:02:02"


@pytest.fixture
def backend(tmp_path, monkeypatch):
    monkeypatch.setenv("VHOSTNET_RUNTIME_DIR", str(tmp_path / "run"))
    path = str(tmp_path / "v.sock")
    server, stack, app = make_server(stack_config=StackConfig(), socket_path=path,
                                     start_apps=False, control=path + ".ctl")
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    fe = make_frontend(path)
    fe.post_rx_buffers(64)
    yield server, app, fe, path + ".ctl"
    fe.close()
    server.stop()
    t.join(5)
    app.control.close()
    server.close()


def run_extcap(*argv: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apps.cli", "extcap", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)


def test_the_registry_lists_serving_backends_and_forgets_stopped_ones(backend, tmp_path):
    server, app, fe, ctl = backend
    name = f"vhostnet-{os.getpid()}"
    assert extcap.running() == [(name, os.path.abspath(ctl))]
    lines = run_extcap("--extcap-interfaces", env=dict(os.environ)).stdout.splitlines()
    assert lines[0].startswith("extcap {version=")
    assert lines[1] == (f"interface {{value={name}}}{{display=vhostnet: VM NIC on "
                        f"{ctl[:-4]} (pid {os.getpid()})}}")
    assert run_extcap("--extcap-interface", name, "--extcap-dlts").stdout.strip() == \
        "dlt {number=1}{name=EN10MB}{display=Ethernet}"
    assert "{call=--direction}" in run_extcap("--extcap-interface", name,
                                              "--extcap-config").stdout
    bad = run_extcap("--extcap-interface", name, "--extcap-capture-filter", "tcp port")
    assert bad.returncode == 1 and "syntax error" in bad.stdout
    assert run_extcap("--extcap-interface", name, "--extcap-capture-filter",
                      "icmp or arp").returncode == 0
    # a backend that died without closing (kill -9) leaves a link: skipped and removed
    stale = tmp_path / "run" / "vhostnet-999999.ctl"
    os.symlink(str(tmp_path / "gone.ctl"), stale)
    assert [n for n, _ in extcap.running()] == [name] and not stale.exists()
    app.control.close()
    assert extcap.running() == []
    # a new backend's registration removes the links of processes that are gone
    dead = tmp_path / "run" / "vhostnet-999998-1.ctl"
    os.symlink(str(tmp_path / "gone.ctl"), dead)
    link = extcap.register(str(tmp_path / "other.ctl"))
    assert not dead.exists() and link is not None and os.path.islink(link)
    extcap.unregister(link)
    assert not os.path.lexists(link)


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tshark_lists_and_captures_a_backend(backend, tmp_path):
    server, app, fe, ctl = backend
    home = tmp_path / "home"
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    r = run_extcap("--install", env=env)
    assert r.returncode == 0, r.stderr
    assert (home / ".config" / "wireshark" / "extcap" / "vhostnet").exists()
    name = f"vhostnet-{os.getpid()}"
    listed = subprocess.run([TSHARK, "-D"], capture_output=True, text=True, env=env,
                            timeout=120).stdout
    assert name in listed, listed
    out = tmp_path / "live.pcapng"
    proc = subprocess.Popen([TSHARK, "-i", name, "-f", "icmp", "-c", "4", "-w", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        seq = 0
        while proc.poll() is None and time.monotonic() < deadline:
            seq += 1  # ARP and pings; only the ICMP passes the backend's filter
            fe.send_frame(bytes(Ether(src=G, dst=S) / IP(src="10.0.2.15", dst="10.0.2.2")
                                / ICMP(id=7, seq=seq) / Raw(b"x" * 32)))
            fe.recv_frames(timeout=0.2)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, proc.stderr.read()
    pkts = rdpcap(str(out))
    assert len(pkts) == 4 and all(p.haslayer(ICMP) for p in pkts)
    fields = subprocess.run([TSHARK, "-r", str(out), "-T", "fields", "-e", "icmp.type",
                             "-e", "frame.packet_flags_direction"], capture_output=True,
                            text=True, timeout=60, env=env).stdout.split("\n")
    rows = [f.split("\t") for f in fields if f]
    assert {r[0] for r in rows} == {"0", "8"}
    assert {r[1] for r in rows} == {"0x00000001", "0x00000002"}  # both directions
    comment = subprocess.run([TSHARK, "-r", str(out), "-q", "-z", "io,phs"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert comment.returncode == 0
    capinfo = subprocess.run(["capinfos", str(out)], capture_output=True, text=True,
                             timeout=60) if shutil.which("capinfos") else None
    if capinfo is not None:
        assert f"vhostnet backend pid {os.getpid()}" in capinfo.stdout, capinfo.stdout
