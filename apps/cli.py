"""The `vhostnet` command line: serve a QEMU VM's NIC, and the tools around it."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from apps.common import (
    add_backend_args,
    check_mtu,
    print_capabilities,
    qemu_hint,
    setup_logging,
    silence_stdout,
)
from vhostuser.backend import BackendConfig

log = logging.getLogger("vhostnet")

def cmd_serve(args: argparse.Namespace) -> int:
    if args.print_capabilities:
        return print_capabilities(args.queues, offloads=not args.raw)
    setup_logging(args.log_level, args.log_format)
    from vhostuser.server import RawFrameApp, VhostUserServer, install_signal_handlers

    if not 1 <= args.queues <= 127:
        print("vhostnet: --queues must be 1..127", file=sys.stderr)
        return 2
    bad = check_mtu(args.mtu)
    if bad is None and not args.raw:
        try:
            _stack_config(args).check()
        except ValueError as e:
            bad = str(e)
    if bad is not None:
        print(f"vhostnet: {bad}", file=sys.stderr)
        return 2
    if args.pcap_rotate is not None and args.raw:
        print("vhostnet: --pcap-rotate needs the stack (not --raw)", file=sys.stderr)
        return 2
    if args.pcap_rotate is not None and args.pcap in (None, "-"):
        print("vhostnet: --pcap-rotate needs --pcap FILE", file=sys.stderr)
        return 2
    if args.pcap_filter is not None:
        if args.raw or args.pcap is None:
            print("vhostnet: --pcap-filter needs --pcap (and the stack, not --raw)",
                  file=sys.stderr)
            return 2
        from apps.capture.bpf import Filter

        try:
            Filter.compile(args.pcap_filter)
        except ValueError as e:  # libpcap's own words
            print(f"vhostnet: bad --pcap-filter {args.pcap_filter!r}: {e}", file=sys.stderr)
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
                pcap_filter=args.pcap_filter,
                control=ctl, hostfwd=args.hostfwd,
                hostfwd_masquerade=args.hostfwd_masquerade,
                backend=BackendConfig(queue_pairs=args.queues, mtu=args.mtu))
            control = app.control
            hostfwd = app.hostfwd
        for extra in args.also_listen:
            try:
                server.add_port(socket_path=extra)
            except OSError:
                for part in (control, hostfwd, server):
                    if part is not None:
                        part.close()
                raise
    except (OSError, ValueError) as e:
        print(f"vhostnet: cannot serve: "
              f"{e.strerror if isinstance(e, OSError) and e.strerror else e}", file=sys.stderr)
        return 1
    install_signal_handlers(server)
    # with --pcap -, stdout carries the capture only: the hints go to stderr
    out = sys.stderr if getattr(args, "pcap", None) == "-" else sys.stdout
    if path:
        print(qemu_hint(path, queues=args.queues, mtu=args.mtu), flush=True, file=out)
    elif args.connect:
        print(qemu_hint(args.connect, server=True, queues=args.queues, mtu=args.mtu),
              flush=True, file=out)
    if stack is not None:
        c = stack.config
        print(f"\nThe stack: {c.address} (mac {c.mac}, mtu {c.mtu}); DNS {c.dns_ip} "
              f"(gateway.vhostnet, dns.vhostnet{''.join(', ' + r for r in c.dns_records)}); "
              + (f"DHCP leases from {c.dhcp_first}; " if c.dhcp else "no DHCP; ")
              + "UDP echo on 7, udpserver on 5555; TCP echo on 7, discard on 9, chargen on 19, "
              "echoserver on 5555, HTTP on 80.", flush=True, file=out)
        if c.boot.enabled:
            from apps.servers.boot import summary

            print(summary(c.boot, str(c.interface.ip),
                          str(c.ipv6_address) if c.ipv6 else None), flush=True, file=out)
        gw = stack.gateway
        if gw is None:
            print("No gateway (--no-gateway): the guest reaches only these apps.",
                  flush=True, file=out)
        else:
            maps = ", ".join(f"{g} (other ports) -> {h}" for g, h in gw.policy.loopback.items())
            print("Gateway: " + ("restricted, no outbound flows" if gw.config.restrict else
                                 "NAT to the host's networks")
                  + (f"; host loopback: {maps}" if maps else "") + ".", flush=True, file=out)
    log.info("serving vhost-user net on %s", path or args.connect or f"fd {args.fd}")
    if control is not None:
        log.info("control socket %s (vhostnet status/faults/capture --control %s)",
                 control.path, control.path)
    try:
        server.serve_forever()
    finally:
        t0 = time.monotonic()
        if control is not None:
            control.close()
        if hostfwd is not None:
            hostfwd.close()
        t1 = time.monotonic()
        if stack is not None:
            # SIGTERM ends us within 2 s even on a loaded machine: the app threads are
            # daemons and die with the process, so they get only a moment to finish
            stack.stop(timeout=0.2)
        t2 = time.monotonic()
        server.close()
        log.debug("shutdown: control and hostfwd %.3f s, stack %.3f s, server %.3f s",
                  t1 - t0, t2 - t1, time.monotonic() - t2)
    return 0


def _size(text: str) -> int:
    from netstack.phy.pcap import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _hostfwd_rule(spec: str):
    from gateway.hostfwd import HostFwdError, parse_hostfwd

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
                      ipv6=not args.no_ipv6, ipv6_prefix=args.ipv6_prefix,
                      tcp_fin_timeout=args.tcp_fin_timeout,
                      tcp_orphan_retries=args.tcp_orphan_retries,
                      tcp_max_orphans=args.tcp_max_orphans,
                      tcp_max_tw_buckets=args.tcp_max_tw_buckets, max_sockets=args.max_sockets)
    from apps.servers.boot import BootConfig
    from gateway import GatewayConfig

    cfg.boot = BootConfig(tftp_dir=args.tftp, bootfile=args.bootfile, kernel=args.boot_kernel,
                          initrd=args.boot_initrd, append=args.boot_append)
    cfg.gateway = GatewayConfig(
        enabled=not args.no_gateway,
        map_host_loopback=None if args.no_map_host_loopback else args.map_host_loopback,
        restrict=args.restrict, tcp=not args.no_tcp_outbound, udp=not args.no_udp_outbound,
        icmp=not args.no_icmp_outbound,
        allow=list(args.allow_outbound), deny=list(args.deny_outbound),
        max_flows=args.max_flows, udp_timeout=args.udp_timeout,
        dns=not args.no_dns_forward, dns_forward=list(args.dns_forward) or None)
    if start:
        cfg.dhcp_start = start
    if count:
        try:
            cfg.dhcp_count = int(count)
        except ValueError:
            raise ValueError(f"--dhcp-range {args.dhcp_range}: COUNT must be a "
                             "number") from None
    return cfg


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    from apps.demo import main as demo_main

    return demo_main(accel=args.accel, keep=args.keep, pcap=args.pcap, netboot=args.netboot)


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
    add_backend_args(serve)
    serve.add_argument("--log-frames", action="store_true",
                       help="with --raw: log a line for every frame the guest sends")
    serve.add_argument("--raw", action="store_true",
                       help="no stack: only count (and log) raw frames; for debugging")
    serve.add_argument("--control", metavar="PATH",
                       help="the control socket `vhostnet status|faults|capture` talk to "
                            "(default: the socket path + .ctl, e.g. vhostnet.sock.ctl)")
    serve.add_argument("--no-control", action="store_true", help="no control socket")
    serve.add_argument("--also-listen", action="append", default=[], metavar="PATH",
                       help="listen on one more socket for the same guest (repeatable): "
                            "the destination QEMU of a live migration attaches there, and "
                            "the stack moves to its device when its rings start, so the "
                            "guest's connections to our apps survive the migration")
    st = serve.add_argument_group("the stack (what the guest sees)")
    st.add_argument("--address", default="10.0.2.2/24",
                    help="our address and prefix on the guest's link (default 10.0.2.2/24); "
                         "the defaults below follow it, as slirp's net= does")
    st.add_argument("--dns-address", default=None,
                    help="the DNS server address we answer on, on our link (default: the "
                         "network's .3, 10.0.2.3)")
    st.add_argument("--mac", default="52:55:0a:00:02:02",
                    help="our MAC address (default 52:55:0a:00:02:02)")
    st.add_argument("--dhcp-range", metavar="START[,COUNT]",
                    help="first address leased (and how many); default the network's .15 "
                         "(10.0.2.15) to the end of the network")
    st.add_argument("--no-dhcp", action="store_true", help="do not run the DHCP server")
    st.add_argument("--ipv6-prefix", default="fd00:10:0:2::/64", type=_ipv6_prefix,
                    metavar="PREFIX/LEN",
                    help="the IPv6 prefix we advertise for SLAAC; we are ::2 in it and the DNS "
                         "server ::3 (default fd00:10:0:2::/64)")
    st.add_argument("--no-ipv6", action="store_true",
                    help="IPv4 only: no IPv6 addresses, router advertisements or DHCPv6")
    st.add_argument("--dns-record", action="append", default=[], metavar="NAME=ADDR",
                    help="an extra A/AAAA record (repeatable), e.g. host.vhostnet=10.0.2.50")
    lim = serve.add_argument_group(
        "limits (what a hostile or broken peer may hold; Linux's names and meanings)")
    lim.add_argument("--tcp-fin-timeout", type=float, default=60.0, metavar="SECONDS",
                     help="an orphan in FIN-WAIT-2 (closed by its app, the peer never sends "
                          "its FIN) is closed after this long (default 60)")
    lim.add_argument("--tcp-orphan-retries", type=int, default=8, metavar="N",
                     help="an orphan in FIN-WAIT-1/CLOSING/LAST-ACK gives up after N "
                          "retransmissions or zero-window probes (default 8; 0 means 8)")
    lim.add_argument("--tcp-max-orphans", type=int, default=16384, metavar="N",
                     help="more orphans than this and the oldest is reset (default 16384)")
    lim.add_argument("--tcp-max-tw-buckets", type=int, default=16384, metavar="N",
                     help="more TIME-WAIT sockets than this and the oldest is closed at once "
                          "(default 16384)")
    lim.add_argument("--max-sockets", type=int, default=131072, metavar="N",
                     help="the socket table's size: one more gets EMFILE (default 131072)")
    gw = serve.add_argument_group(
        "the gateway (NAT: the guest reaches the host and the world, as with -netdev user)")
    gw.add_argument("--no-gateway", action="store_true",
                    help="no NAT at all: the guest reaches only our apps")
    gw.add_argument("--map-host-loopback", metavar="ADDR", default="",
                    help="the guest address standing for the host's 127.0.0.1 / ::1 "
                         "(default: our gateway address, 10.0.2.2 and fd00:10:0:2::2, on the "
                         "ports none of our apps holds)")
    gw.add_argument("--no-map-host-loopback", action="store_true",
                    help="the guest cannot reach the host's loopback")
    gw.add_argument("--restrict", action="store_true",
                    help="no outbound flows at all, DNS forwarding included (as -netdev "
                         "user,restrict=on); --hostfwd still works")
    gw.add_argument("--allow-outbound", action="append", default=[], metavar="CIDR",
                    help="only these destinations (repeatable; default: all)")
    gw.add_argument("--deny-outbound", action="append", default=[], metavar="CIDR",
                    help="never these destinations (repeatable; wins over --allow-outbound)")
    gw.add_argument("--no-tcp-outbound", action="store_true", help="no outbound TCP")
    gw.add_argument("--no-udp-outbound", action="store_true", help="no outbound UDP")
    gw.add_argument("--no-icmp-outbound", action="store_true",
                    help="no outbound ping (echo requests to elsewhere are dropped)")
    gw.add_argument("--dns-forward", action="append", default=[], metavar="ADDR[:PORT]",
                    help="where queries for names that are not ours go (repeatable, tried in "
                         "turn; IPv6 in brackets; default: /etc/resolv.conf's nameservers)")
    gw.add_argument("--no-dns-forward", action="store_true",
                    help="names that are not ours get NXDOMAIN")
    gw.add_argument("--max-flows", type=int, default=4096, metavar="N",
                    help="NAT flows per protocol; more are dropped and counted (default 4096)")
    gw.add_argument("--udp-timeout", type=float, default=180.0, metavar="SECONDS",
                    help="a UDP flow idle this long is closed (default 180)")
    nb = serve.add_argument_group(
        "network boot (a VM started with -boot n boots from us; QEMU's NIC ROM is iPXE)")
    nb.add_argument("--boot-kernel", metavar="FILE",
                    help="boot this kernel (a bzImage or a multiboot ELF): iPXE gets a "
                         "script that fetches it (and --boot-initrd) from our HTTP app, "
                         "http://10.0.2.2/boot/; no -kernel needed on QEMU's line")
    nb.add_argument("--boot-initrd", metavar="FILE", help="the initrd for --boot-kernel")
    nb.add_argument("--boot-append", metavar="ARGS", default="",
                    help="the kernel command line for --boot-kernel, e.g. 'console=ttyS0'")
    nb.add_argument("--tftp", metavar="DIR",
                    help="serve DIR read-only over TFTP (port 69, IPv4 and IPv6; blksize, "
                         "tsize, timeout and windowsize options), as -netdev user,tftp=")
    nb.add_argument("--bootfile", metavar="NAME",
                    help="the boot file DHCP names (option 67 and BOOTP's file; we are "
                         "the next server): a file under --tftp DIR, or a URL; with "
                         "--boot-kernel, PXE ROMs get NAME and iPXE the script (chainload)")
    st.add_argument("--pcap", metavar="FILE",
                    help="capture every frame at the virtqueue (classic pcap; .pcapng for "
                         "pcapng with directions; a FIFO streams live to wireshark -k -i)")
    st.add_argument("--pcap-rotate", metavar="SIZE", type=_size, default=None,
                    help="with --pcap FILE: go on in FILE.1, FILE.2, ... when FILE would "
                         "exceed SIZE (e.g. 10k, 100M; powers of 1024), each a whole capture")
    st.add_argument("--pcap-filter", metavar="EXPR",
                    help="with --pcap: write only the frames this pcap-filter expression "
                         "accepts (tcpdump's syntax, e.g. 'tcp port 80 or icmp6')")
    st.add_argument("--hostfwd", action="append", default=[], type=_hostfwd_rule,
                    metavar="tcp|udp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT",
                    help="forward a host port to the guest, as QEMU's -netdev user,hostfwd= "
                         "(repeatable); HOSTADDR defaults to 127.0.0.1, GUESTADDR to the "
                         "first DHCP lease (10.0.2.15 by default); IPv6 addresses in brackets; e.g. "
                         "tcp::8080-:80, tcp:[::1]:8080-[fd00:10:0:2::15]:80")
    st.add_argument("--hostfwd-masquerade", action="store_true",
                    help="forwarded connections reach the guest from our address (10.0.2.2), "
                         "as with -netdev user; by default they come from the real client's "
                         "address and port")
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
    demo.add_argument("--netboot", action="store_true",
                      help="boot the guest from us instead (-boot n, no -kernel): QEMU's "
                           "iPXE ROM leases, fetches our script, kernel and initrd over HTTP; "
                           "each step with its timing")
    demo.add_argument("--keep", action="store_true",
                      help="leave the VM running after the steps (Ctrl-C ends it)")
    demo.add_argument("--log-level", default="warning",
                      choices=["debug", "info", "warning", "error"], help="default: warning")
    demo.set_defaults(func=cmd_demo)

    # apps/bench/__init__.py parses its own arguments (and prints its own --help): main() hands it
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
    from apps.capture.extcap import add_parser as add_extcap_parser  # Wireshark's extcap

    add_extcap_parser(sub)
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
    try:
        return args.func(args)
    except BrokenPipeError:  # `vhostnet status | head -3`: the reader had enough
        silence_stdout()
        return 0


if __name__ == "__main__":
    sys.exit(main())
