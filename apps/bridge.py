"""`vhostnet bridge`: the guest's NIC on a host TAP, so the VM joins that L2 network.

No stack of ours runs here: every frame the guest sends is written to the TAP, and every
frame the kernel sends out of the TAP goes to the guest. The TAP may live in a network
namespace (`--netns NS`, which must exist), so the guest talks to the Linux stack of that
namespace as if both sat on one Ethernet segment.

`TapBridge` is the `App` the vhost-user server runs; it only touches the two devices'
token/frame APIs (`VirtioNetDevice.drain_tx`/`send`, `TapDevice.receive`/`transmit`). The
TAP's fd is watched by the server's own selector loop (`VhostUserServer.add_reader`), so
one thread moves frames both ways: a readable TAP, a guest kick or a guest RX buffer all
end in `TapBridge.poll`.

Drops are counted in `TapBridge.counters`, never silent:

- `guest_oversize`, `tap_oversize`: an Ethernet payload larger than the MTU (a VLAN tag's
  4 bytes are allowed on top);
- `tap_no_guest`: a frame from the TAP while no guest is attached;
- `guest_not_ready`: the guest's RX queue is not started or our backlog for it is full;
- `guest_no_buffer`: a frame queued for the guest was dropped because it posted no RX
  buffers for too long (the device's backlog overflowed);
- `tap_write_errors`: the kernel refused a write to the TAP (link down, queue full).

Example (as root)::

    ip netns add lab
    vhostnet bridge --tap vhn0 --netns lab --address 10.77.0.1/24 --socket-path /tmp/br.sock
    # QEMU with -chardev socket,path=/tmp/br.sock,... (printed at start); in the guest:
    #   ip link set eth0 up; ip addr add 10.77.0.2/24 dev eth0; ping 10.77.0.1
    ip netns exec lab ping 10.77.0.2
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections import Counter

from apps.capture import hooks

log = logging.getLogger(__name__)

ETH_HLEN = 14
VLAN_TAG_LEN = 4
VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")
BATCH = 256  # frames moved each way per poll; the loop comes back while work remains


def oversize(frame: memoryview | bytes, mtu: int) -> bool:
    """True when `frame`'s Ethernet payload exceeds `mtu` (one VLAN tag is not payload).

    >>> oversize(bytes(14 + 1500), 1500), oversize(bytes(14 + 1501), 1500)
    (False, True)
    >>> oversize(bytes(12) + b"\\x81\\x00" + bytes(4 + 1500), 1500)
    False
    """
    n = len(frame)
    if n <= ETH_HLEN + mtu:
        return False
    return not (n <= ETH_HLEN + VLAN_TAG_LEN + mtu and bytes(frame[12:14]) in VLAN_TPIDS)


class TapBridge(hooks.FrameHooks):
    """An App joining the guest's NIC and a TAP: frames cross unchanged, both ways.

    `tap` is anything shaped like `netstack.phy.tap.TapDevice` (`receive(now)`,
    `transmit(now)`, `fileno()`); register `tap.fileno()` with the server's
    `add_reader` so a frame from the kernel brings the loop to `poll`. `poll` drains the
    TAP even while no guest is attached (and counts those frames as `tap_no_guest`),
    so a readable TAP never spins the loop.
    """

    def __init__(self, tap, *, mtu: int | None = None, batch: int = BATCH) -> None:
        self.tap = tap
        self.mtu = mtu if mtu is not None else tap.mtu
        self.batch = batch
        self.device = None
        self.counters: Counter[str] = Counter()
        # callables (direction, frame) fed the frames at the virtqueue (`vhostnet capture`)
        self._init_frame_hooks()

    # -- App -------------------------------------------------------------------------
    def attach(self, device) -> None:
        self.device = device
        self._sync_frame_hook()
        log.info("guest attached: frames flow between its NIC and TAP %s",
                 getattr(self.tap, "name", "?"))

    def detach(self) -> None:
        self.device = None
        log.info("guest detached; frames from the TAP are dropped until it is back")

    def poll(self, now: float) -> float | None:
        dev = self.device
        if dev is not None:
            dev.drain_tx(self._to_tap, limit=self.batch)
        self._from_tap(dev, now)
        return None

    # -- guest → TAP -----------------------------------------------------------------
    def _to_tap(self, frame: memoryview) -> None:
        if oversize(frame, self.mtu):
            self.counters["guest_oversize"] += 1
            return
        tx = self.tap.transmit(0.0)
        if tx is None:
            self.counters["tap_write_errors"] += 1
            return
        stats = getattr(self.tap, "stats", None)
        errors = stats.tx_errors if stats is not None else 0
        tx.consume(len(frame), lambda buf: buf.__setitem__(slice(None), frame))
        if stats is not None and stats.tx_errors != errors:
            self.counters["tap_write_errors"] += 1
            return
        self.counters["guest_to_tap_frames"] += 1
        self.counters["guest_to_tap_bytes"] += len(frame)

    # -- TAP → guest -----------------------------------------------------------------
    def _from_tap(self, dev, now: float) -> None:
        for _ in range(self.batch):
            tokens = self.tap.receive(now)
            if tokens is None:
                return
            frame = tokens[0].consume(bytes)
            if dev is None:
                self.counters["tap_no_guest"] += 1
            elif oversize(frame, self.mtu):
                self.counters["tap_oversize"] += 1
            elif dev.transmit(now) is None:
                self.counters["guest_not_ready"] += 1
            elif not dev.send(frame):
                self.counters["guest_no_buffer"] += 1
            else:
                self.counters["tap_to_guest_frames"] += 1
                self.counters["tap_to_guest_bytes"] += len(frame)


# -- the command line ------------------------------------------------------------------

DESCRIPTION = """\
Put the VM's NIC on a host TAP device: every frame the guest sends goes out of the TAP,
and every frame the kernel sends to the TAP reaches the guest. The guest joins that L2
network and talks to the Linux stack there (no stack of ours runs). The TAP is created
(unless --existing) and removed at exit; with --netns it lives in that namespace, which
must already exist. SIGTERM/SIGINT stop it, remove the TAP and the socket file."""

EPILOG = """\
example (as root):
  ip netns add lab
  vhostnet bridge --tap vhn0 --netns lab --address 10.77.0.1/24 \\
      --socket-path /tmp/bridge.sock
  # start QEMU with the options printed at start, then in the guest:
  #   ip link set eth0 up; ip addr add 10.77.0.2/24 dev eth0; ping 10.77.0.1
  ip netns exec lab ping 10.77.0.2
  ip netns del lab       # when done

