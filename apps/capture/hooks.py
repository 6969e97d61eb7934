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


class FrameHooks:
    """The frame-hook registry an App shares with `vhostnet capture` (StackApp, the TAP
    bridge, the ring benchmark's sink): consumers `fn(direction, frame)` in `frame_hooks`,
    each fed only what its `Filter` in `hook_filters` accepts (none there: all), installed
    on `self.device` whenever they change. An App adds consumers of its own (a pcap file)
    by overriding `_frame_consumers`."""

    device = None

    def _init_frame_hooks(self) -> None:
        self.frame_hooks: list[Callable[[str, memoryview], None]] = []
        self.hook_filters: dict[Callable, Filter] = {}

    def add_frame_hook(self, fn: Callable[[str, memoryview], None],
                       match: Filter | None = None) -> None:
        """Feed `fn(direction, frame)` the frames at the virtqueue that `match` accepts
        (None: all)."""
        self.frame_hooks.append(fn)
        if match is not None:
            self.hook_filters[fn] = match
        self._sync_frame_hook()

    def remove_frame_hook(self, fn: Callable[[str, memoryview], None]) -> None:
        if fn in self.frame_hooks:
            self.frame_hooks.remove(fn)
        self.hook_filters.pop(fn, None)
        self._sync_frame_hook()

    def _frame_consumers(self) -> list[Consumer]:
        return [(fn, self.hook_filters.get(fn)) for fn in self.frame_hooks]

    def _sync_frame_hook(self) -> None:
        """The device's one hook for every consumer; none at all when nobody listens
        (the data path then pays nothing)."""
        if self.device is not None:
            install(self.device, self._frame_consumers())
