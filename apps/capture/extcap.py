"""vhostnet as a live Wireshark interface: an extcap program (`vhostnet extcap`), and the
registry of running backends it lists.

Wireshark and tshark run every program in their extcap folders to learn interfaces
(https://www.wireshark.org/docs/wsdg_html_chunked/ChCaptureExtcap.html). The calls:

- `--extcap-interfaces`: `extcap {version}{help}` then one `interface {value}{display}` per
  running backend (value `vhostnet-PID`);
- `--extcap-interface IF --extcap-dlts`: Ethernet;
- `--extcap-interface IF --extcap-config`: the options Wireshark shows (the direction);
- `--extcap-interface IF --extcap-capture-filter EXPR` alone: validate a capture filter
  (libpcap's message and status 1 when it does not compile);
- `--extcap-interface IF --capture --fifo PATH [--extcap-capture-filter EXPR]
  [--direction D]`: stream that backend's frames into PATH as pcapng (each frame's
  direction in `epb_flags`, a section comment naming the backend), until Wireshark closes
  the FIFO or the backend goes away. The backend runs the filter (apps/capture/bpf.py);
  the section comment names the backend and the guest's MAC (its leases and ARP entries).

Registry: every control socket (apps/control's ControlServer) links itself as
`DIR/vhostnet-PID[-N].ctl` while it serves, DIR being $VHOSTNET_RUNTIME_DIR, else
$XDG_RUNTIME_DIR/vhostnet, else /tmp/vhostnet-UID. Links whose backend no longer answers
(one killed with -9) are skipped and removed when listed, and those of processes that
are gone when another backend registers. `vhostnet extcap --install`
links the program into the user's extcap folder (~/.config/wireshark/extcap, where
Wireshark 4.0 looks).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import sys
import time

VERSION = "1.0"
HELP_URL = "https://github.com/vhostnet/vhostnet#packet-capture"
PREFIX = "vhostnet-"


# -- the registry -----------------------------------------------------------------------
def registry_dir() -> str:
    base = os.environ.get("VHOSTNET_RUNTIME_DIR")
    if base:
        return base
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "vhostnet") if xdg else f"/tmp/vhostnet-{os.getuid()}"


def register(control_path: str) -> str | None:
    """Link `control_path` into the registry as vhostnet-PID[-N].ctl; the link, or None
    when the registry cannot be written (capture still works by path)."""
    d = registry_dir()
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        _prune(d)
        target = os.path.abspath(control_path)
        for n in range(100):
            name = f"{PREFIX}{os.getpid()}" + (f"-{n}" if n else "") + ".ctl"
            link = os.path.join(d, name)
            try:
                os.symlink(target, link)
                return link
            except FileExistsError:
                continue
    except OSError:
        return None
    return None


def _prune(d: str) -> None:
    """Remove the links of processes that are gone (killed with -9: they never
    unregistered), so the registry does not grow."""
    for name in os.listdir(d):
        if not (name.startswith(PREFIX) and name.endswith(".ctl")):
            continue
        pid = name[len(PREFIX):-len(".ctl")].split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            unregister(os.path.join(d, name))
        except OSError:
            pass  # alive, someone else's


def unregister(link: str | None) -> None:
    if link is not None:
        with contextlib.suppress(OSError):
            os.unlink(link)


def _answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def running() -> list[tuple[str, str]]:
    """(interface name, control socket path) of every registered backend that answers,
    by name; links of backends that are gone are removed."""
    d = registry_dir()
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    out = []
    for name in names:
        if not (name.startswith(PREFIX) and name.endswith(".ctl")):
            continue
        link = os.path.join(d, name)
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if _answers(link):
            out.append((name[:-len(".ctl")], target))
        else:
            unregister(link)
    return out


def _control_of(interface: str) -> str:
    for name, target in running():
        if name == interface:
            return target
    raise LookupError(f"no running backend is {interface} (vhostnet extcap "
                      "--extcap-interfaces lists them)")


# -- the extcap program -----------------------------------------------------------------
def interfaces() -> list[str]:
    lines = [f"extcap {{version={VERSION}}}{{help={HELP_URL}}}"]
    for name, target in running():
        sock = target[:-len(".ctl")] if target.endswith(".ctl") else target
        lines.append(f"interface {{value={name}}}{{display=vhostnet: VM NIC on {sock} "
                     f"(pid {name[len(PREFIX):].split('-')[0]})}}")
    return lines


def dlts() -> list[str]:
    return ["dlt {number=1}{name=EN10MB}{display=Ethernet}"]


def config() -> list[str]:
    return ["arg {number=0}{call=--direction}{display=Direction}{type=selector}"
            "{tooltip=which frames: both ways, those the guest sent, those it was given}",
            "value {arg=0}{value=both}{display=Both ways}{default=true}",
            "value {arg=0}{value=guest-tx}{display=Sent by the guest}",
            "value {arg=0}{value=guest-rx}{display=Given to the guest}"]


def validate_filter(expr: str) -> str | None:
    """libpcap's message when `expr` does not compile, else None."""
    from apps.capture.bpf import Filter

    try:
        Filter.compile(expr)
    except ValueError as e:
        return str(e)
    return None


