"""`vhostnet capture` on a real guest: the bundled Linux guest in QEMU gets its address by
DHCP, pings us and downloads over HTTP while `vhostnet capture -v --vnet` watches its NIC.
The lines name what tcpdump names (DHCP message types, ICMP echo, the HTTP request, TCP
flags), the virtio_net_hdr shows the offloads Linux uses (partial checksums it leaves to
us, TSO segments we give it), and every line is the one tcpdump prints for the same frame,
read from the pcap the backend wrote at the same time."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from apps.control import ControlClient
from apps.harness.vm import QemuVM, vhost_user_nic_args
from apps.serve import make_server
from tests.e2e.conftest import GUEST_MAC

pytestmark = pytest.mark.qemu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORD = re.compile(r"\d\d:\d\d:\d\d\.\d{6} (guest>|>guest) (vnet \[[^]]*\] )?")


def records(lines: list[str]) -> list[tuple[str, str, str]]:
    """(arrow, vnet header, the frame's text with its -v lines) per captured frame."""
    out: list[list[str]] = []
    for line in lines:
        m = RECORD.match(line)
        if m:
            out.append([m.group(1), m.group(2) or "", line[m.end():]])
        elif out:
            out[-1][2] += "\n" + line
    return [tuple(r) for r in out]


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_capture_of_a_guest_session_reads_as_tcpdump(tmp_path, guest_image):
    sock, ctl, pcap = (str(tmp_path / n) for n in ("vhost.sock", "vhost.ctl", "s.pcap"))
    server, stack, app = make_server(socket_path=sock, control=ctl, pcap=pcap)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cap = subprocess.Popen([sys.executable, "-m", "apps.cli", "capture", "--control", ctl,
                            "-v", "--vnet"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            with ControlClient(ctl) as c:
                if c.request({"cmd": "status"})["status"]["captures"]:
                    break
            assert time.monotonic() < deadline and cap.poll() is None
            time.sleep(0.05)
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            vm.run_ok("ping -c 3 -i 0.2 10.0.2.2")
            vm.run_ok("wget -q -O - http://10.0.2.2/bytes/100000 | sha256sum", timeout=60)
            time.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGINT)
        out, err = cap.communicate(timeout=30)
        stack.stop()
        server.stop()
        thread.join(5)
        app.control.close()
        server.close()
        app.pcap.close()
    ours = records(out.splitlines())
    text = out
    for msg in ("Discover", "Offer", "Request", "ACK"):
        assert f"DHCP-Message (53), length 1: {msg}" in text
    assert "10.0.2.15 > 10.0.2.2: ICMP echo request" in text
    assert "10.0.2.2 > 10.0.2.15: ICMP echo reply" in text
    assert "\tGET /bytes/100000 HTTP/1.1" in text and "Flags [S.]" in text
    # Linux leaves its TCP checksums to the device; we give it TSO segments (GUEST_TSO4)
    assert any(a == "guest>" and "flags NEEDS_CSUM" in v and "csum_offset 16" in v
               for a, v, _ in ours)
    assert any(a == ">guest" and "gso_type TCPV4" in v and "gso_size" in v for a, v, _ in ours)
    # every frame as tcpdump prints it from the pcap the backend wrote alongside
    dump = subprocess.run(["tcpdump", "-n", "-e", "-t", "-v", "-r", pcap], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    theirs: list[str] = []
    for line in dump.splitlines():
        if line[:1] in (" ", "\t") and theirs:
            theirs[-1] += "\n" + line
        else:
            theirs.append(line)
    assert len(ours) > 25 and "lost" not in err
    assert [t for _, _, t in ours] == theirs[len(theirs) - len(ours):]
