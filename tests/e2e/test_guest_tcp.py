"""TCP between the Linux guest (busybox wget, nc, httpd) and our stack's apps, both ways:
the guest downloads 50 MiB from our HTTP server and uploads 10 MiB to it, echoes a file
through our echo port, opens 200 connections at once; our client pushes 10 MiB through the
guest's `nc -e cat` and our HTTP client fetches from the guest's httpd; the standard
library's http.server serves the guest on our stack.

The guest runs under TCG: timeouts are generous, and throughputs are printed (pytest -s)."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from apps.servers.http import pattern_sha256

pytestmark = pytest.mark.qemu

MiB = 1 << 20


def timed(vm, cmd: str, timeout: float) -> tuple[str, float]:
    t0 = time.monotonic()
    out = vm.run_ok(cmd, timeout=timeout)
    return out, time.monotonic() - t0


@pytest.fixture(scope="module")
def upload(leased_vm) -> str:
    """/tmp/up in the guest: 10 MiB of random bytes; returns its SHA-256. No NUL bytes:
    busybox wget reads a --post-file as a C string (strlen gives the Content-Length)."""
    out = leased_vm.run_ok("head -c 12000000 /dev/urandom | tr -d '\\000' | "
                           "head -c 10485760 > /tmp/up && sha256sum /tmp/up", timeout=120)
    return out.split()[0]


def test_download_50_mib(leased_vm):
    n = 50 * MiB
    out, took = timed(leased_vm, f"wget -q -O - http://10.0.2.2/bytes/{n} | sha256sum",
                      timeout=1200)
    print(f"\n50 MiB download by the guest's wget: {took:.1f} s, {n / took / MiB:.2f} MiB/s")
    assert out.split()[0] == pattern_sha256(n), out


def test_index_page(leased_vm):
    out = leased_vm.run_ok("wget -q -O - http://10.0.2.2/")
    assert "netstack" in out and "vhostnet" in out, out


def test_upload_10_mib(leased_vm, upload):
    out, took = timed(leased_vm, "wget -q --post-file=/tmp/up -O - http://10.0.2.2/sink",
                      timeout=1200)
    print(f"\n10 MiB upload by the guest's wget: {took:.1f} s, {10 * MiB / took / MiB:.2f} MiB/s")
    assert out.split() == [str(10 * MiB), upload], out


def test_echo_from_the_guest(leased_vm, upload):
    # busybox nc shuts its sending side down at the end of stdin and exits when we close.
    # It is one thread that blocks writing to its socket while echoes pile up unread, so an
    # echo of more than the buffers in the loop hold (ours 2 x 256 KiB, the guest's) ends in
    # both windows at zero, with any stack: 512 KiB always fits.
    out = leased_vm.run_ok("head -c 524288 /tmp/up > /tmp/up512 && sha256sum /tmp/up512 && "
                           "nc 10.0.2.2 7 < /tmp/up512 | sha256sum", timeout=300)
    expected, _, got, _ = out.split()
    assert got == expected, out


def test_10_mib_through_the_guest_cat(leased_vm, served):
    """Our client writes 10 MiB to `nc -l -e cat` in the guest while a second thread reads
    the echo: both directions at once, by SHA-256."""
    from netstack.net import TcpStream

    leased_vm.run_ok("(nc -l -p 7777 -e cat >/dev/null 2>&1 &) ; sleep 0.5")
    data = hashlib.sha256(b"up").digest() * (10 * MiB // 32)
    rt = served.stack.runtime
    t0 = time.monotonic()
    with TcpStream.connect(rt, ("10.0.2.15", 7777), timeout=60) as s:
        s.set_read_timeout(120)

        def send() -> None:
            s.write_all(data)
            s.shutdown("write")

        writer = threading.Thread(target=send)
        writer.start()
        h = hashlib.sha256()
        n = 0
        while chunk := s.read(1 << 16):
            h.update(chunk)
            n += len(chunk)
        writer.join()
    took = time.monotonic() - t0
    print(f"\n10 MiB each way through the guest's nc -e cat: {took:.1f} s, "
          f"{2 * n / took / MiB:.2f} MiB/s both directions together")
    assert (n, h.hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())


def test_echoserver_and_chargen_and_discard(leased_vm):
    vm = leased_vm
    out = vm.run_ok("printf 'hello\\nvhostnet\\n' | nc 10.0.2.2 5555")
    assert out.splitlines() == ["olleh", "tentsohv"], out
    out = vm.run_ok("nc 10.0.2.2 19 | head -c 7400 | sha256sum")
    from apps.servers.tcpapps import chargen_lines

    assert out.split()[0] == hashlib.sha256((chargen_lines() * 2)[:7400]).hexdigest(), out
    deadline = time.monotonic() + 30  # nc died with unread data: a RST ends our writer
    while any(t.name.startswith("chargen ") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "chargen still writing to a closed peer"
        time.sleep(0.1)
    vm.run_ok("head -c 100000 /tmp/up | nc 10.0.2.2 9")  # returns once we close


def test_200_concurrent_connections(leased_vm):
    script = ("ok=0; pids=''; for i in $(seq 200); do "
              "wget -q -O /tmp/c$i http://10.0.2.2/bytes/1000 & pids=\"$pids $!\"; done; "
              "for p in $pids; do wait $p && ok=$((ok+1)); done; "
              "echo ok=$ok; cat /tmp/c* | wc -c; rm -f /tmp/c*")
    # a script file for sh: no job-control chatter from the console's interactive shell
    leased_vm.run_ok(f"cat > /tmp/many.sh <<'EOF'\n{script}\nEOF")
    out, took = timed(leased_vm, "sh /tmp/many.sh", timeout=600)
    print(f"\n200 concurrent wgets: {took:.1f} s")
    assert "ok=200" in out and out.split()[-1] == str(200 * 1000), out


def test_our_client_fetches_from_the_guest_httpd(leased_vm, served):
    from apps.servers.http import http_get, http_open

    vm = leased_vm
    digest = vm.run_ok("mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1K "
                       "count=2048 2>/dev/null && sha256sum /tmp/www/blob && "
                       "echo '<h1>guest</h1>' > /tmp/www/index.html && "
                       "httpd -p 8080 -h /tmp/www && echo started", timeout=60).split()[0]
    rt = served.stack.runtime
    status, headers, body = http_get(rt, "http://10.0.2.15:8080/index.html", timeout=60)
    assert (status, body) == (200, b"<h1>guest</h1>\n"), (status, headers, body)
    t0 = time.monotonic()
    with http_open(rt, "http://10.0.2.15:8080/blob", timeout=60) as resp:
        h = hashlib.sha256()
        size = 0
        for chunk in resp.iter_body():
            h.update(chunk)
            size += len(chunk)
    took = time.monotonic() - t0
    print(f"\n2 MiB from the guest's httpd: {took:.1f} s, {size / took / MiB:.2f} MiB/s")
    assert (resp.status, size, h.hexdigest()) == (200, 2 * MiB, digest)
    status, _, _ = http_get(rt, "http://10.0.2.15:8080/nothing-here", timeout=60)
    assert status == 404


def test_stdlib_http_server_on_our_stack(leased_vm, served, tmp_path):
    """http.server's ThreadingHTTPServer (a socketserver) with SimpleHTTPRequestHandler, its
    socket one of `netstack.pysocket`'s: the guest fetches a file from a host directory."""
    import functools
    import http.server
    import os

    from netstack.pysocket import make_server_class

    blob = os.urandom(3 * MiB)
    (tmp_path / "blob").write_bytes(blob)
    Server = make_server_class(http.server.ThreadingHTTPServer, served.stack.runtime)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    with Server(("0.0.0.0", 8000), handler) as httpd:
        t = threading.Thread(target=httpd.serve_forever, daemon=True)
        t.start()
        try:
            out, took = timed(leased_vm, "wget -q -O - http://10.0.2.2:8000/blob | sha256sum",
                              timeout=600)
            listing = leased_vm.run_ok("wget -q -O - http://10.0.2.2:8000/", timeout=120)
        finally:
            httpd.shutdown()
            t.join(5)
    print(f"\n3 MiB from http.server on our stack: {took:.1f} s, {3 / took:.2f} MiB/s")
    assert out.split()[0] == hashlib.sha256(blob).hexdigest(), out
    assert 'href="blob"' in listing, listing


