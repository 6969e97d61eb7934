"""The `vhostnet` command line: serve a QEMU VM's NIC, and the tools around it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from vhostuser.backend import DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES, BackendConfig
from vhostuser.features import Feature
from vhostuser.protocol import ProtocolFeature, feature_names

log = logging.getLogger("vhostnet")

QEMU_HINT = """\
Attach a QEMU VM to this backend with:

  qemu-system-x86_64 ... \\
    -object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem \\
    -chardev socket,id=c0,path={path}{chardev_mode} \\
    -netdev vhost-user,id=n0,chardev=c0{queues} \\
    -device virtio-net-pci,netdev=n0,vectors=0{mq}

(share=on memory is required: we map the guest's RAM. vectors=0 keeps the NIC on INTx:
QEMU 7.2 under TCG crashes in msix_set_vector_notifiers with MSI-X; with KVM or newer QEMU
you may drop it.)"""


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--socket-path", metavar="PATH",
                      help="listen on this unix socket; QEMU connects to it "
                           "(-chardev socket,path=PATH,reconnect=1). Default: ./vhostnet.sock")
    mode.add_argument("--connect", metavar="PATH",
                      help="connect to QEMU listening on PATH (-chardev socket,server=on); "
                           "retried until it is there and after it restarts")
    mode.add_argument("--fd", type=int, metavar="N",
                      help="use inherited fd N (a listening or connected unix socket)")
    p.add_argument("--queues", type=int, default=1, metavar="N",
                   help="queue pairs offered to the guest (multiqueue, default 1)")
    p.add_argument("--mtu", type=int, default=1500, help="MTU offered to the guest (default 1500)")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the backend capabilities as JSON and exit")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default: info")
    p.add_argument("--log-format", default="plain", choices=["plain", "json"],
                   help="plain text lines (default), or one JSON object per line "
                        "(ts, level, logger, msg) for log collectors")


def _capabilities() -> dict:
    return {
        "type": "net",
        "features": feature_names(DEFAULT_FEATURES, Feature),
        "protocol-features": feature_names(DEFAULT_PROTOCOL_FEATURES, ProtocolFeature),
    }


def _setup_logging(level: str, fmt: str = "plain") -> None:
    if fmt == "json":
        from apps.control import setup_logging  # JSON lines: ts, level, logger, msg

        setup_logging(level, fmt)
        return
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def cmd_serve(args: argparse.Namespace) -> int:
    if args.print_capabilities:
        print(json.dumps(_capabilities(), indent=2))
        return 0
    _setup_logging(args.log_level, args.log_format)
    from vhostuser.server import RawFrameApp, VhostUserServer, install_signal_handlers

    if not 1 <= args.queues <= 127:
        print("vhostnet: --queues must be 1..127", file=sys.stderr)
        return 2
    if args.pcap_rotate is not None and args.raw:
        print("vhostnet: --pcap-rotate needs the stack (not --raw)", file=sys.stderr)
        return 2
    if args.pcap_rotate is not None and args.pcap in (None, "-"):
        print("vhostnet: --pcap-rotate needs --pcap FILE", file=sys.stderr)
        return 2
    path = args.socket_path
    if args.fd is None and args.connect is None and path is None:
        path = "vhostnet.sock"
    stack = None
    control = None
    hostfwd = None
    from apps.control import ControlServer, default_control_path

    ctl = None if args.no_control else (
        args.control or default_control_path(path or args.connect or f"vhostnet-fd{args.fd}"))
    try:
        if args.raw:
            def show(frame: bytes, device) -> None:
                if args.log_frames:
                    log.info("guest sent %d bytes: %s", len(frame), frame[:34].hex())

            server = VhostUserServer(socket_path=path, connect_path=args.connect, fd=args.fd,
                                     config=BackendConfig(queue_pairs=args.queues, mtu=args.mtu),
                                     app=RawFrameApp(show if args.log_frames else None))
            if ctl is not None:
                try:
                    control = ControlServer(server, server.app, ctl)
                except OSError:
                    server.close()
                    raise
        else:
            from apps.serve import make_server

            server, stack, app = make_server(
                stack_config=_stack_config(args), socket_path=path, connect_path=args.connect,
                fd=args.fd, pcap=args.pcap, pcap_rotate=args.pcap_rotate,
                control=ctl, hostfwd=args.hostfwd,
                backend=BackendConfig(queue_pairs=args.queues, mtu=args.mtu))
            control = app.control
            hostfwd = app.hostfwd
    except (OSError, ValueError) as e:
        print(f"vhostnet: cannot serve: {e}", file=sys.stderr)
        return 1
    install_signal_handlers(server)
    # with --pcap -, stdout carries the capture only: the hints go to stderr
    out = sys.stderr if getattr(args, "pcap", None) == "-" else sys.stdout
    queues = f",queues={args.queues}" if args.queues > 1 else ""
    mq = ",mq=on" if args.queues > 1 else ""
    if path:
        print(QEMU_HINT.format(path=os.path.abspath(path), chardev_mode=",reconnect=1",
                               queues=queues, mq=mq), flush=True, file=out)
    elif args.connect:
        print(QEMU_HINT.format(path=os.path.abspath(args.connect),
                               chardev_mode=",server=on,wait=off", queues=queues, mq=mq),
              flush=True, file=out)
    if stack is not None:
        c = stack.config
        print(f"\nThe stack: {c.address} (mac {c.mac}, mtu {c.mtu}); DNS {c.dns_address} "
              f"(gateway.vhostnet, dns.vhostnet{''.join(', ' + r for r in c.dns_records)}); "
              + (f"DHCP leases from {c.dhcp_start}; " if c.dhcp else "no DHCP; ")
              + "UDP echo on 7, udpserver on 5555; TCP echo on 7, discard on 9, chargen on 19, "
              "echoserver on 5555, HTTP on 80.", flush=True, file=out)
    log.info("serving vhost-user net on %s", path or args.connect or f"fd {args.fd}")
    if control is not None:
        log.info("control socket %s (vhostnet status/faults/capture --control %s)",
                 control.path, control.path)
    try:
        server.serve_forever()
    finally:
        if control is not None:
            control.close()
        if hostfwd is not None:
            hostfwd.close()
        if stack is not None:
            stack.stop()
        server.close()
    return 0


def _size(text: str) -> int:
    from netstack.phy.pcap import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _hostfwd_rule(spec: str):
    from apps.hostfwd import HostFwdError, parse_hostfwd

    try:
        return parse_hostfwd(spec)
    except HostFwdError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ipv6_prefix(text: str) -> str:
    import ipaddress

    try:
        net = ipaddress.IPv6Network(text, strict=False)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an IPv6 prefix: {text!r} ({e})") from None
    if net.prefixlen != 64:
        raise argparse.ArgumentTypeError(
            f"{text}: SLAAC needs a /64 (RFC 4862), this is a /{net.prefixlen}")
    return str(net)


def _stack_config(args: argparse.Namespace):
    from apps.stack import StackConfig

    start, _, count = (args.dhcp_range or "").partition(",")
    cfg = StackConfig(address=args.address, dns_address=args.dns_address, mac=args.mac,
                      mtu=args.mtu, dhcp=not args.no_dhcp, dns_records=list(args.dns_record),
                      ipv6=not args.no_ipv6, ipv6_prefix=args.ipv6_prefix)
    if start:
        cfg.dhcp_start = start
    if count:
        cfg.dhcp_count = int(count)
    return cfg


def cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    from apps.demo import main as demo_main

    return demo_main(accel=args.accel, keep=args.keep, pcap=args.pcap)


def cmd_bench(args: argparse.Namespace) -> int:
    from apps.bench import main as bench_main

    rest = args.bench_args
    return bench_main(rest[1:] if rest[:1] == ["--"] else rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vhostnet",
        description="A vhost-user virtio-net backend with its own TCP/IP stack: QEMU's NIC "
                    "is served by this process.",
        epilog="Run `vhostnet COMMAND --help` for the options of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="serve a VM's NIC over vhost-user",
        description="Serve a QEMU VM's virtio-net NIC over vhost-user. Prints the QEMU "
                    "options to paste. SIGTERM/SIGINT stop it and remove the socket file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  vhostnet serve --socket-path /tmp/vhostnet.sock\n"
               "  qemu-system-x86_64 ... -chardev socket,id=c0,path=/tmp/vhostnet.sock,"
               "reconnect=1 \\\n    -netdev vhost-user,id=n0,chardev=c0 "
               "-device virtio-net-pci,netdev=n0,vectors=0",
    )
    _add_backend_args(serve)
    serve.add_argument("--log-frames", action="store_true",
                       help="with --raw: log a line for every frame the guest sends")
    serve.add_argument("--raw", action="store_true",
                       help="no stack: only count (and log) raw frames; for debugging")
    serve.add_argument("--control", metavar="PATH",
                       help="the control socket `vhostnet status|faults|capture` talk to "
                            "(default: the socket path + .ctl, e.g. vhostnet.sock.ctl)")
    serve.add_argument("--no-control", action="store_true", help="no control socket")
    st = serve.add_argument_group("the stack (what the guest sees)")
    st.add_argument("--address", default="10.0.2.2/24",
                    help="our address and prefix on the guest's link (default 10.0.2.2/24)")
    st.add_argument("--dns-address", default="10.0.2.3",
                    help="the DNS server address we answer on (default 10.0.2.3)")
    st.add_argument("--mac", default="52:55:0a:00:02:02",
                    help="our MAC address (default 52:55:0a:00:02:02)")
    st.add_argument("--dhcp-range", metavar="START[,COUNT]",
                    help="first address leased (and how many); default 10.0.2.15 to .254")
    st.add_argument("--no-dhcp", action="store_true", help="do not run the DHCP server")
    st.add_argument("--ipv6-prefix", default="fd00:10:0:2::/64", type=_ipv6_prefix,
                    metavar="PREFIX/LEN",
                    help="the IPv6 prefix we advertise for SLAAC; we are ::2 in it and the DNS "
                         "server ::3 (default fd00:10:0:2::/64)")
    st.add_argument("--no-ipv6", action="store_true",
                    help="IPv4 only: no IPv6 addresses, router advertisements or DHCPv6")
    st.add_argument("--dns-record", action="append", default=[], metavar="NAME=ADDR",
                    help="an extra A/AAAA record (repeatable), e.g. host.vhostnet=10.0.2.50")
    st.add_argument("--pcap", metavar="FILE",
                    help="capture every frame at the virtqueue (classic pcap; .pcapng for "
                         "pcapng with directions; a FIFO streams live to wireshark -k -i)")
    st.add_argument("--pcap-rotate", metavar="SIZE", type=_size, default=None,
                    help="with --pcap FILE: go on in FILE.1, FILE.2, ... when FILE would "
                         "exceed SIZE (e.g. 10k, 100M; powers of 1024), each a whole capture")
    st.add_argument("--hostfwd", action="append", default=[], type=_hostfwd_rule,
                    metavar="tcp|udp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT",
                    help="forward a host port to the guest, as QEMU's -netdev user,hostfwd= "
                         "(repeatable); HOSTADDR defaults to 127.0.0.1, GUESTADDR to the "
                         "first DHCP lease (10.0.2.15); IPv6 addresses in brackets; e.g. "
                         "tcp::8080-:80, tcp:[::1]:8080-[fd00:10:0:2::15]:80")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser(
        "demo", help="boot the bundled Linux guest on our backend and show what it does",
        description="Start the backend, boot the bundled Linux guest in QEMU attached to it, "
                    "and show step by step what crosses its NIC. Exits 0 when every step "
                    "passed, else 1 with the failed step and the last console lines.",
    )
    demo.add_argument("--accel", default="tcg", choices=["tcg", "kvm"],
                      help="QEMU accelerator (default tcg; kvm where the host supports it)")
    demo.add_argument("--pcap", metavar="FILE",
                      help="capture the whole session at the virtqueue (pcap; .pcapng for "
                           "directions), e.g. then: tshark -r FILE")
    demo.add_argument("--keep", action="store_true",
                      help="leave the VM running after the steps (Ctrl-C ends it)")
    demo.add_argument("--log-level", default="warning",
                      choices=["debug", "info", "warning", "error"], help="default: warning")
    demo.set_defaults(func=cmd_demo)

    # apps/bench.py parses its own arguments (and prints its own --help): main() hands it
    # everything after `bench`; this entry only names the command in `vhostnet --help`
    bench = sub.add_parser("bench", help="run the benchmarks (see `vhostnet bench --help`)",
                           add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    from apps.bridge import add_parser as add_bridge_parser  # its code lives in apps/bridge.py

    add_bridge_parser(sub)
    from apps.get import add_parser as add_get_parser  # its code lives in apps/get.py

    add_get_parser(sub)
    from apps.control import add_parser as add_control_parsers  # status, faults, capture

    add_control_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # argparse's REMAINDER does not take a first argument that looks like an option
        # (`bench --help`, `bench --seconds 1`): bypass the top-level parser
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
