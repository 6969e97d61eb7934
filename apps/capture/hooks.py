"""The device's one raw-frame hook, shared by everything that watches frames (the pcap file
of `serve --pcap`, each `vhostnet capture` on the control socket, the demo), each with
its own filter.

`install(device, consumers)` puts on the device (vhostuser's `VirtioNetDevice`, or
anything with an `on_frame` attribute) the hook that calls each consumer
`fn(direction, frame)` for the frames its `Filter` accepts (None or the empty
expression: all of them), and, when every consumer has a filter, their union as the
device's batch select: the device then runs the programs in C over a whole batch and
enters Python only for frames some consumer wants. No consumer: no hook at all, and the
data path pays nothing.

>>> class Device:
...     on_frame = None
>>> dev, seen = Device(), []
>>> install(dev, [(lambda d, f: seen.append(d), Filter.compile("arp"))])
>>> dev.on_frame("guest-tx", bytes(12) + b"\\x08\\x06" + bytes(28))
>>> dev.on_frame("guest-rx", bytes(12) + b"\\x08\\x00" + bytes(28))
>>> seen
['guest-tx']
>>> install(dev, []); dev.on_frame is None
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from apps.capture.bpf import Filter, Selector

Consumer = tuple[Callable[[str, memoryview], None], Filter | None]


def frame_hook(consumers: Sequence[Consumer]
               ) -> tuple[Callable[[str, memoryview], None] | None, Selector | None]:
    """The hook feeding `consumers` (None for none) and the batch select of their
    filters (None when one of them wants every frame)."""
    pairs = tuple((fn, None if m is None or m.everything else m.matches)
                  for fn, m in consumers)
    if not pairs:
        return None, None
    if len(pairs) == 1:
        fn, match = pairs[0]
        if match is None:
            hook = fn
        else:
            def hook(direction: str, frame, _fn=fn, _match=match) -> None:
                if _match(frame):
                    _fn(direction, frame)
    else:
        def hook(direction: str, frame) -> None:
            for fn, match in pairs:
                if match is None or match(frame):
                    fn(direction, frame)
    if any(match is None for _, match in pairs):
        return hook, None
    return hook, Selector(m for _, m in consumers)


def install(device, consumers: Sequence[Consumer]) -> None:
    """Give `device` the hook (and batch select) for `consumers`."""
    hook, select = frame_hook(consumers)
    setter = getattr(device, "set_frame_hook", None)
    if setter is not None:
        setter(hook, select)
    else:
        device.on_frame = hook
