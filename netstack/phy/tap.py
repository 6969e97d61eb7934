"""A Linux TAP interface as a Device: Ethernet frames to and from the kernel's stack.

`TapDevice(name="vhn%d", *, netns=None, create=True, mtu=1500, offload=False)` opens
/dev/net/tun with IFF_TAP | IFF_NO_PI (no packet-information prefix), non-blocking.
`receive()` reads one frame, `transmit()` gives a token that writes one; `fileno()` is the fd
to register for reading with the runtime's selector (writes never block in practice: the
kernel drops instead, and that is counted as `stats.tx_errors`).

Offloads (`offload=True`): the TAP is opened with IFF_VNET_HDR as well, TUNSETVNETHDRSZ 10
and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6), so every frame carries a
virtio_net_hdr (`vnet.py`) and TCP crosses the TAP as segments of up to 64 KiB with the
checksum left to whoever needs it: we send segments up to `tso_max` whole (the kernel cuts
them at the MTU only if they leave on a real wire), the kernel hands us its GSO/GRO frames
whole. `capabilities()` then says `checksum.tcp`, `tso_max`, `lro` and `ipv6_offload`, as the
vhost-user device does for a guest. UDP, ICMP and the rest keep their software checksums
(a partial UDP checksum from the kernel is completed by the device). Frames whose header
cannot be honoured are dropped and counted (`stats.rx_errors`). Off by default: a TAP
that only moves frames through (apps/bridge.py) must not receive 64 KiB frames.

The interface side is the kernel: a frame we transmit is one the kernel's `name` interface
receives, and the kernel's frames out of `name` are what we receive. `mac` is the kernel
interface's address, not ours.

Network namespaces: with `netns="ns"` (an existing namespace, as in `ip netns add ns`), the
fd is opened and the TAP created in *our* namespace, then the link is moved into `ns` with
pyroute2. The fd stays attached to the device across the move, so we keep reading and writing
from here while the kernel stack of `ns` owns the interface. `up()`, `add_address()`, `mac`
and `close()` act in that namespace. The name must be free in both namespaces.

Lifetime: the TAP is not persistent, so the kernel deletes it when the fd is closed;
`close()` also deletes the link if it is still there and we created it. With `create=False`
we attach to an existing (persistent) TAP in our namespace and never delete it.

Errors: `TapError` (an OSError) with a sentence that says what to do, e.g. when not root
(CAP_NET_ADMIN needed) or /dev/net/tun is missing (`modprobe tun`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import ChecksumCapabilities, DeviceCapabilities, vnet

log = logging.getLogger(__name__)

R = TypeVar("R")

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
# TCP payload per segment we send whole (the IP datagram stays within 64 KiB), as for a guest.
TSO_MAX = 65000
IFNAMSIZ = 16
_IFREQ_SIZE = 40  # struct ifreq on Linux

ETHERNET_HEADER_LEN = 14
# Largest frame we read: a 64 KiB packet plus the Ethernet and a VLAN header (and, with
# offloads, the virtio_net_hdr in front).
READ_SIZE = 65536 + ETHERNET_HEADER_LEN + 4


class TapError(OSError):
    """The TAP could not be created, attached, configured or moved."""


@dataclass(slots=True)
class TapStats:
    rx_frames: int = 0
    tx_frames: int = 0
    tx_errors: int = 0  # write refused by the kernel (link down, queue full, ...)
    rx_errors: int = 0  # offload: a header we cannot honour, a bad TCP checksum (dropped)
    rx_csum_completed: int = 0  # offload: partial non-TCP checksums completed here
    tx_gso: int = 0  # offload: segments larger than the MTU sent whole
    rx_gso: int = 0  # offload: frames larger than the MTU received whole


def _ipr(netns: str | None):
    from pyroute2 import IPRoute

    if netns is None:
        return IPRoute()
    return IPRoute(netns=netns, flags=0)  # flags=0: never create the namespace


def _netns_exists(netns: str) -> bool:
    from pyroute2 import netns as pyr_netns

    return netns in pyr_netns.listnetns()


def _link_index(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


class _RxToken:
    __slots__ = ("_frame",)

    def __init__(self, frame: bytes) -> None:
        self._frame = frame

    def consume(self, fn: Callable[[memoryview], R]) -> R:
        return fn(memoryview(self._frame))


class _TxToken:
    __slots__ = ("_dev",)

    def __init__(self, dev: TapDevice) -> None:
        self._dev = dev

    def consume(self, length: int, fn: Callable[[memoryview], R]) -> R:
        if length < 0:
            raise ValueError(f"negative frame length {length}")
        dev = self._dev
        if not dev.offload:
            buf = bytearray(length)
            result = fn(memoryview(buf))
            dev._write(buf)
            return result
        buf = bytearray(vnet.HEADER_LEN + length)
        mv = memoryview(buf)
        frame = mv[vnet.HEADER_LEN:]
        result = fn(frame)
        hdr = vnet.tx_header(frame, dev.mtu)
        if hdr[1] != vnet.GSO_NONE:
            dev.stats.tx_gso += 1
        mv[:vnet.HEADER_LEN] = hdr
        dev._write(buf)
        return result


class TapDevice:
    """A TAP interface; see the module docstring. Use as a context manager or call close()."""

    def __init__(
        self,
        name: str = "vhn%d",
        *,
        netns: str | None = None,
        create: bool = True,
        mtu: int = 1500,
        offload: bool = False,
    ) -> None:
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
            raise ValueError(f"bad interface name {name!r} (at most {IFNAMSIZ - 1} bytes)")
        if not 68 <= mtu <= 65535:
            raise ValueError(f"mtu must be in 68..65535, got {mtu}")
        if netns is not None and not create:
            raise ValueError("create=False with netns is not supported: attach in our namespace")
        self.netns = netns
        self.mtu = mtu
        self.offload = offload
        self.stats = TapStats()
        self._created = create
        self._fd: int | None = None
        if offload:
            self._caps = DeviceCapabilities(
                mtu=mtu, checksum=ChecksumCapabilities(tcp=True), tso_max=TSO_MAX, lro=True,
                ipv6_offload=True)
        else:
            self._caps = DeviceCapabilities(mtu=mtu)
        self._rxbuf = bytearray(READ_SIZE + vnet.HEADER_LEN)

        if netns is not None and not _netns_exists(netns):
            raise TapError(errno.ENOENT, f"network namespace {netns!r} does not exist")
        if not create:
            with _ipr(None) as ipr:
                if _link_index(ipr, name) is None:
                    # TUNSETIFF would create it: refuse, the caller asked to attach.
                    raise TapError(errno.ENODEV, f"no interface {name!r} to attach to")
        elif "%" not in name:
            with _ipr(None) as ipr:
                if _link_index(ipr, name) is not None:
                    raise TapError(errno.EEXIST, f"interface {name!r} already exists")
            if netns is not None:
                with _ipr(netns) as ipr:
                    if _link_index(ipr, name) is not None:
                        raise TapError(
                            errno.EEXIST, f"interface {name!r} already exists in netns {netns!r}"
                        )

        self._fd = self._open()
        try:
            self.name = self._setiff(name)
            if offload:
                self._set_offloads()
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- creation ----------------------------------------------------------------------
    @staticmethod
    def _open() -> int:
        if not os.path.exists(TUN_PATH):
            raise TapError(
                errno.ENOENT, f"{TUN_PATH} is missing: load the tun module (modprobe tun)"
            )
        try:
            return os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError as e:
            raise TapError(
                e.errno, f"cannot open {TUN_PATH}: run as root (CAP_NET_ADMIN needed)"
            ) from e

    def _setiff(self, name: str) -> str:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if self.offload else 0)
        ifr = struct.pack(f"{IFNAMSIZ}sH", name.encode(), flags)
        ifr = ifr.ljust(_IFREQ_SIZE, b"\0")
        try:
            out = fcntl.ioctl(self._fd, TUNSETIFF, ifr)
        except PermissionError as e:
            raise TapError(
                e.errno, f"TUNSETIFF {name!r}: not permitted (root / CAP_NET_ADMIN needed)"
            ) from e
        except OSError as e:
            what = "create" if self._created else "attach to"
            raise TapError(e.errno, f"cannot {what} TAP {name!r}: {e.strerror}") from e
        return out[:IFNAMSIZ].split(b"\0", 1)[0].decode()

    def _set_offloads(self) -> None:
        """Header size 10, then checksum and TSO offloads (TUN_F_*: what we accept)."""
        try:
            fcntl.ioctl(self._fd, TUNSETVNETHDRSZ, struct.pack("i", vnet.HEADER_LEN))
            fcntl.ioctl(self._fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError as e:
            raise TapError(e.errno, f"TAP {self.name!r}: the kernel refused the offloads "
                                    f"({e.strerror}); use offload=False") from e

    def _setup(self) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with _ipr(None) as ipr:
                index = _link_index(ipr, self.name)
                if index is None:
                    raise TapError(errno.ENODEV, f"TAP {self.name!r} vanished after creation")
                if self._created:
                    ipr.link("set", index=index, mtu=self.mtu)
                if self.netns is not None:
                    ipr.link("set", index=index, net_ns_fd=self.netns)
        except NetlinkError as e:
            raise TapError(e.code, f"configuring TAP {self.name!r}: {e}") from e
        if self.netns is not None and self.ifindex is None:
            raise TapError(errno.ENODEV, f"TAP {self.name!r} not found in netns {self.netns!r}")

    # -- link helpers (act in the TAP's namespace) -------------------------------------
    def _link(self, **kw) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with _ipr(self.netns) as ipr:
                index = _link_index(ipr, self.name)
                if index is None:
                    raise TapError(errno.ENODEV, f"TAP {self.name!r} not found")
                ipr.link("set", index=index, **kw)
        except NetlinkError as e:
            raise TapError(e.code, f"link set {kw} on {self.name!r}: {e}") from e

    @property
    def ifindex(self) -> int | None:
        """The interface index in its namespace, or None if the link is gone."""
        with _ipr(self.netns) as ipr:
            return _link_index(ipr, self.name)

    @property
    def mac(self) -> str:
        """The kernel interface's MAC address (the kernel side of the TAP), "aa:bb:..."."""
        with _ipr(self.netns) as ipr:
            index = _link_index(ipr, self.name)
            if index is None:
                raise TapError(errno.ENODEV, f"TAP {self.name!r} not found")
            return ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")

    def up(self) -> None:
        self._link(state="up")

    def down(self) -> None:
        self._link(state="down")

    def set_mac(self, mac: str) -> None:
        self._link(address=mac)

    def add_address(self, cidr: str) -> None:
        """Give the kernel interface an address, e.g. "10.99.0.1/24" or "fd00::1/64"."""
        from pyroute2.netlink.exceptions import NetlinkError

        address, _, prefix = cidr.partition("/")
        if not prefix:
            prefix = "128" if ":" in address else "32"
        try:
            with _ipr(self.netns) as ipr:
                index = _link_index(ipr, self.name)
                if index is None:
                    raise TapError(errno.ENODEV, f"TAP {self.name!r} not found")
                ipr.addr("add", index=index, address=address, prefixlen=int(prefix))
        except NetlinkError as e:
            raise TapError(e.code, f"add address {cidr} to {self.name!r}: {e}") from e

    # -- Device ------------------------------------------------------------------------
    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("TapDevice is closed")
        return self._fd

    def capabilities(self) -> DeviceCapabilities:
        return self._caps

    def receive(self, now: float) -> tuple[_RxToken, _TxToken] | None:
        if self._fd is None:
            return None
        if not self.offload:
            try:
                frame = os.read(self._fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return None
            if not frame:
                return None
            self.stats.rx_frames += 1
            return _RxToken(frame), _TxToken(self)
        buf = self._rxbuf
        while True:
            try:
                n = os.readv(self._fd, (buf,))
            except (BlockingIOError, InterruptedError):
                return None
            if n <= vnet.HEADER_LEN:
                if n == 0:
                    return None
                self.stats.rx_errors += 1
                continue
            self.stats.rx_frames += 1
            hdr = bytes(buf[:vnet.HEADER_LEN])
            frame = bytes(memoryview(buf)[vnet.HEADER_LEN:n])
            try:
                done = vnet.rx_frame(hdr, frame)
            except vnet.VnetError as e:
                self.stats.rx_errors += 1
                log.debug("TAP %s: frame dropped: %s", self.name, e)
                continue
            if done is not frame:
                self.stats.rx_csum_completed += 1
            if len(frame) - ETHERNET_HEADER_LEN > self.mtu:
                self.stats.rx_gso += 1
            return _RxToken(done), _TxToken(self)

    def transmit(self, now: float) -> _TxToken | None:
        if self._fd is None:
            return None
        return _TxToken(self)

    def _write(self, frame: bytearray) -> None:
        if self._fd is None:
            self.stats.tx_errors += 1
            return
        try:
            os.write(self._fd, frame)
        except OSError as e:
            # EIO while the link is down, EAGAIN/ENOBUFS under pressure: a lost frame.
            self.stats.tx_errors += 1
            log.debug("TAP %s: write of %d bytes failed: %s", self.name, len(frame), e)
            return
        self.stats.tx_frames += 1

    # -- lifetime ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        """Close the fd; delete the link if we created it and it still exists. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)
        if not self._created or not hasattr(self, "name"):
            return
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with _ipr(self.netns) as ipr:
                index = _link_index(ipr, self.name)
                if index is not None:
                    ipr.link("del", index=index)
        except (NetlinkError, OSError) as e:
            log.warning("TAP %s: could not delete the link: %s", self.name, e)

    def __enter__(self) -> TapDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # the kernel deletes the non-persistent TAP with it

    def __repr__(self) -> str:
        where = f" netns={self.netns}" if self.netns else ""
        where += " offload" if getattr(self, "offload", False) else ""
        state = "closed" if self._fd is None else f"fd={self._fd}"
        return f"<TapDevice {getattr(self, 'name', '?')}{where} {state}>"