def capture(interface: str, fifo: str, expr: str | None, direction: str = "both") -> int:
    """Stream the backend's frames into `fifo` as pcapng until the reader goes away (the
    header first, so Wireshark starts at once) or the backend stops."""
    from apps.control import ControlClient, ControlError
    from netstack.phy.pcap import PcapSink

    control = _control_of(interface)
    if direction not in ("both", "guest-tx", "guest-rx"):
        raise ValueError(f"--direction {direction}: both, guest-tx or guest-rx")
    want = None if direction == "both" else direction
    with ControlClient(control, timeout=None) as c, open(fifo, "wb") as out:
        macs = _guest_macs(c)
        frames = c.frames(filter=expr or None)
        comment = f"vhostnet backend pid {interface[len(PREFIX):]}, control {control}" \
                  + (f", guest {', '.join(macs)}" if macs else "") \
                  + (f", filter {expr}" if expr else "")
        sink = PcapSink(out, format="pcapng", start=time.time(), comment=comment)
        try:
            for rec in frames:
                if want is not None and rec["dir"] != want:
                    continue
                sink.write(bytes.fromhex(rec["frame"]), rec["ts"],
                           "rx" if rec["dir"] == "guest-tx" else "tx", orig_len=rec["len"])
        except (BrokenPipeError, ControlError, OSError):
            pass  # the reader closed the FIFO, or the backend went away
        finally:
            with contextlib.suppress(OSError, ValueError):
                sink.close()
    return 0


def _guest_macs(client) -> list[str]:
    """The guest's MAC(s) as the backend knows them: its DHCP leases and ARP table."""
    from apps.control import ControlError

    try:
        st = client.request({"cmd": "status"}).get("status", {})
    except (ControlError, OSError, ValueError):
        return []
    macs = {le["mac"] for le in st.get("dhcp_leases") or []}
    macs |= {n["mac"] for n in (st.get("interface") or {}).get("neighbors") or []}
    return sorted(m for m in macs if m)


def install(folder: str | None = None) -> str:
    """Put an executable `vhostnet` into Wireshark's personal extcap folder that runs this
    program with this Python; its path."""
    folder = folder or os.path.join(os.path.expanduser("~"), ".config", "wireshark", "extcap")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "vhostnet")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = ("#!/bin/sh\n# vhostnet's Wireshark extcap (vhostnet extcap --install)\n"
              f"cd {shlex.quote(root)} && exec {shlex.quote(sys.executable)} "
              "-m apps.cli extcap \"$@\"\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(script)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def main(args: argparse.Namespace) -> int:
    if args.install:
        print(f"installed {install(args.folder)}; `tshark -D` lists running backends as "
              f"{PREFIX}PID, e.g. tshark -i {PREFIX}PID -w session.pcapng")
        return 0
    if args.extcap_interfaces:
        print("\n".join(interfaces()), flush=True)
        return 0
    if not args.extcap_interface:
        print("vhostnet extcap: give --extcap-interfaces, or --extcap-interface IF with "
              "--extcap-dlts, --extcap-config or --capture (Wireshark calls these; "
              "--install sets it up)", file=sys.stderr)
        return 2
    if args.extcap_dlts:
        print("\n".join(dlts()), flush=True)
        return 0
    if args.extcap_config:
        print("\n".join(config()), flush=True)
        return 0
    if args.capture:
        if not args.fifo:
            print("vhostnet extcap: --capture needs --fifo PATH", file=sys.stderr)
            return 2
        try:
            return capture(args.extcap_interface, args.fifo, args.extcap_capture_filter,
                           args.direction)
        except (LookupError, ValueError, OSError) as e:
            print(f"vhostnet extcap: {e}", file=sys.stderr)
            return 1
    if args.extcap_capture_filter is not None:
        why = validate_filter(args.extcap_capture_filter)
        if why is not None:
            print(why, flush=True)
            return 1
        return 0
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extcap", help="vhostnet as a live Wireshark/tshark interface (extcap)",
        description="Wireshark's extcap interface to running backends: `vhostnet extcap "
                    "--install` once, then every running `vhostnet serve` is an interface "
                    "in Wireshark and in `tshark -D` (vhostnet-PID), captured live with "
                    "the backend running the capture filter. The other options are "
                    "Wireshark's calls.",
        epilog="examples:\n  vhostnet extcap --install\n  tshark -D\n"
               "  tshark -i vhostnet-12345 -f 'icmp or arp' -w session.pcapng\n"
               "  wireshark -k -i vhostnet-12345",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--install", action="store_true",
                   help="put the extcap program into Wireshark's personal extcap folder")
    p.add_argument("--folder", metavar="DIR", help="with --install: this folder instead")
    p.add_argument("--extcap-interfaces", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--extcap-version", help=argparse.SUPPRESS)
    p.add_argument("--extcap-interface", help=argparse.SUPPRESS)
    p.add_argument("--extcap-dlts", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--extcap-config", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--extcap-capture-filter", help=argparse.SUPPRESS)
    p.add_argument("--capture", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fifo", help=argparse.SUPPRESS)
    p.add_argument("--direction", default="both", help=argparse.SUPPRESS)
    p.add_argument("--extcap-reload-option", help=argparse.SUPPRESS)
    p.set_defaults(func=main)
