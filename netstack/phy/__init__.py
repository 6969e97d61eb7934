"""Devices, smoltcp style: a Device hands out tokens, the interface consumes them.

- `receive(now) -> (RxToken, TxToken) | None`: a frame is waiting; the rx token gives it,
  the tx token lets the stack answer in the same poll (ARP reply, TCP ACK).
- `transmit(now) -> TxToken | None`: room for one outgoing frame, or None (back-pressure).
- `RxToken.consume(fn)`: calls `fn(frame: memoryview)` and returns its result; the view is
  valid only during the call (it may point straight into guest memory).
- `TxToken.consume(length, fn)`: calls `fn(buf: memoryview)` with a writable view of
  exactly `length` bytes (possibly straight into a guest RX buffer), sends it, returns
  `fn`'s result.
- `capabilities() -> DeviceCapabilities`: MTU (the IP MTU: largest frame minus the Ethernet
  header), max burst, checksum and segmentation offloads.

`now` is a float of seconds on a monotonic clock; devices never read a clock themselves.
Wrappers (pcap writer, fault injector, tracer) are devices that wrap devices; they keep the
wrapped device in `.inner` and forward `fileno()` and `poll_at()` to it.

Devices here: `loopback.Loopback` / `loopback.loopback_pair()` (in memory), `tap.TapDevice`
(a Linux TAP, optionally inside a network namespace), and the wrappers `pcap.PcapWriter`,
`fault.FaultInjector`, `tracer.Tracer`.

Example (the usual receive loop, on the in-memory loopback):

>>> from netstack.phy.loopback import Loopback
>>> dev = Loopback()
>>> dev.transmit(0.0).consume(3, lambda buf: buf.__setitem__(slice(None), b"abc"))
>>> rx, tx = dev.receive(0.0)
>>> rx.consume(bytes)
b'abc'
>>> dev.receive(0.0) is None
True
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

R = TypeVar("R")


class Medium(enum.Enum):
    """What a device's frames start with."""

    ETHERNET = "ethernet"  # 14-byte Ethernet header (TAP, virtio-net)
    IP = "ip"  # bare IPv4/IPv6 packets (TUN)


class Direction(enum.StrEnum):
    """Which way a frame went, seen from the stack: RX = device to stack, TX = stack to device."""

    RX = "rx"
    TX = "tx"


@dataclass(frozen=True, slots=True)
class ChecksumCapabilities:
    """Which checksums the device computes/verifies for us (True = the device does it)."""

    ipv4: bool = False
    udp: bool = False
    tcp: bool = False
    icmp: bool = False


@dataclass(frozen=True, slots=True)
class DeviceCapabilities:
    """What the device can carry: `mtu` is the IP MTU (frame size minus 14 bytes)."""

    mtu: int = 1500
    max_burst: int | None = None
    checksum: ChecksumCapabilities = ChecksumCapabilities()
    # Largest TCP segment the device accepts in one frame (TSO); None = no segmentation.
    tso_max: int | None = None
    # The device may hand us frames larger than the MTU (the guest's TSO/LRO).
    lro: bool = False
    # IPv6 TCP gets the same checksum and segmentation offloads as IPv4 (`checksum`, `tso_max`).
    ipv6_offload: bool = False


class RxToken(Protocol):
    def consume(self, fn: Callable[[memoryview], R]) -> R: ...


class TxToken(Protocol):
    def consume(self, length: int, fn: Callable[[memoryview], R]) -> R: ...


@runtime_checkable
class Device(Protocol):
    def receive(self, now: float) -> tuple[RxToken, TxToken] | None: ...

    def transmit(self, now: float) -> TxToken | None: ...

    def capabilities(self) -> DeviceCapabilities: ...
