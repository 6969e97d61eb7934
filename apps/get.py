"""`vhostnet get URL`: fetch a URL from a server inside the guest, through our stack.

It runs its own backend and default stack (`apps.serve.make_server`: we are 10.0.2.2, the
guest gets 10.0.2.15 from our DHCP server), waits for the VM to attach and for the server
to answer, streams the body (to a file with -o, else counted and dropped), and reports the
status, size, SHA-256, time and throughput. Exit status 0 for a 2xx answer, else 1.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import sys
import threading
import time

DESCRIPTION = """\
Fetch URL from an HTTP server running inside a QEMU guest, through vhostnet's own TCP/IP
stack: this process is the guest's NIC (a vhost-user backend) and the host side of its
network (10.0.2.2, DHCP leases from 10.0.2.15; fd00:10:0:2::2, router advertisements for
SLAAC). Nothing crosses the host kernel's stack.

It serves the NIC, waits for the guest to attach and for the URL to answer (--wait), then
prints the status, size, SHA-256, time and throughput."""

EPILOG = """\
example, with a server in the guest:
  vhostnet get --socket-path /tmp/vhn.sock http://10.0.2.15:8080/big -o big
  qemu-system-x86_64 ... -chardev socket,id=c0,path=/tmp/vhn.sock,reconnect=1 \\
    -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0,vectors=0
  # in the guest:
  udhcpc -i eth0 -q             # leases 10.0.2.15 from us
  mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/big bs=1M count=8
  httpd -p 8080 -h /tmp/www     # busybox httpd

  # or over IPv6 (the guest configures fd00:10:0:2:<EUI-64> from our router advertisement;
  # busybox httpd listens on both families):
  vhostnet get --socket-path /tmp/vhn.sock http://[fd00:10:0:2:5054:ff:fe12:3456]:8080/big

The host must be an IP address, IPv6 in brackets (the stack has no DNS resolver); only
http://."""


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `vhostnet get` on the CLI's subparsers."""
    from apps.common import add_backend_args

    p = sub.add_parser("get", help="fetch a URL from a server inside the guest, through our stack",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", metavar="URL", help="http://IP[:PORT]/PATH, e.g. "
                                              "http://10.0.2.15:8080/ or "
                                              "http://[fd00:10:0:2::15]:8080/")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the body to FILE ('-': standard output, the report then goes to "
                        "standard error); default: count it and drop it")
    p.add_argument("--wait", type=float, default=300.0, metavar="SECONDS",
                   help="how long to wait for the guest to attach and the server to answer "
                        "(default 300: a guest under TCG boots slowly)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up when the server is silent this long (default 30)")
    add_backend_args(p)
    p.set_defaults(func=cmd_get)
    return p


def cmd_get(args: argparse.Namespace) -> int:
    from apps.common import check_mtu, print_capabilities, qemu_hint, setup_logging
    from apps.serve import make_server
    from apps.servers.http import parse_url
    from vhostuser.backend import BackendConfig

    if args.print_capabilities:
        return print_capabilities(args.queues)
    bad = check_mtu(args.mtu)
    if bad is not None:
        return _fail(bad)
    setup_logging(args.log_level)
    try:
        parse_url(args.url)
    except ValueError as e:
        return _fail(str(e))
    path = args.socket_path
    if args.fd is None and args.connect is None and path is None:
        path = "vhostnet.sock"
    report = sys.stderr if args.output == "-" else sys.stdout
    try:
        server, stack, _ = make_server(
            socket_path=path, connect_path=args.connect, fd=args.fd,
            backend=BackendConfig(queue_pairs=args.queues, mtu=args.mtu))
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
            why += (" (vhostnet get runs a backend of its own for the VM to attach to; it "
                    "cannot use a running `vhostnet serve`: give get a free --socket-path)")
        return _fail(f"cannot serve: {why}")
    if path or args.connect:
        print(qemu_hint(path or args.connect, server=not path, queues=args.queues,
                        mtu=args.mtu), file=report, flush=True)
    loop = threading.Thread(target=server.serve_forever, name="vhost-user", daemon=True)
    loop.start()
    try:
        return fetch(stack.runtime, args.url, args.output, wait=args.wait,
                     timeout=args.timeout, report=report)
    except KeyboardInterrupt:
        return 130
    finally:
        stack.stop()
        server.stop()
        loop.join(5)
        server.close()


def fetch(runtime, url: str, output: str | None, *, wait: float, timeout: float,
          report=sys.stdout) -> int:
    """Open `url` (retrying until `wait` runs out while the guest is not there yet), stream
    the body to `output` and print the report. Returns the exit status."""
    from apps.servers.http import HttpError, http_open

    deadline = time.monotonic() + wait
    said_waiting = False
    while True:
        t0 = time.monotonic()
        try:
            resp = http_open(runtime, url, timeout=min(timeout, max(1.0, deadline - t0)))
            break
        except (ConnectionRefusedError, ConnectionResetError, TimeoutError) as e:
            if time.monotonic() >= deadline:
                return _fail(f"{url}: {e or type(e).__name__} (gave up after {wait:g} s)")
            if not said_waiting:
                print(f"waiting for the guest to attach and {url} to answer ...",
                      file=report, flush=True)
                said_waiting = True
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        except (OSError, HttpError) as e:
            return _fail(f"{url}: {e}")
    sink = None
    if output == "-":
        sink = sys.stdout.buffer
    elif output:
        sink = open(output, "wb")  # closed below, also on errors
    digest = hashlib.sha256()
    size = 0
    try:
        with resp:
            for chunk in resp.iter_body():
                digest.update(chunk)
                size += len(chunk)
                if sink is not None:
                    sink.write(chunk)
    except (OSError, HttpError) as e:
        return _fail(f"{url}: {e} after {size} bytes of the body")
    finally:
        if sink is not None and sink is not sys.stdout.buffer:
            sink.close()
    took = time.monotonic() - t0
    print(f"{resp.status} {resp.reason}  {size} bytes in {took:.2f} s "
          f"({size / took / 2**20:.2f} MiB/s, {size * 8 / took / 1e6:.1f} Mbit/s)  "
          f"sha256 {digest.hexdigest()}", file=report, flush=True)
    return 0 if 200 <= resp.status < 300 else 1


def _fail(msg: str) -> int:
    print(f"vhostnet get: {msg}", file=sys.stderr)
    return 1
