"""What the backend commands (`serve`, `bridge`, `get`) share: their backend options,
the QEMU line they print, the --print-capabilities JSON, logging, and a quiet exit when
the reader of their output goes away. (The CLI and the commands import this; none of
them imports another.)"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from vhostuser.backend import (
    OFFLOAD_FEATURES,
    BackendConfig,
)
from vhostuser.features import Feature
from vhostuser.protocol import ProtocolFeature, feature_names

QEMU_HINT = """\
Attach a QEMU VM to this backend with:

  qemu-system-x86_64 ... \\
    -object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem \\
    -chardev socket,id=c0,path={path}{chardev_mode} \\
    -netdev vhost-user,id=n0,chardev=c0{queues} \\
    -device virtio-net-pci,netdev=n0,vectors=0{mq}{host_mtu}

(share=on memory is required: we map the guest's RAM. vectors=0 keeps the NIC on INTx:
QEMU 7.2 under TCG crashes in msix_set_vector_notifiers with MSI-X; with KVM or newer QEMU
you may drop it.{mtu_note})"""


def qemu_hint(path: str, *, server: bool = False, queues: int = 1, mtu: int = 1500) -> str:
    """The QEMU options to paste for a backend on `path` (`server`: QEMU listens there
    and we connect). The guest learns an MTU other than 1500 only from QEMU's host_mtu=
    on -device: QEMU, not the backend, answers the guest's config reads."""
    extra = {"host_mtu": "", "mtu_note": ""}
    if mtu != 1500:
        extra = {"host_mtu": f",host_mtu={mtu}",
                 "mtu_note": f" host_mtu={mtu} is how the guest learns --mtu {mtu}: QEMU, "
                             "not the backend, answers its config reads."}
    return QEMU_HINT.format(path=os.path.abspath(path),
                            chardev_mode=",server=on,wait=off" if server else ",reconnect=1",
                            queues=f",queues={queues}" if queues > 1 else "",
                            mq=",mq=on" if queues > 1 else "", **extra)


def check_mtu(mtu: int) -> str | None:
    """Why `mtu` cannot be offered to a guest, or None (the --raw and bridge range: the
    stack's own check also wants 1280 for IPv6)."""
    from apps.stack import MAX_MTU, MIN_MTU

    if not MIN_MTU <= mtu <= MAX_MTU:
        return f"--mtu {mtu}: must be {MIN_MTU}..{MAX_MTU}"
    return None


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """The options of every command that serves a VM's NIC."""
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
    p.add_argument("--mtu", type=int, default=1500,
                   help="MTU offered to the guest (default 1500; 68..65535, from 1280 with "
                        "IPv6); the guest learns it from QEMU's host_mtu= on -device, which "
                        "the printed QEMU line includes")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the backend's capabilities as JSON (the vhost-user backend "
                        "program convention) and exit")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default: info")
    p.add_argument("--log-format", default="plain", choices=["plain", "json"],
                   help="plain text lines (default), or one JSON object per line "
                        "(ts, level, logger, msg) for log collectors")


def capabilities(queues: int = 1, offloads: bool = True) -> dict:
    """--print-capabilities, after the vhost-user spec's backend program conventions
    (docs/interop/vhost-user.json: `VHostUserBackendCapabilities`, whose only member for
    type "net" is `type`); what this backend offers with these options follows in
    `x-vhostnet` (virtio and protocol feature names, queue pairs), exactly the
    features GET_FEATURES answers: multiqueue (NET_F_MQ) with --queues > 1, the
    checksum and segmentation offloads with the stack."""
    cfg = BackendConfig(queue_pairs=queues)
    features = cfg.features if offloads else cfg.features & ~OFFLOAD_FEATURES
    if queues > 1:
        features |= 1 << Feature.NET_F_MQ
    return {
        "type": "net",
        "x-vhostnet": {
            "features": feature_names(features, Feature),
            "protocol-features": feature_names(cfg.protocol_features, ProtocolFeature),
            "queue-pairs": queues,
        },
    }


def print_capabilities(queues: int = 1, offloads: bool = True) -> int:
    print(json.dumps(capabilities(queues, offloads), indent=2))
    return 0


def setup_logging(level: str, fmt: str = "plain") -> None:
    if fmt == "json":
        from apps.control import setup_logging as json_logging  # ts, level, logger, msg

        json_logging(level, fmt)
        return
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def silence_stdout() -> None:
    """Point fd 1 at /dev/null: the reader of our output is gone (`| head`), and Python
    would report the BrokenPipeError again when it flushes stdout at exit."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass
