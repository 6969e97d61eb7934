"""`--pcap` at the virtqueue: the capture holds exactly what the guest sent and got, and
real tools (tshark, scapy) read it."""

from __future__ import annotations

import subprocess

import pytest
from scapy.utils import rdpcap

from apps.harness.vm import QemuVM, vhost_user_nic_args
from tests.e2e.conftest import GUEST_MAC, Served

pytestmark = pytest.mark.qemu


def test_pcap_of_a_guest_session(tmp_path, guest_image):
    pcap = tmp_path / "session.pcap"
    served = Served(str(tmp_path / "vhost.sock"), pcap=str(pcap))
    try:
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(served.server.socket_path,
                                                              mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            vm.run_ok("ping -c 5 -i 0.1 10.0.2.2")
            dev = served.server.device
            counted = dev.stats["guest_tx_frames"] + dev.stats["guest_rx_frames"]
    finally:
        served.stop()
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "icmp.type",
                          "-e", "dhcp.option.dhcp", "-Y", "icmp or dhcp"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[0] for r in rows if r[0]].count("8") == 5  # echo requests from the guest
    assert [r[0] for r in rows if r[0]].count("0") == 5  # our replies
    dhcp = [r[1] for r in rows if len(r) > 1 and r[1]]
    assert dhcp[:4] == ["1", "2", "3", "5"]  # DISCOVER OFFER REQUEST ACK
    frames = rdpcap(str(pcap))
    assert len(frames) >= counted - 2  # frames after the counters were read may follow
    assert all(bytes(f)[:6] in (bytes.fromhex("525400123456"), b"\xff" * 6,
                                bytes.fromhex("52550a000202")) or bytes(f)[0] & 1
               for f in frames)


def test_a_pcap_reader_that_exits_stops_the_capture_not_the_traffic(tmp_path, guest_image):
    """`vhostnet serve --pcap - | tcpdump -c 3 -r -`: when the reader has had enough, the
    next write gets EPIPE. That took the interface poll down on every frame (the guest's
    ping 100 % lost, ~35,000 tracebacks in 25 s). Now the capture stops with one log line,
    `status` says so, and the guest's traffic goes on."""
    import json
    import os
    import sys

    sock = str(tmp_path / "vhost.sock")
    ctl = str(tmp_path / "vhost.ctl")
    err = open(tmp_path / "err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--socket-path",
                             sock, "--control", ctl, "--pcap", "-"],
                            stdout=subprocess.PIPE, stderr=err, cwd=os.getcwd())
    try:
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            head = proc.stdout.read(24 + 3 * 16)  # the header and a few frames' worth
            assert head[:4] == b"\xd4\xc3\xb2\xa1"  # pcap magic (little-endian)
            proc.stdout.close()  # the reader exits
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            out = vm.run_ok("ping -c 20 -i 0.1 10.0.2.2", timeout=60)
            assert " 0% packet loss" in out, out
            status = json.loads(subprocess.run(
                [sys.executable, "-m", "apps.cli", "status", "--control", ctl, "--json"],
                capture_output=True, text=True, timeout=30, check=True).stdout)
            assert status["pcap"]["writing"] is False
            assert "BrokenPipeError" in status["pcap"]["stopped"]
    finally:
        proc.terminate()
        proc.wait(10)
    err.seek(0)
    log = err.read()
    assert log.count("pcap capture stopped") == 1, log
    assert "Traceback" not in log, log
    assert len(log.splitlines()) < 40, log