an existing persistent TAP in this namespace instead:
  ip tuntap add dev tap0 mode tap
  vhostnet bridge --tap tap0 --existing

drops are counted and logged at exit: frames over the MTU (guest_oversize,
tap_oversize), frames while no guest is attached (tap_no_guest), and frames the guest
had no RX buffers for (guest_not_ready, guest_no_buffer)."""


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `vhostnet bridge` on the CLI's subparsers."""
    from apps.common import add_backend_args

    p = sub.add_parser("bridge", help="put a VM's NIC on a host TAP (optionally in a netns)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_args(p)
    p.add_argument("--control", metavar="PATH",
                   help="the control socket `vhostnet status|capture` talk to (default: the "
                        "socket path + .ctl, e.g. vhostnet.sock.ctl)")
    p.add_argument("--no-control", action="store_true", help="no control socket")
    tap = p.add_argument_group("the TAP")
    tap.add_argument("--tap", metavar="NAME", required=False,
                     help="the TAP interface (created, unless --existing; at most 15 bytes)")
    tap.add_argument("--netns", metavar="NS",
                     help="create the TAP in this network namespace (ip netns add NS first)")
    tap.add_argument("--existing", action="store_true",
                     help="attach to an existing persistent TAP in our namespace "
                          "(ip tuntap add dev NAME mode tap) instead of creating it; "
                          "it is left in place at exit")
    tap.add_argument("--address", metavar="CIDR", action="append", default=[],
                     help="give the kernel side of the TAP this address (repeatable), "
                          "e.g. 10.77.0.1/24")
    tap.add_argument("--no-up", action="store_true",
                     help="do not set the TAP up (you configure it yourself)")
    p.set_defaults(func=cmd_bridge)
    return p


def _fail(msg: str) -> int:
    print(f"vhostnet bridge: {msg}", file=sys.stderr)
    return 1


def _open_tap(args: argparse.Namespace):
    """The TapDevice asked for, up and addressed; raises TapError/ValueError."""
    from pyroute2 import netns as pyr_netns

    from netstack.phy.tap import TapDevice, TapError

    if args.netns is not None and args.netns not in pyr_netns.listnetns():
        raise TapError(errno.ENOENT, f"network namespace {args.netns!r} does not exist; "
                                     f"create it first: ip netns add {args.netns}")
    if args.existing and args.netns is not None:
        raise ValueError("--existing works in our namespace only: drop --netns, or let us "
                         "create the TAP inside the namespace (no --existing)")
    tap = TapDevice(args.tap, netns=args.netns, create=not args.existing, mtu=args.mtu)
    try:
        for cidr in args.address:
            tap.add_address(cidr)
        if not args.no_up:
            tap.up()
    except BaseException:
        tap.close()
        raise
    return tap


def cmd_bridge(args: argparse.Namespace) -> int:
    from apps.common import check_mtu, print_capabilities, qemu_hint, setup_logging

    if args.print_capabilities:
        return print_capabilities(args.queues, offloads=False)
    if not args.tap:
        return _fail("--tap NAME is required (see vhostnet bridge --help)")
    if not 1 <= args.queues <= 127:
        return _fail("--queues must be 1..127")
    bad = check_mtu(args.mtu)
    if bad is not None:
        return _fail(bad)
    setup_logging(args.log_level)
    from vhostuser.backend import DEFAULT_FEATURES, BackendConfig
    from vhostuser.server import VhostUserServer, install_signal_handlers

    path = args.socket_path
    if args.fd is None and args.connect is None and path is None:
        path = "vhostnet.sock"
    try:
        tap = _open_tap(args)
    except (OSError, ValueError) as e:
        return _fail(f"cannot set up TAP {args.tap!r}: {e}")
    bridge = TapBridge(tap, mtu=args.mtu)
    try:
        server = VhostUserServer(socket_path=path, connect_path=args.connect, fd=args.fd,
                                 # no checksum/TSO offloads: the TAP has no vnet header,
                                 # so the kernel behind it needs whole frames and checksums
                                 config=BackendConfig(queue_pairs=args.queues, mtu=args.mtu,
                                                      features=DEFAULT_FEATURES),
                                 app=bridge)
    except (OSError, ValueError) as e:
        tap.close()
        return _fail(f"cannot serve: {e.strerror if isinstance(e, OSError) and e.strerror else e}")
    control = None
    if not args.no_control:
        from apps.control import ControlServer, default_control_path

        ctl = args.control or default_control_path(path or args.connect
                                                   or f"vhostnet-fd{args.fd}")
        try:
            control = ControlServer(server, bridge, ctl)
        except OSError as e:
            server.close()
            tap.close()
            return _fail(f"cannot open the control socket {ctl}: {e.strerror or e}")
    try:
        server.add_reader(tap.fileno())
        install_signal_handlers(server)
        if path or args.connect:
            print(qemu_hint(path or args.connect, server=not path, queues=args.queues,
                            mtu=args.mtu), flush=True)
        where = f" in network namespace {args.netns}" if args.netns else ""
        ns = f"ip -n {args.netns} " if args.netns else "ip "
        print(f"\nThe guest's NIC is bridged to TAP {tap.name}{where} (mtu {args.mtu}"
              + (f", {', '.join(args.address)}" if args.address else "")
              + f"). Inspect it with: {ns}addr show {tap.name}", flush=True)
        log.info("bridging vhost-user net on %s to TAP %s%s",
                 path or args.connect or f"fd {args.fd}", tap.name, where)
        if control is not None:
            log.info("control socket %s (vhostnet status/capture --control %s)",
                     control.path, control.path)
        server.serve_forever()
    finally:
        if control is not None:
            control.close()
        server.remove_reader(tap.fileno())
        server.close()
        tap.close()
        c = bridge.counters
        log.info("bridge stopped: guest->tap %d frames, tap->guest %d frames; drops: %s",
                 c["guest_to_tap_frames"], c["tap_to_guest_frames"],
                 ", ".join(f"{k}={v}" for k, v in sorted(c.items())
                           if not k.endswith(("_frames", "_bytes"))) or "none")
    return 0
