"""Log lines for errors that may repeat on every packet or poll: the first of a kind in
full (with its traceback where one is asked for), then at most one line per `interval`
seconds saying how many more there were. A hostile peer or a bug on the data path must
not turn into a traceback per frame (a pcap reader gone, a bad value: tens of
thousands of lines a second, and the log's disk).

>>> import logging
>>> lines = []
>>> h = logging.Handler(); h.emit = lambda r: lines.append(r.getMessage())
>>> log = logging.getLogger("ratelog.doctest"); log.addHandler(h); log.propagate = False
>>> t = [0.0]
>>> limit = LogLimiter(log, interval=10.0, clock=lambda: t[0])
>>> [limit.error("poll", "interface poll failed: %s", "boom") for _ in range(5)]
[True, False, False, False, False]
>>> t[0] = 10.0
>>> limit.error("poll", "interface poll failed: %s", "boom")
True
>>> lines
['interface poll failed: boom', 'interface poll failed: boom (4 more like it in 10 s)']
>>> limit.suppressed
4
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable


class LogLimiter:
    """Rate-limits log lines per key (see the module docstring)."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.interval = interval
        self.clock = clock
        self.suppressed = 0  # lines held back, over all keys
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def __call__(self, key: Hashable, level: int, msg: str, *args: object,
                 exc_info: bool = False) -> bool:
        """Log now, or count it for later; whether it was logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            self.suppressed += 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 1024:  # keys are few; bound them anyway
            self._last = {key: now}
        if held:
            msg += f" ({held} more like it in {now - last:.0f} s)"
            exc_info = False  # the first one of the kind had its traceback
        self.log.log(level, msg, *args, exc_info=exc_info)
        return True

    def error(self, key: Hashable, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self(key, logging.ERROR, msg, *args, exc_info=exc_info)

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self(key, logging.WARNING, msg, *args)