def test_filters_in_the_backend_with_a_guest(tmp_path, guest_image):
    """pcap-filter expressions where the backend runs them, with a Linux guest: `serve
    --pcap-filter 'tcp port 80'` writes only the HTTP frames; `vhostnet capture --filter
    'icmp or arp'` gets only ARP and ICMP while the guest also downloads by HTTP; and
    `faults --match icmp --loss 1` loses every ping while the download still works."""
    import json
    import os
    import sys
    import time

    from scapy.layers.inet import ICMP
    from scapy.layers.l2 import ARP, Ether

    sock, ctl, pcap = (str(tmp_path / n) for n in ("vhost.sock", "vhost.ctl", "http.pcap"))
    cli = [sys.executable, "-m", "apps.cli"]
    serve = subprocess.Popen([*cli, "serve", "--socket-path", sock, "--control", ctl,
                              "--pcap", pcap, "--pcap-filter", "tcp port 80"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             cwd=os.getcwd())
    capture = None
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(ctl):
            assert time.monotonic() < deadline and serve.poll() is None, serve.stderr.read()
            time.sleep(0.1)
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            capture = subprocess.Popen([*cli, "capture", "--control", ctl, "--json",
                                        "--filter", "icmp or arp"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, cwd=os.getcwd())
            time.sleep(2)  # (the capture attaches)
            vm.run_ok("ip neigh flush dev eth0; ping -c 3 -i 0.2 10.0.2.2")
            vm.run_ok("wget -q -O /tmp/a http://10.0.2.2/bytes/200000 && wc -c /tmp/a",
                      timeout=60)
            time.sleep(1)
            capture.terminate()
            out, err = capture.communicate(timeout=10)
            frames = [Ether(bytes.fromhex(json.loads(line)["frame"]))
                      for line in out.splitlines()]
            assert all(p.haslayer(ARP) or p.haslayer(ICMP) for p in frames)
            icmp = [p[ICMP].type for p in frames if p.haslayer(ICMP)]
            assert icmp.count(8) == 3 and icmp.count(0) == 3, icmp
            assert any(p.haslayer(ARP) for p in frames)

            r = subprocess.run([*cli, "faults", "--control", ctl, "--loss", "1",
                                "--match", "icmp"], capture_output=True, text=True,
                               timeout=30, cwd=os.getcwd())
            assert r.returncode == 0 and "match=icmp" in r.stdout, r.stderr
            ping = vm.run("ping -c 3 -i 0.2 -W 1 10.0.2.2", timeout=30)
            assert "100% packet loss" in ping.output, ping.output
            got = vm.run_ok("wget -q -O /tmp/b http://10.0.2.2/bytes/300000 && wc -c < /tmp/b",
                            timeout=60)
            assert got.split()[-1] == "300000"
            faults = json.loads(subprocess.run(
                [*cli, "faults", "--control", ctl, "--json"], capture_output=True,
                text=True, timeout=30, check=True).stdout)
            assert faults["knobs"] == {"drop": 1.0, "match": "icmp"}
            assert faults["stats"]["rx"]["dropped"] >= 3
            # the download's segments and the guest's ACKs, untouched
            assert faults["stats"]["tx"]["unmatched"] >= 5
            assert faults["stats"]["rx"]["unmatched"] >= 5
            assert faults["stats"]["tx"]["dropped"] == 0
            subprocess.run([*cli, "faults", "--control", ctl, "--off"], check=True,
                           capture_output=True, timeout=30, cwd=os.getcwd())
            vm.run_ok("ping -c 2 -i 0.2 10.0.2.2")
    finally:
        if capture is not None and capture.poll() is None:
            capture.kill()
        serve.terminate()
        serve.wait(10)
    r = subprocess.run(["tcpdump", "-n", "-r", pcap, "not tcp port 80"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "", r.stdout
    r = subprocess.run(["tcpdump", "-n", "-r", pcap], capture_output=True, text=True,
                       timeout=30)
    assert r.stdout.count("> 10.0.2.2.80: Flags [S],") == 2  # both downloads, whole
    assert r.stdout.count("10.0.2.2.80 > 10.0.2.15") > 10


def test_tshark_captures_a_live_guest_through_the_extcap(tmp_path, guest_image, monkeypatch):
    """`vhostnet extcap --install`, then `tshark -i vhostnet-PID -c 20 -w x.pcapng` while a
    Linux guest leases, pings and fetches over HTTP: the file (read by tshark and scapy)
    holds those, both ways, with a comment naming the backend and the guest's MAC."""
    import os
    import shutil
    import sys
    import threading
    import time

    from apps.control import ControlClient
    from apps.serve import make_server

    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    monkeypatch.setenv("VHOSTNET_RUNTIME_DIR", str(tmp_path / "run"))
    home = tmp_path / "home"
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-m", "apps.cli", "extcap", "--install"], cwd=repo,
                   env=env, check=True, capture_output=True, timeout=60)
    path = str(tmp_path / "vhost.sock")
    server, stack, app = make_server(socket_path=path, control=path + ".ctl")
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    out = tmp_path / "live.pcapng"
    proc = None
    try:
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(path, mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            proc = subprocess.Popen(
                [tshark, "-i", f"vhostnet-{os.getpid()}", "-c", "20", "-w", str(out),
                 "-f", "icmp or udp port 67 or udp port 68 or tcp port 80"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            with ControlClient(path + ".ctl") as c:
                while not c.request({"cmd": "status"})["status"]["captures"]:
                    assert time.monotonic() < deadline and proc.poll() is None, \
                        proc.stderr.read()
                    time.sleep(0.1)
            vm.run_ok("udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            vm.run_ok("ping -c 3 -i 0.2 10.0.2.2")
            vm.run_ok("wget -q -O /dev/null http://10.0.2.2/bytes/1000")
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                vm.run_ok("ping -c 1 10.0.2.2")
            assert proc.wait(15) == 0, proc.stderr.read()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        server.stop()
        t.join(5)
        app.control.close()
        server.close()
        stack.stop()
    frames = rdpcap(str(out))
    assert len(frames) == 20
    rows = subprocess.run([tshark, "-r", str(out), "-T", "fields", "-e", "frame.protocols",
                           "-e", "frame.packet_flags_direction"], capture_output=True,
                          text=True, timeout=60, env=env, check=True).stdout.splitlines()
    protocols = " ".join(r.split("\t")[0] for r in rows)
    for proto in ("dhcp", "icmp", "http"):
        assert proto in protocols, protocols
    assert {r.split("\t")[1] for r in rows} == {"0x00000001", "0x00000002"}
    if shutil.which("capinfos"):
        info = subprocess.run(["capinfos", str(out)], capture_output=True, text=True,
                              timeout=60).stdout
        assert f"vhostnet backend pid {os.getpid()}" in info and GUEST_MAC in info, info