def test_vhostnet_get_command(tmp_path, guest_image):
    """`vhostnet get` serves the NIC itself: the guest attaches, leases, starts httpd, and
    the command (waiting meanwhile) saves the file and reports it."""
    import subprocess
    import sys

    from apps.harness.vm import QemuVM, vhost_user_nic_args
    from tests.e2e.conftest import GUEST_MAC

    sock, out = tmp_path / "get.sock", tmp_path / "blob"
    cmd = [sys.executable, "-m", "apps.cli", "get", "--socket-path", str(sock), "--wait", "300",
           "--log-level", "warning", "http://10.0.2.15:8080/blob", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        with QemuVM(guest_image, nic_args=vhost_user_nic_args(str(sock), mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=120)
            vm.run_ok("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2", timeout=60)
            digest = vm.run_ok("mkdir -p /tmp/www && head -c 5242880 /dev/urandom > "
                               "/tmp/www/blob && sha256sum /tmp/www/blob && "
                               "httpd -p 8080 -h /tmp/www", timeout=60).split()[0]
            stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print("\n" + stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, (stdout, stderr)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert f"200 OK  {5 * MiB} bytes in" in stdout and f"sha256 {digest}" in stdout, stdout
    assert "qemu-system-x86_64" in stdout  # it told how to attach the VM
