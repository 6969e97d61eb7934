"""The control socket of `vhostnet serve` (apps/control/__init__.py): `make_server` with a control
socket in a thread, the Python front-end attached as the guest, and the status, faults and
capture requests, in-process and through the `vhostnet` commands as subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from scapy.layers.l2 import ARP, Ether

from apps.control import ControlClient, ControlError, format_frame
from apps.serve import make_server
from apps.stack import StackConfig
from tests.vhostuser.conftest import make_frontend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST_MAC = "52:54:00:12:34:56"
STACK_MAC = "52:55:0a:00:02:02"


def arp_request(target: str = "10.0.2.2") -> bytes:
    return bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=1, hwsrc=GUEST_MAC, psrc="10.0.2.15", pdst=target))


def is_arp_reply(frame: bytes) -> bool:
    pkt = Ether(frame)
    return pkt.haslayer(ARP) and pkt[ARP].op == 2 and pkt[ARP].psrc == "10.0.2.2"


class Served:
    def __init__(self, tmp_path) -> None:
        self.path = str(tmp_path / "v.sock")
        self.ctl = self.path + ".ctl"
        self.server, self.stack, self.app = make_server(
            stack_config=StackConfig(), socket_path=self.path, start_apps=False,
            control=self.ctl)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(5)
        self.app.control.close()
        self.server.close()


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path)
    yield s
    s.stop()
    assert not os.path.exists(s.ctl), "the control socket outlived its server"


@pytest.fixture
def guest(served):
    fe = make_frontend(served.path)
    fe.post_rx_buffers(32)
    deadline = time.monotonic() + 5
    while served.server.device is None and time.monotonic() < deadline:
        time.sleep(0.01)
    yield fe
    fe.close()


def ask(served, req: dict) -> dict:
    with ControlClient(served.ctl) as c:
        return c.request(req)


def arp_replies(fe, timeout: float = 1.0) -> int:
    """ARP replies from the stack seen within `timeout`."""
    n = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n += sum(is_arp_reply(f) for f in fe.recv_frames(timeout=0.1))
        if n:
            return n
    return n


def vhostnet(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apps.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30, **kw)


# -- status ---------------------------------------------------------------------------------
def test_status_without_a_front_end(served):
    st = ask(served, {"cmd": "status"})["status"]
    assert st["connected"] is False and st["device"] is None
    assert st["control_path"] == served.ctl
    assert {"local": "0.0.0.0:67", "kind": "udp"}.items() <= st["sockets"][0].items()
    assert st["faults"] == {"enabled": False, "knobs": {}, "stats": None}


def test_status_features_queues_and_counters_move(served, guest):
    before = ask(served, {"cmd": "status"})["status"]
    dev = before["device"]
    assert before["connected"] and before["connections_served"] == 1
    assert "F_VERSION_1" in dev["features"]
    assert dev["protocol_features"], "protocol features negotiated"
    rx, tx = dev["queues"][0], dev["queues"][1]
    assert (rx["kind"], tx["kind"]) == ("rx", "tx")
    assert tx["started"] and tx["enabled"] and tx["size"] > 0
    guest.send_frame(arp_request())
    assert arp_replies(guest) == 1
    after = ask(served, {"cmd": "status"})["status"]["device"]
    assert after["stats"]["guest_tx_frames"] == dev["stats"].get("guest_tx_frames", 0) + 1
    assert after["stats"]["guest_rx_frames"] == dev["stats"].get("guest_rx_frames", 0) + 1
    tx2, rx2 = after["queues"][1], after["queues"][0]
    assert tx2["last_avail_idx"] == (tx["last_avail_idx"] + 1) & 0xFFFF
    assert rx2["used_idx"] == (rx["used_idx"] + 1) & 0xFFFF
    assert tx2["kicks"] + tx2["notifications"] > tx["kicks"] + tx["notifications"]
    iface = ask(served, {"cmd": "status"})["status"]["interface"]
    assert iface["mac"] == STACK_MAC and iface["stats"]["rx_frames"] >= 1


def test_bad_requests_get_errors_and_the_connection_goes_on(served):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(served.ctl)
        f = s.makefile("rb")
        s.sendall(b"not json\n" + b'{"cmd": "nope"}\n' + b"[1]\n"
                  + b'{"cmd": "faults", "set": {"loss": 2}}\n' + b'{"cmd": "status"}\n')
        replies = [json.loads(f.readline()) for _ in range(5)]
    assert [r["ok"] for r in replies] == [False, False, False, False, True]
    assert "unknown cmd" in replies[1]["error"]
    assert "probability" in replies[3]["error"]


def test_no_backend_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="no backend control socket"):
        ControlClient(str(tmp_path / "none.ctl"))
    stale = tmp_path / "stale.ctl"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    with pytest.raises(ControlError, match="nobody answers"):
        ControlClient(str(stale))


# -- faults ---------------------------------------------------------------------------------
def test_faults_loss_drops_everything_and_off_restores(served, guest):
    guest.send_frame(arp_request())
    assert arp_replies(guest) == 1
    faults = ask(served, {"cmd": "faults", "set": {"loss": 1.0}})["faults"]
    assert faults["enabled"] and faults["knobs"] == {"drop": 1.0}
    guest.send_frame(arp_request())
    assert arp_replies(guest, timeout=0.5) == 0
    stats = ask(served, {"cmd": "faults"})["faults"]["stats"]
    assert stats["rx"]["dropped"] == 1 and stats["tx"]["passed"] == 0
    assert ask(served, {"cmd": "faults", "off": True})["faults"]["enabled"] is False
    guest.send_frame(arp_request())
    assert arp_replies(guest) == 1


def test_faults_set_before_the_front_end_apply_when_it_comes(served):
    ask(served, {"cmd": "faults", "set": {"drop": 1.0}})
    fe = make_frontend(served.path)
    fe.post_rx_buffers(32)
    try:
        fe.send_frame(arp_request())
        assert arp_replies(fe, timeout=0.5) == 0
        assert ask(served, {"cmd": "faults"})["faults"]["stats"]["rx"]["dropped"] == 1
    finally:
        fe.close()


def test_faults_delay_holds_the_reply(served, guest):
    ask(served, {"cmd": "faults", "set": {"delay": 0.3}})
    t = time.monotonic()
    guest.send_frame(arp_request())
    assert arp_replies(guest, timeout=2.0) == 1
    assert time.monotonic() - t >= 0.25
    assert ask(served, {"cmd": "faults"})["faults"]["stats"]["rx"]["delayed"] == 1


# -- capture --------------------------------------------------------------------------------
def test_capture_streams_both_directions(served, guest):
    with ControlClient(served.ctl) as c:
        frames = c.frames(timeout=5)
        request = arp_request()
        guest.send_frame(request)
        first, second = next(frames), next(frames)
    assert first["dir"] == "guest-tx" and bytes.fromhex(first["frame"]) == request
    assert second["dir"] == "guest-rx" and is_arp_reply(bytes.fromhex(second["frame"]))
    assert first["len"] == len(request) and first["lost"] == 0
    assert "ARP" in format_frame(second)
    # the hook goes with the client
    deadline = time.monotonic() + 2
    while ask(served, {"cmd": "status"})["status"]["captures"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.server.device.on_frame is None


def test_capture_snaplen(served, guest):
    with ControlClient(served.ctl) as c:
        frames = c.frames(snaplen=14, timeout=5)
        guest.send_frame(arp_request())
        rec = next(frames)
    assert len(bytes.fromhex(rec["frame"])) == 14 and rec["len"] == 42


def ping(seq: int, dst: str = "10.0.2.2") -> bytes:
    from scapy.layers.inet import ICMP, IP

    return bytes(Ether(src=GUEST_MAC, dst=STACK_MAC) / IP(src="10.0.2.15", dst=dst)
                 / ICMP(id=7, seq=seq) / (b"p" * 32))


def syn(sport: int, dport: int = 8080) -> bytes:
    from scapy.layers.inet import IP, TCP

    return bytes(Ether(src=GUEST_MAC, dst=STACK_MAC) / IP(src="10.0.2.15", dst="10.0.2.2")
                 / TCP(sport=sport, dport=dport, flags="S", seq=1000,
                       options=[("MSS", 1460)]))


def udp_datagram(dport: int = 5555) -> bytes:
    from scapy.layers.inet import IP, UDP

    return bytes(Ether(src=GUEST_MAC, dst=STACK_MAC) / IP(src="10.0.2.15", dst="10.0.2.2")
                 / UDP(sport=40000, dport=dport) / b"hello")


def replies(fe, want, timeout: float = 1.0) -> list:
    """The scapy frames the stack sent within `timeout` that satisfy `want`."""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out += [p for p in map(Ether, fe.recv_frames(timeout=0.1)) if want(p)]
    return out


def is_echo_reply(p) -> bool:
    from scapy.layers.inet import ICMP

    return p.haslayer(ICMP) and p[ICMP].type == 0


def is_syn_ack(p) -> bool:
    from scapy.layers.inet import TCP

    return p.haslayer(TCP) and p[TCP].flags == "SA"


def test_capture_filter_runs_in_the_backend(served, guest):
    """`"filter": "icmp or arp"`: the backend sends only ARP and ICMP, both ways, while
    TCP and UDP flow past (the frames it dropped never reach the socket)."""
    from netstack.net import TcpListener

    listener = TcpListener.bind(served.stack.runtime, ("0.0.0.0", 8080))
    try:
        with ControlClient(served.ctl) as c:
            frames = c.frames(timeout=2, filter="icmp or arp")
            guest.send_frame(syn(40001))
            guest.send_frame(udp_datagram())
            guest.send_frame(arp_request())
            guest.send_frame(ping(1))
            guest.send_frame(syn(40002))
            answered = replies(guest, is_syn_ack, timeout=1.5)  # TCP flowed (SYN-ACKs,
            assert {p["TCP"].dport for p in answered} == {40001, 40002}  # maybe resent)
            got = []
            with pytest.raises(socket.timeout):
                while True:
                    got.append(next(frames))
        from scapy.layers.inet import ICMP

        def kind(rec: dict) -> tuple:
            p = Ether(bytes.fromhex(rec["frame"]))
            return rec["dir"], (f"arp {p[ARP].op}" if p.haslayer(ARP) else
                                f"icmp {p[ICMP].type}" if p.haslayer(ICMP) else p.summary())

        # ARP who-has and is-at, echo request and reply, and the port unreachable that
        # answered the UDP datagram (no app on 5555): ICMP too
        assert sorted(map(kind, got)) == [("guest-rx", "arp 2"), ("guest-rx", "icmp 0"),
                                          ("guest-rx", "icmp 3"), ("guest-tx", "arp 1"),
                                          ("guest-tx", "icmp 8")]
        assert all(r["lost"] == 0 for r in got)
    finally:
        listener.close()


def test_capture_filter_and_lost_frames(served, guest, monkeypatch):
    """A reader that does not read: the frames the filter accepts and that find the
    buffer full are counted as lost for it; those it drops are not."""
    import apps.control

    monkeypatch.setattr(apps.control, "CAPTURE_BUFFER", 0)
    c = socket.socket(socket.AF_UNIX)
    c.connect(served.ctl)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        c.sendall(b'{"cmd": "capture", "filter": "arp"}\n')
        assert json.loads(c.recv(4096).split(b"\n")[0]) == {"ok": True, "capturing": True}
        client = next(cl for cl in served.app.control.clients.values() if cl.hook)
        # hold the writer back: what is queued stays queued
        monkeypatch.setattr(served.app.control, "_flush", lambda cl: None)
        for seq in range(5):
            guest.send_frame(ping(seq))
        guest.send_frame(arp_request())
        assert arp_replies(guest) == 1
        deadline = time.monotonic() + 2
        while client.lost < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        # the request went out (queued), its reply found the buffer full; no ping counted
        assert client.lost == 1 and client.out.count(b"\n") == 1
    finally:
        c.close()


@pytest.mark.parametrize("expr, error", [
    ("tcp port", "can't parse filter expression: syntax error"),
    ("port eighty", "unknown port 'eighty'"),
    ("frobnicate", "can't parse filter expression: syntax error"),
    ("host 10.0.2.300", "invalid IPv4 address '10.0.2.300'"),
])
def test_capture_bad_filter_is_libpcaps_error(served, expr, error):
    with ControlClient(served.ctl) as c, pytest.raises(ControlError) as e:
        c.frames(filter=expr)
    assert str(e.value) == error
    assert ask(served, {"cmd": "status"})["status"]["captures"] == 0


def test_faults_match_damages_only_matching_frames(served, guest):
    """`faults --match icmp --loss 1.0`: every ping is lost, both ways counted as
    dropped, while a TCP handshake and ARP go through untouched (counted unmatched)."""
    from netstack.net import TcpListener

    listener = TcpListener.bind(served.stack.runtime, ("0.0.0.0", 8080))
    try:
        faults = ask(served, {"cmd": "faults", "set": {"loss": 1.0, "match": "icmp"}})["faults"]
        assert faults["knobs"] == {"drop": 1.0, "match": "icmp"}
        for seq in range(3):
            guest.send_frame(ping(seq))
        assert replies(guest, is_echo_reply, timeout=0.5) == []
        guest.send_frame(syn(40003))
        assert {p["TCP"].dport for p in replies(guest, is_syn_ack)} == {40003}
        guest.send_frame(arp_request())
        assert arp_replies(guest) == 1
        stats = ask(served, {"cmd": "faults"})["faults"]["stats"]
        assert stats["rx"]["dropped"] == 3 and stats["rx"]["unmatched"] == 2
        # (the SYN-ACK may have been sent again while we waited)
        assert stats["tx"]["dropped"] == 0 and stats["tx"]["unmatched"] >= 2
        # the match goes ("" is every frame): pings die again, now with the TCP too
        ask(served, {"cmd": "faults", "set": {"match": ""}})
        assert "match" not in ask(served, {"cmd": "faults"})["faults"]["knobs"]
        guest.send_frame(syn(40004))
        assert replies(guest, is_syn_ack, timeout=0.5) == []
        # faults off: pings are answered
        ask(served, {"cmd": "faults", "off": True})
        guest.send_frame(ping(9))
        assert len(replies(guest, is_echo_reply)) == 1
    finally:
        listener.close()


def test_faults_bad_match_changes_nothing(served, guest):
    ask(served, {"cmd": "faults", "set": {"loss": 0.5}})
    with pytest.raises(ControlError) as e:
        ask(served, {"cmd": "faults", "set": {"loss": 1.0, "match": "tcp port"}})
    assert str(e.value) == "bad match expression: can't parse filter expression: syntax error"
    assert ask(served, {"cmd": "faults"})["faults"]["knobs"] == {"drop": 0.5}


# -- the commands ---------------------------------------------------------------------------
GUEST_LL = "fe80::5054:ff:fe12:3456"  # the guest's EUI-64 link-local address


def ipv6_traffic(fe, us_ll: str) -> None:
    """From the guest: a ping to our link-local, a router solicitation, a DHCPv6
    information-request, and a Packet Too Big for a far destination we sent to."""
    from scapy.layers.dhcp6 import DUID_LL, DHCP6_InfoRequest, DHCP6OptClientId, DHCP6OptOptReq
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import (
        ICMPv6EchoRequest,
        ICMPv6ND_RS,
        ICMPv6NDOptSrcLLAddr,
        ICMPv6PacketTooBig,
        IPv6,
    )

    fe.send_frame(bytes(Ether(src=GUEST_MAC, dst=STACK_MAC) / IPv6(src=GUEST_LL, dst=us_ll)
                        / ICMPv6EchoRequest(id=1, seq=1)))
    fe.send_frame(bytes(Ether(src=GUEST_MAC, dst="33:33:00:00:00:02")
                        / IPv6(src=GUEST_LL, dst="ff02::2", hlim=255)
                        / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC)))
    fe.send_frame(bytes(Ether(src=GUEST_MAC, dst="33:33:00:01:00:02")
                        / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547)
                        / DHCP6_InfoRequest(trid=7)
                        / DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC))
                        / DHCP6OptOptReq(reqopts=[23])))
    fe.send_frame(bytes(Ether(src=GUEST_MAC, dst=STACK_MAC)
                        / IPv6(src=GUEST_LL, dst="fd00:10:0:2::2")
                        / ICMPv6PacketTooBig(mtu=1280)
                        / IPv6(src="fd00:10:0:2::2", dst="fd00:99::1") / ICMPv6EchoRequest()))


def wait_status(served, ok, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = ask(served, {"cmd": "status"})["status"]
        if ok(st) or time.monotonic() > deadline:
            return st


def test_status_ipv6_addresses_neighbors_ra_dhcpv6_pmtu(served, guest):
    v6 = ask(served, {"cmd": "status"})["status"]["ipv6"]
    assert v6["enabled"] and v6["link_local"] == "fe80::5055:aff:fe00:202"
    assert v6["addresses"] == ["fe80::5055:aff:fe00:202/64", "fd00:10:0:2::2/64",
                               "fd00:10:0:2::3/64"]  # link-local first
    assert v6["neighbors"] == [] and v6["path_mtu"] == []
    assert v6["router_adv"]["prefixes"] == ["fd00:10:0:2::/64"]
    assert v6["router_adv"]["rdnss"] == ["fd00:10:0:2::3"]
    ipv6_traffic(guest, v6["link_local"])
    st = wait_status(served, lambda st: st["ipv6"]["dhcpv6_server"]["replies"]
                     and st["ipv6"]["path_mtu"])
    v6 = st["ipv6"]
    (n,) = v6["neighbors"]
    assert (n["address"], n["mac"], n["router"]) == (GUEST_LL, GUEST_MAC, False)
    assert n["state"] in ("STALE", "DELAY", "PROBE", "REACHABLE")
    assert v6["router_adv"]["solicitations"] == 1 and v6["router_adv"]["sent"] >= 1
    assert v6["dhcpv6_server"]["requests"] == v6["dhcpv6_server"]["replies"] == 1
    (pm,) = v6["path_mtu"]
    assert (pm["destination"], pm["mtu"]) == ("fd00:99::1", 1280) and pm["expires_in"] > 500
    assert {"local": "[::]:547", "type": "Dhcpv6ServerSocket"}.items() <= \
        next(s for s in st["sockets"] if s["type"] == "Dhcpv6ServerSocket").items()
    # the ARP table, beside it
    guest.send_frame(arp_request())
    st = wait_status(served, lambda st: st["interface"]["neighbors"])
    (a,) = st["interface"]["neighbors"]
    assert (a["address"], a["mac"]) == ("10.0.2.15", GUEST_MAC) and a["expires_in"] > 0


def test_cli_status_shows_ipv6(served, guest):
    ipv6_traffic(guest, "fe80::5055:aff:fe00:202")
    wait_status(served, lambda st: st["ipv6"]["dhcpv6_server"]["replies"]
                and st["ipv6"]["path_mtu"])
    out = vhostnet("status", "--control", served.ctl).stdout
    assert "  ipv6: fe80::5055:aff:fe00:202/64 fd00:10:0:2::2/64 fd00:10:0:2::3/64" in out
    assert "IPv6 neighbors (1):" in out
    line = next(x for x in out.splitlines() if x.startswith(f"  {GUEST_LL}"))
    assert GUEST_MAC in line
    assert "router adverts: fd00:10:0:2::/64 (RDNSS fd00:10:0:2::3, MTU 1500);" in out
    assert "1 solicitation(s)" in out
    assert "DHCPv6 server: " in out and "replies=1" in out
    assert "path MTU (1):" in out and "fd00:99::1" in out and " 1280 " in out
    assert "[::]:547" in out


def test_format_status_without_ipv6():
    """A stack with --no-ipv6 says so; a reply without the ipv6 key (an older backend)
    still formats."""
    from apps.control import format_status

    st = {"pid": 1, "socket_path": "v.sock", "control_path": "v.sock.ctl", "uptime": 1.0,
          "connections_served": 0, "server_counters": {}, "device": None,
          "interface": {"mac": STACK_MAC, "addresses": ["10.0.2.2/24"], "stats": {}},
          "sockets": [], "dhcp_leases": [], "faults": {"enabled": False}}
    out = format_status(st)
    assert "ipv6" not in out.lower() and "ARP: empty" in out
    out = format_status({**st, "ipv6": {"enabled": False}})
    assert "  ipv6: off" in out and "IPv6 neighbors" not in out


def test_cli_status(served, guest):
    r = vhostnet("status", "--control", served.ctl)
    assert r.returncode == 0, r.stderr
    assert "front-end: connected" in r.stdout and "F_VERSION_1" in r.stdout
    assert "0.0.0.0:80" not in r.stdout and "0.0.0.0:67" in r.stdout
    r = vhostnet("status", "--socket-path", served.path, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["device"]["queues"][1]["started"] is True


def test_cli_faults(served, guest):
    r = vhostnet("faults", "--control", served.ctl, "--loss", "1", "--delay", "0.01")
    assert r.returncode == 0, r.stderr
    assert "faults ON" in r.stdout and "loss=1.0" in r.stdout and "drop=" not in r.stdout
    guest.send_frame(arp_request())
    assert arp_replies(guest, timeout=0.5) == 0
    r = vhostnet("faults", "--control", served.ctl)
    assert "dropped=1" in r.stdout
    r = vhostnet("faults", "--control", served.ctl, "--off")
    assert r.returncode == 0 and "faults off" in r.stdout
    guest.send_frame(arp_request())
    assert arp_replies(guest) == 1
    r = vhostnet("faults", "--control", served.ctl, "--loss", "3")
    assert r.returncode == 1 and "loss must be a probability" in r.stderr, r.stderr
    assert "drop " not in r.stderr


def test_cli_faults_match(served, guest):
    r = vhostnet("faults", "--control", served.ctl, "--loss", "1", "--match", "icmp")
    assert r.returncode == 0, r.stderr
    assert "loss=1.0" in r.stdout and "match=icmp" in r.stdout, r.stdout
    r = vhostnet("status", "--control", served.ctl)
    assert "faults: ON" in r.stdout and "match=icmp" in r.stdout, r.stdout
    r = vhostnet("faults", "--control", served.ctl, "--match", "icmp or")
    assert r.returncode == 1
    assert r.stderr == ("vhostnet: bad --match 'icmp or': can't parse filter expression: "
                        "syntax error\n")


def test_cli_capture_bad_filter(served):
    r = vhostnet("capture", "--control", served.ctl, "--filter", "udp port 53 and")
    assert r.returncode == 1
    assert r.stderr == ("vhostnet: bad --filter 'udp port 53 and': can't parse filter "
                        "expression: syntax error\n")


def test_cli_capture_with_filter_and_count(served, guest):
    p = subprocess.Popen([sys.executable, "-m", "apps.cli", "capture", "--control", served.ctl,
                          "--filter", "arp and src host 10.0.2.2", "--count", "1"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not ask(served, {"cmd": "status"})["status"]["captures"]:
            assert time.monotonic() < deadline and p.poll() is None, p.stderr.read()
            time.sleep(0.05)
        guest.send_frame(arp_request())
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and ">guest" in lines[0], out
    assert lines[0].endswith("Reply 10.0.2.2 is-at 52:55:0a:00:02:02, length 28"), out
    assert "1 frame(s) shown" in err


def test_cli_without_a_backend(tmp_path):
    for cmd in ("status", "faults", "capture"):
        r = vhostnet(cmd, "--socket-path", str(tmp_path / "gone.sock"))
        assert r.returncode == 1
        assert "no backend control socket at" in r.stderr and "gone.sock.ctl" in r.stderr


def test_cli_help_teaches():
    for cmd, words in (("status", "negotiated"), ("faults", "--loss"),
                       ("capture", "tcp port 80")):
        r = vhostnet(cmd, "--help")
        assert r.returncode == 0 and words in r.stdout and "example" in r.stdout
    r = vhostnet("serve", "--help")
    assert "--control" in r.stdout and "--log-format" in r.stdout


def test_serve_json_logs_and_control_socket_lifetime(tmp_path):
    path = str(tmp_path / "v.sock")
    p = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--socket-path", path,
                          "--log-format", "json", "--no-dhcp"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(path + ".ctl"):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        r = vhostnet("faults", "--socket-path", path, "--loss", "0.5")
        assert r.returncode == 0, r.stderr
        p.terminate()
        _, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    msgs = [r["msg"] for r in records]
    assert any(m.startswith("control socket") for m in msgs)
    assert any(m.startswith("faults on") for m in msgs)
    assert not os.path.exists(path + ".ctl") and not os.path.exists(path)


def test_cli_status_lists_nat_flows(served, guest):
    """A guest datagram to the gateway address on a port none of our apps holds goes to
    the host's loopback; `vhostnet status` shows the flow: the guest's end, the host
    socket's, the bytes."""
    from scapy.layers.inet import IP, UDP

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        echo.settimeout(5)
        port = echo.getsockname()[1]
        frame = (Ether(src="52:54:00:12:34:56", dst="52:55:0a:00:02:02")
                 / IP(src="10.0.2.15", dst="10.0.2.2") / UDP(sport=40000, dport=port) / b"hi")
        guest.send_frame(bytes(frame))
        data, host_end = echo.recvfrom(100)
        assert data == b"hi"
    r = vhostnet("status", "--control", served.ctl)
    assert r.returncode == 0, r.stderr
    assert "gateway: 0 TCP and 1 UDP flows; host loopback 10.0.2.2 -> 127.0.0.1" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if "udp" in ln and "10.0.2.15:40000" in ln)
    # (the guest's view, then the host socket's: unconnected, so bound to 0.0.0.0)
    assert f"10.0.2.15:40000 -> 10.0.2.2:{port}" in " ".join(line.split()), line
    assert f"host 0.0.0.0:{host_end[1]} -> 127.0.0.1:{port}" in line, line
    assert "up 2 down 0" in line, line
    st = json.loads(vhostnet("status", "--control", served.ctl, "--json").stdout)
    assert st["gateway"]["counters"]["udp_opened"] == 1 and 80 not in st["gateway"]["our_tcp_ports"]
